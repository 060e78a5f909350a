/*
 * evloop.h - one small event loop: an epoll set of fd watchers, timers, a
 * cross-thread inbox of callbacks woken through an eventfd, and a list of
 * things to free once the current batch of events has been dispatched.  In
 * the spirit of Redis's ae.c and libuv's uv__io_t: the loop allocates nothing
 * per watcher; callers embed struct ev_io / ev_timer / ev_deferred in their
 * own objects.
 *
 * Thread contract:
 *  - evloop_create and evloop_destroy: the owner, with no evloop_run in progress.
 *  - evloop_run: one thread at a time, "the loop thread".
 *  - evloop_post and evloop_stop: any thread, at any time between evloop_create
 *    and evloop_destroy.
 *  - everything else (watchers, timers, deferred frees, evloop_now): the loop
 *    thread only, from a callback or before evloop_run / after it returned.
 * A loop owns no thread of its own: whoever owns it runs evloop_run on the
 * thread it starts, and joins that thread after evloop_stop.
 *
 * Dispatch order within one turn: the fd events of one epoll_wait batch, then
 * watchers fed with evloop_io_feed, then the inbox, then due timers, then the
 * deferred frees.  A callback may stop or free any watcher, including ones
 * later in the same batch: a stopped watcher is never called again, but its
 * memory must stay valid until the batch ends, so free objects that embed
 * watchers through evloop_defer, not directly from a callback.  Stop an
 * object's watchers (evloop_io_stop, which also takes it off the fed list)
 * and timers before its memory goes, deferred or not.
 */
#ifndef WATCHRTC_EVLOOP_H
#define WATCHRTC_EVLOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

struct evloop;
struct ev_io;
struct ev_timer;

/* events: EPOLLIN / EPOLLOUT, plus EPOLLERR / EPOLLHUP / EPOLLRDHUP as
 * epoll reports them. */
typedef void (*ev_io_cb)(struct evloop *l, struct ev_io *w, uint32_t events);
typedef void (*ev_timer_cb)(struct evloop *l, struct ev_timer *t);
typedef void (*ev_post_cb)(struct evloop *l, void *arg);

/* An fd watcher, embedded in the caller's object.  Fields are the loop's;
 * read them, do not write them. */
struct ev_io {
	int fd;
	uint32_t events;          /* interest registered with epoll now; 0 = none */
	ev_io_cb cb;
	bool active;              /* in the epoll set */
	bool fed;                 /* on the fed list: called again this turn */
	uint32_t fed_events;
	struct ev_io *fed_next;
};

/* A one-shot timer, embedded in the caller's object. */
struct ev_timer {
	int64_t due_ms;           /* monotonic, see evloop_now */
	ev_timer_cb cb;
	size_t slot;              /* place in the loop's heap; SIZE_MAX = not armed */
};

/* Something to free after the current batch (see the header comment). */
struct ev_deferred {
	struct ev_deferred *next;
	void (*fn)(struct ev_deferred *d);
};

/* Creates a loop (epoll set, eventfd).  -1 with *cause malloc'd on failure. */
int evloop_create(struct evloop **out, char **cause) __attribute__((warn_unused_result));

/* Frees the loop after evloop_run returned (or never ran).  Inbox callbacks
 * still pending are run first, on the calling thread, so that what their
 * arguments own is released; deferred frees too.  Watchers and timers still
 * registered are forgotten, not called.  Accepts NULL. */
void evloop_destroy(struct evloop *l);

/* Dispatches events until evloop_stop.  Before it returns it runs the inbox
 * once more and the deferred frees; evloop_post refuses from then on. */
void evloop_run(struct evloop *l);

/* Makes evloop_run return after its current turn.  Any thread. */
void evloop_stop(struct evloop *l);

/* True once evloop_stop was called (loop thread, or racy elsewhere). */
bool evloop_stopping(const struct evloop *l);

/*
 * Runs fn(l, arg) on the loop thread, in the order posted, and wakes the loop.
 * Any thread.  0: fn will run exactly once (from evloop_run, or from
 * evloop_destroy if the loop stops first).  -1: out of memory or the loop has
 * finished running; fn will not run and the caller still owns arg.
 */
int evloop_post(struct evloop *l, ev_post_cb fn, void *arg) __attribute__((warn_unused_result));

/* The monotonic clock in milliseconds, read once per turn. */
int64_t evloop_now(const struct evloop *l);

/* --- fd watchers ----------------------------------------------------------- */

void ev_io_init(struct ev_io *w, int fd, ev_io_cb cb);

/*
 * Sets the watcher's interest to events (EPOLLIN, EPOLLOUT, and flags such as
 * EPOLLEXCLUSIVE the first time); 0 removes it from the epoll set.  No
 * epoll_ctl when the interest is unchanged.  -1 with errno from epoll_ctl.
 */
int evloop_io_set(struct evloop *l, struct ev_io *w, uint32_t events)
	__attribute__((warn_unused_result));

/* Removes the watcher from the epoll set and the fed list: it is not called
 * again, even for events already in this batch.  Does not close the fd. */
void evloop_io_stop(struct evloop *l, struct ev_io *w);

/*
 * Calls the watcher with events in this turn (or the next, if the fed
 * watchers have already been served), without waiting for epoll: for bytes
 * a TLS library already holds, or a read budget that ran out.  The loop does
 * not block while watchers are fed.  Feeding twice in a turn ORs the events.
 */
void evloop_io_feed(struct evloop *l, struct ev_io *w, uint32_t events);

/* --- timers ---------------------------------------------------------------- */

void ev_timer_init(struct ev_timer *t, ev_timer_cb cb);

/* (Re)arms t to fire once, after_ms from evloop_now.  -1 out of memory. */
int evloop_timer_start(struct evloop *l, struct ev_timer *t, int64_t after_ms)
	__attribute__((warn_unused_result));

/* Disarms t if armed. */
void evloop_timer_stop(struct evloop *l, struct ev_timer *t);

static inline bool ev_timer_armed(const struct ev_timer *t)
{
	return t->slot != SIZE_MAX;
}

/* --- deferred frees -------------------------------------------------------- */

/* Calls d->fn(d) after the current batch (in the order deferred). */
void evloop_defer(struct evloop *l, struct ev_deferred *d, void (*fn)(struct ev_deferred *d));

#endif
