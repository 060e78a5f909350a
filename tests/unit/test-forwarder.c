/*
 * test-forwarder.c - the forwarder's decisions (how an answer is classified,
 * how long a retry waits), the key ban set, and real round trips: a queue in
 * a temporary directory drained by the forwarder into tests/mock_upstream.py
 * over HTTPS on loopback, checked through the mock's /_mock/requests.  The
 * mock speaks HTTP/1.1 only, so the HTTP version setting is checked against
 * a small GnuTLS server here that offers both h2 and http/1.1 by ALPN.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include <jansson.h>

#include "forwarder.h"
#include "forwarder_ws.h"
#include "keyban.h"
#include "log.h"
#include "queue.h"
#include "tap.h"
#include "testutil.h"

#define TEST_TIME_LIMIT_S 120    /* the whole program; SIGALRM ends it after that */
#define MOCK_REPLY_MAX (8 << 20) /* largest control answer read from the mock */

/* --- forward_classify and forward_backoff_ms ------------------------------ */

static void test_classify(void)
{
	static const struct {
		long status;
		int curl_code;
		enum forward_verdict want;
	} cases[] = {
		{ 200, CURLE_OK, FWD_ACK },
		{ 201, CURLE_OK, FWD_ACK },
		{ 204, CURLE_OK, FWD_ACK },
		{ 299, CURLE_OK, FWD_ACK },
		{ 408, CURLE_OK, FWD_RETRY },
		{ 425, CURLE_OK, FWD_RETRY },
		{ 429, CURLE_OK, FWD_RETRY },
		{ 500, CURLE_OK, FWD_RETRY },
		{ 502, CURLE_OK, FWD_RETRY },
		{ 503, CURLE_OK, FWD_RETRY },
		{ 599, CURLE_OK, FWD_RETRY },
		{ 401, CURLE_OK, FWD_REJECT_KEY },
		{ 403, CURLE_OK, FWD_REJECT_KEY },
		{ 400, CURLE_OK, FWD_DEAD },
		{ 404, CURLE_OK, FWD_DEAD },
		{ 413, CURLE_OK, FWD_DEAD },
		{ 422, CURLE_OK, FWD_DEAD },
		{ 100, CURLE_OK, FWD_DEAD },
		{ 301, CURLE_OK, FWD_DEAD },
		{ 304, CURLE_OK, FWD_DEAD },
		{ 600, CURLE_OK, FWD_DEAD },
		/* A transport failure retries whatever status came before it. */
		{ 0, CURLE_COULDNT_CONNECT, FWD_RETRY },
		{ 0, CURLE_OPERATION_TIMEDOUT, FWD_RETRY },
		{ 0, CURLE_SSL_CONNECT_ERROR, FWD_RETRY },
		{ 0, CURLE_PEER_FAILED_VERIFICATION, FWD_RETRY },
		{ 0, CURLE_RECV_ERROR, FWD_RETRY },
		{ 0, CURLE_GOT_NOTHING, FWD_RETRY },
		{ 0, CURLE_COULDNT_RESOLVE_HOST, FWD_RETRY },
		{ 200, CURLE_PARTIAL_FILE, FWD_RETRY },
		/* ...but an answer that came before the failure is an answer. */
		{ 404, CURLE_RECV_ERROR, FWD_DEAD },
		{ 431, CURLE_SEND_ERROR, FWD_DEAD },
		{ 401, CURLE_RECV_ERROR, FWD_REJECT_KEY },
		{ 503, CURLE_RECV_ERROR, FWD_RETRY },
		{ 100, CURLE_RECV_ERROR, FWD_RETRY },
		/* A request libcurl will not make can never be sent. */
		{ 0, CURLE_URL_MALFORMAT, FWD_UNSENDABLE },
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		is_int(forward_classify(cases[i].status, cases[i].curl_code), cases[i].want,
		       "classify status %ld, curl code %d", cases[i].status, cases[i].curl_code);
}

static void test_backoff(void)
{
	unsigned prev = 0, lo_ok = 1, hi_ok = 1, mono_ok = 1;

	is_int(forward_backoff_ms(1, 100, 10000, 0.0), 50, "attempt 1, no jitter: base/2");
	is_int(forward_backoff_ms(1, 100, 10000, 0.5), 75, "attempt 1, jitter 0.5: 3/4 base");
	ok(forward_backoff_ms(1, 100, 10000, 0.9999) == 99,
	   "attempt 1, jitter ~1: just under base");
	is_int(forward_backoff_ms(2, 100, 10000, 0.0), 100, "attempt 2 doubles");
	is_int(forward_backoff_ms(3, 100, 10000, 0.0), 200, "attempt 3 doubles again");
	is_int(forward_backoff_ms(8, 100, 10000, 0.0), 5000, "attempt 8 is capped at max");
	is_int(forward_backoff_ms(0, 100, 10000, 0.0), 50, "attempt 0 counts as 1");
	is_int(forward_backoff_ms(33, 100, 10000, 0.0), 5000, "attempt 33: no shift overflow");
	is_int(forward_backoff_ms(1000, 100, 10000, 0.0), 5000, "attempt 1000 stays at the cap");
	is_int(forward_backoff_ms(UINT_MAX, 100, 10000, 0.0), 5000,
	       "attempt UINT_MAX stays at the cap");
	is_int(forward_backoff_ms(40, UINT_MAX, UINT_MAX, 0.0), UINT_MAX / 2,
	       "huge base and max do not overflow");
	is_int(forward_backoff_ms(2, 3000000000u, UINT_MAX, 0.0), UINT_MAX / 2,
	       "a doubling that would overflow takes the cap");
	is_int(forward_backoff_ms(1, 0, 10000, 0.0), 1, "base 0 still waits 1 ms (never 0)");
	is_int(forward_backoff_ms(1, 1, 10000, 0.0), 1, "base 1, jitter 0 rounds up to 1");
	is_int(forward_backoff_ms(5, 100, 50, 0.0), 25, "max below base: max wins");
	is_int(forward_backoff_ms(1, 100, 10000, -3.0), 50, "jitter below 0 is clamped");
	ok(forward_backoff_ms(1, 100, 10000, 7.0) < 100, "jitter above 1 is clamped below 1");

	/* Growth is monotonic for a fixed jitter, and jitter stays in [d/2, d). */
	for (unsigned n = 1; n <= 40; n++) {
		unsigned d = forward_backoff_ms(n, 250, 60000, 0.0);

		if (d < prev)
			mono_ok = 0;
		prev = d;
	}
	ok(mono_ok, "backoff never shrinks as attempts grow");
	srand(7);
	for (int i = 0; i < 10000; i++) {
		unsigned n = 1 + (unsigned)(rand() % 20);
		double j = (double)rand() / ((double)RAND_MAX + 1.0);
		unsigned long long nominal = 250ull << (n - 1);
		unsigned full = nominal > 60000 ? 60000 : (unsigned)nominal;
		unsigned d = forward_backoff_ms(n, 250, 60000, j);

		if (d < full / 2)
			lo_ok = 0;
		if (d >= full)
			hi_ok = 0;
	}
	ok(lo_ok, "jittered backoff is at least half the nominal delay");
	ok(hi_ok, "jittered backoff is below the nominal delay");
}

/* --- the mock upstream ---------------------------------------------------- */

struct mock {
	pid_t pid;
	int stdin_fd;           /* closing it makes the mock exit (--exit-on-eof) */
	int port;
	char base[64];
	char ca[PATH_MAX];
};

static const char *tests_srcdir(void)
{
	static char dir[PATH_MAX];
	const char *env = getenv("TESTS_SRCDIR");
	char *slash;

	if (env && *env)
		return env;
	/* .../tests/unit/test-forwarder.c -> .../tests */
	snprintf(dir, sizeof dir, "%s", __FILE__);
	for (int i = 0; i < 2; i++) {
		slash = strrchr(dir, '/');
		if (!slash)
			return "../tests";
		*slash = '\0';
	}
	return dir;
}

/* Starts tests/mock_upstream.py and reads its "PORT <n>" line. */
static int mock_start(struct mock *m)
{
	char script[PATH_MAX], line[64];
	int out[2] = { -1, -1 }, in[2] = { -1, -1 };
	size_t len = 0;
	int64_t deadline = mono_ms() + 15000;
	int rc = -1;

	memset(m, 0, sizeof *m);
	m->pid = -1;
	m->stdin_fd = -1;
	snprintf(script, sizeof script, "%s/mock_upstream.py", tests_srcdir());
	snprintf(m->ca, sizeof m->ca, "%s/certs/ca.pem", tests_srcdir());
	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0)
		goto out;
	m->pid = fork();
	if (m->pid < 0)
		goto out;
	if (m->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive the test */
		dup2(in[0], 0);
		dup2(out[1], 1);
		execlp("python3", "python3", script, "--exit-on-eof", (char *)NULL);
		_exit(127);
	}
	m->stdin_fd = in[1];
	in[1] = -1;
	while (len < sizeof line - 1 && !memchr(line, '\n', len)) {
		struct pollfd p = { .fd = out[0], .events = POLLIN };
		int64_t left = deadline - mono_ms();
		ssize_t got;

		if (left <= 0 || poll(&p, 1, (int)left) <= 0)
			goto out;
		got = read(out[0], line + len, sizeof line - 1 - len);
		if (got <= 0)
			goto out;
		len += (size_t)got;
		line[len] = '\0';
	}
	line[len] = '\0';
	if (sscanf(line, "PORT %d", &m->port) != 1 || m->port <= 0)
		goto out;
	snprintf(m->base, sizeof m->base, "https://127.0.0.1:%d", m->port);
	rc = 0;
out:
	for (int i = 0; i < 2; i++) {
		if (out[i] >= 0)
			close(out[i]);
		if (in[i] >= 0)
			close(in[i]);
	}
	return rc;
}

/* SIGTERM, then SIGKILL if it has not gone within 5 s. */
static void mock_stop(struct mock *m)
{
	int status;
	int64_t deadline = mono_ms() + 5000;

	if (m->stdin_fd >= 0)
		close(m->stdin_fd);
	m->stdin_fd = -1;
	if (m->pid <= 0)
		return;
	kill(m->pid, SIGTERM);
	while (waitpid(m->pid, &status, WNOHANG) == 0) {
		if (mono_ms() > deadline) {
			kill(m->pid, SIGKILL);
			waitpid(m->pid, &status, 0);
			break;
		}
		sleep_ms(20);
	}
	m->pid = -1;
}

struct reply {
	char *data;
	size_t len;
};

static size_t reply_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct reply *r = arg;
	size_t n = size * nmemb;
	char *p;

	if (r->len + n > MOCK_REPLY_MAX)
		return 0;
	p = realloc(r->data, r->len + n + 1);
	if (!p)
		return 0;
	memcpy(p + r->len, data, n);
	r->data = p;
	r->len += n;
	r->data[r->len] = '\0';
	return n;
}

/* Calls the mock's control API; returns the parsed JSON answer or NULL. */
static json_t *mock_call(struct mock *m, const char *path, const char *post)
{
	struct reply r = { NULL, 0 };
	char url[256];
	json_t *j = NULL;
	long status = 0;
	CURL *c = curl_easy_init();

	if (!c)
		return NULL;
	snprintf(url, sizeof url, "%s%s", m->base, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CAINFO, m->ca);
	curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, reply_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
	if (post)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
	if (curl_easy_perform(c) == CURLE_OK &&
	    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
	    status == 200 && r.data)
		j = json_loads(r.data, 0, NULL);
	curl_easy_cleanup(c);
	free(r.data);
	return j;
}

static int mock_behave(struct mock *m, const char *spec)
{
	json_t *j = mock_call(m, "/_mock/behave", spec);
	int rc = j ? 0 : -1;

	json_decref(j);
	return rc;
}

static void mock_reset(struct mock *m)
{
	json_decref(mock_call(m, "/_mock/reset", "{}"));
}

static json_t *mock_requests(struct mock *m)
{
	json_t *j = mock_call(m, "/_mock/requests", NULL);

	if (j && !json_is_array(j)) {
		json_decref(j);
		j = NULL;
	}
	return j;
}

static const char *rec_str(json_t *rec, const char *field)
{
	return json_string_value(json_object_get(rec, field));
}

static long rec_int(json_t *rec, const char *field)
{
	return (long)json_integer_value(json_object_get(rec, field));
}

/* The value of header name in a recorded request, or NULL. */
static const char *rec_header(json_t *rec, const char *name)
{
	json_t *pair;
	size_t i;

	json_array_foreach(json_object_get(rec, "headers"), i, pair) {
		const char *k = json_string_value(json_array_get(pair, 0));

		if (k && !strcasecmp(k, name))
			return json_string_value(json_array_get(pair, 1));
	}
	return NULL;
}

/* How many client connections (ip:port) the recorded requests came over. */
static size_t distinct_peers(json_t *reqs)
{
	size_t i, j, n = 0;

	for (i = 0; i < json_array_size(reqs); i++) {
		const char *p = rec_str(json_array_get(reqs, i), "peer");

		for (j = 0; j < i; j++) {
			const char *q = rec_str(json_array_get(reqs, j), "peer");

			if (p && q && !strcmp(p, q))
				break;
		}
		if (p && j == i)
			n++;
	}
	return n;
}

/* --- round trips ---------------------------------------------------------- */

struct env {
	struct mock mock;
	char *dir;                /* tmpdir_create's */
	char db[128];
	struct queue *q;
	struct keyban *kb;
	struct forwarder_options fo;
};

static int put(struct env *e, const char *session, const char *target, const char *body,
               const char *key, int64_t *id)
{
	struct queue_msg m = {
		.session = session,
		.target = target,
		.content_type = "application/json",
		.xff = "203.0.113.7, 10.1.2.3",
		.peer_ip = "10.1.2.3",
		.user_agent = "test-agent/1.0",
		.origin = "https://app.example",
		.api_key = key,
		.body = body,
		.body_len = strlen(body),
	};

	return queue_put(e->q, &m, true, id);
}

static struct queue_stats stats(struct env *e)
{
	struct queue_stats st;

	queue_stats(e->q, &st);
	return st;
}

/* Waits up to ms for the queue to hold nothing. */
static int wait_drained(struct env *e, unsigned ms)
{
	int64_t deadline = mono_ms() + ms;

	for (;;) {
		struct queue_stats st = stats(e);

		if (st.depth == 0 && st.in_flight == 0)
			return 0;
		if (mono_ms() > deadline)
			return -1;
		sleep_ms(10);
	}
}

/* Waits up to ms for the mock to have recorded n requests. */
static json_t *wait_requests(struct env *e, size_t n, unsigned ms)
{
	int64_t deadline = mono_ms() + ms;

	for (;;) {
		json_t *reqs = mock_requests(&e->mock);

		if (reqs && json_array_size(reqs) >= n)
			return reqs;
		if (mono_ms() > deadline)
			return reqs;
		json_decref(reqs);
		sleep_ms(10);
	}
}

static struct forwarder *start(struct env *e)
{
	struct forwarder *f = NULL;
	char *cause = NULL;

	if (forwarder_start(&f, e->q, e->kb, &e->fo, &cause) < 0) {
		diag("forwarder_start: %s", cause ? cause : "?");
		free(cause);
		return NULL;
	}
	return f;
}

/* Three messages of one session arrive in order with the headers we promise. */
static void case_in_order(struct env *e)
{
	const char *bodies[3] = { "{\"n\":1}", "{\"n\":2}", "{\"n\":3}" };
	int64_t ids[3] = { 0 };
	char want[160];
	struct forwarder *f;
	json_t *reqs, *r;
	size_t i;
	int ok_put = 1;

	for (i = 0; i < 3; i++)
		if (put(e, "session-1", "/trace", bodies[i], "good-key", &ids[i]) != QUEUE_OK)
			ok_put = 0;
	ok(ok_put, "three messages queued");
	f = start(e);
	ok(f, "forwarder started");
	ok(wait_drained(e, 10000) == 0, "the queue drains");
	forwarder_stop(f, 2000);

	reqs = mock_requests(&e->mock);
	is_int(json_array_size(reqs), 3, "the upstream got three requests");
	json_array_foreach(reqs, i, r) {
		if (i >= 3)
			break;
		is_str(rec_str(r, "method"), "POST", "request %zu is a POST", i);
		is_str(rec_str(r, "path"), "/trace", "request %zu goes to /trace", i);
		is_str(rec_str(r, "text"), bodies[i], "request %zu carries message %zu (in order)",
		       i, i);
		snprintf(want, sizeof want, "%s-%lld", queue_instance_id(e->q), (long long)ids[i]);
		is_str(rec_header(r, "Idempotency-Key"), want, "request %zu Idempotency-Key", i);
		is_str(rec_header(r, "X-Forwarded-For"), "203.0.113.7, 10.1.2.3",
		       "request %zu X-Forwarded-For is the full chain", i);
		is_str(rec_header(r, "X-Forwarded-Proto"), "https", "request %zu X-Forwarded-Proto",
		       i);
		is_str(rec_header(r, "Content-Type"), "application/json",
		       "request %zu Content-Type", i);
		is_str(rec_header(r, "User-Agent"), "test-agent/1.0", "request %zu User-Agent", i);
		is_str(rec_header(r, "Origin"), "https://app.example", "request %zu Origin", i);
		ok(!rec_header(r, "Expect"), "request %zu has no Expect", i);
	}
	json_decref(reqs);
	is_int(stats(e).depth, 0, "nothing left queued");
}

/* Two 503s delay the first message; the session still arrives in order. */
static void case_retry_in_order(struct env *e)
{
	static const char *want_text[5] = { "a", "a", "a", "b", "c" };
	static const long want_status[5] = { 503, 503, 200, 200, 200 };
	struct forwarder *f;
	json_t *reqs, *r;
	int64_t put_at, first_ms;
	size_t i;

	mock_reset(&e->mock);
	ok(mock_behave(&e->mock, "{\"status\": 503, \"count\": 2}") == 0, "mock answers 503 twice");
	f = start(e);
	ok(f, "forwarder started");
	sleep_ms(300);          /* let the workers go to sleep in their poll */
	put_at = mono_ms();
	ok(put(e, "session-2", "/trace", "a", "good-key", NULL) == QUEUE_OK &&
	   put(e, "session-2", "/trace", "b", "good-key", NULL) == QUEUE_OK &&
	   put(e, "session-2", "/trace", "c", "good-key", NULL) == QUEUE_OK,
	   "three messages queued while the forwarder runs");
	reqs = wait_requests(e, 1, 5000);
	first_ms = mono_ms() - put_at;
	json_decref(reqs);
	/* Without the queue's notify the idle worker would sleep up to 1 s. */
	ok(first_ms < 600, "the first is sent at once (%lld ms), not at the next poll timeout",
	   (long long)first_ms);
	ok(wait_drained(e, 10000) == 0, "the queue drains despite the 503s");
	forwarder_stop(f, 2000);

	reqs = mock_requests(&e->mock);
	is_int(json_array_size(reqs), 5, "five attempts: two refused, three delivered");
	json_array_foreach(reqs, i, r) {
		if (i >= 5)
			break;
		is_str(rec_str(r, "text"), want_text[i], "attempt %zu carries \"%s\"", i,
		       want_text[i]);
		is_int(rec_int(r, "status"), want_status[i], "attempt %zu answered %ld", i,
		       want_status[i]);
	}
	if (json_array_size(reqs) >= 3) {
		is_str(rec_header(json_array_get(reqs, 0), "Idempotency-Key"),
		       rec_header(json_array_get(reqs, 2), "Idempotency-Key"),
		       "a retried message keeps its Idempotency-Key");
	}
	/* Kept-alive connections: at most one per worker, never one per request. */
	ok(distinct_peers(reqs) >= 1 && distinct_peers(reqs) <= e->fo.workers,
	   "%zu requests came over %zu connection(s)", json_array_size(reqs),
	   distinct_peers(reqs));
	json_decref(reqs);
}

/* Retry-After (capped at retry_max_ms) outweighs a shorter backoff. */
static void case_retry_after(struct env *e)
{
	struct forwarder *f;
	json_t *reqs;
	double gap = 0;

	mock_reset(&e->mock);
	ok(mock_behave(&e->mock, "{\"status\": 429, \"count\": 1, \"retry_after\": 1}") == 0,
	   "mock answers 429 with Retry-After: 1 once");
	ok(put(e, "session-3", "/?apiKey=good-key&x=1", "ra", "good-key", NULL) == QUEUE_OK,
	   "message queued");
	f = start(e);
	ok(wait_drained(e, 10000) == 0, "the queue drains");
	forwarder_stop(f, 2000);
	reqs = mock_requests(&e->mock);
	is_int(json_array_size(reqs), 2, "two attempts");
	if (json_array_size(reqs) == 2) {
		gap = json_real_value(json_object_get(json_array_get(reqs, 1), "time")) -
		      json_real_value(json_object_get(json_array_get(reqs, 0), "time"));
		is_str(rec_str(json_array_get(reqs, 1), "path"), "/?apiKey=good-key&x=1",
		       "the target's query reaches the upstream unchanged");
	}
	/* backoff alone would be <= retry_base_ms (20); Retry-After is capped at 400 */
	ok(gap >= 0.35 && gap < 0.9, "the retry waited for Retry-After, capped (%.3f s)", gap);
	json_decref(reqs);
}

/* 404 dead-letters at once; 401 bans the key and drops its queued messages. */
static void case_dead_and_rejected(struct env *e)
{
	struct forwarder *f;
	json_t *reqs;
	uint64_t dead0 = stats(e).dead;

	mock_reset(&e->mock);
	ok(mock_behave(&e->mock, "{\"status\": 404, \"count\": 1, \"body\": \"no route\"}") == 0,
	   "mock answers 404 once");
	ok(put(e, "session-4", "/nowhere", "lost", "good-key", NULL) == QUEUE_OK, "message queued");
	f = start(e);
	ok(wait_drained(e, 10000) == 0, "the queue drains");
	forwarder_stop(f, 2000);
	is_int(stats(e).dead, dead0 + 1, "a 404 dead-letters the message");
	reqs = mock_requests(&e->mock);
	is_int(json_array_size(reqs), 1, "... without a retry");
	json_decref(reqs);

	mock_reset(&e->mock);
	ok(mock_behave(&e->mock, "{\"status\": 401}") == 0, "mock answers 401");
	ok(!keyban_contains(e->kb, "bad-key"), "the key is not banned yet");
	ok(put(e, "session-5", "/trace", "x1", "bad-key", NULL) == QUEUE_OK &&
	   put(e, "session-5", "/trace", "x2", "bad-key", NULL) == QUEUE_OK,
	   "two messages with a bad key queued");
	f = start(e);
	ok(wait_drained(e, 10000) == 0, "the queue drains");
	forwarder_stop(f, 2000);
	ok(keyban_contains(e->kb, "bad-key"), "a 401 bans the key");
	is_int(stats(e).dead, dead0 + 3, "both of its messages are dead-lettered");
	reqs = mock_requests(&e->mock);
	is_int(json_array_size(reqs), 1, "the second was never sent");
	json_decref(reqs);
	mock_reset(&e->mock);
}

/* A hung upstream: stop gives up at its deadline and the message stays queued. */
static void case_stop_deadline(struct env *e)
{
	struct forwarder *f;
	json_t *reqs;
	struct queue_stats st;
	uint64_t dead0 = stats(e).dead;
	int64_t t0, took;

	mock_reset(&e->mock);
	ok(mock_behave(&e->mock, "{\"delay_ms\": 3000, \"count\": 1}") == 0,
	   "mock hangs 3 s on the next request");
	ok(put(e, "session-6", "/trace", "slow", "good-key", NULL) == QUEUE_OK, "message queued");
	f = start(e);
	reqs = wait_requests(e, 1, 5000);
	is_int(json_array_size(reqs), 1, "the request reached the mock");
	json_decref(reqs);
	t0 = mono_ms();
	forwarder_stop(f, 200);
	took = mono_ms() - t0;
	ok(took >= 150 && took < 1500, "forwarder_stop(200) returned at its deadline (%lld ms)",
	   (long long)took);
	st = stats(e);
	is_int(st.depth, 1, "the aborted message is still queued");
	is_int(st.in_flight, 0, "... and no longer leased");
	is_int(st.dead, dead0, "... and not dead-lettered");

	f = start(e);
	ok(wait_drained(e, 10000) == 0, "the next run delivers it");
	forwarder_stop(f, 2000);
	reqs = mock_requests(&e->mock);
	is_int(json_array_size(reqs), 2, "sent twice in all");
	if (json_array_size(reqs) == 2)
		is_str(rec_header(json_array_get(reqs, 0), "Idempotency-Key"),
		       rec_header(json_array_get(reqs, 1), "Idempotency-Key"),
		       "with the same Idempotency-Key");
	json_decref(reqs);
}

/*
 * Two forwarders, each on a queue of its own, run side by side in one
 * process, and each queue's notification wakes its own forwarder: nothing
 * about a forwarder is process-wide.
 */
static void case_two_forwarders(struct env *e)
{
	struct queue_options qo;
	struct queue *q2 = NULL;
	struct forwarder *f1, *f2 = NULL;
	char db2[160], *cause = NULL;
	json_t *reqs, *r;
	int64_t put_at, took;
	int seen_one = 0, seen_two = 0;
	size_t i;

	snprintf(db2, sizeof db2, "%s/second.db", e->dir);
	queue_options_init(&qo);
	qo.commit_window_ms = 2;
	if (queue_open(&q2, db2, &qo, &cause) != QUEUE_OK) {
		ok(0, "second queue_open: %s", cause ? cause : "?");
		free(cause);
		return;
	}
	mock_reset(&e->mock);
	f1 = start(e);
	ok(f1, "a forwarder on the first queue started");
	ok(forwarder_start(&f2, q2, e->kb, &e->fo, &cause) == 0 && f2,
	   "a second forwarder, on a second queue, started beside it (%s)", cause ? cause : "ok");
	free(cause);
	sleep_ms(300);          /* let the workers of both go to sleep in their poll */
	put_at = mono_ms();
	{
		struct queue_msg m = { .session = "two-b", .target = "/trace", .body = "two",
		                       .body_len = 3 };

		ok(put(e, "two-a", "/trace", "one", "good-key", NULL) == QUEUE_OK &&
		   queue_put(q2, &m, true, NULL) == QUEUE_OK, "one message queued on each queue");
	}
	reqs = wait_requests(e, 2, 5000);
	took = mono_ms() - put_at;
	is_int(json_array_size(reqs), 2, "both reached the upstream");
	json_array_foreach(reqs, i, r) {
		const char *text = rec_str(r, "text");

		seen_one |= text && !strcmp(text, "one");
		seen_two |= text && !strcmp(text, "two");
	}
	ok(seen_one && seen_two, "one from each queue");
	/* Without its notification a sleeping worker would wait up to 1 s. */
	ok(took < 600, "both were sent at once (%lld ms): each queue wakes its own forwarder",
	   (long long)took);
	json_decref(reqs);
	forwarder_stop(f1, 2000);
	forwarder_stop(f2, 2000);
	is_int(stats(e).depth, 0, "the first queue is empty");
	queue_close(q2);
}

/* --- the upstream HTTP version --------------------------------------------- */

/*
 * A TLS server on loopback that offers h2 and http/1.1 by ALPN, preferring
 * h2, so what a connection negotiates is what the client offered.  It
 * records the protocol and the first line each connection sent, answers an
 * HTTP/1.1 request 200 and closes, and closes an HTTP/2 one unanswered.
 */
struct probe {
	int lfd, port;
	pthread_t thread;
	bool running;
	atomic_bool stop;
	gnutls_certificate_credentials_t cred;
	pthread_mutex_t mu;
	unsigned conns;         /* connections that completed the handshake */
	bool mixed;             /* a later one negotiated something else */
	char alpn[16];          /* negotiated by the first; "" if none */
	char first_line[64];    /* the first line the first one sent */
};

#define PROBE_IO_TIMEOUT_S 5
#define PROBE_ANSWER "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"

/* Reads from s until the request head is complete (or the HTTP/2 preface
 * is in), then, for HTTP/1.1, the rest of a Content-Length body.  Returns
 * the bytes in buf. */
static size_t probe_read_request(gnutls_session_t s, char *buf, size_t size)
{
	size_t len = 0, want = 0;
	char *end;

	while (len < size - 1) {
		ssize_t n = gnutls_record_recv(s, buf + len, size - 1 - len);

		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n <= 0)
			break;  /* also GNUTLS_E_AGAIN: the socket's timeout */
		len += (size_t)n;
		buf[len] = '\0';
		if (!want && (end = strstr(buf, "\r\n\r\n"))) {
			const char *cl = strcasestr(buf, "\r\nContent-Length:");

			want = (size_t)(end + 4 - buf);
			if (cl && cl < end)
				want += strtoul(cl + 17, NULL, 10);
		}
		if (want && len >= want)
			break;
	}
	buf[len] = '\0';
	return len;
}

static void probe_serve(struct probe *p, int fd)
{
	static const gnutls_datum_t protos[2] = {
		{ (unsigned char *)"h2", 2 }, { (unsigned char *)"http/1.1", 8 },
	};
	struct timeval tv = { PROBE_IO_TIMEOUT_S, 0 };
	gnutls_session_t s;
	gnutls_datum_t proto = { NULL, 0 };
	char buf[8192], alpn[16] = "";
	int rc;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (gnutls_init(&s, GNUTLS_SERVER) < 0)
		return;
	if (gnutls_set_default_priority(s) < 0 ||
	    gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, p->cred) < 0 ||
	    gnutls_alpn_set_protocols(s, protos, 2, GNUTLS_ALPN_SERVER_PRECEDENCE) < 0)
		goto out;
	gnutls_transport_set_int(s, fd);
	do
		rc = gnutls_handshake(s);
	while (rc < 0 && !gnutls_error_is_fatal(rc) && rc != GNUTLS_E_AGAIN);
	if (rc < 0)
		goto out;
	if (gnutls_alpn_get_selected_protocol(s, &proto) == 0 && proto.size < sizeof alpn) {
		memcpy(alpn, proto.data, proto.size);
		alpn[proto.size] = '\0';
	}
	probe_read_request(s, buf, sizeof buf);
	pthread_mutex_lock(&p->mu);
	if (p->conns++ == 0) {
		snprintf(p->alpn, sizeof p->alpn, "%s", alpn);
		snprintf(p->first_line, sizeof p->first_line, "%.*s", (int)strcspn(buf, "\r\n"),
		         buf);
	} else if (strcmp(p->alpn, alpn)) {
		p->mixed = true;
	}
	pthread_mutex_unlock(&p->mu);
	if (!strncmp(buf, "POST ", 5) && strstr(buf, " HTTP/1.1\r\n")) {
		gnutls_record_send(s, PROBE_ANSWER, strlen(PROBE_ANSWER));
		gnutls_bye(s, GNUTLS_SHUT_WR);
	}
out:
	gnutls_deinit(s);
	close(fd);
}

static void *probe_main(void *arg)
{
	struct probe *p = arg;

	while (!atomic_load(&p->stop)) {
		struct pollfd pf = { .fd = p->lfd, .events = POLLIN };
		int fd;

		if (poll(&pf, 1, 50) <= 0)
			continue;
		fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			probe_serve(p, fd);
	}
	return NULL;
}

static int probe_start(struct probe *p)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t salen = sizeof sa;
	char cert[PATH_MAX], key[PATH_MAX];

	memset(p, 0, sizeof *p);
	atomic_init(&p->stop, false);
	pthread_mutex_init(&p->mu, NULL);
	snprintf(cert, sizeof cert, "%s/certs/server.pem", tests_srcdir());
	snprintf(key, sizeof key, "%s/certs/server-key.pem", tests_srcdir());
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    listen(p->lfd, 16) < 0 || getsockname(p->lfd, (struct sockaddr *)&sa, &salen) < 0)
		return -1;
	p->port = ntohs(sa.sin_port);
	if (gnutls_certificate_allocate_credentials(&p->cred) < 0) {
		p->cred = NULL;
		return -1;
	}
	if (gnutls_certificate_set_x509_key_file(p->cred, cert, key, GNUTLS_X509_FMT_PEM) < 0)
		return -1;
	if (pthread_create(&p->thread, NULL, probe_main, p) != 0)
		return -1;
	p->running = true;
	return 0;
}

/* Stops the thread and frees what probe_start set up, also after it failed. */
static void probe_stop(struct probe *p)
{
	atomic_store(&p->stop, true);
	if (p->running)
		pthread_join(p->thread, NULL);
	p->running = false;
	if (p->lfd >= 0)
		close(p->lfd);
	p->lfd = -1;
	if (p->cred)
		gnutls_certificate_free_credentials(p->cred);
	p->cred = NULL;
	pthread_mutex_destroy(&p->mu);
}

static unsigned probe_conns(struct probe *p)
{
	unsigned n;

	pthread_mutex_lock(&p->mu);
	n = p->conns;
	pthread_mutex_unlock(&p->mu);
	return n;
}

/*
 * The forwarder with http_version v against the probe: what was negotiated
 * and what the request looked like.  Over HTTP/1.1 the message is also
 * delivered; over HTTP/2 the probe hangs up, so the message stays queued
 * (this case runs last).
 */
static void case_http_version(struct env *e, enum forward_http v, const char *name,
                              const char *want_alpn, const char *want_line)
{
	struct forwarder_options fo = e->fo;
	struct forwarder *f = NULL;
	struct probe p;
	char base[64], session[32], *cause = NULL;
	int64_t deadline;

	if (probe_start(&p) < 0) {
		ok(0, "ALPN probe started: %s", strerror(errno));
		probe_stop(&p);
		return;
	}
	snprintf(base, sizeof base, "https://127.0.0.1:%d", p.port);
	snprintf(session, sizeof session, "http-%s", name);
	fo.upstream = base;
	fo.http_version = v;
	ok(put(e, session, "/alpn", "probe", "good-key", NULL) == QUEUE_OK,
	   "HTTP %s: message queued", name);
	ok(forwarder_start(&f, e->q, e->kb, &fo, &cause) == 0, "HTTP %s: forwarder started (%s)",
	   name, cause ? cause : "ok");
	free(cause);
	deadline = mono_ms() + 5000;
	while (probe_conns(&p) == 0 && mono_ms() < deadline)
		sleep_ms(10);
	if (v == FWD_HTTP_1_1)
		ok(wait_drained(e, 5000) == 0, "HTTP %s: the message is delivered", name);
	forwarder_stop(f, 200);
	probe_stop(&p);
	ok(p.conns >= 1, "HTTP %s: the upstream got a connection", name);
	is_str(p.alpn, want_alpn, "HTTP %s: ALPN negotiated %s", name, want_alpn);
	is_str(p.first_line, want_line, "HTTP %s: the request starts \"%s\"", name, want_line);
	ok(!p.mixed, "HTTP %s: every connection (%u) negotiated the same", name, p.conns);
}

static void test_round_trips(void)
{
	struct env e = { 0 };
	struct queue_options qo;
	char *cause = NULL;

	e.mock.pid = -1;
	e.mock.stdin_fd = -1;
	e.dir = tmpdir_create("test-forwarder");
	snprintf(e.db, sizeof e.db, "%s/queue.db", e.dir);
	queue_options_init(&qo);
	qo.commit_window_ms = 2;
	if (queue_open(&e.q, e.db, &qo, &cause) != QUEUE_OK) {
		ok(0, "queue_open: %s", cause ? cause : "?");
		free(cause);
		goto out;
	}
	e.kb = keyban_create(60);
	ok(e.kb, "keyban_create");
	ok(mock_start(&e.mock) == 0, "mock upstream started (python3 %s/mock_upstream.py)",
	   tests_srcdir());
	if (e.mock.port <= 0 || !e.kb)
		goto out;
	e.fo = (struct forwarder_options){
		.upstream = e.mock.base,
		.ca_file = e.mock.ca,
		.workers = 2,
		.inflight = 4,
		.timeout_ms = 5000,
		.connect_timeout_ms = 2000,
		.retry_base_ms = 20,
		.retry_max_ms = 400,
	};
	case_in_order(&e);
	case_retry_in_order(&e);
	case_retry_after(&e);
	case_dead_and_rejected(&e);
	case_stop_deadline(&e);
	case_two_forwarders(&e);
	case_http_version(&e, FWD_HTTP_1_1, "1.1", "http/1.1", "POST /alpn HTTP/1.1");
	/* Last: the probe never answers HTTP/2, so this message stays queued. */
	case_http_version(&e, FWD_HTTP_2, "2", "h2", "PRI * HTTP/2.0");
out:
	mock_stop(&e.mock);
	queue_close(e.q);
	keyban_destroy(e.kb);
	tmpdir_remove(e.dir);
}

/* --- the hello fields later SDK connections of a key get ------------------ */

static void test_hello_learnable(void)
{
	char *h;

	h = fws_hello_learnable("{\"connectionId\":\"c-1\",\"projectId\":\"p\",\"interval\":5000,"
	                        "\"SessionToken\":\"x\",\"socketId\":3,\"sendInterval\":2}");
	is_str(h, "{\"projectId\":\"p\",\"interval\":5000,\"sendInterval\":2}",
	       "hello: connection, session and socket fields are left out, the rest kept in order");
	free(h);
	h = fws_hello_learnable("{\"error\":\"bad key\"}");
	ok(!h, "hello: an error is not learned");
	free(h);
	h = fws_hello_learnable("[1,2]");
	ok(!h, "hello: not an object: nothing");
	free(h);
	h = fws_hello_learnable("{\"projectId\":");
	ok(!h, "hello: not JSON: nothing");
	free(h);
	h = fws_hello_learnable("{}");
	is_str(h, "{}", "hello: an empty object stays one");
	free(h);
}

int main(void)
{
	alarm(TEST_TIME_LIMIT_S);
	log_set_level(LOG_ERROR);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	test_classify();
	test_backoff();
	test_round_trips();
	test_hello_learnable();
	curl_global_cleanup();
	return done_testing();
}
