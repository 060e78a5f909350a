/*
 * ws_textmark.h - keeps text frames away from wslay's byte-at-a-time UTF-8
 * check: follows the frame boundaries in the bytes the relay hands wslay,
 * rewrites the opcode of each text frame to binary (the only byte it
 * changes) and remembers, message by message, which ones were text, so
 * that the relay checks those whole with utf8_valid when wslay delivers
 * them.
 *
 * It does the same to pings: each becomes a pong, which wslay does not
 * answer, and the relay answers the newest ping itself once per turn
 * (RFC 6455 5.5.3 allows answering only the most recent), so a peer that
 * pings faster than it reads is not owed a pong per ping.
 */
#ifndef WATCHRTC_WS_TEXTMARK_H
#define WATCHRTC_WS_TEXTMARK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Data messages begun and not yet delivered: those whose first frame is
 * in bytes wslay has read and not parsed (its buffer holds 4096 bytes, a
 * client frame takes at least 6) plus the one being reassembled. */
#define WS_TEXTMARK_MAX 1024

/* Embedded in the connection; every field is ws_textmark.c's. */
struct ws_textmark {
	uint64_t left;                  /* bytes left of the current length, mask or payload */
	uint64_t len;                   /* the extended length being read */
	uint64_t longest;               /* the longest payload a frame header announced */
	uint8_t state;
	bool masked;
	bool follow_only;               /* rewrites nothing, counts no messages */
	bool in_message;                /* a data message's last frame is still to come */
	uint16_t head, count;           /* the ring of pending message kinds */
	uint64_t kinds[WS_TEXTMARK_MAX / 64];   /* a bit a message: 1 = text */
	uint16_t chead, ccount;         /* the same for pongs wslay will deliver */
	uint64_t ckinds[WS_TEXTMARK_MAX / 64];  /* a bit a pong: 1 = was a ping */
};

/* A mark at the start of a stream. */
void ws_textmark_init(struct ws_textmark *t);

/* A mark that only follows the frames, for a stream whose text and pings
 * wslay handles itself (the upstream side): ws_textmark_feed rewrites
 * nothing there and never fails. */
void ws_textmark_init_follow(struct ws_textmark *t);

/* True between two frames and outside a fragmented message, with nothing
 * left to deliver: once wslay has read everything it was given, it then
 * holds nothing of the stream, and a fresh context can carry on from here
 * (so that an idle connection need not keep one: BENCHMARKS.md). */
bool ws_textmark_at_rest(const struct ws_textmark *t);

/* Follows the next len bytes of the client's stream and rewrites, in buf,
 * the first byte of every text frame to say binary and of every ping to say
 * pong.  Returns false if more than WS_TEXTMARK_MAX messages or pongs would
 * be pending, which wslay's 4096-byte read buffer rules out; the caller
 * then gives the connection up. */
bool ws_textmark_feed(struct ws_textmark *t, uint8_t *buf, size_t len);

/* The longest payload length any frame header so far announced: a header
 * alone can claim 2^63 - 1 bytes, and wslay says nothing until payload
 * bytes arrive. */
uint64_t ws_textmark_longest(const struct ws_textmark *t);

/* For each pong wslay delivers, in order: true if it was a ping. */
bool ws_textmark_pop_ping(struct ws_textmark *t);

/* For each binary message wslay delivers, in order: true if its first frame
 * was text.  False when nothing is pending. */
bool ws_textmark_pop(struct ws_textmark *t);

#endif
