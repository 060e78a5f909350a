/*
 * forwarder.c - drains the queue to the upstream over HTTPS.
 *
 * Each worker thread owns one curl multi handle and a fixed pool of easy
 * handles that are reused for every message, so connections, TLS sessions
 * and HTTP/2 streams are reused as well and a busy relay opens a handful of
 * connections, not one per message.  A worker fills its free handles from
 * queue_lease(), drives the transfers, settles each finished one with
 * queue_ack / queue_retry / queue_dead and sleeps in curl_multi_poll(),
 * which the queue's notify callback interrupts when new messages arrive.
 *
 * The per-message path allocates nothing of its own once the buffers have
 * grown: the body is sent from the leased message (itself one allocation),
 * and the URL and header lines are written into a buffer and a header list
 * that belong to the easy handle.
 *
 * Ordering is the queue's job: it leases at most one message per session,
 * so a worker never needs to know about sessions.
 */
#include "forwarder.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cause.h"
#include "clock.h"
#include "forwarder_ws.h"
#include "keyban.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "upstream_ws.h"

#define FWD_ANSWER_MAX 256      /* bytes of an upstream answer kept for a dead letter */
#define FWD_HEADER_MAX 8192     /* one request header line; longer ones are not sent */
#define FWD_URL_MAX (4 << 20)   /* a longer upstream URL is not sent (dead-lettered) */
#define FWD_REQ_BUF_MIN 1024    /* first size of a transfer's URL and header buffer */
#define FWD_POLL_MAX_MS 1000    /* longest sleep, so nothing is missed for long */
#define FWD_DEFAULT_CONTENT_TYPE "text/plain; charset=utf-8"

enum upstream_state { UPSTREAM_UNKNOWN = -1, UPSTREAM_DOWN = 0, UPSTREAM_UP = 1 };

struct worker;

/* The request's header lines: the first and the last never change, the
 * others are the message's own (HDR_VARIABLE of them at most). */
enum { HDR_VARIABLE = 5, HDR_NODES = HDR_VARIABLE + 2 };

/* One reusable easy handle and what belongs to the message it carries. */
struct transfer {
	struct worker *w;
	CURL *easy;
	struct queue_msg *msg;          /* NULL while the slot is idle */
	/* The header list given to libcurl once: hdr[0] is its head for good,
	 * the nodes after it are relinked for each message.  Their lines live
	 * in buf, after the URL; buf grows up to FWD_URL_MAX + the headers. */
	struct curl_slist hdr[HDR_NODES];
	char *buf;
	size_t buf_size;
	long long retry_after_s;        /* -1: the answer had no usable Retry-After */
	size_t answer_len;
	char answer[FWD_ANSWER_MAX + 1];
	char error[CURL_ERROR_SIZE];
};

struct worker {
	struct forwarder *f;
	pthread_t thread;
	bool running;                   /* the thread was started and must be joined */
	CURLM *multi;
	struct transfer *slots;         /* f->o.inflight of them */
	struct transfer **idle;         /* stack of idle slots */
	unsigned nidle;
	struct queue_msg **leased;      /* scratch for queue_lease() */
	uint64_t rng;                   /* xorshift state for the backoff jitter */
	/* Set while the worker sleeps with free slots: only then does a queue
	 * notification need to wake it (see worker_main). */
	atomic_bool wants_wake;
};

struct forwarder {
	struct queue *q;
	struct keyban *kb;
	struct forwarder_options o;
	char *upstream, *ca_file, *proxy;   /* owned copies of the option strings */
	CURLSH *share;                  /* TLS sessions and DNS, across workers */
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	unsigned nshare_locks;
	atomic_bool stopping;
	_Atomic int64_t deadline_ms;    /* monotonic; valid once stopping is set */
	atomic_int upstream_state;      /* enum upstream_state */
	unsigned nworkers;
	struct worker *workers;
	struct upstream_client *client; /* upstream-protocol websocket */
	struct fws *ws;
};

enum forward_verdict forward_classify(long http_status, int curl_code)
{
	if (curl_code == CURLE_URL_MALFORMAT || curl_code == CURLE_BAD_FUNCTION_ARGUMENT)
		return FWD_UNSENDABLE;
	/* Connect, TLS, timeout, reset: try again.  But an answer that came
	 * before the failure (a 431, then the connection closed) is an answer;
	 * a 2xx cut short is not proof that the message was taken. */
	if (curl_code != CURLE_OK && http_status < 300)
		return FWD_RETRY;
	if (http_status >= 200 && http_status < 300)
		return FWD_ACK;
	if (http_status == 408 || http_status == 425 || http_status == 429 ||
	    (http_status >= 500 && http_status < 600))
		return FWD_RETRY;
	if (http_status == 401 || http_status == 403)
		return FWD_REJECT_KEY;
	return FWD_DEAD;
}

unsigned forward_backoff_ms(unsigned attempts, unsigned base_ms, unsigned max_ms,
                            double jitter)
{
	unsigned shift = attempts > 1 ? attempts - 1 : 0;
	unsigned d;
	double scaled;

	/* min(max, base * 2^shift), without ever computing an overflowing product */
	if (shift >= 32 || base_ms > (max_ms >> shift))
		d = max_ms;
	else
		d = base_ms << shift;
	if (!(jitter >= 0.0))           /* also catches NaN */
		jitter = 0.0;
	if (jitter >= 1.0)
		jitter = 0.999999;
	scaled = (double)d * (0.5 + jitter / 2);
	return scaled < 1.0 ? 1 : (unsigned)scaled;
}

/* xorshift64*: a double in [0, 1) for the jitter.  Not for secrets. */
static double worker_random(struct worker *w)
{
	w->rng ^= w->rng >> 12;
	w->rng ^= w->rng << 25;
	w->rng ^= w->rng >> 27;
	return (double)((w->rng * 2685821657736338717ull) >> 11) * 0x1.0p-53;
}

/* Keeps the first FWD_ANSWER_MAX bytes of the answer, printable, and
 * swallows the rest. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct transfer *t = arg;
	size_t len = size * nmemb;

	for (size_t i = 0; i < len && t->answer_len < FWD_ANSWER_MAX; i++) {
		unsigned char c = (unsigned char)data[i];

		t->answer[t->answer_len++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
	}
	t->answer[t->answer_len] = '\0';
	return len;
}

/* Picks up Retry-After, in seconds or as an HTTP date. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
	static const char name[] = "Retry-After:";
	struct transfer *t = arg;
	size_t len = size * nmemb;
	char value[64];
	size_t n;

	if (len >= 5 && !strncmp(data, "HTTP/", 5)) {
		t->retry_after_s = -1;  /* a new response (after a 1xx) starts afresh */
		return len;
	}
	if (len < sizeof name - 1 || strncasecmp(data, name, sizeof name - 1))
		return len;
	data += sizeof name - 1;
	len -= sizeof name - 1;
	while (len && (*data == ' ' || *data == '\t')) {
		data++;
		len--;
	}
	while (len && (data[len - 1] == '\r' || data[len - 1] == '\n' ||
	               data[len - 1] == ' ' || data[len - 1] == '\t'))
		len--;
	if (len == 0 || len >= sizeof value)
		return size * nmemb;
	memcpy(value, data, len);
	value[len] = '\0';
	n = strspn(value, "0123456789");
	if (n == len) {
		t->retry_after_s = n > 9 ? 999999999 : strtoll(value, NULL, 10);
	} else {
		time_t when = curl_getdate(value, NULL);
		time_t now = time(NULL);

		if (when != (time_t)-1)
			t->retry_after_s = when > now ? (long long)(when - now) : 0;
	}
	return size * nmemb;
}

/* Header lines that are the same for every request.  libcurl only reads
 * them (an empty "Expect:" removes its 100-continue round trip). */
static char hdr_proto_line[] = "X-Forwarded-Proto: https";
static char hdr_expect_line[] = "Expect:";

/* A value that contains CR or LF (it would forge a header) or does not fit
 * FWD_HEADER_MAX is not sent; returns its line length with the NUL, or 0. */
static size_t header_size(const char *name, const char *value)
{
	size_t len;

	if (!value)
		return 0;
	if (strpbrk(value, "\r\n")) {
		log_debug("forward_header_dropped", "header=%s reason=newline", name);
		return 0;
	}
	len = strlen(name) + 2 + strlen(value) + 1;
	if (len > FWD_HEADER_MAX) {
		log_debug("forward_header_dropped", "header=%s reason=too_long", name);
		return 0;
	}
	return len;
}

/* Makes t->buf at least size bytes; it never shrinks.  -1 on ENOMEM. */
static int transfer_reserve(struct transfer *t, size_t size)
{
	size_t want = t->buf_size ? t->buf_size : FWD_REQ_BUF_MIN;
	char *p;

	if (size <= t->buf_size)
		return 0;
	while (want < size)
		want *= 2;
	p = realloc(t->buf, want);
	if (!p)
		return -1;
	t->buf = p;
	t->buf_size = want;
	return 0;
}

/*
 * Writes m's URL and header lines into t->buf and links the lines into
 * t->hdr; *url points into t->buf.  0, or -ENOMEM, or -E2BIG for a URL over
 * FWD_URL_MAX.
 */
static int request_prepare(struct forwarder *f, struct transfer *t, const struct queue_msg *m,
                           const char **url)
{
	const char *target = m->target ? m->target : "/";
	char idem[128];
	struct { const char *name, *value; size_t size; } h[HDR_VARIABLE] = {
		{ "Content-Type", m->content_type ? m->content_type : FWD_DEFAULT_CONTENT_TYPE, 0 },
		{ "X-Forwarded-For", m->xff, 0 },
		{ "User-Agent", m->user_agent, 0 },
		{ "Origin", m->origin, 0 },
		{ "Idempotency-Key", idem, 0 },
	};
	size_t ulen = strlen(f->upstream), tlen = strlen(target), need, off;
	struct curl_slist *last = &t->hdr[0];

	snprintf(idem, sizeof idem, "%s-%" PRId64, queue_instance_id(f->q), m->id);
	if (ulen > FWD_URL_MAX || tlen > FWD_URL_MAX - ulen)
		return -E2BIG;
	need = ulen + tlen + 1;
	for (size_t i = 0; i < HDR_VARIABLE; i++) {
		h[i].size = header_size(h[i].name, h[i].value);
		need += h[i].size;
	}
	if (transfer_reserve(t, need) < 0)
		return -ENOMEM;
	memcpy(t->buf, f->upstream, ulen);
	memcpy(t->buf + ulen, target, tlen + 1);
	off = ulen + tlen + 1;
	for (size_t i = 0; i < HDR_VARIABLE; i++) {
		if (!h[i].size)
			continue;
		snprintf(t->buf + off, h[i].size, "%s: %s", h[i].name, h[i].value);
		last->next = &t->hdr[1 + i];
		last = last->next;
		last->data = t->buf + off;
		off += h[i].size;
	}
	last->next = &t->hdr[HDR_NODES - 1];
	*url = t->buf;
	return 0;
}

static void transfer_release(struct worker *w, struct transfer *t)
{
	queue_msg_free(t->msg);
	t->msg = NULL;
	w->idle[w->nidle++] = t;
}

/* Puts m on an idle easy handle and hands it to the multi handle.  A
 * message that cannot be sent is settled here. */
static void transfer_begin(struct worker *w, struct queue_msg *m)
{
	struct forwarder *f = w->f;
	struct transfer *t = w->idle[--w->nidle];
	const char *url = NULL;
	CURLcode rc;
	int err;

	t->msg = m;
	t->answer_len = 0;
	t->answer[0] = '\0';
	t->error[0] = '\0';
	t->retry_after_s = -1;
	err = request_prepare(f, t, m, &url);
	if (err == -ENOMEM) {
		log_error("forward_nomem", "id=%" PRId64, m->id);
		queue_retry(f->q, m->id, f->o.retry_max_ms);
		goto release;
	}
	if (err < 0) {
		log_warn("forward_dead", "id=%" PRId64 " reason=unsendable error=\"URL too long\"",
		         m->id);
		queue_dead(f->q, m->id, "unsendable", 0, "URL too long");
		metrics_add(M_ATTEMPT_DEAD, 1);
		goto release;
	}
	/* The body is sent from the leased message itself: no copy.  libcurl
	 * copies the URL; the header list was given to it in easy_setup. */
	rc = curl_easy_setopt(t->easy, CURLOPT_URL, url);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE,
		                      (curl_off_t)m->body_len);
	if (rc == CURLE_OK)
		rc = curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, m->body ? m->body : "");
	if (rc != CURLE_OK) {
		log_warn("forward_dead", "id=%" PRId64 " reason=unsendable error=\"%s\"",
		         m->id, curl_easy_strerror(rc));
		queue_dead(f->q, m->id, "unsendable", 0, curl_easy_strerror(rc));
		metrics_add(M_ATTEMPT_DEAD, 1);
		goto release;
	}
	if (curl_multi_add_handle(w->multi, t->easy) != CURLM_OK) {
		log_error("forward_add_failed", "id=%" PRId64, m->id);
		queue_retry(f->q, m->id, f->o.retry_max_ms);
		goto release;
	}
	return;
release:
	transfer_release(w, t);
}

/* The upstream counts as down while attempts fail in transport or with a
 * 5xx, and as up on any other answer (a 429 or a refused key included).
 * Only the changes are logged, so an outage is one warning, not one per
 * retry. */
static void upstream_state(struct forwarder *f, bool up, long status, const char *error)
{
	int now = up ? UPSTREAM_UP : UPSTREAM_DOWN;
	int was = atomic_exchange(&f->upstream_state, now);
	char q[192];

	if (was == now)
		return;
	metrics_gauge_set(G_UPSTREAM_UP, now);
	if (now == UPSTREAM_DOWN)
		log_warn("upstream_down", "status=%ld error=%s", status,
		         log_quote(error ? error : "http error", q, sizeof q));
	else if (was == UPSTREAM_DOWN)
		log_info("upstream_up", "status=%ld", status);
}

static void upstream_seen(struct forwarder *f, CURLcode rc, long status, const char *error)
{
	bool down = (rc != CURLE_OK && status < 300) || status >= 500;

	upstream_state(f, !down, status, rc != CURLE_OK ? error : NULL);
}

/* The websockets' view of the upstream, for the same state. */
static void ws_seen(void *arg, bool up, int status, const char *error)
{
	upstream_state(arg, up, status, error);
}

/* Milliseconds before message m is sent again after a failed attempt. */
static unsigned retry_delay(struct worker *w, const struct queue_msg *m, long long retry_after_s)
{
	const struct forwarder_options *o = &w->f->o;
	unsigned attempts = m->attempts < UINT32_MAX ? m->attempts + 1 : UINT32_MAX;
	unsigned delay = forward_backoff_ms(attempts, o->retry_base_ms, o->retry_max_ms,
	                                    worker_random(w));

	if (retry_after_s >= 0) {
		unsigned long long ra = (unsigned long long)retry_after_s * 1000;

		if (ra > o->retry_max_ms)
			ra = o->retry_max_ms;
		if (ra > delay)
			delay = (unsigned)ra;
	}
	return delay;
}

static void reject_key(struct forwarder *f, struct transfer *t, long status)
{
	const struct queue_msg *m = t->msg;
	char kbuf[32];
	size_t dropped = 0;

	keyban_add(f->kb, m->api_key);
	/* The rest of this key's messages would only be refused in turn.  They
	 * go first: while m is still leased its session cannot move on, so no
	 * other worker leases the next message of the key in between. */
	if (m->api_key)
		dropped = queue_dead_key(f->q, m->api_key, "key_rejected");
	queue_dead(f->q, m->id, "key_rejected", (int)status, t->answer);
	metrics_add(M_ATTEMPT_REJECTED_KEY, 1);
	log_warn("upstream_key_rejected", "key=%s status=%ld id=%" PRId64 " dropped=%zu",
	         log_key(m->api_key ? m->api_key : "", kbuf, sizeof kbuf), status, m->id,
	         dropped);
}

/* Settles the message of a finished transfer and frees the slot. */
static void transfer_done(struct worker *w, struct transfer *t, CURLcode rc)
{
	struct forwarder *f = w->f;
	const struct queue_msg *m = t->msg;
	const char *error = t->error[0] ? t->error : curl_easy_strerror(rc);
	long status = 0;
	curl_off_t total_us = 0;
	unsigned delay;
	enum forward_verdict verdict;
	char kbuf[32], ebuf[192];

	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &total_us);
	curl_multi_remove_handle(w->multi, t->easy);
	metrics_observe(H_FORWARD_SECONDS, (double)total_us / 1e6);
	verdict = forward_classify(status, rc);
	/* A message libcurl would not send says nothing about the upstream. */
	if (verdict != FWD_UNSENDABLE)
		upstream_seen(f, rc, status, error);

	switch (verdict) {
	case FWD_ACK:
		queue_ack(f->q, m->id);
		metrics_add(M_FORWARDED, 1);
		metrics_add(M_ATTEMPT_SUCCESS, 1);
		break;
	case FWD_RETRY:
		delay = retry_delay(w, m, t->retry_after_s);
		log_debug("forward_retry",
		          "id=%" PRId64 " status=%ld error=%s attempt=%u delay_ms=%u", m->id,
		          status, log_quote(rc != CURLE_OK ? error : "", ebuf, sizeof ebuf),
		          m->attempts + 1, delay);
		queue_retry(f->q, m->id, delay);
		metrics_add(M_ATTEMPT_RETRY, 1);
		break;
	case FWD_REJECT_KEY:
		/* Only a key the upstream was given and the relay checked is
		 * banned (a POST without projectId is stored without one). */
		if (m->api_key && *m->api_key) {
			reject_key(f, t, status);
			break;
		}
		/* refused, but no key to blame: a dead letter */
		__attribute__((fallthrough));
	case FWD_DEAD:
		log_warn("forward_dead",
		         "id=%" PRId64 " reason=rejected status=%ld key=%s answer=%s", m->id,
		         status, log_key(m->api_key ? m->api_key : "", kbuf, sizeof kbuf),
		         log_quote(t->answer, ebuf, sizeof ebuf));
		queue_dead(f->q, m->id, "rejected", (int)status, t->answer);
		metrics_add(M_ATTEMPT_DEAD, 1);
		break;
	case FWD_UNSENDABLE:
		log_warn("forward_dead", "id=%" PRId64 " reason=unsendable error=%s", m->id,
		         log_quote(error, ebuf, sizeof ebuf));
		queue_dead(f->q, m->id, "unsendable", 0, error);
		metrics_add(M_ATTEMPT_DEAD, 1);
		break;
	}
	transfer_release(w, t);
}

/* Settles every finished transfer; returns how many. */
static unsigned reap(struct worker *w)
{
	CURLMsg *cm;
	int left;
	unsigned n = 0;

	while ((cm = curl_multi_info_read(w->multi, &left))) {
		struct transfer *t = NULL;

		if (cm->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&t);
		transfer_done(w, t, cm->data.result);
		n++;
	}
	return n;
}

/* Leases messages for the idle slots and starts them; returns how many. */
static size_t fill(struct worker *w)
{
	size_t n = 0;

	if (w->nidle == 0 || queue_lease(w->f->q, w->leased, w->nidle, &n) < 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		transfer_begin(w, w->leased[i]);
	return n;
}

/* At the stop deadline: whatever is still in flight stays queued and is
 * sent again by the next run. */
static void abort_all(struct worker *w)
{
	struct forwarder *f = w->f;
	unsigned aborted = 0;

	for (unsigned i = 0; i < f->o.inflight; i++) {
		struct transfer *t = &w->slots[i];

		if (!t->msg)
			continue;
		curl_multi_remove_handle(w->multi, t->easy);
		queue_retry(f->q, t->msg->id, 0);
		transfer_release(w, t);
		aborted++;
	}
	if (aborted)
		log_info("forward_aborted", "in_flight=%u reason=shutdown_deadline", aborted);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct forwarder *f = w->f;
	int running;

	for (;;) {
		bool stopping = atomic_load(&f->stopping);
		bool busy = w->nidle < f->o.inflight;
		long timeout = FWD_POLL_MAX_MS;

		if (stopping) {
			int64_t left = atomic_load(&f->deadline_ms) - mono_ms();

			if (!busy)
				break;
			if (left <= 0) {
				abort_all(w);
				break;
			}
			if (left < timeout)
				timeout = (long)left;
		} else {
			fill(w);
		}
		curl_multi_perform(w->multi, &running);
		if (reap(w))
			continue;       /* slots are free and sessions may have moved on */
		if (!stopping && w->nidle > 0) {
			long due;

			/* From here until the poll returns, a queue notification
			 * wakes this worker; one that came before the flag was set
			 * is seen by this second look at the queue.  A worker with
			 * no free slot is never woken: it could not take more. */
			atomic_store(&w->wants_wake, true);
			if (fill(w) > 0) {
				atomic_store(&w->wants_wake, false);
				continue;
			}
			/* A retry falls due without anyone notifying us. */
			due = queue_next_due_ms(f->q);
			if (due >= 0 && due < timeout)
				timeout = due < 1 ? 1 : due;
		}
		curl_multi_poll(w->multi, NULL, 0, (int)timeout, NULL);
		atomic_store(&w->wants_wake, false);
	}
	return NULL;
}

static void wake_workers(struct forwarder *f)
{
	for (unsigned i = 0; i < f->nworkers; i++)
		if (f->workers[i].multi)
			curl_multi_wakeup(f->workers[i].multi);
}

/* Called by the queue, from any thread, when a message may have become
 * due.  Only workers asleep with free slots are woken: each wake-up is a
 * write to a socketpair, and a busy drain makes one notification per ack. */
static void on_queue_notify(void *arg)
{
	struct forwarder *f = arg;

	fws_notify(f->ws);
	/* With upstream websockets nearly every notification is theirs (an
	 * ack, a commit); a worker is woken only for a fallback POST. */
	if (f->ws && !queue_lease_ready(f->q))
		return;
	for (unsigned i = 0; i < f->nworkers; i++) {
		struct worker *w = &f->workers[i];

		if (atomic_load(&w->wants_wake) && atomic_exchange(&w->wants_wake, false))
			curl_multi_wakeup(w->multi);
	}
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access a, void *arg)
{
	struct forwarder *f = arg;

	pthread_mutex_lock(&f->share_locks[data % CURL_LOCK_DATA_LAST]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *arg)
{
	struct forwarder *f = arg;

	pthread_mutex_unlock(&f->share_locks[data % CURL_LOCK_DATA_LAST]);
}

/* Whether the workers use HTTP/2: asked for, and libcurl has nghttp2. */
static bool use_http2(const struct forwarder *f)
{
	return f->o.http_version == FWD_HTTP_2 &&
	       (curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_HTTP2);
}

/* The options every request of every worker shares.  They are set once:
 * per message only the URL and the body change (transfer_begin). */
static int easy_setup(struct forwarder *f, struct transfer *t)
{
	const struct forwarder_options *o = &f->o;
	bool h2 = use_http2(f);

	t->easy = curl_easy_init();
	if (!t->easy)
		return -1;
	t->hdr[0].data = hdr_proto_line;
	t->hdr[0].next = &t->hdr[HDR_NODES - 1];
	t->hdr[HDR_NODES - 1].data = hdr_expect_line;
	t->hdr[HDR_NODES - 1].next = NULL;
	/* 2TLS: HTTP/2 where ALPN offers it, HTTP/1.1 otherwise.  PIPEWAIT
	 * makes a new request wait for a connection that may multiplex
	 * rather than open another one. */
	if (curl_easy_setopt(t->easy, CURLOPT_HTTP_VERSION,
	                     h2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1) ||
	    curl_easy_setopt(t->easy, CURLOPT_PIPEWAIT, h2 ? 1L : 0L) ||
	    curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t) ||
	    curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L) ||
	    curl_easy_setopt(t->easy, CURLOPT_SHARE, f->share) ||
	    curl_easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "https,http") ||
	    curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, &t->hdr[0]) ||
	    curl_easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L) ||
	    curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms) ||
	    curl_easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms) ||
	    /* An explicit bundle and no CA directory: Debian's default CAPATH is
	     * rescanned on every new connection, ~31 ms of CPU each time. */
	    curl_easy_setopt(t->easy, CURLOPT_CAINFO, f->ca_file) ||
	    curl_easy_setopt(t->easy, CURLOPT_CAPATH, NULL) ||
	    (o->proxy && curl_easy_setopt(t->easy, CURLOPT_PROXY, o->proxy)) ||
	    /* The setting wins over the environment: libcurl would still read
	     * no_proxy (egress_log_proxy logs it as ignored). */
	    (o->proxy && curl_easy_setopt(t->easy, CURLOPT_NOPROXY, "")) ||
	    curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYPEER, o->insecure ? 0L : 1L) ||
	    curl_easy_setopt(t->easy, CURLOPT_SSL_VERIFYHOST, o->insecure ? 0L : 2L) ||
	    curl_easy_setopt(t->easy, CURLOPT_USERAGENT, NULL) ||
	    curl_easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->error) ||
	    curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_body) ||
	    curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t) ||
	    curl_easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, on_header) ||
	    curl_easy_setopt(t->easy, CURLOPT_HEADERDATA, t))
		return -1;
	return 0;
}

static int worker_setup(struct forwarder *f, struct worker *w, unsigned index)
{
	unsigned n = f->o.inflight;

	w->f = f;
	w->rng = ((uint64_t)mono_ms() * 0x9E3779B97F4A7C15ull) ^ (((uint64_t)index + 1) << 32) ^
	         (uint64_t)(uintptr_t)w;
	if (!w->rng)
		w->rng = 1;
	w->multi = curl_multi_init();
	w->slots = calloc(n, sizeof *w->slots);
	w->idle = calloc(n, sizeof *w->idle);
	w->leased = calloc(n, sizeof *w->leased);
	atomic_init(&w->wants_wake, false);
	if (!w->multi || !w->slots || !w->idle || !w->leased)
		return -1;
	/* One connection per request in flight: HTTP/1.1 needs them all, and
	 * the cache keeps them all, so each is reused rather than handshaked
	 * again.  Over HTTP/2 the requests share one connection as streams. */
	if (curl_multi_setopt(w->multi, CURLMOPT_PIPELINING,
	                      use_http2(f) ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING) ||
	    curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)n) ||
	    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, (long)n))
		return -1;
	for (unsigned i = 0; i < n; i++) {
		w->slots[i].w = w;
		if (easy_setup(f, &w->slots[i]) < 0)
			return -1;
		w->idle[w->nidle++] = &w->slots[i];
	}
	return 0;
}

static void worker_release(struct worker *w, unsigned inflight)
{
	if (w->slots) {
		for (unsigned i = 0; i < inflight; i++) {
			if (w->slots[i].msg && w->multi)
				curl_multi_remove_handle(w->multi, w->slots[i].easy);
			curl_easy_cleanup(w->slots[i].easy);
			queue_msg_free(w->slots[i].msg);
			free(w->slots[i].buf);
		}
	}
	curl_multi_cleanup(w->multi);
	free(w->slots);
	free(w->idle);
	free(w->leased);
}

static void forwarder_free(struct forwarder *f)
{
	if (!f)
		return;
	if (f->workers)
		for (unsigned i = 0; i < f->nworkers; i++)
			worker_release(&f->workers[i], f->o.inflight);
	free(f->workers);
	upstream_client_destroy(f->client);
	curl_share_cleanup(f->share);
	for (unsigned i = 0; i < f->nshare_locks; i++)
		pthread_mutex_destroy(&f->share_locks[i]);
	free(f->upstream);
	free(f->ca_file);
	free(f->proxy);
	free(f);
}

/* Everything but the threads and the queue's notification.  NULL on
 * ENOMEM or when libcurl refuses an option. */
static struct forwarder *forwarder_create(struct queue *q, struct keyban *kb,
                                          const struct forwarder_options *o, const char *ca)
{
	struct forwarder *f = calloc(1, sizeof *f);
	size_t ulen = strlen(o->upstream);

	if (!f)
		return NULL;
	f->q = q;
	f->kb = kb;
	f->o = *o;
	atomic_init(&f->stopping, false);
	atomic_init(&f->deadline_ms, 0);
	atomic_init(&f->upstream_state, UPSTREAM_UNKNOWN);
	/* The targets start with '/', so a trailing one here would double it. */
	while (ulen > 1 && o->upstream[ulen - 1] == '/')
		ulen--;
	f->upstream = strndup(o->upstream, ulen);
	f->ca_file = strdup(ca);
	f->proxy = o->proxy ? strdup(o->proxy) : NULL;
	if (!f->upstream || !f->ca_file || (o->proxy && !f->proxy))
		goto fail;
	f->o.upstream = f->upstream;
	f->o.ca_file = f->ca_file;
	f->o.proxy = f->proxy;
	for (; f->nshare_locks < CURL_LOCK_DATA_LAST; f->nshare_locks++)
		if (pthread_mutex_init(&f->share_locks[f->nshare_locks], NULL) != 0)
			goto fail;
	f->share = curl_share_init();
	if (!f->share ||
	    curl_share_setopt(f->share, CURLSHOPT_LOCKFUNC, share_lock) ||
	    curl_share_setopt(f->share, CURLSHOPT_UNLOCKFUNC, share_unlock) ||
	    curl_share_setopt(f->share, CURLSHOPT_USERDATA, f) ||
	    curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) ||
	    curl_share_setopt(f->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS))
		goto fail;
	f->workers = calloc(o->workers, sizeof *f->workers);
	if (!f->workers)
		goto fail;
	f->nworkers = o->workers;
	for (unsigned i = 0; i < f->nworkers; i++)
		if (worker_setup(f, &f->workers[i], i) < 0)
			goto fail;
	return f;
fail:
	forwarder_free(f);
	return NULL;
}


/* upstream-protocol websocket: the queue's streams, the shared client
 * (one set of TLS credentials), the threads. */
static int ws_start(struct forwarder *f, const struct forwarder_options *o, char **cause)
{
	struct upstream_client_options co = {
		.url = f->upstream,
		.ca_file = o->ca_file,
		.insecure = o->insecure,
		.proxy = o->proxy,
		.connect_timeout_ms = o->connect_timeout_ms,
		.handshake_timeout_ms = o->timeout_ms,
		.ping_interval_ms = o->ping_interval_ms,
		.pong_timeout_ms = o->timeout_ms,
		.close_timeout_ms = o->timeout_ms,
		.max_message_bytes = 64 * 1024,
		/* Room for a full window of the largest messages is not needed:
		 * a send that does not fit waits for the next fence. */
		.max_send_bytes = o->max_message_bytes + 64 * 1024,
	};
	struct fws_options wo = {
		.threads = o->ws_threads ? o->ws_threads : 1,
		.fence_messages = o->fence_messages ? o->fence_messages : 1,
		.fence_ms = o->fence_ms ? o->fence_ms : 1,
		.retry_base_ms = o->retry_base_ms,
		.retry_max_ms = o->retry_max_ms,
		.backoff_ms = forward_backoff_ms,
		.seen = ws_seen,
		.seen_arg = f,
		.backend_text = o->backend_text,
		.backend_text_arg = o->backend_text_arg,
	};
	int err = queue_stream_init(f->q, wo.threads, fws_window(wo.fence_messages));

	if (err != QUEUE_OK) {
		cause_set(cause, -1, "upstream websockets: %s", queue_strerror(err));
		return -1;
	}
	if (upstream_client_create(&f->client, &co, cause) < 0)
		return -1;
	return fws_start(&f->ws, f->q, f->kb, f->client, &wo, cause);
}

int forwarder_start(struct forwarder **out, struct queue *q, struct keyban *kb,
                    const struct forwarder_options *o, char **cause)
{
	const char *ca = o->ca_file && *o->ca_file ? o->ca_file : FWD_SYSTEM_CA;
	struct forwarder *f;
	char ubuf[256], cbuf[256];

	*out = NULL;
	if (!o->upstream || !*o->upstream)
		return cause_set(cause, -1, "no upstream URL");
	if (o->workers < 1 || o->workers > FWD_WORKERS_MAX ||
	    o->inflight < 1 || o->inflight > FWD_INFLIGHT_MAX)
		return cause_set(cause, -1,
		                 "forward workers must be 1..%d and in-flight requests 1..%d",
		                 FWD_WORKERS_MAX, FWD_INFLIGHT_MAX);
	/* Without this, every attempt would fail the same way, forever. */
	if (!o->insecure && access(ca, R_OK) < 0) {
		cause_set(cause, -1, "cannot read the CA bundle %s: %s", ca, strerror(errno));
		return -1;
	}
	f = forwarder_create(q, kb, o, ca);
	if (!f)
		return cause_set(cause, -1, "cannot set up the forwarders (out of memory?)");
	if (o->websocket && ws_start(f, o, cause) < 0) {
		forwarder_free(f);
		return -1;
	}
	queue_set_notify(q, on_queue_notify, f);
	for (unsigned i = 0; i < f->nworkers; i++) {
		if (pthread_create(&f->workers[i].thread, NULL, worker_main, &f->workers[i])) {
			forwarder_stop(f, 0);   /* joins the ones already running */
			return cause_set(cause, -1, "cannot start a forwarder thread");
		}
		f->workers[i].running = true;
	}
	if (o->http_version == FWD_HTTP_2 && !use_http2(f))
		log_warn("upstream_http2_unavailable", "detail=\"this libcurl has no HTTP/2: "
		         "using HTTP/1.1\"");
	if (o->insecure)
		log_warn("upstream_tls_unverified", "upstream=%s detail=\"the upstream's "
		         "certificate is NOT verified: anyone on the path can read and alter "
		         "the telemetry\"", log_quote(f->upstream, ubuf, sizeof ubuf));
	log_info("forwarder_started",
	         "upstream=%s protocol=%s http=%s workers=%u inflight=%u ca=%s",
	         log_quote(f->upstream, ubuf, sizeof ubuf),
	         o->websocket ? "websocket" : "http-post", use_http2(f) ? "2" : "1.1", o->workers,
	         o->inflight, o->insecure ? "none" : log_quote(f->ca_file, cbuf, sizeof cbuf));
	*out = f;
	return 0;
}

void forwarder_stop(struct forwarder *f, unsigned deadline_ms)
{
	if (!f)
		return;
	/* Waits for a notification under way: none touches f after this. */
	queue_set_notify(f->q, NULL, NULL);
	fws_stop(f->ws, deadline_ms);
	f->ws = NULL;
	atomic_store(&f->deadline_ms, mono_ms() + deadline_ms);
	atomic_store(&f->stopping, true);
	wake_workers(f);
	for (unsigned i = 0; i < f->nworkers; i++)
		if (f->workers[i].running)
			pthread_join(f->workers[i].thread, NULL);
	forwarder_free(f);
}
