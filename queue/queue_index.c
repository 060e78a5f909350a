/*
 * queue_index.c - the queue's in-memory scheduler.  Every committed message
 * is an entry in its session's FIFO; a session is idle, ready (its head is
 * due: on the ready list), busy (its head is leased) or waiting (its head
 * waits for a retry: in a heap by due time).  The entries also carry the
 * operations the writer has yet to commit for them.  All of it is guarded by
 * q->mu (see queue_internal.h).
 */
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

#define HTAB_MIN 64
#define DETAIL_MAX 1024         /* bytes of a dead letter's detail that are kept */

/* Used when a dead letter's details cannot be allocated: the message is
 * still moved, with this reason. */
static struct dead_info dead_nomem = { 0, 0, "unrecorded (out of memory)", NULL };

/* --- a small intrusive hash table -------------------------------------------- */

/* Chained; the node lives inside the object it indexes.  The table never
 * fails an insert: if it cannot grow, chains get longer.  Names are the
 * clients' (sessionIds, API keys), so they are hashed under the queue's
 * random key: colliding names cannot be computed in advance. */
static uint64_t hash_str(const struct queue *q, const char *s)
{
	return siphash13(&q->hash_key, s, strlen(s));
}

static uint64_t hash_id(int64_t id)
{
	uint64_t x = (uint64_t)id; /* splitmix64's finaliser */

	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static int htab_init(struct htab *t)
{
	t->slot = calloc(HTAB_MIN, sizeof *t->slot);
	t->mask = HTAB_MIN - 1;
	t->count = 0;
	return t->slot ? 0 : -1;
}

static void htab_release(struct htab *t)
{
	free(t->slot);
	t->slot = NULL;
}

static void htab_grow(struct htab *t)
{
	size_t n = (t->mask + 1) * 2, i;
	struct hnode **slot, *e, *next;

	if (n > SIZE_MAX / sizeof *slot || !(slot = calloc(n, sizeof *slot)))
		return;
	for (i = 0; i <= t->mask; i++) {
		for (e = t->slot[i]; e; e = next) {
			next = e->next;
			e->next = slot[e->hash & (n - 1)];
			slot[e->hash & (n - 1)] = e;
		}
	}
	free(t->slot);
	t->slot = slot;
	t->mask = n - 1;
}

static void htab_add(struct htab *t, struct hnode *n, uint64_t hash)
{
	if (t->count > t->mask)
		htab_grow(t);
	n->hash = hash;
	n->next = t->slot[hash & t->mask];
	t->slot[hash & t->mask] = n;
	t->count++;
}

static void htab_del(struct htab *t, struct hnode *n)
{
	struct hnode **pp = &t->slot[n->hash & t->mask];

	while (*pp != n)
		pp = &(*pp)->next;
	*pp = n->next;
	t->count--;
}

/* The chain that holds hash; the caller compares hash and key. */
static struct hnode *htab_chain(const struct htab *t, uint64_t hash)
{
	return t->slot[hash & t->mask];
}

/* --- sessions: the ready list, the retry heap, the table ------------------- */

/* The list a ready session belongs on: its owner's; without one, with
 * streams on, the stream consumers' if its head is a websocket row (an
 * owned session whose head is not, and has nothing in flight, goes to
 * queue_lease too); else queue_lease's. */
static struct rlist *ready_list(struct queue *q, struct session *s)
{
	bool ws_head = s->head && s->head->ws;

	if (!q->streams_on)
		return &q->ready;
	if (s->owner != 0)
		return ws_head || s->nflight > 0 ? &q->oready[s->owner] : &q->ready;
	return ws_head ? &q->ws_ready : &q->ready;
}

static void ready_link(struct queue *q, struct session *s, bool front)
{
	struct rlist *l = ready_list(q, s);

	s->on = l;
	if (front) {
		s->rprev = NULL;
		s->rnext = l->head;
		if (l->head)
			l->head->rprev = s;
		else
			l->tail = s;
		l->head = s;
	} else {
		s->rnext = NULL;
		s->rprev = l->tail;
		if (l->tail)
			l->tail->rnext = s;
		else
			l->head = s;
		l->tail = s;
	}
}

static void ready_unlink(struct queue *q, struct session *s)
{
	struct rlist *l = s->on;

	(void)q;
	if (s->rprev)
		s->rprev->rnext = s->rnext;
	else
		l->head = s->rnext;
	if (s->rnext)
		s->rnext->rprev = s->rprev;
	else
		l->tail = s->rprev;
	s->rprev = s->rnext = NULL;
	s->on = NULL;
}

static void heap_set(struct queue *q, size_t i, struct session *s)
{
	q->heap[i] = s;
	s->heap_pos = i;
}

static void heap_up(struct queue *q, size_t i)
{
	struct session *s = q->heap[i];

	while (i > 0 && s->due_ms < q->heap[(i - 1) / 2]->due_ms) {
		heap_set(q, i, q->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(q, i, s);
}

static void heap_down(struct queue *q, size_t i)
{
	struct session *s = q->heap[i];
	size_t c;

	while ((c = 2 * i + 1) < q->heap_len) {
		if (c + 1 < q->heap_len && q->heap[c + 1]->due_ms < q->heap[c]->due_ms)
			c++;
		if (q->heap[c]->due_ms >= s->due_ms)
			break;
		heap_set(q, i, q->heap[c]);
		i = c;
	}
	heap_set(q, i, s);
}

/* The heap never holds more sessions than there are, so it is bounded by
 * max_messages.  Returns false if it cannot grow. */
bool qidx_heap_push(struct queue *q, struct session *s)
{
	if (q->heap_len == q->heap_cap) {
		size_t cap = q->heap_cap ? q->heap_cap * 2 : 16;
		struct session **h;

		if (cap > SIZE_MAX / sizeof *h || !(h = realloc(q->heap, cap * sizeof *h)))
			return false;
		q->heap = h;
		q->heap_cap = cap;
	}
	heap_set(q, q->heap_len++, s);
	heap_up(q, q->heap_len - 1);
	return true;
}

static void heap_remove(struct queue *q, struct session *s)
{
	size_t i = s->heap_pos;
	struct session *last = q->heap[--q->heap_len];

	if (i < q->heap_len) {
		heap_set(q, i, last);
		heap_up(q, i);
		heap_down(q, last->heap_pos);
	}
}

struct session *qidx_session_find(struct queue *q, const char *name)
{
	uint64_t h = hash_str(q, name);
	struct hnode *n;

	for (n = htab_chain(&q->sessions, h); n; n = n->next) {
		struct session *s = container_of(n, struct session, node);

		if (n->hash == h && strcmp(s->name, name) == 0)
			return s;
	}
	return NULL;
}

/* Finds or creates (S_IDLE) the session name; NULL if out of memory. */
struct session *qidx_session_get(struct queue *q, const char *name)
{
	struct session *s = qidx_session_find(q, name);
	size_t len;

	if (s)
		return s;
	len = strlen(name) + 1;
	s = calloc(1, sizeof *s + len);
	if (!s)
		return NULL;
	memcpy(s->name, name, len);
	s->state = S_IDLE;
	htab_add(&q->sessions, &s->node, hash_str(q, name));
	return s;
}

/* Frees s once nothing refers to it any more. */
void qidx_session_maybe_free(struct queue *q, struct session *s)
{
	if (s->head || s->uncommitted > 0 || s->state != S_IDLE)
		return;
	htab_del(&q->sessions, &s->node);
	free(s);
}

/* Takes a ready session off its list; it is left S_IDLE. */
void qidx_session_unready(struct queue *q, struct session *s)
{
	ready_unlink(q, s);
	s->state = S_IDLE;
}

/* s has a head that is due now: make it leasable. */
void qidx_session_set_ready(struct queue *q, struct session *s, bool front)
{
	if (s->state == S_READY)
		return;
	if (s->state == S_WAITING)
		heap_remove(q, s);
	s->state = S_READY;
	ready_link(q, s, front);
	q->wake = true;
}

/* s (not busy) lost its head: its next message, if any, is due now. */
void qidx_session_head_changed(struct queue *q, struct session *s)
{
	if (s->owner != 0) {
		qidx_stream_settle(q, s);
		return;
	}
	if (s->state == S_READY && s->on != ready_list(q, s)) {
		ready_unlink(q, s);     /* the new head may belong on another list */
		s->state = S_IDLE;
	}
	if (s->head) {
		qidx_session_set_ready(q, s, false);
		return;
	}
	if (s->state == S_READY)
		ready_unlink(q, s);
	else if (s->state == S_WAITING)
		heap_remove(q, s);
	s->state = S_IDLE;
	qidx_session_maybe_free(q, s);
}

void qidx_stream_settle(struct queue *q, struct session *s)
{
	bool readable = s->unread && s->nflight < q->window &&
	                (s->unread->ws || s->nflight == 0);

	/* queue_lease has its head, or it waits for its retry: the ack or the
	 * retry falling due settles it again. */
	if (s->state == S_BUSY || s->state == S_WAITING)
		return;
	if (s->state == S_READY) {
		if (readable && s->on == ready_list(q, s))
			return;
		ready_unlink(q, s);
	}
	s->state = S_OWNED;
	if (readable)
		qidx_session_set_ready(q, s, false);
}

int qidx_streams_on(struct queue *q, struct rlist *oready, unsigned owners, unsigned window)
{
	struct session *s, *next, *moved = NULL, **tail = &moved;

	if (q->streams_on)
		return QUEUE_EINVAL;
	q->oready = oready;
	q->owners = owners;
	q->window = window;
	q->streams_on = true;
	/* Sessions that are ready already may belong on ws_ready now. */
	for (s = q->ready.head; s; s = next) {
		next = s->rnext;
		if (ready_list(q, s) != &q->ready) {
			ready_unlink(q, s);
			*tail = s;      /* in their order */
			tail = &s->rnext;
		}
	}
	for (s = moved; s; s = next) {
		next = s->rnext;
		ready_link(q, s, false);
	}
	return QUEUE_OK;
}

/* Moves every session whose retry is due to the ready list. */
void qidx_promote_due(struct queue *q, int64_t now)
{
	while (q->heap_len > 0 && q->heap[0]->due_ms <= now)
		qidx_session_set_ready(q, q->heap[0], false);
}

struct session *qidx_lease_find(struct queue *q, int64_t id)
{
	uint64_t h = hash_id(id);
	struct hnode *n;

	for (n = htab_chain(&q->leases, h); n; n = n->next) {
		struct session *s = container_of(n, struct session, lease_node);

		if (n->hash == h && s->head->id == id)
			return s;
	}
	return NULL;
}

void qidx_lease_begin(struct queue *q, struct session *s)
{
	ready_unlink(q, s);
	s->state = S_BUSY;
	htab_add(&q->leases, &s->lease_node, hash_id(s->head->id));
	q->in_flight++;
}

/* Leaves s S_IDLE with its head in place: the caller decides what's next. */
void qidx_lease_end(struct queue *q, struct session *s)
{
	htab_del(&q->leases, &s->lease_node);
	q->in_flight--;
	s->state = S_IDLE;
}

/* --- API keys ------------------------------------------------------------------ */

struct apikey *qidx_key_find(struct queue *q, const char *name)
{
	uint64_t h = hash_str(q, name);
	struct hnode *n;

	for (n = htab_chain(&q->keys, h); n; n = n->next) {
		struct apikey *k = container_of(n, struct apikey, node);

		if (n->hash == h && strcmp(k->name, name) == 0)
			return k;
	}
	return NULL;
}

/* A reference to the interned key name; NULL if out of memory. */
struct apikey *qidx_key_get(struct queue *q, const char *name)
{
	struct apikey *k = qidx_key_find(q, name);
	size_t len;

	if (!k) {
		len = strlen(name) + 1;
		k = calloc(1, sizeof *k + len);
		if (!k)
			return NULL;
		memcpy(k->name, name, len);
		htab_add(&q->keys, &k->node, hash_str(q, name));
	}
	k->refs++;
	return k;
}

void qidx_key_put(struct queue *q, struct apikey *k)
{
	if (k && --k->refs == 0) {
		htab_del(&q->keys, &k->node);
		free(k);
	}
}

/* --- entries ---------------------------------------------------------------------- */

struct dead_info *qidx_dead_info_create(const char *reason, int status, const char *detail)
{
	size_t rl, dl;
	struct dead_info *d;
	char *p;

	if (!reason)
		reason = "unknown";
	rl = strnlen(reason, QUEUE_REASON_MAX);
	dl = detail ? strnlen(detail, DETAIL_MAX) : 0;
	d = malloc(sizeof *d + rl + 1 + (detail ? dl + 1 : 0));
	if (!d)
		return &dead_nomem;
	p = (char *)(d + 1);
	memcpy(p, reason, rl);
	p[rl] = '\0';
	d->reason = p;
	d->detail = NULL;
	if (detail) {
		p += rl + 1;
		memcpy(p, detail, dl);
		p[dl] = '\0';
		d->detail = p;
	}
	d->dead_ms = wall_ms();
	d->status = status;
	return d;
}

void qidx_dead_info_free(struct dead_info *d)
{
	if (d != &dead_nomem)
		free(d);
}

void qidx_entry_free(struct entry *e)
{
	if (!e)
		return;
	free(e->msg);
	qidx_dead_info_free(e->dead);
	free(e);
}

bool qidx_entry_expired(const struct queue *q, const struct entry *e, int64_t wall)
{
	return q->opt.max_age_ms > 0 && wall - e->received_ms > (int64_t)q->opt.max_age_ms;
}

/* Counts e in depth and bytes; ids only grow, so the live list stays sorted. */
void qidx_live_add(struct queue *q, struct entry *e)
{
	e->gnext = NULL;
	e->gprev = q->live_tail;
	if (q->live_tail)
		q->live_tail->gnext = e;
	else
		q->live_head = e;
	q->live_tail = e;
	e->live = true;
	q->depth++;
	q->bytes += e->body_len;
}

/* Like qidx_live_add, for an entry whose id may be lower than others: it is
 * linked in id order, searching forward from *hint (NULL: the head), and
 * becomes the hint for the next, higher id. */
static void live_insert(struct queue *q, struct entry *e, struct entry **hint)
{
	struct entry *p = *hint ? *hint : q->live_head;

	while (p && p->id < e->id)
		p = p->gnext;
	e->gnext = p;
	e->gprev = p ? p->gprev : q->live_tail;
	if (e->gprev)
		e->gprev->gnext = e;
	else
		q->live_head = e;
	if (p)
		p->gprev = e;
	else
		q->live_tail = e;
	e->live = true;
	q->depth++;
	q->bytes += e->body_len;
	*hint = e;
}

void qidx_live_remove(struct queue *q, struct entry *e)
{
	if (e->gprev)
		e->gprev->gnext = e->gnext;
	else
		q->live_head = e->gnext;
	if (e->gnext)
		e->gnext->gprev = e->gprev;
	else
		q->live_tail = e->gprev;
	e->gprev = e->gnext = NULL;
	e->live = false;
	q->depth--;
	q->bytes -= e->body_len;
	qidx_key_put(q, e->key);
	e->key = NULL;
}

/* Appends a committed entry to its session's FIFO. */
static void index_append(struct entry *e)
{
	struct session *s = e->session;

	e->snext = NULL;
	if (s->tail)
		s->tail->snext = e;
	else
		s->head = e;
	s->tail = e;
	e->indexed = true;
	if (s->owner != 0 && !s->unread)
		s->unread = e;
}

/* Inserts a committed entry into its session's FIFO by id, but never before
 * the head: the head may be leased or waiting for its retry, and the
 * session's next message is whatever follows the head. */
static void index_insert(struct entry *e)
{
	struct session *s = e->session;
	struct entry *prev = s->head;

	if (!prev || e->id > s->tail->id) {
		index_append(e);
		return;
	}
	/* Nor before what a stream owner has read. */
	if (s->owner != 0 && s->nflight > 0)
		while (prev->snext && prev->snext != s->unread)
			prev = prev->snext;
	while (prev->snext && prev->snext->id < e->id)
		prev = prev->snext;
	e->snext = prev->snext;
	prev->snext = e;
	if (!e->snext)
		s->tail = e;
	e->indexed = true;
	if (s->owner != 0 && (!s->unread || s->unread == e->snext))
		s->unread = e;
}

/* Takes e out of its session's FIFO; prev is the entry before it (NULL for
 * the head).  The cached copy is dropped. */
void qidx_unlink(struct queue *q, struct entry *e, struct entry *prev)
{
	struct session *s = e->session;

	if (prev)
		prev->snext = e->snext;
	else
		s->head = e->snext;
	if (s->tail == e)
		s->tail = prev;
	if (s->unread == e)
		s->unread = e->snext;
	e->snext = NULL;
	e->indexed = false;
	if (e->msg) {
		q->cache_used -= e->msg_size;
		free(e->msg);
		e->msg = NULL;
	}
}

enum op qidx_op_merge(enum op first, enum op then)
{
	if (first == OP_NONE)
		return then;
	if (then == OP_NONE)
		return first;
	if (first == OP_INSERT && then == OP_DEAD)
		return OP_INSERT_DEAD;
	/* Otherwise first is OP_ATTEMPTS: DELETE and DEAD supersede it (DEAD
	 * carries the attempts count along). */
	return then;
}

/* Gives e the operation op for the next batch, merged with what it has. */
void qidx_op_set(struct queue *q, struct entry *e, enum op op)
{
	if (e->next_op != OP_NONE) {
		e->next_op = qidx_op_merge(e->next_op, op);
		return;
	}
	e->next_op = op;
	e->pnext = NULL;
	if (q->pending_tail) {
		q->pending_tail->pnext = e;
	} else {
		q->pending_head = e;
		q->pending_since_ms = mono_ms();
	}
	q->pending_tail = e;
	if (++q->npending == 1 || q->npending == q->opt.commit_batch_max)
		pthread_cond_signal(&q->work_cv);
}

static void pending_unlink(struct queue *q, struct entry *e)
{
	struct entry **pp = &q->pending_head, *prev = NULL;

	while (*pp != e) {
		prev = *pp;
		pp = &(*pp)->pnext;
	}
	*pp = e->pnext;
	if (q->pending_tail == e)
		q->pending_tail = prev;
	e->pnext = NULL;
	e->next_op = OP_NONE;
	q->npending--;
}

/*
 * Dead-letters e, which is not leased: either committed (prev is the entry
 * before it in its session; the caller calls qidx_session_head_changed if e was
 * the head) or an insert not yet committed.  Takes d.
 */
void qidx_entry_kill(struct queue *q, struct entry *e, struct entry *prev,
                       struct dead_info *d)
{
	struct session *s = e->session;
	bool committed = e->indexed;

	if (committed)
		qidx_unlink(q, e, prev);
	else
		s->uncommitted--;
	qidx_live_remove(q, e);
	e->session = NULL;
	if (!committed)
		qidx_session_maybe_free(q, s);
	qidx_dead_info_free(e->dead);
	e->dead = d;
	q->dead++;
	qidx_op_set(q, e, OP_DEAD);
}

/* Dead-letters the head of s (not busy) as expired. */
void qidx_expire_head(struct queue *q, struct session *s)
{
	qidx_entry_kill(q, s->head, NULL, qidx_dead_info_create("expired", 0, NULL));
	q->expired_total++;
	qidx_session_head_changed(q, s);
}

/* Called when e's insert committed: e becomes leasable.  Its copy stays in
 * memory for the consumer while the cache has room. */
void qidx_commit(struct queue *q, struct entry *e)
{
	struct session *s = e->session;

	s->uncommitted--;
	index_append(e);
	if (q->cache_used + e->msg_size <= q->opt.cache_bytes) {
		q->cache_used += e->msg_size;
	} else {
		free(e->msg);
		e->msg = NULL;
	}
	if (s->state == S_IDLE)
		qidx_session_set_ready(q, s, false);
	else if (s->owner != 0)
		qidx_stream_settle(q, s);
}

void qidx_waiter_finish(struct entry *e, int result)
{
	if (!e->waiter)
		return;
	e->waiter->result = result;
	e->waiter->done = true;
	e->waiter = NULL;
}

/* A producer waits for e's insert, which failed: tell it, and forget e as
 * if queue_put had refused it. */
void qidx_insert_drop(struct queue *q, struct entry *e, enum op op)
{
	struct session *s = e->session;

	qidx_waiter_finish(e, QUEUE_EIO);
	if (op == OP_INSERT_DEAD || e->next_op == OP_DEAD)
		q->dead--; /* queue_dead_key counted it */
	if (e->next_op != OP_NONE)
		pending_unlink(q, e);
	if (e->live) {
		qidx_live_remove(q, e);
		s->uncommitted--;
		qidx_session_maybe_free(q, s);
	}
	qidx_entry_free(e);
}


int qidx_add_row(struct queue *q, const struct qidx_row *row, bool replayed,
                 struct entry **hint)
{
	struct entry *e = calloc(1, sizeof *e);
	struct session *s;

	if (!e || !(s = qidx_session_get(q, row->session ? row->session : "")))
		goto fail;
	if (row->api_key && !(e->key = qidx_key_get(q, row->api_key))) {
		qidx_session_maybe_free(q, s);
		goto fail;
	}
	e->id = row->id;
	e->body_len = row->body_len;
	e->received_ms = row->received_ms;
	e->attempts = row->attempts;
	e->ws = row->ws;
	e->session = s;
	if (replayed) {
		live_insert(q, e, hint);
		index_insert(e);
	} else {
		qidx_live_add(q, e);
		index_append(e);
	}
	if (s->state == S_IDLE)
		qidx_session_set_ready(q, s, false);
	else if (s->owner != 0)
		qidx_stream_settle(q, s);
	return QUEUE_OK;
fail:
	free(e);
	return QUEUE_ENOMEM;
}

static bool is_dead_op(unsigned char op)
{
	return op == OP_DEAD || op == OP_INSERT_DEAD;
}

uint64_t qidx_pending_dead(const struct queue *q)
{
	const struct entry *e;
	uint64_t n = 0;

	for (e = q->pending_head; e; e = e->pnext)
		n += is_dead_op(e->next_op);
	for (e = q->batch; e; e = e->bnext)
		n += is_dead_op(e->batch_op) && !is_dead_op(e->next_op);
	return n;
}

/* --- the whole index ------------------------------------------------------------ */

int qidx_init(struct queue *q)
{
	if (siphash_key_init(&q->hash_key) < 0)
		return QUEUE_EIO;
	if (htab_init(&q->sessions) || htab_init(&q->leases) || htab_init(&q->keys))
		return QUEUE_ENOMEM;
	return QUEUE_OK;
}

static void free_all(struct htab *t, size_t node_offset)
{
	struct hnode *n, *next;
	size_t i;

	for (i = 0; t->slot && i <= t->mask; i++) {
		for (n = t->slot[i]; n; n = next) {
			next = n->next;
			free((char *)n - node_offset);
		}
	}
	htab_release(t);
}

void qidx_release(struct queue *q)
{
	struct entry *e, *next;

	for (e = q->pending_head; e; e = next) {
		next = e->pnext;
		if (!e->live)
			qidx_entry_free(e);
	}
	for (e = q->live_head; e; e = next) {
		next = e->gnext;
		qidx_entry_free(e);
	}
	q->pending_head = q->pending_tail = q->live_head = q->live_tail = NULL;
	free_all(&q->sessions, offsetof(struct session, node));
	free_all(&q->keys, offsetof(struct apikey, node));
	htab_release(&q->leases);
	free(q->oready);
	q->oready = NULL;
	free(q->heap);
	q->heap = NULL;
}
