/*
 * queue_salvage.c - `watchrtc-relay queue salvage`: copies every row that
 * can still be read from a corrupt queue database into a new one.
 *
 * A damaged b-tree page stops an ordered scan where it lies, so each table
 * is read three ways: forward by id; forward again from a little further on
 * after each error, the step doubling while errors go on (so the seek jumps
 * the damaged pages); and backward from the highest id until the first
 * error, which finds the rows above the last damage that a jump overshot.
 * Rows are inserted with INSERT OR IGNORE by id, so a row read twice is kept
 * once.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "queue_admin.h"
#include "queue_internal.h"

#define SALVAGE_TRIES_MAX 4096   /* failed reads per table before it gives up */
#define SALVAGE_SKIP_MAX ((int64_t)1 << 40)  /* longest jump past damaged pages */

static const char message_cols[] =
	"id, received_ms, session, target, content_type, xff, peer_ip, user_agent, origin, "
	"api_key, conn_id, seq, attempts, body";
static const char dead_cols[] =
	"id, received_ms, session, target, content_type, xff, peer_ip, user_agent, origin, "
	"api_key, conn_id, seq, attempts, body, dead_ms, reason, status, detail";

struct copier {
	sqlite3 *src, *dst;
	sqlite3_stmt *fwd, *back, *ins;
	int ncols;
	uint64_t copied, errors;       /* rows copied; damaged places met */
	int64_t max_id;
};

/* Copies the row st is on.  A row read twice (both scans reach it) is kept
 * once, and one whose damaged columns the schema refuses is not kept. */
static int copy_row(struct copier *c, sqlite3_stmt *st)
{
	int i, rc;

	for (i = 0; i < c->ncols; i++)
		sqlite3_bind_value(c->ins, i + 1, sqlite3_column_value(st, i));
	rc = qstore_step_reset(c->ins);
	if (rc != SQLITE_OK)
		return rc;
	if (sqlite3_changes(c->dst) > 0)
		c->copied++;
	return SQLITE_OK;
}

/* Scans st (bound to from) and copies what it yields.  Returns SQLITE_DONE
 * at the end, the source's error where reading failed (*last is the last
 * id read), or a negative number if writing the copy failed. */
static int scan(struct copier *c, sqlite3_stmt *st, int64_t from, int64_t *last)
{
	int rc;

	sqlite3_bind_int64(st, 1, from);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		*last = sqlite3_column_int64(st, 0);
		if (*last > c->max_id)
			c->max_id = *last;
		if (copy_row(c, st) != SQLITE_OK) {
			rc = -1;
			break;
		}
	}
	sqlite3_reset(st);
	return rc;
}

/* Copies what is readable of one table.  Returns -1 only if the copy could
 * not be written; read errors are counted. */
static int copy_table(struct copier *c)
{
	int64_t lo = 0, id, skip = 1;
	unsigned tries = 0;
	int rc;

	for (;;) {
		id = lo;
		rc = scan(c, c->fwd, lo, &id);
		if (rc < 0)
			return -1;
		if (rc == SQLITE_DONE && tries == 0)
			return 0; /* read to the end without damage */
		if (rc == SQLITE_DONE)
			break;
		if (tries == 0 || id > lo)
			c->errors++; /* a damaged place; errors while jumping it are the same */
		if (++tries >= SALVAGE_TRIES_MAX)
			break;
		skip = id > lo ? 1 : skip < SALVAGE_SKIP_MAX ? skip * 2 : skip;
		lo = id > INT64_MAX - skip ? INT64_MAX : id + skip;
	}
	/* From the top down to the first damaged page: the rows a jump
	 * overshot.  An error there is the damage already counted. */
	return scan(c, c->back, INT64_MAX, &id) < 0 ? -1 : 0;
}

static int prepare_copier(struct copier *c, const char *table, const char *cols, int ncols)
{
	char sql[1024];
	int rc;

	c->ncols = ncols;
	c->copied = c->errors = 0;
	snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE id > ?1 ORDER BY id", cols, table);
	rc = sqlite3_prepare_v2(c->src, sql, -1, &c->fwd, NULL);
	if (rc == SQLITE_OK) {
		snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE id < ?1 ORDER BY id DESC",
		         cols, table);
		rc = sqlite3_prepare_v2(c->src, sql, -1, &c->back, NULL);
	}
	if (rc != SQLITE_OK) {
		c->errors++; /* the schema itself is unreadable: nothing to copy */
		return 1;
	}
	snprintf(sql, sizeof sql, "INSERT OR IGNORE INTO %s (%s) VALUES (?1, ?2, ?3, ?4, ?5, "
	         "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14%s)", table, cols,
	         ncols > 14 ? ", ?15, ?16, ?17, ?18" : "");
	return sqlite3_prepare_v2(c->dst, sql, -1, &c->ins, NULL) == SQLITE_OK ? 0 : -1;
}

static void finalize_copier(struct copier *c)
{
	sqlite3_finalize(c->fwd);
	sqlite3_finalize(c->back);
	sqlite3_finalize(c->ins);
	c->fwd = c->back = c->ins = NULL;
}

/* Copies meta (the instance id among it) unless the ids cannot be trusted,
 * and makes sure no id at or below seq is handed out again. */
static int copy_meta(struct copier *c, int64_t seq, bool keep_id)
{
	sqlite3_stmt *rd = NULL, *wr = NULL;
	int rc;

	/* sqlite_sequence has no key on name: update the row, or add it. */
	rc = sqlite3_exec(
		c->dst,
		"INSERT INTO sqlite_sequence (name, seq) SELECT 'messages', 0 "
		"WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages')",
		NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(c->dst, "UPDATE sqlite_sequence SET seq = ?1 "
		                        "WHERE name = 'messages' AND seq < ?1", -1, &wr, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int64(wr, 1, seq);
		rc = qstore_step_reset(wr);
	}
	sqlite3_finalize(wr);
	wr = NULL;
	if (rc != SQLITE_OK || !keep_id)
		return rc;
	if (sqlite3_prepare_v2(c->src, "SELECT key, value FROM meta WHERE key <> 'write_probe'",
	                       -1, &rd, NULL) != SQLITE_OK)
		return SQLITE_OK; /* unreadable: the fresh instance id stays */
	rc = sqlite3_prepare_v2(c->dst, "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
	                        -1, &wr, NULL);
	while (rc == SQLITE_OK && sqlite3_step(rd) == SQLITE_ROW) {
		sqlite3_bind_value(wr, 1, sqlite3_column_value(rd, 0));
		sqlite3_bind_value(wr, 2, sqlite3_column_value(rd, 1));
		rc = qstore_step_reset(wr);
	}
	sqlite3_finalize(rd);
	sqlite3_finalize(wr);
	return rc;
}

/* The highest message id the old file says was ever handed out, or -1. */
static int64_t old_sequence(sqlite3 *src)
{
	int64_t v = -1;

	if (qstore_query_int(src, "SELECT coalesce(max(seq), 0) FROM sqlite_sequence "
	                     "WHERE name = 'messages'", &v) != SQLITE_OK)
		return -1;
	return v;
}

/*
 * Creates the new database file (must not exist) with the schema, owned
 * and moded as the old one (path), so that a salvage run as root leaves a
 * file the relay's own user can still open.
 */
static int create_output(const char *path, const char *out, sqlite3 **dst, char **cause)
{
	char instance[17] = "";
	struct stat st;
	int fd, rc;

	fd = open(out, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return cause_set(cause, QUEUE_EIO, "cannot create %s: %s", out, strerror(errno));
	if (stat(path, &st) == 0) {
		/* Only root can give it away; anyone else already owns both. */
		if (geteuid() == 0 && fchown(fd, st.st_uid, st.st_gid) < 0)
			rc = errno;
		else
			rc = fchmod(fd, st.st_mode & 0777) < 0 ? errno : 0;
		if (rc) {
			close(fd);
			return cause_set(cause, QUEUE_EIO,
			                 "cannot give %s the owner and mode of %s: %s", out, path,
			                 strerror(rc));
		}
	}
	close(fd);
	rc = sqlite3_open_v2(out, dst, SQLITE_OPEN_READWRITE, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(*dst, "PRAGMA page_size = " QSTORE_PAGE_SIZE
		                  "; PRAGMA synchronous = FULL", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return cause_set(cause, QUEUE_EIO, "%s: %s", out, sqlite3_errmsg(*dst));
	return qstore_migrate(*dst, out, instance, cause);
}

/* Copies both tables and meta from c->src into c->dst in one transaction. */
static int copy_all(struct copier *c, struct queue_admin_salvage *res, const char *out,
                    char **cause)
{
	int64_t seq = old_sequence(c->src);
	int rc = sqlite3_exec(c->dst, "BEGIN IMMEDIATE", NULL, NULL, NULL);

	c->max_id = 0;
	if (rc == SQLITE_OK && (rc = prepare_copier(c, "messages", message_cols, 14)) >= 0) {
		rc = rc == 0 ? copy_table(c) : 0;
		res->messages = c->copied;
		res->read_errors += c->errors;
	}
	finalize_copier(c);
	if (rc == 0 && (rc = prepare_copier(c, "dead_letters", dead_cols, 18)) >= 0) {
		rc = rc == 0 ? copy_table(c) : 0;
		res->dead = c->copied;
		res->read_errors += c->errors;
	}
	finalize_copier(c);
	/* Keep the instance id only if no id the old file handed out can come
	 * again: the old sequence must be known. */
	res->kept_instance_id = seq >= 0;
	if (rc == 0)
		rc = copy_meta(c, seq > c->max_id ? seq : c->max_id, res->kept_instance_id);
	if (rc == 0)
		rc = sqlite3_exec(c->dst, "COMMIT", NULL, NULL, NULL);
	if (rc != 0) {
		if (!sqlite3_get_autocommit(c->dst))
			(void)sqlite3_exec(c->dst, "ROLLBACK", NULL, NULL, NULL);
		return cause_set(cause, QUEUE_EIO, "cannot write %s: %s", out,
		                 sqlite3_errmsg(c->dst));
	}
	return QUEUE_OK;
}

/* Renames path (and its -wal and -shm, if any) to path.corrupt-<UTC time>. */
static int move_aside(const char *path, char *moved, size_t len, char **cause)
{
	static const char *const sfx[] = { "-wal", "-shm" };
	char from[PATH_MAX + 8], to[PATH_MAX + 8], stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	size_t i;

	gmtime_r(&now, &tm);
	strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
	if (snprintf(moved, len, "%s.corrupt-%s", path, stamp) >= (int)len)
		return cause_set(cause, QUEUE_EINVAL, "path too long: %s", path);
	if (rename(path, moved) < 0)
		return cause_set(cause, QUEUE_EIO, "cannot move %s aside: %s", path,
		                 strerror(errno));
	for (i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
		snprintf(from, sizeof from, "%s%s", path, sfx[i]);
		snprintf(to, sizeof to, "%s%s", moved, sfx[i]);
		if (rename(from, to) < 0 && errno != ENOENT)
			return cause_set(cause, QUEUE_EIO, "cannot move %s aside: %s", from,
			              strerror(errno));
	}
	return QUEUE_OK;
}

/* Makes the renames in dir durable. */
static void sync_dir(const char *path)
{
	char dir[PATH_MAX];
	int fd;

	snprintf(dir, sizeof dir, "%s", path);
	fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		(void)fsync(fd);
		close(fd);
	}
}

int queue_admin_salvage(const char *path, const char *output, struct queue_admin_salvage *res,
                        char **cause)
{
	struct copier c = { 0 };
	int lock = -1, err;

	if (cause)
		*cause = NULL;
	memset(res, 0, sizeof *res);
	if (access(path, F_OK) < 0)
		return cause_set(cause, QUEUE_ENOTFOUND, "no queue database at %s: %s", path,
		              strerror(errno));
	/* Held to the end: no relay may open the file while it is replaced. */
	lock = qstore_lock(path);
	if (lock < 0)
		return cause_set(cause, errno == EWOULDBLOCK ? QUEUE_EBUSY : QUEUE_EIO,
		              "%s: %s", path, errno == EWOULDBLOCK ?
		              "a relay is running on it: stop it first" : strerror(errno));
	if (output)
		snprintf(res->output, sizeof res->output, "%s", output);
	else if (snprintf(res->output, sizeof res->output, "%s.salvage", path) >=
	         (int)sizeof res->output) {
		err = cause_set(cause, QUEUE_EINVAL, "path too long: %s", path);
		goto out;
	}
	if (!output)
		(void)unlink(res->output); /* what a salvage that died before left */
	if (sqlite3_open_v2(path, &c.src, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		err = cause_set(cause, QUEUE_EIO, "cannot open %s: %s", path,
		                sqlite3_errmsg(c.src));
		goto out;
	}
	err = create_output(path, res->output, &c.dst, cause);
	if (err == QUEUE_OK)
		err = copy_all(&c, res, res->output, cause);
	(void)sqlite3_close(c.dst);
	(void)sqlite3_close(c.src);
	c.src = c.dst = NULL;
	if (err != QUEUE_OK || output)
		goto out;
	err = move_aside(path, res->moved_to, sizeof res->moved_to, cause);
	if (err == QUEUE_OK && rename(res->output, path) < 0)
		err = cause_set(cause, QUEUE_EIO, "cannot move %s to %s: %s (the old file is %s)",
		             res->output, path, strerror(errno), res->moved_to);
	if (err == QUEUE_OK)
		snprintf(res->output, sizeof res->output, "%s", path);
	sync_dir(path);
out:
	(void)sqlite3_close(c.dst);
	(void)sqlite3_close(c.src);
	if (lock >= 0)
		close(lock);
	return err;
}
