/*
 * sdkshape.h - messages shaped like the watchRTC SDK's, for the benchmark
 * programs: sizes taken from the captured frame logs
 * (tests/fixtures/watchrtc-sdk/frame-log-*.jsonl) and bodies made of the
 * LZString URI alphabet, which is what the SDK sends (valid UTF-8 text).
 */
#ifndef WATCHRTC_SDKSHAPE_H
#define WATCHRTC_SDKSHAPE_H

#include <stddef.h>
#include <stdint.h>

#define SDK_MAX_SIZES 4096           /* sizes kept from the frame logs */
#define SDK_BIG_MIN_BYTES 16384      /* a frame this large is an initial batch */

/* Payload sizes of the SDK's compressed frames, split into the steady
 * getstats deltas and the large initial batches. */
struct sdk_sizes {
	uint32_t delta[SDK_MAX_SIZES];
	size_t ndelta;
	uint32_t big[SDK_MAX_SIZES];
	size_t nbig;
};

/*
 * Reads the client-to-server "lz" frames of each frame log in files.  With
 * no file (n == 0) or no frame found, falls back to the figures of the
 * fixtures' README (getstats 1,603-1,954 bytes, initial batch 33,894).
 * Returns 0, or -1 with a message in err if a file cannot be read.
 */
int sdk_sizes_load(struct sdk_sizes *s, const char *const *files, size_t n, char *err,
                   size_t errlen);

/* A small fast PRNG (xorshift64*); *state must not be 0. */
uint64_t sdk_rand(uint64_t *state);

/* One delta size, or (big) one initial-batch size, drawn at random. */
size_t sdk_pick(const struct sdk_sizes *s, int big, uint64_t *rng);

/* Fills buf with n characters of the LZString URI alphabet. */
void sdk_fill_text(uint8_t *buf, size_t n, uint64_t *rng);

#endif
