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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue.h"
#include "sdkshape.h"

#define QF_MAX_FILES 8
#define QF_POOL 64
#define QF_SYNC_EVERY 1000

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

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
	const char *path = NULL, *files[QF_MAX_FILES];
	unsigned long long messages = 200000, sessions = 1000;
	size_t nfiles = 0;
	struct sdk_sizes *sizes = malloc(sizeof *sizes);
	struct { uint8_t *bytes; size_t len; } pool[QF_POOL] = { { 0 } };
	struct queue_options qo;
	struct queue *q = NULL;
	uint64_t rng = 0x9E3779B97F4A7C15ULL;
	char err[256], session[32], target[256], conn[32], *cause = NULL;
	double t0;
	int ch, rc = 2, r;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'd': path = optarg; break;
		case 'n': messages = strtoull(optarg, NULL, 10); break;
		case 's': sessions = strtoull(optarg, NULL, 10); break;
		case 'f':
			if (nfiles < QF_MAX_FILES)
				files[nfiles++] = optarg;
			break;
		default: goto out;
		}
	}
	if (!path || !sizes || messages == 0 || sessions == 0) {
		fprintf(stderr, "usage: queue-fill --db PATH [--messages N] [--sessions S] "
		        "[--frame-log FILE]...\n");
		goto out;
	}
	if (sdk_sizes_load(sizes, files, nfiles, err, sizeof err) < 0) {
		fprintf(stderr, "queue-fill: %s\n", err);
		goto out;
	}
	for (size_t i = 0; i < QF_POOL; i++) {
		pool[i].len = sdk_pick(sizes, 0, &rng);
		pool[i].bytes = malloc(pool[i].len);
		if (!pool[i].bytes)
			goto out;
		sdk_fill_text(pool[i].bytes, pool[i].len, &rng);
	}
	queue_options_init(&qo);
	qo.max_messages = messages + 1;
	qo.max_bytes = 0;
	if (queue_open(&q, path, &qo, &cause) != QUEUE_OK) {
		fprintf(stderr, "queue-fill: %s\n", cause ? cause : "cannot open the queue");
		goto out;
	}
	t0 = now_s();
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
	printf("{\"messages\":%llu,\"seconds\":%.3f,\"messages_per_s\":%.1f}\n", messages,
	       now_s() - t0, messages / (now_s() - t0));
	rc = 0;
out:
	queue_close(q);
	free(cause);
	for (size_t i = 0; i < QF_POOL; i++)
		free(pool[i].bytes);
	free(sizes);
	return rc;
}
