/*
 * curl-post.c - the machine's raw libcurl HTTPS POST rate, for the
 * benchmark: the ceiling the relay's drain is compared with.
 *
 *   curl-post --url https://127.0.0.1:P/ --cainfo CA.pem [--http2]
 *             [--connections C] [--streams S] [--seconds N] [--frame-log FILE]...
 *
 * One thread, one multi handle, POSTs of SDK-sized bodies with the headers
 * the relay sends, kept going back to back for N seconds:
 *   - HTTP/1.1 keep-alive: C connections, one request on each at a time;
 *   - --http2: C connections with S multiplexed streams on each.
 * Easy handles are reused so connections stay alive.  Prints one JSON
 * object: {"mode":..,"connections":..,"concurrency":..,"requests":..,
 * "errors":..,"seconds":..,"requests_per_s":..,"cpu_us_per_request":..}.
 * Exits 1 if any request failed or got a status other than 2xx.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "benchutil.h"
#include "sdkshape.h"

#define CP_MAX_CONCURRENCY 4096
#define CP_POOL 64                   /* distinct bodies */
#define CP_WAIT_MS 100

struct xfer {
	CURL *easy;
	char idem[64];
	struct curl_slist *headers;
	unsigned long long n;
};

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
	(void)p;
	(void)arg;
	return size * n;
}

/* Sets up x for its next POST: a body from the pool and a fresh
 * Idempotency-Key, as the relay sends. */
static int xfer_prepare(struct xfer *x, const char *url, const char *ca, bool h2,
                        const uint8_t *body, size_t len, unsigned long long id)
{
	char line[96];

	curl_slist_free_all(x->headers);
	x->headers = NULL;
	snprintf(line, sizeof line, "Idempotency-Key: bench-%llu", id);
	const char *hdrs[] = {
		"Content-Type: text/plain; charset=utf-8",
		"X-Forwarded-For: 127.0.0.1",
		"X-Forwarded-Proto: https",
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
		"(KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
		"Origin: https://app.example.com",
		"Expect:",   /* no 100-continue round trip, as the relay does */
		line,
	};
	for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
		struct curl_slist *l = curl_slist_append(x->headers, hdrs[i]);

		if (!l)
			return -1;
		x->headers = l;
	}
	if (curl_easy_setopt(x->easy, CURLOPT_URL, url) ||
	    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers) ||
	    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len) ||
	    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, body) ||
	    curl_easy_setopt(x->easy, CURLOPT_HTTP_VERSION,
	                     h2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1) ||
	    curl_easy_setopt(x->easy, CURLOPT_PIPEWAIT, h2 ? 1L : 0L) ||
	    curl_easy_setopt(x->easy, CURLOPT_CAINFO, ca) ||
	    curl_easy_setopt(x->easy, CURLOPT_CAPATH, NULL) ||
	    curl_easy_setopt(x->easy, CURLOPT_NOSIGNAL, 1L) ||
	    curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, 10000L) ||
	    curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, discard) ||
	    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x))
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "cainfo", required_argument, NULL, 'c' },
		{ "http2", no_argument, NULL, '2' },
		{ "connections", required_argument, NULL, 'n' },
		{ "streams", required_argument, NULL, 's' },
		{ "seconds", required_argument, NULL, 't' },
		{ "frame-log", required_argument, NULL, 'f' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = NULL, *ca = NULL;
	unsigned connections = 4, streams = 16, concurrency = 0;
	struct sdk_logs logs = { .n = 0 };
	bool h2 = false, stopping = false, bad = false;
	double seconds = 3, t0, c0, t1, c1;
	struct sdk_sizes *sizes = NULL;
	struct sdk_body pool[CP_POOL] = { { 0 } };
	struct xfer *xs = NULL;
	CURLM *multi = NULL;
	uint64_t rng = 0x9E3779B97F4A7C15ULL;
	unsigned long long done = 0, errors = 0, next_id = 0;
	char err[256];
	int ch, rc = 2, running = 0;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'u': url = optarg; break;
		case 'c': ca = optarg; break;
		case '2': h2 = true; break;
		case 'n': connections = (unsigned)strtoul(optarg, NULL, 10); break;
		case 's': streams = (unsigned)strtoul(optarg, NULL, 10); break;
		case 't': seconds = strtod(optarg, NULL); break;
		case 'f': bad |= sdk_logs_add(&logs, optarg) < 0; break;
		default: bad = true; break;
		}
	}
	concurrency = h2 ? connections * streams : connections;
	if (bad || optind != argc || !url || !ca || connections == 0 || streams == 0 ||
	    seconds <= 0 || concurrency > CP_MAX_CONCURRENCY) {
		fprintf(stderr,
			"usage: curl-post --url URL --cainfo CA [--http2] [--connections C] "
		        "[--streams S] [--seconds N] [--frame-log FILE]...\n");
		goto out;
	}
	sizes = sdk_sizes_create(&logs, err, sizeof err);
	if (!sizes || sdk_bodies_make(pool, CP_POOL, sizes, 0, &rng) < 0) {
		fprintf(stderr, "curl-post: %s\n", sizes ? "out of memory" : err);
		goto out;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		goto out;
	multi = curl_multi_init();
	xs = calloc(concurrency, sizeof *xs);
	if (!multi || !xs ||
	    curl_multi_setopt(multi, CURLMOPT_PIPELINING,
	                      h2 ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING) ||
	    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)connections) ||
	    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)connections) ||
	    curl_multi_setopt(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, (long)streams))
		goto out;

	t0 = bench_now_s();
	c0 = bench_cpu_s();
	for (unsigned i = 0; i < concurrency; i++) {
		xs[i].easy = curl_easy_init();
		if (!xs[i].easy ||
		    xfer_prepare(&xs[i], url, ca, h2, pool[i % CP_POOL].bytes,
		                 pool[i % CP_POOL].len, next_id++) < 0 ||
		    curl_multi_add_handle(multi, xs[i].easy) != CURLM_OK)
			goto out;
	}
	do {
		CURLMsg *m;
		int left;
		bool added = false;

		if (curl_multi_perform(multi, &running) != CURLM_OK)
			goto out;
		if (!stopping && bench_now_s() - t0 >= seconds)
			stopping = true;
		while ((m = curl_multi_info_read(multi, &left))) {
			struct xfer *x;
			long status = 0;

			if (m->msg != CURLMSG_DONE)
				continue;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
			curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
			if (m->data.result != CURLE_OK || status / 100 != 2) {
				if (errors++ == 0)
					fprintf(stderr, "curl-post: %s, status %ld\n",
					        curl_easy_strerror(m->data.result), status);
			}
			done++;
			curl_multi_remove_handle(multi, x->easy);
			if (stopping)
				continue;
			x->n++;
			if (xfer_prepare(x, url, ca, h2, pool[next_id % CP_POOL].bytes,
			                 pool[next_id % CP_POOL].len, next_id) < 0 ||
			    curl_multi_add_handle(multi, x->easy) != CURLM_OK)
				goto out;
			next_id++;
			added = true;
		}
		/* A handle just added must be started before anything is waited for. */
		if (!added && curl_multi_poll(multi, NULL, 0, CP_WAIT_MS, NULL) != CURLM_OK)
			goto out;
	} while (running > 0 || !stopping);
	t1 = bench_now_s() - t0;
	c1 = bench_cpu_s() - c0;
	printf("{\"mode\":\"%s\",\"connections\":%u,\"concurrency\":%u,\"requests\":%llu,"
	       "\"errors\":%llu,\"seconds\":%.3f,\"requests_per_s\":%.1f,\"cpu_us_per_request\":%.2f}\n",
	       h2 ? "h2" : "h1", connections, concurrency, done, errors, t1, done / t1,
	       done ? c1 * 1e6 / done : 0.0);
	rc = errors ? 1 : 0;
out:
	for (unsigned i = 0; xs && i < concurrency; i++) {
		if (xs[i].easy) {
			curl_multi_remove_handle(multi, xs[i].easy);
			curl_easy_cleanup(xs[i].easy);
		}
		curl_slist_free_all(xs[i].headers);
	}
	free(xs);
	if (multi)
		curl_multi_cleanup(multi);
	curl_global_cleanup();
	sdk_bodies_free(pool, CP_POOL);
	sdk_sizes_destroy(sizes);
	return rc;
}
