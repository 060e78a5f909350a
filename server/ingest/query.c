/*
 * query.c - one parameter out of a URL query string.
 *
 * The query is walked in place, one '&'-separated pair at a time, and only
 * the value asked for is decoded: nothing is read past the terminating NUL
 * and nothing is allocated for the parameters that are skipped.
 */
#include "query.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static int hex_value(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/*
 * Decodes the character at *p (before end) and advances *p past it:
 * "%41" -> 'A', '+' -> ' '.  Returns the byte, or -1 for a bad escape.
 */
static int decode_next(const char **p, const char *end)
{
	const char *s = *p;
	int hi, lo;

	if (*s == '+') {
		*p = s + 1;
		return ' ';
	}
	if (*s != '%') {
		*p = s + 1;
		return (unsigned char)*s;
	}
	/* Check the first digit before looking at the second: s[1] may be
	 * the end of the string. */
	if (end - s < 3 || (hi = hex_value(s[1])) < 0 || (lo = hex_value(s[2])) < 0)
		return -1;
	*p = s + 3;
	return hi << 4 | lo;
}

/* Whether the encoded text [p, end) decodes to exactly name. */
static int name_matches(const char *p, const char *end, const char *name)
{
	while (p < end) {
		int ch = decode_next(&p, end);
		if (ch < 0 || ch == 0 || (unsigned char)*name != ch)
			return 0;
		name++;
	}
	return *name == '\0';
}

/* The decoded value [p, end), malloc'd; NULL if an escape is bad or a
 * NUL would cut the value short. */
static char *decode_value(const char *p, const char *end)
{
	char *out = malloc((size_t)(end - p) + 1), *o = out;

	if (!out)
		return NULL;
	while (p < end) {
		int ch = decode_next(&p, end);
		if (ch <= 0) {
			free(out);
			return NULL;
		}
		*o++ = (char)ch;
	}
	*o = '\0';
	return out;
}

char *query_get(const char *query, const char *name)
{
	const char *p = query;

	if (!query || !name)
		return NULL;
	while (*p) {
		const char *end = strchr(p, '&'), *eq;

		if (!end)
			end = p + strlen(p);
		eq = memchr(p, '=', (size_t)(end - p));
		if (!eq)
			eq = end;  /* "flag" alone has the empty value */
		if (end > p && name_matches(p, eq, name))
			return decode_value(eq < end ? eq + 1 : end, end);
		p = *end ? end + 1 : end;
	}
	return NULL;
}

/* A byte a query can carry as it is, '%' aside: visible ASCII but for '#'
 * (a fragment: libcurl would cut the query there) and the bytes a browser
 * always percent-encodes in a query ('"', '<', '>'; WHATWG URL's query set).
 * Browsers send "{|}^[]`\" raw, so they pass, though RFC 3986 lists them
 * not. */
static bool query_char(unsigned char ch)
{
	return ch > 0x20 && ch < 0x7f && !strchr("#\"<>", ch);
}

/* One decoded parameter name: [p, p + len) in the scratch buffer. */
struct name_span {
	const char *p;
	size_t len;
};

static int span_cmp(const void *a, const void *b)
{
	const struct name_span *x = a, *y = b;
	size_t n = x->len < y->len ? x->len : y->len;
	int c = memcmp(x->p, y->p, n);

	return c ? c : (x->len > y->len) - (x->len < y->len);
}

const char *query_check(const char *query)
{
	struct name_span *names = NULL;
	char *scratch = NULL, *o;
	size_t count = 1, n = 0;
	const char *p, *why = NULL;

	if (!query)
		return NULL;
	for (p = query; *p; p++) {
		if (*p == '%') {
			if (hex_value(p[1]) < 0 || hex_value(p[2]) < 0)
				return "bad percent escape in the query";
			if (p[1] == '0' && p[2] == '0')
				return "an encoded NUL in the query";
			p += 2;
		} else if (!query_char((unsigned char)*p)) {
			return "a byte in the query that a URL cannot carry";
		} else if (*p == '&') {
			count++;
		}
	}
	/* Every name decoded into one buffer, then sorted: two that decode
	 * alike sit side by side.  n log n, whatever the query holds. */
	names = malloc(count * sizeof *names);
	scratch = o = malloc(strlen(query) + 1);
	if (!names || !scratch) {
		why = "out of memory";
		goto out;
	}
	for (p = query; *p;) {
		const char *end = strchr(p, '&'), *eq;

		if (!end)
			end = p + strlen(p);
		eq = memchr(p, '=', (size_t)(end - p));
		if (!eq)
			eq = end;
		if (end > p) {
			names[n].p = o;
			while (p < eq)
				*o++ = (char)decode_next(&p, eq);   /* escapes checked above */
			names[n].len = (size_t)(o - names[n].p);
			n++;
		}
		p = *end ? end + 1 : end;
	}
	qsort(names, n, sizeof *names, span_cmp);
	for (size_t i = 1; i < n && !why; i++)
		if (!span_cmp(&names[i - 1], &names[i]))
			why = "a query parameter given twice";
out:
	free(names);
	free(scratch);
	return why;
}
