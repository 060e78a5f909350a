/* ws_handshake.h - the RFC 6455 opening handshake checks, free of I/O. */
#ifndef WATCHRTC_WS_HANDSHAKE_H
#define WATCHRTC_WS_HANDSHAKE_H

#include <stdbool.h>

/* The request headers that matter (NULL when absent). */
struct ws_upgrade_req {
	const char *method;
	const char *upgrade;      /* must contain the token "websocket" */
	const char *connection;   /* must contain the token "upgrade" */
	const char *version;      /* must be "13" */
	const char *key;          /* base64 of 16 bytes */
	const char *protocol;     /* Sec-WebSocket-Protocol offers, comma separated */
};

/* True if the request asks for a websocket (Upgrade: websocket present). */
bool ws_handshake_is_upgrade(const struct ws_upgrade_req *r);

/*
 * Checks r.  On success returns NULL, writes Sec-WebSocket-Accept into
 * accept (NUL-terminated) and sets *proto20 if "2.0" was offered.  On failure
 * returns a static reason for the 400 answer.
 */
const char *ws_handshake_check(const struct ws_upgrade_req *r, char accept[29],
                               bool *proto20);

#endif
