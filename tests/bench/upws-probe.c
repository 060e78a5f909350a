/*
 * upws-probe.c - what one upstream websocket costs, in memory and CPU, for
 * the two designs issue 16 weighed (BENCHMARKS.md, "Upstream websockets"):
 *
 *   --mode shared    server/upstream/upstream_ws.c: libcurl CONNECT_ONLY on
 *                    http://host:port (the loop's multi), the socket dup()ed,
 *                    GnuTLS with ONE set of credentials for the process;
 *   --mode curl-tls  libcurl CONNECT_ONLY on https://host:port with its own
 *                    GnuTLS (the CA file parsed by each connection), then the
 *                    same upgrade written with curl_easy_send; no CA path
 *                    unless --capath-default (libcurl's built-in one);
 *   --mode facts     checks two libcurl behaviours the design relies on and
 *                    prints them (see facts()).
 *
 *   upws-probe --mode M --url https://127.0.0.1:PORT --ca BUNDLE --conns N
 *
 * Each mode opens N websockets (upgrade answered, hello read) and holds them
 * all open, then prints one JSON line: RSS before and with them open (and
 * after malloc_trim), the heap in use per websocket (mallinfo2), and the
 * CPU (user + system) the process spent opening them.  Run it against a
 * TLS websocket endpoint that answers the SDK's upgrade (the benchmark's
 * nginx in front of wssink: tests/bench/upws-probe.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "benchutil.h"
#include "evloop.h"
#include "upstream_handshake.h"
#include "upstream_ws.h"

#define PROBE_QUERY "apiKey=probe&timestamp=1&apiVersion=v1&sessionId=probe&newConnection=true"

static long rss_kb(void)
{
	long pages = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/*
 * rss1 is the RSS with every websocket open; the memory freed after the
 * connects (libcurl's easy handles, all alive at once here, unlike in a
 * relay where connects come and go) may still be counted in it, so the
 * RSS after malloc_trim is reported too: what the open websockets hold.
 */
static size_t heap0;   /* malloc'd bytes in use at the baseline */

/* The baseline: RSS with free memory given back, and the heap in use. */
static long baseline(void)
{
	malloc_trim(0);
	heap0 = mallinfo2().uordblks;
	return rss_kb();
}

static void report(const char *mode, const char *ca, unsigned conns, unsigned opened,
                   long rss0, long rss1, double cpu, double secs)
{
	size_t heap = mallinfo2().uordblks;
	long rss_trim;

	malloc_trim(0);
	rss_trim = rss_kb();
	printf("{\"mode\":\"%s\",\"ca\":\"%s\",\"conns\":%u,\"opened\":%u,\"rss_before_kb\":%ld,"
	       "\"rss_open_kb\":%ld,\"rss_per_conn_kb\":%.1f,\"rss_trimmed_per_conn_kb\":%.1f,"
	       "\"heap_per_conn_kb\":%.1f,\"cpu_per_conn_ms\":%.3f,\"seconds\":%.2f}\n",
	       mode, ca, conns, opened, rss0, rss1,
	       opened ? (double)(rss1 - rss0) / opened : 0.0,
	       opened ? (double)(rss_trim - rss0) / opened : 0.0,
	       opened ? (double)(heap - heap0) / 1024 / opened : 0.0,
	       opened ? cpu * 1000 / opened : 0.0, secs);
}

/* --- shared: upstream_ws ------------------------------------------------------- */

struct shared_run {
	struct evloop *loop;
	unsigned want, opened, ended, resumed;
};

static void s_open(struct upstream_ws *ws, const char *hello, size_t len, void *arg)
{
	struct shared_run *r = arg;

	(void)hello;
	(void)len;
	r->resumed += upstream_ws_resumed(ws);
	if (++r->opened + r->ended == r->want)
		evloop_stop(r->loop);
}

static void s_end(struct upstream_ws *ws, const struct upws_result *res, void *arg)
{
	struct shared_run *r = arg;

	fprintf(stderr, "upws-probe: %s: %s\n", upws_class_name(res->cls), res->reason);
	(void)ws;
	if (r->opened + ++r->ended == r->want)
		evloop_stop(r->loop);
}

/* warm: one websocket opens (and stays) before the baseline, so that the
 * n measured ones can resume its TLS session, as a drain's do once the
 * first websockets are open. */
static int run_shared(const char *url, const char *ca, unsigned n, bool warm)
{
	struct upstream_client_options o = {
		.url = url,
		.ca_file = ca,
		.connect_timeout_ms = 60000,
		.handshake_timeout_ms = 120000,
		.pong_timeout_ms = 600000,
		.close_timeout_ms = 5000,
		.max_message_bytes = 1 << 20,
		.max_send_bytes = 1 << 20,
	};
	struct upstream_ws_request req = { .query = PROBE_QUERY, .user_agent = "upws-probe" };
	static const struct upstream_ws_callbacks cb = { .on_open = s_open, .on_end = s_end };
	struct upstream_ws **ws = calloc(n + 1, sizeof *ws);
	struct shared_run r = { .want = n };
	struct evloop *warm_loop = NULL;
	struct upstream_client *c;
	char *cause = NULL;
	long rss0;
	double cpu0, t0;

	/* The baseline includes the credentials: loaded once, whatever n. */
	if (!ws || upstream_client_create(&c, &o, &cause) < 0 ||
	    evloop_create(&r.loop, &cause) < 0) {
		fprintf(stderr, "upws-probe: %s\n", cause ? cause : "out of memory");
		return 1;
	}
	if (warm) {
		/* On a loop of its own: a loop runs once. */
		struct shared_run w = { .want = 1 };

		if (evloop_create(&w.loop, &cause) < 0 ||
		    upstream_ws_create(&ws[n], c, w.loop, &req, &cb, &w, &cause) < 0) {
			fprintf(stderr, "upws-probe: %s\n", cause ? cause : "out of memory");
			return 1;
		}
		evloop_run(w.loop);
		if (w.opened != 1)
			return 1;
		warm_loop = w.loop;
	}
	rss0 = baseline();
	cpu0 = bench_cpu_s();
	t0 = bench_now_s();
	for (unsigned i = 0; i < n; i++) {
		if (upstream_ws_create(&ws[i], c, r.loop, &req, &cb, &r, &cause) < 0) {
			fprintf(stderr, "upws-probe: %s\n", cause);
			return 1;
		}
	}
	evloop_run(r.loop);
	report(warm ? "shared-warm" : "shared", ca, n, r.opened, rss0, rss_kb(),
	       bench_cpu_s() - cpu0, bench_now_s() - t0);
	fprintf(stderr, "upws-probe: %u of %u resumed a TLS session\n", r.resumed, r.opened);
	for (unsigned i = 0; i < n + warm; i++)
		upstream_ws_destroy(ws[i]);
	evloop_destroy(r.loop);
	if (warm_loop)
		evloop_destroy(warm_loop);
	upstream_client_destroy(c);
	free(ws);
	return r.opened == n ? 0 : 1;
}

/* --- curl-tls: libcurl's own TLS per connection ------------------------------------ */

/* Writes the upgrade and reads until the hello frame is in. */
static int curl_upgrade(CURL *e, const char *host)
{
	struct uphs_request r = { .host = host, .path = "/", .query = PROBE_QUERY,
	                          .key = "dGhlIHNhbXBsZSBub25jZQ==", .user_agent = "upws-probe" };
	struct uphs_response resp;
	char accept[29], buf[16384], *req;
	const char *why;
	size_t len, off = 0, got = 0;
	curl_socket_t s;

	if (uphs_accept_for(r.key, accept) < 0 || !(req = uphs_build_request(&r, &len, &why)) ||
	    curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &s) != CURLE_OK)
		return -1;
	while (off < len) {
		size_t n = 0;
		CURLcode rc = curl_easy_send(e, req + off, len - off, &n);
		struct pollfd p = { s, POLLOUT, 0 };

		if (rc == CURLE_AGAIN)
			poll(&p, 1, 1000);
		else if (rc != CURLE_OK) {
			free(req);
			return -1;
		}
		off += n;
	}
	free(req);
	for (;;) {
		size_t n = 0;
		CURLcode rc = curl_easy_recv(e, buf + got, sizeof buf - got, &n);
		struct pollfd p = { s, POLLIN, 0 };

		if (rc == CURLE_AGAIN) {
			poll(&p, 1, 1000);
			continue;
		}
		if (rc != CURLE_OK || n == 0)
			return -1;
		got += n;
		/* The head, then one unmasked text frame of at most 125 bytes. */
		if (uphs_parse_response(buf, got, accept, &resp) == UPHS_UPGRADED &&
		    got >= resp.head_len + 2 &&
		    got >= resp.head_len + 2 + (buf[resp.head_len + 1] & 0x7f))
			return 0;
		if (got == sizeof buf)
			return -1;
	}
}

static int run_curl_tls(const char *url, const char *ca, unsigned n, bool capath_default)
{
	CURL **e = calloc(n, sizeof *e);
	unsigned opened = 0;
	char host[256];
	const char *h = strstr(url, "://");
	long rss0;
	double cpu0, t0;

	if (!e || !h)
		return 1;
	snprintf(host, sizeof host, "%s", h + 3);
	host[strcspn(host, "/")] = '\0';
	curl_global_init(CURL_GLOBAL_DEFAULT);
	rss0 = baseline();
	cpu0 = bench_cpu_s();
	t0 = bench_now_s();
	for (unsigned i = 0; i < n; i++) {
		CURLcode rc;

		e[i] = curl_easy_init();
		curl_easy_setopt(e[i], CURLOPT_URL, url);
		curl_easy_setopt(e[i], CURLOPT_CONNECT_ONLY, 1L);
		curl_easy_setopt(e[i], CURLOPT_CAINFO, ca);
		/* Debian's libcurl also reads its default CA path (/etc/ssl/certs)
		 * unless told not to: --capath-default measures that. */
		if (!capath_default)
			curl_easy_setopt(e[i], CURLOPT_CAPATH, NULL);
		curl_easy_setopt(e[i], CURLOPT_NOSIGNAL, 1L);
		rc = curl_easy_perform(e[i]);
		if (rc != CURLE_OK) {
			fprintf(stderr, "upws-probe: curl: %s\n", curl_easy_strerror(rc));
			continue;
		}
		if (curl_upgrade(e[i], host) == 0)
			opened++;
	}
	report(capath_default ? "curl-tls+capath" : "curl-tls", ca, n, opened, rss0, rss_kb(),
	       bench_cpu_s() - cpu0, bench_now_s() - t0);
	for (unsigned i = 0; i < n; i++)
		curl_easy_cleanup(e[i]);
	free(e);
	curl_global_cleanup();
	return opened == n ? 0 : 1;
}

/* --- facts ------------------------------------------------------------------------------- */

/* True if the peer of fd still answers: sends a request head, reads bytes. */
static bool fd_alive(int fd)
{
	static const char head[] = "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n";
	char buf[64];
	struct pollfd p = { fd, POLLIN, 0 };

	if (fcntl(fd, F_GETFD) < 0 || send(fd, head, sizeof head - 1, MSG_NOSIGNAL) < 0)
		return false;
	return poll(&p, 1, 2000) == 1 && recv(fd, buf, sizeof buf, 0) > 0;
}

/*
 * On a plain http://host:port/ (plain_url, e.g. wssink's port):
 *  1. a CONNECT_ONLY handle with CURLOPT_FORBID_REUSE: is its connection
 *     still there after the transfer "completes"?
 *  2. a CONNECT_ONLY handle in a multi: is its socket closed when the handle
 *     leaves the multi, and does a dup() made before survive?
 */
static int facts(const char *plain_url)
{
	CURL *e = curl_easy_init();
	CURLM *m = curl_multi_init();
	curl_socket_t s = CURL_SOCKET_BAD;
	int running = 1, dup_fd;
	CURLcode rc;

	curl_easy_setopt(e, CURLOPT_URL, plain_url);
	curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
	curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
	rc = curl_easy_perform(e);
	if (rc == CURLE_OK)
		curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &s);
	printf("{\"fact\":\"CONNECT_ONLY with FORBID_REUSE\",\"perform\":\"%s\","
	       "\"active_socket\":%d,\"alive\":%s}\n", curl_easy_strerror(rc), (int)s,
	       s != CURL_SOCKET_BAD && fd_alive(s) ? "true" : "false");
	curl_easy_cleanup(e);

	e = curl_easy_init();
	curl_easy_setopt(e, CURLOPT_URL, plain_url);
	curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
	curl_multi_add_handle(m, e);
	while (running) {
		curl_multi_perform(m, &running);
		if (running)
			curl_multi_poll(m, NULL, 0, 1000, NULL);
	}
	s = CURL_SOCKET_BAD;
	curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &s);
	dup_fd = s != CURL_SOCKET_BAD ? dup(s) : -1;
	curl_multi_remove_handle(m, e);
	printf("{\"fact\":\"CONNECT_ONLY removed from a multi\",\"active_socket\":%d,"
	       "\"socket_open_after_remove\":%s,\"dup_alive_after_remove\":%s}\n", (int)s,
	       s != CURL_SOCKET_BAD && fcntl(s, F_GETFD) >= 0 ? "true" : "false",
	       dup_fd >= 0 && fd_alive(dup_fd) ? "true" : "false");
	if (dup_fd >= 0)
		close(dup_fd);
	curl_easy_cleanup(e);
	curl_multi_cleanup(m);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = "shared", *url = NULL, *ca = "/etc/ssl/certs/ca-certificates.crt";
	unsigned conns = 100;
	bool capath_default = false;
	static const struct option opts[] = {
		{ "mode", 1, 0, 'm' }, { "url", 1, 0, 'u' }, { "ca", 1, 0, 'c' },
		{ "conns", 1, 0, 'n' }, { "capath-default", 0, 0, 'p' }, { 0, 0, 0, 0 },
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'm': mode = optarg; break;
		case 'u': url = optarg; break;
		case 'c': ca = optarg; break;
		case 'n': conns = (unsigned)atoi(optarg); break;
		case 'p': capath_default = true; break;
		default: return 2;
		}
	}
	if (!url) {
		fprintf(stderr,
			"usage: upws-probe --mode shared|shared-warm|curl-tls|facts --url URL [--ca FILE] "
			"[--conns N]\n");
		return 2;
	}
	bench_raise_nofile();
	if (!strcmp(mode, "shared") || !strcmp(mode, "shared-warm"))
		return run_shared(url, ca, conns, !strcmp(mode, "shared-warm"));
	if (!strcmp(mode, "curl-tls"))
		return run_curl_tls(url, ca, conns, capath_default);
	if (!strcmp(mode, "facts"))
		return facts(url);
	fprintf(stderr, "upws-probe: unknown mode %s\n", mode);
	return 2;
}
