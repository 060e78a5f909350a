/*
 * access.h - who may use the relay: an allowlist of API keys (inline and a
 * file that SIGHUP reloads), an allowlist of page origins, and per-client
 * limits on concurrent connections and on messages per second, kept in a
 * table of fixed size.  All functions are thread-safe, and every function
 * taking a struct access accepts NULL, meaning "no rules": everything is
 * allowed.
 */
#ifndef WATCHRTC_ACCESS_H
#define WATCHRTC_ACCESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct access;

struct access_options {
	const char *keys;            /* comma list; NULL or "": none inline */
	const char *keys_file;       /* one key per line; NULL or "": none */
	const char *origins;         /* comma list; NULL or "": any origin */
	unsigned max_conns_per_ip;   /* concurrent; 0: no limit */
	unsigned max_msgs_per_ip_per_s;  /* sustained rate; 0: no limit */
	unsigned ip_table_size;      /* clients tracked at once */
};

/* Reads the key file once.  On failure *cause (malloc'd, caller frees)
 * says why. */
int access_create(struct access **out, const struct access_options *o, char **cause)
	__attribute__((warn_unused_result));
void access_destroy(struct access *a);  /* accepts NULL */

/* Reads the key file again (on SIGHUP).  On failure the keys in force stay
 * and -1 is returned; either way the outcome is logged. */
int access_reload(struct access *a);

/* The configuration changed (SIGHUP): new inline keys, key file and
 * origins, all in force at once, or on any failure (logged) none of them. */
int access_update(struct access *a, const char *keys, const char *keys_file,
                  const char *origins);

/* True when no key allowlist is configured, or key is on it.  A NULL key
 * is allowed only without an allowlist. */
bool access_key_allowed(struct access *a, const char *key);
/* True when no origin allowlist is configured, or origin is on it
 * (compared case-insensitively).  A NULL origin is allowed only without
 * an allowlist: browsers always send one. */
bool access_origin_allowed(struct access *a, const char *origin);

enum access_verdict {
	ACCESS_OK = 0,
	ACCESS_TOO_MANY = -1,    /* the client has max_conns_per_ip open already */
	ACCESS_TABLE_FULL = -2,  /* every tracked client has a connection open */
};
/* A static reason for a refusal, for the answer and the log. */
const char *access_verdict_reason(enum access_verdict v);

/*
 * Counts one more connection (a websocket or an HTTP request) of the
 * client at ip.  On ACCESS_OK the caller owns one slot and gives it back
 * with access_conn_release(ip), exactly once.
 */
enum access_verdict access_conn_acquire(struct access *a, const char *ip)
	__attribute__((warn_unused_result));
void access_conn_release(struct access *a, const char *ip);

/* Takes one message of the client at ip from its token bucket: false if
 * the client is over max_msgs_per_ip_per_s (the message must be refused). */
bool access_message(struct access *a, const char *ip);
/* The same at a given monotonic time in ms (exposed for tests). */
bool access_message_at(struct access *a, const char *ip, int64_t now_ms);

/* Clients tracked now, and keys on the allowlist (exposed for tests). */
size_t access_tracked(struct access *a);
size_t access_key_count(struct access *a);

#endif
