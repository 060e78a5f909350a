/*
 * listener.h - the TLS listener: accepts connections, terminates TLS with
 * GnuTLS in a few epoll loops of its own, and feeds each connection's
 * plaintext to libmicrohttpd through a socketpair.  When libmicrohttpd
 * answers a websocket upgrade, the listener drops the socketpair and hands
 * the TLS connection itself to the websocket server.
 *
 * Why not libmicrohttpd's own TLS: for an upgraded TLS connection it
 * relays the decrypted stream through a socketpair with buffers carved
 * from what is left of the connection's memory pool, which in 0.9.75 is
 * nothing: 4 bytes per system call (BENCHMARKS.md).  Here a websocket
 * costs one descriptor and no extra thread hop, and every request still
 * goes through libmicrohttpd's HTTP parser and the relay's routes.
 */
#ifndef WATCHRTC_LISTENER_H
#define WATCHRTC_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

struct listener;
struct MHD_Daemon;
struct MHD_UpgradeResponseHandle;
struct ws_server;
struct ws_conn_meta;
struct trusted_proxies;

struct listener_options {
	const char *address;          /* IPv4 or IPv6 literal */
	unsigned port;
	unsigned threads;             /* event loops doing TLS */
	unsigned max_connections;     /* open TLS connections, websockets included */
	unsigned max_http_connections; /* of them, not yet upgraded (over max_connections:
	                                * max_connections) */
	const char *priorities;       /* GnuTLS priority string */
	/* A connection may begin with a PROXY v1/v2 header only from one of
	 * proxies; its source is then the client libmicrohttpd sees.  It must
	 * be in within header_timeout_ms.  A connection from elsewhere that
	 * begins with one is refused. */
	bool proxy_protocol;
	const struct trusted_proxies *proxies;
	unsigned header_timeout_ms;
};

/*
 * Binds and starts the loops.  Plaintext goes to mhd (started with
 * MHD_USE_NO_LISTEN_SOCKET); upgraded connections go to ws.  The
 * certificate comes from tls_creds at each handshake.  -1 and *cause
 * (malloc'd) on failure.
 */
int listener_start(struct listener **out, const struct listener_options *o,
                   struct MHD_Daemon *mhd, struct ws_server *ws, char **cause)
	__attribute__((warn_unused_result));

/*
 * libmicrohttpd sent its 101 on mhd_fd (its end of a connection's
 * socketpair) and handed the upgrade over: the listener takes the TLS
 * connection behind it to the websocket server, with meta and the bytes
 * libmicrohttpd had read past the request head.  Takes meta; closes urh
 * in every case.  Callable from any thread.
 */
void listener_upgraded(struct listener *l, int mhd_fd, struct MHD_UpgradeResponseHandle *urh,
                       const char *extra, size_t extra_len, struct ws_conn_meta *meta);

/* Stops accepting: new connections are refused from now on. */
void listener_quiesce(struct listener *l);
/* Closes every connection still in the listener's hands and joins its
 * threads, but keeps l: libmicrohttpd's upgrade callbacks may still name it
 * (listener_upgraded then refuses).  Call before stopping libmicrohttpd.
 * Accepts NULL. */
void listener_halt(struct listener *l);
/* Halts l if that was not done yet, then frees it: call after libmicrohttpd
 * has stopped.  Accepts NULL. */
void listener_stop(struct listener *l);

#endif
