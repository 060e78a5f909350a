/*
 * websocket.h - the SDK's websocket sessions after the HTTP upgrade.
 *
 * Upgraded sockets are spread over a few threads, one evloop each (one
 * non-blocking socket per connection, wslay for framing).  Each connection
 * first gets one hello text frame; then every message it sends becomes one
 * queue row, submitted without waiting for the commit so a slow disk or
 * upstream never stalls the loop.
 */
#ifndef WATCHRTC_WEBSOCKET_H
#define WATCHRTC_WEBSOCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct queue;
struct ws_server;
struct access;
struct gnutls_session_int;

struct ws_options {
	unsigned threads;
	uint64_t max_message_bytes;   /* larger messages: close 1009 */
	unsigned max_queued_frames;   /* frames queued to a peer (pongs too) before it is dropped */
	unsigned ping_interval_s;     /* ping when idle this long; close after twice it */
	/* hello fields */
	unsigned interval_ms, send_interval;
	bool collect_console_log;
	const char *console_log_level;
	const char *project_id;       /* NULL or "": not sent */
	/* upstream-protocol = websocket: each connection's end is stored as a
	 * row after its last message, and a key's hello learned from the
	 * upstream (queue_hello_get) replaces the fields above for it. */
	bool upstream_ws;
};

/* What the HTTP side learned in the handshake.  ws_server_adopt takes
 * ownership of the struct and of every string in it (all malloc'd). */
struct ws_conn_meta {
	char *query;       /* exactly as sent, without '?' */
	char *session;     /* sessionId */
	char *api_key;     /* apiKey or token */
	char *peer_ip;
	char *client_ip;   /* the client's address (trusted proxies resolved): limits, logs */
	char *xff;         /* chain to send upstream (client's + peer) */
	char *user_agent, *origin;
	bool key_rejected; /* api_key refused: hello {"error"}, close 1008 */
	const char *key_reason;  /* static: the hello's error; NULL: the upstream refused it */
	/* When not NULL, the connection holds one max-connections-per-ip slot
	 * of client_ip, given back when the meta is freed, and each message is
	 * asked for against max-messages-per-ip-per-s. */
	struct access *access;
};

/* Starts the websocket loops' threads.  On failure *cause (malloc'd, caller
 * frees) says why. */
int ws_server_start(struct ws_server **out, const struct ws_options *o, struct queue *q,
                    char **cause) __attribute__((warn_unused_result));

/* Takes over an upgraded TLS connection (from the listener, any thread):
 * its non-blocking socket fd, its session tls, and extra, the bytes the
 * client sent past the request head.  Takes meta, fd and tls in every case. */
void ws_server_adopt(struct ws_server *s, struct ws_conn_meta *meta, int fd,
                     struct gnutls_session_int *tls, const char *extra, size_t extra_len);

/* Connections adopted and not yet finished (for max-connections). */
size_t ws_server_open(struct ws_server *s);

/* Closes every connection with 1001 and refuses new ones; waits up to
 * deadline_ms for the close handshakes.  Messages already received are in
 * the queue when this returns. */
void ws_server_shutdown(struct ws_server *s, unsigned deadline_ms);
/* Joins the loops' threads and frees s (after ws_server_shutdown).
 * Accepts NULL. */
void ws_server_stop(struct ws_server *s);

/* Backend text (len bytes, a complete message) for the live SDK connection
 * of session, as a text frame: the SDK treats each JSON message as a hello.
 * Any thread.  -1 if the session has no live connection (then it is
 * dropped, with a debug log line) or out of memory. */
int ws_server_send_text(struct ws_server *s, const char *session, const char *text, size_t len);

/* Frees meta and its strings (accepts NULL). */
void ws_conn_meta_free(struct ws_conn_meta *meta);

#endif
