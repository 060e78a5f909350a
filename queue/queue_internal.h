/*
 * queue_internal.h - what the files of the queue share, and nothing else
 * includes.  The queue is one object split along its seams:
 *
 *   queue.c         the public API: open/close, producers, consumers, stats
 *   queue_index.c   the in-memory scheduler: sessions, leases, retry heap,
 *                   the entries and the operations they wait to commit
 *   queue_writer.c  the writer thread: group commit, expiry, back-off, and
 *                   noticing what the queue CLI changed in the database
 *   queue_store.c   SQLite: opening, schema, statements, transactions
 *   queue_stream.c  the stream lease of the upstream websockets (a session
 *                   per owner, a window of it in flight)
 *   queue_hello.c   the upstream's hellos per API key
 *
 * Functions shared between the files carry the prefix of their file
 * (qidx_, qwriter_, qstore_); the rest are static.
 *
 * Locking: q->mu guards every in-memory structure.  Nobody calls SQLite with
 * q->mu held.  Only the writer thread uses the write connection (and
 * queue_open/queue_close while no writer runs).  The lease path reads bodies
 * that are not cached through a read-only connection under q->read_mu.  A
 * learned hello is written through a third connection under
 * q->hello_db_mu (queue_hello.c); the list of hellos is under q->hello_mu.
 */
#ifndef WATCHRTC_QUEUE_INTERNAL_H
#define WATCHRTC_QUEUE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <sqlite3.h>

#include "cause.h"
#include "queue.h"
#include "siphash.h"

#define BUSY_TIMEOUT_MS 5000    /* another connection (the queue CLI) holds the lock */
/* Page size of a new queue database.  A queued row is ~2.1 KB (an SDK
 * getstats delta and its metadata): two do not fit a 4 KB page, so with
 * SQLite's default every row took a page of its own, half of it empty,
 * and every insert, delete and checkpoint moved twice the bytes.  32 KB
 * pages hold ~15 rows (BENCHMARKS.md: inserts over twice as fast).  A database
 * keeps the page size it was created with. */
#define QSTORE_PAGE_SIZE "32768"  /* a string: it goes into a PRAGMA */
/* How much of the file the reader maps (a string, for a PRAGMA): address
 * space, not memory.  Only reads go through the map, and only the reader's,
 * which fetches bodies the cache does not hold (a backlog after a restart):
 * an I/O error there is a SIGBUS where pread would fail, and a restart
 * finds every committed message still on disk. */
#define QSTORE_READ_MMAP "1073741824"
#define PICKUP_MAX 256          /* replayed rows the writer loads per transaction */

/* Dead letters by reason, the most common first: the relay's metrics and
 * the queue CLI's report count alike.  A scan of the index on reason. */
#define QSQL_DEAD_REASONS "SELECT reason, count(*) FROM dead_letters GROUP BY reason " \
	"ORDER BY count(*) DESC, reason"

#define container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))

/* --- time -------------------------------------------------------------------- */

static inline int64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t mono_ms(void)
{
	return mono_us() / 1000;
}

static inline int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- the string fields of struct queue_msg (queue.c) ------------------------------ */

/* session .. conn_id, in the order of the schema's columns. */
#define MSG_NSTR 9
const char *qmsg_str(const struct queue_msg *m, size_t i);
/* Bytes queue_msg_dup allocates for m, or 0 if that overflows size_t. */
size_t qmsg_footprint(const struct queue_msg *m);
void qmsg_set_str(struct queue_msg *m, size_t i, const char *s);


/* --- the in-memory state ------------------------------------------------------------ */

/* A chained hash table whose nodes live inside the objects they index. */
struct hnode {
	struct hnode *next;
	uint64_t hash;
};

struct htab {
	struct hnode **slot;
	size_t mask;    /* slots - 1; slots is a power of two */
	size_t count;
};

/* An API key that queued messages share, so that queue_dead_key finds them
 * without a scan of the database. */
struct apikey {
	struct hnode node;      /* q->keys */
	size_t refs;            /* live entries using it */
	char name[];
};

enum session_state {
	S_IDLE,     /* no committed message (only uncommitted ones, briefly) */
	S_READY,    /* its head is due: on a ready list (see ready_list) */
	S_BUSY,     /* its head is leased: in q->leases */
	S_WAITING,  /* its head waits for a retry: in q->heap */
	S_OWNED,    /* a stream owner has it and nothing is readable now */
};

/* A list of ready sessions. */
struct rlist {
	struct session *head, *tail;
};

struct session {
	struct hnode node;              /* q->sessions, by name */
	struct hnode lease_node;        /* q->leases, by the leased id; S_BUSY */
	struct entry *head, *tail;      /* committed messages, oldest first */
	struct session *rprev, *rnext;  /* on the list `on`; S_READY */
	struct rlist *on;
	size_t heap_pos;                /* in q->heap; S_WAITING */
	int64_t due_ms;                 /* monotonic; S_WAITING */
	unsigned uncommitted;           /* inserts accepted, not yet committed */
	enum session_state state;
	/* Streams (queue_stream_*): the owner, 0 for none; the entries from
	 * the head up to unread (excluded) are in flight, nflight of them. */
	unsigned owner;
	unsigned nflight;
	struct entry *unread;
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
	bool ws;                        /* a websocket row (conn_id set) */
};

/* A committed row to add to the index: at start-up, or replayed by the CLI. */
struct qidx_row {
	int64_t id, received_ms;
	uint64_t body_len;
	uint32_t attempts;
	const char *session;
	const char *api_key;            /* NULL if none */
	bool ws;                        /* conn_id is set */
};

struct queue {
	struct queue_options opt;
	char *path;
	char instance_id[17];
	int64_t max_row;                /* SQLITE_LIMIT_LENGTH */
	int lock_fd;                    /* flock'd <path>.lock: one process per queue */

	pthread_mutex_t mu;
	pthread_cond_t work_cv;         /* wakes the writer */
	pthread_cond_t done_cv;         /* wakes producers waiting for a commit */
	pthread_cond_t notify_cv;       /* queue_set_notify waits for callbacks here */
	bool sync_ready;
	pthread_t writer;
	bool writer_started;

	/* Only the writer thread uses these (and open/close, with no writer). */
	sqlite3 *db;
	sqlite3_stmt *st_begin, *st_commit, *st_rollback;
	sqlite3_stmt *st_insert, *st_delete, *st_attempts, *st_dead;
	sqlite3_stmt *st_probe_put, *st_probe_del;
	sqlite3_stmt *st_version, *st_pickup, *st_unmark, *st_dead_count;
	int64_t data_version;           /* PRAGMA data_version last seen */
	uint32_t *lat;                  /* latencies for on_commit ... */
	size_t lat_cap;                 /* ... at most one per message in a batch */
	unsigned backoff_ms;

	/* The learned hellos (queue_hello.c): their own lock and connection. */
	pthread_mutex_t hello_mu;       /* the list */
	pthread_mutex_t hello_db_mu;    /* hdb */
	sqlite3 *hdb;
	struct hello *hellos;           /* most recently set first */
	size_t nhellos;

	pthread_mutex_t read_mu;        /* guards rdb, st_read and st_reasons */
	sqlite3 *rdb;
	sqlite3_stmt *st_read, *st_reasons;

	/* Everything below is guarded by mu. */
	struct siphash_key hash_key;    /* for sessions and keys: client-chosen names */
	struct htab sessions, leases, keys;
	struct rlist ready;              /* for queue_lease */
	/* Streams: off until queue_stream_init.  Then ready sessions nobody
	 * owns whose head is a websocket row wait on ws_ready, and each
	 * owner's ready sessions on oready[owner]; q->ready_head has the rest,
	 * for queue_lease. */
	bool streams_on;
	unsigned owners, window;
	struct rlist ws_ready;
	struct rlist *oready;           /* owners + 1 of them */
	uint64_t streams;               /* sessions owned */
	uint64_t streams_published;     /* the count in meta 'streams' (writer thread) */
	struct session **heap;          /* S_WAITING sessions, soonest due first */
	size_t heap_len, heap_cap;
	struct entry *live_head, *live_tail;
	struct entry *pending_head, *pending_tail;
	size_t npending;
	int64_t pending_since_ms;       /* when pending last became non-empty */
	struct entry *batch;            /* what the writer is committing */
	const struct entry **batch_order; /* the batch by id (writer; qstore_batch_run) */
	size_t batch_order_cap;
	int64_t last_commit_end_ms;
	int64_t last_sync_ms;           /* the last commit that reached the disk (writer) */
	bool sync_off;                  /* the connection commits without fsync now (writer) */
	int64_t retry_at_ms;            /* next attempt while !writable */
	int64_t next_id;
	uint64_t depth, bytes, in_flight, dead, cache_used;
	uint64_t committed_total, commits_total, commits_synced_total, expired_total;
	uint64_t max_db_pages;
	bool pages_dirty;               /* max_db_pages changed since the writer looked */
	bool writable, closing;
	bool wake;                      /* a message became due: call notify */
	char error[160];
	void (*notify)(void *arg);
	void *notify_arg;
	unsigned notify_running;        /* notify callbacks being called right now */
};

struct hello {
	struct hello *next;
	char *key, *text;
};

/* Unlocks q->mu and, if a message became due meanwhile, calls the notify
 * callback (queue.c). */
void qnotify_unlock(struct queue *q);

/* --- queue_index.c ------------------------------------------------------------------ */

int qidx_init(struct queue *q);
/* Frees every entry, session and key; no other thread may use q. */
void qidx_release(struct queue *q);

struct session *qidx_session_get(struct queue *q, const char *name);
struct session *qidx_session_find(struct queue *q, const char *name);
/* Turns streams on (queue_stream_init); takes oready. */
int qidx_streams_on(struct queue *q, struct rlist *oready, unsigned owners, unsigned window);
void qidx_session_maybe_free(struct queue *q, struct session *s);
void qidx_session_set_ready(struct queue *q, struct session *s, bool front);
void qidx_session_unready(struct queue *q, struct session *s);
void qidx_session_head_changed(struct queue *q, struct session *s);
/* An owned session: ready on its owner's list if it has a message to read
 * and room in its window, else S_OWNED; a head that is not a websocket row
 * goes to queue_lease once nothing is in flight. */
void qidx_stream_settle(struct queue *q, struct session *s);
void qidx_promote_due(struct queue *q, int64_t now);
bool qidx_heap_push(struct queue *q, struct session *s);

struct session *qidx_lease_find(struct queue *q, int64_t id);
void qidx_lease_begin(struct queue *q, struct session *s);
void qidx_lease_end(struct queue *q, struct session *s);

struct apikey *qidx_key_find(struct queue *q, const char *name);
struct apikey *qidx_key_get(struct queue *q, const char *name);
void qidx_key_put(struct queue *q, struct apikey *k);

struct dead_info *qidx_dead_info_create(const char *reason, int status, const char *detail);
void qidx_dead_info_free(struct dead_info *d);
void qidx_entry_free(struct entry *e);
bool qidx_entry_expired(const struct queue *q, const struct entry *e, int64_t wall);

void qidx_live_add(struct queue *q, struct entry *e);
void qidx_live_remove(struct queue *q, struct entry *e);
void qidx_unlink(struct queue *q, struct entry *e, struct entry *prev);
void qidx_commit(struct queue *q, struct entry *e);
/* Adds a committed row.  At start-up rows come in id order and are
 * appended; replayed rows (replayed = true) are placed by id, but never
 * before a session's current head.  *hint carries the place in the list of
 * live entries from one call to the next (start with NULL). */
int qidx_add_row(struct queue *q, const struct qidx_row *row, bool replayed,
                 struct entry **hint);

enum op qidx_op_merge(enum op first, enum op then);
void qidx_op_set(struct queue *q, struct entry *e, enum op op);
void qidx_entry_kill(struct queue *q, struct entry *e, struct entry *prev,
                     struct dead_info *d);
void qidx_expire_head(struct queue *q, struct session *s);
void qidx_waiter_finish(struct entry *e, int result);
void qidx_insert_drop(struct queue *q, struct entry *e, enum op op);
/* Dead letters counted but not committed yet. */
uint64_t qidx_pending_dead(const struct queue *q);

/* --- queue_hello.c ------------------------------------------------------------------ */

/* Opens the hello connection and loads the hellos; after the migration. */
int qhello_open(struct queue *q, char **cause);
void qhello_close(struct queue *q);

/* --- queue_writer.c ----------------------------------------------------------------- */

void *qwriter_main(void *arg);

/* --- queue_store.c ------------------------------------------------------------------ */

int qstore_open(struct queue *q, char **cause);
void qstore_close(struct queue *q);
/* Reads the messages ids[0..n-1]: out[i] and errs[i] (QUEUE_OK, _ENOTFOUND,
 * _ENOMEM or _EIO) for each. */
void qstore_read_messages(struct queue *q, const int64_t *ids, size_t n,
                          struct queue_msg **out, int *errs);
/* A lease's second half: reads in one go each out[i] (i < n, n at most
 * QSTORE_FILL_MAX) that the cache did not hold (NULL), the message ids[i];
 * errs[i] is QUEUE_OK, or why out[i] stays NULL.  256: a read transaction
 * after a commit starts from an empty page cache (and, mapped, unmaps the
 * file), so a drain reads its bodies in as few transactions as it can. */
#define QSTORE_FILL_MAX 256
void qstore_fill_uncached(struct queue *q, const int64_t *ids, size_t n,
                          struct queue_msg **out, int *errs);
/* Runs QSQL_DEAD_REASONS through the read connection and calls fn for each
 * reason (under q->read_mu: fn must not call into the queue).  Returns a
 * queue_err. */
int qstore_dead_reasons(struct queue *q, void (*fn)(void *arg, const char *reason,
                                                     uint64_t count), void *arg);
void qstore_set_max_pages(sqlite3 *db, uint64_t pages);
/* Runs batch in one transaction, fsynced or not (durable); on failure
 * copies the error into err.  Returns an SQLite result code. */
int qstore_batch_run(struct queue *q, const struct entry *batch, bool durable, char *err,
                     size_t len);
/* The test write that tells when a failing disk takes writes again. */
int qstore_probe_run(struct queue *q, char *err, size_t len);
/* True if another connection (the queue CLI) committed since the last call. */
bool qstore_changed(struct queue *q);
/* Loads up to max rows that the CLI moved back into messages (their ids are
 * in the replayed table) into rows[], forgets their ids there, and counts
 * the dead letters, in one transaction.  The caller frees the strings with
 * qstore_rows_free.  Returns an SQLite result code. */
int qstore_pickup(struct queue *q, struct qidx_row *rows, size_t max, size_t *n,
                  uint64_t *dead);
void qstore_rows_free(struct qidx_row *rows, size_t n);

/* Shared with queue_admin.c: an open database, the schema brought up to date
 * (and, the first time, an instance id made) in one transaction. */
int qstore_migrate(sqlite3 *db, const char *path, char instance_id[17], char **cause);
/* Takes the exclusive advisory lock <path>.lock without waiting; returns the
 * descriptor, or -1 with errno EWOULDBLOCK when another process holds it. */
int qstore_lock(const char *path);
int qstore_query_int(sqlite3 *db, const char *sql, int64_t *v);
int qstore_query_text(sqlite3 *db, const char *sql, char *buf, size_t len);
int qstore_step_reset(sqlite3_stmt *st);

#endif
