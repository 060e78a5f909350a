/*
 * fuzz-proxyproto.c - libFuzzer target for proxyproto_parse: never reads
 * past what it is given, claims no more bytes than it saw, and agrees with
 * itself on every prefix (a whole header's prefixes ask for more).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxyproto.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A copy of exactly size bytes, so ASan sees any read past it. */
	unsigned char *buf = malloc(size ? size : 1);
	struct proxyproto_header h, p;
	const char *why;
	enum proxyproto_result r;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	r = proxyproto_parse(buf, size, &h, &why);
	CHECK(r == PROXYPROTO_NOT || r == PROXYPROTO_MORE || r == PROXYPROTO_OK ||
	      r == PROXYPROTO_BAD);
	CHECK((r == PROXYPROTO_BAD) == !!why);
	if (r == PROXYPROTO_OK) {
		CHECK(h.len > 0 && h.len <= size && h.len <= PROXYPROTO_MAX);
		CHECK(h.version == 1 || h.version == 2);
		CHECK(!h.has_source || (h.source.ss_family == AF_INET) ||
		      (h.source.ss_family == AF_INET6));
		/* What follows the header does not change it. */
		CHECK(proxyproto_parse(buf, h.len, &p, &why) == PROXYPROTO_OK && p.len == h.len &&
		      p.has_source == h.has_source &&
		      !memcmp(&p.source, &h.source, sizeof p.source));
		if (h.len > 1)
			CHECK(proxyproto_parse(buf, h.len - 1, &p, &why) == PROXYPROTO_MORE);
	}
	free(buf);
	return 0;
}
