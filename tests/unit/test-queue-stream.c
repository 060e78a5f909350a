/*
 * test-queue-stream.c - the queue's stream lease (a window of one
 * session's messages in flight, acked by a fence, read again in order after
 * a drop), websocket connections' end rows, orphans ended at open, fallback
 * rows keeping their place, and the learned hellos.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "queue.h"
#include "tap.h"
#include "testutil.h"

static char *tmpdir;

static const char *db_path(const char *name)
{
	static char path[128];

	snprintf(path, sizeof path, "%s/%s.db", tmpdir, name);
	return path;
}

static struct queue *open_q(const char *name, bool orphans)
{
	struct queue_options o;
	struct queue *q = NULL;
	char *cause = NULL;
	int rc;

	queue_options_init(&o);
	o.close_orphans = orphans;
	rc = queue_open(&q, db_path(name), &o, &cause);
	if (rc != QUEUE_OK)
		diag("queue_open %s: %s: %s", name, queue_strerror(rc), cause ? cause : "");
	free(cause);
	return q;
}

/* A websocket message (conn set) or a fallback POST (conn NULL). */
static int64_t put(struct queue *q, const char *session, const char *conn, const char *body)
{
	struct queue_msg m;
	int64_t id = 0;

	memset(&m, 0, sizeof m);
	m.session = session;
	m.target = conn ? "/?apiKey=k&sessionId=s" : "/trace";
	m.content_type = conn ? "text/plain; charset=utf-8" : "application/json";
	m.conn_id = conn;
	m.api_key = "k";
	m.body = body;
	m.body_len = strlen(body);
	m.seq = 1;
	if (queue_put(q, &m, true, &id) != QUEUE_OK)
		return -1;
	return id;
}

static int64_t put_close(struct queue *q, const char *session, const char *conn, unsigned code,
                         const char *reason)
{
	unsigned char body[64];
	size_t len = strlen(reason);
	struct queue_msg m;
	int64_t id = 0;

	body[0] = (unsigned char)(code >> 8);
	body[1] = (unsigned char)code;
	memcpy(body + 2, reason, len);
	memset(&m, 0, sizeof m);
	m.session = session;
	m.target = "/?apiKey=k&sessionId=s";
	m.content_type = QUEUE_CT_WS_CLOSE;
	m.conn_id = conn;
	m.body = body;
	m.body_len = len + 2;
	if (queue_put(q, &m, true, &id) != QUEUE_OK)
		return -1;
	return id;
}

static size_t slease(struct queue *q, unsigned owner, struct queue_msg **out, size_t max)
{
	size_t n = 0;

	(void)queue_stream_lease(q, owner, out, max, &n);
	return n;
}

static bool body_is(const struct queue_msg *m, const char *body)
{
	return m->body_len == strlen(body) && memcmp(m->body, body, m->body_len) == 0;
}

static void free_msgs(struct queue_msg **m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		queue_msg_free(m[i]);
}

/* A window of one session in flight, in order; an ack of a prefix; more
 * committed while owned is read by the owner only. */
static void test_window(void)
{
	struct queue *q = open_q("window", false);
	struct queue_msg *m[16];
	struct queue_stats st;
	char body[8];
	size_t n;
	int64_t ids[6];

	if (!q)
		return;
	is_int(queue_stream_init(q, 2, 3), QUEUE_OK, "window: streams on (2 owners, window 3)");
	is_int(queue_stream_init(q, 2, 3), QUEUE_EINVAL, "window: only once");
	for (int i = 0; i < 5; i++) {
		snprintf(body, sizeof body, "m%d", i);
		ids[i] = put(q, "s1", "c1", body);
	}
	n = slease(q, 1, m, 16);
	is_int(n, 3, "window: owner 1 gets the window's 3 messages");
	ok(n == 3 && body_is(m[0], "m0") && body_is(m[1], "m1") && body_is(m[2], "m2"),
	   "window: in order");
	ok(n == 3 && m[0]->attempts == 0, "window: first sending has attempts 0");
	free_msgs(m, n);
	is_int(slease(q, 1, m, 16), 0, "window: nothing more while the window is full");
	is_int(slease(q, 2, m, 16), 0, "window: owner 2 gets nothing of a session owner 1 has");
	queue_stats(q, &st);
	is_int(st.streams, 1, "window: stats count one owned session");
	is_int(st.in_flight, 0, "window: stream messages are not queue_lease's in_flight");

	queue_stream_ack(q, "s1", ids[1]);
	queue_stats(q, &st);
	is_int(st.depth, 3, "window: ack up to the 2nd deletes two");
	n = slease(q, 1, m, 16);
	is_int(n, 2, "window: two more fit the window");
	ok(n == 2 && body_is(m[0], "m3") && body_is(m[1], "m4"), "window: the next two, in order");
	free_msgs(m, n);
	ids[5] = put(q, "s1", "c1", "m5");
	is_int(slease(q, 1, m, 16), 0, "window: a new message waits for room in the window");
	queue_stream_ack(q, "s1", ids[2]);
	n = slease(q, 1, m, 16);
	ok(n == 1 && body_is(m[0], "m5"),
	   "window: a message committed while owned goes to its owner");
	free_msgs(m, n);
	queue_stream_ack(q, "s1", ids[5]);
	queue_stats(q, &st);
	is_int(st.depth, 0, "window: everything acked");
	queue_stream_release(q, "s1", 0);
	queue_stats(q, &st);
	is_int(st.streams, 0, "window: released");
	queue_close(q);
}

/* A drop: what was in flight is read again, in order, by the next owner,
 * with attempts counting the earlier sendings; not before the delay. */
static void test_resend(void)
{
	struct queue *q = open_q("resend", false);
	struct queue_msg *m[16];
	char body[8];
	size_t n;
	int64_t ids[4];

	if (!q)
		return;
	queue_stream_init(q, 2, 8);
	for (int i = 0; i < 4; i++) {
		snprintf(body, sizeof body, "r%d", i);
		ids[i] = put(q, "s", "c", body);
	}
	n = slease(q, 1, m, 16);
	is_int(n, 4, "resend: four in flight");
	free_msgs(m, n);
	queue_stream_ack(q, "s", ids[0]);
	queue_stream_release(q, "s", 200);
	is_int(slease(q, 2, m, 16), 0, "resend: nothing before the delay");
	sleep_ms(250);
	n = slease(q, 2, m, 16);
	is_int(n, 3, "resend: the three unfenced ones again, for another owner");
	ok(n == 3 && body_is(m[0], "r1") && body_is(m[1], "r2") && body_is(m[2], "r3"),
	   "resend: in order");
	ok(n == 3 && m[0]->attempts == 1 && m[2]->attempts == 1, "resend: attempts 1 each");
	ok(n == 3 && m[0]->id == ids[1], "resend: same ids");
	free_msgs(m, n);
	queue_stream_ack(q, "s", ids[3]);
	queue_stream_release(q, "s", 0);
	queue_close(q);
}

/* Sessions in parallel on different owners; a released session goes to
 * whoever asks next. */
static void test_parallel(void)
{
	struct queue *q = open_q("parallel", false);
	struct queue_msg *m[16];
	size_t n1, n2;

	if (!q)
		return;
	queue_stream_init(q, 2, 4);
	put(q, "a", "ca", "a0");
	put(q, "b", "cb", "b0");
	n1 = slease(q, 1, m, 1);
	is_int(n1, 1, "parallel: owner 1 takes one session");
	ok(n1 == 1 && body_is(m[0], "a0"), "parallel: the oldest first");
	free_msgs(m, n1);
	n2 = slease(q, 2, m, 16);
	ok(n2 == 1 && body_is(m[0], "b0"), "parallel: owner 2 takes the other");
	free_msgs(m, n2);
	put(q, "a", "ca", "a1");
	is_int(slease(q, 2, m, 16), 0, "parallel: a's new message is not owner 2's");
	n1 = slease(q, 1, m, 16);
	ok(n1 == 1 && body_is(m[0], "a1"), "parallel: it is owner 1's");
	free_msgs(m, n1);
	queue_close(q);
}

/* A fallback POST between websocket messages keeps its place: it goes to
 * queue_lease once what precedes it is acked, and the owner reads on after
 * its ack. */
static void test_post_in_order(void)
{
	struct queue *q = open_q("post", false);
	struct queue_msg *m[16];
	int64_t w0;
	size_t n;

	if (!q)
		return;
	queue_stream_init(q, 1, 8);
	w0 = put(q, "s", "c", "w0");
	put(q, "s", NULL, "p1");
	put(q, "s", "c", "w2");
	put(q, "t", NULL, "other");
	n = slease(q, 1, m, 16);
	ok(n == 1 && body_is(m[0], "w0"), "post: the stream stops before the POST");
	free_msgs(m, n);
	(void)queue_lease(q, m, 16, &n);
	ok(n == 1 && body_is(m[0], "other"),
	   "post: queue_lease gets other sessions' POSTs, not this one's yet");
	if (n == 1)
		queue_ack(q, m[0]->id);
	free_msgs(m, n);
	queue_stream_ack(q, "s", w0);
	(void)queue_lease(q, m, 16, &n);
	ok(n == 1 && body_is(m[0], "p1"), "post: after the ack, the POST goes to queue_lease");
	is_int(slease(q, 1, m + 8, 8), 0, "post: the owner waits for it");
	if (n == 1)
		queue_ack(q, m[0]->id);
	free_msgs(m, n);
	n = slease(q, 1, m, 16);
	ok(n == 1 && body_is(m[0], "w2"), "post: after its ack the owner reads on");
	free_msgs(m, n);
	(void)queue_lease(q, m, 16, &n);
	is_int(n, 0, "post: queue_lease never gets websocket rows");
	queue_close(q);
}

/* End rows: recognised, taken when the queue is full; connections without
 * one get a 1001 after their last row when the queue opens. */
static void test_close_rows(void)
{
	struct queue_options o;
	struct queue *q;
	struct queue_msg *m[16];
	unsigned code = 0;
	int64_t end_id = 0;
	size_t n;
	char *cause = NULL;

	q = open_q("close", false);
	if (!q)
		return;
	put(q, "s", "c1", "a");
	put_close(q, "s", "c1", 1000, "bye");
	put(q, "s", "c2", "b");          /* c2 never ended: the relay "crashed" */
	put(q, "t", "c3", "c");
	put(q, "t", NULL, "post");
	queue_close(q);

	q = open_q("close", true);
	if (!q)
		return;
	queue_stream_init(q, 1, 16);
	n = slease(q, 1, m, 16);
	is_int(n, 5, "close: s's rows and t's websocket row, with their orphans' ends");
	if (n == 5) {
		ok(!queue_msg_is_close(m[0], NULL), "close: a message is not an end");
		ok(queue_msg_is_close(m[1], &code) && code == 1000, "close: c1's own end, 1000");
		ok(m[1]->body_len == 5 && !memcmp((const char *)m[1]->body + 2, "bye", 3),
		   "close: with its reason");
		ok(body_is(m[2], "b"), "close: then c2's message");
		ok(queue_msg_is_close(m[3], &code) && code == 1001 && m[3]->conn_id &&
		   !strcmp(m[3]->conn_id, "c2"), "close: c2 got an end, 1001, after its last row");
		ok(body_is(m[4], "c"), "close: t's message");
		end_id = m[3]->id;
	}
	free_msgs(m, n);
	n = slease(q, 1, m, 16);
	is_int(n, 0, "close: t's orphan end waits behind t's POST, which came before it");
	/* The ends took ids of their own: a new message never shares one (it
	 * did: acking the end deleted the message too). */
	ok(put(q, "u", "c9", "new") > end_id + 1, "close: a new message's id is past the ends'");
	queue_close(q);

	/* A full queue still takes a connection's end. */
	queue_options_init(&o);
	o.max_messages = 1;
	q = NULL;
	if (queue_open(&q, db_path("full"), &o, &cause) != QUEUE_OK) {
		ok(0, "close: open full: %s", cause ? cause : "");
		free(cause);
		return;
	}
	ok(put(q, "s", "c", "x") > 0, "close: one message fills the queue");
	ok(put(q, "s", "c", "y") < 0, "close: a second message is refused");
	ok(put_close(q, "s", "c", 1001, "") > 0, "close: the end is taken anyway");
	queue_close(q);
}

/* A rejected key: the in-flight messages are dead-lettered by the owner,
 * the rest by queue_dead_key, which leaves what is in flight alone. */
static void test_dead(void)
{
	struct queue *q = open_q("dead", false);
	struct queue_msg *m[16];
	struct queue_stats st;
	int64_t first;
	size_t n;

	if (!q)
		return;
	queue_stream_init(q, 1, 2);
	first = put(q, "s", "c", "d0");
	put(q, "s", "c", "d1");
	put(q, "s", "c", "d2");
	n = slease(q, 1, m, 16);
	is_int(n, 2, "dead: two in flight");
	free_msgs(m, n);
	is_int(queue_dead_key(q, "k", "key_rejected"), 1,
	       "dead: dead_key takes the unread one only");
	queue_stream_dead(q, "s", first, "key_rejected", 401, "no");
	queue_stats(q, &st);
	is_int(st.depth, 1, "dead: up to the first in flight");
	queue_stream_dead(q, "s", INT64_MAX, "key_rejected", 401, "no");
	queue_stats(q, &st);
	is_int(st.depth, 0, "dead: nothing queued");
	is_int(st.dead, 3, "dead: all three dead-lettered");
	queue_close(q);
}

/* Hellos: kept per key, across a reopen; a changed one replaces it. */
static void test_hellos(void)
{
	struct queue *q = open_q("hello", false);
	char *h;

	if (!q)
		return;
	ok(!queue_hello_get(q, "k"), "hello: none known at first");
	is_int(queue_hello_set(q, "k", "{\"projectId\":\"p1\"}"), QUEUE_OK, "hello: set");
	is_int(queue_hello_set(q, "k2", "{\"projectId\":\"p2\"}"), QUEUE_OK, "hello: another key");
	h = queue_hello_get(q, "k");
	is_str(h, "{\"projectId\":\"p1\"}", "hello: read back");
	free(h);
	queue_close(q);
	q = open_q("hello", false);
	if (!q)
		return;
	h = queue_hello_get(q, "k");
	is_str(h, "{\"projectId\":\"p1\"}", "hello: remembered across a reopen");
	free(h);
	queue_hello_set(q, "k", "{\"projectId\":\"p3\"}");
	h = queue_hello_get(q, "k");
	is_str(h, "{\"projectId\":\"p3\"}", "hello: a change replaces it");
	free(h);
	h = queue_hello_get(q, "k2");
	is_str(h, "{\"projectId\":\"p2\"}", "hello: keys apart");
	free(h);
	queue_close(q);
}

int main(void)
{
	tmpdir = tmpdir_create("test-queue-stream");
	test_window();
	test_resend();
	test_parallel();
	test_post_in_order();
	test_close_rows();
	test_dead();
	test_hellos();
	tmpdir_remove(tmpdir);
	return done_testing();
}
