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

/*
 * Whether query (no leading '?', may be NULL) can be passed on exactly as it
 * came and means one thing to whoever reads it: every byte is visible ASCII
 * but '#', '"', '<' and '>' (no space, control byte or byte over 0x7e),
 * every '%' starts a valid escape that is not %00, and no parameter name occurs twice once
 * percent-decoded ("apiKey" and "api%4Bey" are the same name).  Returns
 * NULL if so, else a static string saying what is wrong.
 */
const char *query_check(const char *query);

#endif
