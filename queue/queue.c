/*
 * queue.c - the durable queue behind queue.h.
 *
 * A message passes through these hands:
 *
 *   queue_put      copies it into an entry whose pending operation is INSERT
 *                  and appends the entry to q->pending.  No SQLite here.
 *   writer thread  takes everything pending as one batch, runs the batch in
 *                  one transaction (group commit), and only after COMMIT adds
 *                  the new entries to their sessions' FIFOs, where
 *                  queue_lease can see them: nothing is leased before it is
 *                  on disk.
 *   queue_lease    hands out the head of each ready session, one per session,
 *                  and marks the session busy.
 *   queue_ack...   take the entry out of the index and give it a pending
 *                  DELETE (DEAD for queue_dead, ATTEMPTS for queue_retry);
 *                  the next batch commits it and frees the entry.
 *
 * Locking: q->mu guards every in-memory structure below.  Nobody calls SQLite
 * with q->mu held.  The writer owns the write connection and drops q->mu while
 * it commits.  Leases read the bodies that are not cached through a second,
 * read-only connection under q->read_mu; WAL mode lets that reader run beside
 * the writer.
 *
 * An entry carries at most two operations: batch_op, which the writer is
 * committing now, and next_op, which waits in q->pending for the batch after.
 * Operations on one entry merge (ATTEMPTS then DELETE is DELETE), so
 * operations on different entries may run in any order.  Every operation is
 * idempotent (INSERT OR REPLACE with an explicit id, DELETE by id, UPDATE to
 * a value), so a batch whose COMMIT failed, even ambiguously, can run again.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "queue.h"
#include "schema.h"

#define LEASE_MAX 64            /* messages one queue_lease call hands out at most */
#define REASON_MAX 128          /* bytes of a dead letter's reason that are kept */
#define DETAIL_MAX 1024         /* bytes of a dead letter's detail that are kept */
#define BACKOFF_MIN_MS 100      /* first retry after a failed commit ... */
#define BACKOFF_MAX_MS 1000     /* ... doubling up to this */
#define CLOSE_ATTEMPTS 3        /* failed commits queue_close sits through */
#define EXPIRY_TICK_MS 1000     /* how often the writer looks for expired messages */
#define EXPIRY_SCAN_MAX 1000    /* messages it looks at per tick */
#define BUSY_TIMEOUT_MS 5000
#define PROBE_BYTES 65536       /* the test write while the disk fails */
#define HTAB_MIN 64
#define PAGES_UNLIMITED 1073741823 /* SQLITE_MAX_PAGE_COUNT */

#define container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))

/* --- time ----------------------------------------------------------------- */

static int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_ms(void)
{
	return mono_us() / 1000;
}

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

/* --- messages --------------------------------------------------------------- */

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
	}
	return "unknown queue error";
}

/* The string fields of struct queue_msg, in the order of the columns
 * session .. conn_id in the schema and in every statement below. */
static const size_t msg_str_off[] = {
	offsetof(struct queue_msg, session),
	offsetof(struct queue_msg, target),
	offsetof(struct queue_msg, content_type),
	offsetof(struct queue_msg, xff),
	offsetof(struct queue_msg, peer_ip),
	offsetof(struct queue_msg, user_agent),
	offsetof(struct queue_msg, origin),
	offsetof(struct queue_msg, api_key),
	offsetof(struct queue_msg, conn_id),
};
#define MSG_NSTR (sizeof msg_str_off / sizeof msg_str_off[0])

static const char *msg_str(const struct queue_msg *m, size_t i)
{
	const char *const *p = (const void *)((const char *)m + msg_str_off[i]);

	return *p;
}

static void msg_set_str(struct queue_msg *m, size_t i, const char *s)
{
	const char **p = (void *)((char *)m + msg_str_off[i]);

	*p = s;
}

/* Bytes queue_msg_dup allocates for m, or 0 if that overflows size_t. */
static size_t msg_footprint(const struct queue_msg *m)
{
	size_t total = sizeof(*m), len, i;

	if (m->body_len > SIZE_MAX - total - 1)
		return 0;
	total += m->body_len + 1;
	for (i = 0; i < MSG_NSTR; i++) {
		const char *s = msg_str(m, i);

		if (s == NULL)
			continue;
		len = strlen(s) + 1;
		if (len > SIZE_MAX - total)
			return 0;
		total += len;
	}
	return total;
}

/* The copy is laid out as the struct, the body (followed by a NUL that
 * body_len does not count), then the strings. */
struct queue_msg *queue_msg_dup(const struct queue_msg *m)
{
	size_t size = msg_footprint(m), len, i;
	struct queue_msg *d;
	char *p;

	if (size == 0 || (m->body_len > 0 && m->body == NULL))
		return NULL;
	d = malloc(size);
	if (d == NULL)
		return NULL;
	*d = *m;
	p = (char *)(d + 1);
	if (m->body_len > 0)
		memcpy(p, m->body, m->body_len);
	p[m->body_len] = '\0';
	d->body = p;
	p += m->body_len + 1;
	for (i = 0; i < MSG_NSTR; i++) {
		const char *s = msg_str(m, i);

		if (s == NULL)
			continue;
		len = strlen(s) + 1;
		memcpy(p, s, len);
		msg_set_str(d, i, p);
		p += len;
	}
	return d;
}

void queue_msg_free(struct queue_msg *m)
{
	free(m);
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

/* --- a small intrusive hash table -------------------------------------------- */

/* Chained; the node lives inside the object it indexes.  The table never
 * fails an insert: if it cannot grow, chains get longer. */
struct hnode {
	struct hnode *next;
	uint64_t hash;
};

struct htab {
	struct hnode **slot;
	size_t mask;    /* slots - 1; slots is a power of two */
	size_t count;
};

static uint64_t hash_str(const char *s)
{
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */

	while (*s != '\0') {
		h ^= (unsigned char)*s++;
		h *= 1099511628211ULL;
	}
	return h;
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
	return t->slot != NULL ? 0 : -1;
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

	if (n > SIZE_MAX / sizeof *slot || (slot = calloc(n, sizeof *slot)) == NULL)
		return;
	for (i = 0; i <= t->mask; i++) {
		for (e = t->slot[i]; e != NULL; e = next) {
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

/* --- the in-memory state ------------------------------------------------------ */

/* An API key that queued messages share, so that queue_dead_key finds them
 * without a scan of the database. */
struct apikey {
	struct hnode node;      /* q->keys */
	size_t refs;            /* live entries using it */
	char name[];
};

enum session_state {
	S_IDLE,     /* no committed message (only uncommitted ones, briefly) */
	S_READY,    /* its head is due: on q->ready */
	S_BUSY,     /* its head is leased: in q->leases */
	S_WAITING,  /* its head waits for a retry: in q->heap */
};

struct session {
	struct hnode node;              /* q->sessions, by name */
	struct hnode lease_node;        /* q->leases, by the leased id; S_BUSY */
	struct entry *head, *tail;      /* committed messages, oldest first */
	struct session *rprev, *rnext;  /* q->ready; S_READY */
	size_t heap_pos;                /* in q->heap; S_WAITING */
	int64_t due_ms;                 /* monotonic; S_WAITING */
	unsigned uncommitted;           /* inserts accepted, not yet committed */
	enum session_state state;
	char name[];
};

enum op {
	OP_NONE,
	OP_INSERT,
	OP_INSERT_DEAD,  /* insert, then move to dead_letters (dead-lettered early) */
	OP_ATTEMPTS,     /* persist the attempts count */
	OP_DELETE,
	OP_DEAD,         /* move to dead_letters */
};

struct dead_info {
	int64_t dead_ms;
	int status;
	const char *reason;
	const char *detail;
};

/* Used when a dead letter's details cannot be allocated: the message is
 * still moved, with this reason. */
static struct dead_info dead_nomem = { 0, 0, "unrecorded (out of memory)", NULL };

struct waiter {
	int result;
	bool done;
};

/*
 * One message.  It is "live" from queue_put until it is acked, dead-lettered
 * or dropped, and counts in depth and bytes while live.  It is "indexed" while
 * committed and live.  It is freed once it is neither live nor has any
 * operation left to commit.
 */
struct entry {
	struct entry *gprev, *gnext;    /* q->live_head..: every live entry, by id */
	struct entry *snext;            /* its session's FIFO, while indexed */
	struct entry *pnext;            /* q->pending, while next_op != OP_NONE */
	struct entry *bnext;            /* the writer's batch, while batch_op != OP_NONE */
	struct session *session;        /* while live */
	struct apikey *key;             /* while live; NULL without api_key */
	struct queue_msg *msg;          /* the copy to insert while uncommitted; then
	                                 * the cached copy, or NULL */
	struct dead_info *dead;         /* set with OP_DEAD */
	struct waiter *waiter;          /* a producer waiting for the insert */
	int64_t id, received_ms, put_us;
	uint64_t body_len;
	size_t msg_size;                /* bytes of msg */
	uint32_t attempts, batch_attempts;
	unsigned char next_op, batch_op;
	bool live, indexed;
};

struct queue {
	struct queue_options opt;
	char *path;
	char instance_id[17];
	int64_t max_row;                /* SQLITE_LIMIT_LENGTH */

	pthread_mutex_t mu;
	pthread_cond_t work_cv;         /* wakes the writer */
	pthread_cond_t done_cv;         /* wakes producers waiting for a commit */
	bool sync_ready;
	pthread_t writer;
	bool writer_started;

	/* Only the writer thread uses these (and open/close, with no writer). */
	sqlite3 *db;
	sqlite3_stmt *st_begin, *st_commit, *st_rollback;
	sqlite3_stmt *st_insert, *st_delete, *st_attempts, *st_dead;
	sqlite3_stmt *st_probe_put, *st_probe_del;
	uint32_t *lat;                  /* latencies for on_commit ... */
	size_t lat_cap;                 /* ... at most one per message in a batch */
	unsigned backoff_ms;

	pthread_mutex_t read_mu;        /* guards rdb and st_read */
	sqlite3 *rdb;
	sqlite3_stmt *st_read;

	/* Everything below is guarded by mu. */
	struct htab sessions, leases, keys;
	struct session *ready_head, *ready_tail;
	struct session **heap;          /* S_WAITING sessions, soonest due first */
	size_t heap_len, heap_cap;
	struct entry *live_head, *live_tail;
	struct entry *pending_head, *pending_tail;
	size_t npending;
	int64_t pending_since_ms;       /* when pending last became non-empty */
	struct entry *batch;            /* what the writer is committing */
	int64_t last_commit_end_ms;
	int64_t retry_at_ms;            /* next attempt while !writable */
	int64_t next_id;
	uint64_t depth, bytes, in_flight, dead, cache_used;
	uint64_t committed_total, commits_total, expired_total;
	uint64_t max_db_pages;
	bool pages_dirty;               /* max_db_pages changed since the writer looked */
	bool writable, closing;
	bool wake;                      /* a message became due: call notify */
	char error[160];
	void (*notify)(void *arg);
	void *notify_arg;
};

/* Copies fn and arg while q->mu is held, then unlocks and calls notify if a
 * message became due meanwhile: the callback never runs under queue locks. */
static void unlock_notify(struct queue *q)
{
	void (*fn)(void *) = NULL;
	void *arg = NULL;

	if (q->wake && q->notify != NULL) {
		fn = q->notify;
		arg = q->notify_arg;
	}
	q->wake = false;
	pthread_mutex_unlock(&q->mu);
	if (fn != NULL)
		fn(arg);
}

/* --- sessions: the ready list, the retry heap, the table ------------------- */

static void ready_link(struct queue *q, struct session *s, bool front)
{
	if (front) {
		s->rprev = NULL;
		s->rnext = q->ready_head;
		if (q->ready_head != NULL)
			q->ready_head->rprev = s;
		else
			q->ready_tail = s;
		q->ready_head = s;
	} else {
		s->rnext = NULL;
		s->rprev = q->ready_tail;
		if (q->ready_tail != NULL)
			q->ready_tail->rnext = s;
		else
			q->ready_head = s;
		q->ready_tail = s;
	}
}

static void ready_unlink(struct queue *q, struct session *s)
{
	if (s->rprev != NULL)
		s->rprev->rnext = s->rnext;
	else
		q->ready_head = s->rnext;
	if (s->rnext != NULL)
		s->rnext->rprev = s->rprev;
	else
		q->ready_tail = s->rprev;
	s->rprev = s->rnext = NULL;
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
static bool heap_push(struct queue *q, struct session *s)
{
	if (q->heap_len == q->heap_cap) {
		size_t cap = q->heap_cap ? q->heap_cap * 2 : 16;
		struct session **h;

		if (cap > SIZE_MAX / sizeof *h || (h = realloc(q->heap, cap * sizeof *h)) == NULL)
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

static struct session *session_find(struct queue *q, const char *name)
{
	uint64_t h = hash_str(name);
	struct hnode *n;

	for (n = htab_chain(&q->sessions, h); n != NULL; n = n->next) {
		struct session *s = container_of(n, struct session, node);

		if (n->hash == h && strcmp(s->name, name) == 0)
			return s;
	}
	return NULL;
}

/* Finds or creates (S_IDLE) the session name; NULL if out of memory. */
static struct session *session_get(struct queue *q, const char *name)
{
	struct session *s = session_find(q, name);
	size_t len;

	if (s != NULL)
		return s;
	len = strlen(name) + 1;
	s = calloc(1, sizeof *s + len);
	if (s == NULL)
		return NULL;
	memcpy(s->name, name, len);
	s->state = S_IDLE;
	htab_add(&q->sessions, &s->node, hash_str(name));
	return s;
}

/* Frees s once nothing refers to it any more. */
static void session_maybe_free(struct queue *q, struct session *s)
{
	if (s->head != NULL || s->uncommitted > 0 || s->state != S_IDLE)
		return;
	htab_del(&q->sessions, &s->node);
	free(s);
}

/* s has a head that is due now: make it leasable. */
static void session_set_ready(struct queue *q, struct session *s, bool front)
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
static void session_head_changed(struct queue *q, struct session *s)
{
	if (s->head != NULL) {
		session_set_ready(q, s, false);
		return;
	}
	if (s->state == S_READY)
		ready_unlink(q, s);
	else if (s->state == S_WAITING)
		heap_remove(q, s);
	s->state = S_IDLE;
	session_maybe_free(q, s);
}

/* Moves every session whose retry is due to the ready list. */
static void promote_due(struct queue *q, int64_t now)
{
	while (q->heap_len > 0 && q->heap[0]->due_ms <= now)
		session_set_ready(q, q->heap[0], false);
}

static struct session *lease_find(struct queue *q, int64_t id)
{
	uint64_t h = hash_id(id);
	struct hnode *n;

	for (n = htab_chain(&q->leases, h); n != NULL; n = n->next) {
		struct session *s = container_of(n, struct session, lease_node);

		if (n->hash == h && s->head->id == id)
			return s;
	}
	return NULL;
}

static void lease_begin(struct queue *q, struct session *s)
{
	ready_unlink(q, s);
	s->state = S_BUSY;
	htab_add(&q->leases, &s->lease_node, hash_id(s->head->id));
	q->in_flight++;
}

/* Leaves s S_IDLE with its head in place: the caller decides what's next. */
static void lease_end(struct queue *q, struct session *s)
{
	htab_del(&q->leases, &s->lease_node);
	q->in_flight--;
	s->state = S_IDLE;
}

/* --- API keys ------------------------------------------------------------------ */

static struct apikey *key_find(struct queue *q, const char *name)
{
	uint64_t h = hash_str(name);
	struct hnode *n;

	for (n = htab_chain(&q->keys, h); n != NULL; n = n->next) {
		struct apikey *k = container_of(n, struct apikey, node);

		if (n->hash == h && strcmp(k->name, name) == 0)
			return k;
	}
	return NULL;
}

/* A reference to the interned key name; NULL if out of memory. */
static struct apikey *key_get(struct queue *q, const char *name)
{
	struct apikey *k = key_find(q, name);
	size_t len;

	if (k == NULL) {
		len = strlen(name) + 1;
		k = calloc(1, sizeof *k + len);
		if (k == NULL)
			return NULL;
		memcpy(k->name, name, len);
		htab_add(&q->keys, &k->node, hash_str(name));
	}
	k->refs++;
	return k;
}

static void key_put(struct queue *q, struct apikey *k)
{
	if (k != NULL && --k->refs == 0) {
		htab_del(&q->keys, &k->node);
		free(k);
	}
}

/* --- entries ---------------------------------------------------------------------- */

static struct dead_info *dead_info_create(const char *reason, int status, const char *detail)
{
	size_t rl, dl;
	struct dead_info *d;
	char *p;

	if (reason == NULL)
		reason = "unknown";
	rl = strnlen(reason, REASON_MAX);
	dl = detail != NULL ? strnlen(detail, DETAIL_MAX) : 0;
	d = malloc(sizeof *d + rl + 1 + (detail != NULL ? dl + 1 : 0));
	if (d == NULL)
		return &dead_nomem;
	p = (char *)(d + 1);
	memcpy(p, reason, rl);
	p[rl] = '\0';
	d->reason = p;
	d->detail = NULL;
	if (detail != NULL) {
		p += rl + 1;
		memcpy(p, detail, dl);
		p[dl] = '\0';
		d->detail = p;
	}
	d->dead_ms = wall_ms();
	d->status = status;
	return d;
}

static void dead_info_free(struct dead_info *d)
{
	if (d != &dead_nomem)
		free(d);
}

static void entry_free(struct entry *e)
{
	if (e == NULL)
		return;
	free(e->msg);
	dead_info_free(e->dead);
	free(e);
}

static bool entry_expired(const struct queue *q, const struct entry *e, int64_t wall)
{
	return q->opt.max_age_ms > 0 && wall - e->received_ms > (int64_t)q->opt.max_age_ms;
}

/* Counts e in depth and bytes; ids only grow, so the live list stays sorted. */
static void live_add(struct queue *q, struct entry *e)
{
	e->gnext = NULL;
	e->gprev = q->live_tail;
	if (q->live_tail != NULL)
		q->live_tail->gnext = e;
	else
		q->live_head = e;
	q->live_tail = e;
	e->live = true;
	q->depth++;
	q->bytes += e->body_len;
}

static void live_remove(struct queue *q, struct entry *e)
{
	if (e->gprev != NULL)
		e->gprev->gnext = e->gnext;
	else
		q->live_head = e->gnext;
	if (e->gnext != NULL)
		e->gnext->gprev = e->gprev;
	else
		q->live_tail = e->gprev;
	e->gprev = e->gnext = NULL;
	e->live = false;
	q->depth--;
	q->bytes -= e->body_len;
	key_put(q, e->key);
	e->key = NULL;
}

/* Appends a committed entry to its session's FIFO. */
static void index_append(struct entry *e)
{
	struct session *s = e->session;

	e->snext = NULL;
	if (s->tail != NULL)
		s->tail->snext = e;
	else
		s->head = e;
	s->tail = e;
	e->indexed = true;
}

/* Takes e out of its session's FIFO; prev is the entry before it (NULL for
 * the head).  The cached copy is dropped. */
static void index_unlink(struct queue *q, struct entry *e, struct entry *prev)
{
	struct session *s = e->session;

	if (prev != NULL)
		prev->snext = e->snext;
	else
		s->head = e->snext;
	if (s->tail == e)
		s->tail = prev;
	e->snext = NULL;
	e->indexed = false;
	if (e->msg != NULL) {
		q->cache_used -= e->msg_size;
		free(e->msg);
		e->msg = NULL;
	}
}

static enum op op_merge(enum op first, enum op then)
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
static void op_set(struct queue *q, struct entry *e, enum op op)
{
	if (e->next_op != OP_NONE) {
		e->next_op = op_merge(e->next_op, op);
		return;
	}
	e->next_op = op;
	e->pnext = NULL;
	if (q->pending_tail != NULL) {
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
 * before it in its session; the caller calls session_head_changed if e was the
 * head) or an insert not yet committed.  Takes d.
 */
static void entry_kill(struct queue *q, struct entry *e, struct entry *prev,
                       struct dead_info *d)
{
	struct session *s = e->session;
	bool committed = e->indexed;

	if (committed)
		index_unlink(q, e, prev);
	else
		s->uncommitted--;
	live_remove(q, e);
	e->session = NULL;
	if (!committed)
		session_maybe_free(q, s);
	dead_info_free(e->dead);
	e->dead = d;
	q->dead++;
	op_set(q, e, OP_DEAD);
}

/* Dead-letters the head of s (not busy) as expired. */
static void expire_head(struct queue *q, struct session *s)
{
	entry_kill(q, s->head, NULL, dead_info_create("expired", 0, NULL));
	q->expired_total++;
	session_head_changed(q, s);
}

/* Called when e's insert committed: e becomes leasable.  Its copy stays in
 * memory for the consumer while the cache has room. */
static void index_commit(struct queue *q, struct entry *e)
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
		session_set_ready(q, s, false);
}

static void waiter_finish(struct entry *e, int result)
{
	if (e->waiter == NULL)
		return;
	e->waiter->result = result;
	e->waiter->done = true;
	e->waiter = NULL;
}

/* A producer waits for e's insert, which failed: tell it, and forget e as
 * if queue_put had refused it. */
static void insert_drop(struct queue *q, struct entry *e, enum op op)
{
	struct session *s = e->session;

	waiter_finish(e, QUEUE_EIO);
	if (op == OP_INSERT_DEAD || e->next_op == OP_DEAD)
		q->dead--; /* queue_dead_key counted it */
	if (e->next_op != OP_NONE)
		pending_unlink(q, e);
	if (e->live) {
		live_remove(q, e);
		s->uncommitted--;
		session_maybe_free(q, s);
	}
	entry_free(e);
}

/* --- SQLite -------------------------------------------------------------------------- */

static int set_cause(char **cause, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int set_cause(char **cause, int err, const char *fmt, ...)
{
	va_list ap;

	if (cause != NULL && *cause == NULL) {
		va_start(ap, fmt);
		if (vasprintf(cause, fmt, ap) < 0)
			*cause = NULL;
		va_end(ap);
	}
	return err;
}

static int sql_to_err(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return QUEUE_ECORRUPT;
	case SQLITE_NOMEM:
		return QUEUE_ENOMEM;
	}
	return QUEUE_EIO;
}

/* Turns an SQLite failure during queue_open into an error and a cause that
 * says what to do about it. */
static int open_fail(struct queue *q, sqlite3 *db, char **cause, int rc, const char *what)
{
	int err = sql_to_err(rc);
	const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);

	if (err == QUEUE_ECORRUPT)
		return set_cause(cause, err, "queue database %s is corrupt (%s: %s): move the "
		                 "file aside or run `watchrtc-relay queue salvage`",
		                 q->path, what, msg);
	return set_cause(cause, err, "queue database %s: %s: %s", q->path, what, msg);
}

/* Runs sql and copies the first column of its first row into buf ("" if
 * there is none). */
static int query_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
	sqlite3_stmt *st = NULL;
	int rc;

	buf[0] = '\0';
	rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		goto out;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(st, 0);

		snprintf(buf, len, "%s", t != NULL ? (const char *)t : "");
		rc = SQLITE_OK;
	} else if (rc == SQLITE_DONE) {
		rc = SQLITE_OK;
	}
out:
	sqlite3_finalize(st);
	return rc;
}

/* Runs sql and stores the first column of its first row (0 if none or NULL). */
static int query_int(sqlite3 *db, const char *sql, int64_t *v)
{
	sqlite3_stmt *st = NULL;
	int rc;

	*v = 0;
	rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK)
		goto out;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*v = sqlite3_column_int64(st, 0);
		rc = SQLITE_OK;
	} else if (rc == SQLITE_DONE) {
		rc = SQLITE_OK;
	}
out:
	sqlite3_finalize(st);
	return rc;
}

/* Steps a prepared statement that returns no rows and makes it reusable. */
static int step_reset(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int random_hex(char *out, size_t nbytes)
{
	unsigned char buf[32];
	size_t got = 0, i;
	ssize_t r;
	int fd;

	if (nbytes > sizeof buf)
		return -1;
	fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while (got < nbytes) {
		r = read(fd, buf + got, nbytes - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	if (got < nbytes)
		return -1;
	for (i = 0; i < nbytes; i++)
		snprintf(out + 2 * i, 3, "%02x", buf[i]);
	return 0;
}

static void set_max_pages(sqlite3 *db, uint64_t pages)
{
	char sql[64];

	snprintf(sql, sizeof sql, "PRAGMA max_page_count = %" PRIu64,
	         pages > 0 ? pages : (uint64_t)PAGES_UNLIMITED);
	(void)sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/* Opens the write connection, checks the file, and sets it up: WAL, every
 * commit fsync'd, no zeroing of deleted content. */
static int db_open_writer(struct queue *q, char **cause)
{
	char buf[256], *p;
	int fd, rc;

	/* SQLite would create the file 0644 less the umask; it holds client
	 * data and API keys.  SQLite gives -wal and -shm the mode of the
	 * database file. */
	fd = open(q->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return set_cause(cause, QUEUE_EIO, "queue database %s: %s", q->path,
		                 strerror(errno));
	close(fd);

	rc = sqlite3_open_v2(q->path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
	if (rc != SQLITE_OK)
		return open_fail(q, q->db, cause, rc, "open");

	rc = query_text(q->db, "PRAGMA quick_check", buf, sizeof buf);
	if (rc != SQLITE_OK)
		return open_fail(q, q->db, cause, rc, "quick_check");
	if (strcmp(buf, "ok") != 0) {
		for (p = buf; *p != '\0'; p++)
			if (*p == '\n')
				*p = ' '; /* quick_check reports one problem a line */
		return set_cause(cause, QUEUE_ECORRUPT, "queue database %s failed its integrity "
		                 "check (%s): move the file aside or run `watchrtc-relay queue "
		                 "salvage`", q->path, buf);
	}

	rc = query_text(q->db, "PRAGMA journal_mode = WAL", buf, sizeof buf);
	if (rc != SQLITE_OK)
		return open_fail(q, q->db, cause, rc, "journal_mode");
	if (strcmp(buf, "wal") != 0)
		return set_cause(cause, QUEUE_EIO, "queue database %s: cannot use WAL mode "
		                 "(journal_mode is %s)", q->path, buf);
	/* FULL: a commit is on disk before a producer hears about it.
	 * secure_delete is on in Debian's build and doubles the cost of an ack. */
	rc = sqlite3_exec(q->db, "PRAGMA synchronous = FULL; PRAGMA secure_delete = OFF",
	                  NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return open_fail(q, q->db, cause, rc, "pragma");
	if (q->opt.max_db_pages > 0)
		set_max_pages(q->db, q->opt.max_db_pages);
	q->max_db_pages = q->opt.max_db_pages;
	q->max_row = sqlite3_limit(q->db, SQLITE_LIMIT_LENGTH, -1);
	return QUEUE_OK;
}

/* Applies the migrations newer than PRAGMA user_version and loads (or, the
 * first time, stores) the instance id, all in one transaction. */
static int db_migrate(struct queue *q, char **cause)
{
	const char *what = "read schema version";
	char sql[64], fresh_id[sizeof q->instance_id];
	int latest = schema_migrations[schema_migration_count - 1].version;
	sqlite3_stmt *st = NULL;
	int64_t have;
	unsigned i;
	int rc, err = QUEUE_OK;

	if (random_hex(fresh_id, 8) != 0)
		return set_cause(cause, QUEUE_EIO, "cannot read /dev/urandom: %s", strerror(errno));

	rc = query_int(q->db, "PRAGMA user_version", &have);
	if (rc != SQLITE_OK)
		goto out;
	if (have > latest)
		return set_cause(cause, QUEUE_EINVAL, "queue database %s has schema version %" PRId64
		                 ", newer than this relay knows (%d): run a newer relay",
		                 q->path, have, latest);

	what = "begin";
	rc = sqlite3_exec(q->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		goto out;
	for (i = 0; i < schema_migration_count; i++) {
		const struct schema_migration *m = &schema_migrations[i];

		if (m->version <= have)
			continue;
		what = m->name;
		rc = sqlite3_exec(q->db, m->sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out;
		snprintf(sql, sizeof sql, "PRAGMA user_version = %d", m->version);
		rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out;
	}

	what = "instance id";
	rc = query_text(q->db, "SELECT value FROM meta WHERE key = 'instance_id'",
	                q->instance_id, sizeof q->instance_id);
	if (rc != SQLITE_OK)
		goto out;
	if (q->instance_id[0] == '\0') {
		memcpy(q->instance_id, fresh_id, sizeof q->instance_id);
		rc = sqlite3_prepare_v2(q->db, "INSERT INTO meta (key, value) VALUES ('instance_id', ?1)",
		                        -1, &st, NULL);
		if (rc != SQLITE_OK)
			goto out;
		sqlite3_bind_text(st, 1, q->instance_id, -1, SQLITE_STATIC);
		rc = step_reset(st);
		if (rc != SQLITE_OK)
			goto out;
	}

	what = "commit";
	rc = sqlite3_exec(q->db, "COMMIT", NULL, NULL, NULL);
out:
	if (rc != SQLITE_OK) {
		err = open_fail(q, q->db, cause, rc, what);
		if (!sqlite3_get_autocommit(q->db))
			(void)sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
	}
	sqlite3_finalize(st);
	return err;
}

/* Prepares the writer's statements, once. */
static int db_prepare(struct queue *q, char **cause)
{
	const struct {
		sqlite3_stmt **st;
		const char *sql;
	} list[] = {
		{ &q->st_begin, "BEGIN IMMEDIATE" },
		{ &q->st_commit, "COMMIT" },
		{ &q->st_rollback, "ROLLBACK" },
		/* OR REPLACE: a batch may run again after a failed COMMIT. */
		{ &q->st_insert,
		  "INSERT OR REPLACE INTO messages (id, received_ms, session, target, "
		  "content_type, xff, peer_ip, user_agent, origin, api_key, conn_id, seq, "
		  "attempts, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, "
		  "?12, 0, ?13)" },
		{ &q->st_delete, "DELETE FROM messages WHERE id = ?1" },
		{ &q->st_attempts, "UPDATE messages SET attempts = ?2 WHERE id = ?1" },
		{ &q->st_dead,
		  "INSERT OR REPLACE INTO dead_letters (id, received_ms, session, target, "
		  "content_type, xff, peer_ip, user_agent, origin, api_key, conn_id, seq, "
		  "attempts, body, dead_ms, reason, status, detail) "
		  "SELECT id, received_ms, session, target, content_type, xff, peer_ip, "
		  "user_agent, origin, api_key, conn_id, seq, ?2, body, ?3, ?4, ?5, ?6 "
		  "FROM messages WHERE id = ?1" },
		{ &q->st_probe_put,
		  "INSERT OR REPLACE INTO meta (key, value) VALUES ('write_probe', zeroblob(?1))" },
		{ &q->st_probe_del, "DELETE FROM meta WHERE key = 'write_probe'" },
	};
	size_t i;
	int rc;

	for (i = 0; i < sizeof list / sizeof list[0]; i++) {
		rc = sqlite3_prepare_v3(q->db, list[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
		                        list[i].st, NULL);
		if (rc != SQLITE_OK)
			return open_fail(q, q->db, cause, rc, "prepare");
	}
	return QUEUE_OK;
}

/* Opens the read-only connection queue_lease reads uncached bodies with. */
static int db_open_reader(struct queue *q, char **cause)
{
	int rc;

	rc = sqlite3_open_v2(q->path, &q->rdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(q->rdb, BUSY_TIMEOUT_MS);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v3(q->rdb,
		                        "SELECT received_ms, session, target, content_type, xff, "
		                        "peer_ip, user_agent, origin, api_key, conn_id, seq, body "
		                        "FROM messages WHERE id = ?1",
		                        -1, SQLITE_PREPARE_PERSISTENT, &q->st_read, NULL);
	if (rc != SQLITE_OK)
		return open_fail(q, q->rdb, cause, rc, "open reader");
	return QUEUE_OK;
}

/* Adds one row of the messages table to the index; the body stays on disk. */
static int index_load_row(struct queue *q, sqlite3_stmt *st)
{
	const char *session = (const char *)sqlite3_column_text(st, 1);
	const char *key = (const char *)sqlite3_column_text(st, 5);
	struct entry *e = calloc(1, sizeof *e);
	struct session *s;

	if (e == NULL || (s = session_get(q, session != NULL ? session : "")) == NULL)
		goto fail;
	if (key != NULL && (e->key = key_get(q, key)) == NULL) {
		session_maybe_free(q, s);
		goto fail;
	}
	e->id = sqlite3_column_int64(st, 0);
	e->body_len = (uint64_t)sqlite3_column_int64(st, 2);
	e->received_ms = sqlite3_column_int64(st, 3);
	e->attempts = (uint32_t)sqlite3_column_int64(st, 4);
	e->session = s;
	live_add(q, e);
	index_append(e);
	if (s->state == S_IDLE)
		session_set_ready(q, s, false);
	return QUEUE_OK;
fail:
	free(e);
	return QUEUE_ENOMEM;
}

/* Loads the next id, the dead-letter count and the index of queued messages. */
static int index_load(struct queue *q, char **cause)
{
	sqlite3_stmt *st = NULL;
	const char *what = "next id";
	int64_t v;
	int rc, err = QUEUE_OK;

	/* An id is never reused: not after the table empties (sqlite_sequence
	 * remembers) and not after a message moved to dead_letters. */
	rc = query_int(q->db, "SELECT max(x) FROM (SELECT seq AS x FROM sqlite_sequence "
	               "WHERE name = 'messages' UNION ALL SELECT max(id) FROM messages "
	               "UNION ALL SELECT max(id) FROM dead_letters)", &v);
	if (rc != SQLITE_OK)
		goto out;
	q->next_id = v + 1;
	what = "count dead letters";
	rc = query_int(q->db, "SELECT count(*) FROM dead_letters", &v);
	if (rc != SQLITE_OK)
		goto out;
	q->dead = (uint64_t)v;

	what = "load messages";
	rc = sqlite3_prepare_v2(q->db, "SELECT id, session, length(body), received_ms, "
	                        "attempts, api_key FROM messages ORDER BY id", -1, &st, NULL);
	if (rc != SQLITE_OK)
		goto out;
	/* No other thread exists yet: the index needs no lock here. */
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		err = index_load_row(q, st);
		if (err != QUEUE_OK)
			break;
	}
	q->wake = false;
	if (err != QUEUE_OK) {
		set_cause(cause, err, "queue database %s: out of memory loading messages", q->path);
		goto out;
	}
	if (rc == SQLITE_DONE)
		rc = SQLITE_OK;
out:
	if (rc != SQLITE_OK)
		err = open_fail(q, q->db, cause, rc, what);
	sqlite3_finalize(st);
	return err;
}

/* Reads message id through the read connection into a new allocation. */
static int read_message(struct queue *q, int64_t id, struct queue_msg **out)
{
	struct queue_msg m;
	sqlite3_stmt *st = q->st_read;
	size_t i;
	int rc, err;

	memset(&m, 0, sizeof m);
	pthread_mutex_lock(&q->read_mu);
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		m.received_ms = sqlite3_column_int64(st, 0);
		for (i = 0; i < MSG_NSTR; i++)
			msg_set_str(&m, i, (const char *)sqlite3_column_text(st, 1 + (int)i));
		m.seq = sqlite3_column_int64(st, 10);
		m.body = sqlite3_column_blob(st, 11);
		m.body_len = (size_t)sqlite3_column_bytes(st, 11);
		*out = queue_msg_dup(&m);
		err = *out != NULL ? QUEUE_OK : QUEUE_ENOMEM;
	} else {
		err = rc == SQLITE_DONE ? QUEUE_ENOTFOUND : QUEUE_EIO;
	}
	sqlite3_reset(st);  /* ends the read transaction: checkpoints can proceed */
	sqlite3_clear_bindings(st);
	pthread_mutex_unlock(&q->read_mu);
	return err;
}

/* --- the writer ------------------------------------------------------------------------ */

static int exec_insert(struct queue *q, const struct entry *e)
{
	const struct queue_msg *m = e->msg;
	sqlite3_stmt *st = q->st_insert;
	size_t i;

	sqlite3_bind_int64(st, 1, e->id);
	sqlite3_bind_int64(st, 2, m->received_ms);
	for (i = 0; i < MSG_NSTR; i++) {
		const char *s = msg_str(m, i);

		if (s == NULL && i < 2)
			s = ""; /* session and target are NOT NULL */
		sqlite3_bind_text(st, 3 + (int)i, s, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(st, 12, m->seq);
	sqlite3_bind_blob64(st, 13, m->body, m->body_len, SQLITE_STATIC);
	return step_reset(st);
}

static int exec_delete(struct queue *q, int64_t id)
{
	sqlite3_bind_int64(q->st_delete, 1, id);
	return step_reset(q->st_delete);
}

static int exec_dead(struct queue *q, const struct entry *e)
{
	sqlite3_stmt *st = q->st_dead;
	int rc;

	sqlite3_bind_int64(st, 1, e->id);
	sqlite3_bind_int64(st, 2, e->batch_attempts);
	sqlite3_bind_int64(st, 3, e->dead->dead_ms);
	sqlite3_bind_text(st, 4, e->dead->reason, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 5, e->dead->status);
	sqlite3_bind_text(st, 6, e->dead->detail, -1, SQLITE_STATIC);
	rc = step_reset(st);
	return rc == SQLITE_OK ? exec_delete(q, e->id) : rc;
}

static int exec_op(struct queue *q, const struct entry *e)
{
	int rc;

	switch (e->batch_op) {
	case OP_INSERT:
		return exec_insert(q, e);
	case OP_INSERT_DEAD:
		rc = exec_insert(q, e);
		return rc == SQLITE_OK ? exec_dead(q, e) : rc;
	case OP_ATTEMPTS:
		sqlite3_bind_int64(q->st_attempts, 1, e->id);
		sqlite3_bind_int64(q->st_attempts, 2, e->batch_attempts);
		return step_reset(q->st_attempts);
	case OP_DELETE:
		return exec_delete(q, e->id);
	case OP_DEAD:
		return exec_dead(q, e);
	}
	return SQLITE_OK;
}

/* Ends the transaction that failed with rc (rolling back what SQLite did not
 * already) and copies the error text into err. */
static void txn_abort(struct queue *q, int rc, char *err, size_t len)
{
	const char *msg = sqlite3_errmsg(q->db), *str = sqlite3_errstr(rc);

	if (strcmp(msg, str) == 0)
		snprintf(err, len, "%s", msg);
	else
		snprintf(err, len, "%s (%s)", msg, str);
	if (!sqlite3_get_autocommit(q->db))
		(void)step_reset(q->st_rollback);
}

/* Runs batch in one transaction.  Returns an SQLite result code. */
static int batch_run(struct queue *q, const struct entry *batch, char *err, size_t len)
{
	const struct entry *e;
	int rc = step_reset(q->st_begin);

	for (e = batch; e != NULL && rc == SQLITE_OK; e = e->bnext)
		rc = exec_op(q, e);
	if (rc == SQLITE_OK)
		rc = step_reset(q->st_commit);
	if (rc != SQLITE_OK)
		txn_abort(q, rc, err, len);
	return rc;
}

/* While writes fail and nothing is pending, this tells when the disk takes
 * writes again: it commits (then deletes) a row bigger than any message the
 * tests write, which needs both new pages and a WAL append. */
static int probe_run(struct queue *q, char *err, size_t len)
{
	int rc = step_reset(q->st_begin);

	if (rc == SQLITE_OK) {
		sqlite3_bind_int(q->st_probe_put, 1, PROBE_BYTES);
		rc = step_reset(q->st_probe_put);
	}
	if (rc == SQLITE_OK)
		rc = step_reset(q->st_probe_del);
	if (rc == SQLITE_OK)
		rc = step_reset(q->st_commit);
	if (rc != SQLITE_OK)
		txn_abort(q, rc, err, len);
	return rc;
}

/* After a successful commit: wake the producers, publish the inserted
 * entries to the index, free what is done.  Returns how many latencies it
 * stored in q->lat. */
static size_t batch_done(struct queue *q, struct entry *batch, int64_t end_us)
{
	struct entry *e, *next;
	size_t nlat = 0;
	int64_t us;

	for (e = batch; e != NULL; e = next) {
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
				q->lat[nlat++] = us < 0 ? 0 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
			waiter_finish(e, QUEUE_OK);
			if (op == OP_INSERT && e->live) {
				index_commit(q, e);
				break;
			}
			/* Dead-lettered before it was committed. */
			free(e->msg);
			e->msg = NULL;
			if (e->next_op == OP_NONE)
				entry_free(e);
			break;
		case OP_ATTEMPTS:
			break;
		default: /* OP_DELETE, OP_DEAD: the entry left the index before */
			entry_free(e);
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

	for (e = batch; e != NULL; e = next) {
		enum op op = e->batch_op;

		next = e->bnext;
		e->bnext = NULL;
		e->batch_op = OP_NONE;
		if ((op == OP_INSERT || op == OP_INSERT_DEAD) && e->waiter != NULL)
			insert_drop(q, e, op);
		else if (e->next_op == OP_NONE)
			op_set(q, e, op);
		else
			e->next_op = op_merge(op, e->next_op);
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
	uint64_t pages = q->max_db_pages;
	bool set_pages = q->pages_dirty;
	int64_t end_us;
	int rc;

	for (e = batch; e != NULL; e = next) {
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

		if (lat != NULL) {
			q->lat = lat;
			q->lat_cap = inserts;
		}
	}
	pthread_mutex_unlock(&q->mu);

	if (set_pages)
		set_max_pages(q->db, pages);
	rc = batch != NULL ? batch_run(q, batch, err, sizeof err) : probe_run(q, err, sizeof err);
	end_us = mono_us();

	pthread_mutex_lock(&q->mu);
	q->batch = NULL;
	if (rc == SQLITE_OK) {
		nlat = batch_done(q, batch, end_us);
		q->writable = true;
		q->error[0] = '\0';
		q->backoff_ms = 0;
		q->last_commit_end_ms = end_us / 1000;
		q->commits_total += batch != NULL;
	} else {
		batch_failed(q, batch, err);
	}
	pthread_cond_broadcast(&q->done_cv);
	unlock_notify(q);
	if (rc == SQLITE_OK && batch != NULL && on_commit != NULL)
		on_commit(q->opt.on_commit_arg, size, q->lat, nlat);
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
	if (q->pending_head == NULL)
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

	for (n = 0, e = q->live_head; e != NULL && n < EXPIRY_SCAN_MAX; n++, e = next) {
		next = e->gnext;
		if (!entry_expired(q, e, wall))
			break;
		if (e->indexed && e->session->head == e && e->session->state != S_BUSY)
			expire_head(q, e->session);
	}
}

/* The writer is gone: producers still waiting hear QUEUE_EIO.  queue_close
 * frees the entries. */
static void writer_abandon(struct queue *q)
{
	struct entry *e;

	for (e = q->pending_head; e != NULL; e = e->pnext)
		waiter_finish(e, QUEUE_EIO);
	pthread_cond_broadcast(&q->done_cv);
}

static void *writer_main(void *arg)
{
	struct queue *q = arg;
	unsigned close_failures = 0;
	int64_t now, due, next_expiry = 0;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		now = mono_ms();
		if (q->opt.max_age_ms > 0 && now >= next_expiry) {
			expire_pass(q);
			next_expiry = now + EXPIRY_TICK_MS;
			unlock_notify(q);
			pthread_mutex_lock(&q->mu);
		}
		if (q->closing && (q->pending_head == NULL || close_failures >= CLOSE_ATTEMPTS))
			break;
		due = writer_due(q);
		if (due > now) {
			if (q->opt.max_age_ms > 0 && due > next_expiry)
				due = next_expiry;
			cond_wait_until(&q->work_cv, &q->mu, due);
			continue;
		}
		if (writer_commit(q) != SQLITE_OK && q->closing)
			close_failures++;
	}
	writer_abandon(q);
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

/* --- open and close ------------------------------------------------------------------ */

/* Finalizes every statement, then closes both connections. */
static void db_close(struct queue *q)
{
	sqlite3_stmt *stmts[] = {
		q->st_begin, q->st_commit, q->st_rollback, q->st_insert, q->st_delete,
		q->st_attempts, q->st_dead, q->st_probe_put, q->st_probe_del, q->st_read,
	};
	size_t i;

	for (i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
		sqlite3_finalize(stmts[i]);
	/* The reader first: the last connection to close checkpoints the WAL
	 * into the database and removes it. */
	(void)sqlite3_close(q->rdb);
	(void)sqlite3_close(q->db);
}

/* Frees q and everything in it; the writer must not be running. */
static void queue_destroy(struct queue *q)
{
	struct entry *e, *next;
	struct hnode *n, *nn;
	size_t i;

	if (q == NULL)
		return;
	db_close(q);
	for (e = q->pending_head; e != NULL; e = next) {
		next = e->pnext;
		if (!e->live)
			entry_free(e);
	}
	for (e = q->live_head; e != NULL; e = next) {
		next = e->gnext;
		entry_free(e);
	}
	for (i = 0; q->sessions.slot != NULL && i <= q->sessions.mask; i++) {
		for (n = q->sessions.slot[i]; n != NULL; n = nn) {
			nn = n->next;
			free(container_of(n, struct session, node));
		}
	}
	for (i = 0; q->keys.slot != NULL && i <= q->keys.mask; i++) {
		for (n = q->keys.slot[i]; n != NULL; n = nn) {
			nn = n->next;
			free(container_of(n, struct apikey, node));
		}
	}
	htab_release(&q->sessions);
	htab_release(&q->leases);
	htab_release(&q->keys);
	free(q->heap);
	free(q->lat);
	free(q->path);
	if (q->sync_ready) {
		pthread_mutex_destroy(&q->mu);
		pthread_mutex_destroy(&q->read_mu);
		pthread_cond_destroy(&q->work_cv);
		pthread_cond_destroy(&q->done_cv);
	}
	free(q);
}

static int queue_alloc(struct queue **out, const char *path, const struct queue_options *o)
{
	struct queue *q = calloc(1, sizeof *q);
	pthread_condattr_t ca;
	int rc;

	*out = q;
	if (q == NULL)
		return QUEUE_ENOMEM;
	q->opt = *o;
	if (q->opt.commit_batch_max == 0)
		q->opt.commit_batch_max = 1;
	if (q->opt.max_age_ms > INT64_MAX / 2)
		q->opt.max_age_ms = 0;
	q->writable = true;
	q->path = strdup(path);
	if (q->path == NULL || htab_init(&q->sessions) || htab_init(&q->leases) ||
	    htab_init(&q->keys))
		return QUEUE_ENOMEM;

	/* Timed waits use the monotonic clock: a wall clock step must not
	 * stall or hurry the writer. */
	if (pthread_condattr_init(&ca) != 0)
		return QUEUE_ENOMEM;
	rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (rc == 0 && (rc = pthread_cond_init(&q->work_cv, &ca)) == 0) {
		rc = pthread_cond_init(&q->done_cv, &ca);
		if (rc != 0)
			pthread_cond_destroy(&q->work_cv);
	}
	pthread_condattr_destroy(&ca);
	if (rc != 0)
		return QUEUE_ENOMEM;
	pthread_mutex_init(&q->mu, NULL);
	pthread_mutex_init(&q->read_mu, NULL);
	q->sync_ready = true;
	return QUEUE_OK;
}

int queue_open(struct queue **out, const char *path, const struct queue_options *o,
               char **cause)
{
	struct queue_options defaults;
	struct queue *q = NULL;
	int err;

	if (cause != NULL)
		*cause = NULL;
	if (out == NULL || path == NULL || *path == '\0')
		return set_cause(cause, QUEUE_EINVAL, "queue_open: no database path");
	*out = NULL;
	if (o == NULL) {
		queue_options_init(&defaults);
		o = &defaults;
	}
	err = queue_alloc(&q, path, o);
	if (err != QUEUE_OK) {
		set_cause(cause, err, "queue_open: out of memory");
		goto out;
	}
	if ((err = db_open_writer(q, cause)) != QUEUE_OK ||
	    (err = db_migrate(q, cause)) != QUEUE_OK ||
	    (err = index_load(q, cause)) != QUEUE_OK ||
	    (err = db_prepare(q, cause)) != QUEUE_OK ||
	    (err = db_open_reader(q, cause)) != QUEUE_OK)
		goto out;
	if (pthread_create(&q->writer, NULL, writer_main, q) != 0) {
		err = set_cause(cause, QUEUE_ENOMEM, "queue_open: cannot start the writer thread");
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
	if (q == NULL)
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
	int err = QUEUE_OK;

	if (q == NULL || m == NULL || m->target == NULL || (m->body_len > 0 && m->body == NULL))
		return QUEUE_EINVAL;
	size = msg_footprint(m);
	if (size == 0 || size >= (uint64_t)q->max_row)
		return QUEUE_EINVAL; /* SQLite could never store it */
	e = calloc(1, sizeof *e);
	if (e == NULL || (e->msg = queue_msg_dup(m)) == NULL) {
		err = QUEUE_ENOMEM;
		goto out;
	}
	e->msg_size = size;
	e->body_len = m->body_len;
	e->received_ms = m->received_ms != 0 ? m->received_ms : wall_ms();
	e->msg->received_ms = e->received_ms;
	e->msg->attempts = 0;
	e->put_us = mono_us();

	pthread_mutex_lock(&q->mu);
	if (q->closing)
		err = QUEUE_ECLOSED;
	else if (!q->writable)
		err = QUEUE_EIO;
	else if ((q->opt.max_messages > 0 && q->depth + 1 > q->opt.max_messages) ||
	         (q->opt.max_bytes > 0 && q->bytes + e->body_len > q->opt.max_bytes))
		err = QUEUE_EFULL;
	else if ((s = session_get(q, m->session != NULL ? m->session : "")) == NULL)
		err = QUEUE_ENOMEM;
	else if (m->api_key != NULL && (e->key = key_get(q, m->api_key)) == NULL) {
		session_maybe_free(q, s);
		err = QUEUE_ENOMEM;
	}
	if (err != QUEUE_OK) {
		pthread_mutex_unlock(&q->mu);
		goto out;
	}
	e->id = e->msg->id = q->next_id++;
	if (id != NULL)
		*id = e->id;
	e->session = s;
	s->uncommitted++;
	live_add(q, e);
	op_set(q, e, OP_INSERT);
	if (wait)
		e->waiter = &w;
	e = NULL; /* the writer owns it now */
	while (wait && !w.done)
		pthread_cond_wait(&q->done_cv, &q->mu);
	if (wait)
		err = w.result;
	pthread_mutex_unlock(&q->mu);
out:
	entry_free(e);
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
	s = lease_find(q, id);
	if (s != NULL) {
		lease_end(q, s);
		if (err == QUEUE_ENOTFOUND) {
			e = s->head;
			index_unlink(q, e, NULL);
			live_remove(q, e);
			e->session = NULL;
			op_set(q, e, OP_DELETE);
			session_head_changed(q, s);
		} else {
			session_set_ready(q, s, true);
		}
	}
	unlock_notify(q);
}

int queue_lease(struct queue *q, struct queue_msg **out, size_t max, size_t *n)
{
	int64_t ids[LEASE_MAX], wall;
	uint32_t attempts[LEASE_MAX];
	size_t got = 0, kept = 0, i;
	struct session *s;
	struct entry *e;
	int rc, err = QUEUE_OK;

	if (n != NULL)
		*n = 0;
	if (q == NULL || out == NULL || n == NULL)
		return QUEUE_EINVAL;
	if (max > LEASE_MAX)
		max = LEASE_MAX;

	pthread_mutex_lock(&q->mu);
	if (q->closing) {
		pthread_mutex_unlock(&q->mu);
		return QUEUE_ECLOSED;
	}
	promote_due(q, mono_ms());
	wall = wall_ms();
	while (got < max && (s = q->ready_head) != NULL) {
		e = s->head;
		if (entry_expired(q, e, wall)) {
			expire_head(q, s);
			continue;
		}
		lease_begin(q, s);
		ids[got] = e->id;
		attempts[got] = e->attempts;
		/* A cached copy changes hands; the rest is read below. */
		out[got++] = e->msg;
		if (e->msg != NULL) {
			q->cache_used -= e->msg_size;
			e->msg = NULL;
		}
	}
	unlock_notify(q);

	for (i = 0; i < got; i++) {
		if (out[i] == NULL && (rc = read_message(q, ids[i], &out[i])) != QUEUE_OK) {
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
	s = lease_find(q, id);
	if (s != NULL) {
		e = s->head;
		lease_end(q, s);
		index_unlink(q, e, NULL);
		live_remove(q, e);
		e->session = NULL;
		op_set(q, e, OP_DELETE);
		session_head_changed(q, s);
	}
	unlock_notify(q);
}

void queue_retry(struct queue *q, int64_t id, unsigned delay_ms)
{
	struct session *s;
	struct entry *e;

	pthread_mutex_lock(&q->mu);
	s = lease_find(q, id);
	if (s != NULL) {
		e = s->head;
		lease_end(q, s);
		e->attempts++;
		op_set(q, e, OP_ATTEMPTS);
		s->due_ms = mono_ms() + delay_ms;
		/* If the heap cannot grow, retrying at once beats losing order. */
		if (delay_ms == 0 || !heap_push(q, s))
			session_set_ready(q, s, false);
		else
			s->state = S_WAITING;
	}
	unlock_notify(q);
}

void queue_dead(struct queue *q, int64_t id, const char *reason, int status,
                const char *detail)
{
	struct dead_info *d = dead_info_create(reason, status, detail);
	struct session *s;

	pthread_mutex_lock(&q->mu);
	s = lease_find(q, id);
	if (s != NULL) {
		lease_end(q, s);
		entry_kill(q, s->head, NULL, d);
		d = NULL;
		session_head_changed(q, s);
	}
	unlock_notify(q);
	if (d != NULL)
		dead_info_free(d);
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
	for (; e != NULL; e = next) {
		next = e->snext;
		if (e->key != k) {
			prev = e;
			continue;
		}
		entry_kill(q, e, prev, dead_info_create(reason, 0, NULL));
		n++;
	}
	if (s->head != old_head)
		session_head_changed(q, s);
	return n;
}

size_t queue_dead_key(struct queue *q, const char *key, const char *reason)
{
	struct hnode *h, *hnext;
	struct apikey *k;
	struct entry *e, *next;
	size_t n = 0, i;

	if (q == NULL || key == NULL)
		return 0;
	pthread_mutex_lock(&q->mu);
	k = key_find(q, key);
	if (k == NULL) {
		pthread_mutex_unlock(&q->mu);
		return 0;
	}
	k->refs++; /* keeps k while its messages let go of it */
	for (i = 0; i <= q->sessions.mask; i++) {
		for (h = q->sessions.slot[i]; h != NULL; h = hnext) {
			hnext = h->next;
			n += dead_key_session(q, container_of(h, struct session, node), k, reason);
		}
	}
	/* Accepted but not yet committed: pending inserts become
	 * insert-then-dead-letter; inserts being committed now get a DEAD
	 * operation for the next batch. */
	for (e = q->pending_head; e != NULL; e = next) {
		next = e->pnext;
		if (e->next_op == OP_INSERT && e->key == k) {
			entry_kill(q, e, NULL, dead_info_create(reason, 0, NULL));
			n++;
		}
	}
	for (e = q->batch; e != NULL; e = e->bnext) {
		if (e->batch_op == OP_INSERT && e->live && e->key == k) {
			entry_kill(q, e, NULL, dead_info_create(reason, 0, NULL));
			n++;
		}
	}
	key_put(q, k);
	unlock_notify(q);
	return n;
}

void queue_set_notify(struct queue *q, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&q->mu);
	q->notify = fn;
	q->notify_arg = arg;
	pthread_mutex_unlock(&q->mu);
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
	st->oldest_ms = q->live_head != NULL ? q->live_head->received_ms : 0;
	st->max_bytes = q->opt.max_bytes;
	st->max_messages = q->opt.max_messages;
	st->writable = q->writable;
	memcpy(st->error, q->error, sizeof st->error);
	st->committed_total = q->committed_total;
	st->commits_total = q->commits_total;
	st->expired_total = q->expired_total;
	pthread_mutex_unlock(&q->mu);
}
