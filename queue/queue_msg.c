/*
 * queue_msg.c - struct queue_msg as one allocation: the copy queue_put
 * keeps and queue_lease hands out, and the table of its string fields that
 * the store binds to columns.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

/* The string fields of struct queue_msg, in the order of the columns
 * session .. conn_id in the schema and in every statement. */
static const size_t msg_str_off[] = {
	offsetof(struct queue_msg, session),
	offsetof(struct queue_msg, target),
	offsetof(struct queue_msg, content_type),
	offsetof(struct queue_msg, xff),
	offsetof(struct queue_msg, peer_ip),
	offsetof(struct queue_msg, user_agent),
	offsetof(struct queue_msg, origin),
	offsetof(struct queue_msg, api_key),
	offsetof(struct queue_msg, conn_id),
};
_Static_assert(sizeof msg_str_off / sizeof msg_str_off[0] == MSG_NSTR,
               "MSG_NSTR counts the string fields");

const char *qmsg_str(const struct queue_msg *m, size_t i)
{
	const char *const *p = (const void *)((const char *)m + msg_str_off[i]);

	return *p;
}

void qmsg_set_str(struct queue_msg *m, size_t i, const char *s)
{
	const char **p = (void *)((char *)m + msg_str_off[i]);

	*p = s;
}

/* Bytes queue_msg_dup allocates for m, or 0 if that overflows size_t. */
size_t qmsg_footprint(const struct queue_msg *m)
{
	size_t total = sizeof(*m), len, i;

	if (m->body_len > SIZE_MAX - total - 1)
		return 0;
	total += m->body_len + 1;
	for (i = 0; i < MSG_NSTR; i++) {
		const char *s = qmsg_str(m, i);

		if (!s)
			continue;
		len = strlen(s) + 1;
		if (len > SIZE_MAX - total)
			return 0;
		total += len;
	}
	return total;
}

/* The copy is laid out as the struct, the body (followed by a NUL that
 * body_len does not count), then the strings. */
struct queue_msg *queue_msg_dup(const struct queue_msg *m)
{
	size_t size = qmsg_footprint(m), len, i;
	struct queue_msg *d;
	char *p;

	if (size == 0 || (m->body_len > 0 && !m->body))
		return NULL;
	d = malloc(size);
	if (!d)
		return NULL;
	*d = *m;
	p = (char *)(d + 1);
	if (m->body_len > 0)
		memcpy(p, m->body, m->body_len);
	p[m->body_len] = '\0';
	d->body = p;
	p += m->body_len + 1;
	for (i = 0; i < MSG_NSTR; i++) {
		const char *s = qmsg_str(m, i);

		if (!s)
			continue;
		len = strlen(s) + 1;
		memcpy(p, s, len);
		qmsg_set_str(d, i, p);
		p += len;
	}
	return d;
}

void queue_msg_free(struct queue_msg *m)
{
	free(m);
}
