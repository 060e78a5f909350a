/* test-fdfit.c - max-connections and max-http-connections fitted to an
 * open-file limit: the worst case reserved + 3 H + per_ws (N - H). */
#include "fdfit.h"

#include <limits.h>
#include <stdbool.h>

#include "tap.h"

/* The reserve main.c works out for the default settings: 64 + 4 workers x
 * 16 in flight + 2 x (4 + 2 + 4) threads + 3 x 4 HTTP threads. */
#define DEFAULT_RESERVED 160ULL

static void test_brief_figures(void)
{
	struct fdfit f;

	ok(fdfit_solve(&f, 20000, DEFAULT_RESERVED, 10000, 1024,
	               FDFIT_PER_WEBSOCKET_UPSTREAM_WS) == 0, "nofile 20000: fits");
	/* 1024 + (20000 - 160 - 3 x 1024) / 2; 3 descriptors for every one
	 * would have been 6613. */
	is_int(f.max_connections, 9408, "upstream websockets: 9408 connections at nofile 20000");
	is_int(f.max_http_connections, 1024, "max-http-connections stays 1024");
	ok(f.lowered && !f.http_lowered, "max-connections lowered, max-http-connections not");
	is_int(f.worst_case, 20000, "the worst case takes exactly the limit");

	ok(fdfit_solve(&f, 20000, DEFAULT_RESERVED, 100000, 1024,
	               FDFIT_PER_WEBSOCKET_HTTP_POST) == 0, "http-post: fits");
	is_int(f.max_connections, 17792, "http-post: 1024 + 16768 websockets of 1 descriptor");
	is_int(f.worst_case, 20000, "http-post: the worst case takes exactly the limit");

	ok(fdfit_solve(&f, 20000, DEFAULT_RESERVED, 10000, 1024,
	               FDFIT_PER_WEBSOCKET_HTTP_POST) == 0 && !f.lowered &&
	   f.max_connections == 10000, "http-post: 10000 fit in 20000 as asked");
}

static void test_as_asked(void)
{
	struct fdfit f;

	ok(fdfit_solve(&f, 1048576, DEFAULT_RESERVED, 10000, 1024, 2) == 0 && !f.lowered &&
	   !f.http_lowered && f.max_connections == 10000 && f.max_http_connections == 1024,
	   "a large limit: both as asked");
	is_int(f.worst_case, 160 + 3 * 1024 + 2 * (10000 - 1024), "and the worst case is said");
	ok(fdfit_solve(&f, 1048576, DEFAULT_RESERVED, 500, 1024, 2) == 0 &&
	   f.max_http_connections == 500 && !f.http_lowered && !f.lowered,
	   "max-http-connections over max-connections is max-connections");
	is_int(f.worst_case, 160 + 3 * 500, "then every connection may be un-upgraded");
	ok(fdfit_solve(&f, 0, DEFAULT_RESERVED, 10000, 20000, 2) == 0 &&
	   f.max_connections == 10000 && f.max_http_connections == 10000 && !f.lowered,
	   "an unknown limit (0) fits everything");
	ok(fdfit_solve(&f, ULLONG_MAX, DEFAULT_RESERVED, 1000000, 1000000, 2) == 0 &&
	   f.max_connections == 1000000 && !f.lowered, "so does an infinite one");
}

static void test_tight(void)
{
	struct fdfit f;

	/* test_hostile.py's relay: 257 descriptors, 97 for connections. */
	ok(fdfit_solve(&f, 257, DEFAULT_RESERVED, 10000, 1024, 2) == 0, "nofile 257: fits");
	is_int(f.max_http_connections, 32, "max-http-connections lowered to 97 / 3");
	ok(f.http_lowered && f.lowered, "both lowered");
	is_int(f.max_connections, 32, "and max-connections to it: 1 descriptor left over");
	ok(fdfit_solve(&f, 258, DEFAULT_RESERVED, 10000, 1024, 2) == 0 &&
	   f.max_connections == 33 && f.max_http_connections == 32,
	   "two left over: one websocket more");
	ok(fdfit_solve(&f, 257, DEFAULT_RESERVED, 33, 33, 1) == 0 &&
	   f.max_http_connections == 32 && f.max_connections == 33 && f.http_lowered && !f.lowered,
	   "http-post: H lowered, N kept when the leftover holds it");
	ok(fdfit_solve(&f, 162, DEFAULT_RESERVED, 10000, 1024, 2) < 0,
	   "2 descriptors over the reserve: not one connection fits");
	ok(fdfit_solve(&f, 100, DEFAULT_RESERVED, 10000, 1024, 2) < 0, "nor under the reserve");
	ok(fdfit_solve(&f, 163, DEFAULT_RESERVED, 10000, 1024, 2) == 0 &&
	   f.max_connections == 1 && f.max_http_connections == 1, "3 over it: one");
	ok(fdfit_solve(&f, 20000, 160, 10, 10, 0) < 0 && fdfit_solve(&f, 20000, 160, 10, 10, 4) < 0,
	   "a websocket costs 1 to 3 descriptors");
	ok(fdfit_solve(&f, 20000, 160, 0, 10, 2) < 0 && fdfit_solve(&f, 20000, 160, 10, 0, 2) < 0,
	   "limits of 0 are refused");
}

/* Whether f, fitted for n connections and h un-upgraded at nofile, is
 * within the limit, follows the formula, and is as large as the limit
 * allows. */
static bool fit_is_right(const struct fdfit *f, unsigned long long nofile, unsigned n,
                         unsigned h, unsigned per_ws)
{
	unsigned long long formula = 160 + 3ULL * f->max_http_connections +
	                             (unsigned long long)per_ws *
	                                     (f->max_connections - f->max_http_connections);

	if (h > n)
		h = n;
	if (f->worst_case > nofile || f->worst_case != formula ||
	    f->max_http_connections > f->max_connections || f->max_connections > n ||
	    f->max_http_connections > h)
		return false;
	if (f->lowered && f->worst_case + per_ws <= nofile)   /* one more would fit */
		return false;
	return !f->http_lowered || 160 + 3ULL * (f->max_http_connections + 1) > nofile;
}

/* Over many limits: what is decided fits, and one connection more would not. */
static void test_sweep(void)
{
	static const unsigned asks[][2] = { { 10000, 1024 }, { 50, 1024 }, { 3000, 3000 },
	                                    { 1000000, 1 } };
	unsigned bad = 0, checked = 0;
	struct fdfit f;

	for (unsigned per_ws = 1; per_ws <= 3; per_ws++)
		for (size_t a = 0; a < sizeof asks / sizeof asks[0]; a++)
			for (unsigned long long nofile = 163; nofile < 40000; nofile += 97) {
				unsigned n = asks[a][0], h = asks[a][1];

				checked++;
				if (fdfit_solve(&f, nofile, 160, n, h, per_ws) < 0 ||
				    !fit_is_right(&f, nofile, n, h, per_ws))
					bad++;
			}
	is_int(bad, 0, "%u fits: each within the limit, and as large as it allows", checked);
}

int main(void)
{
	test_brief_figures();
	test_as_asked();
	test_tight();
	test_sweep();
	return done_testing();
}
