/*
 * reqcheck.c - ingest validation of what is later sent upstream.
 *
 * libcurl refuses a URL with a space or a control byte, and a header value
 * with one could forge another header: a message carrying one could never
 * be delivered and would block its session.  So it is never stored.
 */
#include "reqcheck.h"

#include <stdlib.h>
#include <string.h>

#include "query.h"

const char *reqcheck_query(const char *query)
{
	const char *why = query_check(query);
	char *api_key, *token;

	if (why)
		return why;
	api_key = query_get(query, "apiKey");
	token = query_get(query, "token");
	if (api_key && token)
		why = "both apiKey and token in the query";
	free(api_key);
	free(token);
	return why;
}

const char *reqcheck_header(const char *value)
{
	if (!value)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)value; *p; p++)
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			return "a control byte in a header";
	return NULL;
}

unsigned reqcheck_session(const char *session, size_t max_bytes, const char **why)
{
	size_t len;

	*why = NULL;
	if (!session)
		return 0;
	len = strlen(session);
	if (len > max_bytes) {
		*why = "sessionId over max-session-id-bytes";
		return 413;
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)session[i];

		if (ch < 0x21 || ch > 0x7e) {
			*why = "sessionId with a byte other than visible ASCII";
			return 400;
		}
	}
	return 0;
}
