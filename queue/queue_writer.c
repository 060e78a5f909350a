/*
 * queue_writer.c - the writer thread.  It owns the write connection: it
 * turns everything pending into one transaction (group commit), publishes
 * what committed to the index, backs off while the disk fails (probing it
 * until it takes writes again), dead-letters expired messages, and picks up
 * what the queue CLI replayed.
 */
#include <stdio.h>
#include <stdlib.h>

#include "queue_internal.h"

#define BACKOFF_MIN_MS 100      /* first retry after a failed commit ... */
#define BACKOFF_MAX_MS 1000     /* ... doubling up to this */
#define CLOSE_ATTEMPTS 3        /* failed commits queue_close sits through */
#define TICK_MS 1000            /* how often it looks for expired messages and CLI changes */
#define QUEUE_UNSYNCED_MAX_MS 1000  /* longest a commit without a new message waits for fsync */
#define EXPIRY_SCAN_MAX 1000    /* messages it looks at per tick */

/* Waits on cv until signalled or until the CLOCK_MONOTONIC deadline (ms);
 * INT64_MAX waits without a deadline.  cv must use CLOCK_MONOTONIC. */
static void cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline)
{
	struct timespec ts;

	if (deadline == INT64_MAX) {
		pthread_cond_wait(cv, mu);
		return;
	}
	ts.tv_sec = deadline / 1000;
	ts.tv_nsec = (deadline % 1000) * 1000000;
	pthread_cond_timedwait(cv, mu, &ts);
}

/* After a successful commit: wake the producers, publish the inserted
 * entries to the index, free what is done.  Returns how many latencies it
 * stored in q->lat. */
static size_t batch_done(struct queue *q, struct entry *batch, int64_t end_us)
{
	struct entry *e, *next;
	size_t nlat = 0;
	int64_t us;

	for (e = batch; e; e = next) {
		enum op op = e->batch_op;

		next = e->bnext;
		e->bnext = NULL;
		e->batch_op = OP_NONE;
		switch (op) {
		case OP_INSERT:
		case OP_INSERT_DEAD:
			q->committed_total++;
			us = end_us - e->put_us;
			if (nlat < q->lat_cap)
				q->lat[nlat++] = us < 0            ? 0
				                 : us > UINT32_MAX ? UINT32_MAX
				                                   : (uint32_t)us;
			qidx_waiter_finish(e, QUEUE_OK);
			if (op == OP_INSERT && e->live) {
				qidx_commit(q, e);
				break;
			}
			/* Dead-lettered before it was committed. */
			free(e->msg);
			e->msg = NULL;
			if (e->next_op == OP_NONE)
				qidx_entry_free(e);
			break;
		case OP_ATTEMPTS:
			break;
		default: /* OP_DELETE, OP_DEAD: the entry left the index before */
			qidx_entry_free(e);
			break;
		}
	}
	return nlat;
}

/* After a failed commit: producers waiting for their insert hear QUEUE_EIO
 * and their inserts are dropped; every other operation goes back to pending
 * and is retried with a backoff. */
static void batch_failed(struct queue *q, struct entry *batch, const char *err)
{
	struct entry *e, *next;

	for (e = batch; e; e = next) {
		enum op op = e->batch_op;

		next = e->bnext;
		e->bnext = NULL;
		e->batch_op = OP_NONE;
		if ((op == OP_INSERT || op == OP_INSERT_DEAD) && e->waiter)
			qidx_insert_drop(q, e, op);
		else if (e->next_op == OP_NONE)
			qidx_op_set(q, e, op);
		else
			e->next_op = qidx_op_merge(op, e->next_op);
	}
	q->writable = false;
	snprintf(q->error, sizeof q->error, "%s", err);
	q->backoff_ms = q->backoff_ms == 0 ? BACKOFF_MIN_MS
	              : q->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : q->backoff_ms * 2;
	q->retry_at_ms = mono_ms() + q->backoff_ms;
}

/*
 * Commits everything pending as one transaction or, while writes fail and
 * nothing is pending, runs the probe.  Called and returns with q->mu held,
 * which it drops while SQLite works: producers keep appending to q->pending
 * meanwhile, and that becomes the next batch.  Returns 0 or an SQLite error.
 */
static int writer_commit(struct queue *q)
{
	struct entry *batch = q->pending_head, *e, *next;
	char err[sizeof q->error];
	queue_commit_fn *on_commit = q->opt.on_commit;
	size_t size = 0, inserts = 0, nlat = 0;
	bool was_writable = q->writable;
	uint64_t pages = q->max_db_pages;
	bool set_pages = q->pages_dirty;
	int64_t end_us;
	bool durable;
	int rc;

	for (e = batch; e; e = next) {
		next = e->pnext;
		e->pnext = NULL;
		e->bnext = next;
		e->batch_op = e->next_op;
		e->next_op = OP_NONE;
		e->batch_attempts = e->attempts;
		size++;
		inserts += e->batch_op == OP_INSERT || e->batch_op == OP_INSERT_DEAD;
	}
	q->pending_head = q->pending_tail = NULL;
	q->npending = 0;
	q->batch = batch;
	q->pages_dirty = false;
	if (inserts > q->lat_cap) {
		uint32_t *lat = realloc(q->lat, inserts * sizeof *lat);

		if (lat) {
			q->lat = lat;
			q->lat_cap = inserts;
		}
	}
	pthread_mutex_unlock(&q->mu);

	if (set_pages)
		qstore_set_max_pages(q->db, pages);
	/* What a batch without a new message does (deletes, attempts, dead
	 * letters) may come undone at a power failure, which only means a
	 * message sent again: its fsync waits for the next message's or for
	 * QUEUE_UNSYNCED_MAX_MS, so that a drain is not one fsync per ack. */
	durable = inserts > 0 || mono_ms() - q->last_sync_ms >= QUEUE_UNSYNCED_MAX_MS;
	rc = batch ? qstore_batch_run(q, batch, durable, err, sizeof err)
	                   : qstore_probe_run(q, err, sizeof err);
	end_us = mono_us();
	if (rc == SQLITE_OK && (durable || !batch))
		q->last_sync_ms = end_us / 1000;

	pthread_mutex_lock(&q->mu);
	q->batch = NULL;
	if (rc == SQLITE_OK) {
		nlat = batch_done(q, batch, end_us);
		q->writable = true;
		q->error[0] = '\0';
		q->backoff_ms = 0;
		q->last_commit_end_ms = end_us / 1000;
		q->commits_total += batch ? 1 : 0;
		q->commits_synced_total += batch && durable ? 1 : 0;
	} else {
		batch_failed(q, batch, err);
	}
	pthread_cond_broadcast(&q->done_cv);
	qnotify_unlock(q);
	if (rc == SQLITE_OK && batch && on_commit)
		on_commit(q->opt.on_commit_arg, size, q->lat, nlat);
	/* Only this thread changes writable, so the transition is reported
	 * once, in order, without the lock. */
	if (rc == SQLITE_OK && !was_writable && q->opt.on_writable)
		q->opt.on_writable(q->opt.on_writable_arg, true, NULL);
	else if (rc != SQLITE_OK && was_writable && q->opt.on_writable)
		q->opt.on_writable(q->opt.on_writable_arg, false, err);
	pthread_mutex_lock(&q->mu);
	return rc;
}

/*
 * When the writer's next commit should start (monotonic ms), or INT64_MAX
 * if it has nothing to do.  The policy: a commit starts
 *   - at once when commit_batch_max operations are pending or the queue is
 *     closing;
 *   - at once when the writer had been idle for a whole commit window when
 *     the first operation arrived: a lone message pays no window;
 *   - otherwise when the oldest pending operation is commit_window_ms old.
 * Operations arriving while a commit is fsyncing have waited by the time it
 * ends, so under load each fsync carries everything that came during the
 * previous one; a producer waiting with queue_put(wait) waits at most
 * commit_window_ms plus two commits.
 */
static int64_t writer_due(const struct queue *q)
{
	int64_t window = q->opt.commit_window_ms;

	if (!q->writable)
		return q->retry_at_ms;
	if (!q->pending_head)
		return INT64_MAX;
	if (q->closing || q->npending >= q->opt.commit_batch_max)
		return 0;
	if (q->pending_since_ms >= q->last_commit_end_ms + window)
		return q->pending_since_ms;
	return q->pending_since_ms + window;
}

/* Dead-letters expired messages at the heads of sessions not in flight, in
 * id order, a bounded number per call. */
static void expire_pass(struct queue *q)
{
	int64_t wall = wall_ms();
	struct entry *e, *next;
	unsigned n;

	for (n = 0, e = q->live_head; e && n < EXPIRY_SCAN_MAX; n++, e = next) {
		next = e->gnext;
		if (!qidx_entry_expired(q, e, wall))
			break;
		if (e->indexed && e->session->head == e && e->session->state != S_BUSY &&
		    e->session->nflight == 0)
			qidx_expire_head(q, e->session);
	}
}

/* The writer is gone: producers still waiting hear QUEUE_EIO.  queue_close
 * frees the entries. */
static void writer_abandon(struct queue *q)
{
	struct entry *e;

	for (e = q->pending_head; e; e = e->pnext)
		qidx_waiter_finish(e, QUEUE_EIO);
	pthread_cond_broadcast(&q->done_cv);
}

/*
 * The queue CLI committed something (PRAGMA data_version moved), or the last
 * call left more: dead letters the CLI replayed are loaded into the index,
 * and the dead-letter count is taken again, since the CLI may have purged
 * some.  Called and returns with q->mu held, which it drops while SQLite
 * works.  Returns when to look again regardless of data_version.
 */
enum pickup_next {
	PICKUP_ON_CHANGE,    /* when the CLI commits again */
	PICKUP_NOW,          /* more rows wait than one transaction took */
	PICKUP_NEXT_TICK,    /* the transaction failed: try again */
};

static enum pickup_next pickup(struct queue *q, enum pickup_next next)
{
	struct qidx_row rows[PICKUP_MAX];
	struct entry *hint = NULL;
	uint64_t dead = 0;
	size_t n = 0, i;
	int rc = SQLITE_DONE;

	if (!q->writable || q->closing)
		return next == PICKUP_ON_CHANGE ? PICKUP_ON_CHANGE : PICKUP_NEXT_TICK;
	pthread_mutex_unlock(&q->mu);
	/* Not short-circuited: data_version must be read on every tick. */
	if (qstore_changed(q) | (next != PICKUP_ON_CHANGE))
		rc = qstore_pickup(q, rows, PICKUP_MAX, &n, &dead);
	pthread_mutex_lock(&q->mu);
	if (rc == SQLITE_DONE)
		return PICKUP_ON_CHANGE;
	if (rc != SQLITE_OK)
		return PICKUP_NEXT_TICK; /* the rows stay marked for the next try */
	/* A row that finds no memory here stays in the database, where the
	 * next start loads it. */
	for (i = 0; i < n; i++)
		(void)qidx_add_row(q, &rows[i], true, &hint);
	qstore_rows_free(rows, n);
	q->dead = dead + qidx_pending_dead(q);
	return n == PICKUP_MAX ? PICKUP_NOW : PICKUP_ON_CHANGE;
}

/* Keeps meta 'streams' (sessions a stream owner has: those with an open
 * upstream websocket or on their way to one) for the queue CLI, which
 * cannot see this process's memory.  At most once a tick, and only when it
 * changed.  Called and returns with q->mu held. */
static void streams_publish(struct queue *q)
{
	uint64_t n = q->streams;
	char sql[96];

	if (!q->streams_on || !q->writable || q->closing || n == q->streams_published)
		return;
	pthread_mutex_unlock(&q->mu);
	snprintf(sql, sizeof sql,
	         "INSERT OR REPLACE INTO meta (key, value) VALUES ('streams', '%llu')",
	         (unsigned long long)n);
	if (sqlite3_exec(q->db, sql, NULL, NULL, NULL) == SQLITE_OK)
		q->streams_published = n;
	pthread_mutex_lock(&q->mu);
}

void *qwriter_main(void *arg)
{
	struct queue *q = arg;
	unsigned close_failures = 0;
	int64_t now, due, next_tick = 0;
	enum pickup_next next = PICKUP_ON_CHANGE;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		now = mono_ms();
		if (now >= next_tick || next == PICKUP_NOW) {
			if (q->opt.max_age_ms > 0)
				expire_pass(q);
			next = pickup(q, next);
			streams_publish(q);
			next_tick = now + TICK_MS;
			qnotify_unlock(q);
			pthread_mutex_lock(&q->mu);
		}
		if (q->closing && (!q->pending_head || close_failures >= CLOSE_ATTEMPTS))
			break;
		due = writer_due(q);
		if (due > now) {
			cond_wait_until(&q->work_cv, &q->mu, due < next_tick ? due : next_tick);
			continue;
		}
		if (writer_commit(q) != SQLITE_OK && q->closing)
			close_failures++;
	}
	writer_abandon(q);
	pthread_mutex_unlock(&q->mu);
	return NULL;
}
