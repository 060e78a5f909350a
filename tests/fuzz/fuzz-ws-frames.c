/*
 * fuzz-ws-frames.c - websocket frame decoding and reassembly as the relay
 * configures it: a wslay server context with the relay's message limit,
 * fed arbitrary bytes as if from a client.  The relay stores the text
 * messages wslay hands it without checking their encoding again: wslay
 * closes with 1007 on the first byte that is not UTF-8, and this target
 * checks that no text message it delivers fails an independent check.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include "utf8.h"

#define FUZZ_MAX_MESSAGE (64 * 1024)
#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

struct feed {
	const uint8_t *data;
	size_t len, off;
	size_t messages;
};

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user)
{
	struct feed *f = user;
	size_t n = f->len - f->off;

	if (n == 0) {
		wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
		return -1;
	}
	if (n > len)
		n = len;
	/* Hand out the input in small pieces to exercise partial frames. */
	if (n > 7 && (f->off & 1))
		n = 7;
	memcpy(buf, f->data + f->off, n);
	f->off += n;
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
	struct feed *f = user;

	if (arg->opcode == WSLAY_TEXT_FRAME)
		CHECK(utf8_valid(arg->msg, arg->msg_length));
	f->messages++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wslay_event_callbacks cb = { recv_cb, send_cb, genmask_cb, NULL, NULL, NULL, on_msg };
	struct feed f = { data, size, 0, 0 };
	wslay_event_context_ptr ctx;

	if (wslay_event_context_server_init(&ctx, &cb, &f) != 0)
		return 0;
	wslay_event_config_set_max_recv_msg_length(ctx, FUZZ_MAX_MESSAGE);
	while (f.off < f.len && wslay_event_want_read(ctx)) {
		if (wslay_event_recv(ctx) != 0)
			break;
		if (wslay_event_want_write(ctx))
			wslay_event_send(ctx);
	}
	wslay_event_context_free(ctx);
	return 0;
}
