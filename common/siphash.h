/*
 * siphash.h - SipHash-1-3 under a random key: the hash of every table keyed
 * by strings a client chooses (sessionIds, API keys, addresses), so that
 * nobody can precompute names that pile into one hash chain.
 */
#ifndef WATCHRTC_SIPHASH_H
#define WATCHRTC_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

struct siphash_key {
	uint64_t k0, k1;
};

/* Fills *key from getrandom(); -1 if the kernel gives no randomness. */
int siphash_key_init(struct siphash_key *key) __attribute__((warn_unused_result));

/* SipHash-1-3 of the len bytes at m. */
uint64_t siphash13(const struct siphash_key *key, const void *m, size_t len);

#endif
