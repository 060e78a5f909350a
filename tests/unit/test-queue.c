/*
 * test-queue.c - the durable queue: ordering, retries, dead letters, limits,
 * durability across reopen, group commit, corruption and a failing disk.
 *
 * Every database lives in one mkdtemp directory under /tmp that is removed
 * at the end.  Each case is a function; the whole run takes a few seconds.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "queue.h"
#include "tap.h"
#include "testutil.h"

static char *tmpdir;          /* tmpdir_create's, for the whole run */

static const char *db_path(const char *name)
{
	static char path[128];

	snprintf(path, sizeof path, "%s/%s.db", tmpdir, name);
	return path;
}

/* Opens name in tmpdir with o (defaults if NULL); reports failure as a test. */
static struct queue *open_q(const char *name, const struct queue_options *o)
{
	struct queue_options def;
	struct queue *q = NULL;
	char *cause = NULL;
	int rc;

	if (!o) {
		queue_options_init(&def);
		o = &def;
	}
	rc = queue_open(&q, db_path(name), o, &cause);
	if (rc != QUEUE_OK)
		diag("queue_open %s: %s: %s", name, queue_strerror(rc), cause ? cause : "");
	free(cause);
	return q;
}

static struct queue_msg msg(const char *session, const char *body)
{
	struct queue_msg m;

	memset(&m, 0, sizeof m);
	m.session = session;
	m.target = "/trace";
	m.content_type = "application/json";
	m.body = body;
	m.body_len = strlen(body);
	return m;
}

static int64_t put(struct queue *q, const char *session, const char *body, bool wait)
{
	struct queue_msg m = msg(session, body);
	int64_t id = 0;
	int rc = queue_put(q, &m, wait, &id);

	if (rc != QUEUE_OK)
		diag("queue_put %s: %s", body, queue_strerror(rc));
	return rc == QUEUE_OK ? id : -1;
}

static size_t lease(struct queue *q, struct queue_msg **out, size_t max)
{
	size_t n = 0;
	int rc = queue_lease(q, out, max, &n);

	if (rc != QUEUE_OK)
		diag("queue_lease: %s", queue_strerror(rc));
	return n;
}

static void free_msgs(struct queue_msg **m, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		queue_msg_free(m[i]);
}

static bool body_is(const struct queue_msg *m, const char *body)
{
	return m->body_len == strlen(body) && memcmp(m->body, body, m->body_len) == 0;
}

/* Runs sql (one integer result) on a closed database. */
static int64_t sql_int(const char *name, const char *sql)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t v = -1;

	if (sqlite3_open_v2(db_path(name), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	else
		diag("sql_int %s: %s", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* Waits up to ms for next_due_ms to reach 0. */
static bool wait_due(struct queue *q, long ms)
{
	int64_t end = mono_ms() + ms;

	while (mono_ms() < end) {
		long d = queue_next_due_ms(q);

		if (d == 0)
			return true;
		sleep_ms(d > 0 && d < 20 ? d : 20);
	}
	return false;
}

static void test_dup(void)
{
	struct queue_msg m = msg("s1", "hello"), *d;

	m.xff = NULL;
	m.seq = 42;
	d = queue_msg_dup(&m);
	ok(d, "dup: copies");
	if (!d)
		return;
	is_str(d->session, "s1", "dup: session");
	ok(d->session != m.session, "dup: strings are copied");
	ok(!d->xff && !d->api_key, "dup: NULL strings stay NULL");
	ok(body_is(d, "hello") && ((const char *)d->body)[5] == '\0', "dup: body, NUL after it");
	is_int(d->seq, 42, "dup: scalars");
	queue_msg_free(d);
	queue_msg_free(NULL);
}

static void test_order(void)
{
	struct queue *q = open_q("order", NULL);
	struct queue_msg *m[8];
	struct queue_stats st;
	int64_t a, b, c;
	struct stat sb;
	size_t n;

	ok(q, "order: open");
	if (!q)
		return;
	ok(stat(db_path("order"), &sb) == 0 && (sb.st_mode & 0777) == 0600,
	   "order: database file is mode 0600");
	is_int(strlen(queue_instance_id(q)), 16, "order: instance id is 16 hex chars");
	a = put(q, "A", "one", false);
	b = put(q, "A", "two", false);
	c = put(q, "A", "three", true);
	ok(a > 0 && b == a + 1 && c == b + 1, "order: ids ascend");
	queue_stats(q, &st);
	is_int(st.depth, 3, "order: depth 3");
	is_int(st.bytes, 11, "order: bytes counted");
	ok(st.oldest_ms > 0, "order: oldest_ms set");

	n = lease(q, m, 8);
	is_int(n, 1, "order: one message per session in flight");
	ok(n == 1 && m[0]->id == a && body_is(m[0], "one"), "order: the first comes first");
	ok(n == 1 && lease(q, m + 1, 8) == 0, "order: nothing more while it is in flight");
	queue_stats(q, &st);
	is_int(st.in_flight, 1, "order: in_flight 1");
	queue_ack(q, a);
	free_msgs(m, n);
	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == b && body_is(m[0], "two"), "order: then the second");
	queue_ack(q, b);
	free_msgs(m, n);
	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == c && body_is(m[0], "three"), "order: then the third");
	is_str(n == 1 ? m[0]->target : NULL, "/trace", "order: metadata comes along");
	queue_ack(q, c);
	queue_ack(q, c); /* a second settle is ignored */
	free_msgs(m, n);
	queue_stats(q, &st);
	ok(st.depth == 0 && st.bytes == 0 && st.in_flight == 0 && st.oldest_ms == 0,
	   "order: empty after the acks");
	queue_close(q);
	is_int(sql_int("order", "SELECT count(*) FROM messages"), 0, "order: acks were committed");
}

/* One session waits for a retry; another keeps going; the waiting one's
 * later messages stay put. */
static void test_parallel_retry(void)
{
	struct queue *q = open_q("parallel", NULL);
	struct queue_msg *m[8];
	struct queue_stats st;
	int64_t a1, a2, b1, b2, b3;
	size_t n;

	ok(q, "parallel: open");
	if (!q)
		return;
	a1 = put(q, "A", "a1", false);
	a2 = put(q, "A", "a2", false);
	b1 = put(q, "B", "b1", false);
	b2 = put(q, "B", "b2", false);
	b3 = put(q, "B", "b3", true);
	n = lease(q, m, 8);
	is_int(n, 2, "parallel: the heads of both sessions");
	ok(n == 2 && m[0]->id == a1 && m[1]->id == b1, "parallel: a1 and b1");
	queue_retry(q, a1, 400);
	queue_ack(q, b1);
	free_msgs(m, n);

	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == b2, "parallel: B goes on while A waits (b2 only)");
	queue_ack(q, b2);
	free_msgs(m, n);
	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == b3, "parallel: b3, and still not a2");
	queue_ack(q, b3);
	free_msgs(m, n);
	ok(lease(q, m, 8) == 0, "parallel: nothing due while a1 waits");
	queue_stats(q, &st);
	is_int(st.waiting_retry, 1, "parallel: one session waits for a retry");

	ok(wait_due(q, 2000), "parallel: the retry falls due");
	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == a1 && m[0]->attempts == 1, "parallel: a1 again, attempts 1");
	if (n == 1)
		queue_ack(q, a1);
	free_msgs(m, n);
	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == a2 && m[0]->attempts == 0, "parallel: then a2");
	if (n == 1)
		queue_ack(q, a2);
	free_msgs(m, n);
	queue_close(q);
}

static void test_retry_delay(void)
{
	struct queue *q = open_q("retry", NULL);
	struct queue_msg *m[4];
	int64_t id, t0;
	long due;
	size_t n;

	ok(q, "retry: open");
	if (!q)
		return;
	is_int(queue_next_due_ms(q), -1, "retry: nothing waits: -1");
	id = put(q, "R", "r1", true);
	n = lease(q, m, 4);
	is_int(n, 1, "retry: leased");
	free_msgs(m, n);
	t0 = mono_ms();
	queue_retry(q, id, 300);
	due = queue_next_due_ms(q);
	ok(due > 200 && due <= 300, "retry: next due in (200, 300] ms (got %ld)", due);
	ok(lease(q, m, 4) == 0, "retry: not leased before the delay");
	ok(wait_due(q, 2000), "retry: falls due");
	ok(mono_ms() - t0 >= 300, "retry: no sooner than the delay");
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->id == id && m[0]->attempts == 1, "retry: the same message, attempts 1");
	if (n == 1)
		queue_retry(q, id, 0);
	free_msgs(m, n);
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->attempts == 2, "retry: delay 0 is due at once, attempts 2");
	free_msgs(m, n);
	queue_close(q); /* leased, not acked: stays queued with attempts 2 */
	is_int(sql_int("retry", "SELECT attempts FROM messages"), 2, "retry: attempts persisted");
}

static void test_dead(void)
{
	struct queue *q = open_q("dead", NULL);
	struct queue_msg *m[4];
	struct queue_stats st;
	int64_t a1, a2;
	char sql[256];
	size_t n;

	ok(q, "dead: open");
	if (!q)
		return;
	a1 = put(q, "A", "a1", false);
	a2 = put(q, "A", "a2", true);
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->id == a1, "dead: a1 leased");
	free_msgs(m, n);
	queue_dead(q, a1, "rejected", 400, "bad request");
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->id == a2, "dead: the session goes on with a2");
	free_msgs(m, n);
	queue_stats(q, &st);
	is_int(st.dead, 1, "dead: counted");
	is_int(st.depth, 1, "dead: no longer queued");
	queue_ack(q, a2);
	queue_close(q);

	is_int(sql_int("dead", "SELECT count(*) FROM messages"), 0, "dead: row left messages");
	snprintf(sql, sizeof sql, "SELECT count(*) FROM dead_letters WHERE id = %lld AND "
	         "reason = 'rejected' AND status = 400 AND detail = 'bad request' AND "
	         "CAST(body AS TEXT) = 'a1' AND dead_ms > 0", (long long)a1);
	is_int(sql_int("dead", sql), 1, "dead: row in dead_letters with reason, status, detail");

	q = open_q("dead", NULL);
	if (q) {
		queue_stats(q, &st);
		is_int(st.dead, 1, "dead: count loaded at open");
	}
	queue_close(q);
}

static void test_dead_key(void)
{
	struct queue_options o;
	struct queue *q;
	struct queue_msg *m[8], x;
	struct queue_stats st;
	int64_t a1, a2, a3, b1, c1, d1 = 0;
	char sql[96];
	size_t n;

	queue_options_init(&o);
	o.commit_window_ms = 300; /* so that d1 is still uncommitted below */
	q = open_q("deadkey", &o);
	ok(q, "dead_key: open");
	if (!q)
		return;
	x = msg("A", "a1");
	x.api_key = "K1";
	ok(queue_put(q, &x, false, &a1) == QUEUE_OK, "dead_key: put a1");
	x.body = "a2";
	ok(queue_put(q, &x, false, &a2) == QUEUE_OK, "dead_key: put a2");
	x.body = "a3";
	x.api_key = "K2";
	ok(queue_put(q, &x, false, &a3) == QUEUE_OK, "dead_key: put a3");
	x = msg("B", "b1");
	x.api_key = "K1";
	ok(queue_put(q, &x, false, &b1) == QUEUE_OK, "dead_key: put b1");
	x = msg("C", "c1");
	x.api_key = "K2";
	ok(queue_put(q, &x, true, &c1) == QUEUE_OK, "dead_key: put c1");
	n = lease(q, m, 8);
	is_int(n, 3, "dead_key: a1, b1, c1 in flight");
	free_msgs(m, n);

	x = msg("D", "d1");
	x.api_key = "K1";
	ok(queue_put(q, &x, false, &d1) == QUEUE_OK, "dead_key: put d1 (not yet committed)");
	is_int(queue_dead_key(q, "K1", "key rejected"), 2,
	       "dead_key: a2 and d1; leased a1 and b1 are not touched");
	is_int(queue_dead_key(q, "nope", "key rejected"), 0, "dead_key: unknown key: 0");
	queue_stats(q, &st);
	is_int(st.dead, 2, "dead_key: dead 2");
	is_int(st.depth, 4, "dead_key: depth 4 (a1 a3 b1 c1)");

	queue_ack(q, a1);
	n = lease(q, m, 8);
	ok(n == 1 && m[0]->id == a3, "dead_key: A skips a2 and goes on with a3");
	free_msgs(m, n);
	queue_ack(q, a3);
	queue_ack(q, b1);
	queue_ack(q, c1);
	ok(lease(q, m, 8) == 0, "dead_key: d1 is never leased");
	queue_close(q);

	is_int(sql_int("deadkey", "SELECT count(*) FROM messages"), 0, "dead_key: messages empty");
	is_int(sql_int("deadkey",
	               "SELECT count(*) FROM dead_letters WHERE reason = 'key rejected'"),
	       2, "dead_key: two rows dead-lettered");
	snprintf(sql, sizeof sql, "SELECT count(*) FROM dead_letters WHERE id IN (%lld, %lld)",
	         (long long)a2, (long long)d1);
	is_int(sql_int("deadkey", sql), 2, "dead_key: they are a2 and d1");
}

/* Waits until the committed dead letters number want; returns the reasons
 * as queue_dead_reasons gives them with max. */
static size_t dead_reasons(struct queue *q, size_t max, uint64_t want,
                           struct queue_dead_reason *out)
{
	int64_t end = mono_ms() + 5000;
	uint64_t total = 0;
	size_t n = 0, i;

	do {
		if (queue_dead_reasons(q, out, max, &n) != QUEUE_OK) {
			diag("queue_dead_reasons failed");
			return 0;
		}
		for (total = 0, i = 0; i < n; i++)
			total += out[i].count;
		if (total == want)
			break;
		sleep_ms(10);
	} while (mono_ms() < end);
	return n;
}

static bool reason_is(const struct queue_dead_reason *d, const char *reason, uint64_t count)
{
	if (strcmp(d->reason, reason) == 0 && d->count == count)
		return true;
	diag("got %s=%llu, want %s=%llu", d->reason, (unsigned long long)d->count, reason,
	     (unsigned long long)count);
	return false;
}

/* Dead letters by reason, most common first, and the rest under "other"
 * when there are more reasons than the caller takes. */
static void test_dead_reasons(void)
{
	static const char *const reasons[] = {
		"rejected", "rejected", "rejected", "other", "other", "unsendable", "unsendable",
		"expired", "key_rejected",
	};
	enum { N = sizeof reasons / sizeof reasons[0] };
	struct queue *q = open_q("reasons", NULL);
	struct queue_dead_reason d[8];
	struct queue_msg *m[N];
	struct queue_stats st;
	char session[16];
	size_t n, i;

	ok(q, "reasons: open");
	if (!q)
		return;
	ok(queue_dead_reasons(q, d, 8, &n) == QUEUE_OK && n == 0, "reasons: none at first");
	is_int(queue_dead_reasons(q, d, 0, &n), QUEUE_EINVAL, "reasons: max 0 is invalid");
	for (i = 0; i < N; i++) {
		snprintf(session, sizeof session, "S%zu", i);
		put(q, session, "x", i == N - 1);
	}
	n = lease(q, m, N);
	is_int(n, N, "reasons: one message of each session leased");
	for (i = 0; i < n; i++)
		queue_dead(q, m[i]->id, reasons[strtoul(m[i]->session + 1, NULL, 10)], 400, NULL);
	free_msgs(m, n);

	n = dead_reasons(q, 8, N, d);
	is_int(n, 5, "reasons: five reasons");
	ok(n == 5 && reason_is(&d[0], "rejected", 3) && reason_is(&d[1], "other", 2) &&
	   reason_is(&d[2], "unsendable", 2) && reason_is(&d[3], "expired", 1) &&
	   reason_is(&d[4], "key_rejected", 1),
	   "reasons: counted, most common first, ties by name");
	queue_stats(q, &st);
	is_int(st.dead, N, "reasons: they add up to the dead-letter count");

	n = dead_reasons(q, 5, N, d);
	is_int(n, 5, "reasons: max = the number of reasons: nothing folded");
	n = dead_reasons(q, 4, N, d);
	ok(n == 3 && reason_is(&d[0], "rejected", 3) && reason_is(&d[1], "other", 4) &&
	   reason_is(&d[2], "unsendable", 2),
	   "reasons: max 4: expired and key_rejected join the reason called other");
	n = dead_reasons(q, 1, N, d);
	ok(n == 1 && reason_is(&d[0], "other", N), "reasons: max 1: everything is other");
	queue_close(q);
}

static void test_ids_never_reused(void)
{
	struct queue *q = open_q("ids", NULL);
	struct queue_msg *m[4];
	int64_t id, last = 0;
	int i;
	size_t n;

	ok(q, "ids: open");
	if (!q)
		return;
	for (i = 0; i < 3; i++) {
		id = put(q, "S", "x", true);
		n = lease(q, m, 4);
		if (n == 1)
			queue_ack(q, m[0]->id);
		free_msgs(m, n);
		ok(id > last, "ids: id %lld after %lld", (long long)id, (long long)last);
		last = id;
	}
	queue_close(q);
	is_int(sql_int("ids", "SELECT count(*) FROM messages"), 0, "ids: table empty");

	q = open_q("ids", NULL);
	ok(q, "ids: reopen");
	if (!q)
		return;
	id = put(q, "S", "y", true);
	ok(id > last, "ids: after reopen of an empty table: %lld > %lld", (long long)id,
	   (long long)last);
	queue_close(q);
}

static void test_reopen(void)
{
	struct queue *q = open_q("reopen", NULL);
	struct queue_msg full, *m[4];
	struct queue_stats st;
	char instance[17];
	int64_t id1 = 0, id2;
	size_t n;

	ok(q, "reopen: open");
	if (!q)
		return;
	snprintf(instance, sizeof instance, "%s", queue_instance_id(q));
	memset(&full, 0, sizeof full);
	full.received_ms = wall_ms() - 1234; /* older than a day would expire */
	full.session = "sess-1";
	full.target = "/?apiKey=abc";
	full.content_type = "text/plain";
	full.xff = "198.51.100.7";
	full.peer_ip = "203.0.113.9";
	full.user_agent = "Mozilla/5.0";
	full.origin = "https://example.com";
	full.api_key = "abc";
	full.conn_id = "c-7";
	full.seq = 12;
	full.body = "\0binary\xff";
	full.body_len = 8;
	ok(queue_put(q, &full, true, &id1) == QUEUE_OK, "reopen: put with every field");
	id2 = put(q, "sess-2", "plain", true);
	queue_close(q);

	q = open_q("reopen", NULL);
	ok(q, "reopen: reopened");
	if (!q)
		return;
	is_str(queue_instance_id(q), instance, "reopen: same instance id");
	queue_stats(q, &st);
	is_int(st.depth, 2, "reopen: depth 2");
	is_int(st.bytes, 13, "reopen: bytes 13");
	n = lease(q, m, 4);
	is_int(n, 2, "reopen: both due");
	if (n == 2) {
		const struct queue_msg *a = m[0], *b = m[1];

		is_int(a->id, id1, "reopen: id");
		is_int(a->received_ms, full.received_ms, "reopen: received_ms");
		is_str(a->session, full.session, "reopen: session");
		is_str(a->target, full.target, "reopen: target");
		is_str(a->content_type, full.content_type, "reopen: content_type");
		is_str(a->xff, full.xff, "reopen: xff");
		is_str(a->peer_ip, full.peer_ip, "reopen: peer_ip");
		is_str(a->user_agent, full.user_agent, "reopen: user_agent");
		is_str(a->origin, full.origin, "reopen: origin");
		is_str(a->api_key, full.api_key, "reopen: api_key");
		is_str(a->conn_id, full.conn_id, "reopen: conn_id");
		is_int(a->seq, 12, "reopen: seq");
		ok(a->body_len == 8 && memcmp(a->body, full.body, 8) == 0, "reopen: binary body");
		is_int(b->id, id2, "reopen: second id");
		ok(body_is(b, "plain"), "reopen: second body");
		ok(!b->xff && !b->api_key && !b->conn_id,
		   "reopen: NULL fields stay NULL");
		queue_ack(q, a->id);
		queue_ack(q, b->id);
	}
	free_msgs(m, n);
	queue_close(q);
}

static void test_leased_survives(void)
{
	struct queue *q = open_q("leased", NULL);
	struct queue_msg *m[4];
	int64_t id;
	size_t n;

	ok(q, "leased: open");
	if (!q)
		return;
	id = put(q, "L", "in flight", true);
	n = lease(q, m, 4);
	is_int(n, 1, "leased: leased");
	free_msgs(m, n);
	queue_close(q); /* no ack: the relay died mid-delivery */

	q = open_q("leased", NULL);
	ok(q, "leased: reopen");
	if (!q)
		return;
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->id == id && body_is(m[0], "in flight"),
	   "leased: due again after reopen");
	if (n == 1)
		queue_ack(q, id);
	free_msgs(m, n);
	queue_close(q);
}

/* --- group commit ----------------------------------------------------------- */

#define GC_THREADS 8
#define GC_PUTS 500

struct gc_ctx {
	struct queue *q;
	int thread;
	int failures;
};

static uint64_t gc_batches, gc_latencies, gc_calls;

static void gc_on_commit(void *arg, size_t batch, const uint32_t *lat, size_t n)
{
	(void)arg;
	(void)lat;
	gc_calls++;
	gc_batches += batch;
	gc_latencies += n;
}

static void *gc_producer(void *arg)
{
	struct gc_ctx *c = arg;
	char session[16], body[32];
	int i;

	snprintf(session, sizeof session, "t%d", c->thread);
	for (i = 0; i < GC_PUTS; i++) {
		snprintf(body, sizeof body, "%d:%d", c->thread, i);
		if (put(c->q, session, body, true) < 0)
			c->failures++;
	}
	return NULL;
}

static void test_group_commit(void)
{
	struct queue_options o;
	struct queue *q;
	struct gc_ctx ctx[GC_THREADS];
	pthread_t th[GC_THREADS];
	struct queue_stats st;
	struct queue_msg *m[64];
	int next[GC_THREADS] = { 0 };
	int i, failures = 0, started = 0, out_of_order = 0, leased = 0, idle = 0;
	int64_t t0;
	size_t n, j;

	queue_options_init(&o);
	o.commit_window_ms = 2;
	o.on_commit = gc_on_commit;
	q = open_q("group", &o);
	ok(q, "group: open");
	if (!q)
		return;
	t0 = mono_ms();
	for (i = 0; i < GC_THREADS; i++) {
		ctx[i] = (struct gc_ctx){ q, i, 0 };
		if (pthread_create(&th[i], NULL, gc_producer, &ctx[i]) == 0)
			started++;
	}
	is_int(started, GC_THREADS, "group: producers started");
	for (i = 0; i < started; i++) {
		pthread_join(th[i], NULL);
		failures += ctx[i].failures;
	}
	queue_stats(q, &st);
	diag("group: %d waited puts in %lld ms, %llu commits", GC_THREADS * GC_PUTS,
	     (long long)(mono_ms() - t0), (unsigned long long)st.commits_total);
	is_int(failures, 0, "group: every put committed");
	is_int(st.committed_total, GC_THREADS * GC_PUTS, "group: committed_total");
	ok(st.commits_total < GC_THREADS * GC_PUTS / 4,
	   "group: far fewer commits than messages (%llu)", (unsigned long long)st.commits_total);
	is_int(st.depth, GC_THREADS * GC_PUTS, "group: all queued");

	/* Drain: each session's messages come back in the order they were put. */
	while (leased < GC_THREADS * GC_PUTS && idle < 100) {
		n = lease(q, m, 64);
		if (n == 0) {
			idle++;
			sleep_ms(10);
			continue;
		}
		for (j = 0; j < n; j++) {
			int t = -1, k = -1;

			sscanf(m[j]->body, "%d:%d", &t, &k);
			if (t < 0 || t >= GC_THREADS || k != next[t])
				out_of_order++;
			else
				next[t]++;
			queue_ack(q, m[j]->id);
			queue_msg_free(m[j]);
			leased++;
		}
	}
	is_int(leased, GC_THREADS * GC_PUTS, "group: every message leased once");
	is_int(out_of_order, 0, "group: in order within each session");
	queue_close(q);
	ok(gc_batches >= GC_THREADS * GC_PUTS && gc_calls > 0, "group: on_commit saw every batch");
	is_int(gc_latencies, GC_THREADS * GC_PUTS, "group: one latency per message");
	is_int(sql_int("group", "SELECT count(*) FROM messages"), 0,
	       "group: acks committed at close");
}

/* --- limits, expiry, notify ------------------------------------------------- */

static void test_limits(void)
{
	struct queue_options o;
	struct queue *q;
	struct queue_msg *m[4], x;
	size_t n;

	queue_options_init(&o);
	o.max_messages = 3;
	q = open_q("limits-n", &o);
	ok(q, "limits: open");
	if (!q)
		return;
	ok(put(q, "A", "1", false) > 0 && put(q, "B", "2", false) > 0 && put(q, "C", "3", true) > 0,
	   "limits: three fit");
	x = msg("D", "4");
	is_int(queue_put(q, &x, true, NULL), QUEUE_EFULL, "limits: the fourth gets EFULL");
	n = lease(q, m, 1);
	if (n == 1)
		queue_ack(q, m[0]->id);
	free_msgs(m, n);
	is_int(queue_put(q, &x, true, NULL), QUEUE_OK, "limits: room again after an ack");
	queue_close(q);

	queue_options_init(&o);
	o.max_bytes = 100;
	q = open_q("limits-b", &o);
	ok(q, "limits: open (bytes)");
	if (!q)
		return;
	x = msg("A", "");
	x.body = "0123456789012345678901234567890123456789012345678901234567890123456789";
	x.body_len = 60;
	is_int(queue_put(q, &x, true, NULL), QUEUE_OK, "limits: 60 bytes fit");
	is_int(queue_put(q, &x, true, NULL), QUEUE_EFULL, "limits: 60 more do not");
	x.body_len = 40;
	is_int(queue_put(q, &x, true, NULL), QUEUE_OK, "limits: 40 more do (exactly 100)");
	n = lease(q, m, 1);
	if (n == 1)
		queue_ack(q, m[0]->id);
	free_msgs(m, n);
	x.body_len = 60;
	is_int(queue_put(q, &x, true, NULL), QUEUE_OK, "limits: 60 fit again after an ack");
	queue_close(q);
}

static void test_expiry(void)
{
	struct queue_options o;
	struct queue *q;
	struct queue_msg *m[4], x;
	struct queue_stats st;
	int64_t fresh = 0, end;
	size_t n;

	queue_options_init(&o);
	o.max_age_ms = 1000;
	q = open_q("expiry", &o);
	ok(q, "expiry: open");
	if (!q)
		return;
	x = msg("A", "old");
	x.received_ms = wall_ms() - 10000;
	ok(queue_put(q, &x, false, NULL) == QUEUE_OK, "expiry: put an old message");
	x = msg("A", "fresh");
	ok(queue_put(q, &x, true, &fresh) == QUEUE_OK, "expiry: and a fresh one");
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->id == fresh, "expiry: the old one is not leased; the fresh one is");
	if (n == 1)
		queue_ack(q, fresh);
	free_msgs(m, n);
	queue_stats(q, &st);
	ok(st.expired_total >= 1 && st.dead >= 1, "expiry: counted as expired and dead");

	/* Nobody leases: the writer expires it on its own. */
	x = msg("B", "old, unleased");
	x.received_ms = wall_ms() - 10000;
	ok(queue_put(q, &x, true, NULL) == QUEUE_OK, "expiry: put another old one");
	end = mono_ms() + 3000;
	do {
		sleep_ms(50);
		queue_stats(q, &st);
	} while (st.expired_total < 2 && mono_ms() < end);
	is_int(st.expired_total, 2, "expiry: the writer expired it without a lease");
	is_int(st.depth, 0, "expiry: nothing queued");
	queue_close(q);
	is_int(sql_int("expiry", "SELECT count(*) FROM dead_letters WHERE reason = 'expired'"), 2,
	       "expiry: both in dead_letters as 'expired'");
}

static atomic_int notified;

static void on_notify(void *arg)
{
	(void)arg;
	atomic_fetch_add(&notified, 1);
}

static void test_notify(void)
{
	struct queue *q = open_q("notify", NULL);
	struct queue_msg *m[4];
	int64_t end;
	int before;
	size_t n;

	ok(q, "notify: open");
	if (!q)
		return;
	queue_set_notify(q, on_notify, NULL);
	put(q, "N", "n1", false);
	put(q, "N", "n2", true);
	end = mono_ms() + 1000;
	while (atomic_load(&notified) == 0 && mono_ms() < end)
		sleep_ms(5);
	ok(atomic_load(&notified) > 0, "notify: called after a commit");
	n = lease(q, m, 4);
	before = atomic_load(&notified);
	if (n == 1)
		queue_ack(q, m[0]->id);
	ok(atomic_load(&notified) > before, "notify: called when an ack makes the next one due");
	free_msgs(m, n);
	queue_close(q);
}

static void test_uncached(void)
{
	struct queue_options o;
	struct queue *q;
	struct queue_msg *m[4];
	int64_t id;
	size_t n;

	queue_options_init(&o);
	o.cache_bytes = 0; /* every lease reads the body back from SQLite */
	q = open_q("uncached", &o);
	ok(q, "uncached: open");
	if (!q)
		return;
	id = put(q, "U", "from disk", true);
	n = lease(q, m, 4);
	ok(n == 1 && m[0]->id == id && body_is(m[0], "from disk") &&
	   strcmp(m[0]->content_type, "application/json") == 0,
	   "uncached: body and metadata read back");
	if (n == 1)
		queue_ack(q, id);
	free_msgs(m, n);
	queue_close(q);
}

/* --- failures ----------------------------------------------------------------- */

static void test_corruption(void)
{
	struct queue *q = open_q("corrupt", NULL);
	char body[1024], junk[65536], wal[160], *cause = NULL;
	struct queue_options o;
	struct stat sb;
	int i, fd, rc;
	ssize_t w = -1;

	ok(q, "corrupt: open");
	if (!q)
		return;
	memset(body, 'x', sizeof body - 1);
	body[sizeof body - 1] = '\0';
	for (i = 0; i < 200; i++)
		put(q, "C", body, i == 199);
	queue_close(q);
	snprintf(wal, sizeof wal, "%s-wal", db_path("corrupt"));
	ok(stat(wal, &sb) != 0, "corrupt: the WAL was checkpointed at close");

	memset(junk, 0xa5, sizeof junk);
	fd = open(db_path("corrupt"), O_WRONLY);
	if (fd >= 0) {
		w = pwrite(fd, junk, sizeof junk, 16 * 4096);
		close(fd);
	}
	is_int(w, (ssize_t)sizeof junk, "corrupt: clobbered 16 pages in the middle");

	queue_options_init(&o);
	q = NULL;
	rc = queue_open(&q, db_path("corrupt"), &o, &cause);
	is_int(rc, QUEUE_ECORRUPT, "corrupt: queue_open says QUEUE_ECORRUPT");
	ok(!q, "corrupt: no queue");
	ok(cause && strstr(cause, "salvage") && strstr(cause, "aside"),
	   "corrupt: the cause says what to do");
	diag("cause: %s", cause ? cause : "(null)");
	free(cause);
	queue_close(q);
}

static void test_disk_full(void)
{
	static char big[16384];
	struct queue_options o;
	struct queue *q;
	struct queue_msg x, *m[64];
	struct queue_stats st;
	int i, rc = QUEUE_OK, good = 0, leased = 0;
	int64_t end;
	size_t n, j;

	memset(big, 'b', sizeof big);
	queue_options_init(&o);
	o.max_db_pages = 48; /* about 190 KiB: the "disk" */
	q = open_q("full", &o);
	ok(q, "full: open");
	if (!q)
		return;
	x = msg("F", "");
	x.body = big;
	x.body_len = sizeof big;
	for (i = 0; i < 100; i++) {
		rc = queue_put(q, &x, true, NULL);
		if (rc != QUEUE_OK)
			break;
		good++;
	}
	is_int(rc, QUEUE_EIO, "full: a waiting put gets QUEUE_EIO when the disk fills");
	ok(good > 0, "full: %d puts fit before that", good);
	queue_stats(q, &st);
	ok(!st.writable, "full: stats say not writable");
	ok(st.error[0] != '\0', "full: with the error (%s)", st.error);
	is_int(st.depth, good, "full: the refused message is not queued");
	x.body_len = 10;
	is_int(queue_put(q, &x, false, NULL), QUEUE_EIO, "full: new puts are refused at once");

	queue_set_max_db_pages(q, 0);
	end = mono_ms() + 5000;
	do {
		sleep_ms(20);
		queue_stats(q, &st);
	} while (!st.writable && mono_ms() < end);
	ok(st.writable, "full: writable again once there is room");
	is_int(queue_put(q, &x, true, NULL), QUEUE_OK, "full: and a waiting put succeeds");

	for (end = mono_ms() + 2000; leased < good + 1 && mono_ms() < end;) {
		n = lease(q, m, 64);
		for (j = 0; j < n; j++) {
			queue_ack(q, m[j]->id);
			queue_msg_free(m[j]);
			leased++;
		}
	}
	is_int(leased, good + 1, "full: every accepted message, and only those, is queued");
	queue_close(q);
}

/* --- main ----------------------------------------------------------------------- */

/* Waits until the queue has committed more than `after` transactions. */
static bool wait_commits(struct queue *q, uint64_t after, struct queue_stats *st)
{
	int64_t until = mono_ms() + 5000;

	do {
		queue_stats(q, st);
		if (st->commits_total > after)
			return true;
		usleep(5000);
	} while (mono_ms() < until);
	return false;
}

/* A commit that stores no new message (an ack's delete) is not fsynced
 * until the last fsync is QUEUE_UNSYNCED_MAX_MS (1 s) old; one that does,
 * always is; and a delete not fsynced still holds after a clean close. */
static void test_sync_deletes(void)
{
	struct queue *q = open_q("syncdel", NULL);
	struct queue_stats st0, st;
	struct queue_msg *m[2];
	int64_t t0;
	size_t n;

	ok(q, "sync: open");
	if (!q)
		return;
	put(q, "s1", "one", true);
	put(q, "s2", "two", true);
	t0 = mono_ms();
	queue_stats(q, &st0);
	ok(st0.commits_synced_total == st0.commits_total && st0.commits_total >= 1,
	   "sync: every commit with new messages is fsynced (%llu of %llu)",
	   (unsigned long long)st0.commits_synced_total, (unsigned long long)st0.commits_total);
	n = lease(q, m, 2);
	is_int(n, 2, "sync: both leased");
	if (n != 2) {
		free_msgs(m, n);
		queue_close(q);
		return;
	}
	queue_ack(q, m[0]->id);
	ok(wait_commits(q, st0.commits_total, &st), "sync: the ack is committed");
	ok(st.commits_synced_total == st0.commits_synced_total || mono_ms() - t0 >= 1000,
	   "sync: a delete right after a put is not fsynced (%llu synced of %llu)",
	   (unsigned long long)st.commits_synced_total, (unsigned long long)st.commits_total);
	st0 = st;
	usleep(1100 * 1000);
	queue_ack(q, m[1]->id);
	ok(wait_commits(q, st0.commits_total, &st), "sync: the second ack is committed");
	is_int(st.commits_synced_total, st0.commits_synced_total + 1,
	       "sync: a delete a second after the last fsync is fsynced");
	free_msgs(m, n);
	queue_close(q);
	q = open_q("syncdel", NULL);
	ok(q, "sync: reopened");
	if (!q)
		return;
	queue_stats(q, &st);
	is_int(st.depth, 0, "sync: both deletes held across a close");
	queue_close(q);
}

int main(void)
{
	tmpdir = tmpdir_create("test-queue");
	test_dup();
	test_order();
	test_parallel_retry();
	test_retry_delay();
	test_dead();
	test_dead_key();
	test_dead_reasons();
	test_ids_never_reused();
	test_reopen();
	test_leased_survives();
	test_group_commit();
	test_limits();
	test_expiry();
	test_notify();
	test_uncached();
	test_corruption();
	test_disk_full();
	test_sync_deletes();
	tmpdir_remove(tmpdir);
	return done_testing();
}
