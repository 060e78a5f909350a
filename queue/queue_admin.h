/*
 * queue_admin.h - what `watchrtc-relay queue ...` does to a queue database:
 * report on it, move dead letters back into the queue or delete them, check
 * its integrity, and salvage what is readable from a corrupt file.
 *
 * Reports, replays and purges work while a relay runs on the same database:
 * SQLite's WAL mode lets another process read, and write in short
 * transactions (a relay waits up to its busy timeout for them).  A running
 * relay notices the commit within a second (queue.h): replayed messages are
 * scheduled without a restart, and its dead-letter count follows a purge.
 * Salvage needs the relay stopped; it says so if it is not.
 *
 * Errors are negative enum queue_err values; *cause, when not NULL, gets a
 * malloc'd message that the caller frees.
 */
#ifndef WATCHRTC_QUEUE_ADMIN_H
#define WATCHRTC_QUEUE_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct queue_admin;

/* Opens the existing database at path (QUEUE_ENOTFOUND if there is none).
 * With write, the schema is brought up to date first, as a relay would. */
int queue_admin_open(struct queue_admin **out, const char *path, bool write, char **cause)
	__attribute__((warn_unused_result));
/* Accepts NULL. */
void queue_admin_close(struct queue_admin *a);

/* True if a process (a relay) holds the queue's lock on path right now. */
bool queue_admin_in_use(const char *path);

struct queue_admin_stats {
	uint64_t depth;           /* messages queued */
	uint64_t bytes;           /* their body bytes */
	uint64_t sessions;        /* sessions with messages queued */
	int64_t oldest_ms;        /* received_ms of the oldest, 0 if none */
	uint64_t dead;            /* dead letters */
	int64_t schema_version;
	char instance_id[17];     /* "" if the database has none yet */
	/* Sessions the running relay had taken for its upstream websockets, as
	 * it last wrote (within a second); meaningless if no relay runs. */
	uint64_t sessions_upstream;
};
int queue_admin_stats(struct queue_admin *a, struct queue_admin_stats *st, char **cause)
	__attribute__((warn_unused_result));

/* One queued message or dead letter, as the reports show it.  Strings point
 * into the database's answer and last only for the callback. */
struct queue_admin_row {
	int64_t id, received_ms;
	const char *session, *target;
	uint32_t attempts;
	uint64_t body_len;
	uint64_t queued;          /* retry heads: messages queued in its session */
	int64_t dead_ms;          /* dead letters: when, and why */
	const char *reason, *detail;
	int status;               /* the upstream's answer, 0 if none */
};
/* A report callback; a non-zero return stops the report. */
typedef int queue_admin_row_fn(void *arg, const struct queue_admin_row *row);

/* The head of every session that waits for a retry (attempts > 0), oldest
 * first; limit 0 means all. */
int queue_admin_retry_heads(struct queue_admin *a, uint64_t limit, queue_admin_row_fn *fn,
                            void *arg, char **cause) __attribute__((warn_unused_result));
/* Dead letters by reason: fn gets row->reason and, in row->queued, the count. */
int queue_admin_dead_reasons(struct queue_admin *a, queue_admin_row_fn *fn, void *arg,
                             char **cause) __attribute__((warn_unused_result));
/* Dead letters in id order; limit 0 means all. */
int queue_admin_dead_list(struct queue_admin *a, uint64_t limit, queue_admin_row_fn *fn,
                          void *arg, char **cause) __attribute__((warn_unused_result));

/*
 * Moves the dead letters ids[0..n-1] (every one when n is 0) back into the
 * queue in one transaction.  Each keeps its id, so its place in its session
 * (ids give the order) and its Idempotency-Key; its attempts start again at
 * 0.  *moved gets how many moved; ids that are not dead letters are skipped.
 * Needs a handle opened with write.
 */
int queue_admin_dead_replay(struct queue_admin *a, const int64_t *ids, size_t n,
                            uint64_t *moved, char **cause) __attribute__((warn_unused_result));
/* Deletes the dead letters ids[0..n-1] (every one when n is 0). */
int queue_admin_dead_purge(struct queue_admin *a, const int64_t *ids, size_t n,
                           uint64_t *purged, char **cause) __attribute__((warn_unused_result));

/* Runs PRAGMA integrity_check.  *ok says whether it passed; report gets
 * "ok" or the first problems, one a line. */
int queue_admin_check(struct queue_admin *a, bool *ok, char *report, size_t len, char **cause)
	__attribute__((warn_unused_result));

struct queue_admin_salvage {
	uint64_t messages;         /* queued messages copied */
	uint64_t dead;             /* dead letters copied */
	uint64_t read_errors;      /* places where reading failed: rows there are lost */
	bool kept_instance_id;     /* false: a new one was made (see below) */
	char output[4096];         /* the database written */
	char moved_to[4096];       /* where the old file went ("" with an output) */
};

/*
 * Copies every row it can read from the database at path (possibly corrupt)
 * into a new database.  Without output, the new database takes path's place
 * and the old file (with its -wal and -shm) is renamed
 * path.corrupt-YYYYMMDDTHHMMSSZ; with output, the new database is written
 * there (it must not exist) and path is left alone.  The instance id is kept
 * only if the old file still tells the highest id ever used: otherwise a new
 * message could reuse a delivered one's Idempotency-Key.  QUEUE_EBUSY if a
 * relay runs on path.
 */
int queue_admin_salvage(const char *path, const char *output, struct queue_admin_salvage *res,
                        char **cause) __attribute__((warn_unused_result));

#endif
