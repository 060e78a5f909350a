/* test-clientip.c - CIDR blocks, trusted proxies and the real client address. */
#include "clientip.h"

#include <stdlib.h>

#include "tap.h"

static void parses(const char *s, const char *want)
{
	struct cidr c;
	char buf[64] = "";
	int rc = cidr_parse(s, strlen(s), &c);

	if (rc == 0)
		cidr_format(&c, buf, sizeof buf);
	is_str(rc == 0 ? buf : NULL, want, "cidr \"%s\"", s);
}

static void refused(const char *s, const char *what)
{
	struct cidr c;

	ok(cidr_parse(s, strlen(s), &c) < 0, "refused: %s (\"%s\")", what, s);
}

static void resolves(const struct trusted_proxies *tp, const char *peer, const char *xff,
                     const char *want, const char *what)
{
	char out[CLIENTIP_SIZE];

	is_str(clientip_resolve(tp, peer, xff, out), want, "%s", what);
}

static struct trusted_proxies *proxies(const char *list)
{
	struct trusted_proxies *tp = NULL;
	char *cause = NULL;

	if (trusted_proxies_create(&tp, list, &cause) < 0) {
		diag("trusted_proxies_create(\"%s\"): %s", list, cause ? cause : "?");
		free(cause);
		exit(1);
	}
	return tp;
}

int main(void)
{
	struct trusted_proxies *tp = NULL, *none = NULL;
	struct cidr c;
	char *cause = NULL;

	/* --- CIDR parsing ----------------------------------------------------- */
	parses("10.0.0.0/8", "10.0.0.0/8");
	parses("192.0.2.1", "192.0.2.1/32");
	parses("0.0.0.0/0", "0.0.0.0/0");
	parses("2001:db8::/32", "2001:db8::/32");
	parses("::1", "::1/128");
	parses("::/0", "::/0");
	parses("::ffff:10.0.0.0/104", "10.0.0.0/8");
	parses("::ffff:192.0.2.7", "192.0.2.7/32");
	parses("172.16.0.0/12", "172.16.0.0/12");
	refused("10.0.0.1/8", "host bits set");
	refused("2001:db8::1/32", "IPv6 host bits set");
	refused("10.0.0.0/33", "IPv4 prefix over 32");
	refused("::/129", "IPv6 prefix over 128");
	refused("10.0.0.0/", "no prefix after '/'");
	refused("10.0.0.0/-1", "a sign");
	refused("10.0.0.0/ 8", "a blank");
	refused("10.0.0.0/0008", "four digits");
	refused("::ffff:10.0.0.0/95", "a mapped prefix shorter than the mapping");
	refused("10.0.0.0/8/8", "two slashes");
	refused("example.com/8", "a hostname");
	refused("", "empty");
	refused("[::1]/128", "brackets");
	ok(cidr_parse("10.0.0.0/8", 4, &c) < 0, "len is honoured: \"10.0\" is no address");

	ok(cidr_parse("10.0.0.0/8", 10, &c) == 0 && cidr_contains(&c, "10.255.1.2"),
	   "10/8 has 10.255.1.2");
	ok(!cidr_contains(&c, "11.0.0.0"), "10/8 has not 11.0.0.0");
	ok(cidr_contains(&c, "::ffff:10.1.2.3"), "an IPv4-mapped address matches its IPv4 block");
	ok(!cidr_contains(&c, "::a01:203"), "an IPv4-compatible IPv6 address does not");
	ok(!cidr_contains(&c, "garbage"), "a malformed address is never inside");
	ok(cidr_parse("172.16.0.0/12", 13, &c) == 0 && cidr_contains(&c, "172.31.255.255") &&
	   !cidr_contains(&c, "172.32.0.0"), "a prefix that is not a multiple of 8");
	ok(cidr_parse("2001:db8::/32", 13, &c) == 0 && cidr_contains(&c, "2001:db8:ffff::1") &&
	   !cidr_contains(&c, "2001:db9::1") && !cidr_contains(&c, "10.0.0.1"), "IPv6 block");

	/* --- trusted proxy lists ---------------------------------------------- */
	ok(trusted_proxies_create(&tp, "10.0.0.0/8, 192.0.2.1 ,2001:db8::/32,,", &cause) == 0,
	   "a list with blanks and empty entries");
	ok(trusted_proxies_contains(tp, "10.9.9.9") && trusted_proxies_contains(tp, "192.0.2.1") &&
	           trusted_proxies_contains(tp, "2001:db8::5") &&
	           !trusted_proxies_contains(tp, "192.0.2.2"),
	   "every entry is trusted, nothing else");
	trusted_proxies_destroy(tp);
	tp = NULL;
	ok(trusted_proxies_create(&tp, "10.0.0.0/8, nonsense", &cause) < 0 && !tp && cause &&
	   strstr(cause, "nonsense"), "a bad entry is refused and named");
	free(cause);
	cause = NULL;
	ok(trusted_proxies_create(&none, "", &cause) == 0 &&
	           !trusted_proxies_contains(none, "127.0.0.1"),
	   "an empty list trusts nobody");
	ok(!trusted_proxies_contains(NULL, "127.0.0.1"), "a NULL list trusts nobody");

	/* --- the client behind the proxies (real_ip_recursive) ----------------- */
	tp = proxies("127.0.0.0/8, 10.0.0.0/8");
	resolves(none, "127.0.0.1", "203.0.113.9", "127.0.0.1",
	         "untrusted peer: X-Forwarded-For is ignored");
	resolves(NULL, "192.0.2.1", "203.0.113.9", "192.0.2.1", "no proxies configured: the peer");
	resolves(tp, "192.0.2.1", "203.0.113.9", "192.0.2.1", "a peer not on the list: the peer");
	resolves(tp, "127.0.0.1", "203.0.113.9", "203.0.113.9", "trusted peer: its XFF entry");
	resolves(tp, "127.0.0.1", NULL, "127.0.0.1", "trusted peer without XFF: the peer");
	resolves(tp, "127.0.0.1", "", "127.0.0.1", "trusted peer with an empty XFF: the peer");
	resolves(tp, "127.0.0.1", "198.51.100.1, 10.0.0.5", "198.51.100.1",
	         "recursive: trusted hops are skipped");
	resolves(tp, "127.0.0.1", "6.6.6.6, 203.0.113.9, 10.0.0.5", "203.0.113.9",
	         "the rightmost untrusted entry wins over the client's claims left of it");
	resolves(tp, "127.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1",
	         "every entry trusted: the leftmost");
	resolves(tp, "127.0.0.1", "203.0.113.9, evil", "127.0.0.1",
	         "a malformed rightmost entry: the last good address (the peer)");
	resolves(tp, "127.0.0.1", "6.6.6.6, bogus, 10.0.0.5", "10.0.0.5",
	         "the walk stops at a malformed entry");
	resolves(tp, "127.0.0.1", "203.0.113.9, , ", "203.0.113.9", "empty entries are skipped");
	resolves(tp, "127.0.0.1", " \t203.0.113.9\t ", "203.0.113.9", "blanks are trimmed");
	resolves(tp, "127.0.0.1", "203.0.113.9:443", "127.0.0.1",
	         "a port makes the entry malformed");
	resolves(tp, "127.0.0.1", "::FFFF:203.0.113.9", "203.0.113.9",
	         "the result is canonical (mapped IPv6 becomes IPv4)");
	resolves(tp, "127.0.0.1", "2001:DB8:0:0::1", "2001:db8::1", "IPv6 is written canonically");
	resolves(tp, "unknown", "203.0.113.9", "unknown",
	         "a peer that is no address is kept as is");
	resolves(tp, "127.0.0.1", "203.0.113.9\r\nX-Evil: 1", "127.0.0.1",
	         "header injection is malformed");

	trusted_proxies_destroy(tp);
	trusted_proxies_destroy(none);
	trusted_proxies_destroy(NULL);
	return done_testing();
}
