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
#include <time.h>

#include "access.h"
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

static const char *route_name(const char *path)
{
	size_t n = strlen(path);

	return n >= 6 && !strcmp(path + n - 6, "/trace") ? "trace" : "error";
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void add_cors(struct MHD_Response *resp, const char *origin)
{
	MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin ? origin : "*");
	MHD_add_response_header(resp, "Vary", "Origin");
}

enum MHD_Result route_preflight(struct relay *r, struct MHD_Connection *c,
                                const struct request_info *ri)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
	char max_age[16];
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	if (!access_origin_allowed(r->access, ri->origin)) {
		MHD_destroy_response(resp);
		log_info("request_refused", "route=preflight status=403 peer=%s client=%s "
		         "reason=\"origin not allowed\"", ri->peer_ip, ri->client_ip);
		metrics_http("preflight", MHD_HTTP_FORBIDDEN);
		return http_answer_error(c, MHD_HTTP_FORBIDDEN, NULL, "origin not allowed");
	}
	snprintf(max_age, sizeof max_age, "%u", r->cfg.cors_max_age_s);
	add_cors(resp, ri->origin);
	MHD_add_response_header(resp, "Access-Control-Allow-Methods", "POST, OPTIONS");
	MHD_add_response_header(resp, "Access-Control-Allow-Headers", "content-type");
	MHD_add_response_header(resp, "Access-Control-Max-Age", max_age);
	ret = MHD_queue_response(c, MHD_HTTP_NO_CONTENT, resp);
	MHD_destroy_response(resp);
	metrics_http("preflight", MHD_HTTP_NO_CONTENT);
	return ret;
}

static enum MHD_Result answer_unavailable(struct relay *r, struct MHD_Connection *c,
                                          const struct request_info *ri, const char *route,
                                          const char *reason)
{
	metrics_http(route, MHD_HTTP_SERVICE_UNAVAILABLE);
	log_warn("request_refused", "route=%s status=503 peer=%s reason=\"%s\"", route, ri->peer_ip,
	         reason);
	return http_answer_error_retry(c, MHD_HTTP_SERVICE_UNAVAILABLE, ri->origin ? ri->origin : "*",
	                               reason, r->cfg.retry_after_s);
}

static enum MHD_Result refuse(struct MHD_Connection *c, const struct request_info *ri,
                              const char *route, unsigned status, const char *reason)
{
	log_info("request_refused", "route=%s status=%u peer=%s client=%s reason=\"%s\"", route,
	         status, ri->peer_ip, ri->client_ip, reason);
	metrics_http(route, status);
	return http_answer_error(c, status, ri->origin, reason);
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
	const char *route = route_name(ri->path);
	struct body_fields f = { 0 };
	char *xff = NULL, *key = NULL, *qsession = NULL, reason[200], kbuf[16];
	const char *session, *content_type, *why;
	unsigned status;
	struct MHD_Response *resp;
	enum MHD_Result ret;
	bool key_from_body = false;
	int err;

	if (atomic_load(&r->stopping)) {
		ret = answer_unavailable(r, c, ri, route, "shutting down");
		goto out;
	}
	if (!access_origin_allowed(r->access, ri->origin)) {
		log_info("request_refused", "route=%s status=403 peer=%s client=%s "
		         "reason=\"origin not allowed\"", route, ri->peer_ip, ri->client_ip);
		metrics_http(route, MHD_HTTP_FORBIDDEN);
		ret = http_answer_error(c, MHD_HTTP_FORBIDDEN, NULL, "origin not allowed");
		goto out;
	}
	if (!access_message(r->access, ri->client_ip)) {
		log_info("request_refused", "route=%s status=429 peer=%s client=%s reason=\"rate "
		         "limit: over max-messages-per-ip-per-s\"", route, ri->peer_ip, ri->client_ip);
		metrics_http(route, MHD_HTTP_TOO_MANY_REQUESTS);
		ret = http_answer_error_retry(c, MHD_HTTP_TOO_MANY_REQUESTS, ri->origin, "rate limit",
		                             FALLBACK_RATE_RETRY_AFTER_S);
		goto out;
	}
	err = body_check(body, body_len, &f, reason, sizeof reason);
	if (err == -2) {
		ret = MHD_NO;
		goto out;
	}
	if (err < 0) {
		ret = refuse(c, ri, route, MHD_HTTP_BAD_REQUEST, reason);
		goto out;
	}

	content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
	/* What is stored must be sendable: the headers passed on, the session. */
	why = reqcheck_query(ri->query);
	if (!why)
		why = reqcheck_header(ri->user_agent);
	if (!why)
		why = reqcheck_header(ri->origin);
	if (!why)
		why = reqcheck_header(content_type);
	if (why) {
		ret = refuse(c, ri, route, MHD_HTTP_BAD_REQUEST, why);
		goto out;
	}
	session = f.session;
	if (!session)
		session = qsession = query_get(ri->query, "sessionId");
	status = reqcheck_session(session, r->cfg.max_session_id_bytes, &why);
	if (status) {
		ret = refuse(c, ri, route, status, why);
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
			log_info("request_refused", "route=%s status=401 peer=%s client=%s key=%s "
			         "reason=\"the query's key is not the body's projectId\"", route,
			         ri->peer_ip, ri->client_ip, log_key(key, kbuf, sizeof kbuf));
			metrics_http(route, MHD_HTTP_UNAUTHORIZED);
			ret = http_answer_error(c, MHD_HTTP_UNAUTHORIZED, ri->origin,
			                        "apiKey does not match projectId");
			goto out;
		}
		free(key);
		key = f.project_id;
		f.project_id = NULL;
		key_from_body = true;
	}
	if (!key_allowed(r, key, key_from_body)) {
		log_info("request_refused", "route=%s status=401 peer=%s client=%s key=%s "
		         "reason=\"api key not in allowed-keys\"", route, ri->peer_ip, ri->client_ip,
		         log_key(key, kbuf, sizeof kbuf));
		metrics_http(route, MHD_HTTP_UNAUTHORIZED);
		ret = http_answer_error(c, MHD_HTTP_UNAUTHORIZED, ri->origin, "api key not allowed");
		goto out;
	}
	if (key && keyban_contains(r->keyban, key)) {
		log_info("request_refused", "route=%s status=401 peer=%s key=%s reason=\"api key rejected by upstream\"",
		         route, ri->peer_ip, log_key(key, kbuf, sizeof kbuf));
		metrics_http(route, MHD_HTTP_UNAUTHORIZED);
		ret = http_answer_error(c, MHD_HTTP_UNAUTHORIZED, ri->origin, "api key rejected by upstream");
		goto out;
	}

	xff = xff_forward_chain(ri->xff, ri->peer_ip);
	if (!xff) {
		ret = MHD_NO;
		goto out;
	}

	struct queue_msg m = {
		.received_ms = now_ms(),
		.session = session ? session : "",
		.target = !strcmp(route, "trace") ? "/trace" : "/error",
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
		ret = answer_unavailable(r, c, ri, route, queue_strerror(err));
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
