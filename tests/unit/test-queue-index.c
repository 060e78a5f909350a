/*
 * test-queue-index.c - the queue's session table against hash flooding.
 *
 * FNV-1a's low k bits depend only on the low k bits of its state, so names
 * that collide in them are cheap to build: find two 4-byte blocks that map
 * the state alike (a birthday search), then another pair from there, and so
 * on; every choice of one block per pair is a colliding name.  Under an
 * unkeyed hash, 16,384 such sessions all land in one chain and each lookup
 * walks it; under a keyed hash they cost what random names cost.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue_internal.h"
#include "tap.h"

#define PAIRS 14                   /* 2^14 = 16,384 colliding names */
#define NAMES (1u << PAIRS)
#define LOW_BITS 24                /* more than any table here will use */
#define BLOCK 4
#define CANDIDATES 65536

static const uint64_t FNV_BASIS = 14695981039346656037ULL, FNV_PRIME = 1099511628211ULL;

static uint64_t fnv_step(uint64_t h, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= FNV_PRIME;
	}
	return h;
}

struct cand {
	uint32_t low;
	char block[BLOCK];
};

static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	return (x->low > y->low) - (x->low < y->low);
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static char random_char(void)
{
	static const char set[] = "abcdefghijklmnopqrstuvwxyz0123456789";

	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return set[rng % (sizeof set - 1)];
}

/* pairs[i][0..1]: two blocks that take the state after pairs[0..i-1] to the
 * same low bits.  Returns 0, or -1 if a search failed. */
static int build_pairs(char pairs[PAIRS][2][BLOCK], const char *prefix)
{
	struct cand *c = malloc(CANDIDATES * sizeof *c);
	uint64_t h = fnv_step(FNV_BASIS, prefix, strlen(prefix));
	uint32_t mask = (1u << LOW_BITS) - 1;
	int rc = 0;

	if (!c)
		return -1;
	for (int p = 0; p < PAIRS && rc == 0; p++) {
		size_t i;

		for (i = 0; i < CANDIDATES; i++) {
			for (int j = 0; j < BLOCK; j++)
				c[i].block[j] = random_char();
			c[i].low = (uint32_t)fnv_step(h, c[i].block, BLOCK) & mask;
		}
		qsort(c, CANDIDATES, sizeof *c, cand_cmp);
		for (i = 1; i < CANDIDATES; i++)
			if (c[i].low == c[i - 1].low && memcmp(c[i].block, c[i - 1].block, BLOCK))
				break;
		if (i == CANDIDATES) {
			rc = -1;
			break;
		}
		memcpy(pairs[p][0], c[i - 1].block, BLOCK);
		memcpy(pairs[p][1], c[i].block, BLOCK);
		h = fnv_step(h, pairs[p][0], BLOCK);
	}
	free(c);
	return rc;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Seconds to create, then find again, every session in names. */
static double time_sessions(char **names, size_t n)
{
	struct queue *q = calloc(1, sizeof *q);
	double t0, t;

	if (!q || qidx_init(q) != QUEUE_OK) {
		free(q);
		return -1;
	}
	t0 = now_s();
	for (size_t i = 0; i < n; i++)
		qidx_session_get(q, names[i]);
	for (size_t i = 0; i < n; i++)
		qidx_session_get(q, names[i]);
	t = now_s() - t0;
	qidx_release(q);
	free(q);
	return t;
}

int main(void)
{
	static char pairs[PAIRS][2][BLOCK];
	const char *prefix = "flood-";
	size_t len = strlen(prefix) + PAIRS * BLOCK + 1;
	char **colliding = calloc(NAMES, sizeof *colliding),
	     **random = calloc(NAMES, sizeof *random);
	double tc, tr;
	unsigned same = 0;

	ok(colliding && random && build_pairs(pairs, prefix) == 0, "built %u names", NAMES);
	for (unsigned n = 0; n < NAMES; n++) {
		char *s = colliding[n] = malloc(len), *r = random[n] = malloc(len);

		if (!s || !r)
			return 1;
		strcpy(s, prefix);
		strcpy(r, prefix);
		for (unsigned p = 0; p < PAIRS; p++) {
			memcpy(s + strlen(prefix) + p * BLOCK, pairs[p][(n >> p) & 1], BLOCK);
			for (unsigned j = 0; j < BLOCK; j++)
				r[strlen(prefix) + p * BLOCK + j] = random_char();
		}
		s[len - 1] = r[len - 1] = '\0';
	}
	for (unsigned n = 0; n < NAMES; n++)
		same += (fnv_step(FNV_BASIS, colliding[n], len - 1) & ((1u << LOW_BITS) - 1)) ==
		        (fnv_step(FNV_BASIS, colliding[0], len - 1) & ((1u << LOW_BITS) - 1));
	is_int(same, NAMES, "all of them collide in FNV-1a's low %d bits", LOW_BITS);

	tr = time_sessions(random, NAMES);
	tc = time_sessions(colliding, NAMES);
	diag("random names %.4f s, colliding names %.4f s (%.1fx)", tr, tc, tr > 0 ? tc / tr : 0);
	ok(tr >= 0 && tc >= 0, "the index was made");
	/* Keyed: the same cost (noise aside).  Unkeyed FNV-1a: one chain of
	 * 16,384, hundreds of times slower. */
	ok(tc < 5 * tr + 0.05, "colliding sessionIds cost what random ones do (%.4f s vs %.4f s)",
	   tc, tr);
	for (unsigned n = 0; n < NAMES; n++) {
		free(colliding[n]);
		free(random[n]);
	}
	free(colliding);
	free(random);
	return done_testing();
}
