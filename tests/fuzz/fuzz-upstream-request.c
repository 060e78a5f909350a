/*
 * fuzz-upstream-request.c - the upgrade request the relay writes to the
 * backend.  The input is split at NUL bytes into query, User-Agent, Origin,
 * X-Forwarded-For and path.  Built or refused, the answer must agree with
 * an independent check of the bytes, and a built request must be exactly
 * the request line plus its fixed header lines: no field can add a line,
 * a header or a second request.
 */
#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_handshake.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="

static bool target_bytes_ok(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= 0x20 || c >= 0x7f || c == '#')
			return false;
	}
	return true;
}

static bool value_bytes_ok(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			return false;
	}
	return true;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char *text = malloc(size + 1), *field[5] = { 0 }, *p, *req;
	struct uphs_request r = { .host = "backend.example:443", .path = "/", .key = KEY };
	const char *why = NULL;
	size_t len = 0, lines = 0, want_lines;
	bool expect_ok;
	int n = 0;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	/* Fields at NUL bytes; a missing one stays NULL (header left out). */
	for (p = text; n < 5 && p <= text + size; p += strlen(p) + 1)
		field[n++] = p;
	r.query = field[0];
	r.user_agent = field[1];
	r.origin = field[2];
	r.xff = field[3];
	if (field[4])
		r.path = field[4];

	expect_ok = (!r.query || !*r.query || target_bytes_ok(r.query)) &&
	            (!r.user_agent || value_bytes_ok(r.user_agent)) &&
	            (!r.origin || value_bytes_ok(r.origin)) &&
	            (!r.xff || value_bytes_ok(r.xff)) &&
	            r.path[0] == '/' && target_bytes_ok(r.path) && !strchr(r.path, '?');
	req = uphs_build_request(&r, &len, &why);
	assert(!!req == expect_ok);
	assert(req || why);
	if (req) {
		assert(len == strlen(req));
		assert(len >= 4 && !memcmp(req + len - 4, "\r\n\r\n", 4));
		/* Lines: every CR is followed by LF and every LF preceded by CR. */
		for (size_t i = 0; i < len; i++) {
			if (req[i] == '\r') {
				assert(i + 1 < len && req[i + 1] == '\n');
				lines++;
				i++;
			} else {
				assert(req[i] != '\n');
			}
		}
		want_lines = 1 + 7 + !!r.user_agent + !!r.origin + !!r.xff + 1;
		assert(lines == want_lines);
		/* The request line has exactly two spaces: method, target, version. */
		{
			const char *eol = strstr(req, "\r\n");
			int spaces = 0;

			for (const char *q = req; q < eol; q++)
				spaces += *q == ' ';
			assert(spaces == 2);
		}
		if (r.query && *r.query) {
			assert(strstr(req, r.query));
		}
		free(req);
	}
	free(text);
	return 0;
}
