/*
 * wsclient.h - the project's own websocket client over TLS (GnuTLS), for
 * the integration tests and the load generator.
 *
 * Blocking, one connection per struct, every wait bounded by the timeout
 * given at connect.  It can misbehave on purpose: unmasked frames, raw
 * bytes, a handshake with any header missing or wrong.  The server's
 * certificate is not verified (the tests use their own CA).  GnuTLS writes
 * to the socket without MSG_NOSIGNAL: callers ignore SIGPIPE.
 */
#ifndef WATCHRTC_WSCLIENT_H
#define WATCHRTC_WSCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wsclient;

enum wsclient_err {
	WSC_OK = 0,
	WSC_ETIMEDOUT = -1,   /* nothing arrived (or could be sent) in time */
	WSC_ECLOSED = -2,     /* the peer closed the TCP/TLS connection */
	WSC_EIO = -3,         /* socket or TLS error */
	WSC_EPROTO = -4,      /* the server sent something that is not HTTP/websocket */
	WSC_ENOMEM = -5,
	WSC_ETOOBIG = -6,     /* a frame or answer over the client's ceilings */
};

const char *wsclient_strerror(int err);

struct wsclient_opts {
	const char *host;          /* IPv4/IPv6 literal or name; NULL = 127.0.0.1 */
	unsigned port;
	const char *path;          /* request target with query, e.g. "/websocket?apiKey=k" */
	const char *protocol;      /* Sec-WebSocket-Protocol offer; NULL = "2.0", "" = none */
	const char *origin, *user_agent, *xff;   /* NULL: header not sent */
	const char *key;           /* Sec-WebSocket-Key; NULL = 16 random bytes */
	const char *version;       /* Sec-WebSocket-Version; NULL = "13" */
	const char *extra_headers; /* raw "Name: value\r\n" lines added as they are, or NULL */
	const void *early;         /* bytes written right after the request, before the */
	size_t early_len;          /* answer is read (frames sent ahead of the 101) */
	int timeout_ms;            /* each connect, read and write; 0 = 5000 */
};

struct wsclient_header {
	char *name, *value;
};

/*
 * Connects, does the TLS handshake and sends the upgrade request, then
 * reads the answer's head (and, unless it is a 101, its body).  Returns
 * WSC_OK whatever the HTTP status: check wsclient_status.  On error *out is
 * NULL and err (if not NULL) says why.
 */
int wsclient_connect(struct wsclient **out, const struct wsclient_opts *o, char *err,
                     size_t errlen) __attribute__((warn_unused_result));
/* Closes the TLS session and the socket (without a close frame).  Accepts NULL. */
void wsclient_destroy(struct wsclient *c);

int wsclient_status(const struct wsclient *c);
/* True if Sec-WebSocket-Accept matches the key that was sent. */
bool wsclient_accept_ok(const struct wsclient *c);
size_t wsclient_header_count(const struct wsclient *c);
const struct wsclient_header *wsclient_header_at(const struct wsclient *c, size_t i);
/* The first header called name (case-insensitive), or NULL. */
const char *wsclient_header(const struct wsclient *c, const char *name);
/* The body of a non-101 answer ("" if none); NUL-terminated. */
const char *wsclient_body(const struct wsclient *c, size_t *len);
int wsclient_fd(const struct wsclient *c);

/* Sends one frame as given: opcode, FIN and mask bit are not checked, and
 * opcode's bits 4-6 become the RSV bits (0x40 | 1: a text frame with RSV1). */
int wsclient_send_frame(struct wsclient *c, unsigned opcode, bool fin, bool masked,
                        const void *payload, size_t len);
/* Sends one masked message, in frames of at most fragment bytes (0: one frame). */
int wsclient_send_message(struct wsclient *c, unsigned opcode, const void *payload,
                          size_t len, size_t fragment);
/* Sends a close frame with code (0: no code) and reason. */
int wsclient_send_close(struct wsclient *c, uint16_t code, const char *reason);
/* Writes bytes to the stream exactly as given (a captured .wire.bin). */
int wsclient_send_raw(struct wsclient *c, const void *bytes, size_t len);
/*
 * Sends a masked frame header announcing len bytes of payload, then streams
 * len bytes of fill, stopping early once the server has sent something
 * (a close, usually).  *sent receives the payload bytes written.
 */
int wsclient_send_filler(struct wsclient *c, unsigned opcode, uint64_t len, char fill,
                         uint64_t *sent);

struct wsclient_frame {
	unsigned opcode;
	bool fin, masked;
	uint8_t *payload;        /* malloc'd, NUL-terminated for convenience */
	size_t len;
	uint16_t close_code;     /* close frames: the code, 1005 if none */
	const char *close_reason;/* close frames: points into payload ("" if none) */
};

/* Receives one frame (not reassembled).  Caller releases f. */
int wsclient_recv_frame(struct wsclient *c, struct wsclient_frame *f, int timeout_ms);
void wsclient_frame_release(struct wsclient_frame *f);
/* 1 if a read would not block within timeout_ms, 0 if not, <0 on error. */
int wsclient_wait_readable(struct wsclient *c, int timeout_ms);

#endif
