/*
 * http.c - the HTTP side of the main listener.  The TLS listener
 * (listener.c) accepts and decrypts; libmicrohttpd, fed the plaintext
 * through a socketpair per connection, parses HTTP.  This file owns the
 * daemon, keeps per-request state (the raw URI, the body being received)
 * and dispatches each request to a route.
 *
 * The port speaks TLS only: a plaintext request fails the TLS handshake
 * and the connection is closed.
 */
#include "http.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "access.h"
#include "cause.h"
#include "clientip.h"
#include "deadline.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "relay.h"
#include "routes.h"
#include "tls.h"
#include "tls_creds.h"
#include "ws_handshake.h"

#define HTTP_CONNECTION_TIMEOUT_S 30   /* an idle keep-alive connection is closed after this */
#define HTTP_DISCARD_FACTOR 4 /* oversize bodies: read at most this many limits, then drop */
/* The listener enforces max-connections; libmicrohttpd's own cap is only
 * a backstop above it. */
#define HTTP_ACCEPT_HEADROOM 64

struct http_server {
	struct MHD_Daemon *daemon;
	struct listener *listener;        /* accepts, does TLS, feeds the daemon */
	struct relay *relay;
	struct deadlines *deadlines;      /* request-timeout-s for slow clients */
};

/* State of one request, from the URI log callback to completion. */
struct request {
	char *uri;            /* raw request target, as sent */
	char *body;           /* POST body so far */
	size_t body_len;
	bool started;         /* the first access-handler call has been seen */
	bool too_big;         /* body passed max_body_bytes: discard the rest, answer 413 */
	uint64_t discarded;   /* bytes thrown away since */
	bool is_fallback;
	void *upgrade_pending; /* route_upgrade's record until MHD is done with it */
	char *xff;            /* every X-Forwarded-For header, joined; NULL if none */
	char client[CLIENTIP_SIZE]; /* the client's address (trusted proxies resolved) */
	bool holds_slot;      /* counts against max-connections-per-ip until completed */
};

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	struct request *rq = calloc(1, sizeof *rq);

	if (rq)
		rq->uri = strdup(uri ? uri : "");
	return rq;
}

/* The deadline of c's connection (see on_connection), or NULL. */
static struct deadline *conn_deadline(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci ? ci->socket_context : NULL;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
	struct http_server *s = cls;
	struct request *rq = *req_cls;

	/* An upgraded connection is the websocket server's now: no deadline. */
	if (!rq || !rq->upgrade_pending)
		deadline_rearm(s->deadlines, conn_deadline(c));
	if (!rq)
		return;
	if (rq->holds_slot)
		access_conn_release(s->relay->access, rq->client);
	route_upgrade_completed(rq->upgrade_pending);
	free(rq->uri);
	free(rq->body);
	free(rq->xff);
	free(rq);
	*req_cls = NULL;
}

__attribute__((format(printf, 2, 0)))
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512], quoted[600];
	size_t n;

	vsnprintf(msg, sizeof msg, fmt, ap);
	n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	log_debug("mhd", "msg=%s", log_quote(msg, quoted, sizeof quoted));
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !memcmp(s + n - m, suffix, m);
}

/* The route of a POST to .../trace or .../error. */
static enum route post_route(const char *path)
{
	return ends_with(path, "/trace") ? ROUTE_TRACE : ROUTE_ERROR;
}

static void peer_address(struct MHD_Connection *c, char *buf, size_t size)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

	clientip_from_sockaddr(ci ? ci->client_addr : NULL, buf, size);
}

/* Connection opened or closed: its request deadline (deadline.h) lives in
 * MHD's socket context.  The socket is MHD's end of the listener's
 * socketpair: shutting it down makes both sides close, mid-handshake too. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
	struct http_server *s = cls;
	const union MHD_ConnectionInfo *ci;
	char peer[CLIENTIP_SIZE];

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
		peer_address(c, peer, sizeof peer);
		*socket_context = ci ? deadline_open(s->deadlines, ci->connect_fd, peer) : NULL;
	} else {
		deadline_close(s->deadlines, *socket_context);
		*socket_context = NULL;
	}
}

static const char *header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

struct xff_join {
	char *text;    /* the values so far, joined with ',' */
	bool failed;   /* out of memory: text is incomplete */
};

/* Appends one X-Forwarded-For value to the xff_join in cls. */
static enum MHD_Result join_xff(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
	struct xff_join *j = cls;
	size_t have = j->text ? strlen(j->text) : 0, n;
	char *grown;

	if (strcasecmp(key, "X-Forwarded-For") || !value)
		return MHD_YES;
	n = strlen(value);
	if (!(grown = realloc(j->text, have + n + 2))) {
		j->failed = true;
		return MHD_NO;
	}
	if (have)
		grown[have++] = ',';
	memcpy(grown + have, value, n + 1);
	j->text = grown;
	return MHD_YES;
}

struct length_check {
	const char *first;   /* the first Content-Length value */
	bool conflict;       /* another one differs from it */
};

/* Notes a Content-Length value that differs from the first one. */
static enum MHD_Result check_length(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
	struct length_check *lc = cls;

	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH))
		return MHD_YES;
	if (!lc->first)
		lc->first = value ? value : "";
	else if (strcmp(lc->first, value ? value : ""))
		lc->conflict = true;
	return MHD_YES;
}

/* Whether the request has two Content-Length headers that disagree: the
 * relay and a proxy in front of it could then split the stream into
 * different requests (RFC 9112 6.3 says to refuse it). */
static bool conflicting_lengths(struct MHD_Connection *c)
{
	struct length_check lc = { NULL, false };

	MHD_get_connection_values(c, MHD_HEADER_KIND, check_length, &lc);
	return lc.conflict;
}

/*
 * Who sent the request: every X-Forwarded-For header joined (a proxy may
 * add its own header rather than extend the client's, and reading only the
 * first would then believe the client), and the client address behind the
 * trusted proxies.  -1 when out of memory.
 */
static int identify(struct request *rq, struct relay *r, struct MHD_Connection *c,
                    const char *peer)
{
	struct xff_join j = { NULL, false };

	MHD_get_connection_values(c, MHD_HEADER_KIND, join_xff, &j);
	rq->xff = j.text;   /* on_completed frees it */
	if (j.failed)
		return -1;
	clientip_resolve(r->proxies, peer, rq->xff, rq->client);
	return 0;
}

/* Appends upload data to rq->body up to the body limit. */
static void take_body(struct request *rq, const char *data, size_t size, uint64_t max)
{
	char *grown;

	if (rq->too_big || size == 0)
		return;
	if (rq->body_len + size > max) {
		rq->too_big = true;
		free(rq->body);
		rq->body = NULL;
		rq->body_len = 0;
		return;
	}
	grown = realloc(rq->body, rq->body_len + size + 1);
	if (!grown) {
		rq->too_big = true;  /* answered as 413: we cannot hold it */
		return;
	}
	memcpy(grown + rq->body_len, data, size);
	rq->body = grown;
	rq->body_len += size;
	rq->body[rq->body_len] = '\0';
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
	struct http_server *s = cls;
	struct relay *r = s->relay;
	struct request *rq = *req_cls;
	struct request_info ri;
	char peer[CLIENTIP_SIZE], *path, *q;
	enum MHD_Result ret;

	if (!rq)
		return MHD_NO; /* out of memory in on_uri: drop the connection */

	/* The raw target keeps the query exactly as the SDK sent it. */
	path = strdup(rq->uri);
	if (!path)
		return MHD_NO;
	q = strchr(path, '?');
	if (q)
		*q++ = '\0';
	peer_address(c, peer, sizeof peer);
	if (!rq->started && identify(rq, r, c, peer) < 0) {
		free(path);
		return MHD_NO;
	}
	ri = (struct request_info){
		.method = method, .path = path, .query = q, .peer_ip = peer,
		.client_ip = rq->client, .xff = rq->xff,
		.user_agent = header(c, MHD_HTTP_HEADER_USER_AGENT),
		.origin = header(c, "Origin"),
		.pending = &rq->upgrade_pending,
	};
	ri.cors_origin = access_origin_allowed(r->access, ri.origin) ? ri.origin : NULL;

	if (!rq->started) {
		rq->started = true;
		bool fallback_path = ends_with(path, "/trace") || ends_with(path, "/error");
		struct ws_upgrade_req wsreq = { .upgrade = header(c, MHD_HTTP_HEADER_UPGRADE) };
		enum access_verdict v;

		if (route_is_ops(path)) {
			ret = route_ops(r, c, &ri, r->cfg.tls_metrics);
		} else if (ws_handshake_is_upgrade(&wsreq)) {
			ret = route_upgrade(r, c, &ri);
		} else if (fallback_path && !strcmp(method, MHD_HTTP_METHOD_OPTIONS)) {
			ret = route_preflight(r, c, &ri);
		} else if (fallback_path && !strcmp(method, MHD_HTTP_METHOD_POST)) {
			const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);

			if (conflicting_lengths(c)) {
				ret = route_refuse(c, &ri, post_route(path), &(struct refusal){
					.status = MHD_HTTP_BAD_REQUEST,
					.reason = "two different Content-Length headers" });
			/* Refuse a declared oversize body before reading any of it. */
			} else if (cl && strtoull(cl, NULL, 10) > r->cfg.max_body_bytes) {
				ret = route_refuse(c, &ri, post_route(path), &(struct refusal){
					.status = MHD_HTTP_CONTENT_TOO_LARGE,
					.reason = "body too large: Content-Length over max-body-bytes" });
			} else if ((v = access_conn_acquire(r->access, rq->client)) != ACCESS_OK) {
				ret = route_refuse(c, &ri, post_route(path), &(struct refusal){
					.status = MHD_HTTP_TOO_MANY_REQUESTS,
					.reason = access_verdict_reason(v),
					.retry_after_s = r->cfg.retry_after_s });
			} else {
				rq->holds_slot = true;
				rq->is_fallback = true;
				ret = MHD_YES; /* the body follows */
			}
		} else if (fallback_path) {
			ret = route_refuse(c, &ri, ROUTE_OTHER, &(struct refusal){
				.status = MHD_HTTP_METHOD_NOT_ALLOWED,
				.reason = "method not allowed" });
		} else {
			ret = route_refuse(c, &ri, ROUTE_OTHER, &(struct refusal){
				.status = MHD_HTTP_NOT_FOUND,
				.reason = "not found: the relay serves websockets, POST .../trace and "
				          ".../error, /healthcheck and /metrics" });
		}
		/* Until its body is in, a POST is still on request-timeout-s. */
		if (!rq->is_fallback)
			deadline_disarm(s->deadlines, conn_deadline(c));
		goto out;
	}

	if (!rq->is_fallback) {
		ret = MHD_NO; /* a body we did not ask for */
		goto out;
	}
	if (*upload_data_size) {
		/* Past the limit the rest is read and thrown away, so that the
		 * client gets its 413 (MHD can only answer once the body is in);
		 * a client that streams on far beyond it is cut off instead. */
		if (rq->too_big)
			rq->discarded += *upload_data_size;
		else
			take_body(rq, upload_data, *upload_data_size, r->cfg.max_body_bytes);
		*upload_data_size = 0;
		ret = rq->discarded > HTTP_DISCARD_FACTOR * r->cfg.max_body_bytes ? MHD_NO
		                                                                  : MHD_YES;
		goto out;
	}
	deadline_disarm(s->deadlines, conn_deadline(c));
	if (rq->too_big) {
		ret = route_refuse(c, &ri, post_route(path), &(struct refusal){
			.status = MHD_HTTP_CONTENT_TOO_LARGE,
			.reason = "body too large: over max-body-bytes" });
		goto out;
	}
	ret = route_fallback(r, c, &ri, rq->body ? rq->body : "", rq->body_len);
out:
	free(path);
	return ret;
}

int http_server_start(struct http_server **out, struct relay *r, const struct tls_pair *tls,
                      char **cause)
{
	struct http_server *s = calloc(1, sizeof *s);
	struct listener_options lo = {
		.address = r->cfg.listen_address,
		.port = r->cfg.port,
		.threads = r->cfg.http_threads,
		.max_connections = r->max_connections,
		.max_http_connections = r->max_http_connections,
		.priorities = r->cfg.tls_priorities,
		.proxy_protocol = r->cfg.proxy_protocol,
		.proxies = r->proxies,
		.header_timeout_ms = r->cfg.request_timeout_s * 1000,
	};
	/* No socket of its own: the listener adds each connection. */
	unsigned flags = MHD_USE_NO_LISTEN_SOCKET | MHD_USE_INTERNAL_POLLING_THREAD |
	                 MHD_USE_EPOLL | MHD_ALLOW_UPGRADE | MHD_USE_ITC | MHD_USE_ERROR_LOG;

	*out = NULL;
	if (!s) {
		*cause = strdup("out of memory");
		return -1;
	}
	s->relay = r;
	if (deadlines_start(&s->deadlines, r->cfg.request_timeout_s, cause) < 0) {
		free(s);
		return -1;
	}
	/* Each handshake asks tls_creds for the certificate: SIGHUP swaps it. */
	if (tls_creds_install(tls, cause) < 0) {
		deadlines_stop(s->deadlines);
		free(s);
		return -1;
	}

	s->daemon = MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, s, MHD_OPTION_THREAD_POOL_SIZE,
		(unsigned)r->cfg.http_threads, MHD_OPTION_CONNECTION_LIMIT,
		r->max_connections + HTTP_ACCEPT_HEADROOM,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_CONNECTION_TIMEOUT_S,
		/* The pool holds the request line and headers: a bigger head is refused. */
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)r->cfg.max_header_bytes,
		MHD_OPTION_URI_LOG_CALLBACK, on_uri, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
		s, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_EXTERNAL_LOGGER,
		on_mhd_log, s, MHD_OPTION_END);
	if (!s->daemon) {
		cause_set(cause, -1, "cannot start the HTTP server: %s", strerror(errno));
		http_server_stop(s);
		return -1;
	}
	if (listener_start(&s->listener, &lo, s->daemon, r->ws, cause) < 0) {
		http_server_stop(s);
		return -1;
	}
	r->listener = s->listener;
	*out = s;
	return 0;
}

void http_server_quiesce(struct http_server *s)
{
	if (s)
		listener_quiesce(s->listener);
}

void http_server_stop(struct http_server *s)
{
	if (!s)
		return;
	/* The loops first, then the daemon (its upgrade callbacks may still
	 * name the listener), then the listener's memory. */
	listener_halt(s->listener);
	if (s->daemon)
		MHD_stop_daemon(s->daemon);
	listener_stop(s->listener);
	s->relay->listener = NULL;
	deadlines_stop(s->deadlines);   /* every connection is closed by now */
	tls_creds_release();
	free(s);
}
