/*
 * sdkshape.c - message sizes and bodies shaped like the watchRTC SDK's.
 *
 * The frame logs are JSON lines; only two fields matter here, so each line
 * is searched for them rather than parsed (the benchmark programs do not
 * link a JSON library).
 */
#include "sdkshape.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SDK_LINE_MAX 65536

/* Figures from tests/fixtures/watchrtc-sdk/README.md, for when no log is given. */
static const uint32_t fallback_delta[] = { 1603, 1654, 1675, 1735, 1779, 1816, 1865, 1954 };
static const uint32_t fallback_big[] = { 33894, 33930 };

static const char lz_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-$";

uint64_t sdk_rand(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* Adds one frame of a log line to s if it is a compressed client frame:
 * getstats deltas and initial batches, the two shapes the load is made of. */
static void take_line(struct sdk_sizes *s, const char *line)
{
	const char *p = strstr(line, "\"payloadBytes\":");
	unsigned long n;

	if (!p || !strstr(line, "\"dir\":\"c2s\"") || !strstr(line, "\"kind\":\"lz\""))
		return;
	n = strtoul(p + strlen("\"payloadBytes\":"), NULL, 10);
	if (n >= SDK_BIG_MIN_BYTES) {
		if (s->nbig < SDK_MAX_SIZES)
			s->big[s->nbig++] = (uint32_t)n;
	} else if (strstr(line, "\"getstats\"") && n > 0) {
		if (s->ndelta < SDK_MAX_SIZES)
			s->delta[s->ndelta++] = (uint32_t)n;
	}
}

int sdk_logs_add(struct sdk_logs *l, const char *path)
{
	if (l->n == SDK_MAX_LOGS)
		return -1;
	l->files[l->n++] = path;
	return 0;
}

/* Takes the frames of one log into s. */
static int read_log(struct sdk_sizes *s, const char *path, char *line, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");

	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	while (fgets(line, SDK_LINE_MAX, f))
		take_line(s, line);
	fclose(f);
	return 0;
}

struct sdk_sizes *sdk_sizes_create(const struct sdk_logs *l, char *err, size_t errlen)
{
	struct sdk_sizes *s = calloc(1, sizeof *s);
	char *line = malloc(SDK_LINE_MAX);
	int rc = -1;

	if (!s || !line) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	for (size_t i = 0; l && i < l->n; i++)
		if (read_log(s, l->files[i], line, err, errlen) < 0)
			goto out;
	if (s->ndelta == 0) {
		s->ndelta = sizeof fallback_delta / sizeof fallback_delta[0];
		memcpy(s->delta, fallback_delta, sizeof fallback_delta);
	}
	if (s->nbig == 0) {
		s->nbig = sizeof fallback_big / sizeof fallback_big[0];
		memcpy(s->big, fallback_big, sizeof fallback_big);
	}
	rc = 0;
out:
	free(line);
	if (rc < 0) {
		sdk_sizes_destroy(s);
		s = NULL;
	}
	return s;
}

void sdk_sizes_destroy(struct sdk_sizes *s)
{
	free(s);
}

size_t sdk_pick(const struct sdk_sizes *s, int big, uint64_t *rng)
{
	if (big)
		return s->big[sdk_rand(rng) % s->nbig];
	return s->delta[sdk_rand(rng) % s->ndelta];
}

void sdk_fill_text(uint8_t *buf, size_t n, uint64_t *rng)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)lz_alphabet[sdk_rand(rng) % (sizeof lz_alphabet - 1)];
}

int sdk_bodies_make(struct sdk_body *b, size_t n, const struct sdk_sizes *s, int big,
                    uint64_t *rng)
{
	for (size_t i = 0; i < n; i++) {
		b[i].len = sdk_pick(s, big, rng);
		b[i].bytes = malloc(b[i].len);
		if (!b[i].bytes)
			return -1;
		sdk_fill_text(b[i].bytes, b[i].len, rng);
	}
	return 0;
}

void sdk_bodies_free(struct sdk_body *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(b[i].bytes);
		b[i].bytes = NULL;
	}
}
