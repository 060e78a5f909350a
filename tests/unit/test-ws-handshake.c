/*
 * test-ws-handshake.c - ws_handshake_check against RFC 6455's sample and the
 * captured Chrome handshake in tests/fixtures/watchrtc-sdk/handshake/.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tap.h"
#include "ws_handshake.h"

#define MAX_FIXTURE 8192

/* Reads a fixture file below $TESTS_SRCDIR (default "tests") into buf. */
static bool read_fixture(const char *rel, char *buf, size_t size)
{
	const char *dir = getenv("TESTS_SRCDIR");
	char path[1024];
	FILE *f;
	size_t n;

	snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "tests", rel);
	f = fopen(path, "rb");
	if (!f) {
		diag("cannot open %s", path);
		return false;
	}
	n = fread(buf, 1, size - 1, f);
	fclose(f);
	buf[n] = '\0';
	return n > 0;
}

/*
 * Finds header name (case-insensitive) in an HTTP head with CRLF lines and
 * copies its value into out.  Returns out, or NULL if absent.
 */
static const char *http_header(const char *head, const char *name, char *out, size_t size)
{
	size_t nlen = strlen(name);

	for (const char *line = strstr(head, "\r\n"); line && line[2];
	     line = strstr(line + 2, "\r\n")) {
		const char *p = line + 2, *end = strstr(p, "\r\n");
		size_t vlen;

		if (!end || end == p)
			break;
		if (strncasecmp(p, name, nlen) || p[nlen] != ':')
			continue;
		p += nlen + 1;
		while (*p == ' ')
			p++;
		vlen = (size_t)(end - p);
		if (vlen >= size)
			return NULL;
		memcpy(out, p, vlen);
		out[vlen] = '\0';
		return out;
	}
	return NULL;
}

static struct ws_upgrade_req good_req(void)
{
	return (struct ws_upgrade_req){
		.method = "GET", .upgrade = "websocket", .connection = "Upgrade",
		.version = "13", .key = "dGhlIHNhbXBsZSBub25jZQ==", .protocol = "2.0",
	};
}

static void test_rfc_sample(void)
{
	struct ws_upgrade_req r = good_req();
	char accept[29];
	bool p20 = false;

	is_str(ws_handshake_check(&r, accept, &p20), NULL, "RFC 6455 sample request is valid");
	is_str(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 sample accept value");
	ok(p20, "2.0 offered: proto20 set");
}

static void test_captured_chrome(void)
{
	char req[MAX_FIXTURE], resp[MAX_FIXTURE];
	char method[8] = "", upgrade[64], connection[128], version[16], key[64], proto[64];
	char want_accept[64], accept[29];
	struct ws_upgrade_req r;
	bool p20 = false;

	if (!read_fixture("fixtures/watchrtc-sdk/handshake/upgrade-request.http", req,
	                  sizeof req) ||
	    !read_fixture("fixtures/watchrtc-sdk/handshake/upgrade-response.http", resp,
	                  sizeof resp)) {
		ok(0, "captured handshake fixtures readable");
		return;
	}
	sscanf(req, "%7s ", method);
	r = (struct ws_upgrade_req){
		.method = method,
		.upgrade = http_header(req, "Upgrade", upgrade, sizeof upgrade),
		.connection = http_header(req, "Connection", connection, sizeof connection),
		.version = http_header(req, "Sec-WebSocket-Version", version, sizeof version),
		.key = http_header(req, "Sec-WebSocket-Key", key, sizeof key),
		.protocol = http_header(req, "Sec-WebSocket-Protocol", proto, sizeof proto),
	};
	ok(ws_handshake_is_upgrade(&r), "captured Chrome request is an upgrade");
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "captured Chrome request is valid");
	is_str(accept, http_header(resp, "Sec-WebSocket-Accept", want_accept, sizeof want_accept),
	       "accept matches the 101 that Chrome accepted");
	ok(p20, "Chrome offers subprotocol 2.0");

	read_fixture("fixtures/watchrtc-sdk/handshake/upgrade-request-reconnect.http", req,
	             sizeof req);
	r.key = http_header(req, "Sec-WebSocket-Key", key, sizeof key);
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "reconnect request is valid");
	ok(strcmp(accept, want_accept) != 0, "a new key gives a new accept value");
}

static void test_tokens(void)
{
	struct ws_upgrade_req r = good_req();
	char accept[29];
	bool p20;

	r.connection = "keep-alive, Upgrade";
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "Connection: keep-alive, Upgrade");
	r.connection = "keep-alive,upgrade ";
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "tokens without spaces, lower case");
	r.connection = "UPGRADE";
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "tokens are case-insensitive");
	r.connection = "keep-alive";
	ok(ws_handshake_check(&r, accept, &p20), "Connection without Upgrade refused");
	r.connection = "upgraded";
	ok(ws_handshake_check(&r, accept, &p20), "a token that only starts with upgrade");
	r.connection = NULL;
	ok(ws_handshake_check(&r, accept, &p20), "missing Connection refused");

	r = good_req();
	r.upgrade = "h2c, WebSocket";
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "Upgrade: h2c, WebSocket");
	ok(ws_handshake_is_upgrade(&r), "is_upgrade sees WebSocket in a list");
	r.upgrade = "websockets";
	ok(!ws_handshake_is_upgrade(&r), "websockets is not websocket");
	ok(ws_handshake_check(&r, accept, &p20), "Upgrade: websockets refused");
	r.upgrade = NULL;
	ok(!ws_handshake_is_upgrade(&r), "no Upgrade header: not an upgrade");

	r = good_req();
	r.method = "POST";
	ok(ws_handshake_check(&r, accept, &p20), "POST refused");
	r.method = "get";
	ok(ws_handshake_check(&r, accept, &p20), "method is case-sensitive");
}

static void test_version_and_key(void)
{
	struct ws_upgrade_req r = good_req();
	char accept[29];
	bool p20;
	const char *why;

	r.version = "8";
	why = ws_handshake_check(&r, accept, &p20);
	ok(why && strstr(why, "Version"), "version 8 refused (%s)", why ? why : "accepted");
	r.version = "13 ";
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "version with trailing space");
	r.version = "130";
	ok(ws_handshake_check(&r, accept, &p20), "version 130 refused");
	r.version = NULL;
	ok(ws_handshake_check(&r, accept, &p20), "missing version refused");

	r = good_req();
	r.key = NULL;
	why = ws_handshake_check(&r, accept, &p20);
	ok(why && strstr(why, "missing"), "missing key refused (%s)", why ? why : "accepted");
	r.key = "dGhlIHNhbXBsZSBub25j";           /* 15 bytes, unpadded */
	ok(ws_handshake_check(&r, accept, &p20), "key of 15 bytes refused");
	r.key = "dGhlIHNhbXBsZSBub25jZTE=";       /* 17 bytes */
	ok(ws_handshake_check(&r, accept, &p20), "key of 17 bytes refused");
	r.key = "dGhlIHNhbXBsZSBub25jZTEy";       /* 18 bytes */
	ok(ws_handshake_check(&r, accept, &p20), "key of 18 bytes refused");
	r.key = "dGhlIHNhbXBsZSBub25jZ!==";
	ok(ws_handshake_check(&r, accept, &p20), "key with a non-base64 character refused");
	r.key = "dGhlIHNhbXBsZSBub25jZR==";
	ok(ws_handshake_check(&r, accept, &p20), "key with stray low bits refused");
	r.key = "";
	ok(ws_handshake_check(&r, accept, &p20), "empty key refused");
	r.key = " dGhlIHNhbXBsZSBub25jZQ== ";
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "key with surrounding spaces accepted");
	is_str(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "accept computed over the trimmed key");
}

static void test_protocol(void)
{
	struct ws_upgrade_req r = good_req();
	char accept[29];
	bool p20 = true;

	r.protocol = NULL;
	is_str(ws_handshake_check(&r, accept, &p20), NULL, "no subprotocol offered is allowed");
	ok(!p20, "no subprotocol: proto20 false");
	r.protocol = "chat, 2.0";
	ws_handshake_check(&r, accept, &p20);
	ok(p20, "2.0 found later in the list");
	r.protocol = "chat,superchat";
	ws_handshake_check(&r, accept, &p20);
	ok(!p20, "other protocols only: proto20 false");
	r.protocol = "2.00, 12.0";
	ws_handshake_check(&r, accept, &p20);
	ok(!p20, "2.00 and 12.0 are not 2.0");
	r.protocol = "2.0";
	r.version = "7";
	ws_handshake_check(&r, accept, &p20);
	ok(!p20, "proto20 stays false when the request is refused");
}

int main(void)
{
	test_rfc_sample();
	test_captured_chrome();
	test_tokens();
	test_version_and_key();
	test_protocol();
	return done_testing();
}
