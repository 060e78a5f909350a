/*
 * reqcheck.h - what the relay refuses at the door because it could not pass
 * it on later: everything a client sends that the forwarder copies into an
 * upstream request line or header.  Free of I/O, so that a fuzzer and the
 * upstream websocket client can use it too.
 */
#ifndef WATCHRTC_REQCHECK_H
#define WATCHRTC_REQCHECK_H

#include <stddef.h>

/* The default of max-session-id-bytes. */
#define REQCHECK_SESSION_MAX_DEFAULT 256

/*
 * The upgrade's or POST's query (may be NULL): query_check's rules (RFC 3986
 * bytes, valid escapes, no name twice), and not both apiKey and token, which
 * would leave it to the upstream to pick one.  NULL if it may pass, else a
 * static reason for a 400.
 */
const char *reqcheck_query(const char *query);

/*
 * A header value the relay passes on (User-Agent, Origin, Content-Type),
 * may be NULL: no control byte but horizontal tab (RFC 9110 field-value).
 * NULL if it may pass, else a static reason for a 400.
 */
const char *reqcheck_header(const char *value);

/*
 * A sessionId (decoded; may be NULL, the caller decides whether one is
 * required): at most max_bytes, visible ASCII only (0x21-0x7e), so that it
 * can go into a URL, a log line and the queue as it is.  Returns 0, or 413
 * (too long) or 400 with *why set to a static reason.
 */
unsigned reqcheck_session(const char *session, size_t max_bytes, const char **why);

#endif
