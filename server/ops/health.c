/*
 * health.c - GET /healthcheck (readiness, the load balancer's probe),
 * /healthcheck/ready (the same), /healthcheck/live (the process answers),
 * and GET /metrics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "relay.h"
#include "routes.h"

static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type,
                              char *text, size_t len)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	if (!resp) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(c, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Why the relay should not get traffic now, or NULL if it should. */
static const char *not_ready(struct relay *r, const struct queue_stats *st, char *buf,
                             size_t size)
{
	uint64_t pct = r->cfg.queue_high_water_pct;
	int64_t now = wall_ms(), down_since = metrics_upstream_down_since_ms();

	if (atomic_load(&r->stopping))
		return "shutting down";
	if (!st->writable) {
		snprintf(buf, size, "database not writable: %s", st->error);
		return buf;
	}
	if (st->max_messages && st->depth * 100 >= st->max_messages * pct) {
		snprintf(buf, size, "queue above high-water mark: %llu of %llu messages",
		         (unsigned long long)st->depth, (unsigned long long)st->max_messages);
		return buf;
	}
	if (st->max_bytes && st->bytes * 100 >= st->max_bytes * pct) {
		snprintf(buf, size, "queue above high-water mark: %llu of %llu bytes",
		         (unsigned long long)st->bytes, (unsigned long long)st->max_bytes);
		return buf;
	}
	if (r->cfg.ready_max_oldest_age_s && st->oldest_ms > 0 &&
	    now - st->oldest_ms > (int64_t)r->cfg.ready_max_oldest_age_s * 1000) {
		snprintf(buf, size, "oldest message waiting %lld s, over ready-max-oldest-age-s",
		         (long long)((now - st->oldest_ms) / 1000));
		return buf;
	}
	if (r->cfg.ready_max_upstream_down_s && down_since > 0 &&
	    now - down_since > (int64_t)r->cfg.ready_max_upstream_down_s * 1000) {
		snprintf(buf, size, "upstream failing for %lld s, over ready-max-upstream-down-s",
		         (long long)((now - down_since) / 1000));
		return buf;
	}
	return NULL;
}

static enum MHD_Result route_health(struct relay *r, struct MHD_Connection *c,
                                    const struct request_info *ri)
{
	struct queue_stats st;
	const char *reason;
	char buf[256], *text;
	int64_t age = 0;
	unsigned status;
	json_t *obj;

	if (strcmp(ri->method, "GET") && strcmp(ri->method, "HEAD")) {
		return route_refuse(c, ri, ROUTE_HEALTHCHECK, &(struct refusal){
			.status = MHD_HTTP_METHOD_NOT_ALLOWED, .reason = "method not allowed" });
	}
	if (!strcmp(ri->path, "/healthcheck/live")) {
		metrics_http(ROUTE_HEALTHCHECK, 200);
		text = strdup("{\"status\":\"live\"}");
		return text ? answer(c, 200, "application/json", text, strlen(text)) : MHD_NO;
	}
	if (strcmp(ri->path, "/healthcheck") && strcmp(ri->path, "/healthcheck/ready")) {
		return route_refuse(c, ri, ROUTE_HEALTHCHECK, &(struct refusal){
			.status = MHD_HTTP_NOT_FOUND, .reason = "not found" });
	}

	queue_stats(r->queue, &st);
	reason = not_ready(r, &st, buf, sizeof buf);
	if (st.oldest_ms > 0)
		age = wall_ms() - st.oldest_ms;
	status = reason ? 503 : 200;
	obj = json_pack("{s:s, s:I, s:I, s:I}", "status", reason ? "unavailable" : "ok",
	                "queue_depth", (json_int_t)st.depth, "oldest_age_ms",
	                (json_int_t)(age > 0 ? age : 0), "dead_letters", (json_int_t)st.dead);
	if (obj && reason)
		json_object_set_new(obj, "reason", json_string(reason));
	/* The upstream as both transports last saw it (POSTs and upgrades). */
	if (obj) {
		int64_t down_since = metrics_upstream_down_since_ms();

		json_object_set_new(obj, "upstream", json_string(down_since > 0 ? "down" : "up"));
		if (down_since > 0)
			json_object_set_new(obj, "upstream_down_ms",
			                    json_integer(wall_ms() - down_since));
		json_object_set_new(obj, "upstream_websockets",
		                    json_integer(metrics_gauge_get(G_UPWS_OPEN)));
		json_object_set_new(obj, "sessions_upstream", json_integer((json_int_t)st.streams));
	}
	text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
	json_decref(obj);
	if (!text)
		return MHD_NO;
	metrics_http(ROUTE_HEALTHCHECK, status);
	if (reason)
		log_debug("not_ready", "reason=\"%s\"", reason);
	return answer(c, status, "application/json", text, strlen(text));
}

static enum MHD_Result route_metrics(struct relay *r, struct MHD_Connection *c,
                                     const struct request_info *ri)
{
	struct queue_dead_reason dead[METRICS_DEAD_REASONS_MAX];
	struct queue_stats st;
	size_t len = 0, ndead = 0;
	char *text;
	int err;

	if (strcmp(ri->method, "GET")) {
		return route_refuse(c, ri, ROUTE_METRICS, &(struct refusal){
			.status = MHD_HTTP_METHOD_NOT_ALLOWED, .reason = "method not allowed" });
	}
	queue_stats(r->queue, &st);
	/* A failed read leaves the family empty rather than failing the scrape:
	 * the other figures matter most when the database is in trouble. */
	err = queue_dead_reasons(r->queue, dead, METRICS_DEAD_REASONS_MAX, &ndead);
	if (err != QUEUE_OK)
		log_warn("metrics_dead_letters", "error=\"%s\"", queue_strerror(err));
	metrics_http(ROUTE_METRICS, 200);
	text = metrics_render(&st, dead, ndead, &len);
	if (!text)
		return http_answer_error(c, 500, NULL, "cannot render metrics");
	return answer(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

bool route_is_ops(const char *path)
{
	return !strcmp(path, "/metrics") || !strcmp(path, "/healthcheck") ||
	       !strncmp(path, "/healthcheck/", 13);
}

enum MHD_Result route_ops(struct relay *r, struct MHD_Connection *c,
                          const struct request_info *ri, bool serve_metrics)
{
	if (strcmp(ri->path, "/metrics"))
		return route_health(r, c, ri);
	if (serve_metrics)
		return route_metrics(r, c, ri);
	return route_refuse(c, ri, ROUTE_METRICS, &(struct refusal){
		.status = MHD_HTTP_NOT_FOUND,
		.reason = "not found: /metrics is served on the admin listener only" });
}
