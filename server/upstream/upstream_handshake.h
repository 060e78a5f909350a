/*
 * upstream_handshake.h - the upgrade request the relay writes to the backend
 * and the check of the backend's answer, free of I/O (fuzzed by
 * tests/fuzz/fuzz-upstream-request.c and fuzz-upstream-response.c).
 */
#ifndef WATCHRTC_UPSTREAM_HANDSHAKE_H
#define WATCHRTC_UPSTREAM_HANDSHAKE_H

#include <stddef.h>

/* Longest answer head taken before the blank line. */
#define UPHS_MAX_RESPONSE_HEAD 8192

struct uphs_request {
	const char *host;           /* Host header: "host" or "host:port", as the URL had it */
	const char *path;           /* the upstream path, starting with '/' */
	const char *query;          /* without '?'; NULL or "" = none */
	const char *key;            /* Sec-WebSocket-Key: base64 of 16 bytes */
	const char *user_agent;     /* NULL: header left out */
	const char *origin;         /* NULL: header left out */
	const char *xff;            /* NULL: header left out */
};

/*
 * Writes the GET request with Upgrade, Connection, Sec-WebSocket-Version 13,
 * Sec-WebSocket-Protocol 2.0, X-Forwarded-Proto https and the headers r has.
 * Returns the request (malloc'd, NUL-terminated, caller frees; *len its
 * length) or NULL with *why a static reason: a byte that cannot stand where
 * it goes (CR, LF, NUL and other control bytes or DEL anywhere; a space or a
 * '#' in the path or query; a path not starting with '/'), or out of memory.
 */
char *uphs_build_request(const struct uphs_request *r, size_t *len, const char **why);

/* The Sec-WebSocket-Accept a correct answer carries for key. */
int uphs_accept_for(const char *key, char accept[29]);

enum uphs_status {
	UPHS_NEED_MORE = 0,   /* no blank line yet: read more */
	UPHS_UPGRADED,        /* a valid 101: accept key and subprotocol 2.0 right */
	UPHS_REFUSED,         /* a well-formed answer with another status */
	UPHS_BAD,             /* not HTTP, a head over UPHS_MAX_RESPONSE_HEAD, or a
	                       * 101 with the wrong accept, upgrade or subprotocol */
};

struct uphs_response {
	int status;           /* the status code, when there was one */
	int retry_after_s;    /* Retry-After as delta-seconds; -1 = absent or a date */
	size_t head_len;      /* bytes up to and including the blank line */
	const char *why;      /* UPHS_BAD: a static reason */
};

/* Parses the answer head in buf[0..len) against the accept key expected. */
enum uphs_status uphs_parse_response(const char *buf, size_t len, const char *accept,
                                     struct uphs_response *out);

#endif
