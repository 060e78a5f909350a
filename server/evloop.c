/*
 * evloop.c - the event loop of evloop.h.
 *
 * Timers live in a binary min-heap of pointers; each timer knows its slot so
 * that stopping or re-arming one costs O(log n), which matters with a few
 * timers per upstream websocket and thousands of websockets per loop.  The
 * inbox is a mutex-protected FIFO woken through one eventfd; the eventfd is
 * written only when the inbox goes from empty to non-empty.
 */
#include "evloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cause.h"
#include "clock.h"

#define EVLOOP_MAX_EVENTS 64

struct ev_post {
	struct ev_post *next;
	ev_post_cb fn;
	void *arg;
};

struct evloop {
	int epfd, evfd;
	int64_t now;
	atomic_bool stop;
	/* inbox: any thread, under lock */
	pthread_mutex_t lock;
	struct ev_post *inbox, **inbox_tail;
	bool closed;                       /* evloop_post refuses */
	/* loop thread only */
	struct ev_timer **heap;
	size_t nheap, heap_cap;
	bool in_timers;                    /* run_timers is calling back */
	struct ev_io *fed, **fed_tail;
	struct ev_deferred *deferred, **deferred_tail;
	struct ev_io wake;                 /* the eventfd's watcher */
	bool woken;                        /* it fired in this batch */
};

/* --- timers' heap ------------------------------------------------------------ */

static void heap_place(struct evloop *l, size_t i, struct ev_timer *t)
{
	l->heap[i] = t;
	t->slot = i;
}

static void heap_up(struct evloop *l, size_t i)
{
	struct ev_timer *t = l->heap[i];

	while (i > 0) {
		size_t parent = (i - 1) / 2;

		if (l->heap[parent]->due_ms <= t->due_ms)
			break;
		heap_place(l, i, l->heap[parent]);
		i = parent;
	}
	heap_place(l, i, t);
}

static void heap_down(struct evloop *l, size_t i)
{
	struct ev_timer *t = l->heap[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= l->nheap)
			break;
		if (c + 1 < l->nheap && l->heap[c + 1]->due_ms < l->heap[c]->due_ms)
			c++;
		if (t->due_ms <= l->heap[c]->due_ms)
			break;
		heap_place(l, i, l->heap[c]);
		i = c;
	}
	heap_place(l, i, t);
}

static void heap_remove(struct evloop *l, struct ev_timer *t)
{
	size_t i = t->slot;
	struct ev_timer *last = l->heap[--l->nheap];

	t->slot = SIZE_MAX;
	if (i == l->nheap)
		return;
	heap_place(l, i, last);
	heap_up(l, i);
	heap_down(l, last->slot);
}

void ev_timer_init(struct ev_timer *t, ev_timer_cb cb)
{
	t->due_ms = 0;
	t->cb = cb;
	t->slot = SIZE_MAX;
}

int evloop_timer_start(struct evloop *l, struct ev_timer *t, int64_t after_ms)
{
	if (ev_timer_armed(t))
		heap_remove(l, t);
	if (l->nheap == l->heap_cap) {
		size_t cap = l->heap_cap ? 2 * l->heap_cap : 64;
		struct ev_timer **h = realloc(l->heap, cap * sizeof *h);

		if (!h)
			return -1;
		l->heap = h;
		l->heap_cap = cap;
	}
	t->due_ms = l->now + (after_ms > 0 ? after_ms : 0);
	/* Armed by a timer callback for "now": next pass, or one callback
	 * re-arming itself with 0 would keep run_timers going forever. */
	if (l->in_timers && t->due_ms <= l->now)
		t->due_ms = l->now + 1;
	heap_place(l, l->nheap++, t);
	heap_up(l, t->slot);
	return 0;
}

void evloop_timer_stop(struct evloop *l, struct ev_timer *t)
{
	if (ev_timer_armed(t))
		heap_remove(l, t);
}

static void run_timers(struct evloop *l)
{
	int64_t now = l->now;

	l->in_timers = true;
	while (l->nheap && l->heap[0]->due_ms <= now) {
		struct ev_timer *t = l->heap[0];

		heap_remove(l, t);
		t->cb(l, t);
	}
	l->in_timers = false;
}

/* --- fd watchers ------------------------------------------------------------- */

void ev_io_init(struct ev_io *w, int fd, ev_io_cb cb)
{
	memset(w, 0, sizeof *w);
	w->fd = fd;
	w->cb = cb;
}

int evloop_io_set(struct evloop *l, struct ev_io *w, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = w };

	if (w->active && events == w->events)
		return 0;
	if (!events) {
		if (w->active && epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL) < 0)
			return -1;
		w->active = false;
		w->events = 0;
		return 0;
	}
	/* EPOLLEXCLUSIVE is allowed only with EPOLL_CTL_ADD. */
	if (epoll_ctl(l->epfd, w->active ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev) < 0)
		return -1;
	w->active = true;
	w->events = events;
	return 0;
}

static void unfeed(struct evloop *l, struct ev_io *w)
{
	struct ev_io **pp;

	if (!w->fed)
		return;
	for (pp = &l->fed; *pp; pp = &(*pp)->fed_next) {
		if (*pp == w) {
			*pp = w->fed_next;
			break;
		}
	}
	l->fed_tail = &l->fed;
	while (*l->fed_tail)
		l->fed_tail = &(*l->fed_tail)->fed_next;
	w->fed = false;
	w->fed_next = NULL;
}

void evloop_io_stop(struct evloop *l, struct ev_io *w)
{
	if (w->active)
		epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	w->active = false;
	w->events = 0;
	unfeed(l, w);
}

void evloop_io_feed(struct evloop *l, struct ev_io *w, uint32_t events)
{
	w->fed_events |= events;
	if (w->fed)
		return;
	w->fed = true;
	w->fed_next = NULL;
	*l->fed_tail = w;
	l->fed_tail = &w->fed_next;
}

static void run_fed(struct evloop *l)
{
	/* Only those fed before this pass: feeding again means "next turn". */
	struct ev_io *list = l->fed;

	l->fed = NULL;
	l->fed_tail = &l->fed;
	while (list) {
		struct ev_io *w = list;
		uint32_t ev = w->fed_events;

		list = w->fed_next;
		w->fed = false;
		w->fed_next = NULL;
		w->fed_events = 0;
		w->cb(l, w, ev);
	}
}

/* --- inbox and deferred frees -------------------------------------------------- */

/* Makes the eventfd readable.  It can only fail with EAGAIN when the
 * counter is near overflow, that is, when it is readable already. */
static void wake_up(struct evloop *l)
{
	uint64_t one = 1;
	ssize_t r = write(l->evfd, &one, sizeof one);

	(void)r;
}

int evloop_post(struct evloop *l, ev_post_cb fn, void *arg)
{
	struct ev_post *p = malloc(sizeof *p);
	bool was_empty;

	if (!p)
		return -1;
	p->next = NULL;
	p->fn = fn;
	p->arg = arg;
	pthread_mutex_lock(&l->lock);
	if (l->closed) {
		pthread_mutex_unlock(&l->lock);
		free(p);
		return -1;
	}
	was_empty = !l->inbox;
	*l->inbox_tail = p;
	l->inbox_tail = &p->next;
	pthread_mutex_unlock(&l->lock);
	if (was_empty)
		wake_up(l);
	return 0;
}

static void run_inbox(struct evloop *l)
{
	struct ev_post *list;

	pthread_mutex_lock(&l->lock);
	list = l->inbox;
	l->inbox = NULL;
	l->inbox_tail = &l->inbox;
	pthread_mutex_unlock(&l->lock);
	while (list) {
		struct ev_post *p = list;

		list = p->next;
		p->fn(l, p->arg);
		free(p);
	}
}

static void wake_cb(struct evloop *l, struct ev_io *w, uint32_t events)
{
	uint64_t v;

	(void)events;
	/* Read before the inbox runs, so a post made meanwhile wakes again.
	 * The inbox itself runs after the batch: its callbacks may free
	 * objects that later events of the batch name. */
	if (read(w->fd, &v, sizeof v) < 0 && errno != EAGAIN)
		return;
	l->woken = true;
}

void evloop_defer(struct evloop *l, struct ev_deferred *d, void (*fn)(struct ev_deferred *d))
{
	d->fn = fn;
	d->next = NULL;
	*l->deferred_tail = d;
	l->deferred_tail = &d->next;
}

static void run_deferred(struct evloop *l)
{
	while (l->deferred) {
		struct ev_deferred *d = l->deferred;

		l->deferred = d->next;
		if (!l->deferred)
			l->deferred_tail = &l->deferred;
		d->fn(d);
	}
}

/* --- the loop ------------------------------------------------------------------ */

int evloop_create(struct evloop **out, char **cause)
{
	struct evloop *l = calloc(1, sizeof *l);

	*out = NULL;
	if (!l) {
		*cause = strdup("out of memory");
		return -1;
	}
	pthread_mutex_init(&l->lock, NULL);
	l->inbox_tail = &l->inbox;
	l->fed_tail = &l->fed;
	l->deferred_tail = &l->deferred;
	l->now = mono_ms();
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	ev_io_init(&l->wake, l->evfd, wake_cb);
	if (l->epfd < 0 || l->evfd < 0 || evloop_io_set(l, &l->wake, EPOLLIN) < 0) {
		cause_set(cause, -1, "event loop: %s", strerror(errno));
		evloop_destroy(l);
		return -1;
	}
	*out = l;
	return 0;
}

void evloop_destroy(struct evloop *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->closed = true;
	pthread_mutex_unlock(&l->lock);
	run_inbox(l);
	run_deferred(l);
	free(l->heap);
	if (l->epfd >= 0)
		close(l->epfd);
	if (l->evfd >= 0)
		close(l->evfd);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

void evloop_stop(struct evloop *l)
{
	atomic_store(&l->stop, true);
	wake_up(l);
}

bool evloop_stopping(const struct evloop *l)
{
	return atomic_load(&((struct evloop *)l)->stop);
}

int64_t evloop_now(const struct evloop *l)
{
	return l->now;
}

/* How long epoll may sleep: not at all with fed watchers, else until the
 * first timer (-1: forever). */
static int wait_ms(const struct evloop *l)
{
	int64_t d;

	if (l->fed)
		return 0;
	if (!l->nheap)
		return -1;
	d = l->heap[0]->due_ms - mono_ms();
	if (d <= 0)
		return 0;
	return d > 60000 ? 60000 : (int)d;
}

void evloop_run(struct evloop *l)
{
	struct epoll_event evs[EVLOOP_MAX_EVENTS];

	while (!atomic_load(&l->stop)) {
		int n = epoll_wait(l->epfd, evs, EVLOOP_MAX_EVENTS, wait_ms(l));

		if (n < 0 && errno != EINTR)
			break;
		l->now = mono_ms();
		for (int i = 0; i < n; i++) {
			struct ev_io *w = evs[i].data.ptr;

			/* A watcher stopped by an earlier callback of this batch
			 * is skipped (its memory is valid until the deferred frees
			 * run). */
			if (w->active)
				w->cb(l, w, evs[i].events);
		}
		run_fed(l);
		if (l->woken) {
			l->woken = false;
			run_inbox(l);
		}
		l->now = mono_ms();
		run_timers(l);
		run_deferred(l);
	}
	pthread_mutex_lock(&l->lock);
	l->closed = true;
	pthread_mutex_unlock(&l->lock);
	run_inbox(l);
	run_deferred(l);
}
