/*
 * queue.c - the durable queue behind queue.h: its public API.
 *
 * A message passes through these hands:
 *
 *   queue_put      copies it into an entry whose pending operation is INSERT
 *                  and appends the entry to q->pending.  No SQLite here.
 *   writer thread  (queue_writer.c) takes everything pending as one batch,
 *                  runs the batch in one transaction (group commit), and only
 *                  after COMMIT adds the new entries to their sessions' FIFOs
 *                  (queue_index.c), where queue_lease can see them: nothing
 *                  is leased before it is on disk.
 *   queue_lease    hands out the head of each ready session, one per session,
 *                  and marks the session busy.
 *   queue_ack...   take the entry out of the index and give it a pending
 *                  DELETE (DEAD for queue_dead, ATTEMPTS for queue_retry);
 *                  the next batch commits it and frees the entry.
 *
 * An entry carries at most two operations: batch_op, which the writer is
 * committing now, and next_op, which waits in q->pending for the batch after.
 * Operations on one entry merge (ATTEMPTS then DELETE is DELETE), so
 * operations on different entries may run in any order.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

#define LEASE_MAX QSTORE_FILL_MAX  /* messages one queue_lease call hands out at most */
#define QUEUE_PENDING_FACTOR 2  /* producers wait while this many commit batches are pending */

const char *queue_strerror(int err)
{
	switch (err) {
	case QUEUE_OK: return "ok";
	case QUEUE_EFULL: return "queue full";
	case QUEUE_EIO: return "queue cannot write";
	case QUEUE_ECLOSED: return "queue closed";
	case QUEUE_ENOMEM: return "out of memory";
	case QUEUE_EINVAL: return "invalid argument";
	case QUEUE_ECORRUPT: return "queue database corrupt";
	case QUEUE_ENOTFOUND: return "message not found";
	case QUEUE_EBUSY: return "queue database in use by another process";
	}
	return "unknown queue error";
}

void queue_options_init(struct queue_options *o)
{
	memset(o, 0, sizeof *o);
	o->max_bytes = (uint64_t)1 << 30;
	o->max_messages = 1000000;
	o->max_age_ms = (uint64_t)24 * 3600 * 1000;
	o->commit_window_ms = 5;
	o->commit_batch_max = 1000;
	o->cache_bytes = (uint64_t)64 << 20;
}

/* --- open and close ------------------------------------------------------------------ */

/* Frees q and everything in it; the writer must not be running. */
static void queue_destroy(struct queue *q)
{
	if (!q)
		return;
	qhello_close(q);
	qstore_close(q);
	qidx_release(q);
	free(q->lat);
	free(q->path);
	if (q->sync_ready) {
		pthread_mutex_destroy(&q->mu);
		pthread_mutex_destroy(&q->read_mu);
		pthread_mutex_destroy(&q->hello_mu);
		pthread_mutex_destroy(&q->hello_db_mu);
		pthread_cond_destroy(&q->work_cv);
		pthread_cond_destroy(&q->done_cv);
		pthread_cond_destroy(&q->notify_cv);
	}
	free(q);
}

static int queue_alloc(struct queue **out, const char *path, const struct queue_options *o)
{
	struct queue *q = calloc(1, sizeof *q);
	pthread_condattr_t ca;
	int rc;

	*out = q;
	if (!q)
		return QUEUE_ENOMEM;
	q->lock_fd = -1;
	q->opt = *o;
	if (q->opt.commit_batch_max == 0)
		q->opt.commit_batch_max = 1;
	if (q->opt.max_age_ms > INT64_MAX / 2)
		q->opt.max_age_ms = 0;
	q->writable = true;
	q->streams_published = UINT64_MAX;
	q->path = strdup(path);
	if (!q->path || qidx_init(q) != QUEUE_OK)
		return QUEUE_ENOMEM;

	/* Timed waits use the monotonic clock: a wall clock step must not
	 * stall or hurry the writer. */
	if (pthread_condattr_init(&ca) != 0)
		return QUEUE_ENOMEM;
	rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (rc == 0 && (rc = pthread_cond_init(&q->work_cv, &ca)) == 0) {
		if ((rc = pthread_cond_init(&q->done_cv, &ca)) != 0) {
			pthread_cond_destroy(&q->work_cv);
		} else if ((rc = pthread_cond_init(&q->notify_cv, &ca)) != 0) {
			pthread_cond_destroy(&q->work_cv);
			pthread_cond_destroy(&q->done_cv);
		}
	}
	pthread_condattr_destroy(&ca);
	if (rc != 0)
		return QUEUE_ENOMEM;
	pthread_mutex_init(&q->mu, NULL);
	pthread_mutex_init(&q->read_mu, NULL);
	pthread_mutex_init(&q->hello_mu, NULL);
	pthread_mutex_init(&q->hello_db_mu, NULL);
	q->sync_ready = true;
	return QUEUE_OK;
}

int queue_open(struct queue **out, const char *path, const struct queue_options *o,
               char **cause)
{
	struct queue_options defaults;
	struct queue *q = NULL;
	int err;

	if (cause)
		*cause = NULL;
	if (!out || !path || *path == '\0')
		return cause_set(cause, QUEUE_EINVAL, "queue_open: no database path");
	*out = NULL;
	if (!o) {
		queue_options_init(&defaults);
		o = &defaults;
	}
	err = queue_alloc(&q, path, o);
	if (err != QUEUE_OK) {
		cause_set(cause, err, "queue_open: out of memory");
		goto out;
	}
	err = qstore_open(q, cause);
	if (err == QUEUE_OK)
		err = qhello_open(q, cause);
	if (err != QUEUE_OK)
		goto out;
	if (pthread_create(&q->writer, NULL, qwriter_main, q) != 0) {
		err = cause_set(cause, QUEUE_ENOMEM, "queue_open: cannot start the writer thread");
		goto out;
	}
	q->writer_started = true;
	*out = q;
	q = NULL;
out:
	queue_destroy(q);
	return err;
}

/* The caller has stopped its producers and consumers: no thread may be
 * inside a queue function, or enter one, once this starts. */
void queue_close(struct queue *q)
{
	if (!q)
		return;
	if (q->writer_started) {
		pthread_mutex_lock(&q->mu);
		q->closing = true;
		pthread_cond_signal(&q->work_cv);
		pthread_mutex_unlock(&q->mu);
		pthread_join(q->writer, NULL);
	}
	queue_destroy(q);
}

const char *queue_instance_id(const struct queue *q)
{
	return q->instance_id;
}

/* --- producers ------------------------------------------------------------------------ */

int queue_put(struct queue *q, const struct queue_msg *m, bool wait, int64_t *id)
{
	struct waiter w = { QUEUE_OK, false };
	struct entry *e = NULL;
	struct session *s;
	size_t size;
	bool end;
	int err = QUEUE_OK;

	if (!q || !m || !m->target || (m->body_len > 0 && !m->body))
		return QUEUE_EINVAL;
	size = qmsg_footprint(m);
	if (size == 0 || size >= (uint64_t)q->max_row)
		return QUEUE_EINVAL; /* SQLite could never store it */
	e = calloc(1, sizeof *e);
	if (!e || !(e->msg = queue_msg_dup(m))) {
		err = QUEUE_ENOMEM;
		goto out;
	}
	e->msg_size = size;
	e->body_len = m->body_len;
	e->received_ms = m->received_ms != 0 ? m->received_ms : wall_ms();
	e->msg->received_ms = e->received_ms;
	e->msg->attempts = 0;
	e->put_us = mono_us();
	e->ws = m->conn_id;
	/* A connection's end is a few bytes that keep its messages in
	 * order upstream: it is taken even when the queue is full. */
	end = e->ws && queue_msg_is_close(m, NULL);

	pthread_mutex_lock(&q->mu);
	if (q->closing)
		err = QUEUE_ECLOSED;
	else if (!q->writable)
		err = QUEUE_EIO;
	else if (!end && ((q->opt.max_messages > 0 && q->depth + 1 > q->opt.max_messages) ||
	                  (q->opt.max_bytes > 0 && q->bytes + e->body_len > q->opt.max_bytes)))
		err = QUEUE_EFULL;
	else if (!(s = qidx_session_get(q, m->session ? m->session : "")))
		err = QUEUE_ENOMEM;
	else if (m->api_key && !(e->key = qidx_key_get(q, m->api_key))) {
		qidx_session_maybe_free(q, s);
		err = QUEUE_ENOMEM;
	}
	if (err != QUEUE_OK) {
		pthread_mutex_unlock(&q->mu);
		goto out;
	}
	e->id = e->msg->id = q->next_id++;
	if (id)
		*id = e->id;
	e->session = s;
	s->uncommitted++;
	qidx_live_add(q, e);
	qidx_op_set(q, e, OP_INSERT);
	if (wait)
		e->waiter = &w;
	e = NULL; /* the writer owns it now */
	while (wait && !w.done)
		pthread_cond_wait(&q->done_cv, &q->mu);
	/* Back-pressure: a producer that outruns the disk waits for the next
	 * commit, so memory and the crash-loss window stay bounded (and its
	 * clients' TCP windows fill).  Not while writes fail: then the next
	 * put is refused instead. */
	while (!wait && q->npending >= QUEUE_PENDING_FACTOR * q->opt.commit_batch_max &&
	       q->writable && !q->closing)
		pthread_cond_wait(&q->done_cv, &q->mu);
	if (wait)
		err = w.result;
	pthread_mutex_unlock(&q->mu);
out:
	qidx_entry_free(e);
	return err;
}

/* --- consumers ------------------------------------------------------------------------ */

/* A lease whose message could not be read: the session's head is due
 * again, first in line; a row that vanished is forgotten. */
static void lease_undo(struct queue *q, int64_t id, int err)
{
	struct session *s;
	struct entry *e;

	pthread_mutex_lock(&q->mu);
	s = qidx_lease_find(q, id);
	if (s) {
		qidx_lease_end(q, s);
		if (err == QUEUE_ENOTFOUND) {
			e = s->head;
			qidx_unlink(q, e, NULL);
			qidx_live_remove(q, e);
			e->session = NULL;
			qidx_op_set(q, e, OP_DELETE);
			qidx_session_head_changed(q, s);
		} else {
			qidx_session_set_ready(q, s, true);
		}
	}
	qnotify_unlock(q);
}

int queue_lease(struct queue *q, struct queue_msg **out, size_t max, size_t *n)
{
	int64_t ids[LEASE_MAX], wall;
	uint32_t attempts[LEASE_MAX];
	int read_err[LEASE_MAX];
	size_t got = 0, kept = 0, i;
	struct session *s;
	struct entry *e;
	int rc, err = QUEUE_OK;

	if (n)
		*n = 0;
	if (!q || !out || !n)
		return QUEUE_EINVAL;
	if (max > LEASE_MAX)
		max = LEASE_MAX;

	pthread_mutex_lock(&q->mu);
	if (q->closing) {
		pthread_mutex_unlock(&q->mu);
		return QUEUE_ECLOSED;
	}
	qidx_promote_due(q, mono_ms());
	wall = wall_ms();
	while (got < max && ((s = q->ready.head))) {
		e = s->head;
		if (qidx_entry_expired(q, e, wall)) {
			qidx_expire_head(q, s);
			continue;
		}
		qidx_lease_begin(q, s);
		ids[got] = e->id;
		attempts[got] = e->attempts;
		/* A cached copy changes hands; the rest is read below. */
		out[got++] = e->msg;
		if (e->msg) {
			q->cache_used -= e->msg_size;
			e->msg = NULL;
		}
	}
	qnotify_unlock(q);

	/* What the cache did not hold is read in one go. */
	qstore_fill_uncached(q, ids, got, out, read_err);
	for (i = 0; i < got; i++) {
		if ((rc = read_err[i]) != QUEUE_OK) {
			lease_undo(q, ids[i], rc);
			err = rc == QUEUE_ENOTFOUND ? err : rc;
			continue;
		}
		out[i]->id = ids[i];
		out[i]->attempts = attempts[i];
		out[kept++] = out[i];
	}
	*n = kept;
	return kept > 0 ? QUEUE_OK : err;
}

void queue_ack(struct queue *q, int64_t id)
{
	struct session *s;
	struct entry *e;

	pthread_mutex_lock(&q->mu);
	s = qidx_lease_find(q, id);
	if (s) {
		e = s->head;
		qidx_lease_end(q, s);
		qidx_unlink(q, e, NULL);
		qidx_live_remove(q, e);
		e->session = NULL;
		qidx_op_set(q, e, OP_DELETE);
		qidx_session_head_changed(q, s);
	}
	qnotify_unlock(q);
}

void queue_retry(struct queue *q, int64_t id, unsigned delay_ms)
{
	struct session *s;
	struct entry *e;

	pthread_mutex_lock(&q->mu);
	s = qidx_lease_find(q, id);
	if (s) {
		e = s->head;
		qidx_lease_end(q, s);
		e->attempts++;
		qidx_op_set(q, e, OP_ATTEMPTS);
		s->due_ms = mono_ms() + delay_ms;
		/* If the heap cannot grow, retrying at once beats losing order. */
		if (delay_ms == 0 || !qidx_heap_push(q, s))
			qidx_session_set_ready(q, s, false);
		else
			s->state = S_WAITING;
	}
	qnotify_unlock(q);
}

void queue_dead(struct queue *q, int64_t id, const char *reason, int status,
                const char *detail)
{
	struct dead_info *d = qidx_dead_info_create(reason, status, detail);
	struct session *s;

	pthread_mutex_lock(&q->mu);
	s = qidx_lease_find(q, id);
	if (s) {
		qidx_lease_end(q, s);
		qidx_entry_kill(q, s->head, NULL, d);
		d = NULL;
		qidx_session_head_changed(q, s);
	}
	qnotify_unlock(q);
	if (d)
		qidx_dead_info_free(d);
}

/* Dead-letters the committed messages of one session that carry key k,
 * except a leased head.  Returns how many. */
static size_t dead_key_session(struct queue *q, struct session *s, const struct apikey *k,
                               const char *reason)
{
	struct entry *old_head = s->head, *prev = NULL, *e = s->head, *next;
	size_t n = 0;

	if (s->state == S_BUSY) {
		prev = e;
		e = e->snext;
	}
	/* What a stream owner has in flight is its to settle. */
	for (unsigned i = 0; i < s->nflight && e; i++) {
		prev = e;
		e = e->snext;
	}
	for (; e; e = next) {
		next = e->snext;
		if (e->key != k) {
			prev = e;
			continue;
		}
		qidx_entry_kill(q, e, prev, qidx_dead_info_create(reason, 0, NULL));
		n++;
	}
	if (s->head != old_head || (s->owner != 0 && n > 0))
		qidx_session_head_changed(q, s);
	return n;
}

size_t queue_dead_key(struct queue *q, const char *key, const char *reason)
{
	struct hnode *h, *hnext;
	struct apikey *k;
	struct entry *e, *next;
	size_t n = 0, i;

	if (!q || !key)
		return 0;
	pthread_mutex_lock(&q->mu);
	k = qidx_key_find(q, key);
	if (!k) {
		pthread_mutex_unlock(&q->mu);
		return 0;
	}
	k->refs++; /* keeps k while its messages let go of it */
	for (i = 0; i <= q->sessions.mask; i++) {
		for (h = q->sessions.slot[i]; h; h = hnext) {
			hnext = h->next;
			n += dead_key_session(q, container_of(h, struct session, node), k, reason);
		}
	}
	/* Accepted but not yet committed: pending inserts become
	 * insert-then-dead-letter; inserts being committed now get a DEAD
	 * operation for the next batch. */
	for (e = q->pending_head; e; e = next) {
		next = e->pnext;
		if (e->next_op == OP_INSERT && e->key == k) {
			qidx_entry_kill(q, e, NULL, qidx_dead_info_create(reason, 0, NULL));
			n++;
		}
	}
	for (e = q->batch; e; e = e->bnext) {
		if (e->batch_op == OP_INSERT && e->live && e->key == k) {
			qidx_entry_kill(q, e, NULL, qidx_dead_info_create(reason, 0, NULL));
			n++;
		}
	}
	qidx_key_put(q, k);
	qnotify_unlock(q);
	return n;
}

bool queue_lease_ready(struct queue *q)
{
	bool ready;

	pthread_mutex_lock(&q->mu);
	ready = q->ready.head;
	pthread_mutex_unlock(&q->mu);
	return ready;
}

long queue_next_due_ms(struct queue *q)
{
	long ms = -1;

	pthread_mutex_lock(&q->mu);
	if (q->heap_len > 0) {
		int64_t d = q->heap[0]->due_ms - mono_ms();

		ms = d < 0 ? 0 : d > LONG_MAX ? LONG_MAX : (long)d;
	}
	pthread_mutex_unlock(&q->mu);
	return ms;
}

void queue_set_max_db_pages(struct queue *q, uint64_t pages)
{
	pthread_mutex_lock(&q->mu);
	q->max_db_pages = pages;
	q->pages_dirty = true;
	pthread_cond_signal(&q->work_cv);
	pthread_mutex_unlock(&q->mu);
}

void queue_stats(struct queue *q, struct queue_stats *st)
{
	memset(st, 0, sizeof *st);
	pthread_mutex_lock(&q->mu);
	st->depth = q->depth;
	st->bytes = q->bytes;
	st->in_flight = q->in_flight;
	st->waiting_retry = q->heap_len;
	st->dead = q->dead;
	st->oldest_ms = q->live_head ? q->live_head->received_ms : 0;
	st->max_bytes = q->opt.max_bytes;
	st->max_messages = q->opt.max_messages;
	st->writable = q->writable;
	memcpy(st->error, q->error, sizeof st->error);
	st->committed_total = q->committed_total;
	st->commits_total = q->commits_total;
	st->commits_synced_total = q->commits_synced_total;
	st->expired_total = q->expired_total;
	st->streams = q->streams;
	pthread_mutex_unlock(&q->mu);
}

/* The reasons queue_dead_reasons collects: out[] until it is full, then
 * the rest of the dead letters in rest. */
struct reasons {
	struct queue_dead_reason *out;
	size_t max, n;
	uint64_t rest;
};

static struct queue_dead_reason *reason_find(struct reasons *r, const char *name)
{
	size_t i;

	for (i = 0; i < r->n; i++)
		if (strcmp(r->out[i].reason, name) == 0)
			return &r->out[i];
	return NULL;
}

static void reason_add(void *arg, const char *reason, uint64_t count)
{
	struct reasons *r = arg;
	struct queue_dead_reason *d;
	char name[QUEUE_REASON_MAX + 1];

	/* Cut as the queue cuts it: two reasons longer than that (written by
	 * something else) become one, never two entries of one name. */
	snprintf(name, sizeof name, "%s", reason);
	if ((d = reason_find(r, name))) {
		d->count += count;
	} else if (r->n < r->max) {
		d = &r->out[r->n++];
		memcpy(d->reason, name, sizeof d->reason);
		d->count = count;
	} else {
		r->rest += count;
	}
}

int queue_dead_reasons(struct queue *q, struct queue_dead_reason *out, size_t max, size_t *n)
{
	struct reasons r = { out, max, 0, 0 };
	struct queue_dead_reason *other;
	int err;

	*n = 0;
	if (max == 0)
		return QUEUE_EINVAL;
	err = qstore_dead_reasons(q, reason_add, &r);
	if (err != QUEUE_OK)
		return err;
	if (r.rest > 0) {
		/* The last entry joins the rest as "other", or in a reason that
		 * is itself called "other". */
		r.rest += out[--r.n].count;
		if (!(other = reason_find(&r, "other"))) {
			other = &out[r.n++];
			snprintf(other->reason, sizeof other->reason, "other");
			other->count = 0;
		}
		other->count += r.rest;
	}
	*n = r.n;
	return QUEUE_OK;
}
