/* Unit tests of utf8_valid: the boundaries of RFC 3629 and the captures. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "utf8.h"

#define V(lit) utf8_valid((const unsigned char *)(lit), sizeof(lit) - 1)

int main(void)
{
	ok(V(""), "empty is valid");
	ok(V("[\"getstats\",\"PC_0\",{},1795463981421]"), "ASCII JSON is valid");
	ok(V("caf\xC3\xA9"), "two-byte sequence");
	ok(V("\xE2\x82\xAC"), "three-byte sequence (euro sign)");
	ok(V("\xF0\x9F\x98\x80"), "four-byte sequence (emoji)");
	ok(V("\xED\x9F\xBF"), "U+D7FF, just below the surrogates");
	ok(V("\xEE\x80\x80"), "U+E000, just above the surrogates");
	ok(V("\xF4\x8F\xBF\xBF"), "U+10FFFF, the last code point");
	ok(!V("\xC3\x28"), "bad continuation byte");
	ok(!V("\xC0\xAF"), "overlong two-byte '/'");
	ok(!V("\xC1\xBF"), "overlong two-byte");
	ok(!V("\xE0\x80\xAF"), "overlong three-byte");
	ok(!V("\xF0\x80\x80\xAF"), "overlong four-byte");
	ok(!V("\xED\xA0\x80"), "U+D800, a surrogate");
	ok(!V("\xED\xBF\xBF"), "U+DFFF, a surrogate");
	ok(!V("\xF4\x90\x80\x80"), "U+110000, above the last code point");
	ok(!V("\xF5\x80\x80\x80"), "lead byte 0xF5");
	ok(!V("\xFF"), "byte 0xFF");
	ok(!V("\x80"), "lone continuation byte");
	ok(!V("ab\xE2\x82"), "truncated at the end");
	ok(!V("\xF0\x9F\x98"), "truncated four-byte sequence");
	ok(utf8_valid((const unsigned char *)"a\0b", 3), "NUL is a valid code point");

	/* ASCII goes eight bytes at a time: a bad byte at any place of a long
	 * run, and a good sequence straddling a word, are still seen. */
	{
		unsigned char buf[40];
		bool all_caught = true, all_kept = true;

		for (size_t at = 0; at < sizeof buf; at++) {
			memset(buf, 'a', sizeof buf);
			buf[at] = 0xFF;
			all_caught &= !utf8_valid(buf, sizeof buf);
			if (at + 3 <= sizeof buf) {
				memset(buf, 'a', sizeof buf);
				memcpy(buf + at, "\xE2\x82\xAC", 3);
				all_kept &= utf8_valid(buf, sizeof buf);
				buf[at + 2] = 'a';      /* truncated in the middle of ASCII */
				all_caught &= !utf8_valid(buf, sizeof buf);
			}
		}
		ok(all_caught, "an invalid byte anywhere in a long ASCII run is found");
		ok(all_kept, "a three-byte sequence at any offset of a long run is valid");
	}
	return done_testing();
}
