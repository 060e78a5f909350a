/*
 * answer.c - the relay's HTTP error answers: a JSON body {"error": reason}
 * that the SDK and an operator can both read, CORS headers so that the
 * page sees it, and Retry-After where the client should come back later.
 * Every route answers its refusals through here; it calls nothing above it.
 */
#include "answer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "metrics.h"
#include "routes.h"

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

enum MHD_Result route_refuse(struct MHD_Connection *c, const struct request_info *ri,
                             enum route route, const struct refusal *why)
{
	char quoted[200], kbuf[16];

	if (why->key)
		log_info("request_refused", "route=%s status=%u peer=%s client=%s key=%s reason=%s",
		         route_name(route), why->status, ri->peer_ip,
		         ri->client_ip ? ri->client_ip : ri->peer_ip,
		         log_key(why->key, kbuf, sizeof kbuf),
		         log_quote(why->reason, quoted, sizeof quoted));
	else
		log_info("request_refused", "route=%s status=%u peer=%s client=%s reason=%s",
		         route_name(route), why->status, ri->peer_ip,
		         ri->client_ip ? ri->client_ip : ri->peer_ip,
		         log_quote(why->reason, quoted, sizeof quoted));
	metrics_http(route, why->status);
	return http_answer_error_retry(c, why->status, ri->cors_origin, why->reason,
	                               why->retry_after_s);
}
