/*
 * upstream_ws.h - websockets to the backend, in the backend's own protocol
 * (the SDK's: GET /?<query>, subprotocol 2.0, the server's JSON hello first,
 * then text frames from us).
 *
 * Two objects:
 *  - struct upstream_client: what every websocket of the process shares: the
 *    upstream URL, ONE set of GnuTLS certificate credentials (system trust
 *    loaded once, or upstream-ca), the egress proxy and the timeouts.  Made
 *    once, read-only afterwards, shared by all loops and threads.
 *  - struct upstream_ws: one websocket, driven by one evloop.  libcurl
 *    (CONNECT_ONLY, on a plain http://host:port URL, through the proxy's
 *    CONNECT tunnel if any) resolves and connects without blocking the loop;
 *    the socket is dup()ed and the easy handle freed; then a non-blocking
 *    GnuTLS handshake (host name verified unless insecure), the upgrade
 *    request the relay writes itself, the 101 checked, the backend's hello
 *    read, and wslay's client context (masking) for frames.
 *
 * Thread contract: upstream_client_create/destroy on any one thread while no
 * websocket uses the client; everything about an upstream_ws on the thread
 * running its evloop (see evloop.h), callbacks included.
 *
 * Life of a websocket: upstream_ws_create starts connecting at once.  Exactly one
 * of on_open or on_end follows first; after on_open come any number of
 * on_text and on_fence, then exactly one on_end.  After on_end nothing more is
 * called; the owner frees the websocket with upstream_ws_destroy (allowed inside
 * any callback; the memory goes at the end of the loop's batch).  on_end is
 * called from inside upstream_ws_abort, and from upstream_ws_send_close before
 * on_open; every other callback comes from the loop.
 */
#ifndef WATCHRTC_UPSTREAM_WS_H
#define WATCHRTC_UPSTREAM_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evloop;
struct upstream_client;
struct upstream_ws;

struct upstream_client_options {
	const char *url;                 /* https://host[:port][/path]; path "/" if none */
	const char *ca_file;             /* NULL or "": the system trust */
	bool insecure;                   /* no certificate or host name check */
	/* Egress proxy for the CONNECT tunnel: a URL as libcurl takes it
	 * (http://[user:pass@]host:port, or socks5://; not https://, whose TLS
	 * would be libcurl's); set, it ignores no_proxy.  NULL or "":
	 * https_proxy / HTTPS_PROXY / all_proxy / ALL_PROXY and no_proxy /
	 * NO_PROXY from the environment (the real target is https even though
	 * libcurl only sees http://host:port). */
	const char *proxy;
	unsigned connect_timeout_ms;     /* DNS, TCP and the proxy's CONNECT */
	unsigned handshake_timeout_ms;   /* TLS, the upgrade and the hello */
	unsigned ping_interval_ms;       /* keepalive ping when nothing was sent; 0 = never */
	unsigned pong_timeout_ms;        /* any ping unanswered this long: UPWS_TIMEOUT */
	unsigned close_timeout_ms;       /* our close must be answered within this */
	size_t max_message_bytes;        /* largest backend message (the hello included) */
	size_t max_send_bytes;           /* queued, unsent payload per websocket */
};

/* Loads the credentials once.  -1 with *cause malloc'd (bad URL, CA file). */
int upstream_client_create(struct upstream_client **out, const struct upstream_client_options *o,
                           char **cause) __attribute__((warn_unused_result));
/* After every websocket using it is freed and the evloops they ran on have
 * returned from evloop_run (their loops may be freed before or after).
 * Accepts NULL. */
void upstream_client_destroy(struct upstream_client *c);

/* What the SDK's connection gave us, replayed in the upgrade request.
 * Strings are copied by upstream_ws_create. */
struct upstream_ws_request {
	const char *query;          /* the SDK's query without '?', byte for byte; NULL/"" = none */
	const char *user_agent;     /* NULL: header left out */
	const char *origin;         /* NULL: header left out */
	const char *xff;            /* X-Forwarded-For value; NULL: header left out */
};

/* How a websocket ended: what the forwarder acts on. */
enum upws_class {
	UPWS_CLOSED = 0,        /* our close was answered: the normal end */
	UPWS_REFUSED,           /* upgrade answered with http_status != 101 (+ retry_after_s) */
	UPWS_HELLO_ERROR,       /* the hello was {"error": reason} (we closed with 1000) */
	UPWS_NETWORK,           /* DNS, TCP, proxy, TLS (certificate included) or I/O error */
	UPWS_PROTOCOL,          /* a 101 without the right accept key or "2.0", bad frames,
	                         * a message over max_message_bytes (text that is not a
	                         * JSON object before the hello is skipped, as the SDK
	                         * does) */
	UPWS_TIMEOUT,           /* connect, handshake, hello, pong or close took too long */
	UPWS_BACKEND_CLOSED,    /* the backend sent a close first (close_code, reason) */
	UPWS_DROPPED,           /* the connection ended without a close */
	UPWS_ABORTED,           /* upstream_ws_abort, or upstream_ws_send_close before on_open */
	UPWS_NO_FDS,            /* the connect found the relay out of file descriptors: says
	                         * nothing about the upstream */
};

struct upws_result {
	enum upws_class cls;
	bool opened;                /* on_open was called: frames may have been sent */
	int http_status;            /* UPWS_REFUSED: the status; else 0 */
	int retry_after_s;          /* UPWS_REFUSED: Retry-After in seconds; -1 = none */
	uint16_t close_code;        /* the backend's close code, 0 = none */
	const char *reason;         /* hello error text, close reason, or what failed
	                             * (for logs); valid during on_end only */
};

/* "closed", "refused", "hello_error", ...: for logs and metric labels. */
const char *upws_class_name(enum upws_class cls);

struct upstream_ws_callbacks {
	/* The 101 checked and the backend's hello (a JSON object, not an error)
	 * read: send from now on.  hello is NUL-terminated, valid during the call. */
	void (*on_open)(struct upstream_ws *ws, const char *hello, size_t len, void *arg);
	/* A later text message from the backend (NUL-terminated, valid during
	 * the call). */
	void (*on_text)(struct upstream_ws *ws, const char *text, size_t len, void *arg);
	/* The pong for fence id arrived: the backend has read every frame sent
	 * before that fence.  Reported once per fence, in order; a pong that
	 * answers a later fence reports the earlier ones too. */
	void (*on_fence)(struct upstream_ws *ws, uint64_t id, void *arg);
	/* The end (see struct upws_result).  Mandatory.  A fence not reported
	 * by then was not answered, whatever the class: what it covers may not
	 * have been read. */
	void (*on_end)(struct upstream_ws *ws, const struct upws_result *r, void *arg);
};

/*
 * Starts a websocket on loop (call on its thread).  0: callbacks will follow.
 * -1 with *cause malloc'd: the request cannot be written (a byte of
 * req that cannot stand in a request line or header value: CR, LF, NUL and
 * other control bytes, a space in the query) or out of resources; nothing
 * was sent and no callback will be called.
 */
int upstream_ws_create(struct upstream_ws **out, struct upstream_client *c, struct evloop *loop,
                       const struct upstream_ws_request *req,
                       const struct upstream_ws_callbacks *cb, void *arg, char **cause)
	__attribute__((warn_unused_result));

/* Frees the websocket, closing its socket without a close handshake if it
 * has not ended (no on_end then).  Accepts NULL. */
void upstream_ws_destroy(struct upstream_ws *ws);

/*
 * Queues one text frame (copied).  Only after on_open and before
 * upstream_ws_send_close / on_end.  -1: not open, or the frame would take the
 * queued bytes past max_send_bytes (wait for a fence, or for
 * upstream_ws_queued to fall).
 */
int upstream_ws_send_text(struct upstream_ws *ws, const void *buf, size_t len)
	__attribute__((warn_unused_result));

/* Payload bytes queued and not yet written to the socket. */
size_t upstream_ws_queued(const struct upstream_ws *ws);

/*
 * Queues a ping after every frame queued so far and sets *id (increasing from
 * 1 per websocket); on_fence(id) when its pong arrives.  A pong that does not
 * come within pong_timeout_ms ends the websocket with UPWS_TIMEOUT.  -1 as
 * upstream_ws_send_text.
 */
int upstream_ws_fence(struct upstream_ws *ws, uint64_t *id) __attribute__((warn_unused_result));

/*
 * Queues a close (code, reason of at most 123 bytes) after every frame queued
 * so far and waits for the backend's close: on_end with UPWS_CLOSED (or
 * UPWS_TIMEOUT after close_timeout_ms).  Fences queued before it still
 * report.  Before on_open it abandons the connection: on_end(UPWS_ABORTED).
 * -1 if already closing or ended.
 */
int upstream_ws_send_close(struct upstream_ws *ws, uint16_t code, const char *reason);

/* Drops the connection now: on_end(UPWS_ABORTED) unless already ended. */
void upstream_ws_abort(struct upstream_ws *ws);

/* True between on_open and the first of upstream_ws_send_close / on_end. */
bool upstream_ws_is_open(const struct upstream_ws *ws);

/* True if its TLS handshake resumed a session of an earlier websocket of
 * the same client (no certificate check: the earlier one made it). */
bool upstream_ws_resumed(const struct upstream_ws *ws);

#endif
