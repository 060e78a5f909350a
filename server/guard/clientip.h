/*
 * clientip.h - who the client is.  CIDR blocks, the set of trusted proxies,
 * and the client address behind them with nginx's real_ip_recursive rule:
 * the peer, or when the peer is a trusted proxy, the rightmost
 * X-Forwarded-For entry that is not one.
 */
#ifndef WATCHRTC_CLIENTIP_H
#define WATCHRTC_CLIENTIP_H

#include <stdbool.h>
#include <stddef.h>

/* Room for any address clientip writes, NUL included (INET6_ADDRSTRLEN). */
#define CLIENTIP_SIZE 46

/*
 * An IPv4 or IPv6 network.  An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * is kept as the IPv4 address it maps, so both spellings match alike.
 */
struct cidr {
	int family;                 /* AF_INET or AF_INET6 */
	unsigned char addr[16];     /* the network address: host bits are zero */
	unsigned prefix;            /* 0..32 or 0..128 */
};

/*
 * Parses the len bytes at s: "ADDR/PREFIX" or a bare address (one host).
 * A block with host bits set ("10.0.0.1/8") is refused as a likely typo.
 * Returns 0, or -1 if s is not a CIDR block.
 */
int cidr_parse(const char *s, size_t len, struct cidr *out);
/* Writes c as "ADDR/PREFIX" into buf (cut to fit). */
void cidr_format(const struct cidr *c, char *buf, size_t size);
/* True if the address literal ip (no port, no brackets) is inside c. */
bool cidr_contains(const struct cidr *c, const char *ip);

/*
 * Parses the len bytes at s as an IPv4 or IPv6 literal into family and
 * addr (IPv4-mapped IPv6 becomes IPv4).  Returns 0 or -1.
 */
int clientip_parse(const char *s, size_t len, int *family, unsigned char addr[16]);

struct sockaddr;
struct sockaddr_storage;
/* An IPv4 or IPv6 literal and a port as a socket address (*len its size);
 * -1 if addr is neither. */
int clientip_sockaddr(const char *addr, unsigned port, struct sockaddr_storage *ss,
                      unsigned *len);
/* A socket address as text ("unknown" if not IP); an IPv4 client on a
 * dual-stack socket shows as IPv4. */
void clientip_from_sockaddr(const struct sockaddr *sa, char *buf, size_t size);

struct trusted_proxies;

/*
 * Makes the set from a comma-separated list of CIDR blocks or addresses
 * (blanks around entries are ignored).  NULL or "" trusts nobody.  On error
 * returns -1 and sets *cause (malloc'd, caller frees) naming the bad entry.
 */
int trusted_proxies_create(struct trusted_proxies **out, const char *list, char **cause)
	__attribute__((warn_unused_result));
void trusted_proxies_destroy(struct trusted_proxies *tp);  /* accepts NULL */
/* True if ip is a trusted proxy (false for NULL tp or a malformed ip). */
bool trusted_proxies_contains(const struct trusted_proxies *tp, const char *ip);

/*
 * The client's address, written canonically into out[CLIENTIP_SIZE]:
 * peer itself unless peer is a trusted proxy; then xff (every
 * X-Forwarded-For value, joined with commas; may be NULL) is walked from
 * the right, each entry taking the place of the trusted address before it,
 * until an entry is not trusted.  The walk stops at a malformed entry (the
 * last good address stays) and at the left end.  Empty entries are
 * skipped.  Returns out.
 */
const char *clientip_resolve(const struct trusted_proxies *tp, const char *peer,
                             const char *xff, char out[CLIENTIP_SIZE]);

#endif
