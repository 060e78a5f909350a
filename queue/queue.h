/*
 * queue.h - the relay's durable message queue.
 *
 * Every message the relay accepts is written here before anything else
 * happens to it.  SQLite in WAL mode holds the rows; one writer thread turns
 * everything submitted within a short window into one transaction (group
 * commit) and only then makes the messages visible to consumers.  Consumers
 * (the forwarders) lease messages so that each session has at most one
 * message in flight (queue_lease), or one consumer at a time with a window
 * of its messages in flight (the streams below), which keeps every
 * session's messages in order while different sessions proceed in
 * parallel.
 *
 * All functions are thread-safe.  Errors are negative enum queue_err values.
 */
#ifndef WATCHRTC_QUEUE_H
#define WATCHRTC_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct queue;

enum queue_err {
	QUEUE_OK = 0,
	QUEUE_EFULL = -1,    /* over max bytes or max messages: back-pressure */
	QUEUE_EIO = -2,      /* SQLite cannot write (disk full, I/O error) */
	QUEUE_ECLOSED = -3,  /* the queue is shutting down */
	QUEUE_ENOMEM = -4,
	QUEUE_EINVAL = -5,
	QUEUE_ECORRUPT = -6, /* the database failed its integrity check */
	QUEUE_ENOTFOUND = -7,
	QUEUE_EBUSY = -8,    /* another process has the database open as its queue */
};

/* A static string naming err ("queue full", ...). */
const char *queue_strerror(int err);

/*
 * One message and everything needed to forward it later.  On queue_put the
 * caller owns every pointer and the queue copies what it needs.  A message
 * returned by queue_lease is one allocation that the caller owns and frees
 * with queue_msg_free.  NULL strings are stored as NULL.
 */
struct queue_msg {
	int64_t id;           /* set by the queue; never reused */
	int64_t received_ms;  /* wall clock at receipt, ms since the epoch */
	const char *session;  /* ordering key: the SDK's sessionId ("" if none) */
	const char *target;   /* upstream path and query: "/trace", "/?apiKey=..." */
	const char *content_type;
	const char *xff;      /* X-Forwarded-For to send upstream */
	const char *peer_ip;
	const char *user_agent;
	const char *origin;
	const char *api_key;  /* for key rejection; NULL if unknown */
	const char *conn_id;  /* websocket connection id, NULL for HTTP */
	int64_t seq;          /* per-connection sequence number, 0 for HTTP */
	uint32_t attempts;    /* delivery attempts before this lease */
	const void *body;
	size_t body_len;
};

/* A deep copy of m in a single allocation (free with queue_msg_free). */
struct queue_msg *queue_msg_dup(const struct queue_msg *m);
void queue_msg_free(struct queue_msg *m);

/* Called on the writer thread after each commit: batch size and, for each
 * message inserted, microseconds from queue_put to the end of the commit. */
typedef void queue_commit_fn(void *arg, size_t batch, const uint32_t *latency_us,
                             size_t n);
/* Called on the writer thread, without queue locks, once each time the
 * database stops taking writes (error says why) and once when it takes them
 * again (error is NULL). */
typedef void queue_writable_fn(void *arg, bool writable, const char *error);

struct queue_options {
	uint64_t max_bytes;        /* body bytes queued; 0 = unlimited */
	uint64_t max_messages;     /* 0 = unlimited */
	uint64_t max_age_ms;       /* older messages are dead-lettered ("expired"); 0 = never */
	unsigned commit_window_ms; /* longest a message waits before its commit starts */
	unsigned commit_batch_max; /* commit early once this many operations wait */
	uint64_t cache_bytes;      /* bodies kept in memory for the consumers */
	queue_commit_fn *on_commit;
	void *on_commit_arg;
	uint64_t max_db_pages;     /* PRAGMA max_page_count; 0 = SQLite's limit.  Lets
	                            * tests simulate a full disk. */
	queue_writable_fn *on_writable;
	void *on_writable_arg;
	/* At open, every websocket connection whose rows have no end (the
	 * relay stopped under it) gets one: close code 1001. */
	bool close_orphans;
};

/* Fills o with the defaults. */
void queue_options_init(struct queue_options *o);

/*
 * Opens (creating if needed) the database at path, takes the lock that keeps
 * other processes from using it as their queue (flock on path.lock:
 * QUEUE_EBUSY), applies the schema, checks integrity (PRAGMA quick_check:
 * QUEUE_ECORRUPT, the cause names the salvage command) and starts the
 * writer thread.  On failure returns an error and, if cause is not NULL,
 * sets *cause to a malloc'd message that the caller frees.
 *
 * While it runs, the writer notices commits by other connections (the
 * queue CLI, queue_admin.h) within a second: dead letters moved back into
 * the queue are scheduled, and the dead-letter count is taken again.
 */
int queue_open(struct queue **out, const char *path, const struct queue_options *o,
               char **cause) __attribute__((warn_unused_result));

/* Commits everything submitted, stops the writer, closes the database.
 * Leased messages that were not acked stay queued.  Accepts NULL. */
void queue_close(struct queue *q);

/* The persistent instance id (hex), stable across restarts of one database. */
const char *queue_instance_id(const struct queue *q);

/*
 * Submits a copy of m.  With wait, returns only after the message is durably
 * committed (fsync'd) or failed.  Without wait, returns once the message is
 * accepted for the next commit; while two commit batches (2 x
 * commit_batch_max operations) already wait, that first waits for a commit,
 * so a producer faster than the disk is slowed to its pace.  QUEUE_EFULL / QUEUE_EIO /
 * QUEUE_ECLOSED mean the message was not taken.  If id is not NULL it receives the message id.
 */
int queue_put(struct queue *q, const struct queue_msg *m, bool wait, int64_t *id)
	__attribute__((warn_unused_result));

/*
 * Leases up to max messages that are due: the head of a session that has
 * nothing in flight and is not waiting for a retry.  Never blocks on other
 * producers.  The caller owns out[0..*n-1] and must settle each with exactly
 * one of queue_ack, queue_retry or queue_dead, then queue_msg_free it.
 */
int queue_lease(struct queue *q, struct queue_msg **out, size_t max, size_t *n);

/* Delivered: the message is deleted and its session's next one is due. */
void queue_ack(struct queue *q, int64_t id);
/* Not delivered: its session waits delay_ms, then the same message is due again. */
void queue_retry(struct queue *q, int64_t id, unsigned delay_ms);
/* Undeliverable: moved to the dead-letter table; its session goes on. */
void queue_dead(struct queue *q, int64_t id, const char *reason, int status,
                const char *detail);
/* Dead-letters every queued message (not leased) whose api_key is key.
 * Returns how many. */
size_t queue_dead_key(struct queue *q, const char *key, const char *reason);

/*
 * fn(arg) is called (from any thread, without queue locks held) whenever a
 * message may have become due, so a consumer can wake from its poll.  When
 * queue_set_notify returns, no call of the callback set before is running
 * any more, so a consumer may free arg after queue_set_notify(q, NULL,
 * NULL).  It must not be called from inside the callback.
 */
void queue_set_notify(struct queue *q, void (*fn)(void *arg), void *arg);
/* Whether queue_lease has something to hand out now (a retry falling due
 * later does not count).  With streams on, most notifications are for the
 * stream owners: the POST consumers ask this before they wake. */
bool queue_lease_ready(struct queue *q);
/* Milliseconds until the next retry falls due, or -1 if none waits. */
long queue_next_due_ms(struct queue *q);

/*
 * Streams: the lease of the websocket forwarder (upstream-protocol =
 * websocket).  A session's websocket messages travel on one upstream
 * websocket, several at a time, and count as delivered only when a ping
 * sent after them is answered.  So a consumer ("owner", 1..owners) takes a
 * whole session and reads its messages in order, up to `window` of them in
 * flight, acks a prefix when a fence is answered, and gives the session
 * back when its upstream connection is gone: whatever was in flight is
 * read again, in order, by whoever takes the session next.
 *
 * Rows that are not websocket messages (conn_id NULL: fallback POSTs) keep
 * their place in the session's order: a stream session whose next message
 * is one waits until nothing is in flight, then that message goes to
 * queue_lease (the POST forwarder) while the owner keeps the session; after
 * its ack the owner reads on.  queue_lease never hands out websocket rows
 * once streams are on.
 *
 * A websocket connection's end is a row of its own after its last message:
 * content_type QUEUE_CT_WS_CLOSE, conn_id set, body the close frame's
 * payload (two bytes of code, big-endian, then the reason).
 */
#define QUEUE_CT_WS_CLOSE "application/x-websocket-close"

/* Whether m is the end of a websocket connection; *code (if not NULL) gets
 * its close code (1005 if the body has none). */
bool queue_msg_is_close(const struct queue_msg *m, unsigned *code);

/* Turns streams on, once, before any consumer runs: owners consumers,
 * window messages in flight per session (>= 1).  QUEUE_EINVAL otherwise. */
int queue_stream_init(struct queue *q, unsigned owners, unsigned window);

/*
 * Up to max websocket messages for owner, in order within each session:
 * first from sessions it owns that have room in their window, then from
 * sessions nobody owns (which it then owns).  A message's attempts says how
 * often it was in flight before (> 0: this is a resend).  The caller owns
 * out[0..*n-1] and frees them with queue_msg_free; they are settled with
 * queue_stream_ack / queue_stream_release / queue_stream_dead.
 */
int queue_stream_lease(struct queue *q, unsigned owner, struct queue_msg **out, size_t max,
                       size_t *n);
/* Deletes the messages of session in flight with ids <= upto. */
void queue_stream_ack(struct queue *q, const char *session, int64_t upto);
/* Dead-letters the messages of session in flight with ids <= upto (reason,
 * status, detail as queue_dead). */
void queue_stream_dead(struct queue *q, const char *session, int64_t upto, const char *reason,
                       int status, const char *detail);
/* The owner lets go of session: its messages in flight are due again (each
 * one's attempts + 1) after delay_ms, for any owner. */
void queue_stream_release(struct queue *q, const char *session, unsigned delay_ms);

/*
 * The hello learned per API key (a JSON object as text), kept in the
 * database so that a restart remembers it.  queue_hello_get returns a
 * malloc'd copy or NULL if none is known.  queue_hello_set stores text for
 * key if it differs from what is known (writing it through a connection of
 * its own: call it when a hello changes, not per message); returns a
 * queue_err.  At most QUEUE_HELLO_KEYS keys are kept, the oldest dropped.
 */
#define QUEUE_HELLO_KEYS 4096
#define QUEUE_HELLO_MAX 8192    /* bytes of one hello */
char *queue_hello_get(struct queue *q, const char *key);
int queue_hello_set(struct queue *q, const char *key, const char *text);

/* Changes max_db_pages (see queue_options) before the writer's next
 * transaction; 0 restores SQLite's limit.  A test hook for a full disk. */
void queue_set_max_db_pages(struct queue *q, uint64_t pages);

struct queue_stats {
	uint64_t depth;          /* messages queued, leased ones included */
	uint64_t bytes;          /* their body bytes */
	uint64_t in_flight;      /* leased right now */
	uint64_t waiting_retry;  /* sessions whose head waits for a retry */
	uint64_t dead;           /* rows in the dead-letter table */
	int64_t oldest_ms;       /* received_ms of the oldest queued message, 0 if empty */
	uint64_t max_bytes, max_messages;
	bool writable;           /* false while SQLite writes fail */
	char error[160];         /* the last write error while !writable */
	uint64_t committed_total, commits_total, expired_total;
	uint64_t commits_synced_total;  /* of commits_total: fsynced (those with new messages) */
	uint64_t streams;        /* sessions a stream consumer owns */
};
void queue_stats(struct queue *q, struct queue_stats *st);

#define QUEUE_REASON_MAX 128    /* bytes of a dead letter's reason that are kept */

struct queue_dead_reason {
	char reason[QUEUE_REASON_MAX + 1];
	uint64_t count;
};

/*
 * The committed dead letters by reason, the most common first, into
 * out[0..*n-1].  At most max entries (max >= 1): when there are more
 * reasons, the least common ones are summed under the reason "other", so a
 * caller can label a metric with the reasons and keep the number of labels
 * bounded.  Reasons are distinct.  It is a GROUP BY over the index on
 * reason, through the read connection that queue_lease also uses: a scan of
 * that index (about 0.1 s per million dead letters), so call it at a
 * scrape's pace, not per message.  QUEUE_EINVAL if max is 0, QUEUE_EIO (or
 * QUEUE_ECORRUPT) if SQLite cannot read.
 */
int queue_dead_reasons(struct queue *q, struct queue_dead_reason *out, size_t max, size_t *n)
	__attribute__((warn_unused_result));

#endif
