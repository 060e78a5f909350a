/*
 * fuzz-ws-frames.c - websocket frame decoding and reassembly as the relay
 * does it, checked against plain wslay.
 *
 * The same bytes, as if from a client, go to two wslay server contexts with
 * the relay's message limit: one as they are, where wslay checks text for
 * UTF-8 itself; one through ws_textmark (text frames shown as binary) with
 * the relay's whole-message check (utf8_valid, close 1007), as
 * server/websocket.c does.  Both must deliver the same data messages, each
 * with the same kind and bytes, and the same pings and pongs (the relay's
 * wslay sees pings as pongs; the mark tells them apart) up to where plain
 * wslay stopped, and ws_textmark must never run out of room.
 *
 * Then each of the two again, with its input paused after every piece and
 * its wslay context freed and made anew whenever ws_textmark says the
 * stream is at rest (a following-only mark for plain wslay), as the relay
 * does to idle connections: each must deliver exactly what it did with one
 * context throughout.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include "utf8.h"
#include "ws_textmark.h"

#define FUZZ_MAX_MESSAGE (64 * 1024)
#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

struct side {
	const uint8_t *data;
	size_t len, off;
	struct ws_textmark *mark;       /* NULL: plain wslay */
	size_t messages;
	uint64_t digest;                /* FNV-1a over each message's kind, length and bytes */
	size_t controls;                /* pings and pongs, as the client sent them */
	uint64_t control_digest;        /* FNV-1a over each one's kind and payload */
	size_t snap_at;                 /* the digest when controls reached this many */
	uint64_t snap;
	bool restart;                   /* a new context whenever the mark is at rest */
	bool paused;                    /* the last read handed out a piece: would block now */
	bool plain_text;                /* wslay checks text itself (a following-only mark) */
};

static void digest_into(uint64_t *d, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		*d = (*d ^ b[i]) * 0x100000001b3ULL;
}

static void digest(struct side *s, const void *p, size_t n)
{
	digest_into(&s->digest, p, n);
}

/* Pings and pongs: the relay's wslay sees every ping as a pong, and the
 * mark must say which pongs were pings, in order, payload and all. */
static void on_control(struct side *s, const struct wslay_event_on_msg_recv_arg *arg)
{
	bool ping = arg->opcode == WSLAY_PING;

	if (s->mark && !s->plain_text) {
		CHECK(!ping);           /* every ping was shown as a pong */
		ping = ws_textmark_pop_ping(s->mark);
	}
	s->controls++;
	digest_into(&s->control_digest, &ping, sizeof ping);
	digest_into(&s->control_digest, arg->msg, arg->msg_length);
	if (s->controls == s->snap_at)
		s->snap = s->control_digest;
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
	struct side *s = user;
	size_t n = s->len - s->off;

	if (n == 0 || (s->restart && s->paused)) {
		s->paused = false;
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	s->paused = true;
	if (n > len)
		n = len;
	/* Hand out the input in small pieces to exercise partial frames; when
	 * pausing, of sizes the input picks, so that pauses fall anywhere. */
	if (s->restart && n > 1u + (s->data[s->off] & 15))
		n = 1u + (s->data[s->off] & 15);
	else if (n > 7 && (s->off & 1))
		n = 7;
	memcpy(buf, s->data + s->off, n);
	s->off += n;
	if (s->mark)
		CHECK(ws_textmark_feed(s->mark, buf, n));
	return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user)
{
	return (ssize_t)len; /* the relay's answers (pong, close) go nowhere here */
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user)
{
	memset(buf, 0, len);
	return 0;
}

static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                   void *user)
{
	struct side *s = user;
	bool text = arg->opcode == WSLAY_TEXT_FRAME;
	uint64_t len = arg->msg_length;

	if (arg->opcode == WSLAY_PING || arg->opcode == WSLAY_PONG) {
		on_control(s, arg);
		return;
	}
	if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
		return;
	if (s->mark && !s->plain_text) {
		CHECK(!text);           /* every text frame was shown as binary */
		text = ws_textmark_pop(s->mark);
		if (text && !utf8_valid(arg->msg, arg->msg_length)) {
			wslay_event_queue_close(ctx, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, NULL,
			                        0);
			wslay_event_shutdown_read(ctx);
			return;
		}
	} else if (text) {
		CHECK(utf8_valid(arg->msg, arg->msg_length));   /* wslay checked it */
	}
	s->messages++;
	digest(s, &text, sizeof text);
	digest(s, &len, sizeof len);
	digest(s, arg->msg, arg->msg_length);
}

static wslay_event_context_ptr context_new(struct side *s)
{
	static const struct wslay_event_callbacks cb = {
		recv_cb, send_cb, genmask_cb, NULL, NULL, NULL, on_msg
	};
	wslay_event_context_ptr ctx;

	if (wslay_event_context_server_init(&ctx, &cb, s) != 0)
		abort();
	wslay_event_config_set_max_recv_msg_length(ctx, FUZZ_MAX_MESSAGE);
	return ctx;
}

static void run(struct side *s)
{
	wslay_event_context_ptr ctx = context_new(s);

	while (s->off < s->len && wslay_event_want_read(ctx)) {
		if (wslay_event_recv(ctx) != 0)
			break;
		if (wslay_event_want_write(ctx))
			wslay_event_send(ctx);
		if (s->restart && ws_textmark_at_rest(s->mark) && !wslay_event_want_write(ctx) &&
		    !wslay_event_get_close_sent(ctx) && !wslay_event_get_close_received(ctx)) {
			wslay_event_context_free(ctx);
			ctx = context_new(s);
		}
	}
	wslay_event_context_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct ws_textmark mark, mark2, follow;
	const uint64_t basis = 0xcbf29ce484222325ULL;
	struct side plain = { .data = data, .len = size, .digest = basis,
	                      .control_digest = basis };
	struct side marked = plain, plain_again = plain, marked_again = plain;

	marked.mark = &mark;
	plain_again.mark = &follow;
	plain_again.restart = true;
	plain_again.plain_text = true;
	marked_again.mark = &mark2;
	marked_again.restart = true;

	ws_textmark_init(&mark);
	ws_textmark_init(&mark2);
	ws_textmark_init_follow(&follow);
	run(&plain);
	marked.snap_at = plain.controls;
	run(&marked);
	CHECK(plain.messages == marked.messages);
	CHECK(plain.digest == marked.digest);
	/* Plain wslay stops at the first bad UTF-8 byte of a text fragment,
	 * the relay at the end of the message: control frames in between
	 * reach only the relay.  Up to there, the same ones. */
	CHECK(marked.controls >= plain.controls);
	CHECK((plain.controls ? marked.snap : basis) == plain.control_digest);

	/* A context made anew at every rest changes nothing. */
	run(&plain_again);
	CHECK(plain_again.messages == plain.messages && plain_again.digest == plain.digest);
	CHECK(plain_again.controls == plain.controls &&
	      plain_again.control_digest == plain.control_digest);
	run(&marked_again);
	CHECK(marked_again.messages == marked.messages && marked_again.digest == marked.digest);
	CHECK(marked_again.controls == marked.controls &&
	      marked_again.control_digest == marked.control_digest);
	return 0;
}
