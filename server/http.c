/*
 * http.c - the TLS listener.  libmicrohttpd terminates TLS with GnuTLS and
 * parses HTTP; this file owns the daemon, keeps per-request state (the raw
 * URI, the body being received) and dispatches each request to a route.
 *
 * The listener speaks TLS only: a plaintext request on the port fails the
 * TLS handshake and the connection is closed.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "log.h"
#include "metrics.h"
#include "relay.h"
#include "routes.h"
#include "tls.h"

#define HTTP_CONNECTION_TIMEOUT_S 30   /* an idle keep-alive connection is closed after this */
#define HTTP_DISCARD_FACTOR 4          /* oversize bodies: read at most this many limits, then drop */

struct http_server {
	struct MHD_Daemon *daemon;
	struct relay *relay;
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
};

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	struct request *rq = calloc(1, sizeof *rq);

	if (rq)
		rq->uri = strdup(uri ? uri : "");
	return rq;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
	struct request *rq = *req_cls;

	if (!rq)
		return;
	route_upgrade_completed(rq->upgrade_pending);
	free(rq->uri);
	free(rq->body);
	free(rq);
	*req_cls = NULL;
}

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

enum MHD_Result http_answer_error_retry(struct MHD_Connection *c, unsigned status,
                                        const char *origin, const char *reason,
                                        unsigned retry_after_s)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	json_t *obj = json_pack("{s:s}", "error", reason);
	char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL, retry[16];

	json_decref(obj);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	if (retry_after_s) {
		snprintf(retry, sizeof retry, "%u", retry_after_s);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, retry);
	}
	/* Without it the browser hides the answer from the page. */
	if (origin) {
		MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
		MHD_add_response_header(resp, "Vary", "Origin");
	}
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

enum MHD_Result http_answer_error(struct MHD_Connection *c, unsigned status, const char *origin,
                                  const char *reason)
{
	return http_answer_error_retry(c, status, origin, reason, 0);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !memcmp(s + n - m, suffix, m);
}

static bool has_token(const char *value, const char *token)
{
	size_t n = strlen(token);

	for (const char *p = value; p && *p;) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!strncasecmp(p, token, n) && (p[n] == '\0' || p[n] == ',' || p[n] == ' ' ||
		                                  p[n] == '\t'))
			return true;
		p = strchr(p, ',');
	}
	return false;
}

static void peer_address(struct MHD_Connection *c, char *buf, size_t size)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	snprintf(buf, size, "unknown");
	if (!sa)
		return;
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)size);
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		/* An IPv4 client on a dual-stack socket: show it as IPv4. */
		if (IN6_IS_ADDR_V4MAPPED(a))
			inet_ntop(AF_INET, &a->s6_addr[12], buf, (socklen_t)size);
		else
			inet_ntop(AF_INET6, a, buf, (socklen_t)size);
	}
}

static const char *header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
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
	char peer[INET6_ADDRSTRLEN + 1], *path, *q;
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
	ri = (struct request_info){
		.method = method, .path = path, .query = q, .peer_ip = peer,
		.xff = header(c, "X-Forwarded-For"),
		.user_agent = header(c, MHD_HTTP_HEADER_USER_AGENT),
		.origin = header(c, "Origin"),
		.pending = &rq->upgrade_pending,
	};

	if (!rq->started) {
		rq->started = true;
		bool fallback_path = ends_with(path, "/trace") || ends_with(path, "/error");
		const char *upgrade = header(c, MHD_HTTP_HEADER_UPGRADE);

		if (!strcmp(path, "/healthcheck") || !strncmp(path, "/healthcheck/", 13)) {
			ret = route_health(r, c, &ri);
		} else if (!strcmp(path, "/metrics")) {
			ret = route_metrics(r, c, &ri);
		} else if (upgrade && has_token(upgrade, "websocket")) {
			ret = route_upgrade(r, c, &ri);
		} else if (fallback_path && !strcmp(method, MHD_HTTP_METHOD_OPTIONS)) {
			ret = route_preflight(r, c, &ri);
		} else if (fallback_path && !strcmp(method, MHD_HTTP_METHOD_POST)) {
			const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
			/* Refuse a declared oversize body before reading any of it. */
			if (cl && strtoull(cl, NULL, 10) > r->cfg.max_body_bytes) {
				log_info("request_refused", "route=%s status=413 peer=%s reason=\"body of %s bytes over max-body-bytes\"",
				         ends_with(path, "/trace") ? "trace" : "error", peer, cl);
				metrics_http(ends_with(path, "/trace") ? "trace" : "error", 413);
				ret = http_answer_error(c, MHD_HTTP_CONTENT_TOO_LARGE, ri.origin,
				                        "body too large");
			} else {
				rq->is_fallback = true;
				ret = MHD_YES; /* the body follows */
			}
		} else if (fallback_path || !strcmp(path, "/healthcheck") || !strcmp(path, "/metrics")) {
			metrics_http("other", 405);
			ret = http_answer_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, ri.origin, "method not allowed");
		} else {
			metrics_http("other", 404);
			ret = http_answer_error(c, MHD_HTTP_NOT_FOUND, ri.origin,
			                        "not found: the relay serves websockets, POST .../trace and .../error, /healthcheck and /metrics");
		}
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
		ret = rq->discarded > HTTP_DISCARD_FACTOR * r->cfg.max_body_bytes ? MHD_NO : MHD_YES;
		goto out;
	}
	if (rq->too_big) {
		const char *route = ends_with(path, "/trace") ? "trace" : "error";
		log_info("request_refused", "route=%s status=413 peer=%s reason=\"body over max-body-bytes\"",
		         route, peer);
		metrics_http(route, 413);
		ret = http_answer_error(c, MHD_HTTP_CONTENT_TOO_LARGE, ri.origin, "body too large");
		goto out;
	}
	ret = route_fallback(r, c, &ri, rq->body ? rq->body : "", rq->body_len);
out:
	free(path);
	return ret;
}

static int parse_listen(const char *addr, unsigned port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof *ss);
	if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		return AF_INET6;
	}
	return -1;
}

int http_server_start(struct http_server **out, struct relay *r, const struct tls_pair *tls,
                      char **cause)
{
	struct http_server *s = calloc(1, sizeof *s);
	struct sockaddr_storage ss;
	unsigned flags = MHD_USE_TLS | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
	                 MHD_ALLOW_UPGRADE | MHD_USE_ITC | MHD_USE_ERROR_LOG;
	int family;

	*out = NULL;
	if (!s) {
		*cause = strdup("out of memory");
		return -1;
	}
	s->relay = r;
	family = parse_listen(r->cfg.listen_address, r->cfg.port, &ss);
	if (family < 0) {
		if (asprintf(cause, "listen-address %s is not an IPv4 or IPv6 address",
		             r->cfg.listen_address) < 0)
			*cause = NULL;
		free(s);
		return -1;
	}
	if (family == AF_INET6)
		flags |= MHD_USE_IPv6;

	s->daemon = MHD_start_daemon(
		flags, (uint16_t)r->cfg.port, NULL, NULL, on_request, s,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_HTTPS_MEM_CERT, tls->cert_pem,
		MHD_OPTION_HTTPS_MEM_KEY, tls->key_pem,
		MHD_OPTION_HTTPS_PRIORITIES, r->cfg.tls_priorities,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)r->cfg.http_threads,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)r->cfg.max_connections,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_CONNECTION_TIMEOUT_S,
		MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
		MHD_OPTION_END);
	if (!s->daemon) {
		if (asprintf(cause, "cannot listen on %s port %u: %s", r->cfg.listen_address,
		             r->cfg.port, strerror(errno)) < 0)
			*cause = NULL;
		free(s);
		return -1;
	}
	*out = s;
	return 0;
}

void http_server_quiesce(struct http_server *s)
{
	if (!s || !s->daemon)
		return;
	MHD_socket fd = MHD_quiesce_daemon(s->daemon);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
}

void http_server_stop(struct http_server *s)
{
	if (!s)
		return;
	if (s->daemon)
		MHD_stop_daemon(s->daemon);
	free(s);
}
