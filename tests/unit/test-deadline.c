/* test-deadline.c - request deadlines shut slow connections down, and only those. */
#include "deadline.h"

#include <poll.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "tap.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Whether the other end of a socketpair sees EOF within timeout_ms. */
static bool sees_eof(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char c;

	return poll(&p, 1, timeout_ms) == 1 && read(fd, &c, 1) == 0;
}

int main(void)
{
	struct deadlines *d = NULL;
	struct deadline *slow, *answered, *rearmed;
	int a[2], b[2], c[2];
	char *cause = NULL;
	double t0;

	log_set_level(LOG_ERROR);
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, a) || socketpair(AF_UNIX, SOCK_STREAM, 0, b) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, c)) {
		printf("Bail out! socketpair\n");
		return 1;
	}
	ok(deadlines_start(&d, 2, &cause) == 0 && d, "deadlines with a 2 s limit");
	t0 = now_s();
	slow = deadline_open(d, a[0], "192.0.2.1");
	answered = deadline_open(d, b[0], "192.0.2.2");
	rearmed = deadline_open(d, c[0], "192.0.2.3");
	ok(slow && answered && rearmed, "three connections armed");
	deadline_disarm(d, answered);
	usleep(1200 * 1000);
	deadline_disarm(d, rearmed);
	deadline_rearm(d, rearmed);   /* answered at 1.2 s: its next request has until 3.2 s */

	ok(sees_eof(a[1], 5000), "a connection whose request is not in is shut down");
	ok(now_s() - t0 >= 1.9 && now_s() - t0 < 3.0, "after the limit (%.2f s)", now_s() - t0);
	ok(!sees_eof(c[1], 300), "a re-armed connection has its full time again");
	ok(sees_eof(c[1], 5000), "and is shut down once that runs out");
	ok(!sees_eof(b[1], 500), "a connection whose request is in is never touched");

	deadline_rearm(d, slow);   /* fired once: stays fired */
	deadline_close(d, slow);
	deadline_close(d, answered);
	deadline_close(d, rearmed);
	deadline_close(d, NULL);
	deadlines_stop(d);
	deadlines_stop(NULL);
	for (int i = 0; i < 2; i++) {
		close(a[i]);
		close(b[i]);
		close(c[i]);
	}
	return done_testing();
}
