/*
 * fuzz-upstream-response.c - the check of the backend's answer to the
 * upgrade.  Whatever the bytes, the parser must stay inside them, never
 * call an answer upgraded without the status, accept key and subprotocol it
 * needs, and give the same verdict on the head alone as on the head with
 * more bytes behind it (frames that followed in the same read).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_handshake.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	/* A copy of exactly size bytes, so ASan sees any read past them. */
	char *buf = malloc(size ? size : 1);
	struct uphs_response r, again;
	enum uphs_status st, st2;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	st = uphs_parse_response(buf, size, ACCEPT, &r);
	switch (st) {
	case UPHS_NEED_MORE:
		assert(size < UPHS_MAX_RESPONSE_HEAD);
		assert(!memmem(buf, size, "\r\n\r\n", 4));
		break;
	case UPHS_UPGRADED:
	case UPHS_REFUSED:
		assert(r.head_len >= 4 && r.head_len <= size);
		assert(!memcmp(buf + r.head_len - 4, "\r\n\r\n", 4));
		assert(r.status >= 100 && r.status <= 599);
		assert((st == UPHS_UPGRADED) == (r.status == 101));
		if (st == UPHS_UPGRADED)
			assert(memmem(buf, r.head_len, ACCEPT, strlen(ACCEPT)) &&
			       memmem(buf, r.head_len, "2.0", 3));
		assert(r.retry_after_s >= -1);
		st2 = uphs_parse_response(buf, r.head_len, ACCEPT, &again);
		/* A Retry-After date is counted from time(NULL): the two parses
		 * may fall on either side of a second. */
		assert(st2 == st && again.status == r.status && again.head_len == r.head_len &&
		       (again.retry_after_s == r.retry_after_s ||
		        (again.retry_after_s >= 0 && r.retry_after_s >= 0 &&
		         again.retry_after_s - r.retry_after_s <= 1 &&
		         r.retry_after_s - again.retry_after_s <= 1)));
		break;
	case UPHS_BAD:
		assert(r.why);
		break;
	}
	free(buf);
	return 0;
}
