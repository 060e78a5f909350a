/*
 * sqlite-insert.c - the machine's raw SQLite group-commit insert rate, for
 * the benchmark: the ceiling the relay's ingest is compared with.
 *
 *   sqlite-insert --db PATH [--batch 100,1000] [--seconds S] [--warmup W]
 *                 [--frame-log FILE]... [--big-every K] [--page-size N]
 *
 * For each batch size: a new database at PATH (WAL, synchronous=FULL,
 * secure_delete off, 32 KB pages, as the queue sets them; --page-size
 * for another), the queue's messages table,
 * and rows shaped like the relay's (an SDK-sized body and the metadata the
 * relay stores with it) inserted batch rows per transaction, one prepared
 * statement, for W seconds not counted (as the relay's ingest step warms up:
 * the rate of a new, small file is the page cache's as much as the disk's),
 * then S seconds that are.  Prints one JSON object:
 *   {"results":[{"batch":100,"page_size":..,"rows":..,"seconds":..,"rows_per_s":..,
 *                "txns_per_s":..,"cpu_us_per_row":..}, ...]}
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "benchutil.h"
#include "sdkshape.h"

#define SI_MAX_BATCHES 8
#define SI_POOL 64                   /* distinct bodies, reused round robin */
#define SI_PAGE_SIZE 32768           /* the queue's (QSTORE_PAGE_SIZE) */

static const char schema[] =
	"CREATE TABLE messages ("
	" id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL,"
	" session TEXT NOT NULL, target TEXT NOT NULL, content_type TEXT, xff TEXT,"
	" peer_ip TEXT, user_agent TEXT, origin TEXT, api_key TEXT, conn_id TEXT,"
	" seq INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,"
	" body BLOB NOT NULL)";

static const char insert_sql[] =
	"INSERT INTO messages (received_ms, session, target, content_type, xff, peer_ip,"
	" user_agent, origin, api_key, conn_id, seq, body)"
	" VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

static int exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		fprintf(stderr, "sqlite-insert: %s: %s\n", sql, msg ? msg : "?");
		sqlite3_free(msg);
		return -1;
	}
	return 0;
}

static void remove_db(const char *path)
{
	char side[4096];

	unlink(path);
	snprintf(side, sizeof side, "%s-wal", path);
	unlink(side);
	snprintf(side, sizeof side, "%s-shm", path);
	unlink(side);
}

struct si_run {
	unsigned batch, page_size, big_every;
	double warmup, seconds;
};

/* One run: inserts for r->warmup then r->seconds, r->batch rows per
 * transaction.  Prints its JSON object; returns 0 or -1. */
static int run(const char *path, const struct si_run *r, const struct sdk_body *pool,
               const struct sdk_body *big, bool first)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	char session[32], target[256], conn[32], pragma[64];
	unsigned long long rows = 0, txns = 0, rows0 = 0, txns0 = 0;
	unsigned batch = r->batch, big_every = r->big_every;
	double start, t0 = 0, c0 = 0, t1, c1;
	bool counting = false;
	int rc = -1;

	remove_db(path);
	if (sqlite3_open(path, &db) != SQLITE_OK) {
		fprintf(stderr, "sqlite-insert: %s: %s\n", path, sqlite3_errmsg(db));
		goto out;
	}
	snprintf(pragma, sizeof pragma, "PRAGMA page_size = %u", r->page_size);
	if (exec(db, pragma) < 0 || exec(db, "PRAGMA journal_mode = WAL") < 0 ||
	    exec(db, "PRAGMA synchronous = FULL") < 0 ||
	    exec(db, "PRAGMA secure_delete = OFF") < 0 || exec(db, schema) < 0)
		goto out;
	if (sqlite3_prepare_v3(db, insert_sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) !=
	    SQLITE_OK) {
		fprintf(stderr, "sqlite-insert: prepare: %s\n", sqlite3_errmsg(db));
		goto out;
	}
	start = bench_now_s();
	for (;;) {
		t1 = bench_now_s();
		if (!counting && t1 - start >= r->warmup) {
			counting = true;
			t0 = t1;
			c0 = bench_cpu_s();
			rows0 = rows;
			txns0 = txns;
		}
		if (counting && t1 - t0 >= r->seconds)
			break;
		if (exec(db, "BEGIN") < 0)
			goto out;
		for (unsigned i = 0; i < batch; i++, rows++) {
			const struct sdk_body *b = big_every && rows % big_every == big_every - 1 ?
			                       big : &pool[rows % SI_POOL];

			snprintf(session, sizeof session, "s%021llu", rows % 1000);
			snprintf(conn, sizeof conn, "%016llx", rows % 1000);
			snprintf(target, sizeof target,
			         "/?apiKey=benchkey&timestamp=1795463613117&apiVersion=v1"
			         "&sessionId=%s&newConnection=true", session);
			sqlite3_bind_int64(st, 1, 1795463613117LL + (long long)rows);
			sqlite3_bind_text(st, 2, session, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 3, target, -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 4, "text/plain; charset=utf-8", -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 5, "127.0.0.1", -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 6, "127.0.0.1", -1, SQLITE_STATIC);
			sqlite3_bind_text(
				st, 7,
				"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
				"(KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
				-1, SQLITE_STATIC);
			sqlite3_bind_text(st, 8, "https://app.example.com", -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 9, "benchkey", -1, SQLITE_STATIC);
			sqlite3_bind_text(st, 10, conn, -1, SQLITE_STATIC);
			sqlite3_bind_int64(st, 11, (long long)rows);
			sqlite3_bind_blob(st, 12, b->bytes, (int)b->len, SQLITE_STATIC);
			if (sqlite3_step(st) != SQLITE_DONE) {
				fprintf(stderr, "sqlite-insert: insert: %s\n", sqlite3_errmsg(db));
				goto out;
			}
			sqlite3_reset(st);
		}
		if (exec(db, "COMMIT") < 0)
			goto out;
		txns++;
	}
	c1 = bench_cpu_s();
	t1 -= t0;
	rows -= rows0;
	txns -= txns0;
	printf("%s{\"batch\":%u,\"page_size\":%u,\"rows\":%llu,\"seconds\":%.3f,\"rows_per_s\":%.1f,"
	       "\"txns_per_s\":%.1f,\"cpu_us_per_row\":%.2f}",
	       first ? "" : ",", batch, r->page_size, rows, t1, rows / t1, txns / t1,
	       rows ? (c1 - c0) * 1e6 / rows : 0.0);
	rc = 0;
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	remove_db(path);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "db", required_argument, NULL, 'd' },
		{ "batch", required_argument, NULL, 'b' },
		{ "seconds", required_argument, NULL, 's' },
		{ "frame-log", required_argument, NULL, 'f' },
		{ "big-every", required_argument, NULL, 'k' },
		{ "page-size", required_argument, NULL, 'p' },
		{ "warmup", required_argument, NULL, 'w' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL;
	unsigned batches[SI_MAX_BATCHES] = { 100, 1000 }, nbatches = 2;
	struct si_run r = { .page_size = SI_PAGE_SIZE, .seconds = 3 };
	struct sdk_logs logs = { .n = 0 };
	bool bad = false;
	struct sdk_sizes *sizes = NULL;
	struct sdk_body pool[SI_POOL] = { { 0 } }, big = { 0 };
	uint64_t rng = 0x9E3779B97F4A7C15ULL;
	char err[256], *tok, *save = NULL;
	int ch, rc = 2;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'd': path = optarg; break;
		case 's': r.seconds = strtod(optarg, NULL); break;
		case 'w': r.warmup = strtod(optarg, NULL); break;
		case 'k': r.big_every = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'p': r.page_size = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'b':
			nbatches = 0;
			for (tok = strtok_r(optarg, ",", &save); tok && nbatches < SI_MAX_BATCHES;
			     tok = strtok_r(NULL, ",", &save))
				batches[nbatches++] = (unsigned)strtoul(tok, NULL, 10);
			break;
		case 'f': bad |= sdk_logs_add(&logs, optarg) < 0; break;
		default: bad = true; break;
		}
	}
	/* SQLite takes powers of two from 512 to 65536 and ignores anything else. */
	bad |= r.page_size < 512 || r.page_size > 65536 || (r.page_size & (r.page_size - 1)) != 0;
	if (bad || optind != argc || !path || r.seconds <= 0 || r.warmup < 0 || nbatches == 0) {
		fprintf(stderr, "usage: sqlite-insert --db PATH [--batch 100,1000] [--seconds S] "
		        "[--warmup W] [--frame-log FILE]... [--big-every K] [--page-size N]\n");
		goto out;
	}
	/* The same mix as the load generator: getstats deltas, and every K-th
	 * row an initial batch. */
	sizes = sdk_sizes_create(&logs, err, sizeof err);
	if (!sizes || sdk_bodies_make(pool, SI_POOL, sizes, 0, &rng) < 0 ||
	    sdk_bodies_make(&big, 1, sizes, 1, &rng) < 0) {
		fprintf(stderr, "sqlite-insert: %s\n", sizes ? "out of memory" : err);
		goto out;
	}
	printf("{\"results\":[");
	for (unsigned i = 0; i < nbatches; i++) {
		r.batch = batches[i];
		if (r.batch == 0 || run(path, &r, pool, &big, i == 0) < 0)
			goto out;
	}
	printf("]}\n");
	rc = 0;
out:
	sdk_bodies_free(pool, SI_POOL);
	sdk_bodies_free(&big, 1);
	sdk_sizes_destroy(sizes);
	return rc;
}
