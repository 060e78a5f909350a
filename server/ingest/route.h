/*
 * route.h - the kinds of request the relay answers, one name each: the
 * `route=` of log lines and the `route` label of
 * watchrtc_relay_http_requests_total.  Header only, so that ops/metrics.c
 * can count by route without depending on the HTTP code.
 */
#ifndef WATCHRTC_ROUTE_H
#define WATCHRTC_ROUTE_H

enum route {
	ROUTE_WEBSOCKET,
	ROUTE_TRACE,
	ROUTE_ERROR,
	ROUTE_PREFLIGHT,
	ROUTE_HEALTHCHECK,
	ROUTE_METRICS,
	ROUTE_OTHER,
	ROUTE_COUNT
};

static inline const char *route_name(enum route r)
{
	switch (r) {
	case ROUTE_WEBSOCKET: return "websocket";
	case ROUTE_TRACE: return "trace";
	case ROUTE_ERROR: return "error";
	case ROUTE_PREFLIGHT: return "preflight";
	case ROUTE_HEALTHCHECK: return "healthcheck";
	case ROUTE_METRICS: return "metrics";
	case ROUTE_OTHER:
	case ROUTE_COUNT:
		break;
	}
	return "other";
}

#endif
