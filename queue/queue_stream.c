/*
 * queue_stream.c - the stream lease (queue.h, "Streams"): a consumer owns
 * a session and has a window of its messages in flight on one upstream
 * websocket; a prefix is acked when a fence is answered, and the rest is
 * read again, in order, after the connection is gone.
 *
 * An owned session's FIFO is head .. unread (in flight, nflight entries)
 * then unread .. tail (not read yet).  queue_index.c keeps unread right as
 * entries are committed, acked or dead-lettered, and qidx_stream_settle
 * puts the session on its owner's ready list whenever it has something to
 * read and room in its window.
 */
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

#define STREAM_LEASE_MAX QSTORE_FILL_MAX  /* messages one queue_stream_lease hands out at most */
#define STREAM_OWNERS_MAX 1024

bool queue_msg_is_close(const struct queue_msg *m, unsigned *code)
{
	const unsigned char *b = m->body;

	if (!m->content_type || strcmp(m->content_type, QUEUE_CT_WS_CLOSE) != 0)
		return false;
	if (code)
		*code = m->body_len >= 2 ? (unsigned)b[0] << 8 | b[1] : 1005;
	return true;
}

int queue_stream_init(struct queue *q, unsigned owners, unsigned window)
{
	struct rlist *l;
	int err;

	if (!q || owners == 0 || owners > STREAM_OWNERS_MAX || window == 0)
		return QUEUE_EINVAL;
	l = calloc(owners + 1, sizeof *l);
	if (!l)
		return QUEUE_ENOMEM;
	pthread_mutex_lock(&q->mu);
	err = qidx_streams_on(q, l, owners, window);
	qnotify_unlock(q);
	if (err != QUEUE_OK)
		free(l);
	return err;
}

/* The session named, if owner (0: any owner) owns it; q->mu held. */
static struct session *owned(struct queue *q, const char *name, unsigned owner)
{
	struct session *s = qidx_session_find(q, name ? name : "");

	if (!s || s->owner == 0 || (owner != 0 && s->owner != owner))
		return NULL;
	return s;
}

/*
 * A message of s handed out in this lease could not be read: it and what
 * came after it in s are not in flight after all.  A row that vanished
 * (ENOTFOUND) is forgotten.  q->mu held.
 */
static void unread_from(struct queue *q, struct session *s, int64_t id, int err)
{
	struct entry *e = s->head, *prev = NULL;
	unsigned k = 0;

	while (e && e != s->unread && e->id != id) {
		prev = e;
		e = e->snext;
		k++;
	}
	if (!e || e == s->unread || s->owner == 0)
		return;
	s->unread = e;
	s->nflight = k;
	if (err == QUEUE_ENOTFOUND) {
		qidx_unlink(q, e, prev);
		qidx_live_remove(q, e);
		e->session = NULL;
		qidx_op_set(q, e, OP_DELETE);
	}
	qidx_stream_settle(q, s);
}

int queue_stream_lease(struct queue *q, unsigned owner, struct queue_msg **out, size_t max,
                       size_t *n)
{
	int64_t ids[STREAM_LEASE_MAX], wall;
	uint32_t attempts[STREAM_LEASE_MAX];
	struct session *sess[STREAM_LEASE_MAX];
	int read_err[STREAM_LEASE_MAX];
	size_t got = 0, kept = 0, i;
	struct session *s, *failed = NULL;
	struct entry *e;
	int err = QUEUE_OK;

	if (n)
		*n = 0;
	if (!q || !out || !n)
		return QUEUE_EINVAL;
	if (max > STREAM_LEASE_MAX)
		max = STREAM_LEASE_MAX;
	pthread_mutex_lock(&q->mu);
	if (!q->streams_on || owner == 0 || owner > q->owners) {
		pthread_mutex_unlock(&q->mu);
		return QUEUE_EINVAL;
	}
	if (q->closing) {
		pthread_mutex_unlock(&q->mu);
		return QUEUE_ECLOSED;
	}
	qidx_promote_due(q, mono_ms());
	wall = wall_ms();
	while (got < max) {
		s = q->oready[owner].head;
		if (!s) {
			s = q->ws_ready.head;
			if (!s)
				break;
			/* Taken: everything it has is unread. */
			s->owner = owner;
			s->unread = s->head;
			s->nflight = 0;
			q->streams++;
			qidx_stream_settle(q, s);
			continue;
		}
		e = s->unread;
		if (s->nflight == 0 && qidx_entry_expired(q, e, wall)) {
			qidx_expire_head(q, s);
			continue;
		}
		ids[got] = e->id;
		attempts[got] = e->attempts;
		sess[got] = s;
		out[got++] = e->msg;    /* a cached copy changes hands */
		if (e->msg) {
			q->cache_used -= e->msg_size;
			e->msg = NULL;
		}
		s->unread = e->snext;
		s->nflight++;
		qidx_stream_settle(q, s);
	}
	qnotify_unlock(q);

	qstore_fill_uncached(q, ids, got, out, read_err);
	for (i = 0; i < got; i++) {
		int rc = read_err[i];

		/* After a message that could not be read, its session hands out
		 * nothing more in this lease: order. */
		if (rc == QUEUE_OK && failed && sess[i] == failed)
			rc = QUEUE_EIO;
		if (rc != QUEUE_OK) {
			if (sess[i] != failed) {
				failed = sess[i];
				pthread_mutex_lock(&q->mu);
				unread_from(q, sess[i], ids[i], rc);
				qnotify_unlock(q);
				err = rc == QUEUE_ENOTFOUND ? err : rc;
			}
			queue_msg_free(out[i]);
			continue;
		}
		out[i]->id = ids[i];
		out[i]->attempts = attempts[i];
		out[kept++] = out[i];
	}
	*n = kept;
	return kept > 0 ? QUEUE_OK : err;
}

void queue_stream_ack(struct queue *q, const char *session, int64_t upto)
{
	struct session *s;
	struct entry *e;

	pthread_mutex_lock(&q->mu);
	s = owned(q, session, 0);
	while (s && s->nflight > 0 && s->head->id <= upto) {
		e = s->head;
		qidx_unlink(q, e, NULL);
		qidx_live_remove(q, e);
		e->session = NULL;
		qidx_op_set(q, e, OP_DELETE);
		s->nflight--;
	}
	if (s)
		qidx_stream_settle(q, s);
	qnotify_unlock(q);
}

void queue_stream_dead(struct queue *q, const char *session, int64_t upto, const char *reason,
                       int status, const char *detail)
{
	struct session *s;

	pthread_mutex_lock(&q->mu);
	s = owned(q, session, 0);
	while (s && s->nflight > 0 && s->head->id <= upto) {
		qidx_entry_kill(q, s->head, NULL, qidx_dead_info_create(reason, status, detail));
		s->nflight--;
	}
	if (s)
		qidx_stream_settle(q, s);
	qnotify_unlock(q);
}

void queue_stream_release(struct queue *q, const char *session, unsigned delay_ms)
{
	struct session *s;
	struct entry *e;
	unsigned i;

	pthread_mutex_lock(&q->mu);
	s = owned(q, session, 0);
	if (!s) {
		pthread_mutex_unlock(&q->mu);
		return;
	}
	for (i = 0, e = s->head; i < s->nflight && e; i++, e = e->snext) {
		e->attempts++;
		qidx_op_set(q, e, OP_ATTEMPTS);
	}
	s->owner = 0;
	s->nflight = 0;
	s->unread = NULL;
	q->streams--;
	/* A fallback POST that queue_lease has, or its retry: settled there. */
	if (s->state == S_BUSY || s->state == S_WAITING) {
		qnotify_unlock(q);
		return;
	}
	if (s->state == S_READY)
		qidx_session_unready(q, s);
	s->state = S_IDLE;
	if (!s->head) {
		qidx_session_maybe_free(q, s);
	} else {
		s->due_ms = mono_ms() + delay_ms;
		/* If the heap cannot grow, sending again at once beats losing order. */
		if (delay_ms > 0 && qidx_heap_push(q, s))
			s->state = S_WAITING;
		else
			qidx_session_set_ready(q, s, false);
	}
	qnotify_unlock(q);
}
