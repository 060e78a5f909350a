/*
 * forwarder_ws.c - websocket messages to the upstream as websockets (see
 * forwarder_ws.h).
 *
 * Each thread is an evloop and a queue stream owner.  What it leases lands
 * in the session's ring, in order; a session sends from its ring on one
 * upstream websocket at a time:
 *
 *   ring:  [ sent, waiting for a fence or the close | not sent yet ]
 *            0 .. nsent-1                            nsent .. count-1
 *
 * A message opens the websocket of its SDK connection (the query, the
 * browser's headers and X-Forwarded-For it was stored with) if none is open;
 * the connection's end row closes it with the client's code and reason; a
 * message of another connection first ends the current websocket (1001).
 * A fence's pong acks what was sent before it; the close's answer acks
 * everything.  When a websocket fails, the session is given back to the
 * queue with a backoff, and what was not acked comes again, in order.
 */
#include "forwarder_ws.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "clock.h"
#include "evloop.h"
#include "keyban.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "upstream_ws.h"

#define FWS_LEASE_BATCH 256      /* messages one lease call takes (QSTORE_FILL_MAX) */
#define FWS_TICK_MAX_MS 1000     /* longest wait before the queue is asked again */
#define FWS_TICK_MIN_MS 10
#define FWS_DRAIN_CHECK_MS 50    /* how often a stopping thread looks at its fences */
#define FWS_TABLE_MIN 1024       /* session table slots per thread, to start */
#define FWS_REASON_MAX 123       /* a close frame's reason */
#define FWS_WINDOW_FACTOR 4      /* messages in flight per session: fences of this many */
/* Messages one thread holds leased at most, all sessions together: a
 * backlog of many sessions (after an outage) must not be read into memory
 * a window per session at once (10,000 sessions x 128 x ~2 KB).  16,384
 * messages of ~2 KB: ~32 MB per thread.  It costs drain rate (BENCHMARKS.md). */
#define FWS_THREAD_LEASED_MAX 16384
#define FWS_NO_FDS_LOG_INTERVAL_MS 1000 /* one "out of file descriptors" line per interval */

struct fws_thread;

struct fence {
	uint64_t id;
	int64_t upto;                   /* the last message id sent before it */
	int64_t sent_ms;
};

/* A session this thread owns. */
struct fsess {
	struct fsess *hnext;            /* the thread's table */
	uint64_t hash;
	struct fws_thread *t;
	struct queue_msg **ring;        /* leased, not acked, in order */
	size_t cap, head, count, nsent;
	struct upstream_ws *ws;         /* NULL: none */
	char *conn_id, *api_key;        /* of the SDK connection ws replays */
	bool open, closing;
	bool released;                  /* given back; freed after this batch */
	int64_t last_sent_id;
	unsigned unfenced;              /* messages sent since the last fence */
	struct ev_timer fence_timer;
	struct fence *fences;
	size_t nfences, fcap;
	struct ev_deferred dfree;
	char name[];
};

struct fws_thread {
	struct fws *f;
	unsigned owner;
	pthread_t thread;
	bool running;
	struct evloop *loop;
	struct ev_timer tick;
	struct ev_timer fill_soon;      /* one lease after all the pongs of a loop turn */
	atomic_bool wake_posted;
	struct fsess **table;
	size_t mask, nsess;
	uint64_t rng;
	size_t leased;                  /* messages in the rings of its sessions */
	bool draining;
	int64_t drain_deadline_ms;
};

struct fws {
	struct queue *q;
	struct keyban *kb;
	struct upstream_client *client;
	struct fws_options o;
	struct fws_thread *threads;
	unsigned nthreads;
	struct log_gate no_fds_log;     /* upstream websockets that found no descriptor */
};

static void sess_pump(struct fsess *s);
static void sess_settle(struct fsess *s);
static void thread_fill(struct fws_thread *t);
static void thread_fill_soon(struct fws_thread *t);

/* --- learned hellos ------------------------------------------------------------ */

static bool about_one_connection(const char *name)
{
	static const char *const words[] = { "connection", "session", "socket" };
	size_t n = strlen(name);

	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
		size_t w = strlen(words[i]);

		for (size_t j = 0; j + w <= n; j++)
			if (strncasecmp(name + j, words[i], w) == 0)
				return true;
	}
	return false;
}

char *fws_hello_learnable(const char *text)
{
	json_t *obj = json_loads(text, 0, NULL), *v;
	const char *k;
	void *tmp;
	char *out = NULL;

	if (!obj || !json_is_object(obj) || json_object_get(obj, "error"))
		goto out;
	json_object_foreach_safe(obj, tmp, k, v) {
		if (about_one_connection(k))
			json_object_del(obj, k);
	}
	out = json_dumps(obj, JSON_COMPACT);
out:
	json_decref(obj);
	return out;
}

/* --- the session table and ring ------------------------------------------------------ */

static uint64_t hash_name(const char *s)
{
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */

	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	return h;
}

static struct fsess *sess_find(struct fws_thread *t, const char *name, uint64_t h)
{
	struct fsess *s;

	for (s = t->table[h & t->mask]; s; s = s->hnext)
		if (s->hash == h && !strcmp(s->name, name))
			return s;
	return NULL;
}

static void table_grow(struct fws_thread *t)
{
	size_t n = (t->mask + 1) * 2;
	struct fsess **slot = calloc(n, sizeof *slot), *s, *next;

	if (!slot)
		return;         /* chains get longer */
	for (size_t i = 0; i <= t->mask; i++)
		for (s = t->table[i]; s; s = next) {
			next = s->hnext;
			s->hnext = slot[s->hash & (n - 1)];
			slot[s->hash & (n - 1)] = s;
		}
	free(t->table);
	t->table = slot;
	t->mask = n - 1;
}

static void on_fence_timer(struct evloop *l, struct ev_timer *tm);

static struct fsess *sess_get(struct fws_thread *t, const char *name)
{
	uint64_t h = hash_name(name);
	struct fsess *s = sess_find(t, name, h);
	size_t len = strlen(name) + 1;

	if (s)
		return s;
	s = calloc(1, sizeof *s + len);
	if (!s)
		return NULL;
	memcpy(s->name, name, len);
	s->hash = h;
	s->t = t;
	ev_timer_init(&s->fence_timer, on_fence_timer);
	if (t->nsess >= 2 * (t->mask + 1))
		table_grow(t);
	s->hnext = t->table[h & t->mask];
	t->table[h & t->mask] = s;
	t->nsess++;
	return s;
}

static struct queue_msg *ring_at(const struct fsess *s, size_t i)
{
	return s->ring[(s->head + i) % s->cap];
}

static int ring_push(struct fsess *s, struct queue_msg *m)
{
	if (s->count == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 8;
		struct queue_msg **r = malloc(cap * sizeof *r);

		if (!r)
			return -1;
		for (size_t i = 0; i < s->count; i++)
			r[i] = ring_at(s, i);
		free(s->ring);
		s->ring = r;
		s->cap = cap;
		s->head = 0;
	}
	s->ring[(s->head + s->count++) % s->cap] = m;
	s->t->leased++;
	return 0;
}

/* Frees the first n messages of the ring (they were settled in the queue). */
static void ring_drop(struct fsess *s, size_t n)
{
	for (size_t i = 0; i < n && s->count > 0; i++) {
		queue_msg_free(s->ring[s->head]);
		s->head = (s->head + 1) % s->cap;
		s->count--;
		s->t->leased--;
		s->nsent = s->nsent > 0 ? s->nsent - 1 : 0;
	}
}

/* Acks and frees the messages at the front with ids <= upto. */
static void sess_ack(struct fsess *s, int64_t upto)
{
	size_t n = 0;

	while (n < s->count && ring_at(s, n)->id <= upto)
		n++;
	if (!n)
		return;
	queue_stream_ack(s->t->f->q, s->name, upto);
	metrics_add(M_FORWARDED, n);
	ring_drop(s, n);
}

static void sess_free_deferred(struct ev_deferred *d)
{
	struct fsess *s = (struct fsess *)((char *)d - offsetof(struct fsess, dfree));

	free(s);
}

/* Gives the session back to the queue (what was not acked is due again
 * after delay_ms) and forgets it.  Its websocket has ended. */
static void sess_release(struct fsess *s, unsigned delay_ms)
{
	struct fws_thread *t = s->t;
	struct fsess **pp = &t->table[s->hash & t->mask];

	queue_stream_release(t->f->q, s->name, delay_ms);
	s->released = true;
	while (*pp != s)
		pp = &(*pp)->hnext;
	*pp = s->hnext;
	t->nsess--;
	evloop_timer_stop(t->loop, &s->fence_timer);
	ring_drop(s, s->count);
	free(s->ring);
	free(s->fences);
	free(s->conn_id);
	free(s->api_key);
	evloop_defer(t->loop, &s->dfree, sess_free_deferred);
}

/* --- fences ------------------------------------------------------------------------- */

static void sess_fence(struct fsess *s)
{
	struct fence *f;
	uint64_t id;

	if (!s->unfenced || !s->ws || !upstream_ws_is_open(s->ws))
		return;
	if (s->nfences == s->fcap) {
		size_t cap = s->fcap ? s->fcap * 2 : 4;

		f = realloc(s->fences, cap * sizeof *f);
		if (!f)
			return;     /* the next fence covers these too */
		s->fences = f;
		s->fcap = cap;
	}
	if (upstream_ws_fence(s->ws, &id) < 0)
		return;
	s->fences[s->nfences++] = (struct fence){ id, s->last_sent_id, mono_ms() };
	s->unfenced = 0;
	evloop_timer_stop(s->t->loop, &s->fence_timer);
}

static void on_fence_timer(struct evloop *l, struct ev_timer *tm)
{
	struct fsess *s = (struct fsess *)((char *)tm - offsetof(struct fsess, fence_timer));

	(void)l;
	sess_fence(s);
}

/* --- the upstream websocket's callbacks ---------------------------------------------- */

static void on_open(struct upstream_ws *ws, const char *hello, size_t len, void *arg)
{
	struct fsess *s = arg;
	struct fws *f = s->t->f;
	char *learned;

	(void)len;
	s->open = true;
	metrics_add(M_UPWS_UPGRADE_OK, 1);
	if (upstream_ws_resumed(ws))
		metrics_add(M_UPWS_TLS_RESUMED, 1);
	metrics_gauge_add(G_UPWS_OPEN, 1);
	if (f->o.seen)
		f->o.seen(f->o.seen_arg, true, 101, NULL);
	/* Later SDK connections of this key get the backend's own settings. */
	if (s->api_key && ((learned = fws_hello_learnable(hello)))) {
		if (queue_hello_set(f->q, s->api_key, learned) != QUEUE_OK)
			log_warn("upstream_hello_not_stored", "session=%s", s->name);
		free(learned);
	}
	sess_pump(s);
}

static void on_text(struct upstream_ws *ws, const char *text, size_t len, void *arg)
{
	struct fsess *s = arg;
	struct fws *f = s->t->f;

	(void)ws;
	if (f->o.backend_text)
		f->o.backend_text(f->o.backend_text_arg, s->name, text, len);
}

static void on_fence(struct upstream_ws *ws, uint64_t id, void *arg)
{
	struct fsess *s = arg;
	int64_t now = mono_ms(), upto = -1;
	size_t n = 0;

	(void)ws;
	while (n < s->nfences && s->fences[n].id <= id) {
		upto = s->fences[n].upto;
		metrics_observe(H_FENCE_SECONDS, (double)(now - s->fences[n].sent_ms) / 1000);
		n++;
	}
	memmove(s->fences, s->fences + n, (s->nfences - n) * sizeof *s->fences);
	s->nfences -= n;
	if (upto >= 0)
		sess_ack(s, upto);
	sess_pump(s);
	thread_fill_soon(s->t); /* the window has room again */
}

static unsigned sess_delay(struct fsess *s, int retry_after_s)
{
	struct fws *f = s->t->f;
	struct fws_thread *t = s->t;
	uint32_t attempts = s->count ? ring_at(s, 0)->attempts : 0;
	unsigned delay;
	double jitter;

	t->rng ^= t->rng >> 12;
	t->rng ^= t->rng << 25;
	t->rng ^= t->rng >> 27;
	jitter = (double)((t->rng * 2685821657736338717ull) >> 11) * 0x1.0p-53;
	delay = f->o.backoff_ms(attempts + 1, f->o.retry_base_ms, f->o.retry_max_ms, jitter);
	if (retry_after_s >= 0) {
		unsigned long long ra = (unsigned long long)retry_after_s * 1000;

		if (ra > f->o.retry_max_ms)
			ra = f->o.retry_max_ms;
		if (ra > delay)
			delay = (unsigned)ra;
	}
	return delay;
}

/* The id of the last message at the front of the ring that belongs to the
 * connection conn (its end row included), and how many there are. */
static int64_t conn_prefix(const struct fsess *s, const char *conn, size_t *n)
{
	int64_t upto = -1;

	for (*n = 0; *n < s->count; (*n)++) {
		const struct queue_msg *m = ring_at(s, *n);

		if (!m->conn_id || !conn || strcmp(m->conn_id, conn))
			break;
		upto = m->id;
	}
	return upto;
}

/* The backend refused the key: as the POST forwarder does, the key is
 * banned and every queued message of it dead-lettered. */
static void sess_reject_key(struct fsess *s, int status, const char *reason)
{
	struct fws *f = s->t->f;
	char kbuf[32];
	size_t dropped = 0;

	keyban_add(f->kb, s->api_key);
	if (s->api_key)
		dropped = queue_dead_key(f->q, s->api_key, "key_rejected");
	queue_stream_dead(f->q, s->name, INT64_MAX, "key_rejected", status, reason);
	metrics_add(M_UPWS_UPGRADE_KEY_REJECTED, 1);
	metrics_add(M_ATTEMPT_REJECTED_KEY, 1);
	log_warn("upstream_key_rejected", "key=%s status=%d session=%s dropped=%zu",
	         log_key(s->api_key ? s->api_key : "", kbuf, sizeof kbuf), status, s->name,
	         dropped + s->count);
	ring_drop(s, s->count);
}

/* Dead-letters the messages of the connection at the front of the ring. */
static void sess_dead_conn(struct fsess *s, const char *reason, int status, const char *detail)
{
	size_t n;
	int64_t upto = conn_prefix(s, s->conn_id, &n);

	if (upto < 0)
		return;
	queue_stream_dead(s->t->f->q, s->name, upto, reason, status, detail);
	metrics_add(M_ATTEMPT_DEAD, n);
	ring_drop(s, n);
}

/* An upstream websocket found the relay out of file descriptors: said
 * clearly, but at most once per interval (thousands of sessions may be
 * waiting after an outage), with a count of the others. */
static void note_no_fds(struct fsess *s, const char *reason, unsigned delay_ms)
{
	unsigned long long others;
	char ebuf[160];

	if (log_gate_pass(&s->t->f->no_fds_log, FWS_NO_FDS_LOG_INTERVAL_MS, &others))
		log_warn("upstream_ws_no_fds", "session=%s delay_ms=%u reason=%s "
		         "also_since_last_line=%llu msg=\"out of file descriptors: the session's "
		         "messages stay queued and are tried again; raise LimitNOFILE or lower "
		         "max-connections\"", s->name, delay_ms,
		         log_quote(reason ? reason : "", ebuf, sizeof ebuf), others);
}

static void on_end(struct upstream_ws *ws, const struct upws_result *r, void *arg)
{
	struct fsess *s = arg;
	struct fws_thread *t = s->t;
	struct fws *f = t->f;
	bool was_open = s->open;
	char ebuf[160];
	unsigned delay;

	log_debug("upstream_ws_end", "session=%s class=%s opened=%d", s->name,
	          upws_class_name(r->cls), r->opened);
	upstream_ws_destroy(ws);
	s->ws = NULL;
	s->open = s->closing = false;
	s->unfenced = 0;
	s->nfences = 0;
	evloop_timer_stop(t->loop, &s->fence_timer);
	if (was_open)
		metrics_gauge_add(G_UPWS_OPEN, -1);

	if (r->cls == UPWS_CLOSED) {
		/* Our close was answered; what came before it was fenced. */
		sess_ack(s, s->last_sent_id);
		s->nsent = 0;
		free(s->conn_id);
		s->conn_id = NULL;
		sess_pump(s);
		sess_settle(s);
		return;
	}
	if (!r->opened &&
	    ((r->cls == UPWS_REFUSED && (r->http_status == 401 || r->http_status == 403)) ||
	     r->cls == UPWS_HELLO_ERROR)) {
		if (f->o.seen)
			f->o.seen(f->o.seen_arg, true, r->http_status, NULL);
		sess_reject_key(s, r->http_status, r->reason ? r->reason : "");
		sess_release(s, 0);
		return;
	}
	if (!r->opened && r->cls == UPWS_REFUSED && r->http_status >= 400 && r->http_status < 500 &&
	    r->http_status != 408 && r->http_status != 425 && r->http_status != 429) {
		if (f->o.seen)
			f->o.seen(f->o.seen_arg, true, r->http_status, NULL);
		metrics_add(M_UPWS_UPGRADE_REFUSED, 1);
		log_warn("forward_dead", "session=%s reason=rejected status=%d detail=%s", s->name,
		         r->http_status, log_quote(r->reason ? r->reason : "", ebuf, sizeof ebuf));
		sess_dead_conn(s, "rejected", r->http_status, r->reason);
		free(s->conn_id);
		s->conn_id = NULL;
		s->nsent = 0;
		sess_pump(s);
		sess_settle(s);
		return;
	}
	/* Everything else is tried again: what was not acked is sent again.
	 * Out of descriptors is the relay's own trouble, not an upstream outage. */
	if (f->o.seen && r->cls != UPWS_ABORTED && r->cls != UPWS_NO_FDS)
		f->o.seen(f->o.seen_arg, r->cls == UPWS_REFUSED && r->http_status < 500,
		          r->http_status, r->reason ? r->reason : upws_class_name(r->cls));
	if (!r->opened)
		metrics_add(r->cls == UPWS_REFUSED ? M_UPWS_UPGRADE_REFUSED : M_UPWS_UPGRADE_FAILED,
		            1);
	else if (r->cls != UPWS_ABORTED)
		metrics_add(M_UPWS_DROPPED, 1);
	/* What was written and not fenced goes out again on the next one. */
	metrics_add(M_UPWS_RESENT, s->nsent);
	delay = t->draining || r->cls == UPWS_ABORTED ? 0 : sess_delay(s, r->retry_after_s);
	if (r->cls == UPWS_NO_FDS)
		note_no_fds(s, r->reason, delay);
	log_debug("forward_retry", "session=%s class=%s opened=%d status=%d unfenced=%zu "
	          "delay_ms=%u reason=%s", s->name, upws_class_name(r->cls), r->opened,
	          r->http_status, s->nsent, delay,
	          log_quote(r->reason ? r->reason : "", ebuf, sizeof ebuf));
	metrics_add(M_ATTEMPT_RETRY, 1);
	sess_release(s, delay);
}

static const struct upstream_ws_callbacks fws_callbacks = {
	.on_open = on_open,
	.on_text = on_text,
	.on_fence = on_fence,
	.on_end = on_end,
};

/* --- sending -------------------------------------------------------------------------- */

/* Opens the websocket of m's SDK connection. */
static void sess_connect(struct fsess *s, const struct queue_msg *m)
{
	struct fws *f = s->t->f;
	const char *target = m->target ? m->target : "";
	struct upstream_ws_request req = {
		.query = strncmp(target, "/?", 2) ? target : target + 2,
		.user_agent = m->user_agent,
		.origin = m->origin,
		.xff = m->xff,
	};
	char *cause = NULL, ebuf[160];

	free(s->conn_id);
	free(s->api_key);
	s->conn_id = strdup(m->conn_id);
	s->api_key = m->api_key ? strdup(m->api_key) : NULL;
	if (!s->conn_id || (m->api_key && !s->api_key) ||
	    upstream_ws_create(&s->ws, f->client, s->t->loop, &req, &fws_callbacks, s, &cause) <
	            0) {
		/* A request that cannot be written never will be. */
		log_warn("forward_dead", "session=%s reason=unsendable detail=%s", s->name,
		         log_quote(cause ? cause : "out of memory", ebuf, sizeof ebuf));
		s->ws = NULL;
		if (s->conn_id)
			sess_dead_conn(s, "unsendable", 0, cause ? cause : "out of memory");
		free(cause);
		free(s->conn_id);
		s->conn_id = NULL;
		return;
	}
	s->open = s->closing = false;
	s->nsent = 0;
}

/* Sends the connection's end: the client's close code and reason (1005,
 * "no code", becomes 1000: it cannot be sent). */
static void sess_close(struct fsess *s, const struct queue_msg *m, unsigned code)
{
	char reason[FWS_REASON_MAX + 1] = "";
	size_t len = 0;

	if (m && m->body_len > 2) {
		len = m->body_len - 2 < FWS_REASON_MAX ? m->body_len - 2 : FWS_REASON_MAX;
		memcpy(reason, (const char *)m->body + 2, len);
		reason[len] = '\0';
	}
	if (code < 1000 || code == 1005 || code == 1006 || code == 1015 || code >= 5000)
		code = 1000;
	if (upstream_ws_send_close(s->ws, (uint16_t)code, reason) == 0)
		s->closing = true;
}

static void sess_pump(struct fsess *s)
{
	struct fws *f = s->t->f;

	while (s->nsent < s->count) {
		struct queue_msg *m = ring_at(s, s->nsent);
		unsigned code;
		bool end = queue_msg_is_close(m, &code);

		if (!s->ws) {
			if (s->nsent > 0)
				return;
			if (end || !m->conn_id) {
				/* A connection with no websocket upstream: nothing to end. */
				sess_ack(s, m->id);
				continue;
			}
			if (s->t->draining)
				return;
			sess_connect(s, m);
			if (!s->ws)
				continue;       /* its messages were dead-lettered */
			return;
		}
		if (!s->conn_id || !m->conn_id || strcmp(s->conn_id, m->conn_id)) {
			/* Another SDK connection, and this one's end was lost: end
			 * it as a client that left (fenced first, as below). */
			if (s->unfenced || s->nfences)
				sess_fence(s);
			else if (s->open && !s->closing)
				sess_close(s, NULL, 1001);
			return;
		}
		if (!s->open || s->closing)
			return;
		if (end) {
			/* Everything before the close is fenced first: a close that
			 * crosses the backend's own can end the websocket as
			 * "closed" while wslay drops frames not yet written, so
			 * only the end row itself rides on the close. */
			if (s->unfenced || s->nfences) {
				sess_fence(s);
				return;
			}
			sess_close(s, m, code);
			s->last_sent_id = m->id;
			s->nsent++;
			return;
		}
		if (strcmp(m->content_type ? m->content_type : "", "application/octet-stream") ==
		    0) {
			/* The SDK sends only text; the backend's protocol has no
			 * binary message.  Acked with the next fence, not sent. */
			log_warn("forward_binary_skipped", "session=%s id=%" PRId64 " bytes=%zu",
			         s->name, m->id, m->body_len);
		} else if (upstream_ws_send_text(s->ws, m->body, m->body_len) < 0) {
			sess_fence(s);  /* its pong tells when the socket took them */
			return;
		}
		metrics_add(M_UPWS_FRAMES, 1);
		s->nsent++;
		s->last_sent_id = m->id;
		if (++s->unfenced >= f->o.fence_messages)
			sess_fence(s);
		else if (!ev_timer_armed(&s->fence_timer) &&
		         evloop_timer_start(s->t->loop, &s->fence_timer, f->o.fence_ms) < 0)
			sess_fence(s);
	}
	/* All it holds is sent: fence on the loop's next turn, by which time
	 * what this turn still leases for it is sent too.  Waiting fence_ms
	 * for more would only keep the messages leased (a backlog's budget)
	 * and exposed to a resend. */
	if (s->unfenced && evloop_timer_start(s->t->loop, &s->fence_timer, 0) < 0)
		sess_fence(s);
}

/* Nothing left to send and nothing open: the session goes back.  Not from
 * inside sess_pump: a lease batch may still hold its next messages. */
static void sess_settle(struct fsess *s)
{
	if (!s->released && !s->count && !s->ws)
		sess_release(s, 0);
}

/* --- the threads ------------------------------------------------------------------------- */

static void thread_fill(struct fws_thread *t)
{
	struct fws *f = t->f;
	struct queue_msg *out[FWS_LEASE_BATCH];
	struct fsess *touched[FWS_LEASE_BATCH];
	size_t n, nt;

	if (t->draining)
		return;
	do {
		size_t max = FWS_THREAD_LEASED_MAX - t->leased;

		if (t->leased >= FWS_THREAD_LEASED_MAX)
			return;         /* the next ack makes room */
		n = nt = 0;
		if (queue_stream_lease(f->q, t->owner, out, max < FWS_LEASE_BATCH ? max :
		                       FWS_LEASE_BATCH, &n) != QUEUE_OK)
			return;
		for (size_t i = 0; i < n; i++) {
			struct fsess *s = sess_get(t, out[i]->session ? out[i]->session : "");

			if (!s || ring_push(s, out[i]) < 0) {
				log_error("forward_nomem", "id=%" PRId64, out[i]->id);
				queue_stream_release(f->q, out[i]->session, f->o.retry_max_ms);
				queue_msg_free(out[i]);
				continue;
			}
			if (!nt || touched[nt - 1] != s)
				touched[nt++] = s;
		}
		for (size_t i = 0; i < nt; i++)
			sess_pump(touched[i]);
		for (size_t i = 0; i < nt; i++)
			sess_settle(touched[i]);
	} while (n == FWS_LEASE_BATCH && t->leased < FWS_THREAD_LEASED_MAX);
}

static void on_fill_soon(struct evloop *l, struct ev_timer *tm)
{
	(void)l;
	thread_fill((struct fws_thread *)((char *)tm - offsetof(struct fws_thread, fill_soon)));
}

/* A pong makes room in its session's window; the lease that fills it waits
 * for the end of the loop's turn, so that the pongs of one turn share one
 * lease and one read transaction (a drain: ~235 messages a read transaction
 * instead of ~33, BENCHMARKS.md). */
static void thread_fill_soon(struct fws_thread *t)
{
	if (!ev_timer_armed(&t->fill_soon) && evloop_timer_start(t->loop, &t->fill_soon, 0) < 0)
		thread_fill(t);
}

static void on_tick(struct evloop *l, struct ev_timer *tm)
{
	struct fws_thread *t =
		(struct fws_thread *)((char *)tm - offsetof(struct fws_thread, tick));
	long due;

	thread_fill(t);
	/* A retry falls due without anyone notifying us. */
	due = queue_next_due_ms(t->f->q);
	if (due < 0 || due > FWS_TICK_MAX_MS)
		due = FWS_TICK_MAX_MS;
	if (due < FWS_TICK_MIN_MS)
		due = FWS_TICK_MIN_MS;
	if (evloop_timer_start(l, &t->tick, due) < 0)
		log_error("forward_nomem", "reason=\"tick timer\"");
}

static void on_wake(struct evloop *l, void *arg)
{
	struct fws_thread *t = arg;

	(void)l;
	atomic_store(&t->wake_posted, false);
	thread_fill(t);
}

void fws_notify(struct fws *f)
{
	if (!f)
		return;
	for (unsigned i = 0; i < f->nthreads; i++) {
		struct fws_thread *t = &f->threads[i];

		if (!atomic_exchange(&t->wake_posted, true) && evloop_post(t->loop, on_wake, t) < 0)
			atomic_store(&t->wake_posted, false);
	}
}

/* Drops every upstream websocket and gives every session back. */
static void thread_abort_all(struct fws_thread *t)
{
	for (size_t i = 0; i <= t->mask; i++) {
		struct fsess *s = t->table[i], *next;

		for (; s; s = next) {
			next = s->hnext;
			if (s->ws)
				upstream_ws_abort(s->ws);       /* on_end releases it */
			else
				sess_release(s, 0);
		}
	}
}

static bool thread_fenced(const struct fws_thread *t)
{
	for (size_t i = 0; i <= t->mask; i++)
		for (const struct fsess *s = t->table[i]; s; s = s->hnext)
			if (s->ws && (s->nfences || s->unfenced || s->closing))
				return false;
	return true;
}

static void on_drain_check(struct evloop *l, struct ev_timer *tm)
{
	struct fws_thread *t =
		(struct fws_thread *)((char *)tm - offsetof(struct fws_thread, tick));

	if (!thread_fenced(t) && mono_ms() < t->drain_deadline_ms &&
	    evloop_timer_start(l, &t->tick, FWS_DRAIN_CHECK_MS) == 0)
		return;
	thread_abort_all(t);
	evloop_stop(l);
}

static void on_drain(struct evloop *l, void *arg)
{
	struct fws_thread *t = arg;

	t->draining = true;
	for (size_t i = 0; i <= t->mask; i++)
		for (struct fsess *s = t->table[i]; s; s = s->hnext)
			sess_fence(s);
	evloop_timer_stop(l, &t->tick);
	ev_timer_init(&t->tick, on_drain_check);
	on_drain_check(l, &t->tick);
}

static void *thread_main(void *arg)
{
	struct fws_thread *t = arg;

	evloop_run(t->loop);
	return NULL;
}

int fws_start(struct fws **out, struct queue *q, struct keyban *kb, struct upstream_client *c,
              const struct fws_options *o, char **cause)
{
	struct fws *f = calloc(1, sizeof *f);

	*out = NULL;
	if (!f || !(f->threads = calloc(o->threads, sizeof *f->threads)))
		goto nomem;
	f->q = q;
	f->kb = kb;
	f->client = c;
	f->o = *o;
	if (!f->o.fence_messages)
		f->o.fence_messages = 1;
	f->nthreads = o->threads;
	for (unsigned i = 0; i < f->nthreads; i++) {
		struct fws_thread *t = &f->threads[i];

		t->f = f;
		t->owner = i + 1;
		t->rng = ((uint64_t)mono_ms() * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)(i + 1) << 32) ^
		         (uint64_t)(uintptr_t)t;
		atomic_init(&t->wake_posted, false);
		t->table = calloc(FWS_TABLE_MIN, sizeof *t->table);
		t->mask = FWS_TABLE_MIN - 1;
		if (!t->table)
			goto nomem;
		if (evloop_create(&t->loop, cause) < 0)
			goto fail;
		ev_timer_init(&t->tick, on_tick);
		ev_timer_init(&t->fill_soon, on_fill_soon);
		if (evloop_timer_start(t->loop, &t->tick, 0) < 0)
			goto nomem;
	}
	for (unsigned i = 0; i < f->nthreads; i++) {
		if (pthread_create(&f->threads[i].thread, NULL, thread_main, &f->threads[i])) {
			*cause = strdup("cannot start an upstream websocket thread");
			goto fail;
		}
		f->threads[i].running = true;
	}
	log_info("forwarder_ws_started", "threads=%u fence_messages=%u fence_ms=%u window=%u",
	         f->nthreads, f->o.fence_messages, f->o.fence_ms,
	         f->o.fence_messages * FWS_WINDOW_FACTOR);
	*out = f;
	return 0;
nomem:
	*cause = strdup("out of memory");
fail:
	fws_stop(f, 0);
	return -1;
}

unsigned fws_window(unsigned fence_messages)
{
	return (fence_messages ? fence_messages : 1) * FWS_WINDOW_FACTOR;
}

void fws_stop(struct fws *f, unsigned deadline_ms)
{
	if (!f)
		return;
	for (unsigned i = 0; f->threads && i < f->nthreads; i++) {
		struct fws_thread *t = &f->threads[i];

		if (!t->running)
			continue;
		t->drain_deadline_ms = mono_ms() + deadline_ms;
		if (evloop_post(t->loop, on_drain, t) < 0)
			evloop_stop(t->loop);
	}
	for (unsigned i = 0; f->threads && i < f->nthreads; i++) {
		struct fws_thread *t = &f->threads[i];

		if (t->running)
			pthread_join(t->thread, NULL);
		evloop_destroy(t->loop);
		free(t->table);
	}
	free(f->threads);
	free(f);
}
