/*
 * upstream_ws.c - websockets to the backend (see upstream_ws.h).
 * Stub: the API is fixed, the implementation follows.
 */
#include "upstream_ws.h"

#include <stdlib.h>
#include <string.h>

const char *upws_class_name(enum upws_class cls)
{
	static const char *const names[] = {
		[UPWS_CLOSED] = "closed", [UPWS_REFUSED] = "refused",
		[UPWS_HELLO_ERROR] = "hello_error", [UPWS_NETWORK] = "network",
		[UPWS_PROTOCOL] = "protocol", [UPWS_TIMEOUT] = "timeout",
		[UPWS_BACKEND_CLOSED] = "backend_closed", [UPWS_DROPPED] = "dropped",
		[UPWS_ABORTED] = "aborted",
	};

	return (unsigned)cls < sizeof names / sizeof names[0] ? names[cls] : "unknown";
}

int upstream_client_new(struct upstream_client **out, const struct upstream_client_options *o,
                        char **cause)
{
	(void)o;
	*out = NULL;
	*cause = strdup("upstream websockets: not implemented yet");
	return -1;
}

void upstream_client_free(struct upstream_client *c)
{
	(void)c;
}
