/*
 * xff.c - X-Forwarded-For.
 *
 * A client can put anything in the header it sends us, so only entries that
 * parse as IP addresses are passed on, and only the last XFF_MAX_HOPS of
 * them: the rightmost entries were added by the proxies nearest to us, which
 * are the ones worth trusting.
 */
#include "xff.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* Entries kept from the incoming header; our peer comes after them. */
#define XFF_MAX_HOPS 32
#define XFF_SEP ", "

/* Whether the len bytes at s are an IPv4 or IPv6 literal. */
static bool is_ip_n(const char *s, size_t len)
{
	char copy[INET6_ADDRSTRLEN];
	unsigned char addr[sizeof(struct in6_addr)];

	/* Every textual address fits in INET6_ADDRSTRLEN with its NUL. */
	if (len == 0 || len >= sizeof copy)
		return false;
	memcpy(copy, s, len);
	copy[len] = '\0';
	return inet_pton(AF_INET, copy, addr) == 1 || inet_pton(AF_INET6, copy, addr) == 1;
}

bool xff_is_ip(const char *s)
{
	return s && is_ip_n(s, strnlen(s, INET6_ADDRSTRLEN));
}

struct span {
	const char *s;
	size_t len;
};

/* Appends one entry at o (a separator first unless o is the start of out);
 * returns the new end. */
static char *append_entry(char *out, char *o, const char *s, size_t len)
{
	if (o > out) {
		memcpy(o, XFF_SEP, strlen(XFF_SEP));
		o += strlen(XFF_SEP);
	}
	memcpy(o, s, len);
	return o + len;
}

char *xff_forward_chain(const char *incoming, const char *peer_ip)
{
	struct span kept[XFF_MAX_HOPS];  /* a ring of the last good entries */
	size_t total = 0, n, first, size = 1;
	const char *p = incoming;
	char *out, *o;
	bool peer = xff_is_ip(peer_ip);

	while (p && *p) {
		const char *end = strchr(p, ','), *q;

		if (!end)
			end = p + strlen(p);
		q = end;
		while (p < q && (*p == ' ' || *p == '\t'))
			p++;
		while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
			q--;
		if (is_ip_n(p, (size_t)(q - p)))
			kept[total++ % XFF_MAX_HOPS] = (struct span){ p, (size_t)(q - p) };
		p = *end ? end + 1 : end;
	}

	n = total < XFF_MAX_HOPS ? total : XFF_MAX_HOPS;
	first = total - n;  /* the oldest entry kept */
	for (size_t i = 0; i < n; i++)
		size += kept[(first + i) % XFF_MAX_HOPS].len + strlen(XFF_SEP);
	if (peer)
		size += strlen(peer_ip);
	if (!(out = malloc(size)))
		return NULL;

	o = out;
	for (size_t i = 0; i < n; i++) {
		const struct span *e = &kept[(first + i) % XFF_MAX_HOPS];
		o = append_entry(out, o, e->s, e->len);
	}
	if (peer)
		o = append_entry(out, o, peer_ip, strlen(peer_ip));
	*o = '\0';
	return out;
}
