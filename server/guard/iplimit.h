/*
 * iplimit.h - per-client limits behind access.h: how many connections each
 * client address has open, and a token bucket of messages per second for
 * each, in a hash table whose size is fixed when it is made.  Internal to
 * server/; thread-safe.
 */
#ifndef WATCHRTC_IPLIMIT_H
#define WATCHRTC_IPLIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct iplimit;

enum iplimit_result {
	IPLIMIT_OK = 0,
	IPLIMIT_TOO_MANY = -1,   /* max_conns reached for this client */
	IPLIMIT_FULL = -2,       /* every entry belongs to a client with a connection */
};

/* max_conns, max_per_s: 0 means no such limit.  table_size entries are
 * allocated at once: the table never grows.  NULL on ENOMEM. */
struct iplimit *iplimit_create(unsigned max_conns, unsigned max_per_s, unsigned table_size);
void iplimit_destroy(struct iplimit *t);  /* accepts NULL */

/* One more connection of ip; on IPLIMIT_OK release it once. */
enum iplimit_result iplimit_acquire(struct iplimit *t, const char *ip);
void iplimit_release(struct iplimit *t, const char *ip);
/* Takes one message from ip's bucket at monotonic time now_ms. */
bool iplimit_message(struct iplimit *t, const char *ip, int64_t now_ms);
/* Clients in the table now. */
size_t iplimit_tracked(struct iplimit *t);

#endif
