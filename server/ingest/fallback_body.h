/*
 * fallback_body.h - the checks a fallback POST body passes before it is
 * stored, free of I/O so that a fuzzer can drive them.
 */
#ifndef WATCHRTC_FALLBACK_BODY_H
#define WATCHRTC_FALLBACK_BODY_H

#include <stddef.h>

/* What the relay reads from a body; strings are malloc'd, NULL if absent
 * or not a string. */
struct body_fields {
	char *session;      /* "sessionId": the ordering key */
	char *project_id;   /* "projectId": the API key's project part */
};

/*
 * Checks that body[0..len) is exactly one JSON object: UTF-8, no NUL
 * escapes, no member name twice, nothing after it.  On success returns 0
 * and fills *out (release it with body_fields_release).  Otherwise writes
 * why into reason (cut to fit) and returns -1 for a bad body (a 400) or -2
 * when out of memory.
 */
int body_check(const char *body, size_t len, struct body_fields *out, char *reason,
               size_t reason_size) __attribute__((warn_unused_result));
void body_fields_release(struct body_fields *f);

#endif
