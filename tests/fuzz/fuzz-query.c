/*
 * fuzz-query.c - libFuzzer target for query_get.
 *
 * Input: "name\nquery", or just a query, which is then searched for the
 * SDK's parameter names.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "query.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

static void lookup(const char *query, const char *name)
{
	char *v = query_get(query, name);

	/* Decoding never grows a value, and nothing is returned for "". */
	if (v)
		CHECK(strlen(v) <= strlen(query));
	free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const names[] = {
		"apiKey", "token", "timestamp", "apiVersion", "sessionId", "newConnection", "",
	};
	char *buf = malloc(size + 1), *nl;

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	if ((nl = memchr(buf, '\n', size))) {
		*nl = '\0';
		lookup(nl + 1, buf);
	} else {
		for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
			lookup(buf, names[i]);
	}
	free(buf);
	return 0;
}
