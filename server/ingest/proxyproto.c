/*
 * proxyproto.c - PROXY protocol v1 and v2 headers (proxyproto.h), after
 * HAProxy's proxy-protocol.txt.
 */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#define V1_MAX 107                      /* "PROXY TCP6 ...\r\n" at its longest */
#define V2_HEAD 16

static const unsigned char v1_sig[] = "PROXY ";
static const unsigned char v2_sig[12] = "\r\n\r\n\0\r\nQUIT\n";

/* 0 if buf (len bytes) and sig agree over their common length. */
static int prefix_cmp(const unsigned char *buf, size_t len, const unsigned char *sig, size_t n)
{
	return memcmp(buf, sig, len < n ? len : n);
}

static enum proxyproto_result bad(const char **why, const char *what)
{
	*why = what;
	return PROXYPROTO_BAD;
}

/* Copies the next space-separated field of line [*pos, end) into out. */
static int next_field(const char *line, size_t end, size_t *pos, char *out, size_t size)
{
	size_t start = *pos, n;

	while (*pos < end && line[*pos] != ' ')
		(*pos)++;
	n = *pos - start;
	if (n == 0 || n >= size)
		return -1;
	memcpy(out, line + start, n);
	out[n] = '\0';
	if (*pos < end)
		(*pos)++;   /* the single space */
	return 0;
}

/* A decimal port, 0..65535, no sign, no leading zero (as the spec says). */
static int parse_port(const char *s, unsigned *port)
{
	unsigned v = 0;

	if (!*s || (s[0] == '0' && s[1]) || strlen(s) > 5)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (unsigned)(*s - '0');
	}
	if (v > 65535)
		return -1;
	*port = v;
	return 0;
}

static enum proxyproto_result parse_v1(const unsigned char *buf, size_t len,
                                       struct proxyproto_header *out, const char **why)
{
	const char *line = (const char *)buf;
	char proto[8], src[46], dst[46], sport[8], dport[8];
	size_t end, pos = sizeof v1_sig - 1, limit = len < V1_MAX ? len : V1_MAX;
	unsigned sp, dp;
	int family;

	for (end = 0; end + 1 < limit; end++)
		if (buf[end] == '\r' && buf[end + 1] == '\n')
			break;
	if (end + 1 >= limit)
		return len < V1_MAX ? PROXYPROTO_MORE
		                    : bad(why, "v1 line without CRLF in 107 bytes");
	out->version = 1;
	out->len = end + 2;
	if (memchr(buf, '\0', end))
		return bad(why, "v1 line with a NUL byte");
	if (next_field(line, end, &pos, proto, sizeof proto) < 0)
		return bad(why, "v1 without a protocol");
	if (!strcmp(proto, "UNKNOWN"))
		return PROXYPROTO_OK;   /* the rest of the line is to be ignored */
	if (!strcmp(proto, "TCP4"))
		family = AF_INET;
	else if (!strcmp(proto, "TCP6"))
		family = AF_INET6;
	else
		return bad(why, "v1 protocol is not TCP4, TCP6 or UNKNOWN");
	if (next_field(line, end, &pos, src, sizeof src) < 0 ||
	    next_field(line, end, &pos, dst, sizeof dst) < 0 ||
	    next_field(line, end, &pos, sport, sizeof sport) < 0 ||
	    next_field(line, end, &pos, dport, sizeof dport) < 0 || pos != end ||
	    line[end - 1] == ' ')
		return bad(why, "v1 line is not PROTO SRC DST SPORT DPORT");
	if (parse_port(sport, &sp) < 0 || parse_port(dport, &dp) < 0)
		return bad(why, "v1 port is not a number from 0 to 65535");
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&out->source;
		struct in_addr d;

		if (inet_pton(AF_INET, src, &sin->sin_addr) != 1 ||
		    inet_pton(AF_INET, dst, &d) != 1)
			return bad(why, "v1 TCP4 address is not IPv4");
		sin->sin_family = AF_INET;
		sin->sin_port = htons((unsigned short)sp);
		out->source_len = sizeof *sin;
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->source;
		struct in6_addr d;

		if (inet_pton(AF_INET6, src, &sin6->sin6_addr) != 1 ||
		    inet_pton(AF_INET6, dst, &d) != 1)
			return bad(why, "v1 TCP6 address is not IPv6");
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((unsigned short)sp);
		out->source_len = sizeof *sin6;
	}
	out->has_source = true;
	return PROXYPROTO_OK;
}

static enum proxyproto_result parse_v2(const unsigned char *buf, size_t len,
                                       struct proxyproto_header *out, const char **why)
{
	size_t body;
	unsigned cmd, family, transport;

	if (len < V2_HEAD)
		return PROXYPROTO_MORE;
	if ((buf[12] >> 4) != 2)
		return bad(why, "v2 header of another version");
	cmd = buf[12] & 0x0f;
	family = buf[13] >> 4;
	transport = buf[13] & 0x0f;
	body = (size_t)buf[14] << 8 | buf[15];
	if (V2_HEAD + body > PROXYPROTO_MAX)
		return bad(why, "v2 header over 1024 bytes");
	if (len < V2_HEAD + body)
		return PROXYPROTO_MORE;
	out->version = 2;
	out->len = V2_HEAD + body;
	if (cmd == 0)
		return PROXYPROTO_OK;   /* LOCAL: the proxy's own connection (a health check) */
	if (cmd != 1)
		return bad(why, "v2 command is neither LOCAL nor PROXY");
	if (family == 1 || family == 2) {
		if (transport != 1)
			return bad(why, "v2 transport is not a stream (TCP)");
	} else if (family > 3 || transport > 2) {
		return bad(why, "v2 family or transport unknown");
	}
	if (family == 1) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&out->source;

		if (body < 12)
			return bad(why, "v2 IPv4 address block too short");
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, buf + V2_HEAD, 4);
		memcpy(&sin->sin_port, buf + V2_HEAD + 8, 2);
		out->source_len = sizeof *sin;
		out->has_source = true;
	} else if (family == 2) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->source;

		if (body < 36)
			return bad(why, "v2 IPv6 address block too short");
		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, buf + V2_HEAD, 16);
		memcpy(&sin6->sin6_port, buf + V2_HEAD + 32, 2);
		out->source_len = sizeof *sin6;
		out->has_source = true;
	}
	/* UNSPEC and UNIX: no IP address to take; the peer stays the client. */
	return PROXYPROTO_OK;
}

enum proxyproto_result proxyproto_parse(const unsigned char *buf, size_t len,
                                        struct proxyproto_header *out, const char **why)
{
	memset(out, 0, sizeof *out);
	*why = NULL;
	if (len == 0)
		return PROXYPROTO_MORE;
	if (len > PROXYPROTO_MAX)
		len = PROXYPROTO_MAX;
	if (prefix_cmp(buf, len, v2_sig, sizeof v2_sig) == 0)
		return len < sizeof v2_sig ? PROXYPROTO_MORE : parse_v2(buf, len, out, why);
	if (prefix_cmp(buf, len, v1_sig, sizeof v1_sig - 1) == 0)
		return len < sizeof v1_sig - 1 ? PROXYPROTO_MORE : parse_v1(buf, len, out, why);
	return PROXYPROTO_NOT;
}
