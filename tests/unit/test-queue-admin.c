/*
 * test-queue-admin.c - what the queue CLI does to a database (queue_admin.h)
 * while a queue runs on it and while none does: reports, replay and purge
 * picked up by the running queue, the integrity check, salvage of a corrupt
 * file; the lock that keeps a second process off a queue; and
 * queue_set_notify waiting for a callback that is running.
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
#include <unistd.h>

#include <sqlite3.h>

#include "queue.h"
#include "queue_admin.h"
#include "tap.h"
#include "testutil.h"

#define PICKUP_WAIT_MS 3000   /* the writer looks for CLI changes every second */

static char *tmpdir;          /* tmpdir_create's, for the whole run */

static const char *db_path(const char *name)
{
	static char path[128];

	snprintf(path, sizeof path, "%s/%s.db", tmpdir, name);
	return path;
}

static struct queue *open_q(const char *name)
{
	struct queue *q = NULL;
	char *cause = NULL;
	int rc = queue_open(&q, db_path(name), NULL, &cause);

	if (rc != QUEUE_OK)
		diag("queue_open %s: %s: %s", name, queue_strerror(rc), cause ? cause : "");
	free(cause);
	return q;
}

static struct queue_admin *open_admin(const char *name, bool write)
{
	struct queue_admin *a = NULL;
	char *cause = NULL;
	int rc = queue_admin_open(&a, db_path(name), write, &cause);

	if (rc != QUEUE_OK)
		diag("queue_admin_open %s: %s", name, cause ? cause : queue_strerror(rc));
	free(cause);
	return a;
}

static int64_t put(struct queue *q, const char *session, const char *body, bool wait)
{
	struct queue_msg m = { .session = session, .target = "/trace", .body = body,
	                       .body_len = strlen(body) };
	int64_t id = -1;

	if (queue_put(q, &m, wait, &id) != QUEUE_OK)
		return -1;
	return id;
}

/* Leases one message within a second (NULL if none). */
static struct queue_msg *lease1(struct queue *q)
{
	struct queue_msg *m = NULL;
	size_t n = 0;
	int64_t end = mono_ms() + 1000;

	while (n == 0 && mono_ms() < end) {
		if (queue_lease(q, &m, 1, &n) != QUEUE_OK || n == 0)
			sleep_ms(5);
	}
	return n == 1 ? m : NULL;
}

static bool body_is(const struct queue_msg *m, const char *s)
{
	return m && m->body_len == strlen(s) && memcmp(m->body, s, m->body_len) == 0;
}

/* --- queue_set_notify waits for a callback that is running ------------------------- */

static atomic_int cb_state; /* 0 idle, 1 inside, 2 returned */

static void slow_notify(void *arg)
{
	atomic_store(&cb_state, 1);
	sleep_ms(300);
	atomic_store(&cb_state, 2);
}

static void test_notify_unregister(void)
{
	struct queue *q = open_q("notify");
	struct queue_msg *m;
	int64_t end;

	ok(q, "notify: open");
	if (!q)
		return;
	queue_set_notify(q, slow_notify, NULL);
	put(q, "N", "x", false);
	for (end = mono_ms() + 2000; atomic_load(&cb_state) != 1 && mono_ms() < end;)
		sleep_ms(1);
	ok(atomic_load(&cb_state) == 1, "notify: the callback is running");
	queue_set_notify(q, NULL, NULL);
	is_int(atomic_load(&cb_state), 2,
	       "notify: set_notify(NULL) returned after the callback did");
	m = lease1(q);
	if (m)
		queue_ack(q, m->id);
	queue_msg_free(m);
	queue_close(q);
}

/* --- the lock ---------------------------------------------------------------------- */

static void test_lock(void)
{
	struct queue *q = open_q("lock"), *q2 = NULL;
	char *cause = NULL;
	int rc;

	ok(q, "lock: open");
	rc = queue_open(&q2, db_path("lock"), NULL, &cause);
	is_int(rc, QUEUE_EBUSY, "lock: a second open of the same database is refused");
	ok(cause && strstr(cause, "in use"), "lock: saying why (%s)",
	   cause ? cause : "");
	free(cause);
	ok(queue_admin_in_use(db_path("lock")), "lock: the CLI sees it in use");
	queue_close(q2);
	queue_close(q);
	ok(!queue_admin_in_use(db_path("lock")), "lock: free once closed");
}

/* --- reports, replay and purge beside a running queue ------------------------------- */

static int count_row(void *arg, const struct queue_admin_row *r)
{
	int64_t *last = arg;

	last[0]++;
	last[1] = r->id;
	last[2] = r->attempts;
	return 0;
}

/* Keeps the first reason of the report in a struct queue_dead_reason. */
static int first_reason(void *arg, const struct queue_admin_row *r)
{
	struct queue_dead_reason *d = arg;

	snprintf(d->reason, sizeof d->reason, "%s", r->reason ? r->reason : "");
	d->count = r->queued;
	return 1;
}

static void test_replay_running(void)
{
	struct queue *q = open_q("replay");
	struct queue_admin *a;
	struct queue_admin_stats ast;
	struct queue_stats st;
	struct queue_msg *m, *m2;
	int64_t a_id, b_id, rows[3] = { 0 }, end, ids[2];
	uint64_t moved = 0, purged = 0;
	struct queue_dead_reason dr = { "", 0 };
	size_t nr = 0;
	char *cause = NULL;

	ok(q, "replay: open");
	if (!q)
		return;
	a_id = put(q, "S", "first", true);
	b_id = put(q, "S", "second", true);
	m = lease1(q);
	ok(m && m->id == a_id, "replay: the first message is leased");
	if (!m)
		goto out;
	queue_dead(q, m->id, "http 400", 400, "bad request");
	queue_msg_free(m);
	put(q, "other", "sync", true); /* the dead letter is committed with it */

	a = open_admin("replay", false);
	ok(a, "replay: the CLI opens the database of a running queue");
	if (!a)
		goto out;
	ok(queue_admin_stats(a, &ast, NULL) == QUEUE_OK, "replay: stats");
	is_int(ast.depth, 2, "replay: stats count the queued messages");
	is_int(ast.dead, 1, "replay: and the dead letter");
	is_str(ast.instance_id, queue_instance_id(q), "replay: and name the instance");
	ok(queue_admin_dead_list(a, 0, count_row, rows, NULL) == QUEUE_OK &&
	   rows[0] == 1 && rows[1] == a_id, "replay: dead list shows it");
	ok(queue_admin_dead_reasons(a, first_reason, &dr, NULL) == QUEUE_OK &&
	   !strcmp(dr.reason, "http 400") && dr.count == 1, "replay: the CLI counts it by reason");
	ok(queue_dead_reasons(q, &dr, 1, &nr) == QUEUE_OK && nr == 1 &&
	           !strcmp(dr.reason, "http 400") && dr.count == 1,
	   "replay: and so does the running queue");
	queue_admin_close(a);

	a = open_admin("replay", true);
	ids[0] = a_id;
	ids[1] = 999999; /* not a dead letter: skipped */
	ok(a && queue_admin_dead_replay(a, ids, 2, &moved, &cause) == QUEUE_OK,
	   "replay: dead replay %s", cause ? cause : "");
	is_int(moved, 1, "replay: one row moved");
	queue_admin_close(a);
	free(cause);

	for (end = mono_ms() + PICKUP_WAIT_MS; mono_ms() < end; sleep_ms(20)) {
		queue_stats(q, &st);
		if (st.dead == 0 && st.depth == 3)
			break;
	}
	is_int(st.dead, 0, "replay: the running queue's dead count follows");
	is_int(st.depth, 3, "replay: and it holds the replayed message again");
	/* "sync" is its own session; S has "second" at its head, then the
	 * replayed one (a replayed message never jumps a head). */
	m = lease1(q);
	m2 = lease1(q);
	ok(m && m2, "replay: two sessions due");
	if (m && m2) {
		struct queue_msg *s = body_is(m, "second") ? m : m2;

		ok(body_is(s, "second") && s->id == b_id, "replay: S's head is still the second");
		queue_ack(q, m->id);
		queue_ack(q, m2->id);
		queue_msg_free(m);
		queue_msg_free(m2);
		m = lease1(q);
		ok(body_is(m, "first") && m->id == a_id && m->attempts == 0,
		   "replay: then the replayed one, with its id and its attempts reset");
		if (m) {
			queue_dead(q, m->id, "expired", 0, NULL);
			queue_msg_free(m);
		}
	}
	put(q, "other", "sync2", true);
	m = lease1(q);
	if (m)
		queue_ack(q, m->id);
	queue_msg_free(m);

	a = open_admin("replay", true);
	ok(a && queue_admin_dead_purge(a, NULL, 0, &purged, NULL) == QUEUE_OK,
	   "replay: dead purge");
	is_int(purged, 1, "replay: purged one");
	queue_admin_close(a);
	ok(queue_dead_reasons(q, &dr, 1, &nr) == QUEUE_OK && nr == 0,
	   "replay: the running queue's reasons follow the purge at once");
	for (end = mono_ms() + PICKUP_WAIT_MS; mono_ms() < end; sleep_ms(20)) {
		queue_stats(q, &st);
		if (st.dead == 0)
			break;
	}
	is_int(st.dead, 0, "replay: the running queue's dead count follows the purge");
out:
	queue_close(q);
}

/* Retried heads appear in the report with their attempts. */
static void test_retry_heads(void)
{
	struct queue *q = open_q("heads");
	struct queue_admin *a;
	struct queue_msg *m;
	int64_t rows[3] = { 0 };

	ok(q, "heads: open");
	if (!q)
		return;
	put(q, "R", "one", true);
	put(q, "R", "two", true);
	m = lease1(q);
	if (m)
		queue_retry(q, m->id, 60000);
	queue_msg_free(m);
	put(q, "other", "sync", true);
	a = open_admin("heads", false);
	ok(a && queue_admin_retry_heads(a, 0, count_row, rows, NULL) == QUEUE_OK,
	   "heads: retry heads");
	is_int(rows[0], 1, "heads: one session waits for a retry");
	is_int(rows[2], 1, "heads: its head has one attempt");
	queue_admin_close(a);
	queue_close(q);
}

/* --- check and salvage ------------------------------------------------------------------- */

/* The page size and page count from a database file's header (offsets
 * 16 and 28, big-endian; a page size of 1 means 65536).  0 if unreadable. */
static size_t db_page_size(const char *name, uint32_t *pages)
{
	unsigned char hdr[32];
	size_t page = 0;
	int fd = open(db_path(name), O_RDONLY);

	if (fd >= 0 && pread(fd, hdr, sizeof hdr, 0) == (ssize_t)sizeof hdr) {
		page = (size_t)(hdr[16] << 8 | hdr[17]);
		page = page == 1 ? 65536 : page;
		if (pages)
			*pages = (uint32_t)hdr[28] << 24 | (uint32_t)hdr[29] << 16 |
			         (uint32_t)hdr[30] << 8 | hdr[31];
	}
	if (fd >= 0)
		close(fd);
	return page;
}

/* A new queue gets 32 KB pages (a ~2 KB row would waste half of a 4 KB
 * one); a queue made with SQLite's default 4 KB keeps it and works. */
static void test_page_size(void)
{
	struct queue *q = open_q("pages");
	struct queue_msg *m = NULL;
	sqlite3 *db = NULL;

	ok(q, "pages: open");
	if (q) {
		put(q, "P", "one", true);
		queue_close(q);
	}
	is_int(db_page_size("pages", NULL), 32768, "pages: a new queue has 32 KB pages");

	ok(sqlite3_open(db_path("old4k"), &db) == SQLITE_OK &&
	   sqlite3_exec(db, "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; "
	                "CREATE TABLE t (x); DROP TABLE t", NULL, NULL, NULL) == SQLITE_OK,
	   "pages: a 4 KB database made");
	sqlite3_close(db);
	q = open_q("old4k");
	ok(q, "pages: the queue opens it");
	if (!q)
		return;
	put(q, "P", "kept", true);
	m = lease1(q);
	ok(m && body_is(m, "kept"), "pages: and queues in it");
	if (m) {
		queue_ack(q, m->id);
		queue_msg_free(m);
	}
	queue_close(q);
	is_int(db_page_size("old4k", NULL), 4096, "pages: which keeps its 4 KB pages");
}

static bool check_ok(const char *name)
{
	struct queue_admin *a = open_admin(name, false);
	char report[1024];
	bool good = false;

	if (a && queue_admin_check(a, &good, report, sizeof report, NULL) != QUEUE_OK)
		good = false;
	queue_admin_close(a);
	return good;
}

static void test_salvage(void)
{
	struct queue *q = open_q("salvage");
	struct queue_admin_salvage res;
	struct queue_stats st;
	struct queue_msg *m;
	static char junk[65536];        /* SQLite's largest page */
	char body[1024], instance[17] = "", *cause = NULL, copy[160];
	uint32_t pages = 0;
	size_t page;
	off_t middle = 0;
	int64_t last = 0, id;
	int i, fd, rc;
	ssize_t w = -1;

	ok(q, "salvage: open");
	if (!q)
		return;
	snprintf(instance, sizeof instance, "%s", queue_instance_id(q));
	memset(body, 'x', sizeof body - 1);
	body[sizeof body - 1] = '\0';
	for (i = 0; i < 300; i++)
		last = put(q, "V", body, i == 299);
	m = lease1(q);
	if (m) {
		queue_ack(q, m->id); /* the highest id stays known: sqlite_sequence */
		queue_msg_free(m);
	}
	queue_close(q);
	ok(check_ok("salvage"), "salvage: check says a healthy file is ok");

	snprintf(copy, sizeof copy, "%s/copy.db", tmpdir);
	rc = queue_admin_salvage(db_path("salvage"), copy, &res, &cause);
	is_int(rc, QUEUE_OK, "salvage: a healthy file salvages %s", cause ? cause : "");
	is_int(res.messages, 299, "salvage: every row is copied");
	is_int(res.read_errors, 0, "salvage: without errors");
	ok(res.moved_to[0] == '\0', "salvage: with --output the source stays");
	free(cause);
	cause = NULL;

	/* One page of rows in the middle of the file, whatever the page size
	 * (the tables' first pages, meta's among them, come first). */
	memset(junk, 0xa5, sizeof junk);
	page = db_page_size("salvage", &pages);
	fd = open(db_path("salvage"), O_WRONLY);
	if (fd >= 0 && page > 0) {
		middle = (off_t)(pages / 2) * (off_t)page;
		w = pwrite(fd, junk, page, middle);
	}
	if (fd >= 0)
		close(fd);
	ok(page > 0 && w == (ssize_t)page,
	   "salvage: clobbered a page in the middle (%zu bytes at %lld)", page, (long long)middle);
	ok(!check_ok("salvage"), "salvage: check finds the damage");
	ok(!open_q("salvage"), "salvage: the queue refuses to open it");

	rc = queue_admin_salvage(db_path("salvage"), NULL, &res, &cause);
	is_int(rc, QUEUE_OK, "salvage: salvage runs %s", cause ? cause : "");
	free(cause);
	diag("salvage: %llu messages, %llu read errors, old file %s",
	     (unsigned long long)res.messages, (unsigned long long)res.read_errors, res.moved_to);
	ok(res.messages > 200 && res.messages < 299, "salvage: most rows, not the damaged ones");
	ok(res.read_errors > 0, "salvage: the damage is counted");
	ok(res.kept_instance_id, "salvage: the instance id is kept");
	ok(access(res.moved_to, F_OK) == 0, "salvage: the damaged file was moved aside");
	ok(check_ok("salvage"), "salvage: the new file checks ok");

	q = open_q("salvage");
	ok(q, "salvage: the queue opens the salvaged file");
	if (!q)
		return;
	is_str(queue_instance_id(q), instance, "salvage: same instance id");
	queue_stats(q, &st);
	is_int(st.depth, res.messages, "salvage: every salvaged message is queued");
	id = put(q, "V", "after", true);
	ok(id > last, "salvage: no id is handed out twice (%lld > %lld)", (long long)id,
	   (long long)last);
	queue_close(q);
}

/* --- main ----------------------------------------------------------------------- */

int main(void)
{
	tmpdir = tmpdir_create("test-queue-admin");
	test_notify_unregister();
	test_lock();
	test_replay_running();
	test_retry_heads();
	test_salvage();
	test_page_size();
	tmpdir_remove(tmpdir);
	return done_testing();
}
