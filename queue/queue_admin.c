/*
 * queue_admin.c - reports on a queue database, dead-letter replay and
 * purge, and the integrity check, for the queue CLI (queue_admin.h).
 * Salvage is in queue_salvage.c.
 *
 * Each call is one transaction, short enough that a relay writing beside it
 * waits for it (busy timeout) rather than failing.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue_admin.h"
#include "queue_internal.h"
#include "schema.h"

#define INTEGRITY_MAX_ERRORS 100    /* problems integrity_check reports at most */

struct queue_admin {
	sqlite3 *db;
	char *path;
};

static int fail(struct queue_admin *a, char **cause, int rc, const char *what)
{
	int err = (rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB ? QUEUE_ECORRUPT
	        : (rc & 0xff) == SQLITE_BUSY ? QUEUE_EBUSY : QUEUE_EIO;

	return cause_set(cause, err, "queue database %s: %s: %s", a->path, what,
	              sqlite3_errmsg(a->db));
}

int queue_admin_open(struct queue_admin **out, const char *path, bool write, char **cause)
{
	struct queue_admin *a = NULL;
	char instance[17] = "";
	struct stat sb;
	int rc, err = QUEUE_OK;

	if (cause)
		*cause = NULL;
	*out = NULL;
	/* Never create one: a mistyped --state-dir must not look empty. */
	if (stat(path, &sb) < 0)
		return cause_set(cause, errno == ENOENT ? QUEUE_ENOTFOUND : QUEUE_EIO,
		              "no queue database at %s: %s", path, strerror(errno));
	a = calloc(1, sizeof *a);
	if (!a || !(a->path = strdup(path))) {
		err = cause_set(cause, QUEUE_ENOMEM, "out of memory");
		goto out;
	}
	rc = sqlite3_open_v2(path, &a->db, SQLITE_OPEN_READWRITE, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(a->db, BUSY_TIMEOUT_MS);
	if (rc != SQLITE_OK) {
		err = fail(a, cause, rc, "open");
		goto out;
	}
	if (write && (err = qstore_migrate(a->db, path, instance, cause)) != QUEUE_OK)
		goto out;
	*out = a;
	a = NULL;
out:
	queue_admin_close(a);
	return err;
}

void queue_admin_close(struct queue_admin *a)
{
	if (!a)
		return;
	(void)sqlite3_close(a->db);
	free(a->path);
	free(a);
}

bool queue_admin_in_use(const char *path)
{
	int fd = qstore_lock(path);

	if (fd >= 0) {
		close(fd);
		return false;
	}
	return errno == EWOULDBLOCK;
}

int queue_admin_stats(struct queue_admin *a, struct queue_admin_stats *st, char **cause)
{
	sqlite3_stmt *s = NULL;
	const char *what = "begin";
	int rc;

	memset(st, 0, sizeof *st);
	/* One read transaction: the figures describe one moment. */
	rc = sqlite3_exec(a->db, "BEGIN", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		goto out;
	what = "count messages";
	rc = sqlite3_prepare_v2(a->db, "SELECT count(*), total(length(body)), "
	                        "coalesce(min(received_ms), 0), count(DISTINCT session) "
	                        "FROM messages", -1, &s, NULL);
	if (rc != SQLITE_OK)
		goto out;
	rc = sqlite3_step(s);
	if (rc != SQLITE_ROW)
		goto out;
	st->depth = (uint64_t)sqlite3_column_int64(s, 0);
	st->bytes = (uint64_t)sqlite3_column_double(s, 1);
	st->oldest_ms = sqlite3_column_int64(s, 2);
	st->sessions = (uint64_t)sqlite3_column_int64(s, 3);
	what = "count dead letters";
	rc = qstore_query_int(a->db, "SELECT count(*) FROM dead_letters", (int64_t *)&st->dead);
	if (rc != SQLITE_OK)
		goto out;
	what = "schema version";
	rc = qstore_query_int(a->db, "PRAGMA user_version", &st->schema_version);
	if (rc != SQLITE_OK)
		goto out;
	what = "instance id";
	rc = qstore_query_text(a->db, "SELECT value FROM meta WHERE key = 'instance_id'",
	                       st->instance_id, sizeof st->instance_id);
	if (rc != SQLITE_OK)
		goto out;
	what = "upstream sessions";
	rc = qstore_query_int(a->db,
	                      "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'streams'",
	                      (int64_t *)&st->sessions_upstream);
out:
	if (rc != SQLITE_OK && rc != SQLITE_ROW)
		rc = fail(a, cause, rc, what);
	else
		rc = QUEUE_OK;
	sqlite3_finalize(s);
	if (!sqlite3_get_autocommit(a->db))
		(void)sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
	return rc;
}

/* Steps st and calls fn with row(st) for each row. */
static int report(struct queue_admin *a, sqlite3_stmt *st,
                  void (*row)(sqlite3_stmt *, struct queue_admin_row *),
                  queue_admin_row_fn *fn, void *arg, char **cause, const char *what)
{
	struct queue_admin_row r;
	int rc;

	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		memset(&r, 0, sizeof r);
		row(st, &r);
		if (fn(arg, &r) != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	rc = rc == SQLITE_DONE ? QUEUE_OK : fail(a, cause, rc, what);
	sqlite3_finalize(st);
	return rc;
}

/* The columns both reports start with: id, received_ms, session, target,
 * attempts, length(body). */
static void msg_row(sqlite3_stmt *st, struct queue_admin_row *r)
{
	r->id = sqlite3_column_int64(st, 0);
	r->received_ms = sqlite3_column_int64(st, 1);
	r->session = (const char *)sqlite3_column_text(st, 2);
	r->target = (const char *)sqlite3_column_text(st, 3);
	r->attempts = (uint32_t)sqlite3_column_int64(st, 4);
	r->body_len = (uint64_t)sqlite3_column_int64(st, 5);
}

static void head_row(sqlite3_stmt *st, struct queue_admin_row *r)
{
	msg_row(st, r);
	r->queued = (uint64_t)sqlite3_column_int64(st, 6);
}

int queue_admin_retry_heads(struct queue_admin *a, uint64_t limit, queue_admin_row_fn *fn,
                            void *arg, char **cause)
{
	sqlite3_stmt *st = NULL;
	int rc;

	/* A session's head is its lowest id; the relay persists a failed
	 * attempt in its next commit. */
	rc = sqlite3_prepare_v2(a->db,
	                        "WITH heads AS (SELECT min(id) AS id, count(*) AS queued "
	                        "FROM messages GROUP BY session) "
	                        "SELECT m.id, m.received_ms, m.session, m.target, m.attempts, "
	                        "length(m.body), h.queued FROM heads h JOIN messages m "
	                        "ON m.id = h.id WHERE m.attempts > 0 ORDER BY m.id LIMIT ?1",
	                        -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(a, cause, rc, "retry heads");
	sqlite3_bind_int64(st, 1, limit > 0 && limit < INT64_MAX ? (int64_t)limit : -1);
	return report(a, st, head_row, fn, arg, cause, "retry heads");
}

static void reason_row(sqlite3_stmt *st, struct queue_admin_row *r)
{
	r->reason = (const char *)sqlite3_column_text(st, 0);
	r->queued = (uint64_t)sqlite3_column_int64(st, 1);
}

int queue_admin_dead_reasons(struct queue_admin *a, queue_admin_row_fn *fn, void *arg,
                             char **cause)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(a->db, QSQL_DEAD_REASONS, -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(a, cause, rc, "dead letters by reason");
	return report(a, st, reason_row, fn, arg, cause, "dead letters by reason");
}

static void dead_row(sqlite3_stmt *st, struct queue_admin_row *r)
{
	msg_row(st, r);
	r->dead_ms = sqlite3_column_int64(st, 6);
	r->reason = (const char *)sqlite3_column_text(st, 7);
	r->status = sqlite3_column_int(st, 8);
	r->detail = (const char *)sqlite3_column_text(st, 9);
}

int queue_admin_dead_list(struct queue_admin *a, uint64_t limit, queue_admin_row_fn *fn,
                          void *arg, char **cause)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_prepare_v2(a->db, "SELECT id, received_ms, session, target, attempts, "
	                        "length(body), dead_ms, reason, status, detail FROM dead_letters "
	                        "ORDER BY id LIMIT ?1", -1, &st, NULL);
	if (rc != SQLITE_OK)
		return fail(a, cause, rc, "dead letters");
	sqlite3_bind_int64(st, 1, limit > 0 && limit < INT64_MAX ? (int64_t)limit : -1);
	return report(a, st, dead_row, fn, arg, cause, "dead letters");
}

/*
 * Runs the statements of sql (one per id, or with ?1 unbound for all) in one
 * transaction and adds the changes of the last one to *changed.  Each
 * statement takes the id as ?1; "all" statements have no WHERE on it.
 */
static int move_rows(struct queue_admin *a, const char *const *sql_one,
                     const char *const *sql_all, size_t nsql, const int64_t *ids, size_t n,
                     uint64_t *changed, char **cause, const char *what)
{
	sqlite3_stmt *st[4] = { NULL, NULL, NULL, NULL };
	size_t i, k;
	int rc;

	*changed = 0;
	rc = sqlite3_exec(a->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	for (k = 0; k < nsql && rc == SQLITE_OK; k++)
		rc = sqlite3_prepare_v2(a->db, n > 0 ? sql_one[k] : sql_all[k], -1, &st[k], NULL);
	for (i = 0; rc == SQLITE_OK && i < (n > 0 ? n : 1); i++) {
		for (k = 0; k < nsql && rc == SQLITE_OK; k++) {
			if (n > 0)
				sqlite3_bind_int64(st[k], 1, ids[i]);
			rc = qstore_step_reset(st[k]);
		}
		if (rc == SQLITE_OK)
			*changed += (uint64_t)sqlite3_changes(a->db);
	}
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(a->db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		*changed = 0;
		rc = fail(a, cause, rc, what);
		if (!sqlite3_get_autocommit(a->db))
			(void)sqlite3_exec(a->db, "ROLLBACK", NULL, NULL, NULL);
	}
	for (k = 0; k < nsql; k++)
		sqlite3_finalize(st[k]);
	return rc;
}

#define DEAD_COLUMNS "id, received_ms, session, target, content_type, xff, peer_ip, " \
	"user_agent, origin, api_key, conn_id, seq"

int queue_admin_dead_replay(struct queue_admin *a, const int64_t *ids, size_t n,
                            uint64_t *moved, char **cause)
{
	/* The DELETE goes last: its changes are what moved. */
	static const char *const one[] = {
		"INSERT INTO messages (" DEAD_COLUMNS ", attempts, body) SELECT " DEAD_COLUMNS
		", 0, body FROM dead_letters WHERE id = ?1",
		"INSERT OR IGNORE INTO replayed (id) SELECT id FROM dead_letters WHERE id = ?1",
		"DELETE FROM dead_letters WHERE id = ?1",
	};
	static const char *const all[] = {
		"INSERT INTO messages (" DEAD_COLUMNS ", attempts, body) SELECT " DEAD_COLUMNS
		", 0, body FROM dead_letters ORDER BY id",
		"INSERT OR IGNORE INTO replayed (id) SELECT id FROM dead_letters",
		"DELETE FROM dead_letters",
	};

	return move_rows(a, one, all, 3, ids, n, moved, cause, "replay dead letters");
}

int queue_admin_dead_purge(struct queue_admin *a, const int64_t *ids, size_t n,
                           uint64_t *purged, char **cause)
{
	static const char *const one[] = { "DELETE FROM dead_letters WHERE id = ?1" };
	static const char *const all[] = { "DELETE FROM dead_letters" };

	return move_rows(a, one, all, 1, ids, n, purged, cause, "purge dead letters");
}

int queue_admin_check(struct queue_admin *a, bool *ok, char *report_buf, size_t len,
                      char **cause)
{
	sqlite3_stmt *st = NULL;
	size_t used = 0;
	char sql[64];
	int rc;

	*ok = false;
	report_buf[0] = '\0';
	snprintf(sql, sizeof sql, "PRAGMA integrity_check(%d)", INTEGRITY_MAX_ERRORS);
	rc = sqlite3_prepare_v2(a->db, sql, -1, &st, NULL);
	while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *line = (const char *)sqlite3_column_text(st, 0);
		int w = snprintf(report_buf + used, len - used, "%s%s", used > 0 ? "\n" : "",
(		                 line) ? line : "");

		if (w > 0)
			used += (size_t)w < len - used ? (size_t)w : len - used - 1;
		rc = SQLITE_OK;
	}
	sqlite3_finalize(st);
	if (rc == SQLITE_DONE) {
		*ok = strcmp(report_buf, "ok") == 0;
		return QUEUE_OK;
	}
	/* A file too damaged to check at all is a failed check. */
	if ((rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB) {
		snprintf(report_buf, len, "%s", sqlite3_errmsg(a->db));
		return QUEUE_OK;
	}
	return fail(a, cause, rc, "integrity check");
}
