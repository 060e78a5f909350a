/*
 * wsframe.c - websocket framing for the tests' client and the benchmark's
 * generator and sink.
 */
#include "wsframe.h"

#include <stdio.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#define WSF_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WSF_KEY_MAX 128              /* a Sec-WebSocket-Key is 24 characters; tests send odd ones */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void wsf_base64(const uint8_t *in, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = b64[(v >> 18) & 63];
		out[o++] = b64[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[o] = '\0';
}

int wsf_accept(const char *key, char out[WSF_ACCEPT_LEN + 1])
{
	char buf[WSF_KEY_MAX + sizeof WSF_GUID];
	uint8_t digest[20];

	if (strlen(key) > WSF_KEY_MAX)
		return -1;
	snprintf(buf, sizeof buf, "%s%s", key, WSF_GUID);
	if (gnutls_hash_fast(GNUTLS_DIG_SHA1, buf, strlen(buf), digest) < 0)
		return -1;
	wsf_base64(digest, sizeof digest, out);
	return 0;
}

size_t wsf_header(uint8_t *out, unsigned opcode, bool fin, uint64_t len, const uint8_t *mask)
{
	uint8_t bit = mask ? 0x80 : 0;
	size_t n = 0;

	out[n++] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x7f));
	if (len < 126) {
		out[n++] = (uint8_t)(bit | len);
	} else if (len < 65536) {
		out[n++] = bit | 126;
		out[n++] = (uint8_t)(len >> 8);
		out[n++] = (uint8_t)len;
	} else {
		out[n++] = bit | 127;
		for (int i = 7; i >= 0; i--)
			out[n++] = (uint8_t)(len >> (8 * i));
	}
	if (mask) {
		memcpy(out + n, mask, 4);
		n += 4;
	}
	return n;
}

size_t wsf_build(uint8_t *out, unsigned opcode, bool fin, const uint8_t *mask,
                 const uint8_t *payload, size_t len)
{
	size_t n = wsf_header(out, opcode, fin, len, mask);

	if (!mask) {
		memcpy(out + n, payload, len);
		return n + len;
	}
	for (size_t i = 0; i < len; i++)
		out[n + i] = payload[i] ^ mask[i & 3];
	return n + len;
}

/* Called when the header in p->hdr is complete. */
static int header_done(struct wsf_parser *p)
{
	p->fin = p->hdr[0] & 0x80;
	p->opcode = p->hdr[0] & 0x0F;
	p->len = p->hdr[1] & 127;
	if (p->len >= 126) {
		size_t k = p->len == 126 ? 2 : 8;

		p->len = 0;
		for (size_t i = 0; i < k; i++)
			p->len = p->len << 8 | p->hdr[2 + i];
	}
	if (p->opcode >= 0x8 && p->len > WSF_CONTROL_MAX)
		return -1;
	p->rem = p->len;
	p->hdr_len = 0;
	p->ctl_len = 0;
	p->in_payload = true;
	return 0;
}

int wsf_parse(struct wsf_parser *p, const uint8_t *buf, size_t n, wsf_frame_fn *fn, void *arg)
{
	while (n > 0) {
		if (!p->in_payload) {
			size_t need = 2;

			p->hdr[p->hdr_len++] = *buf++;
			n--;
			if (p->hdr_len >= 2) {
				unsigned l7 = p->hdr[1] & 127;

				need += (l7 == 126   ? 2
				         : l7 == 127 ? 8
				                     : 0) +
					(p->hdr[1] & 0x80 ? 4 : 0);
			}
			if (p->hdr_len < need)
				continue;
			if (header_done(p) < 0)
				return -1;
		} else {
			size_t take = n < p->rem ? n : (size_t)p->rem;

			if (p->opcode >= 0x8) {
				memcpy(p->ctl + p->ctl_len, buf, take);
				p->ctl_len += take;
			}
			buf += take;
			n -= take;
			p->rem -= take;
		}
		if (p->in_payload && p->rem == 0) {
			int r;

			p->in_payload = false;
			r = fn(arg, p);
			if (r != 0)
				return r;
		}
	}
	return 0;
}
