/*
 * fuzz-reqcheck.c - libFuzzer target for the ingest checks (reqcheck.c and
 * query_check): every verdict is compared with a plain reference written
 * from the rules, and a query that passes is one a request line can carry
 * and that names each parameter once.
 *
 * Input: any bytes, used as a query, a header value and a sessionId.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "query.h"
#include "reqcheck.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes [p, end) into out (NUL-free by then); returns its length. */
static size_t decode(const char *p, const char *end, char *out)
{
	size_t n = 0;

	while (p < end) {
		if (*p == '%') {
			out[n++] = (char)(hexval(p[1]) << 4 | hexval(p[2]));
			p += 3;
		} else {
			out[n++] = *p == '+' ? ' ' : *p;
			p++;
		}
	}
	return n;
}

/* The rules, the slow way: bytes, escapes, then every pair of names. */
static bool reference_query_ok(const char *q)
{
	static const char refused[] = "#\"<>";
	size_t len = strlen(q), nnames = 0;
	const char **start, **stop;
	char *a, *b;
	bool good = true;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)q[i];

		if (c == '%') {
			if (i + 2 >= len)
				return false;
			if (hexval(q[i + 1]) < 0 || hexval(q[i + 2]) < 0)
				return false;
			if (q[i + 1] == '0' && q[i + 2] == '0')
				return false;
			i += 2;
		} else if (c <= 0x20 || c >= 0x7f || strchr(refused, c)) {
			return false;
		}
	}
	start = malloc((len + 1) * sizeof *start);
	stop = malloc((len + 1) * sizeof *stop);
	a = malloc(len + 1);
	b = malloc(len + 1);
	CHECK(start && stop && a && b);
	for (const char *p = q; *p;) {
		const char *end = strchr(p, '&'), *eq;

		if (!end)
			end = p + strlen(p);
		eq = memchr(p, '=', (size_t)(end - p));
		if (end > p) {
			start[nnames] = p;
			stop[nnames++] = eq ? eq : end;
		}
		p = *end ? end + 1 : end;
	}
	for (size_t i = 0; i < nnames && good; i++) {
		size_t la = decode(start[i], stop[i], a);

		for (size_t j = i + 1; j < nnames && good; j++) {
			size_t lb = decode(start[j], stop[j], b);

			if (la == lb && !memcmp(a, b, la))
				good = false;
		}
	}
	free(start);
	free(stop);
	free(a);
	free(b);
	return good;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf;
	const char *why;
	bool plain = true;
	unsigned status;

	if (size > 4096)    /* the reference is quadratic */
		return 0;
	buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';

	why = query_check(buf);
	CHECK((!why) == reference_query_ok(buf));
	if (!reqcheck_query(buf)) {
		char *k = query_get(buf, "apiKey"), *t = query_get(buf, "token");

		CHECK(!why);
		CHECK(!(k && t));
		/* What passes decodes: a key that is there is never lost. */
		if (!strncmp(buf, "apiKey=", 7))
			CHECK(k);
		free(k);
		free(t);
	}

	for (size_t i = 0; i < strlen(buf); i++) {
		unsigned char c = (unsigned char)buf[i];

		if ((c < 0x20 && c != '\t') || c == 0x7f)
			plain = false;
	}
	CHECK((!reqcheck_header(buf)) == plain);

	status = reqcheck_session(buf, 64, &why);
	if (strlen(buf) > 64) {
		CHECK(status == 413 && why);
	} else {
		bool visible = true;

		for (size_t i = 0; i < strlen(buf); i++)
			if ((unsigned char)buf[i] < 0x21 || (unsigned char)buf[i] > 0x7e)
				visible = false;
		CHECK((status == 0) == visible);
		CHECK(status == 0 || (status == 400 && why));
	}
	free(buf);
	return 0;
}
