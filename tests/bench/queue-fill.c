/*
 * queue-fill.c - pre-fills a relay's queue for the drain benchmark.
 *
 *   queue-fill --db STATE_DIR/queue.db [--messages N] [--sessions S]
 *              [--frame-log FILE]...
 *
 * Puts N websocket messages of S sessions (round robin, so sessions
 * interleave as they do when many browsers send at once) into the queue
 * through queue.h, exactly as the relay's websocket side stores them: an
 * SDK-sized body, the SDK's query as the upstream target, the metadata the
 * relay keeps.  Every QF_SYNC_EVERY-th put waits for its commit, which
 * bounds the memory held by puts not yet on disk.  Prints
 * {"messages":..,"seconds":..,"messages_per_s":..}.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "benchutil.h"
#include "queue.h"
#include "sdkshape.h"

#define QF_POOL 64
#define QF_SYNC_EVERY 1000

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "db", required_argument, NULL, 'd' },
		{ "messages", required_argument, NULL, 'n' },
		{ "sessions", required_argument, NULL, 's' },
		{ "frame-log", required_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL;
	unsigned long long messages = 200000, sessions = 1000;
	struct sdk_logs logs = { .n = 0 };
	bool bad = false;
	struct sdk_sizes *sizes = NULL;
	struct sdk_body pool[QF_POOL] = { { 0 } };
	struct queue_options qo;
	struct queue *q = NULL;
	uint64_t rng = 0x9E3779B97F4A7C15ULL;
	char err[256], session[32], target[256], conn[32], *cause = NULL;
	double t0, secs;
	int ch, rc = 2, r;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'd': path = optarg; break;
		case 'n': messages = strtoull(optarg, NULL, 10); break;
		case 's': sessions = strtoull(optarg, NULL, 10); break;
		case 'f': bad |= sdk_logs_add(&logs, optarg) < 0; break;
		default: bad = true; break;
		}
	}
	if (bad || optind != argc || !path || messages == 0 || sessions == 0) {
		fprintf(stderr, "usage: queue-fill --db PATH [--messages N] [--sessions S] "
		        "[--frame-log FILE]...\n");
		goto out;
	}
	sizes = sdk_sizes_create(&logs, err, sizeof err);
	if (!sizes || sdk_bodies_make(pool, QF_POOL, sizes, 0, &rng) < 0) {
		fprintf(stderr, "queue-fill: %s\n", sizes ? "out of memory" : err);
		goto out;
	}
	queue_options_init(&qo);
	qo.max_messages = messages + 1;
	qo.max_bytes = 0;
	if (queue_open(&q, path, &qo, &cause) != QUEUE_OK) {
		fprintf(stderr, "queue-fill: %s\n", cause ? cause : "cannot open the queue");
		goto out;
	}
	t0 = bench_now_s();
	for (unsigned long long i = 0; i < messages; i++) {
		unsigned long long s = i % sessions;
		struct queue_msg m = {
			.received_ms = wall_ms(),
			.session = session,
			.target = target,
			.content_type = "text/plain; charset=utf-8",
			.xff = "127.0.0.1",
			.peer_ip = "127.0.0.1",
			.user_agent = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
			              "(KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
			.origin = "https://app.example.com",
			.api_key = "benchkey",
			.conn_id = conn,
			.seq = (int64_t)(i / sessions + 1),
			.body = pool[i % QF_POOL].bytes,
			.body_len = pool[i % QF_POOL].len,
		};

		snprintf(session, sizeof session, "bench%017llu", s);
		snprintf(conn, sizeof conn, "%016llx", s);
		snprintf(target, sizeof target,
		         "/?apiKey=benchkey&timestamp=1795463613117&apiVersion=v1&sessionId=%s"
		         "&newConnection=true", session);
		r = queue_put(q, &m, (i + 1) % QF_SYNC_EVERY == 0 || i + 1 == messages, NULL);
		if (r != QUEUE_OK) {
			fprintf(stderr, "queue-fill: put %llu: %s\n", i, queue_strerror(r));
			goto out;
		}
	}
	secs = bench_now_s() - t0;
	printf("{\"messages\":%llu,\"seconds\":%.3f,\"messages_per_s\":%.1f}\n", messages, secs,
	       messages / secs);
	rc = 0;
out:
	queue_close(q);
	free(cause);
	sdk_bodies_free(pool, QF_POOL);
	sdk_sizes_destroy(sizes);
	return rc;
}
