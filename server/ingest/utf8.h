/* utf8.h - UTF-8 validation for websocket text messages (RFC 6455 5.6). */
#ifndef WATCHRTC_UTF8_H
#define WATCHRTC_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True if s[0..len) is well-formed UTF-8 (RFC 3629): no overlong forms, no
 * surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated tail. */
bool utf8_valid(const unsigned char *s, size_t len);

#endif
