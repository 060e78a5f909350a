/*
 * clientip.c - CIDR blocks, trusted proxies and the real client address.
 *
 * A client can write anything into X-Forwarded-For, so the header is only
 * believed as far as a chain of proxies we trust vouches for it: each
 * trusted hop appended the address it saw, so the rightmost entry that no
 * trusted proxy wrote is the client.  Everything left of it is the
 * client's own claim and is ignored.
 */
#include "clientip.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cause.h"

struct trusted_proxies {
	size_t n;
	struct cidr blocks[];
};

static bool is_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

int clientip_parse(const char *s, size_t len, int *family, unsigned char addr[16])
{
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	char copy[CLIENTIP_SIZE];

	/* Every textual address fits in CLIENTIP_SIZE with its NUL. */
	if (len == 0 || len >= sizeof copy || memchr(s, '\0', len))
		return -1;
	memcpy(copy, s, len);
	copy[len] = '\0';
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, copy, addr) == 1) {
		*family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, copy, addr) != 1)
		return -1;
	if (!memcmp(addr, mapped, sizeof mapped)) {
		memmove(addr, addr + 12, 4);
		memset(addr + 4, 0, 12);
		*family = AF_INET;
	} else {
		*family = AF_INET6;
	}
	return 0;
}

/* Whether the first prefix bits of a and b agree. */
static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned prefix)
{
	unsigned whole = prefix / 8, rest = prefix % 8;

	if (memcmp(a, b, whole))
		return false;
	if (!rest)
		return true;
	return ((a[whole] ^ b[whole]) & (unsigned char)(0xff << (8 - rest))) == 0;
}

int cidr_parse(const char *s, size_t len, struct cidr *out)
{
	const char *slash = memchr(s, '/', len);
	size_t alen = slash ? (size_t)(slash - s) : len;
	unsigned max, prefix = 0;
	unsigned char cut[16] = { 0 };
	bool v6text = memchr(s, ':', alen);

	if (clientip_parse(s, alen, &out->family, out->addr) < 0)
		return -1;
	max = v6text ? 128 : 32;
	if (!slash) {
		out->prefix = out->family == AF_INET ? 32 : 128;
		return 0;
	}
	/* 1 to 3 decimal digits, no sign, no blanks. */
	if (len - alen < 2 || len - alen > 4)
		return -1;
	for (const char *p = slash + 1; p < s + len; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		prefix = prefix * 10 + (unsigned)(*p - '0');
	}
	if (prefix > max)
		return -1;
	/* An IPv4-mapped block written in IPv6 form counts its prefix from
	 * the start of the IPv6 address: ::ffff:10.0.0.0/104 is 10.0.0.0/8. */
	if (out->family == AF_INET && v6text) {
		if (prefix < 96)
			return -1;
		prefix -= 96;
	}
	out->prefix = prefix;
	/* Host bits: compare the address with itself cut to the prefix. */
	memcpy(cut, out->addr, prefix / 8);
	if (prefix % 8)
		cut[prefix / 8] = out->addr[prefix / 8] & (unsigned char)(0xff << (8 - prefix % 8));
	return memcmp(cut, out->addr, sizeof cut) ? -1 : 0;
}

void cidr_format(const struct cidr *c, char *buf, size_t size)
{
	char addr[CLIENTIP_SIZE];

	if (!inet_ntop(c->family, c->addr, addr, sizeof addr))
		snprintf(addr, sizeof addr, "?");
	snprintf(buf, size, "%s/%u", addr, c->prefix);
}

static bool contains_addr(const struct cidr *c, int family, const unsigned char *addr)
{
	return c->family == family && prefix_equal(c->addr, addr, c->prefix);
}

bool cidr_contains(const struct cidr *c, const char *ip)
{
	unsigned char addr[16];
	int family;

	if (!ip || clientip_parse(ip, strlen(ip), &family, addr) < 0)
		return false;
	return contains_addr(c, family, addr);
}

int trusted_proxies_create(struct trusted_proxies **out, const char *list, char **cause)
{
	struct trusted_proxies *tp;
	size_t n = 1;

	*out = NULL;
	*cause = NULL;
	for (const char *p = list; p && *p; p++)
		n += *p == ',';
	tp = calloc(1, sizeof *tp + n * sizeof tp->blocks[0]);
	if (!tp) {
		*cause = strdup("out of memory");
		return -1;
	}
	for (const char *p = list; p && *p;) {
		const char *end = strchr(p, ','), *q;

		if (!end)
			end = p + strlen(p);
		q = end;
		while (p < q && is_blank(*p))
			p++;
		while (q > p && is_blank(q[-1]))
			q--;
		if (q > p && cidr_parse(p, (size_t)(q - p), &tp->blocks[tp->n++]) < 0) {
			cause_set(cause, -1, "\"%.*s\" is not an address or a CIDR block "
			          "(e.g. 10.0.0.0/8 or 2001:db8::/32) with no host bits set",
			          (int)(q - p), p);
			free(tp);
			return -1;
		}
		p = *end ? end + 1 : end;
	}
	*out = tp;
	return 0;
}

void trusted_proxies_destroy(struct trusted_proxies *tp)
{
	free(tp);
}

static bool trusted_addr(const struct trusted_proxies *tp, int family, const unsigned char *addr)
{
	for (size_t i = 0; tp && i < tp->n; i++) {
		if (contains_addr(&tp->blocks[i], family, addr))
			return true;
	}
	return false;
}

bool trusted_proxies_contains(const struct trusted_proxies *tp, const char *ip)
{
	unsigned char addr[16];
	int family;

	if (!tp || !ip || clientip_parse(ip, strlen(ip), &family, addr) < 0)
		return false;
	return trusted_addr(tp, family, addr);
}

const char *clientip_resolve(const struct trusted_proxies *tp, const char *peer,
                             const char *xff, char out[CLIENTIP_SIZE])
{
	unsigned char addr[16], next[16];
	int family, next_family;
	const char *end = xff ? xff + strlen(xff) : NULL;

	if (!peer || clientip_parse(peer, strlen(peer), &family, addr) < 0) {
		snprintf(out, CLIENTIP_SIZE, "%s", peer ? peer : "");
		return out;
	}
	/* [start, end) is the entry left of what was read so far. */
	while (end && trusted_addr(tp, family, addr)) {
		const char *start = end, *p, *q = end;

		while (start > xff && start[-1] != ',')
			start--;
		for (p = start; p < q && is_blank(*p); p++)
			;
		while (q > p && is_blank(q[-1]))
			q--;
		if (q > p) {
			if (clientip_parse(p, (size_t)(q - p), &next_family, next) < 0)
				break;   /* malformed: the last good address stays */
			family = next_family;
			memcpy(addr, next, sizeof addr);
		}
		end = start > xff ? start - 1 : NULL;  /* before its comma, or done */
	}
	if (!inet_ntop(family, addr, out, CLIENTIP_SIZE))
		snprintf(out, CLIENTIP_SIZE, "%s", peer);
	return out;
}

void clientip_from_sockaddr(const struct sockaddr *sa, char *buf, size_t size)
{
	snprintf(buf, size, "unknown");
	if (!sa)
		return;
	if (sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf,
		          (socklen_t)size);
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(a))
			inet_ntop(AF_INET, &a->s6_addr[12], buf, (socklen_t)size);
		else
			inet_ntop(AF_INET6, a, buf, (socklen_t)size);
	}
}

int clientip_sockaddr(const char *addr, unsigned port, struct sockaddr_storage *ss,
                      unsigned *len)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof *ss);
	if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		*len = sizeof *in4;
		return 0;
	}
	if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*len = sizeof *in6;
		return 0;
	}
	return -1;
}
