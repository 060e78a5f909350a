/*
 * fdfit.h - how many connections an open-file limit can hold, worst case.
 *
 * A connection not yet upgraded (TLS handshake, HTTP request, fallback
 * POST) holds FDFIT_PER_HTTP descriptors: its socket and the socketpair to
 * libmicrohttpd.  An upgraded websocket holds only its socket, plus, with
 * upstream-protocol websocket, the upstream websocket that replays it.
 * At most max-http-connections of max-connections are un-upgraded at once,
 * so the worst case is
 *
 *	reserved + FDFIT_PER_HTTP * H + fds_per_websocket * (N - H)
 *
 * with H = min(max-http-connections, N).  Pure arithmetic: main.c works out
 * `reserved` and logs what fdfit_solve decides.
 */
#ifndef WATCHRTC_FDFIT_H
#define WATCHRTC_FDFIT_H

#include <stdbool.h>

#define FDFIT_PER_HTTP 3
#define FDFIT_PER_WEBSOCKET_UPSTREAM_WS 2   /* its socket and its upstream websocket */
#define FDFIT_PER_WEBSOCKET_HTTP_POST 1     /* its socket: POSTs are in `reserved` */

struct fdfit {
	unsigned max_connections;          /* N, at most what was asked */
	unsigned max_http_connections;     /* H, at most N */
	unsigned long long worst_case;     /* descriptors with N open, H of them un-upgraded */
	bool lowered;                      /* N is less than asked for */
	bool http_lowered;                 /* H is less than min(asked for, N asked for) */
};

/*
 * Fits max_connections connections, max_http_connections of them not yet
 * upgraded, into nofile descriptors of which reserved are kept for
 * everything else; an upgraded one costs fds_per_websocket (1 or 2).
 * Lowers N first, and H too if even H alone does not fit.  nofile 0
 * (unknown) fits everything as asked.  -1 if not one connection fits.
 */
int fdfit_solve(struct fdfit *out, unsigned long long nofile, unsigned long long reserved,
                unsigned max_connections, unsigned max_http_connections,
                unsigned fds_per_websocket)
	__attribute__((warn_unused_result));

#endif
