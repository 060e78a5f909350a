/*
 * queue_notify.c - waking the consumer: the callback queue_set_notify
 * installs, called without queue locks whenever a message may be due.
 */
#include <pthread.h>

#include "queue_internal.h"

/* Copies fn and arg while q->mu is held, then unlocks and calls notify if a
 * message became due meanwhile: the callback never runs under queue locks.
 * notify_running lets queue_set_notify wait until no call of an old
 * callback is still on its way. */
void qnotify_unlock(struct queue *q)
{
	void (*fn)(void *) = NULL;
	void *arg = NULL;

	if (q->wake && q->notify) {
		fn = q->notify;
		arg = q->notify_arg;
		q->notify_running++;
	}
	q->wake = false;
	pthread_mutex_unlock(&q->mu);
	if (!fn)
		return;
	fn(arg);
	pthread_mutex_lock(&q->mu);
	if (--q->notify_running == 0)
		pthread_cond_broadcast(&q->notify_cv);
	pthread_mutex_unlock(&q->mu);
}

void queue_set_notify(struct queue *q, void (*fn)(void *arg), void *arg)
{
	pthread_mutex_lock(&q->mu);
	q->notify = fn;
	q->notify_arg = arg;
	while (q->notify_running > 0)
		pthread_cond_wait(&q->notify_cv, &q->mu);
	pthread_mutex_unlock(&q->mu);
}
