/* Unit tests of ws_textmark: text frames become binary and pings pongs,
 * nothing else moves, at any split of the stream, and the kinds come back
 * in order. */
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "ws_textmark.h"
#include "wsframe.h"

#define BIG 70000                       /* needs the 64-bit length */

static const uint8_t mask[4] = { 0x11, 0x22, 0x33, 0x44 };
static uint8_t payload[BIG];

/* The stream of frames the tests feed: returns its length. */
static size_t build_stream(uint8_t *out)
{
	size_t n = 0;

	/* Masked, every fourth payload byte is 0x81, a text frame's first
	 * byte: payload must stay as it is. */
	memset(payload, 0x81 ^ 0x11, sizeof payload);
	n += wsf_build(out + n, 0x1, true, mask, payload, 100);            /* text, 7-bit length */
	n += wsf_build(out + n, 0x2, true, mask, payload, 300);            /* binary, 16-bit */
	n += wsf_build(out + n, 0x1, false, mask, payload, 10); /* text, first fragment */
	n += wsf_build(out + n, 0x9, true, mask, payload, 4);              /* ping in between */
	n += wsf_build(out + n, 0x0, true, mask, payload, 5);              /* its last fragment */
	n += wsf_build(out + n, 0x1, true, mask, payload, BIG);            /* text, 64-bit */
	n += wsf_build(out + n, 0x2, true, mask, payload, 0);              /* empty binary */
	n += wsf_build(out + n, 0x1, true, NULL, payload, 3);              /* unmasked text */
	n += wsf_build(out + n, 0x8, true, mask, payload, 2);              /* close */
	return n;
}

/* Where each frame's first byte is, and what it must become. */
static const struct { size_t at; uint8_t was, now; } frames[] = {
	{ 0, 0x81, 0x82 },
	{ 2 + 4 + 100, 0x82, 0x82 },
	{ 2 + 4 + 100 + 4 + 4 + 300, 0x01, 0x02 },
	{ 2 + 4 + 100 + 4 + 4 + 300 + 2 + 4 + 10, 0x89, 0x8a },
};

static size_t count_diffs(const uint8_t *a, const uint8_t *b, size_t n)
{
	size_t diffs = 0;

	for (size_t i = 0; i < n; i++)
		diffs += a[i] != b[i];
	return diffs;
}

static uint8_t want[2 * BIG], got[2 * BIG];

int main(void)
{
	size_t n = build_stream(want), diffs, chunks[] = { 1, 2, 5, 7, 13, 4096, 1 << 20 };
	struct ws_textmark t;

	/* Only the first bytes of the four text frames and the ping change. */
	for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
		bool fed = true, kinds;

		memcpy(got, want, n);
		ws_textmark_init(&t);
		for (size_t off = 0; off < n; off += chunks[c])
			fed &= ws_textmark_feed(&t, got + off,
			                        n - off < chunks[c] ? n - off : chunks[c]);
		diffs = count_diffs(want, got, n);
		ok(fed && diffs == 5, "fed %zu bytes at a time: 5 bytes changed (%zu)", chunks[c],
		   diffs);
		for (size_t f = 0; f < sizeof frames / sizeof frames[0]; f++)
			is_int(got[frames[f].at], frames[f].now, "  frame at %zu: 0x%02x -> 0x%02x",
			       frames[f].at, frames[f].was, frames[f].now);
		kinds = ws_textmark_pop(&t) && !ws_textmark_pop(&t) && ws_textmark_pop(&t) &&
		        ws_textmark_pop(&t) && !ws_textmark_pop(&t) && ws_textmark_pop(&t);
		ok(kinds, "  kinds in order: text, binary, text (fragmented), text, binary, text");
		ok(!ws_textmark_pop(&t), "  and then none");
		ok(ws_textmark_pop_ping(&t) && !ws_textmark_pop_ping(&t) && t.ccount == 0,
		   "  one pong pending, and it was a ping");
	}

	/* Room for WS_TEXTMARK_MAX messages not yet delivered, not one more. */
	{
		uint8_t frame[WSF_HEADER_MAX];
		size_t len = wsf_build(frame, 0x2, true, mask, payload, 0);
		bool fed = true;

		ws_textmark_init(&t);
		for (int i = 0; i < WS_TEXTMARK_MAX; i++)
			fed &= ws_textmark_feed(&t, frame, len);
		ok(fed, "%d pending messages fit", WS_TEXTMARK_MAX);
		ok(!ws_textmark_feed(&t, frame, len), "one more does not");
		ok(!ws_textmark_pop(&t), "the first is binary");
		ok(ws_textmark_feed(&t, frame, len), "after a delivery there is room again");
	}
	/* At rest only between frames, outside a fragmented message, with
	 * nothing pending: where a fresh wslay context can take over. */
	{
		uint8_t buf[64];
		/* text, more to come */
		size_t first = wsf_build(buf, 0x1, false, mask, payload, 3);
		size_t ping = wsf_build(buf + first, 0x9, true, mask, payload, 2);
		size_t last = wsf_build(buf + first + ping, 0x0, true, mask, payload, 4);
		size_t all = first + ping + last;
		bool rest_inside = false;

		ws_textmark_init(&t);
		ok(ws_textmark_at_rest(&t), "a new mark is at rest");
		for (size_t i = 0; i < all; i++) {
			ws_textmark_feed(&t, buf + i, 1);
			rest_inside |= ws_textmark_at_rest(&t);
		}
		ok(!rest_inside, "never at rest inside a fragmented message, a ping between");
		ok(!ws_textmark_at_rest(&t), "nor while its message and pong are undelivered");
		ws_textmark_pop(&t);
		ok(!ws_textmark_at_rest(&t), "nor while the pong is");
		ws_textmark_pop_ping(&t);
		ok(ws_textmark_at_rest(&t), "at rest once both are delivered");

		/* Following only: the same boundaries, no bytes changed, nothing to pop. */
		wsf_build(buf, 0x1, false, mask, payload, 3);
		wsf_build(buf + first, 0x9, true, mask, payload, 2);
		memcpy(got, buf, all);
		ws_textmark_init_follow(&t);
		rest_inside = false;
		for (size_t i = 0; i < all; i++) {
			ws_textmark_feed(&t, got + i, 1);
			rest_inside |= i + 1 < all && ws_textmark_at_rest(&t);
		}
		ok(count_diffs(buf, got, all) == 0, "following changes no byte");
		ok(!rest_inside && ws_textmark_at_rest(&t),
		   "following: at rest only after the message's last frame");
		ok(!ws_textmark_pop(&t), "following: nothing to pop");
		ws_textmark_feed(&t, got, 2);
		ok(!ws_textmark_at_rest(&t), "following: not at rest inside a frame header");
	}
	return done_testing();
}
