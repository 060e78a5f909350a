/*
 * fuzz-cidr.c - libFuzzer target for CIDR parsing, trusted-proxy lists and
 * the client address behind them (server/clientip.c).
 *
 * Input: "PROXY LIST\nPEER\nX-FORWARDED-FOR"; missing parts are empty.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clientip.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* Whatever parses formats to text that parses back to the same block. */
static void check_cidr(const char *s, size_t len)
{
	struct cidr a, b;
	char text[80];

	if (cidr_parse(s, len, &a) < 0)
		return;
	CHECK(a.prefix <= (a.family == AF_INET ? 32u : 128u));
	cidr_format(&a, text, sizeof text);
	CHECK(cidr_parse(text, strlen(text), &b) == 0);
	CHECK(a.family == b.family && a.prefix == b.prefix && !memcmp(a.addr, b.addr, 16));
	/* A block holds its own network address. */
	if (a.family == AF_INET || a.prefix > 0) {
		char addr[CLIENTIP_SIZE];

		CHECK(inet_ntop(a.family, a.addr, addr, sizeof addr));
		CHECK(cidr_contains(&a, addr));
	}
}

/* The canonical text of the address s, or "" if it is none. */
static void canonical(const char *s, char out[CLIENTIP_SIZE])
{
	unsigned char addr[16];
	int family;

	out[0] = '\0';
	if (clientip_parse(s, strlen(s), &family, addr) == 0)
		CHECK(inet_ntop(family, addr, out, CLIENTIP_SIZE));
}

/* Whether some entry of the comma list xff is the address out. */
static bool in_header(const char *xff, const char *out)
{
	char entry[CLIENTIP_SIZE], canon[CLIENTIP_SIZE];

	for (const char *p = xff; *p; p += *p == ',') {
		size_t len = strcspn(p, ",");
		const char *q = p + len;

		while (p < q && (*p == ' ' || *p == '\t'))
			p++;
		while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
			q--;
		if ((size_t)(q - p) < sizeof entry) {
			memcpy(entry, p, (size_t)(q - p));
			entry[q - p] = '\0';
			canonical(entry, canon);
			if (canon[0] && !strcmp(canon, out))
				return true;
		}
		p += strcspn(p, ",");
	}
	return false;
}

static void check_resolve(const char *list, const char *peer, const char *xff)
{
	struct trusted_proxies *tp = NULL;
	char *cause = NULL, out[CLIENTIP_SIZE], want[CLIENTIP_SIZE];

	if (trusted_proxies_create(&tp, list, &cause) < 0) {
		CHECK(!tp && cause);
		free(cause);
		return;
	}
	CHECK(!cause);
	clientip_resolve(tp, peer, xff, out);
	CHECK(memchr(out, '\0', CLIENTIP_SIZE));
	canonical(peer, want);
	if (!want[0]) {
		/* A peer that is no address is kept as it is (cut to fit). */
		CHECK(!strncmp(out, peer, CLIENTIP_SIZE - 1));
	} else if (!trusted_proxies_contains(tp, peer)) {
		/* An untrusted peer is the client, whatever the header says. */
		CHECK(!strcmp(out, want));
	} else {
		/* Behind a trusted peer the client is the peer or one of the
		 * header's entries, written canonically. */
		CHECK(!strcmp(out, want) || in_header(xff, out));
	}
	trusted_proxies_destroy(tp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1), *peer, *xff, *nl;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	check_cidr(buf, size);
	peer = xff = buf + strlen(buf);
	if ((nl = strchr(buf, '\n'))) {
		*nl = '\0';
		peer = nl + 1;
		xff = peer + strlen(peer);
		if ((nl = strchr(peer, '\n'))) {
			*nl = '\0';
			xff = nl + 1;
		}
	}
	check_cidr(buf, strlen(buf));
	check_resolve(buf, peer, xff);
	free(buf);
	return 0;
}
