/*
 * test-reqcheck.c - what the relay refuses at the door because it could not
 * be sent upstream: queries (bytes, escapes, a name twice, two keys), header
 * values and sessionIds.
 */
#include "reqcheck.h"

#include <stdlib.h>
#include <string.h>

#include "query.h"
#include "tap.h"

/* The query of a real SDK upgrade request (tests/fixtures/watchrtc-sdk). */
static const char sdk_query[] =
	"apiKey=key123&timestamp=1795463613117&apiVersion=v1"
	"&sessionId=hoaip931d9ncju1yin1bqm&newConnection=true";

static void query_ok(const char *q, const char *what)
{
	const char *why = reqcheck_query(q);

	ok(!why, "passes: %s%s%s", what, why ? " -- " : "", why ? why : "");
}

static void query_bad(const char *q, const char *what)
{
	ok(reqcheck_query(q), "refused: %s", what);
}

static void test_query(void)
{
	query_ok(sdk_query, "the SDK's query");
	query_ok(NULL, "no query");
	query_ok("", "an empty query");
	query_ok("a=%20b&c=d%2F&e=~!$'()*,;:@/?", "escapes and RFC 3986 punctuation");
	query_ok("a={x}&b=[1]&c=|^`\\", "what browsers send raw though RFC 3986 does not list it");
	query_ok("&&a=1&&", "empty pairs");
	query_ok("token=abc&sessionId=s1", "token alone");

	/* Bytes libcurl refuses or a request line cannot carry. */
	query_bad("apiKey=k&sessionId=s&x=a b", "a raw space");
	query_bad("apiKey=k&x=a\tb", "a tab");
	query_bad("apiKey=k&x=a\rb", "CR");
	query_bad("apiKey=k&x=a\nb", "LF");
	query_bad("apiKey=k&x=\x01", "a control byte");
	query_bad("apiKey=k&x=\x7f", "DEL");
	query_bad("apiKey=k&x=\xc3\xa9", "a raw UTF-8 byte");
	query_bad("apiKey=k#frag", "'#' (libcurl would cut the query there)");
	query_bad("apiKey=k&x=\"", "a double quote");
	query_bad("apiKey=k&x=<", "'<'");
	query_bad("apiKey=k&x=%", "a lone '%'");
	query_bad("apiKey=k&x=%4", "a '%' with one digit");
	query_bad("apiKey=k&x=%zz", "a '%' with no hex");
	query_bad("apiKey=k&x=a%00b", "an encoded NUL");

	/* A name twice, however it is spelled. */
	query_bad("apiKey=goodkey&apiKey=evilkey", "apiKey twice");
	query_bad("apiKey=goodkey&api%4Bey=evilkey", "apiKey and api%4Bey");
	query_bad("api%4bey=goodkey&apiKey=evilkey", "lower-case escape first");
	query_bad("sessionId=a&x=1&sessionId=b", "sessionId twice, apart");
	query_bad("flag&flag=1", "a bare name and the same name with a value");
	query_bad("a+b=1&a%20b=2", "'+' and %20 are both a space");
	query_bad("apiKey=goodkey&token=evilkey", "both apiKey and token");
	query_bad("apiKey=&token=evilkey", "both apiKey (empty) and token");
	query_ok("apiKey=k&apikey=k", "names differ in case");
	query_ok("a=1&b=1&c=1&aa=1&ab=1", "similar names");

	/* Many parameters: sorted, not compared pairwise. */
	{
		size_t n = 20000, len = 0;
		char *q = malloc(n * 8 + 32);

		if (q) {
			for (size_t i = 0; i < n; i++)
				len += (size_t)sprintf(q + len, "%s%zx=1", i ? "&" : "", i);
			ok(!reqcheck_query(q), "20000 distinct names pass");
			sprintf(q + len, "&%x=2", 777);
			ok(reqcheck_query(q), "and one repeated among them is found");
			free(q);
		}
		ok(q, "long query allocated");
	}
}

static void test_header(void)
{
	ok(!reqcheck_header(NULL), "no header passes");
	ok(!reqcheck_header("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"),
	   "a browser's User-Agent passes");
	ok(!reqcheck_header("a\tb"), "a tab passes (RFC 9110)");
	ok(!reqcheck_header("caf\xc3\xa9"), "bytes over 0x7f pass (obs-text)");
	ok(reqcheck_header("application/json\x01"), "a control byte is refused");
	ok(reqcheck_header("a\rb"), "CR is refused");
	ok(reqcheck_header("a\nX-Evil: 1"), "LF is refused");
	ok(reqcheck_header("a\x7f"), "DEL is refused");
}

static void test_session(void)
{
	const char *why;
	char big[300];

	is_int(reqcheck_session("hoaip931d9ncju1yin1bqm", 256, &why), 0, "the SDK's sessionId");
	ok(!why, "with no reason");
	is_int(reqcheck_session(NULL, 256, &why), 0, "no sessionId: the caller decides");
	memset(big, 'a', 256);
	big[256] = '\0';
	is_int(reqcheck_session(big, 256, &why), 0, "exactly max-session-id-bytes");
	big[256] = 'a';
	big[257] = '\0';
	is_int(reqcheck_session(big, 256, &why), 413, "one byte over: 413");
	ok(why && strstr(why, "max-session-id-bytes"), "naming the setting");
	is_int(reqcheck_session("a b", 256, &why), 400, "a space: 400");
	is_int(reqcheck_session("a\tb", 256, &why), 400, "a tab: 400");
	is_int(reqcheck_session("a\x01", 256, &why), 400, "a control byte: 400");
	is_int(reqcheck_session("caf\xc3\xa9", 256, &why), 400, "non-ASCII: 400");
}

int main(void)
{
	test_query();
	test_header();
	test_session();
	return done_testing();
}
