/*
 * queue_store.c - the queue's SQLite side: opening and checking the
 * database, the schema, the writer's prepared statements and transactions,
 * the reader that fetches bodies that are not cached, and what the writer
 * reads back after the queue CLI changed the database.
 *
 * Every operation a batch runs is idempotent (INSERT OR REPLACE with an
 * explicit id, DELETE by id, UPDATE to a value), so a batch whose COMMIT
 * failed, even ambiguously, can run again.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "queue_internal.h"
#include "schema.h"

/* Every websocket connection whose last row is not its end gets one after
 * it: code 1001 ("going away"), as if the client had left, since the relay
 * that held it is gone.  The row copies the connection's metadata. */
#define QSQL_CLOSE_ORPHANS \
	"INSERT INTO messages (received_ms, session, target, content_type, xff, peer_ip, " \
	"user_agent, origin, api_key, conn_id, seq, attempts, body) " \
	"SELECT m.received_ms, m.session, m.target, '" QUEUE_CT_WS_CLOSE "', m.xff, " \
	"m.peer_ip, m.user_agent, m.origin, m.api_key, m.conn_id, m.seq + 1, 0, X'03E9' " \
	"FROM messages m WHERE m.id IN (SELECT max(id) FROM messages WHERE conn_id IS NOT NULL " \
	"GROUP BY conn_id) AND m.content_type IS NOT '" QUEUE_CT_WS_CLOSE "' ORDER BY m.id"
#define PROBE_BYTES 65536       /* the test write while the disk fails */
#define PAGES_UNLIMITED 1073741823 /* SQLITE_MAX_PAGE_COUNT */

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

/* What to tell an operator whose database is corrupt: the command that
 * moves it aside and keeps what can be read. */
static int corrupt_cause(char **cause, const char *path, const char *what)
{
	char dir[PATH_MAX];

	snprintf(dir, sizeof dir, "%s", path);
	return cause_set(
		cause, QUEUE_ECORRUPT,
		"queue database %s is corrupt (%s): stop here and run "
		"`watchrtc-relay queue --state-dir %s salvage`, which keeps every readable "
		"message and moves the bad file aside",
		path, what, dirname(dir));
}

/* Turns an SQLite failure during queue_open into an error and a cause that
 * says what to do about it. */
static int open_fail(const char *path, sqlite3 *db, char **cause, int rc, const char *what)
{
	int err = sql_to_err(rc);
	const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
	char buf[256];

	if (err == QUEUE_ECORRUPT) {
		snprintf(buf, sizeof buf, "%s: %s", what, msg);
		return corrupt_cause(cause, path, buf);
	}
	return cause_set(cause, err, "queue database %s: %s: %s", path, what, msg);
}

/* Prepares sql and steps it once: SQLITE_ROW with *st on the first row,
 * SQLITE_DONE if there is none, or the error.  The caller finalizes *st
 * whatever the result. */
static int query_first_row(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
	int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);

	return rc == SQLITE_OK ? sqlite3_step(*st) : rc;
}

/* Runs sql and copies the first column of its first row into buf ("" if
 * there is none). */
int qstore_query_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
	sqlite3_stmt *st = NULL;
	int rc = query_first_row(db, sql, &st);

	buf[0] = '\0';
	if (rc == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(st, 0);

		snprintf(buf, len, "%s", t ? (const char *)t : "");
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Runs sql and stores the first column of its first row (0 if none or NULL). */
int qstore_query_int(sqlite3 *db, const char *sql, int64_t *v)
{
	sqlite3_stmt *st = NULL;
	int rc = query_first_row(db, sql, &st);

	*v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Steps a prepared statement that returns no rows and makes it reusable. */
int qstore_step_reset(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int qstore_random_hex(char *out, size_t nbytes)
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

void qstore_set_max_pages(sqlite3 *db, uint64_t pages)
{
	char sql[64];

	snprintf(sql, sizeof sql, "PRAGMA max_page_count = %" PRIu64,
	         pages > 0 ? pages : (uint64_t)PAGES_UNLIMITED);
	(void)sqlite3_exec(db, sql, NULL, NULL, NULL);
}

int qstore_lock(const char *path)
{
	char lock[PATH_MAX];
	int fd;

	if (snprintf(lock, sizeof lock, "%s.lock", path) >= (int)sizeof lock) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = open(lock, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* Opens the write connection, checks the file, and sets it up: WAL, every
 * commit fsync'd, no zeroing of deleted content. */
static int db_open_writer(struct queue *q, char **cause)
{
	char buf[256], *p;
	int fd, rc;

	/* One process per queue: a second relay on the same state directory
	 * would send every message twice and race the first one's deletes. */
	q->lock_fd = qstore_lock(q->path);
	if (q->lock_fd < 0)
		return cause_set(cause, errno == EWOULDBLOCK ? QUEUE_EBUSY : QUEUE_EIO,
		              "queue database %s: %s", q->path, errno == EWOULDBLOCK ?
		              "in use by another process (a relay on the same state directory?)" :
		              strerror(errno));
	/* SQLite would create the file 0644 less the umask; it holds client
	 * data and API keys.  SQLite gives -wal and -shm the mode of the
	 * database file. */
	fd = open(q->path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return cause_set(cause, QUEUE_EIO, "queue database %s: %s", q->path,
		                 errno == ELOOP ? "a symlink (refused: the relay may run as root)" :
		              strerror(errno));
	close(fd);

	rc = sqlite3_open_v2(q->path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX |
	                     SQLITE_OPEN_NOFOLLOW, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
	if (rc != SQLITE_OK)
		return open_fail(q->path, q->db, cause, rc, "open");

	rc = qstore_query_text(q->db, "PRAGMA quick_check", buf, sizeof buf);
	if (rc != SQLITE_OK)
		return open_fail(q->path, q->db, cause, rc, "quick_check");
	if (strcmp(buf, "ok") != 0) {
		for (p = buf; *p != '\0'; p++)
			if (*p == '\n')
				*p = ' '; /* quick_check reports one problem a line */
		return corrupt_cause(cause, q->path, buf);
	}

	/* Before WAL mode: after it, the page size of a new file is fixed. */
	rc = sqlite3_exec(q->db, "PRAGMA page_size = " QSTORE_PAGE_SIZE, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return open_fail(q->path, q->db, cause, rc, "page_size");
	rc = qstore_query_text(q->db, "PRAGMA journal_mode = WAL", buf, sizeof buf);
	if (rc != SQLITE_OK)
		return open_fail(q->path, q->db, cause, rc, "journal_mode");
	if (strcmp(buf, "wal") != 0)
		return cause_set(cause, QUEUE_EIO, "queue database %s: cannot use WAL mode "
		              "(journal_mode is %s)", q->path, buf);
	/* FULL: a commit is on disk before a producer hears about it.
	 * secure_delete is on in Debian's build and doubles the cost of an ack. */
	rc = sqlite3_exec(q->db, "PRAGMA synchronous = FULL; PRAGMA secure_delete = OFF",
	                  NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return open_fail(q->path, q->db, cause, rc, "pragma");
	if (q->opt.max_db_pages > 0)
		qstore_set_max_pages(q->db, q->opt.max_db_pages);
	q->max_db_pages = q->opt.max_db_pages;
	q->max_row = sqlite3_limit(q->db, SQLITE_LIMIT_LENGTH, -1);
	return QUEUE_OK;
}

int qstore_migrate(sqlite3 *db, const char *path, char instance_id[17], char **cause)
{
	const char *what = "read schema version";
	char sql[64], fresh_id[17];
	int latest = schema_migrations[schema_migration_count - 1].version;
	sqlite3_stmt *st = NULL;
	int64_t have;
	unsigned i;
	int rc, err = QUEUE_OK;

	if (qstore_random_hex(fresh_id, 8) != 0)
		return cause_set(cause, QUEUE_EIO, "cannot read /dev/urandom: %s", strerror(errno));

	rc = qstore_query_int(db, "PRAGMA user_version", &have);
	if (rc != SQLITE_OK)
		goto out;
	if (have > latest)
		return cause_set(cause, QUEUE_EINVAL,
		                 "queue database %s has schema version %" PRId64
		                 ", newer than this relay knows (%d): run a newer relay",
		                 path, have, latest);

	what = "begin";
	rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		goto out;
	for (i = 0; i < schema_migration_count; i++) {
		const struct schema_migration *m = &schema_migrations[i];

		if (m->version <= have)
			continue;
		what = m->name;
		rc = sqlite3_exec(db, m->sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out;
		snprintf(sql, sizeof sql, "PRAGMA user_version = %d", m->version);
		rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out;
	}

	what = "instance id";
	rc = qstore_query_text(db, "SELECT value FROM meta WHERE key = 'instance_id'",
	                       instance_id, 17);
	if (rc != SQLITE_OK)
		goto out;
	if (instance_id[0] == '\0') {
		memcpy(instance_id, fresh_id, sizeof fresh_id);
		rc = sqlite3_prepare_v2(db,
		                        "INSERT INTO meta (key, value) VALUES ('instance_id', ?1)",
		                        -1, &st, NULL);
		if (rc != SQLITE_OK)
			goto out;
		sqlite3_bind_text(st, 1, instance_id, -1, SQLITE_STATIC);
		rc = qstore_step_reset(st);
		if (rc != SQLITE_OK)
			goto out;
	}

	what = "commit";
	rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
out:
	if (rc != SQLITE_OK) {
		err = open_fail(path, db, cause, rc, what);
		if (!sqlite3_get_autocommit(db))
			(void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
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
		{ &q->st_version, "PRAGMA data_version" },
		{ &q->st_pickup,
		  "SELECT id, session, length(body), received_ms, attempts, api_key, "
		  "conn_id IS NOT NULL FROM messages "
		  "WHERE id IN (SELECT id FROM replayed ORDER BY id LIMIT ?1) ORDER BY id" },
		{ &q->st_unmark, "DELETE FROM replayed WHERE id <= ?1" },
		{ &q->st_dead_count, "SELECT count(*) FROM dead_letters" },
	};
	size_t i;
	int rc;

	for (i = 0; i < sizeof list / sizeof list[0]; i++) {
		rc = sqlite3_prepare_v3(q->db, list[i].sql, -1, SQLITE_PREPARE_PERSISTENT,
		                        list[i].st, NULL);
		if (rc != SQLITE_OK)
			return open_fail(q->path, q->db, cause, rc, "prepare");
	}
	return QUEUE_OK;
}

/* Opens the read-only connection queue_lease reads uncached bodies with,
 * and the metrics count dead letters with. */
static int db_open_reader(struct queue *q, char **cause)
{
	int rc;

	rc = sqlite3_open_v2(q->path, &q->rdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX |
	                     SQLITE_OPEN_NOFOLLOW, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(q->rdb, BUSY_TIMEOUT_MS);
	/* The reader's page cache starts empty after each of the writer's
	 * commits; mapped, the pages it reads again are not copied again. */
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(q->rdb, "PRAGMA mmap_size = " QSTORE_READ_MMAP, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v3(q->rdb,
		                        "SELECT received_ms, session, target, content_type, xff, "
		                        "peer_ip, user_agent, origin, api_key, conn_id, seq, body "
		                        "FROM messages WHERE id = ?1",
		                        -1, SQLITE_PREPARE_PERSISTENT, &q->st_read, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v3(q->rdb, QSQL_DEAD_REASONS, -1, SQLITE_PREPARE_PERSISTENT,
		                        &q->st_reasons, NULL);
	if (rc != SQLITE_OK)
		return open_fail(q->path, q->rdb, cause, rc, "open reader");
	return QUEUE_OK;
}

/* One row of SELECT id, session, length(body), received_ms, attempts,
 * api_key, conn_id IS NOT NULL; the strings point into st until its next
 * step. */
static void row_from(sqlite3_stmt *st, struct qidx_row *row)
{
	row->id = sqlite3_column_int64(st, 0);
	row->session = (const char *)sqlite3_column_text(st, 1);
	row->body_len = (uint64_t)sqlite3_column_int64(st, 2);
	row->received_ms = sqlite3_column_int64(st, 3);
	row->attempts = (uint32_t)sqlite3_column_int64(st, 4);
	row->api_key = (const char *)sqlite3_column_text(st, 5);
	row->ws = sqlite3_column_int(st, 6) != 0;
}

/* Loads the next id, the dead-letter count and the index of queued messages.
 * Rows the CLI replayed while no relay ran are loaded like the others. */
static int index_load(struct queue *q, char **cause)
{
	struct qidx_row row;
	sqlite3_stmt *st = NULL;
	const char *what = "next id";
	int64_t v;
	int rc, err = QUEUE_OK;

	/* Before the next id is taken: the ends get ids of their own. */
	if (q->opt.close_orphans) {
		what = "end orphaned connections";
		rc = sqlite3_exec(q->db, QSQL_CLOSE_ORPHANS, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			goto out;
	}
	what = "next id";
	/* An id is never reused: not after the table empties (sqlite_sequence
	 * remembers) and not after a message moved to dead_letters. */
	rc = qstore_query_int(q->db, "SELECT max(x) FROM (SELECT seq AS x FROM sqlite_sequence "
	                      "WHERE name = 'messages' UNION ALL SELECT max(id) FROM messages "
	                      "UNION ALL SELECT max(id) FROM dead_letters)", &v);
	if (rc != SQLITE_OK)
		goto out;
	q->next_id = v + 1;
	what = "count dead letters";
	rc = qstore_query_int(q->db, "SELECT count(*) FROM dead_letters", &v);
	if (rc != SQLITE_OK)
		goto out;
	q->dead = (uint64_t)v;
	what = "forget replayed ids";
	rc = sqlite3_exec(q->db, "DELETE FROM replayed", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		goto out;

	what = "load messages";
	rc = sqlite3_prepare_v2(q->db, "SELECT id, session, length(body), received_ms, "
	                        "attempts, api_key, conn_id IS NOT NULL FROM messages ORDER BY id",
	                        -1, &st, NULL);
	if (rc != SQLITE_OK)
		goto out;
	/* No other thread exists yet: the index needs no lock here. */
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		row_from(st, &row);
		err = qidx_add_row(q, &row, false, NULL);
		if (err != QUEUE_OK)
			break;
	}
	q->wake = false;
	if (err != QUEUE_OK) {
		cause_set(cause, err, "queue database %s: out of memory loading messages", q->path);
		goto out;
	}
	if (rc == SQLITE_DONE)
		rc = SQLITE_OK;
	what = "read the data version";
	if (rc == SQLITE_OK)
		rc = qstore_query_int(q->db, "PRAGMA data_version", &q->data_version);
out:
	if (rc != SQLITE_OK)
		err = open_fail(q->path, q->db, cause, rc, what);
	sqlite3_finalize(st);
	return err;
}

int qstore_open(struct queue *q, char **cause)
{
	int err;

	if ((err = db_open_writer(q, cause)) != QUEUE_OK ||
	    (err = qstore_migrate(q->db, q->path, q->instance_id, cause)) != QUEUE_OK ||
	    (err = index_load(q, cause)) != QUEUE_OK ||
	    (err = db_prepare(q, cause)) != QUEUE_OK ||
	    (err = db_open_reader(q, cause)) != QUEUE_OK)
		return err;
	return QUEUE_OK;
}

/* Finalizes every statement, closes both connections, then lets go of the
 * lock (after SQLite, whose own locks another descriptor must not touch). */
void qstore_close(struct queue *q)
{
	sqlite3_stmt *stmts[] = {
		q->st_begin, q->st_commit, q->st_rollback, q->st_insert, q->st_delete,
		q->st_attempts, q->st_dead, q->st_probe_put, q->st_probe_del, q->st_read,
		q->st_version, q->st_pickup, q->st_unmark, q->st_dead_count, q->st_reasons,
	};
	size_t i;

	for (i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
		sqlite3_finalize(stmts[i]);
	/* The reader first: the last connection to close checkpoints the WAL
	 * into the database and removes it. */
	(void)sqlite3_close(q->rdb);
	(void)sqlite3_close(q->db);
	free(q->batch_order);
	q->batch_order = NULL;
	q->batch_order_cap = 0;
	if (q->lock_fd >= 0)
		close(q->lock_fd);
	q->lock_fd = -1;
}

/* Reads message id through the read connection into a new allocation;
 * read_mu held. */
static int read_one(struct queue *q, int64_t id, struct queue_msg **out)
{
	struct queue_msg m;
	sqlite3_stmt *st = q->st_read;
	size_t i;
	int rc, err;

	memset(&m, 0, sizeof m);
	*out = NULL;
	sqlite3_bind_int64(st, 1, id);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		m.received_ms = sqlite3_column_int64(st, 0);
		for (i = 0; i < MSG_NSTR; i++)
			qmsg_set_str(&m, i, (const char *)sqlite3_column_text(st, 1 + (int)i));
		m.seq = sqlite3_column_int64(st, 10);
		m.body = sqlite3_column_blob(st, 11);
		m.body_len = (size_t)sqlite3_column_bytes(st, 11);
		*out = queue_msg_dup(&m);
		err = *out ? QUEUE_OK : QUEUE_ENOMEM;
	} else {
		err = rc == SQLITE_DONE ? QUEUE_ENOTFOUND : QUEUE_EIO;
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return err;
}

/*
 * Reads ids[0..n-1] into out[] (errs[] gets each one's result) in one read
 * transaction: SQLite drops the reader's page cache whenever a transaction
 * starts after a commit, and the writer commits all the time, so one
 * transaction per message would read the same pages again and again.  The
 * transaction ends before this returns, so checkpoints can proceed.
 */
void qstore_fill_uncached(struct queue *q, const int64_t *ids, size_t n,
                          struct queue_msg **out, int *errs)
{
	int64_t read_ids[QSTORE_FILL_MAX];
	struct queue_msg *read_out[QSTORE_FILL_MAX];
	int read_err[QSTORE_FILL_MAX];
	size_t nread = 0, r = 0, i;

	for (i = 0; i < n; i++) {
		errs[i] = QUEUE_OK;
		if (!out[i])
			read_ids[nread++] = ids[i];
	}
	if (nread > 0)
		qstore_read_messages(q, read_ids, nread, read_out, read_err);
	for (i = 0; i < n; i++) {
		if (!out[i]) {
			errs[i] = read_err[r];
			out[i] = read_out[r++];
		}
	}
}

void qstore_read_messages(struct queue *q, const int64_t *ids, size_t n,
                          struct queue_msg **out, int *errs)
{
	bool txn;

	pthread_mutex_lock(&q->read_mu);
	txn = n > 1 && sqlite3_exec(q->rdb, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
	for (size_t i = 0; i < n; i++)
		errs[i] = read_one(q, ids[i], &out[i]);
	if (txn)
		sqlite3_exec(q->rdb, "COMMIT", NULL, NULL, NULL);
	pthread_mutex_unlock(&q->read_mu);
}

int qstore_dead_reasons(struct queue *q, void (*fn)(void *arg, const char *reason,
                                                     uint64_t count), void *arg)
{
	sqlite3_stmt *st = q->st_reasons;
	int rc;

	pthread_mutex_lock(&q->read_mu);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *reason = (const char *)sqlite3_column_text(st, 0);

		fn(arg, reason ? reason : "", (uint64_t)sqlite3_column_int64(st, 1));
	}
	sqlite3_reset(st);  /* ends the read transaction: checkpoints can proceed */
	pthread_mutex_unlock(&q->read_mu);
	return rc == SQLITE_DONE ? QUEUE_OK : sql_to_err(rc);
}

/* --- the writer's transactions ----------------------------------------------------- */

static int exec_insert(struct queue *q, const struct entry *e)
{
	const struct queue_msg *m = e->msg;
	sqlite3_stmt *st = q->st_insert;
	size_t i;

	sqlite3_bind_int64(st, 1, e->id);
	sqlite3_bind_int64(st, 2, m->received_ms);
	for (i = 0; i < MSG_NSTR; i++) {
		const char *s = qmsg_str(m, i);

		if (!s && i < 2)
			s = ""; /* session and target are NOT NULL */
		sqlite3_bind_text(st, 3 + (int)i, s, -1, SQLITE_STATIC);
	}
	sqlite3_bind_int64(st, 12, m->seq);
	sqlite3_bind_blob64(st, 13, m->body, m->body_len, SQLITE_STATIC);
	return qstore_step_reset(st);
}

static int exec_delete(struct queue *q, int64_t id)
{
	sqlite3_bind_int64(q->st_delete, 1, id);
	return qstore_step_reset(q->st_delete);
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
	rc = qstore_step_reset(st);
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
		return qstore_step_reset(q->st_attempts);
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
		(void)qstore_step_reset(q->st_rollback);
}

/* In WAL mode NORMAL skips a commit's fsync; the next FULL commit (or a
 * checkpoint) syncs the log, and with it every commit before. */
static int set_durable(struct queue *q, bool durable)
{
	int rc;

	if (q->sync_off != durable)
		return SQLITE_OK;
	rc = sqlite3_exec(q->db, durable ? "PRAGMA synchronous = FULL"
	                                 : "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		q->sync_off = !durable;
	return rc;
}

static int entry_id_cmp(const void *a, const void *b)
{
	int64_t x = (*(const struct entry *const *)a)->id;
	int64_t y = (*(const struct entry *const *)b)->id;

	return (x > y) - (x < y);
}

/*
 * The batch by id, in q->batch_order, or NULL if there is no memory for it.
 * A drain's deletes come in the order sessions are acked, and sessions are
 * interleaved in the table, so in that order nearly every delete finds its
 * page gone from the small page cache: it reads the page again and spills
 * it to the WAL mid-transaction.  In id order each page is read and written
 * once a transaction (BENCHMARKS.md: a fifth of the bytes written, half the
 * writer's CPU).  Each entry is in a batch once and no operation depends on
 * another's, so any order commits the same thing.
 */
static const struct entry **batch_by_id(struct queue *q, const struct entry *batch, size_t *n)
{
	const struct entry *e;
	size_t count = 0, i = 0;

	for (e = batch; e; e = e->bnext)
		count++;
	if (count > q->batch_order_cap) {
		const struct entry **v = realloc(q->batch_order, count * sizeof *v);

		if (!v)
			return NULL;
		q->batch_order = v;
		q->batch_order_cap = count;
	}
	for (e = batch; e; e = e->bnext)
		q->batch_order[i++] = e;
	qsort(q->batch_order, count, sizeof *q->batch_order, entry_id_cmp);
	*n = count;
	return q->batch_order;
}

/* Runs batch in one transaction.  Returns an SQLite result code. */
int qstore_batch_run(struct queue *q, const struct entry *batch, bool durable, char *err,
                     size_t len)
{
	const struct entry *e, **order;
	size_t n = 0, i;
	int rc = set_durable(q, durable);

	if (rc == SQLITE_OK)
		rc = qstore_step_reset(q->st_begin);

	order = batch_by_id(q, batch, &n);
	if (order) {
		for (i = 0; i < n && rc == SQLITE_OK; i++)
			rc = exec_op(q, order[i]);
	} else {
		for (e = batch; e && rc == SQLITE_OK; e = e->bnext)
			rc = exec_op(q, e);
	}
	if (rc == SQLITE_OK)
		rc = qstore_step_reset(q->st_commit);
	if (rc != SQLITE_OK)
		txn_abort(q, rc, err, len);
	return rc;
}

/* While writes fail and nothing is pending, this tells when the disk takes
 * writes again: it commits (then deletes) a row bigger than any message the
 * tests write, which needs both new pages and a WAL append. */
int qstore_probe_run(struct queue *q, char *err, size_t len)
{
	int rc = set_durable(q, true);

	if (rc == SQLITE_OK)
		rc = qstore_step_reset(q->st_begin);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int(q->st_probe_put, 1, PROBE_BYTES);
		rc = qstore_step_reset(q->st_probe_put);
	}
	if (rc == SQLITE_OK)
		rc = qstore_step_reset(q->st_probe_del);
	if (rc == SQLITE_OK)
		rc = qstore_step_reset(q->st_commit);
	if (rc != SQLITE_OK)
		txn_abort(q, rc, err, len);
	return rc;
}


/* --- changes made by the queue CLI ---------------------------------------------------- */

bool qstore_changed(struct queue *q)
{
	int64_t v;
	bool changed;

	if (sqlite3_step(q->st_version) != SQLITE_ROW) {
		sqlite3_reset(q->st_version);
		return false;
	}
	v = sqlite3_column_int64(q->st_version, 0);
	sqlite3_reset(q->st_version);
	changed = v != q->data_version;
	q->data_version = v;
	return changed;
}

void qstore_rows_free(struct qidx_row *rows, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free((char *)rows[i].session);
		free((char *)rows[i].api_key);
	}
}

/* Copies one pickup row; -1 if out of memory. */
static int row_copy(sqlite3_stmt *st, struct qidx_row *row)
{
	struct qidx_row r;

	row_from(st, &r);
	*row = r;
	row->session = strdup(r.session ? r.session : "");
	row->api_key = r.api_key ? strdup(r.api_key) : NULL;
	if (!row->session || (r.api_key && !row->api_key)) {
		qstore_rows_free(row, 1);
		return -1;
	}
	return 0;
}

int qstore_pickup(struct queue *q, struct qidx_row *rows, size_t max, size_t *n,
                  uint64_t *dead)
{
	int64_t count = 0;
	char err[160];
	int rc;

	*n = 0;
	rc = qstore_step_reset(q->st_begin);
	if (rc != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(q->st_pickup, 1, (int64_t)max);
	while (*n < max && (rc = sqlite3_step(q->st_pickup)) == SQLITE_ROW) {
		if (row_copy(q->st_pickup, &rows[*n]) < 0) {
			rc = SQLITE_NOMEM;
			break;
		}
		(*n)++;
	}
	sqlite3_reset(q->st_pickup);
	if (rc == SQLITE_DONE || rc == SQLITE_ROW)
		rc = SQLITE_OK;
	if (rc == SQLITE_OK && *n > 0) {
		sqlite3_bind_int64(q->st_unmark, 1, rows[*n - 1].id);
		rc = qstore_step_reset(q->st_unmark);
	}
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(q->st_dead_count);
		count = sqlite3_column_int64(q->st_dead_count, 0);
		sqlite3_reset(q->st_dead_count);
		rc = rc == SQLITE_ROW ? SQLITE_OK : rc;
	}
	if (rc == SQLITE_OK)
		rc = qstore_step_reset(q->st_commit);
out:
	if (rc != SQLITE_OK) {
		txn_abort(q, rc, err, sizeof err);
		qstore_rows_free(rows, *n);
		*n = 0;
	}
	*dead = (uint64_t)count;
	return rc;
}
