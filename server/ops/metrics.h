/*
 * metrics.h - the relay's counters, gauges and histograms, rendered in the
 * Prometheus text format.  Process-wide and lock-free: every update is one
 * relaxed atomic add, so hot paths may call these freely.
 */
#ifndef WATCHRTC_METRICS_H
#define WATCHRTC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "route.h"

struct queue_stats;
struct queue_dead_reason;

/* Most reason labels of watchrtc_relay_dead_letters; the queue sums the
 * rest under reason="other" (queue_dead_reasons). */
#define METRICS_DEAD_REASONS_MAX 32

enum metric_counter {
	M_RECEIVED_WS,          /* watchrtc_relay_messages_received_total{transport="websocket"} */
	M_RECEIVED_HTTP,        /* ...{transport="https"} */
	M_RECEIVED_BYTES,
	M_FORWARDED,            /* messages delivered upstream (2xx) */
	M_ATTEMPT_SUCCESS,      /* forward attempts by result */
	M_ATTEMPT_RETRY,
	M_ATTEMPT_DEAD,
	M_ATTEMPT_REJECTED_KEY,
	M_WS_CONNECTIONS,       /* websocket connections accepted */
	M_WS_REFUSED,           /* upgrades refused */
	M_WS_CLOSED_ERROR,      /* closed by the relay for a protocol error */
	M_COMMITS,
	M_UPWS_FRAMES,          /* text frames sent on upstream websockets */
	M_UPWS_RESENT,          /* ... of them unfenced when their websocket ended: sent again */
	M_UPWS_UPGRADE_OK,      /* upstream websocket upgrades by result: */
	M_UPWS_UPGRADE_REFUSED,
	M_UPWS_UPGRADE_KEY_REJECTED,
	M_UPWS_UPGRADE_FAILED,  /* network, TLS, timeout, protocol */
	M_UPWS_DROPPED,         /* open upstream websockets that ended without our close */
	M_UPWS_TLS_RESUMED,     /* upstream websockets whose TLS handshake resumed a session */
	M_COUNTER_COUNT
};

enum metric_gauge {
	G_WS_OPEN,              /* websocket connections open */
	G_UPSTREAM_UP,          /* 1 if the last attempt reached the upstream */
	G_UPWS_OPEN,            /* upstream websockets open */
	G_GAUGE_COUNT
};

enum metric_hist {
	H_FORWARD_SECONDS,      /* one upstream POST */
	H_COMMIT_SECONDS,       /* receipt to durable commit */
	H_COMMIT_BATCH,         /* messages per commit (unitless) */
	H_FENCE_SECONDS,        /* a fence's ping to its pong */
	H_HIST_COUNT
};

void metrics_add(enum metric_counter c, uint64_t n);
void metrics_gauge_add(enum metric_gauge g, int64_t delta);
void metrics_gauge_set(enum metric_gauge g, int64_t value);
void metrics_observe(enum metric_hist h, double value);
/* A gauge's value now. */
int64_t metrics_gauge_get(enum metric_gauge g);

/* When the upstream started failing (ms since the epoch), or 0 if it is up. */
int64_t metrics_upstream_down_since_ms(void);
/* One HTTP answer on route with status. */
void metrics_http(enum route route, unsigned status);

/* Renders everything, with the queue's figures from qs (none if NULL) and
 * its dead letters by reason from dead[0..ndead-1].  Caller frees. */
char *metrics_render(const struct queue_stats *qs, const struct queue_dead_reason *dead,
                     size_t ndead, size_t *len);

#endif
