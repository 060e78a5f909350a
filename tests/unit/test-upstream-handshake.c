/*
 * test-upstream-handshake.c - the upgrade request the relay writes to the
 * backend (nothing an attacker puts in the SDK's query, User-Agent or
 * Origin reaches it as a line break or control byte) and the checks of the
 * backend's answer.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "upstream_handshake.h"

/* RFC 6455 section 1.3's sample key and accept. */
#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static struct uphs_request base(void)
{
	return (struct uphs_request){
		.host = "backend.example:8443", .path = "/", .key = KEY,
		.query = "apiKey=k%3A1&timestamp=1&apiVersion=v1&sessionId=s-1&newConnection=true",
		.user_agent = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120",
		.origin = "https://app.example", .xff = "203.0.113.7, 10.0.0.2",
	};
}

static void test_request(void)
{
	struct uphs_request r = base();
	const char *why = NULL;
	size_t len = 0;
	char *req = uphs_build_request(&r, &len, &why);
	char accept[29];

	ok(req, "a clean request is built");
	if (!req)
		return;
	is_int(len, strlen(req), "its length");
	{
		static const char line[] =
			"GET /?apiKey=k%3A1&timestamp=1&apiVersion=v1&sessionId=s-1"
			"&newConnection=true HTTP/1.1\r\n";

		ok(!strncmp(req, line, sizeof line - 1),
		   "the request line carries the query byte for byte");
	}
	ok(strstr(req, "\r\nHost: backend.example:8443\r\n"), "Host");
	ok(strstr(req, "\r\nSec-WebSocket-Protocol: 2.0\r\n"), "subprotocol 2.0");
	ok(strstr(req, "\r\nSec-WebSocket-Key: " KEY "\r\n"), "the key");
	ok(strstr(req, "\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120\r\n"),
	   "User-Agent");
	ok(strstr(req, "\r\nOrigin: https://app.example\r\n"), "Origin");
	ok(strstr(req, "\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.2\r\n"), "X-Forwarded-For");
	ok(strstr(req, "\r\nX-Forwarded-Proto: https\r\n\r\n"), "X-Forwarded-Proto, then the end");
	free(req);

	r.user_agent = r.origin = r.xff = NULL;
	r.query = NULL;
	r.path = "/ws/in";
	req = uphs_build_request(&r, &len, &why);
	ok(req && !strncmp(req, "GET /ws/in HTTP/1.1\r\n", 21), "no query: no '?'");
	ok(req && !strstr(req, "User-Agent") && !strstr(req, "Origin") &&
	           !strstr(req, "X-Forwarded-For:"),
	   "absent headers are left out");
	free(req);

	ok(uphs_accept_for(KEY, accept) == 0, "accept computed");
	is_str(accept, ACCEPT, "the RFC's accept value");
	ok(uphs_accept_for("short", accept) < 0, "a key that is not 16 bytes is refused");
}

/* Each attack in one field must be refused with a reason, nothing built. */
static void test_injection(void)
{
	static const char *const queries[] = {
		"a=1\r\nX-Evil: 1", "a=1\nb", "a=1\rb", "a=1 HTTP/1.1", "a=1\tb", "a=\x01",
		"a=\x7f", "a=\xc3\xa9", "a=1#frag", "a=1\r\n\r\nGET / HTTP/1.1",
	};
	static const char *const values[] = {
		"x\r\nX-Evil: 1",     "x\ny", "x\rY", "x\x01", "x\x1b[31m", "x\x7f",
		"\r\n\r\nGET /admin",
	};
	static const char *const paths[] = { "", "x", "/a b", "/a\r\n", "/a?b", "/#" };
	char q[64];

	for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++) {
		struct uphs_request r = base();
		const char *why = NULL;
		size_t len;
		char *req;

		r.query = queries[i];
		req = uphs_build_request(&r, &len, &why);
		ok(!req && why, "query attack %zu refused (%s)", i, why ? why : "-");
		free(req);
	}
	for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
		for (int field = 0; field < 3; field++) {
			struct uphs_request r = base();
			const char *why = NULL;
			size_t len;
			char *req;

			if (field == 0)
				r.user_agent = values[i];
			else if (field == 1)
				r.origin = values[i];
			else
				r.xff = values[i];
			req = uphs_build_request(&r, &len, &why);
			ok(!req && why, "header attack %zu in field %d refused (%s)", i, field,
			   why ? why : "-");
			free(req);
		}
	}
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		struct uphs_request r = base();
		const char *why = NULL;
		size_t len;
		char *req;

		r.path = paths[i];
		req = uphs_build_request(&r, &len, &why);
		ok(!req && why, "path %zu refused", i);
		free(req);
	}
	/* Every control byte, one at a time, in the query. */
	for (int b = 1; b < 0x21; b++) {
		struct uphs_request r = base();
		const char *why = NULL;
		size_t len;
		char *req;

		snprintf(q, sizeof q, "a=%c", b);
		r.query = q;
		req = uphs_build_request(&r, &len, &why);
		if (req) {
			ok(0, "byte 0x%02x in the query refused", b);
			free(req);
			return;
		}
	}
	ok(1, "bytes 0x01-0x20 in the query all refused");
	/* Tab and obs-text are fine in a header value (RFC 9110). */
	{
		struct uphs_request r = base();
		const char *why = NULL;
		size_t len;
		char *req;

		r.user_agent = "a\tb \xc3\xa9";
		req = uphs_build_request(&r, &len, &why);
		ok(req, "tab and obs-text in a header value pass");
		free(req);
	}
}

static enum uphs_status parse(const char *s, struct uphs_response *out)
{
	return uphs_parse_response(s, strlen(s), ACCEPT, out);
}

static void test_response(void)
{
	struct uphs_response r;
	char big[UPHS_MAX_RESPONSE_HEAD + 16];
	const char *ok101 = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
	                    "Connection: Upgrade\r\nSec-WebSocket-Accept: " ACCEPT "\r\n"
	                    "Sec-WebSocket-Protocol: 2.0\r\n\r\n";

	is_int(parse(ok101, &r), UPHS_UPGRADED, "a correct 101");
	is_int(r.head_len, strlen(ok101), "head length");
	is_int(uphs_parse_response(ok101, strlen(ok101) - 1, ACCEPT, &r), UPHS_NEED_MORE,
	       "incomplete head: need more");
	{
		char with_frame[512];

		snprintf(with_frame, sizeof with_frame, "%s\x81\x02{}", ok101);
		is_int(parse(with_frame, &r), UPHS_UPGRADED, "a frame right behind the head");
		is_int(r.head_len, strlen(ok101), "which is not part of the head");
	}
	is_int(parse("HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n"
	             "sec-websocket-accept:  " ACCEPT " \r\nsec-websocket-protocol: 2.0\r\n\r\n",
	             &r),
	       UPHS_UPGRADED, "header names and tokens in any case, values trimmed");
	is_int(parse("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	             "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n"
	             "Sec-WebSocket-Protocol: 2.0\r\n\r\n", &r), UPHS_BAD, "wrong accept: bad");
	is_int(parse("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	             "Sec-WebSocket-Accept: " ACCEPT "\r\n\r\n", &r), UPHS_BAD,
	       "no subprotocol echoed: bad");
	is_int(parse("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	             "Sec-WebSocket-Accept: " ACCEPT "\r\nSec-WebSocket-Protocol: 1.0\r\n\r\n", &r),
	       UPHS_BAD, "another subprotocol: bad");
	is_int(parse("HTTP/1.1 101 OK\r\nConnection: Upgrade\r\n"
	             "Sec-WebSocket-Accept: " ACCEPT "\r\nSec-WebSocket-Protocol: 2.0\r\n\r\n", &r),
	       UPHS_BAD, "no Upgrade header: bad");
	is_int(parse("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	             "Sec-WebSocket-Accept: " ACCEPT "\r\nSec-WebSocket-Protocol: 2.0\r\n"
	             "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n", &r),
	       UPHS_BAD, "an extension not offered: bad");
	is_int(parse("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
	             &r),
	       UPHS_REFUSED, "503 refused");
	is_int(r.status, 503, "its status");
	is_int(r.retry_after_s, 7, "its Retry-After");
	is_int(parse("HTTP/1.1 401 Unauthorized\r\n\r\n", &r), UPHS_REFUSED, "401 refused");
	is_int(r.retry_after_s, -1, "no Retry-After: -1");
	is_int(parse("HTTP/1.1 429 Too Many\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
	             &r),
	       UPHS_REFUSED, "429 with a date in the past");
	is_int(r.retry_after_s, 0, "a past date: 0");
	is_int(parse("HTTP/1.1 429 X\r\nRetry-After: soon\r\n\r\n", &r), UPHS_REFUSED,
	       "unparsable Retry-After");
	is_int(r.retry_after_s, -1, "is ignored");
	is_int(parse("HTTP/1.1 429 X\r\nRetry-After: 99999999999\r\n\r\n", &r), UPHS_REFUSED,
	       "huge");
	ok(r.retry_after_s > 0, "a huge Retry-After saturates");
	is_int(parse("SSH-2.0-OpenSSH\r\n\r\n", &r), UPHS_BAD, "not HTTP");
	is_int(parse("HTTP/1.1 99 X\r\n\r\n", &r), UPHS_BAD, "a two-digit status");
	is_int(parse("HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", &r), UPHS_BAD,
	       "a line without colon");
	is_int(parse("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", &r), UPHS_BAD, "a bare CR");
	is_int(parse("HTTP/1.1 200 OK\r\nX: a\nb: c\r\n\r\n", &r), UPHS_BAD, "a bare LF");
	is_int(parse("HTTP/1.1 200 OK\r\n folded\r\n\r\n", &r), UPHS_BAD, "obs-fold");
	memset(big, 'a', sizeof big);
	memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
	is_int(uphs_parse_response(big, sizeof big, ACCEPT, &r), UPHS_BAD, "a head over the limit");
	is_int(uphs_parse_response(big, UPHS_MAX_RESPONSE_HEAD - 1, ACCEPT, &r), UPHS_NEED_MORE,
	       "just under the limit: need more");
}

int main(void)
{
	test_request();
	test_injection();
	test_response();
	return done_testing();
}
