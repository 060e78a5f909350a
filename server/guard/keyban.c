/*
 * keyban.c - a bounded, expiring set of API keys the upstream refused.
 *
 * Every HTTPS post and websocket upgrade asks keyban_contains(), so lookups
 * go through a hash table rather than a scan.  Entries also sit on a list in
 * the order they were (re)added; since every entry lives for the same ttl,
 * that order is also their expiry order, so expired entries are always at
 * the old end and purging or evicting never searches.
 */
#include "keyban.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "siphash.h"

/* Hash buckets (a power of two): at most ~2.5 entries per chain when full. */
#define KEYBAN_BUCKETS 4096
/* Longer keys are truncated for comparison (no real API key is this long). */
#define KEYBAN_KEY_MAX 256

struct keyban_entry {
	struct keyban_entry *next;          /* hash chain */
	struct keyban_entry *older, *newer; /* age list */
	int64_t expires_ms;
	uint32_t hash;
	size_t len;
	char key[];
};

struct keyban {
	pthread_mutex_t lock;
	int64_t ttl_ms;
	struct siphash_key seed;  /* random per set, so chains cannot be planned */
	size_t count;
	struct keyban_entry *oldest, *newest;
	struct keyban_entry *buckets[KEYBAN_BUCKETS];
};

static uint32_t key_hash(const struct siphash_key *seed, const char *key, size_t len)
{
	return (uint32_t)siphash13(seed, key, len);
}

struct keyban *keyban_create(unsigned ttl_s)
{
	struct keyban *kb = calloc(1, sizeof *kb);

	if (!kb)
		return NULL;
	if (pthread_mutex_init(&kb->lock, NULL) != 0) {
		free(kb);
		return NULL;
	}
	kb->ttl_ms = (int64_t)ttl_s * 1000;
	if (siphash_key_init(&kb->seed) < 0) {
		pthread_mutex_destroy(&kb->lock);
		free(kb);
		return NULL;
	}
	return kb;
}

void keyban_destroy(struct keyban *kb)
{
	struct keyban_entry *e, *next;

	if (!kb)
		return;
	for (e = kb->oldest; e; e = next) {
		next = e->newer;
		free(e);
	}
	pthread_mutex_destroy(&kb->lock);
	free(kb);
}

static size_t key_len(const char *key)
{
	return strnlen(key, KEYBAN_KEY_MAX);
}

/* Finds key; *link is set to the pointer that points at the entry. */
static struct keyban_entry *lookup(struct keyban *kb, const char *key, size_t len,
                                   uint32_t hash, struct keyban_entry ***link)
{
	struct keyban_entry **p = &kb->buckets[hash & (KEYBAN_BUCKETS - 1)];

	for (; *p; p = &(*p)->next) {
		struct keyban_entry *e = *p;

		if (e->hash == hash && e->len == len && !memcmp(e->key, key, len)) {
			*link = p;
			return e;
		}
	}
	return NULL;
}

static void age_unlink(struct keyban *kb, struct keyban_entry *e)
{
	if (e->older)
		e->older->newer = e->newer;
	else
		kb->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		kb->newest = e->older;
	e->older = e->newer = NULL;
}

static void age_push_newest(struct keyban *kb, struct keyban_entry *e)
{
	e->older = kb->newest;
	e->newer = NULL;
	if (kb->newest)
		kb->newest->newer = e;
	else
		kb->oldest = e;
	kb->newest = e;
}

/* Unlinks e from its chain and the age list and frees it. */
static void remove_entry(struct keyban *kb, struct keyban_entry *e)
{
	struct keyban_entry **link = NULL;

	lookup(kb, e->key, e->len, e->hash, &link);
	*link = e->next;
	age_unlink(kb, e);
	kb->count--;
	free(e);
}

static void purge_expired(struct keyban *kb, int64_t now)
{
	while (kb->oldest && kb->oldest->expires_ms <= now)
		remove_entry(kb, kb->oldest);
}

void keyban_add(struct keyban *kb, const char *key)
{
	struct keyban_entry *e, **link;
	size_t len;
	uint32_t hash;
	int64_t now = mono_ms();

	if (!kb || !key || !*key)
		return;
	len = key_len(key);
	hash = key_hash(&kb->seed, key, len);
	pthread_mutex_lock(&kb->lock);
	purge_expired(kb, now);
	e = lookup(kb, key, len, hash, &link);
	if (e) {
		/* Refused again: it stays refused for a full ttl from now. */
		age_unlink(kb, e);
	} else {
		if (kb->count >= KEYBAN_MAX_ENTRIES)
			remove_entry(kb, kb->oldest);
		e = malloc(sizeof *e + len + 1);
		if (!e)
			goto out;   /* a ban is an optimisation; the upstream still refuses */
		memcpy(e->key, key, len);
		e->key[len] = '\0';
		e->len = len;
		e->hash = hash;
		link = &kb->buckets[hash & (KEYBAN_BUCKETS - 1)];
		e->next = *link;
		*link = e;
		kb->count++;
	}
	e->expires_ms = now + kb->ttl_ms;
	age_push_newest(kb, e);
out:
	pthread_mutex_unlock(&kb->lock);
}

bool keyban_contains(struct keyban *kb, const char *key)
{
	struct keyban_entry *e, **link;
	size_t len;
	uint32_t hash;
	bool found = false;

	if (!kb || !key || !*key)
		return false;
	len = key_len(key);
	hash = key_hash(&kb->seed, key, len);
	pthread_mutex_lock(&kb->lock);
	if (kb->count == 0)
		goto out;
	purge_expired(kb, mono_ms());
	e = lookup(kb, key, len, hash, &link);
	found = e;
out:
	pthread_mutex_unlock(&kb->lock);
	return found;
}
