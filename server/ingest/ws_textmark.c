/*
 * ws_textmark.c - see ws_textmark.h.  Why: wslay 1.1 runs every byte of a
 * text frame through a table-driven UTF-8 decoder as it arrives, over a
 * third of a websocket thread's time at full ingest (BENCHMARKS.md); the
 * relay's own check (utf8.c) takes eight bytes at a time while they are
 * ASCII, as the SDK's messages are.
 *
 * The frame layout (RFC 6455 5.2): byte 0 has FIN, RSV and the opcode;
 * byte 1 MASK and a 7-bit length, where 126 means a 16-bit length follows
 * and 127 a 64-bit one; then the 4-byte masking key if MASK is set; then
 * the payload.  What wslay refuses (reserved bits or opcodes, unmasked or
 * oversized frames) ends the connection before this reading can matter.
 */
#include <string.h>

#include "ws_textmark.h"

#define OP_TEXT 0x1
#define OP_BINARY 0x2
#define OP_PING 0x9
#define OP_PONG 0xa
#define OP_FIRST_CONTROL 0x8      /* below it: text, binary, continuation */

enum { ST_BYTE0, ST_BYTE1, ST_LENGTH, ST_MASK, ST_PAYLOAD };

void ws_textmark_init(struct ws_textmark *t)
{
	memset(t, 0, sizeof *t);
}

void ws_textmark_init_follow(struct ws_textmark *t)
{
	memset(t, 0, sizeof *t);
	t->follow_only = true;
}

bool ws_textmark_at_rest(const struct ws_textmark *t)
{
	return t->state == ST_BYTE0 && !t->in_message && t->count == 0 && t->ccount == 0;
}

/* A ring of bits: the kinds of what wslay has yet to deliver, in order. */
static bool ring_push(uint64_t *bits, uint16_t head, uint16_t *count, bool one)
{
	unsigned at, bit;

	if (*count == WS_TEXTMARK_MAX)
		return false;
	at = (head + (*count)++) % WS_TEXTMARK_MAX;
	bit = at % 64;
	bits[at / 64] = (bits[at / 64] & ~(UINT64_C(1) << bit)) | (uint64_t)one << bit;
	return true;
}

static bool ring_pop(const uint64_t *bits, uint16_t *head, uint16_t *count)
{
	bool one;

	if (*count == 0)
		return false;
	one = (bits[*head / 64] >> (*head % 64)) & 1;
	*head = (uint16_t)((*head + 1) % WS_TEXTMARK_MAX);
	(*count)--;
	return one;
}

static bool push(struct ws_textmark *t, bool text)
{
	return ring_push(t->kinds, t->head, &t->count, text);
}

uint64_t ws_textmark_longest(const struct ws_textmark *t)
{
	return t->longest;
}

bool ws_textmark_pop(struct ws_textmark *t)
{
	return ring_pop(t->kinds, &t->head, &t->count);
}

bool ws_textmark_pop_ping(struct ws_textmark *t)
{
	return ring_pop(t->ckinds, &t->chead, &t->ccount);
}

/* The length is known: the masking key or the payload comes next. */
static void length_done(struct ws_textmark *t, uint64_t len)
{
	if (len > t->longest)
		t->longest = len;
	if (t->masked) {
		t->state = ST_MASK;
		t->left = 4;
		t->len = len;
	} else {
		t->state = len > 0 ? ST_PAYLOAD : ST_BYTE0;
		t->left = len;
	}
}

bool ws_textmark_feed(struct ws_textmark *t, uint8_t *buf, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint8_t b = buf[i];

		switch (t->state) {
		case ST_BYTE0:
			if ((b & 0x0f) < OP_FIRST_CONTROL)
				t->in_message = !(b & 0x80);
			if (t->follow_only) {
				t->state = ST_BYTE1;
				i++;
				break;
			}
			if ((b & 0x0f) == OP_TEXT)
				buf[i] = (uint8_t)((b & 0xf0) | OP_BINARY);
			if (((b & 0x0f) == OP_TEXT || (b & 0x0f) == OP_BINARY) &&
			    !push(t, (b & 0x0f) == OP_TEXT))
				return false;
			if ((b & 0x0f) == OP_PING)
				buf[i] = (uint8_t)((b & 0xf0) | OP_PONG);
			if (((b & 0x0f) == OP_PING || (b & 0x0f) == OP_PONG) &&
			    !ring_push(t->ckinds, t->chead, &t->ccount, (b & 0x0f) == OP_PING))
				return false;
			t->state = ST_BYTE1;
			i++;
			break;
		case ST_BYTE1:
			t->masked = b & 0x80;
			b &= 0x7f;
			if (b >= 126) {
				t->state = ST_LENGTH;
				t->left = b == 126 ? 2 : 8;
				t->len = 0;
			} else {
				length_done(t, b);
			}
			i++;
			break;
		case ST_LENGTH:
			t->len = t->len << 8 | b;
			if (--t->left == 0)
				length_done(t, t->len);
			i++;
			break;
		case ST_MASK:
			if (--t->left == 0) {
				t->state = t->len > 0 ? ST_PAYLOAD : ST_BYTE0;
				t->left = t->len;
			}
			i++;
			break;
		default: {              /* ST_PAYLOAD: skipped whole */
			uint64_t n = len - i < t->left ? len - i : t->left;

			i += (size_t)n;
			t->left -= n;
			if (t->left == 0)
				t->state = ST_BYTE0;
			break;
		}
		}
	}
	return true;
}
