/*
 * routes.h - the request handlers that http.c dispatches to.  Internal to
 * server/: each handler answers one kind of request on a libmicrohttpd
 * connection and returns what MHD_queue_response returned.
 */
#ifndef WATCHRTC_ROUTES_H
#define WATCHRTC_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <microhttpd.h>

#include "answer.h"
#include "route.h"

struct relay;

/* What http.c learned about a request before dispatching it. */
struct request_info {
	const char *method;
	const char *path;      /* without the query */
	const char *query;     /* exactly as sent, without '?'; NULL if none */
	const char *peer_ip;   /* the TCP peer's address */
	const char *client_ip; /* the client's: peer_ip, or behind a trusted proxy its XFF's */
	const char *xff;       /* every X-Forwarded-For header, joined; NULL if none */
	const char *user_agent, *origin;
	const char *cors_origin; /* origin if allowed-origins lets it see answers, else NULL */
	/* Where a route leaves per-request state; http.c hands what it finds
	 * there to route_upgrade_completed when MHD reports the request done. */
	void **pending;
};

/* Why a request is refused. */
struct refusal {
	unsigned status;
	const char *reason;       /* the answer's {"error": reason}, and the log's */
	const char *key;          /* when not NULL, logged (masked) as key= */
	unsigned retry_after_s;   /* 0: no Retry-After */
};

/* Refuses a request: one `request_refused` log line (route, status, peer,
 * client, key, reason), the route's counter, and the JSON error answer with
 * the request's CORS origin.  Every route refuses through here. */
enum MHD_Result route_refuse(struct MHD_Connection *c, const struct request_info *ri,
                             enum route route, const struct refusal *why);

/* GET with "Upgrade: websocket": checks the handshake and the query, then
 * answers 101 and hands the socket to the websocket server, or answers 4xx. */
enum MHD_Result route_upgrade(struct relay *r, struct MHD_Connection *c,
                              const struct request_info *ri);
/* Releases what route_upgrade left in *ri->pending (NULL is fine): call it
 * from MHD's request-completed callback, which MHD runs after the upgrade
 * callback if the upgrade happened and also when it never did. */
void route_upgrade_completed(void *pending);

/* OPTIONS <any path>/trace|error: the CORS preflight. */
enum MHD_Result route_preflight(struct relay *r, struct MHD_Connection *c,
                                const struct request_info *ri);

/* POST <any path>/trace|error, called once the whole body is in. */
enum MHD_Result route_fallback(struct relay *r, struct MHD_Connection *c,
                               const struct request_info *ri, const char *body,
                               size_t body_len);

/* True for the paths route_ops serves: /healthcheck[/...] and /metrics. */
bool route_is_ops(const char *path);
/* GET /healthcheck[/live|/ready] and GET /metrics, for the TLS port and the
 * admin listener alike; /metrics only when serve_metrics, else 404. */
enum MHD_Result route_ops(struct relay *r, struct MHD_Connection *c,
                          const struct request_info *ri, bool serve_metrics);

#endif
