/*
 * fuzz-ws-handshake.c - the upgrade request checks.  The input is read as
 * an HTTP request head ("Name: value" lines after a request line); the
 * headers that matter are handed to ws_handshake_check, whose answer must
 * be either a reason or a well-formed 28-character accept value.
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ws_handshake.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static char *value_of(char *line, const char *name)
{
	size_t n = strlen(name);

	if (strncasecmp(line, name, n) || line[n] != ':')
		return NULL;
	line += n + 1;
	while (*line == ' ')
		line++;
	return line;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	char *text = malloc(size + 1), *save = NULL, *line, *v;
	struct ws_upgrade_req r = { 0 };
	char accept[29];
	bool proto20 = false;
	const char *why;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	line = strtok_r(text, "\r\n", &save);
	if (line) {
		char *sp = strchr(line, ' ');
		if (sp)
			*sp = '\0';
		r.method = line;
	}
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		if ((v = value_of(line, "Upgrade")))
			r.upgrade = v;
		else if ((v = value_of(line, "Connection")))
			r.connection = v;
		else if ((v = value_of(line, "Sec-WebSocket-Version")))
			r.version = v;
		else if ((v = value_of(line, "Sec-WebSocket-Key")))
			r.key = v;
		else if ((v = value_of(line, "Sec-WebSocket-Protocol")))
			r.protocol = v;
	}
	(void)ws_handshake_is_upgrade(&r);
	why = ws_handshake_check(&r, accept, &proto20);
	if (!why)
		assert(strlen(accept) == 28 && accept[27] == '=');
	else
		assert(*why);
	free(text);
	return 0;
}
