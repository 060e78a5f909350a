/*
 * forwarder.h - worker threads that drain the queue to the upstream over
 * HTTPS with libcurl.  Each worker drives one curl multi handle with up to
 * `inflight` concurrent requests over kept-alive connections: one connection
 * per request in flight over HTTP/1.1, or streams multiplexed over HTTP/2
 * where the upstream offers it.  2xx acks a message; 408/425/429/5xx and
 * transport errors retry it with exponential backoff and jitter (Retry-After
 * honoured); 401/403 reject its API key; any other status dead-letters it.
 *
 * A forwarder owns its queue's notify callback (queue_set_notify): run one
 * forwarder per queue.
 */
#ifndef WATCHRTC_FORWARDER_H
#define WATCHRTC_FORWARDER_H

#include <stdbool.h>
#include <stddef.h>

struct queue;
struct keyban;
struct forwarder;

/* The upstream HTTP version.  HTTP/1.1 costs libcurl less CPU per request
 * than HTTP/2 (see BENCHMARKS.md), so it is the zero value and the default. */
enum forward_http {
	FWD_HTTP_1_1 = 0,       /* HTTP/1.1 keep-alive, workers x inflight connections */
	FWD_HTTP_2,             /* HTTP/2 over TLS when the upstream offers it (ALPN),
	                         * else HTTP/1.1; one multiplexed connection per worker */
};

/* Bounds of forwarder_options' workers and inflight (config.c's ranges). */
#define FWD_WORKERS_MAX 64      /* more threads than this is a configuration mistake */
#define FWD_INFLIGHT_MAX 1024   /* easy handles per worker */
/* The CA bundle upstream connections trust when upstream-ca is not set. */
#define FWD_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

struct forwarder_options {
	const char *upstream;     /* base URL, e.g. "https://host:port" (no trailing '/') */
	const char *ca_file;      /* NULL or "": the system CA bundle (FWD_SYSTEM_CA) */
	const char *proxy;        /* NULL: libcurl's https_proxy/no_proxy; else CURLOPT_PROXY
	                           * and no no_proxy (the POSTs, and the upstream
	                           * websockets' CONNECT) */
	bool insecure;            /* skip upstream TLS verification (logged loudly) */
	unsigned workers;
	unsigned inflight;        /* concurrent requests per worker */
	unsigned timeout_ms, connect_timeout_ms;
	unsigned retry_base_ms, retry_max_ms;
	enum forward_http http_version;
	/* upstream-protocol = websocket: websocket messages go as websockets
	 * (forwarder_ws.h) on ws_threads threads; the fallback POSTs still go
	 * through the workers above.  false: every message is a POST. */
	bool websocket;
	unsigned ws_threads, fence_messages, fence_ms;
	size_t max_message_bytes;     /* the largest message a websocket carries */
	unsigned ping_interval_ms;    /* keepalive of an idle upstream websocket */
	/* Backend text after the hello, for the SDK's live connection (NULL:
	 * dropped); any forwarder thread. */
	void (*backend_text)(void *arg, const char *session, const char *text, size_t len);
	void *backend_text_arg;
};

/* Starts the workers.  On failure *cause (malloc'd, caller frees) says why. */
int forwarder_start(struct forwarder **out, struct queue *q, struct keyban *kb,
                    const struct forwarder_options *o, char **cause)
	__attribute__((warn_unused_result));

/* Stops leasing, lets requests in flight finish for up to deadline_ms, then
 * aborts the rest (they stay queued and are sent again later), joins the
 * workers and frees f.  Accepts NULL. */
void forwarder_stop(struct forwarder *f, unsigned deadline_ms);

/* How the upstream answered, as a forwarder decides on it (exposed for tests).
 * FWD_UNSENDABLE: libcurl refused the request itself (a malformed URL): no
 * attempt can ever succeed, and the upstream was not asked. */
enum forward_verdict { FWD_ACK, FWD_RETRY, FWD_REJECT_KEY, FWD_DEAD, FWD_UNSENDABLE };
enum forward_verdict forward_classify(long http_status, int curl_code);
/* Backoff before attempt n+1 (n >= 1), jitter drawn from [0, 1). */
unsigned forward_backoff_ms(unsigned attempts, unsigned base_ms, unsigned max_ms,
                            double jitter);

#endif
