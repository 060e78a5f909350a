/*
 * utf8.c - UTF-8 validation of websocket text messages (RFC 6455 requires
 * closing with 1007 when one is not UTF-8), and the fuzz targets' check of
 * fallback bodies.  Runs of ASCII, which is most of what the SDK sends, go
 * eight bytes at a time.
 *
 * The checks follow the table of well-formed byte sequences in Unicode
 * 15.0, chapter 3, table 3-7: the second byte's range depends on the first
 * byte, which is what excludes overlongs, surrogates and > U+10FFFF.
 */
#include <stdint.h>
#include <string.h>

#include "utf8.h"

/* How many bytes from s on are ASCII, counted in whole 8-byte words. */
static size_t ascii_words(const unsigned char *s, size_t len)
{
	size_t n = 0;
	uint64_t w;

	for (; len - n >= 8; n += 8) {
		memcpy(&w, s + n, 8);
		if (w & UINT64_C(0x8080808080808080))
			break;
	}
	return n;
}

bool utf8_valid(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xBF;
		size_t need;

		if (c < 0x80) {
			i++;
			i += ascii_words(s + i, len - i);
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF) {
			need = 1;
		} else if (c >= 0xE0 && c <= 0xEF) {
			need = 2;
			if (c == 0xE0)
				lo = 0xA0;      /* overlong below U+0800 */
			else if (c == 0xED)
				hi = 0x9F;      /* surrogates */
		} else if (c >= 0xF0 && c <= 0xF4) {
			need = 3;
			if (c == 0xF0)
				lo = 0x90;      /* overlong below U+10000 */
			else if (c == 0xF4)
				hi = 0x8F;      /* above U+10FFFF */
		} else {
			return false;           /* 0x80..0xC1, 0xF5..0xFF */
		}
		if (len - i <= need)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= need; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return false;
		i += need + 1;
	}
	return true;
}
