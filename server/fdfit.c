/*
 * fdfit.c - how many connections an open-file limit can hold (fdfit.h).
 */
#include "fdfit.h"

static unsigned long long worst_case(unsigned long long reserved, unsigned n, unsigned h,
                                     unsigned per_ws)
{
	return reserved + (unsigned long long)FDFIT_PER_HTTP * h +
	       (unsigned long long)per_ws * (n - h);
}

int fdfit_solve(struct fdfit *out, unsigned long long nofile, unsigned long long reserved,
                unsigned max_connections, unsigned max_http_connections,
                unsigned fds_per_websocket)
{
	unsigned long long avail, n;
	unsigned h = max_http_connections < max_connections ? max_http_connections
	                                                     : max_connections;

	/* An upgraded connection never costs more than one being set up. */
	if (fds_per_websocket < 1 || fds_per_websocket > FDFIT_PER_HTTP || max_connections < 1 ||
	    max_http_connections < 1)
		return -1;
	*out = (struct fdfit){ .max_connections = max_connections, .max_http_connections = h };
	if (nofile == 0)
		goto out;
	avail = nofile > reserved ? nofile - reserved : 0;
	/* Every connection starts un-upgraded: if not even H of them fit,
	 * fewer may be set up at once. */
	if ((unsigned long long)FDFIT_PER_HTTP * h > avail) {
		h = (unsigned)(avail / FDFIT_PER_HTTP);
		if (h < 1)
			return -1;
		out->max_http_connections = h;
		out->http_lowered = true;
	}
	/* The rest, upgraded: N - H more at fds_per_websocket each. */
	n = h + (avail - (unsigned long long)FDFIT_PER_HTTP * h) / fds_per_websocket;
	if (n < max_connections) {
		out->max_connections = (unsigned)n;
		out->lowered = true;
	}
out:
	out->worst_case = worst_case(reserved, out->max_connections, out->max_http_connections,
	                             fds_per_websocket);
	return 0;
}
