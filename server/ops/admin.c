/*
 * admin.c - the plain-HTTP admin listener (/metrics, /healthcheck*).
 *
 * A separate libmicrohttpd daemon without TLS, so that a scraper on the
 * same host needs no certificate.  Plaintext is the reason it refuses a
 * non-loopback address unless admin-allow-remote is set.
 */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "cause.h"
#include "clientip.h"
#include "log.h"
#include "metrics.h"
#include "relay.h"
#include "routes.h"

#define ADMIN_THREADS 1
#define ADMIN_CONNECTION_LIMIT 64
#define ADMIN_TIMEOUT_S 10

struct admin_server {
	struct MHD_Daemon *daemon;
	struct relay *relay;
};

int admin_parse_listen(const char *spec, char *addr, unsigned addr_size, unsigned *port)
{
	const char *colon, *start = spec, *end;
	char *stop;
	unsigned long p;

	if (!spec || !*spec)
		return -1;
	if (*spec == '[') {
		start = spec + 1;
		end = strchr(start, ']');
		if (!end || end[1] != ':')
			return -1;
		colon = end + 1;
	} else {
		colon = strrchr(spec, ':');
		if (!colon)
			return -1;
		end = colon;
	}
	if ((size_t)(end - start) + 1 > addr_size || end == start)
		return -1;
	memcpy(addr, start, (size_t)(end - start));
	addr[end - start] = '\0';
	errno = 0;
	p = strtoul(colon + 1, &stop, 10);
	if (errno || *stop || stop == colon + 1 || p == 0 || p > 65535)
		return -1;
	*port = (unsigned)p;
	return 0;
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	if (ss->ss_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
	return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
	struct admin_server *s = cls;
	struct request_info ri = { .method = method, .path = url, .peer_ip = "admin" };

	/* Ignore any body: none of the admin routes takes one. */
	if (*upload_data_size) {
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (route_is_ops(url))
		return route_ops(s->relay, c, &ri, true);
	return route_refuse(c, &ri, ROUTE_OTHER, &(struct refusal){
		.status = MHD_HTTP_NOT_FOUND,
		.reason = "not found: the admin listener serves /metrics and /healthcheck" });
}

/* Parses spec into ss; refuses a non-loopback address unless allowed. */
static int resolve_listen(const char *spec, bool allow_remote, struct sockaddr_storage *ss,
                          unsigned *sslen, unsigned *port, char **cause)
{
	char addr[64];

	if (admin_parse_listen(spec, addr, sizeof addr, port) < 0 ||
	    clientip_sockaddr(addr, *port, ss, sslen) < 0) {
		cause_set(cause, -1, "admin-listen %s is not ADDR:PORT (e.g. 127.0.0.1:9100 or "
		          "[::1]:9100)", spec);
		return -1;
	}
	if (!is_loopback(ss) && !allow_remote) {
		cause_set(cause, -1,
		          "admin-listen %s is not a loopback address: the admin listener is "
		          "plain HTTP; set admin-allow-remote to serve it anyway",
		          spec);
		return -1;
	}
	return 0;
}

int admin_check_listen(const char *spec, bool allow_remote, char **cause)
{
	struct sockaddr_storage ss;
	unsigned sslen, port;

	*cause = NULL;
	if (!spec || !*spec)
		return 0;
	return resolve_listen(spec, allow_remote, &ss, &sslen, &port, cause);
}

int admin_server_start(struct admin_server **out, struct relay *r, char **cause)
{
	struct admin_server *s;
	struct sockaddr_storage ss;
	unsigned sslen, port, flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;

	*out = NULL;
	if (!r->cfg.admin_listen || !*r->cfg.admin_listen)
		return 0;
	if (resolve_listen(r->cfg.admin_listen, r->cfg.admin_allow_remote, &ss, &sslen, &port,
	                   cause) < 0)
		return -1;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	s = calloc(1, sizeof *s);
	if (!s) {
		*cause = strdup("out of memory");
		return -1;
	}
	s->relay = r;
	s->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, s,
	                             MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
	                             MHD_OPTION_THREAD_POOL_SIZE, (unsigned)ADMIN_THREADS,
	                             MHD_OPTION_CONNECTION_LIMIT, (unsigned)ADMIN_CONNECTION_LIMIT,
	                             MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ADMIN_TIMEOUT_S,
	                             MHD_OPTION_END);
	if (!s->daemon) {
		cause_set(cause, -1, "cannot listen on admin-listen %s: %s", r->cfg.admin_listen,
		          strerror(errno));
		free(s);
		return -1;
	}
	if (!is_loopback(&ss))
		log_warn("admin_listening",
		         "addr=%s msg=\"plain HTTP admin listener on a non-loopback address\"",
		         r->cfg.admin_listen);
	else
		log_info("admin_listening", "addr=%s", r->cfg.admin_listen);
	*out = s;
	return 0;
}

void admin_server_stop(struct admin_server *s)
{
	if (!s)
		return;
	MHD_stop_daemon(s->daemon);
	free(s);
}
