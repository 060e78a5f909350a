/* test-proxyproto.c - PROXY protocol v1 and v2 headers. */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "tap.h"

static const unsigned char SIG[12] = "\r\n\r\n\0\r\nQUIT\n";

/* The source address of h as "ADDR port", or "-" without one. */
static const char *source(const struct proxyproto_header *h)
{
	static char out[80];
	char addr[INET6_ADDRSTRLEN] = "?";

	if (!h->has_source)
		return "-";
	if (h->source.ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&h->source;
		inet_ntop(AF_INET, &s->sin_addr, addr, sizeof addr);
		snprintf(out, sizeof out, "%s %u", addr, ntohs(s->sin_port));
	} else {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&h->source;
		inet_ntop(AF_INET6, &s->sin6_addr, addr, sizeof addr);
		snprintf(out, sizeof out, "%s %u", addr, ntohs(s->sin6_port));
	}
	return out;
}

static enum proxyproto_result parse(const void *buf, size_t len, struct proxyproto_header *h)
{
	const char *why;
	enum proxyproto_result r = proxyproto_parse(buf, len, h, &why);

	ok(r != PROXYPROTO_BAD || why, "a refusal says why (%s)", why ? why : "-");
	return r;
}

static void v1_ok(const char *line, const char *want, const char *what)
{
	struct proxyproto_header h;
	char buf[256];

	/* The header, then the client's own bytes (a TLS record): not taken. */
	snprintf(buf, sizeof buf, "%s\x16\x03\x01", line);
	is_int(parse(buf, strlen(buf), &h), PROXYPROTO_OK, "%s: parsed", what);
	is_int((int)h.len, (int)strlen(line), "%s: the header's length only", what);
	is_str(source(&h), want, "%s: source", what);
	/* Every shorter prefix asks for more. */
	for (size_t n = 0; n < strlen(line); n++)
		if (parse(line, n, &h) != PROXYPROTO_MORE) {
			ok(0, "%s: a prefix of %zu bytes asks for more", what, n);
			return;
		}
	ok(1, "%s: every prefix asks for more", what);
}

static void v1_bad(const char *line, const char *what)
{
	struct proxyproto_header h;

	is_int(parse(line, strlen(line), &h), PROXYPROTO_BAD, "v1 refused: %s", what);
}

/* A v2 header: ver_cmd, fam, then body. */
static size_t v2(unsigned char *out, unsigned ver_cmd, unsigned fam, const void *body, size_t n)
{
	memcpy(out, SIG, 12);
	out[12] = (unsigned char)ver_cmd;
	out[13] = (unsigned char)fam;
	out[14] = (unsigned char)(n >> 8);
	out[15] = (unsigned char)n;
	memcpy(out + 16, body, n);
	return 16 + n;
}

int main(void)
{
	struct proxyproto_header h;
	unsigned char buf[2048], body[1100];
	size_t n;

	/* Not a PROXY header: a TLS ClientHello, or anything else. */
	is_int(parse("\x16\x03\x01\x02\x00", 5, &h), PROXYPROTO_NOT, "a TLS record is not PROXY");
	is_int(parse("GET / HTTP/1.1\r\n", 16, &h), PROXYPROTO_NOT, "plain HTTP is not PROXY");
	is_int(parse("PROXZ", 5, &h), PROXYPROTO_NOT, "PROXZ is not PROXY");
	is_int(parse("", 0, &h), PROXYPROTO_MORE, "nothing yet: more");
	is_int(parse("\r\n\r\n\0\r\nQUI", 10, &h), PROXYPROTO_MORE, "a v2 signature in part: more");

	/* v1 */
	v1_ok("PROXY TCP4 203.0.113.7 192.0.2.10 56324 8443\r\n", "203.0.113.7 56324", "TCP4");
	v1_ok("PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n", "2001:db8::7 1", "TCP6");
	v1_ok("PROXY UNKNOWN\r\n", "-", "UNKNOWN");
	v1_ok("PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n", "-", "UNKNOWN with junk");
	v1_ok("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	      "65535 65535\r\n",
	      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535", "the longest line (104 bytes)");
	v1_bad("PROXY TCP4 203.0.113.7 192.0.2.10 56324\r\n", "a port missing");
	v1_bad("PROXY TCP4 203.0.113.7 192.0.2.10 56324 8443 9\r\n", "a field too many");
	v1_bad("PROXY TCP4 203.0.113.7  192.0.2.10 56324 8443\r\n", "two spaces");
	v1_bad("PROXY TCP4 203.0.113.7 192.0.2.10 56324 8443 \r\n", "a trailing space");
	v1_bad("PROXY TCP4 2001:db8::7 192.0.2.10 1 2\r\n", "IPv6 in TCP4");
	v1_bad("PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n", "IPv4 in TCP6");
	v1_bad("PROXY TCP4 203.0.113.7 192.0.2.10 65536 1\r\n", "port 65536");
	v1_bad("PROXY TCP4 203.0.113.7 192.0.2.10 080 1\r\n", "a leading zero");
	v1_bad("PROXY TCP4 203.0.113.7 192.0.2.10 -1 1\r\n", "a sign");
	v1_bad("PROXY TCP4 203.0.113.256 192.0.2.10 1 1\r\n", "octet 256");
	v1_bad("PROXY UDP4 203.0.113.7 192.0.2.10 1 1\r\n", "UDP4");
	v1_bad("PROXY \r\n", "no protocol");
	is_int(parse("PROXY TCP4 203.0.113.7\0 192.0.2.10 1 1\r\n", 40, &h), PROXYPROTO_BAD,
	       "v1 refused: a NUL");
	memset(buf, 'x', 200);
	memcpy(buf, "PROXY UNKNOWN ", 14);
	is_int(parse(buf, 107, &h), PROXYPROTO_BAD, "107 bytes without CRLF: refused");
	is_int(parse(buf, 106, &h), PROXYPROTO_MORE, "106 bytes without CRLF: more");
	memcpy(buf + 105, "\r\n", 2);
	is_int(parse(buf, 107, &h), PROXYPROTO_OK, "a 107-byte UNKNOWN line is accepted");
	memcpy(buf + 105, "xx\r\n", 4);
	is_int(parse(buf, 109, &h), PROXYPROTO_BAD, "a 109-byte line is refused");

	/* v2 */
	memcpy(body, "\xcb\x00\x71\x07" "\xc0\x00\x02\x0a" "\xdc\x04" "\x20\xfb", 12);
	n = v2(buf, 0x21, 0x11, body, 12);
	buf[n] = 0x16;
	is_int(parse(buf, n + 1, &h), PROXYPROTO_OK, "v2 PROXY TCP4");
	is_int((int)h.len, 28, "v2: 16 + 12 bytes");
	is_str(source(&h), "203.0.113.7 56324", "v2 TCP4 source");
	is_int(h.version, 2, "version 2");
	for (size_t i = 0; i < n; i++)
		if (parse(buf, i, &h) != PROXYPROTO_MORE) {
			ok(0, "v2: a prefix of %zu bytes asks for more", i);
			break;
		}
	/* TLVs after the addresses (HAProxy may add some) are skipped over. */
	memcpy(body + 12, "\x04\x00\x03" "abc", 6);
	n = v2(buf, 0x21, 0x11, body, 18);
	is_int(parse(buf, n, &h), PROXYPROTO_OK, "v2 TCP4 with a TLV");
	is_int((int)h.len, 34, "whose length counts the TLV");
	memset(body, 0, 36);
	inet_pton(AF_INET6, "2001:db8::7", body);
	inet_pton(AF_INET6, "2001:db8::1", body + 16);
	memcpy(body + 32, "\x01\xbb\x20\xfb", 4);
	n = v2(buf, 0x21, 0x21, body, 36);
	is_int(parse(buf, n, &h), PROXYPROTO_OK, "v2 PROXY TCP6");
	is_str(source(&h), "2001:db8::7 443", "v2 TCP6 source");
	n = v2(buf, 0x20, 0x00, body, 0);
	is_int(parse(buf, n, &h), PROXYPROTO_OK, "v2 LOCAL (a health check)");
	ok(!h.has_source && h.len == 16, "LOCAL keeps the peer");
	n = v2(buf, 0x21, 0x31, body, 216);
	is_int(parse(buf, n, &h), PROXYPROTO_OK, "v2 UNIX: accepted");
	ok(!h.has_source, "without an IP source");
	n = v2(buf, 0x21, 0x00, body, 0);
	is_int(parse(buf, n, &h), PROXYPROTO_OK, "v2 PROXY UNSPEC: accepted, no source");
	n = v2(buf, 0x11, 0x11, body, 12);
	is_int(parse(buf, n, &h), PROXYPROTO_BAD, "v2 signature, version 1: refused");
	n = v2(buf, 0x22, 0x11, body, 12);
	is_int(parse(buf, n, &h), PROXYPROTO_BAD, "command 2: refused");
	n = v2(buf, 0x21, 0x12, body, 12);
	is_int(parse(buf, n, &h), PROXYPROTO_BAD, "UDP over IPv4: refused");
	n = v2(buf, 0x21, 0x11, body, 11);
	is_int(parse(buf, n, &h), PROXYPROTO_BAD, "an IPv4 block of 11 bytes: refused");
	n = v2(buf, 0x21, 0x21, body, 35);
	is_int(parse(buf, n, &h), PROXYPROTO_BAD, "an IPv6 block of 35 bytes: refused");
	n = v2(buf, 0x21, 0x41, body, 12);
	is_int(parse(buf, n, &h), PROXYPROTO_BAD, "family 4: refused");
	memset(body, 0, sizeof body);
	n = v2(buf, 0x21, 0x11, body, PROXYPROTO_MAX - 16);
	is_int(parse(buf, n, &h), PROXYPROTO_OK, "a v2 header of exactly %d bytes", PROXYPROTO_MAX);
	n = v2(buf, 0x21, 0x11, body, PROXYPROTO_MAX - 15);
	is_int(parse(buf, 16, &h), PROXYPROTO_BAD,
	       "one byte longer is refused from its first 16 bytes");
	buf[14] = buf[15] = 0xff;
	is_int(parse(buf, 16, &h), PROXYPROTO_BAD, "a length of 65535 is refused at once");
	return done_testing();
}
