/*
 * fuzz-json-body.c - libFuzzer target for the relay's own checks on a
 * fallback POST body (server/fallback_body.c), fed any bytes as a body.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fallback_body.h"
#include "utf8.h"

#define CHECK(cond) do { if (!(cond)) abort(); } while (0)

/* An accepted string member is exactly what the document holds. */
static void check_member(json_t *doc, const char *name, const char *got)
{
	json_t *v = json_object_get(doc, name);

	if (!json_is_string(v)) {
		CHECK(!got);
		return;
	}
	CHECK(got);
	CHECK(strlen(got) == json_string_length(v));
	CHECK(!memcmp(got, json_string_value(v), json_string_length(v)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct body_fields f;
	char reason[200];
	json_t *doc;
	int rc = body_check((const char *)data, size, &f, reason, sizeof reason);

	if (rc == 0) {
		/* Only a UTF-8 JSON object without duplicate names gets in. */
		CHECK(utf8_valid(data, size));
		doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
		CHECK(json_is_object(doc));
		check_member(doc, "sessionId", f.session);
		check_member(doc, "projectId", f.project_id);
		json_decref(doc);
	} else {
		/* Every refusal says why, and holds nothing. */
		CHECK(rc == -1 || rc == -2);
		CHECK(reason[0] != '\0' && memchr(reason, '\0', sizeof reason));
		CHECK(!f.session && !f.project_id);
	}
	body_fields_release(&f);
	return 0;
}
