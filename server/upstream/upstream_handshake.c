/*
 * upstream_handshake.c - the upgrade request to the backend and the check
 * of its answer (RFC 6455 sections 4.1 and 4.2.2), free of I/O.
 *
 * The request carries bytes the SDK chose (its query, User-Agent, Origin)
 * into a request line and header values: a CR or LF there would let a
 * browser write headers or whole requests of its own to the backend, so
 * anything that cannot stand where it goes is refused, never escaped.
 */
#include "upstream_handshake.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "ws_handshake.h"

/* A byte of a request target: visible ASCII (RFC 3986 needs no more; a
 * browser percent-encodes the rest), never the fragment mark. */
static bool target_ok(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p <= 0x20 || *p >= 0x7f || *p == '#')
			return false;
	return true;
}

/* A header value (RFC 9110 field-value): visible ASCII, space, tab and
 * obs-text; no CR, LF, NUL or other control byte. */
static bool value_ok(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			return false;
	return true;
}

char *uphs_build_request(const struct uphs_request *r, size_t *len, const char **why)
{
	bool has_query = r->query && *r->query;
	char accept[29];
	char *out = NULL;
	int n;

	*why = NULL;
	if (!r->host || !*r->host || !target_ok(r->host) || strpbrk(r->host, "/?@"))
		*why = "upstream host is not a host name";
	else if (!r->path || r->path[0] != '/' || !target_ok(r->path) || strchr(r->path, '?'))
		*why = "upstream path must start with '/' and hold only visible ASCII";
	else if (has_query && !target_ok(r->query))
		*why = "query holds a byte that cannot stand in a request line";
	else if (!r->key || uphs_accept_for(r->key, accept) < 0)
		*why = "Sec-WebSocket-Key must be base64 of 16 bytes";
	else if (r->user_agent && !value_ok(r->user_agent))
		*why = "User-Agent holds a control byte";
	else if (r->origin && !value_ok(r->origin))
		*why = "Origin holds a control byte";
	else if (r->xff && !value_ok(r->xff))
		*why = "X-Forwarded-For holds a control byte";
	if (*why)
		return NULL;
	n = asprintf(&out,
	             "GET %s%s%s HTTP/1.1\r\n"
	             "Host: %s\r\n"
	             "Upgrade: websocket\r\n"
	             "Connection: Upgrade\r\n"
	             "Sec-WebSocket-Key: %s\r\n"
	             "Sec-WebSocket-Version: 13\r\n"
	             "Sec-WebSocket-Protocol: 2.0\r\n"
	             "%s%s%s"
	             "%s%s%s"
	             "%s%s%s"
	             "X-Forwarded-Proto: https\r\n"
	             "\r\n",
	             r->path, has_query ? "?" : "", has_query ? r->query : "", r->host, r->key,
	             r->user_agent ? "User-Agent: " : "", r->user_agent ? r->user_agent : "",
	             r->user_agent ? "\r\n" : "", r->origin ? "Origin: " : "",
	             r->origin ? r->origin : "", r->origin ? "\r\n" : "",
	             r->xff ? "X-Forwarded-For: " : "", r->xff ? r->xff : "", r->xff ? "\r\n" : "");
	if (n < 0) {
		*why = "out of memory";
		return NULL;
	}
	*len = (size_t)n;
	return out;
}

int uphs_accept_for(const char *key, char accept[29])
{
	/* ws_handshake_check computes the accept key the server side sends;
	 * it needs a request that is otherwise valid. */
	struct ws_upgrade_req req = {
		.method = "GET", .upgrade = "websocket", .connection = "Upgrade",
		.version = "13", .key = key,
	};
	bool proto20;

	if (strlen(key) != 24 || ws_handshake_check(&req, accept, &proto20))
		return -1;
	return 0;
}

/* --- the answer ------------------------------------------------------------ */

static bool is_ows(char c)
{
	return c == ' ' || c == '\t';
}

static bool is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* True if the comma-separated [v, e) holds token (case-insensitive). */
static bool has_token(const char *v, const char *e, const char *token)
{
	size_t tlen = strlen(token);

	while (v < e) {
		const char *s, *t;

		while (v < e && (is_ows(*v) || *v == ','))
			v++;
		s = v;
		while (v < e && *v != ',')
			v++;
		t = v;
		while (t > s && is_ows(t[-1]))
			t--;
		if ((size_t)(t - s) == tlen && !strncasecmp(s, token, tlen))
			return true;
	}
	return false;
}

static bool value_is(const char *v, const char *e, const char *want)
{
	size_t n = strlen(want);

	return (size_t)(e - v) == n && !memcmp(v, want, n);
}

/* delta-seconds, or an HTTP date relative to now; -1 if neither. */
static int parse_retry_after(const char *v, const char *e)
{
	char buf[64];
	size_t n = (size_t)(e - v), digits;

	if (!n || n >= sizeof buf)
		return -1;
	memcpy(buf, v, n);
	buf[n] = '\0';
	digits = strspn(buf, "0123456789");
	if (digits == n)
		return digits > 9 ? INT_MAX : atoi(buf);
	time_t when = curl_getdate(buf, NULL);
	time_t now = time(NULL);

	if (when == (time_t)-1)
		return -1;
	return when > now ? (when - now > INT_MAX ? INT_MAX : (int)(when - now)) : 0;
}

static enum uphs_status bad(struct uphs_response *out, const char *why)
{
	out->why = why;
	return UPHS_BAD;
}

enum uphs_status uphs_parse_response(const char *buf, size_t len, const char *accept,
                                     struct uphs_response *out)
{
	size_t max = len < UPHS_MAX_RESPONSE_HEAD ? len : UPHS_MAX_RESPONSE_HEAD;
	const char *end = NULL, *p, *eol;
	bool upgrade = false, connection = false, proto = false, accepted = false;
	int naccept = 0, nproto = 0;

	memset(out, 0, sizeof *out);
	out->retry_after_s = -1;
	for (size_t i = 0; i + 3 < max; i++) {
		if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' &&
		    buf[i + 3] == '\n') {
			end = buf + i + 2;   /* the blank line's start */
			out->head_len = i + 4;
			break;
		}
	}
	if (!end)
		return len >= UPHS_MAX_RESPONSE_HEAD ? bad(out, "answer head too long")
		                                     : UPHS_NEED_MORE;

	/* Status line: HTTP/1.x SP 3DIGIT [SP reason] */
	p = buf;
	eol = memchr(p, '\r', (size_t)(end - p));
	if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) || (p[7] != '0' && p[7] != '1') ||
	    p[8] != ' ' || p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' ||
	    p[11] < '0' || p[11] > '9' || (eol - p > 12 && p[12] != ' '))
		return bad(out, "not an HTTP/1.x status line");
	out->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
	for (const char *q = p; q < eol; q++)
		if ((unsigned char)*q < 0x20 && *q != '\t')
			return bad(out, "control byte in the status line");

	for (p = eol + 2; p < end; p = eol + 2) {
		const char *colon, *v, *ve;

		eol = memchr(p, '\r', (size_t)(end - p));
		if (!eol || eol[1] != '\n')
			return bad(out, "bare CR in the answer head");
		for (colon = p; colon < eol && is_tchar((unsigned char)*colon); colon++)
			;
		if (colon == p || colon == eol || *colon != ':')
			return bad(out, "malformed header line");
		for (v = colon + 1; v < eol && is_ows(*v); v++)
			;
		for (ve = eol; ve > v && is_ows(ve[-1]); ve--)
			;
		for (const char *q = v; q < ve; q++)
			if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
				return bad(out, "control byte in a header value");
#define NAME_IS(n) ((size_t)(colon - p) == sizeof(n) - 1 && !strncasecmp(p, n, sizeof(n) - 1))
		if (NAME_IS("Retry-After")) {
			out->retry_after_s = parse_retry_after(v, ve);
		} else if (NAME_IS("Upgrade")) {
			upgrade = upgrade || has_token(v, ve, "websocket");
		} else if (NAME_IS("Connection")) {
			connection = connection || has_token(v, ve, "upgrade");
		} else if (NAME_IS("Sec-WebSocket-Accept")) {
			naccept++;
			accepted = value_is(v, ve, accept);
		} else if (NAME_IS("Sec-WebSocket-Protocol")) {
			nproto++;
			proto = value_is(v, ve, "2.0");
		} else if (NAME_IS("Sec-WebSocket-Extensions")) {
			if (out->status == 101)
				return bad(out, "an extension we did not offer");
		}
#undef NAME_IS
	}
	if (out->status != 101)
		return UPHS_REFUSED;
	if (!upgrade || !connection)
		return bad(out, "101 without Upgrade: websocket and Connection: upgrade");
	if (naccept != 1 || !accepted)
		return bad(out, "wrong Sec-WebSocket-Accept");
	if (nproto != 1 || !proto)
		return bad(out, "subprotocol 2.0 not echoed");
	return UPHS_UPGRADED;
}
