/*
 * forwarder_ws.h - the queue's websocket messages delivered as websockets,
 * one upstream websocket per SDK connection, in the backend's own protocol
 * (upstream-protocol = websocket).  A few threads, each an evloop driving
 * thousands of upstream websockets (upstream_ws.h); each thread owns the
 * sessions it took from the queue (queue_stream_lease) until their
 * upstream websocket is closed and nothing of theirs is in flight.
 *
 * A message is deleted once a ping (a fence) sent after it is answered, or
 * once the close after it is: a fence follows every fence_messages
 * messages and comes at most fence_ms after the first unfenced one.  A
 * connection that drops before that sends everything unfenced again, in
 * order, on the next one.
 *
 * Thread contract: fws_start, fws_stop on the main thread; fws_notify from
 * any thread (the queue's notify callback).
 */
#ifndef WATCHRTC_FORWARDER_WS_H
#define WATCHRTC_FORWARDER_WS_H

#include <stdbool.h>
#include <stddef.h>

struct queue;
struct keyban;
struct upstream_client;
struct fws;

struct fws_options {
	unsigned threads;               /* the queue's stream owners 1..threads */
	unsigned fence_messages, fence_ms;
	unsigned retry_base_ms, retry_max_ms;
	/* The backoff of a failed attempt (forward_backoff_ms, passed in so
	 * that this module does not call back into forwarder.c). */
	unsigned (*backoff_ms)(unsigned attempts, unsigned base_ms, unsigned max_ms, double jitter);
	/* The upstream was reached (up) or not: for /healthcheck and the
	 * upstream-up gauge.  status: the HTTP status of a refused upgrade, else 0. */
	void (*seen)(void *arg, bool up, int status, const char *error);
	void *seen_arg;
	/* Backend text after the hello, for the SDK's live connection of the
	 * session (NULL: dropped).  Called on a forwarder thread. */
	void (*backend_text)(void *arg, const char *session, const char *text, size_t len);
	void *backend_text_arg;
};

/* Starts the threads; the queue's streams must be on (queue_stream_init
 * with o->threads owners).  The client stays the caller's and must outlive
 * fws_stop.  -1 with *cause malloc'd. */
int fws_start(struct fws **out, struct queue *q, struct keyban *kb, struct upstream_client *c,
              const struct fws_options *o, char **cause) __attribute__((warn_unused_result));

/* Takes no new messages, fences what was sent, waits up to deadline_ms for
 * the fences, then drops every upstream websocket (what was not fenced is
 * sent again by the next run) and joins the threads.  Accepts NULL. */
void fws_stop(struct fws *f, unsigned deadline_ms);

/* The queue's stream window for fence_messages: messages of one session in
 * flight at most (queue_stream_init). */
unsigned fws_window(unsigned fence_messages);

/* A message may have become due (any thread). */
void fws_notify(struct fws *f);

/* The fields of a backend hello that later SDK connections of the same key
 * get (malloc'd compact JSON), or NULL if text is not a JSON object or is an
 * error.  Fields about one connection (a name containing "connection",
 * "session" or "socket", any case) are left out. */
char *fws_hello_learnable(const char *text);

#endif
