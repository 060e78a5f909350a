/*
 * deadline.h - a time limit on every request of the TLS listener, however
 * slowly its bytes arrive.
 *
 * libmicrohttpd's connection timeout counts idle time only, so a client
 * that sends one byte every few seconds (slowloris) would keep its
 * connection, and the memory behind it, for ever.  Here a connection is
 * armed when it opens and re-armed after each answer: its next request
 * (TLS handshake, head and body) must be in within the limit, or its
 * socket is shut down, which makes libmicrohttpd close the connection.
 */
#ifndef WATCHRTC_DEADLINE_H
#define WATCHRTC_DEADLINE_H

struct deadlines;
struct deadline;

/* Starts the timer thread.  On failure *cause (malloc'd, caller frees)
 * says why. */
int deadlines_start(struct deadlines **out, unsigned timeout_s, char **cause)
	__attribute__((warn_unused_result));
/* Stops the thread and frees d; every connection must have been closed
 * (deadline_close) before.  Accepts NULL. */
void deadlines_stop(struct deadlines *d);

/* A connection on socket fd from peer opened: armed now.  NULL if out of
 * memory (that connection then has no limit but MHD's idle timeout). */
struct deadline *deadline_open(struct deadlines *d, int fd, const char *peer);
/* The request is in: no limit while it is answered or upgraded. */
void deadline_disarm(struct deadlines *d, struct deadline *dl);
/* Answered: the next request's time starts now. */
void deadline_rearm(struct deadlines *d, struct deadline *dl);
/* The connection is closing and fd is still open: forgets dl, frees it.
 * Accepts NULL. */
void deadline_close(struct deadlines *d, struct deadline *dl);

#endif
