/* test-query.c - query_get on what the watchRTC SDK sends, and on traps. */
#include "query.h"

#include "tap.h"

/* The query of a real SDK upgrade request (tests/fixtures/watchrtc-sdk). */
static const char sdk_query[] =
	"apiKey=key123&timestamp=1795463613117&apiVersion=v1"
	"&sessionId=hoaip931d9ncju1yin1bqm&newConnection=true";

/* Checks one lookup and frees the result; want NULL means "absent/invalid". */
static void check(const char *query, const char *name, const char *want, const char *what)
{
	char *got = query_get(query, name);

	is_str(got, want, "%s", what);
	free(got);
}

int main(void)
{
	/* The SDK's parameters, first, middle and last. */
	check(sdk_query, "apiKey", "key123", "sdk: apiKey (first)");
	check(sdk_query, "timestamp", "1795463613117", "sdk: timestamp");
	check(sdk_query, "apiVersion", "v1", "sdk: apiVersion");
	check(sdk_query, "sessionId", "hoaip931d9ncju1yin1bqm", "sdk: sessionId");
	check(sdk_query, "newConnection", "true", "sdk: newConnection (last)");
	check(sdk_query, "token", NULL, "sdk: token is absent");

	/* Names match exactly, not as a prefix, suffix or case-insensitively. */
	check("xapiKey=bad&apiKey=good", "apiKey", "good", "xapiKey= is not apiKey");
	check("apiKeyx=bad&apiKey=good", "apiKey", "good", "apiKeyx= is not apiKey");
	check("apikey=bad", "apiKey", NULL, "names are case-sensitive");
	check("apiKey=key123", "api", NULL, "a prefix of a name does not match");
	check("a=apiKey=x", "apiKey", NULL, "a name inside a value does not match");
	check("a=1&b=2", "", NULL, "the empty name is absent");

	/* First occurrence wins. */
	check("k=1&k=2", "k", "1", "first occurrence wins");
	check("k=%zz&k=2", "k", NULL, "a bad first occurrence is not skipped");

	/* Percent escapes and '+'. */
	check("v=a%20b", "v", "a b", "%20 is a space");
	check("v=a+b+", "v", "a b ", "'+' is a space");
	check("v=%2B%2b", "v", "++", "%2B and %2b are '+'");
	check("v=%e2%82%ac", "v", "\xe2\x82\xac", "UTF-8 escapes decode to bytes");
	check("v=%26%3D", "v", "&=", "escaped '&' and '=' stay in the value");
	check("v=%41%42C", "v", "ABC", "escapes and plain characters mix");
	check("api%4Bey=x", "apiKey", "x", "the name is compared decoded");

	/* Bad escapes make the value invalid. */
	check("v=%", "v", NULL, "lone '%' at the end");
	check("v=%4", "v", NULL, "one hex digit at the end");
	check("v=%4&w=1", "v", NULL, "one hex digit before '&'");
	check("v=%g1", "v", NULL, "non-hex first digit");
	check("v=%1g", "v", NULL, "non-hex second digit");
	check("v=a%00b", "v", NULL, "%00 is refused");
	check("v=%zz&w=ok", "w", "ok", "a bad escape elsewhere does not matter");

	/* Empty values and odd shapes. */
	check("v=", "v", "", "empty value");
	check("v=&w=1", "v", "", "empty value before '&'");
	check("flag&v=1", "flag", "", "a name without '=' has the empty value");
	check("&&v=1&&", "v", "1", "empty pairs are skipped");
	check("v=a=b", "v", "a=b", "'=' in a value is kept");
	check("", "v", NULL, "empty query");
	check(NULL, "v", NULL, "NULL query");
	check("v=1", NULL, NULL, "NULL name");

	/* A long query is walked without limits of its own. */
	{
		size_t n = 100000;
		char *q = malloc(n + 16);
		if (q) {
			memset(q, 'a', n);
			memcpy(q + n, "&z=end", 7);
			check(q, "z", "end", "a parameter after 100000 bytes");
			free(q);
		}
		ok(q, "long query allocated");
	}
	return done_testing();
}
