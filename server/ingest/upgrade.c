/*
 * upgrade.c - GET with "Upgrade: websocket": the door to the websocket
 * server.
 *
 * The handshake and the query are checked here, on MHD's thread; a good
 * request is answered 101 and, once MHD has sent that, the listener takes
 * its TLS connection to ws_server_adopt with everything the forwarder will need later (the query
 * verbatim, the session, the key, the client's addresses).  A key the
 * upstream refused is still upgraded: the websocket server then says so in
 * the hello, because an {error} hello is the one answer that makes the SDK
 * stop retrying, where an HTTP error only makes it back off and try again.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <microhttpd.h>

#include "access.h"
#include "keyban.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "relay.h"
#include "reqcheck.h"
#include "routes.h"
#include "websocket.h"
#include "ws_handshake.h"
#include "xff.h"

/*
 * What route_upgrade hands to the upgrade callback.  The callback takes the
 * meta; the ticket itself is freed by route_upgrade_completed, which MHD's
 * request-completed callback runs whether the upgrade happened or not.
 */
struct upgrade_ticket {
	struct relay *relay;
	struct ws_conn_meta *meta;    /* NULL once handed to the websocket server */
};

static const char *header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

/* Refuses the upgrade (route_refuse, and counted as a refused websocket);
 * a 503 or 429 also says when to come back. */
static enum MHD_Result refuse(struct relay *r, struct MHD_Connection *c,
                              const struct request_info *ri, unsigned status,
                              const char *reason)
{
	bool later = status == MHD_HTTP_SERVICE_UNAVAILABLE || status == MHD_HTTP_TOO_MANY_REQUESTS;

	metrics_add(M_WS_REFUSED, 1);
	return route_refuse(c, ri, ROUTE_WEBSOCKET, &(struct refusal){
		.status = status, .reason = reason,
		.retry_after_s = later ? r->cfg.retry_after_s : 0 });
}

/* Runs on MHD's thread once the 101 is out: the connection is ours now. */
static void on_upgraded(void *cls, struct MHD_Connection *c, void *req_cls, const char *extra,
                        size_t extra_len, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
	struct upgrade_ticket *t = cls;
	struct relay *r = t->relay;
	struct ws_conn_meta *meta = t->meta;

	t->meta = NULL;
	listener_upgraded(r->listener, sock, urh, extra, extra_len, meta);
}

void route_upgrade_completed(void *pending)
{
	struct upgrade_ticket *t = pending;

	if (!t)
		return;
	ws_conn_meta_free(t->meta);  /* still here only if the upgrade never happened */
	free(t);
}

/* A query parameter that must be present and not empty; caller frees. */
static char *required_param(const char *query, const char *name)
{
	char *v = query_get(query, name);

	if (v && !*v) {
		free(v);
		v = NULL;
	}
	return v;
}

/*
 * Copies what the websocket server needs out of ri, which dies with the
 * request.  The meta takes over the client's max-connections-per-ip slot:
 * freeing it gives the slot back.  On failure the slot is given back here.
 */
static struct ws_conn_meta *meta_create(struct relay *r, const struct request_info *ri,
                                        char *api_key, char *session)
{
	struct ws_conn_meta *m = calloc(1, sizeof *m);

	if (!m) {
		free(api_key);
		free(session);
		access_conn_release(r->access, ri->client_ip);
		return NULL;
	}
	m->client_ip = strdup(ri->client_ip ? ri->client_ip : "");
	if (m->client_ip)
		m->access = r->access;   /* from here on, freeing m gives the slot back */
	else
		access_conn_release(r->access, ri->client_ip);
	m->api_key = api_key;
	m->session = session;
	m->query = strdup(ri->query ? ri->query : "");
	m->peer_ip = strdup(ri->peer_ip ? ri->peer_ip : "");
	m->xff = xff_forward_chain(ri->xff, ri->peer_ip);
	m->user_agent = ri->user_agent ? strdup(ri->user_agent) : NULL;
	m->origin = ri->origin ? strdup(ri->origin) : NULL;
	if (!m->client_ip || !m->query || !m->peer_ip || !m->xff ||
	    (ri->user_agent && !m->user_agent) || (ri->origin && !m->origin)) {
		ws_conn_meta_free(m);
		return NULL;
	}
	m->key_rejected = keyban_contains(r->keyban, api_key);
	/* Not on the allowlist: the SDK's rejection too ({"error"} hello, 1008). */
	if (!m->key_rejected && !access_key_allowed(r->access, api_key)) {
		char kbuf[16];

		log_info("ws_key_refused",
		         "peer=%s client=%s key=%s reason=\"api key not in "
		         "allowed-keys\"",
		         m->peer_ip, m->client_ip, log_key(api_key, kbuf, sizeof kbuf));
		m->key_rejected = true;
		m->key_reason = "api key not allowed";
	}
	return m;
}

enum MHD_Result route_upgrade(struct relay *r, struct MHD_Connection *c,
                              const struct request_info *ri)
{
	struct ws_upgrade_req req = {
		.method = ri->method,
		.upgrade = header(c, MHD_HTTP_HEADER_UPGRADE),
		.connection = header(c, MHD_HTTP_HEADER_CONNECTION),
		.version = header(c, "Sec-WebSocket-Version"),
		.key = header(c, "Sec-WebSocket-Key"),
		.protocol = header(c, "Sec-WebSocket-Protocol"),
	};
	struct upgrade_ticket *t = NULL;
	struct MHD_Response *resp = NULL;
	char accept[29], *api_key, *session;
	enum MHD_Result ret = MHD_NO;
	const char *why;
	unsigned status;
	bool proto20;
	enum access_verdict v;

	if (atomic_load(&r->stopping))
		return refuse(r, c, ri, MHD_HTTP_SERVICE_UNAVAILABLE, "server shutting down");
	if (!r->cfg.websocket_enabled)
		return refuse(r, c, ri, MHD_HTTP_SERVICE_UNAVAILABLE, "websockets disabled");
	if (!access_origin_allowed(r->access, ri->origin))
		return refuse(r, c, ri, MHD_HTTP_FORBIDDEN, "origin not allowed");
	why = ws_handshake_check(&req, accept, &proto20);
	if (why)
		return refuse(r, c, ri, MHD_HTTP_BAD_REQUEST, why);
	/* The query becomes the upstream's target and these headers its
	 * headers: what could not be sent there is not taken here. */
	why = reqcheck_query(ri->query);
	if (!why)
		why = reqcheck_header(ri->user_agent);
	if (!why)
		why = reqcheck_header(ri->origin);
	if (why)
		return refuse(r, c, ri, MHD_HTTP_BAD_REQUEST, why);
	api_key = required_param(ri->query, "apiKey");
	if (!api_key)
		api_key = required_param(ri->query, "token");
	if (!api_key)
		return refuse(r, c, ri, MHD_HTTP_BAD_REQUEST, "missing apiKey");
	session = required_param(ri->query, "sessionId");
	if (!session) {
		free(api_key);
		return refuse(r, c, ri, MHD_HTTP_BAD_REQUEST, "missing sessionId");
	}
	status = reqcheck_session(session, r->cfg.max_session_id_bytes, &why);
	if (status) {
		free(api_key);
		free(session);
		return refuse(r, c, ri, status, why);
	}
	/* An HTTP refusal, not a close after the upgrade: the SDK then backs
	 * off exponentially, where a dropped open socket is retried in 1-4 s. */
	v = access_conn_acquire(r->access, ri->client_ip);
	if (v != ACCESS_OK) {
		free(api_key);
		free(session);
		return refuse(r, c, ri, MHD_HTTP_TOO_MANY_REQUESTS, access_verdict_reason(v));
	}

	t = calloc(1, sizeof *t);
	if (!t) {
		free(api_key);
		free(session);
		access_conn_release(r->access, ri->client_ip);
		goto out;
	}
	t->relay = r;
	t->meta = meta_create(r, ri, api_key, session);
	if (!t->meta)
		goto out;

	/* MHD adds "Connection: Upgrade" itself when the app sets Upgrade.  No
	 * Sec-WebSocket-Extensions: permessage-deflate is never accepted. */
	resp = MHD_create_response_for_upgrade(on_upgraded, t);
	if (!resp ||
	    MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket") != MHD_YES ||
	    MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept) != MHD_YES ||
	    (proto20 && MHD_add_response_header(resp, "Sec-WebSocket-Protocol", "2.0") != MHD_YES))
		goto out;
	ret = MHD_queue_response(c, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
	if (ret == MHD_YES) {
		metrics_http(ROUTE_WEBSOCKET, MHD_HTTP_SWITCHING_PROTOCOLS);
		*ri->pending = t;
		t = NULL;   /* route_upgrade_completed frees it now */
	}
out:
	if (ret != MHD_YES)
		log_error("ws_error", "peer=%s reason=\"cannot queue the 101 answer\"",
		          ri->peer_ip);
	if (resp)
		MHD_destroy_response(resp);
	if (t)
		route_upgrade_completed(t);
	return ret;
}
