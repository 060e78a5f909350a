/*
 * iplimit.c - per-client connection counts and message rates.
 *
 * Memory is fixed: every entry is allocated when the table is made.  A
 * client with a connection open keeps its entry; a client with none is
 * "idle" and sits on a least-recently-used list, from which the oldest is
 * evicted when a new client needs an entry and none is free.  Evicting an
 * idle client forgets only its token bucket, which then starts full again.
 *
 * Clients are hashed with SipHash under a random key, so nobody can pick
 * addresses that pile into one hash chain.  IPv6 clients are counted per
 * /64, the block one subscriber gets, or a single host could dodge every
 * limit by using another of its 2^64 addresses.
 */
#include "iplimit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "clientip.h"
#include "clock.h"
#include "siphash.h"

#define IPLIMIT_BURST_S 5          /* a full bucket holds this many seconds of the rate */
#define IPLIMIT_IPV6_PREFIX_BYTES 8  /* IPv6 clients are counted per /64 */
#define IPLIMIT_KEY_BYTES 17       /* family tag + 16 address bytes */
#define MILLI 1000                 /* tokens are counted in thousandths of a message */

struct ip_entry {
	struct ip_entry *hnext;            /* hash chain, or the free list */
	struct ip_entry *older, *newer;    /* idle list (conns == 0 only) */
	unsigned char key[IPLIMIT_KEY_BYTES];
	uint32_t conns;
	bool idle;
	int64_t tokens;                    /* thousandths of a message */
	int64_t refill_ms;                 /* when tokens was last topped up */
};

struct iplimit {
	pthread_mutex_t lock;
	unsigned max_conns, max_per_s;
	struct ip_entry *entries;
	struct ip_entry **buckets;
	size_t nbuckets;                   /* a power of two */
	size_t tracked;
	struct ip_entry *free;
	struct ip_entry *idle_oldest, *idle_newest;
	struct siphash_key hkey;
};

/* --- the table ------------------------------------------------------------ */

/* The table key of ip.  Addresses that do not parse ("unknown") share one
 * key, so they are still limited, together. */
static void make_key(const char *ip, unsigned char key[IPLIMIT_KEY_BYTES])
{
	int family = 0;

	memset(key, 0, IPLIMIT_KEY_BYTES);
	if (!ip || clientip_parse(ip, strlen(ip), &family, key + 1) < 0) {
		memset(key, 0, IPLIMIT_KEY_BYTES);
		return;
	}
	key[0] = family == AF_INET ? 4 : 6;
	if (family == AF_INET6)
		memset(key + 1 + IPLIMIT_IPV6_PREFIX_BYTES, 0, 16 - IPLIMIT_IPV6_PREFIX_BYTES);
}

static struct ip_entry **bucket_of(struct iplimit *t, const unsigned char *key)
{
	return &t->buckets[siphash13(&t->hkey, key, IPLIMIT_KEY_BYTES) & (t->nbuckets - 1)];
}

static struct ip_entry *lookup(struct iplimit *t, const unsigned char *key)
{
	for (struct ip_entry *e = *bucket_of(t, key); e; e = e->hnext) {
		if (!memcmp(e->key, key, IPLIMIT_KEY_BYTES))
			return e;
	}
	return NULL;
}

static void idle_remove(struct iplimit *t, struct ip_entry *e)
{
	if (!e->idle)
		return;
	if (e->older)
		e->older->newer = e->newer;
	else
		t->idle_oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		t->idle_newest = e->older;
	e->older = e->newer = NULL;
	e->idle = false;
}

/* Makes e the most recently used idle entry. */
static void idle_touch(struct iplimit *t, struct ip_entry *e)
{
	idle_remove(t, e);
	e->older = t->idle_newest;
	if (t->idle_newest)
		t->idle_newest->newer = e;
	else
		t->idle_oldest = e;
	t->idle_newest = e;
	e->idle = true;
}

static void unhash(struct iplimit *t, struct ip_entry *e)
{
	struct ip_entry **p = bucket_of(t, e->key);

	while (*p != e)
		p = &(*p)->hnext;
	*p = e->hnext;
	e->hnext = NULL;
}

/* ip's entry, made (from a free entry or the oldest idle one) if needed.
 * NULL if every entry belongs to a client with a connection open. */
static struct ip_entry *get(struct iplimit *t, const unsigned char *key, int64_t now_ms)
{
	struct ip_entry *e = lookup(t, key), **b;

	if (e)
		return e;
	if (t->free) {
		e = t->free;
		t->free = e->hnext;
		t->tracked++;
	} else if (t->idle_oldest) {
		e = t->idle_oldest;
		idle_remove(t, e);
		unhash(t, e);
	} else {
		return NULL;
	}
	memset(e, 0, sizeof *e);
	memcpy(e->key, key, IPLIMIT_KEY_BYTES);
	e->tokens = (int64_t)t->max_per_s * IPLIMIT_BURST_S * MILLI;
	e->refill_ms = now_ms;
	b = bucket_of(t, key);
	e->hnext = *b;
	*b = e;
	idle_touch(t, e);   /* no connection yet */
	return e;
}

struct iplimit *iplimit_create(unsigned max_conns, unsigned max_per_s, unsigned table_size)
{
	struct iplimit *t = calloc(1, sizeof *t);

	if (!t)
		return NULL;
	pthread_mutex_init(&t->lock, NULL);
	t->max_conns = max_conns;
	t->max_per_s = max_per_s;
	if (table_size < 1)
		table_size = 1;
	for (t->nbuckets = 1; t->nbuckets < table_size; t->nbuckets *= 2)
		;
	t->entries = calloc(table_size, sizeof *t->entries);
	t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
	if (!t->entries || !t->buckets || siphash_key_init(&t->hkey) < 0) {
		iplimit_destroy(t);
		return NULL;
	}
	for (size_t i = table_size; i-- > 0;) {
		t->entries[i].hnext = t->free;
		t->free = &t->entries[i];
	}
	return t;
}

void iplimit_destroy(struct iplimit *t)
{
	if (!t)
		return;
	pthread_mutex_destroy(&t->lock);
	free(t->entries);
	free(t->buckets);
	free(t);
}

enum iplimit_result iplimit_acquire(struct iplimit *t, const char *ip)
{
	unsigned char key[IPLIMIT_KEY_BYTES];
	enum iplimit_result r = IPLIMIT_OK;
	struct ip_entry *e;

	if (!t || !t->max_conns)
		return IPLIMIT_OK;
	make_key(ip, key);
	pthread_mutex_lock(&t->lock);
	e = get(t, key, mono_ms());
	if (!e) {
		r = IPLIMIT_FULL;
	} else if (e->conns >= t->max_conns) {
		r = IPLIMIT_TOO_MANY;
	} else {
		e->conns++;
		idle_remove(t, e);
	}
	pthread_mutex_unlock(&t->lock);
	return r;
}

void iplimit_release(struct iplimit *t, const char *ip)
{
	unsigned char key[IPLIMIT_KEY_BYTES];
	struct ip_entry *e;

	if (!t || !t->max_conns)
		return;
	make_key(ip, key);
	pthread_mutex_lock(&t->lock);
	e = lookup(t, key);
	if (e && e->conns > 0 && --e->conns == 0)
		idle_touch(t, e);
	pthread_mutex_unlock(&t->lock);
}

bool iplimit_message(struct iplimit *t, const char *ip, int64_t now_ms)
{
	unsigned char key[IPLIMIT_KEY_BYTES];
	int64_t cap, elapsed;
	struct ip_entry *e;
	bool ok = false;

	if (!t || !t->max_per_s)
		return true;
	make_key(ip, key);
	cap = (int64_t)t->max_per_s * IPLIMIT_BURST_S * MILLI;
	pthread_mutex_lock(&t->lock);
	/* A client without an entry when the table is full of connected
	 * clients cannot be measured, so it is refused like one over its rate. */
	e = get(t, key, now_ms);
	if (e) {
		elapsed = now_ms > e->refill_ms ? now_ms - e->refill_ms : 0;
		/* Thousandths of a message per ms is messages per second; after
		 * IPLIMIT_BURST_S idle seconds the bucket is full whatever it held. */
		if (elapsed >= (int64_t)IPLIMIT_BURST_S * 1000)
			e->tokens = cap;
		else if (e->tokens + elapsed * t->max_per_s < cap)
			e->tokens += elapsed * t->max_per_s;
		else
			e->tokens = cap;
		if (now_ms > e->refill_ms)
			e->refill_ms = now_ms;
		if (e->tokens >= MILLI) {
			e->tokens -= MILLI;
			ok = true;
		}
		if (e->idle)
			idle_touch(t, e);
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

size_t iplimit_tracked(struct iplimit *t)
{
	size_t n;

	if (!t)
		return 0;
	pthread_mutex_lock(&t->lock);
	n = t->tracked;
	pthread_mutex_unlock(&t->lock);
	return n;
}
