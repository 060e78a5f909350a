/*
 * siphash.c - SipHash-1-3 (Aumasson and Bernstein), as Rust's and Python's
 * hash tables use it: one compression round and three finalisation rounds
 * are enough against chosen collisions when the key stays secret.
 */
#include "siphash.h"

#include <sys/random.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

int siphash_key_init(struct siphash_key *key)
{
	uint64_t seed[2];

	if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed)
		return -1;
	key->k0 = seed[0];
	key->k1 = seed[1];
	return 0;
}

static void sipround(uint64_t v[4])
{
	v[0] += v[1]; v[1] = ROTL(v[1], 13); v[1] ^= v[0]; v[0] = ROTL(v[0], 32);
	v[2] += v[3]; v[3] = ROTL(v[3], 16); v[3] ^= v[2];
	v[0] += v[3]; v[3] = ROTL(v[3], 21); v[3] ^= v[0];
	v[2] += v[1]; v[1] = ROTL(v[1], 17); v[1] ^= v[2]; v[2] = ROTL(v[2], 32);
}

uint64_t siphash13(const struct siphash_key *key, const void *data, size_t len)
{
	const unsigned char *m = data;
	uint64_t v[4] = { key->k0 ^ 0x736f6d6570736575ULL, key->k1 ^ 0x646f72616e646f6dULL,
	                  key->k0 ^ 0x6c7967656e657261ULL, key->k1 ^ 0x7465646279746573ULL };
	uint64_t w, last = (uint64_t)len << 56;
	size_t i;

	for (i = 0; i + 8 <= len; i += 8) {
		w = 0;
		for (size_t j = 0; j < 8; j++)
			w |= (uint64_t)m[i + j] << (8 * j);
		v[3] ^= w;
		sipround(v);
		v[0] ^= w;
	}
	for (size_t j = 0; i + j < len; j++)
		last |= (uint64_t)m[i + j] << (8 * j);
	v[3] ^= last;
	sipround(v);
	v[0] ^= last;
	v[2] ^= 0xff;
	sipround(v);
	sipround(v);
	sipround(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}
