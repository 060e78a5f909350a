/*
 * fuzz-xff.c - libFuzzer target for xff_forward_chain and xff_is_ip.
 *
 * Input: "incoming\npeer", or just an incoming header with a fixed peer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xff.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* Incoming entries kept (xff.c's XFF_MAX_HOPS) plus the peer. */
#define MAX_ENTRIES (32 + 1)

static void check_chain(const char *incoming, const char *peer)
{
	char *out = xff_forward_chain(incoming, peer), *copy, *entry, *save = NULL;
	size_t n = 0, plen;

	CHECK(out);
	/* Only address characters and the ", " separator ever go upstream. */
	CHECK(strspn(out, "0123456789abcdefABCDEF.:, ") == strlen(out));
	CHECK(strlen(out) <= strlen(incoming) + 2 * MAX_ENTRIES + (peer ? strlen(peer) : 0));
	if (xff_is_ip(peer)) {
		plen = strlen(peer);
		CHECK(strlen(out) >= plen && !strcmp(out + strlen(out) - plen, peer));
	}
	copy = strdup(out);
	CHECK(copy);
	for (entry = strtok_r(copy, ",", &save); entry; entry = strtok_r(NULL, ",", &save)) {
		if (n > 0)
			CHECK(*entry++ == ' ');
		CHECK(xff_is_ip(entry));
		n++;
	}
	CHECK(n <= MAX_ENTRIES);
	CHECK((n == 0) == (*out == '\0'));
	free(copy);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1), *nl;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	(void)xff_is_ip(buf);
	if ((nl = memchr(buf, '\n', size))) {
		*nl = '\0';
		check_chain(buf, nl + 1);
	} else {
		check_chain(buf, "192.0.2.1");
		check_chain(buf, NULL);
	}
	free(buf);
	return 0;
}
