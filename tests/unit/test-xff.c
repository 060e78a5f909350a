/* test-xff.c - X-Forwarded-For parsing and the chain we send upstream. */
#include "xff.h"

#include "tap.h"

static void chain(const char *incoming, const char *peer, const char *want, const char *what)
{
	char *got = xff_forward_chain(incoming, peer);

	is_str(got, want, "%s", what);
	free(got);
}

int main(void)
{
	/* xff_is_ip */
	ok(xff_is_ip("192.0.2.1"), "IPv4");
	ok(xff_is_ip("::1"), "IPv6 loopback");
	ok(xff_is_ip("2001:db8::8a2e:370:7334"), "IPv6");
	ok(xff_is_ip("::ffff:192.0.2.1"), "IPv4-mapped IPv6");
	ok(xff_is_ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"), "longest IPv6 form");
	ok(!xff_is_ip(NULL), "NULL is not an IP");
	ok(!xff_is_ip(""), "empty is not an IP");
	ok(!xff_is_ip("unknown"), "unknown");
	ok(!xff_is_ip("example.com"), "a hostname");
	ok(!xff_is_ip("192.0.2.1:8080"), "IPv4 with a port");
	ok(!xff_is_ip("[::1]"), "bracketed IPv6");
	ok(!xff_is_ip("[::1]:443"), "bracketed IPv6 with a port");
	ok(!xff_is_ip("256.0.0.1"), "octet out of range");
	ok(!xff_is_ip("1.2.3"), "three octets");
	ok(!xff_is_ip(" 192.0.2.1"), "leading space");
	ok(!xff_is_ip("192.0.2.1\n"), "trailing newline");
	ok(!xff_is_ip("::1::2"), "two '::'");
	ok(!xff_is_ip("0000:0000:0000:0000:0000:0000:0000:0000:0000"), "nine IPv6 groups");
	ok(!xff_is_ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.2555"),
	   "the longest form plus one digit");

	/* nginx's $proxy_add_x_forwarded_for: incoming, then the peer. */
	chain(NULL, "192.0.2.1", "192.0.2.1", "no header: just the peer");
	chain("", "192.0.2.1", "192.0.2.1", "empty header: just the peer");
	chain("203.0.113.7", "192.0.2.1", "203.0.113.7, 192.0.2.1", "one hop");
	chain("203.0.113.7, 198.51.100.2", "192.0.2.1",
	      "203.0.113.7, 198.51.100.2, 192.0.2.1", "two hops");
	chain("203.0.113.7,198.51.100.2", "::1",
	      "203.0.113.7, 198.51.100.2, ::1", "no space after ',' is normalised");
	chain("  203.0.113.7 \t,\t2001:db8::1  ", "192.0.2.1",
	      "203.0.113.7, 2001:db8::1, 192.0.2.1", "spaces and tabs are trimmed");

	/* Malformed entries are dropped, never forwarded. */
	chain("unknown, 203.0.113.7", "192.0.2.1", "203.0.113.7, 192.0.2.1", "unknown dropped");
	chain("evil.example, 203.0.113.7:80, [2001:db8::1]", "192.0.2.1", "192.0.2.1",
	      "hostname, port and brackets dropped");
	chain("203.0.113.7\r\nX-Evil: 1", "192.0.2.1", "192.0.2.1", "header injection dropped");
	chain(",,, ,", "192.0.2.1", "192.0.2.1", "empty entries dropped");
	chain("1.2.3.4 5.6.7.8", "192.0.2.1", "192.0.2.1", "two addresses without ','");

	/* A missing or bad peer adds nothing. */
	chain("203.0.113.7", NULL, "203.0.113.7", "NULL peer");
	chain("203.0.113.7", "not-an-ip", "203.0.113.7", "bad peer");
	chain(NULL, NULL, "", "nothing at all is the empty string");
	chain("garbage", "also garbage", "", "only garbage is the empty string");

	/* At most 32 incoming entries: the rightmost (nearest) ones. */
	{
		char in[64 * 16] = "", want[64 * 16] = "", entry[32];
		for (int i = 1; i <= 40; i++) {
			snprintf(entry, sizeof entry, "%s10.0.0.%d", i > 1 ? "," : "", i);
			strcat(in, entry);
			if (i > 8) {
				snprintf(entry, sizeof entry, "%s10.0.0.%d", i > 9 ? ", " : "", i);
				strcat(want, entry);
			}
		}
		strcat(want, ", 192.0.2.1");
		chain(in, "192.0.2.1", want, "40 hops: the last 32 are kept, then the peer");

		in[0] = want[0] = '\0';
		for (int i = 1; i <= 32; i++) {
			snprintf(entry, sizeof entry, "%s10.0.0.%d", i > 1 ? ", " : "", i);
			strcat(in, entry);
		}
		chain(in, NULL, in, "exactly 32 hops are all kept");
	}
	{
		/* Garbage between good entries does not count towards the cap. */
		char in[8192] = "";
		for (int i = 0; i < 200; i++)
			strcat(in, "junk,");
		strcat(in, "203.0.113.7");
		chain(in, "192.0.2.1", "203.0.113.7, 192.0.2.1", "200 bad entries then one good");
	}
	return done_testing();
}
