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
#define SDK_MAX_LOGS 8               /* --frame-log options a program takes */

/* Payload sizes of the SDK's compressed frames, split into the steady
 * getstats deltas and the large initial batches. */
struct sdk_sizes {
	uint32_t delta[SDK_MAX_SIZES];
	size_t ndelta;
	uint32_t big[SDK_MAX_SIZES];
	size_t nbig;
};

/* The frame logs named on a command line (--frame-log FILE, repeated). */
struct sdk_logs {
	const char *files[SDK_MAX_LOGS];
	size_t n;
};

/* One message body (malloc'd bytes). */
struct sdk_body {
	uint8_t *bytes;
	size_t len;
};

/* Adds path to l; returns 0, or -1 if l already holds SDK_MAX_LOGS. */
int sdk_logs_add(struct sdk_logs *l, const char *path);

/*
 * Reads the client-to-server "lz" frames of each frame log in l.  With no
 * file (or l NULL) or no frame found, falls back to the figures of the
 * fixtures' README (getstats 1,603-1,954 bytes, initial batch 33,894).
 * Returns the sizes (sdk_sizes_destroy frees them), or NULL with a message
 * in err if a file cannot be read or memory ran out.
 */
struct sdk_sizes *sdk_sizes_create(const struct sdk_logs *l, char *err, size_t errlen);
/* Accepts NULL. */
void sdk_sizes_destroy(struct sdk_sizes *s);

/* A small fast PRNG (xorshift64*); *state must not be 0. */
uint64_t sdk_rand(uint64_t *state);

/* One delta size, or (big) one initial-batch size, drawn at random. */
size_t sdk_pick(const struct sdk_sizes *s, int big, uint64_t *rng);

/* Fills buf with n characters of the LZString URI alphabet. */
void sdk_fill_text(uint8_t *buf, size_t n, uint64_t *rng);

/*
 * Makes n bodies of SDK text, each of a delta size (or, with big, of an
 * initial-batch size) drawn from s.  Returns 0, or -1 if memory ran out;
 * either way sdk_bodies_free(b, n) frees what was made (b starts zeroed).
 */
int sdk_bodies_make(struct sdk_body *b, size_t n, const struct sdk_sizes *s, int big,
                    uint64_t *rng);
void sdk_bodies_free(struct sdk_body *b, size_t n);

#endif
