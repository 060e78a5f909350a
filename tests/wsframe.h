/*
 * wsframe.h - the bits of RFC 6455 the tests' websocket client (wsclient.c)
 * and the benchmark's load generator and sink share: building a frame, an
 * incremental frame parser that skips data payloads (the benchmark counts
 * messages, it does not read them) and keeps control payloads, and the
 * Sec-WebSocket-Accept value.
 */
#ifndef WATCHRTC_WSFRAME_H
#define WATCHRTC_WSFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WSF_HEADER_MAX 14            /* 2 + 8 (length) + 4 (mask) */
#define WSF_CONTROL_MAX 125          /* payload of a control frame */
#define WSF_ACCEPT_LEN 28            /* base64 of a SHA-1 */

/* Parser state: zero it before the first frame. */
struct wsf_parser {
	uint8_t hdr[WSF_HEADER_MAX];
	size_t hdr_len;
	bool in_payload;
	bool fin;
	uint8_t opcode;
	uint64_t len;                    /* payload length of the current frame */
	uint64_t rem;                    /* payload bytes still to come */
	uint8_t ctl[WSF_CONTROL_MAX];    /* a control frame's payload */
	size_t ctl_len;
};

/* Called once per complete frame; a non-zero return stops the parse. */
typedef int wsf_frame_fn(void *arg, const struct wsf_parser *p);

/*
 * Feeds n bytes of the stream to p, calling fn for each frame completed.
 * Returns 0, fn's first non-zero return, or -1 for a control frame longer
 * than WSF_CONTROL_MAX.  Masked payloads are not unmasked (control ones
 * included): the benchmark's peers send none that matter.
 */
int wsf_parse(struct wsf_parser *p, const uint8_t *buf, size_t n, wsf_frame_fn *fn, void *arg);

/*
 * Writes a frame header into out (room for WSF_HEADER_MAX bytes): FIN if
 * fin, opcode with its bits 4-6 as the RSV bits (0x40 | 1: a text frame
 * with RSV1; nothing is checked, so tests can send bad frames), the
 * payload length and, if mask is not NULL, the mask bit and the 4 bytes of
 * mask.  Returns the header's length.
 */
size_t wsf_header(uint8_t *out, unsigned opcode, bool fin, uint64_t len, const uint8_t *mask);

/*
 * Writes one whole frame into out (room for len + WSF_HEADER_MAX bytes):
 * wsf_header's, then the payload, XORed with mask unless mask is NULL.
 * Returns the frame's length.
 */
size_t wsf_build(uint8_t *out, unsigned opcode, bool fin, const uint8_t *mask,
                 const uint8_t *payload, size_t len);

/* Base64 of in[0..n) into out, which has room for 4 * ((n + 2) / 3) + 1. */
void wsf_base64(const uint8_t *in, size_t n, char *out);

/* The Sec-WebSocket-Accept value for key, NUL-terminated.  Returns 0, or
 * -1 if the key is too long or hashing failed. */
int wsf_accept(const char *key, char out[WSF_ACCEPT_LEN + 1]);

#endif
