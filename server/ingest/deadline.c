/*
 * deadline.c - request deadlines for the TLS listener.
 *
 * Armed connections sit on one list in the order they were armed.  Every
 * connection gets the same time limit, so that is also the order in which
 * they expire, and the timer thread only ever looks at the head.  When one
 * expires the thread shuts its socket down (it never closes it: the fd is
 * libmicrohttpd's); libmicrohttpd sees the connection end and closes it
 * itself.  deadline_close, called from MHD's connection-closed
 * notification before MHD closes the fd, takes the same lock, so the
 * thread can never shut down a descriptor number that has been reused.
 */
#include "deadline.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "clock.h"
#include "log.h"

#define DEADLINE_TICK_MS 250    /* how often the timer thread looks */
#define DEADLINE_PEER_MAX 48    /* an address for the log (INET6_ADDRSTRLEN and more) */

struct deadline {
	struct deadline *prev, *next;   /* the armed list */
	int fd;
	bool armed;
	bool fired;                     /* shut down already: never armed again */
	int64_t expires_ms;             /* monotonic */
	char peer[DEADLINE_PEER_MAX];
};

struct deadlines {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	pthread_t thread;
	bool started, stopping;
	unsigned timeout_s;
	struct deadline *head, *tail;   /* armed, soonest first */
};

static void unlink_locked(struct deadlines *d, struct deadline *dl)
{
	if (!dl->armed)
		return;
	if (dl->prev)
		dl->prev->next = dl->next;
	else
		d->head = dl->next;
	if (dl->next)
		dl->next->prev = dl->prev;
	else
		d->tail = dl->prev;
	dl->prev = dl->next = NULL;
	dl->armed = false;
}

static void arm_locked(struct deadlines *d, struct deadline *dl)
{
	unlink_locked(d, dl);
	dl->expires_ms = mono_ms() + (int64_t)d->timeout_s * 1000;
	dl->prev = d->tail;
	if (d->tail)
		d->tail->next = dl;
	else
		d->head = dl;
	d->tail = dl;
	dl->armed = true;
}

static void *timer_main(void *arg)
{
	struct deadlines *d = arg;

	pthread_mutex_lock(&d->lock);
	while (!d->stopping) {
		int64_t now = mono_ms();
		struct timespec ts;

		while (d->head && d->head->expires_ms <= now) {
			struct deadline *dl = d->head;

			unlink_locked(d, dl);
			dl->fired = true;
			shutdown(dl->fd, SHUT_RDWR);
			log_info("request_timeout",
			         "peer=%s timeout_s=%u reason=\"request not in within "
			         "request-timeout-s: connection closed\"",
			         dl->peer, d->timeout_s);
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += DEADLINE_TICK_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&d->wake, &d->lock, &ts);
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

int deadlines_start(struct deadlines **out, unsigned timeout_s, char **cause)
{
	struct deadlines *d = calloc(1, sizeof *d);
	pthread_condattr_t ca;

	*out = NULL;
	if (!d) {
		*cause = strdup("out of memory");
		return -1;
	}
	d->timeout_s = timeout_s;
	pthread_mutex_init(&d->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->wake, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&d->thread, NULL, timer_main, d) != 0) {
		*cause = strdup("cannot start the request deadline thread");
		deadlines_stop(d);
		return -1;
	}
	d->started = true;
	*out = d;
	return 0;
}

void deadlines_stop(struct deadlines *d)
{
	if (!d)
		return;
	if (d->started) {
		pthread_mutex_lock(&d->lock);
		d->stopping = true;
		pthread_cond_signal(&d->wake);
		pthread_mutex_unlock(&d->lock);
		pthread_join(d->thread, NULL);
	}
	pthread_cond_destroy(&d->wake);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

struct deadline *deadline_open(struct deadlines *d, int fd, const char *peer)
{
	struct deadline *dl;

	if (!d || !(dl = calloc(1, sizeof *dl)))
		return NULL;
	dl->fd = fd;
	snprintf(dl->peer, sizeof dl->peer, "%s", peer ? peer : "-");
	pthread_mutex_lock(&d->lock);
	arm_locked(d, dl);
	pthread_mutex_unlock(&d->lock);
	return dl;
}

void deadline_disarm(struct deadlines *d, struct deadline *dl)
{
	if (!d || !dl)
		return;
	pthread_mutex_lock(&d->lock);
	unlink_locked(d, dl);
	pthread_mutex_unlock(&d->lock);
}

void deadline_rearm(struct deadlines *d, struct deadline *dl)
{
	if (!d || !dl)
		return;
	pthread_mutex_lock(&d->lock);
	if (!dl->fired)
		arm_locked(d, dl);
	pthread_mutex_unlock(&d->lock);
}

void deadline_close(struct deadlines *d, struct deadline *dl)
{
	if (!d || !dl)
		return;
	pthread_mutex_lock(&d->lock);
	unlink_locked(d, dl);
	pthread_mutex_unlock(&d->lock);
	free(dl);
}
