/* query.h - URL query strings ("a=1&b=x%20y"), as the SDK sends them. */
#ifndef WATCHRTC_QUERY_H
#define WATCHRTC_QUERY_H

#include <stddef.h>

/*
 * Looks up name in query (no leading '?', may be NULL) and percent-decodes
 * its value ('+' is a space).  Returns a malloc'd string that the caller
 * frees, or NULL if the parameter is absent or its encoding is invalid.
 * The first occurrence wins.
 */
char *query_get(const char *query, const char *name);

#endif
