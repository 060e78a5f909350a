/*
 * ws_handshake.c - the RFC 6455 opening handshake checks (section 4.2.1).
 *
 * Pure functions over header values: no I/O and no allocation, so the
 * fuzzer can drive them directly.  Header values arrive as the client sent
 * them; comparisons are token-wise and case-insensitive where the RFC says
 * so ("Connection: keep-alive, Upgrade" is a valid upgrade request).
 */
#include "ws_handshake.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_B64_LEN 24   /* base64 of 16 bytes, with "==" */

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t';
}

/*
 * True if the comma-separated list value holds token, ignoring case and the
 * optional whitespace around each element.
 */
static bool list_has_token(const char *value, const char *token, bool nocase)
{
	size_t tlen = strlen(token);
	const char *p = value;

	if (!value)
		return false;
	while (*p) {
		const char *start, *end;

		while (is_space(*p) || *p == ',')
			p++;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && is_space(end[-1]))
			end--;
		if ((size_t)(end - start) == tlen &&
		    (nocase ? !strncasecmp(start, token, tlen) : !memcmp(start, token, tlen)))
			return true;
	}
	return false;
}

/* Strips the surrounding whitespace of s into [*start, *end). */
static void trim(const char *s, const char **start, const char **end)
{
	const char *e = s + strlen(s);

	while (is_space(*s))
		s++;
	while (e > s && is_space(e[-1]))
		e--;
	*start = s;
	*end = e;
}

/*
 * True if [s, e) is the canonical base64 form of exactly 16 bytes: 22
 * alphabet characters then "==", the last character carrying no stray bits.
 */
static bool key_is_16_bytes(const char *s, const char *e)
{
	const char *pos;

	if (e - s != WS_KEY_B64_LEN || s[22] != '=' || s[23] != '=')
		return false;
	for (int i = 0; i < 22; i++) {
		if (s[i] == '\0' || !strchr(b64_alphabet, s[i]))
			return false;
	}
	/* 16 bytes = 128 bits; the 22nd character holds the last 2 bits. */
	pos = strchr(b64_alphabet, s[21]);
	return ((pos - b64_alphabet) & 0x0f) == 0;
}

/* Encodes 20 bytes (a SHA-1 digest) as 28 base64 characters plus NUL. */
static void b64_encode_sha1(const uint8_t in[20], char out[29])
{
	size_t o = 0;

	for (size_t i = 0; i < 20; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		size_t left = 20 - i;

		if (left > 1)
			v |= (uint32_t)in[i + 1] << 8;
		if (left > 2)
			v |= in[i + 2];
		out[o++] = b64_alphabet[(v >> 18) & 63];
		out[o++] = b64_alphabet[(v >> 12) & 63];
		out[o++] = left > 1 ? b64_alphabet[(v >> 6) & 63] : '=';
		out[o++] = left > 2 ? b64_alphabet[v & 63] : '=';
	}
	out[o] = '\0';
}

bool ws_handshake_is_upgrade(const struct ws_upgrade_req *r)
{
	return r && list_has_token(r->upgrade, "websocket", true);
}

const char *ws_handshake_check(const struct ws_upgrade_req *r, char accept[29],
                               bool *proto20)
{
	char buf[WS_KEY_B64_LEN + sizeof WS_GUID];
	uint8_t digest[20];
	const char *ks, *ke, *vs, *ve;

	*proto20 = false;
	accept[0] = '\0';
	if (!r->method || strcmp(r->method, "GET"))
		return "websocket upgrade must be a GET";
	if (!list_has_token(r->upgrade, "websocket", true))
		return "Upgrade header must name websocket";
	if (!list_has_token(r->connection, "upgrade", true))
		return "Connection header must include Upgrade";
	if (!r->version)
		return "missing Sec-WebSocket-Version";
	trim(r->version, &vs, &ve);
	if (ve - vs != 2 || memcmp(vs, "13", 2))
		return "unsupported Sec-WebSocket-Version (want 13)";
	if (!r->key)
		return "missing Sec-WebSocket-Key";
	trim(r->key, &ks, &ke);
	if (!key_is_16_bytes(ks, ke))
		return "Sec-WebSocket-Key must be base64 of 16 bytes";

	/* accept = base64(SHA1(key + GUID)), over the key as the client sent it. */
	memcpy(buf, ks, WS_KEY_B64_LEN);
	memcpy(buf + WS_KEY_B64_LEN, WS_GUID, sizeof WS_GUID - 1);
	if (gnutls_hash_fast(GNUTLS_DIG_SHA1, buf, WS_KEY_B64_LEN + sizeof WS_GUID - 1,
	                     digest) < 0)
		return "cannot compute Sec-WebSocket-Accept";
	b64_encode_sha1(digest, accept);

	/* Subprotocol names are case-sensitive (RFC 6455 section 11.3.4). */
	*proto20 = list_has_token(r->protocol, "2.0", false);
	return NULL;
}
