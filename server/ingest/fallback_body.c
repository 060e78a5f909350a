/*
 * fallback_body.c - what a fallback POST body must be.
 *
 * The body is stored and forwarded byte for byte, so it is only checked
 * here, never rewritten.  Duplicate member names are refused because the
 * relay and the upstream could read different sessionIds from one body and
 * then order it differently.
 */
#include "fallback_body.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

/* A copy of the string member name of obj, or NULL. */
static char *member_dup(json_t *obj, const char *name, int *nomem)
{
	json_t *v = json_object_get(obj, name);
	char *s;

	if (!json_is_string(v))
		return NULL;
	s = strndup(json_string_value(v), json_string_length(v));
	if (!s)
		*nomem = 1;
	return s;
}

int body_check(const char *body, size_t len, struct body_fields *out, char *reason,
               size_t reason_size)
{
	json_error_t jerr;
	json_t *doc;
	int nomem = 0;

	memset(out, 0, sizeof *out);
	doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(doc)) {
		snprintf(reason, reason_size, "body is not a JSON object%s%s", doc ? "" : ": ",
		         doc ? "" : jerr.text);
		json_decref(doc);
		return -1;
	}
	out->session = member_dup(doc, "sessionId", &nomem);
	out->project_id = member_dup(doc, "projectId", &nomem);
	json_decref(doc);
	if (nomem) {
		body_fields_release(out);
		snprintf(reason, reason_size, "out of memory");
		return -2;
	}
	return 0;
}

void body_fields_release(struct body_fields *f)
{
	if (!f)
		return;
	free(f->session);
	free(f->project_id);
	f->session = f->project_id = NULL;
}
