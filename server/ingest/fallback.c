/*
 * fallback.c - the SDK's HTTPS fallback: POST <proxyUrl>/trace and /error,
 * and the CORS preflight that the browser sends before each of them.
 *
 * A POST is answered 200 only after its message is durably committed; the
 * SDK ignores the status, but an operator's retrying client would not, and
 * the rule "persist before you reply" is what makes the answer mean
 * something.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "clock.h"
#include "fallback_body.h"
#include "keyban.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "queue.h"
#include "relay.h"
#include "reqcheck.h"
#include "routes.h"
#include "xff.h"

/* Retry-After of a 429 for max-messages-per-ip-per-s: the bucket refills
 * continuously, so a second is enough for the next message. */
#define FALLBACK_RATE_RETRY_AFTER_S 1

static enum route path_route(const char *path)
{
	size_t n = strlen(path);

	return n >= 6 && !strcmp(path + n - 6, "/trace") ? ROUTE_TRACE : ROUTE_ERROR;
}

static void add_cors(struct MHD_Response *resp, const char *origin)
{
	MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin ? origin : "*");
	MHD_add_response_header(resp, "Vary", "Origin");
}

enum MHD_Result route_preflight(struct relay *r, struct MHD_Connection *c,
                                const struct request_info *ri)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	char max_age[16];
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	if (!access_origin_allowed(r->access, ri->origin)) {
		MHD_destroy_response(resp);
		return route_refuse(c, ri, ROUTE_PREFLIGHT, &(struct refusal){
			.status = MHD_HTTP_FORBIDDEN, .reason = "origin not allowed" });
	}
	snprintf(max_age, sizeof max_age, "%u", r->cfg.cors_max_age_s);
	add_cors(resp, ri->origin);
	MHD_add_response_header(resp, "Access-Control-Allow-Methods", "POST, OPTIONS");
	MHD_add_response_header(resp, "Access-Control-Allow-Headers", "content-type");
	MHD_add_response_header(resp, "Access-Control-Max-Age", max_age);
	ret = MHD_queue_response(c, MHD_HTTP_NO_CONTENT, resp);
	MHD_destroy_response(resp);
	metrics_http(ROUTE_PREFLIGHT, MHD_HTTP_NO_CONTENT);
	return ret;
}

/* The allowlist, or a projectId that the relay itself hands out in its
 * hello (project-id): the SDK posts that one instead of its key's. */
static bool key_allowed(struct relay *r, const char *key, bool from_body)
{
	if (access_key_allowed(r->access, key))
		return true;
	return from_body && key && *r->cfg.project_id && !strcmp(key, r->cfg.project_id);
}

enum MHD_Result route_fallback(struct relay *r, struct MHD_Connection *c,
                               const struct request_info *ri, const char *body, size_t body_len)
{
	enum route route = path_route(ri->path);
	struct body_fields f = { 0 };
	char *xff = NULL, *key = NULL, *qsession = NULL, reason[200];
	const char *session, *content_type, *why;
	unsigned status;
	struct MHD_Response *resp;
	enum MHD_Result ret;
	bool key_from_body = false;
	int err;

	if (atomic_load(&r->stopping)) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_SERVICE_UNAVAILABLE, .reason = "shutting down",
			.retry_after_s = r->cfg.retry_after_s });
		goto out;
	}
	if (!access_origin_allowed(r->access, ri->origin)) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_FORBIDDEN, .reason = "origin not allowed" });
		goto out;
	}
	if (!access_message(r->access, ri->client_ip)) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_TOO_MANY_REQUESTS,
			.reason = "rate limit: over max-messages-per-ip-per-s",
			.retry_after_s = FALLBACK_RATE_RETRY_AFTER_S });
		goto out;
	}
	err = body_check(body, body_len, &f, reason, sizeof reason);
	if (err == -2) {
		ret = MHD_NO;
		goto out;
	}
	if (err < 0) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_BAD_REQUEST, .reason = reason });
		goto out;
	}

	content_type =
		MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
	/* What is stored must be sendable: the headers passed on, the session. */
	why = reqcheck_query(ri->query);
	if (!why)
		why = reqcheck_header(ri->user_agent);
	if (!why)
		why = reqcheck_header(ri->origin);
	if (!why)
		why = reqcheck_header(content_type);
	if (why) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_BAD_REQUEST, .reason = why });
		goto out;
	}
	session = f.session;
	if (!session)
		session = qsession = query_get(ri->query, "sessionId");
	status = reqcheck_session(session, r->cfg.max_session_id_bytes, &why);
	if (status) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = status, .reason = why });
		goto out;
	}

	/* The upstream gets the body, not the query: it judges the POST by the
	 * body's projectId (the SDK's key, or the relay's project-id), so that
	 * is the key checked, stored and, if the upstream refuses it, banned.
	 * A key in the query must be the same one.  With no projectId the
	 * query's key is all there is to check, and nothing is stored as the
	 * key: the upstream cannot have refused a key it was not given. */
	key = query_get(ri->query, "apiKey");
	if (!key)
		key = query_get(ri->query, "token");
	if (f.project_id) {
		if (key && strcmp(key, f.project_id)) {
			ret = route_refuse(c, ri, route, &(struct refusal){
				.status = MHD_HTTP_UNAUTHORIZED, .key = key,
				.reason = "the query's key is not the body's projectId" });
			goto out;
		}
		free(key);
		key = f.project_id;
		f.project_id = NULL;
		key_from_body = true;
	}
	if (!key_allowed(r, key, key_from_body)) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_UNAUTHORIZED, .key = key,
			.reason = "api key not allowed" });
		goto out;
	}
	if (key && keyban_contains(r->keyban, key)) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_UNAUTHORIZED, .key = key,
			.reason = "api key rejected by upstream" });
		goto out;
	}

	xff = xff_forward_chain(ri->xff, ri->peer_ip);
	if (!xff) {
		ret = MHD_NO;
		goto out;
	}

	struct queue_msg m = {
		.received_ms = wall_ms(),
		.session = session ? session : "",
		.target = route == ROUTE_TRACE ? "/trace" : "/error",
		.content_type = content_type ? content_type : "application/json",
		.xff = xff,
		.peer_ip = ri->peer_ip,
		.user_agent = ri->user_agent,
		.origin = ri->origin,
		.api_key = key_from_body ? key : NULL,
		.body = body,
		.body_len = body_len,
	};
	err = queue_put(r->queue, &m, true, NULL);
	if (err) {
		ret = route_refuse(c, ri, route, &(struct refusal){
			.status = MHD_HTTP_SERVICE_UNAVAILABLE, .reason = queue_strerror(err),
			.retry_after_s = r->cfg.retry_after_s });
		goto out;
	}
	metrics_add(M_RECEIVED_HTTP, 1);
	metrics_add(M_RECEIVED_BYTES, body_len);

	resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	if (!resp) {
		ret = MHD_NO;
		goto out;
	}
	add_cors(resp, ri->origin);
	ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	metrics_http(route, MHD_HTTP_OK);
out:
	body_fields_release(&f);
	free(xff);
	free(key);
	free(qsession);
	return ret;
}
