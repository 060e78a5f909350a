/*
 * access.c - the API-key and origin allowlists, and the per-client limits
 * (iplimit.c).
 *
 * The key allowlist is a sorted array searched with bsearch.  A reload
 * builds a whole new array from the inline keys and the file and swaps it
 * in under the lock, so a lookup sees either the old list or the new one,
 * and a file that fails to load leaves the old one in force.  The origins
 * are swapped under the same lock when the configuration changes.
 */
#include "access.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cause.h"
#include "clock.h"
#include "iplimit.h"
#include "log.h"

#define ACCESS_KEY_MAX 256                   /* longest API key accepted in the allowlist */
#define ACCESS_KEYS_FILE_MAX (16 * 1024 * 1024)  /* larger key files are refused */
#define SWAP_STR(x, y) do { char *t_ = (x); (x) = (y); (y) = t_; } while (0)

struct keyset {
	char **keys;       /* sorted, unique */
	size_t n, cap;
};

struct access {
	pthread_mutex_t keys_lock;
	struct keyset keys;          /* under keys_lock, as the rest up to limits */
	bool keys_on;                /* an allowlist is configured (even if empty) */
	char *inline_keys, *keys_file;
	char **origins;              /* NULL: any origin */
	size_t norigins;
	struct iplimit *limits;
};

static bool is_blank(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r';
}

static void keyset_release(struct keyset *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->keys[i]);
	free(k->keys);
	memset(k, 0, sizeof *k);
}

static int keyset_add(struct keyset *k, const char *s, size_t len)
{
	if (k->n == k->cap) {
		size_t cap = k->cap ? 2 * k->cap : 64;
		char **grown = realloc(k->keys, cap * sizeof *grown);

		if (!grown)
			return -1;
		k->keys = grown;
		k->cap = cap;
	}
	if (!(k->keys[k->n] = strndup(s, len)))
		return -1;
	k->n++;
	return 0;
}

static int cmp_key(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts k and drops duplicates. */
static void keyset_finish(struct keyset *k)
{
	size_t out = 0;

	if (k->n == 0)
		return;
	qsort(k->keys, k->n, sizeof *k->keys, cmp_key);
	for (size_t i = 0; i < k->n; i++) {
		if (out > 0 && !strcmp(k->keys[out - 1], k->keys[i]))
			free(k->keys[i]);
		else
			k->keys[out++] = k->keys[i];
	}
	k->n = out;
}

/*
 * Adds the entries of text, split at any of seps, trimmed; blank entries
 * and, with comments, lines starting with '#' are skipped.  name and the
 * entry number go into *cause on error.
 */
static int add_entries(struct keyset *k, const char *text, const char *seps, bool comments,
                       const char *name, char **cause)
{
	unsigned n = 0;

	for (const char *p = text; p && *p;) {
		size_t len = strcspn(p, seps);
		const char *q = p + len, *next = *q ? q + 1 : q;

		n++;
		while (p < q && is_blank(*p))
			p++;
		while (q > p && is_blank(q[-1]))
			q--;
		if (q > p && !(comments && *p == '#')) {
			if ((size_t)(q - p) > ACCESS_KEY_MAX) {
				cause_set(cause, -1, "%s: %s %u is longer than %d characters", name,
				          comments ? "line" : "entry", n, ACCESS_KEY_MAX);
				return -1;
			}
			if (keyset_add(k, p, (size_t)(q - p)) < 0) {
				*cause = strdup("out of memory");
				return -1;
			}
		}
		p = next;
	}
	return 0;
}

/* Reads path, at most ACCESS_KEYS_FILE_MAX bytes, NUL-terminated; caller frees. */
static char *read_keys_file(const char *path, char **cause)
{
	FILE *f = fopen(path, "r");
	char *text = NULL;
	size_t n;

	if (!f) {
		cause_set(cause, -1, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	if (!(text = malloc(ACCESS_KEYS_FILE_MAX + 2))) {
		*cause = strdup("out of memory");
		goto out;
	}
	n = fread(text, 1, ACCESS_KEYS_FILE_MAX + 1, f);
	if (ferror(f) || n > ACCESS_KEYS_FILE_MAX || memchr(text, '\0', n)) {
		cause_set(cause, -1, "%s: %s", path, ferror(f) ? strerror(errno) :
		          n > ACCESS_KEYS_FILE_MAX ? "larger than 16 MiB" :
		          "not a text file (contains a NUL byte)");
		free(text);
		text = NULL;
		goto out;
	}
	text[n] = '\0';
out:
	fclose(f);
	return text;
}

/* Builds the allowlist from the inline keys and the file. */
static int load_keys(const char *inline_keys, const char *keys_file, struct keyset *out,
                     char **cause)
{
	char *text = NULL;
	int rc = -1;

	memset(out, 0, sizeof *out);
	if (add_entries(out, inline_keys, ",", false, "allowed-keys", cause) < 0)
		goto out;
	if (*keys_file) {
		if (!(text = read_keys_file(keys_file, cause)))
			goto out;
		if (add_entries(out, text, "\n", true, keys_file, cause) < 0)
			goto out;
	}
	keyset_finish(out);
	rc = 0;
out:
	free(text);
	if (rc < 0)
		keyset_release(out);
	return rc;
}

static int parse_origins(struct keyset *k, const char *list, char **cause)
{
	memset(k, 0, sizeof *k);
	if (add_entries(k, list, ",", false, "allowed-origins", cause) < 0) {
		keyset_release(k);
		return -1;
	}
	return 0;
}

static bool keys_configured(const char *inline_keys, const char *keys_file)
{
	return *keys_file || strspn(inline_keys, " \t,") < strlen(inline_keys);
}

int access_create(struct access **out, const struct access_options *o, char **cause)
{
	struct access *a = calloc(1, sizeof *a);

	*out = NULL;
	*cause = NULL;
	if (!a)
		goto nomem;
	pthread_mutex_init(&a->keys_lock, NULL);
	a->inline_keys = strdup(o->keys ? o->keys : "");
	a->keys_file = strdup(o->keys_file ? o->keys_file : "");
	if (!a->inline_keys || !a->keys_file)
		goto nomem;
	a->keys_on = keys_configured(a->inline_keys, a->keys_file);
	if (load_keys(a->inline_keys, a->keys_file, &a->keys, cause) < 0)
		goto fail;
	if (o->origins && *o->origins) {
		struct keyset k;

		if (parse_origins(&k, o->origins, cause) < 0)
			goto fail;
		a->origins = k.keys;
		a->norigins = k.n;
	}
	if (o->max_conns_per_ip || o->max_msgs_per_ip_per_s) {
		a->limits = iplimit_create(o->max_conns_per_ip, o->max_msgs_per_ip_per_s,
		                           o->ip_table_size);
		if (!a->limits)
			goto nomem;
	}
	if (a->keys_on && a->keys.n == 0)
		log_warn("access_keys_empty", "file=%s msg=\"the API key allowlist is empty: "
		         "every key is refused\"", *a->keys_file ? a->keys_file : "-");
	log_info("access_rules", "keys=%s origins=%zu max_connections_per_ip=%u "
	         "max_messages_per_ip_per_s=%u ip_table_size=%u",
	         a->keys_on ? "allowlist" : "any", a->norigins, o->max_conns_per_ip,
	         o->max_msgs_per_ip_per_s, o->ip_table_size);
	*out = a;
	return 0;
nomem:
	if (!*cause)
		*cause = strdup("out of memory");
fail:
	access_destroy(a);
	return -1;
}

void access_destroy(struct access *a)
{
	if (!a)
		return;
	keyset_release(&a->keys);
	pthread_mutex_destroy(&a->keys_lock);
	for (size_t i = 0; i < a->norigins; i++)
		free(a->origins[i]);
	free(a->origins);
	free(a->inline_keys);
	free(a->keys_file);
	iplimit_destroy(a->limits);
	free(a);
}

int access_reload(struct access *a)
{
	struct keyset fresh, old;
	char *cause = NULL, quoted[300];
	size_t in_force;

	if (!a || !*a->keys_file)
		return 0;
	if (load_keys(a->inline_keys, a->keys_file, &fresh, &cause) < 0) {
		pthread_mutex_lock(&a->keys_lock);
		in_force = a->keys.n;
		pthread_mutex_unlock(&a->keys_lock);
		log_error("keys_reload_failed", "file=%s keys_in_force=%zu reason=%s", a->keys_file,
		          in_force,
		          log_quote(cause ? cause : "out of memory", quoted, sizeof quoted));
		free(cause);
		return -1;
	}
	pthread_mutex_lock(&a->keys_lock);
	old = a->keys;
	a->keys = fresh;
	pthread_mutex_unlock(&a->keys_lock);
	keyset_release(&old);
	log_info("keys_reloaded", "file=%s keys=%zu", a->keys_file, fresh.n);
	if (fresh.n == 0)
		log_warn("access_keys_empty", "file=%s msg=\"the API key allowlist is empty: "
		         "every key is refused\"", a->keys_file);
	return 0;
}

int access_update(struct access *a, const char *keys, const char *keys_file, const char *origins)
{
	struct keyset fresh, fresh_origins = { 0 }, old, old_origins;
	char *cause = NULL, quoted[300], *new_inline, *new_file;

	if (!a)
		return 0;
	/* Built aside from the new sources: a failure changes nothing. */
	new_inline = strdup(keys ? keys : "");
	new_file = strdup(keys_file ? keys_file : "");
	if (!new_inline || !new_file) {
		cause = strdup("out of memory");
		goto fail;
	}
	if (load_keys(new_inline, new_file, &fresh, &cause) < 0)
		goto fail;
	if (origins && *origins && parse_origins(&fresh_origins, origins, &cause) < 0) {
		keyset_release(&fresh);
		goto fail;
	}
	pthread_mutex_lock(&a->keys_lock);
	old = a->keys;
	old_origins = (struct keyset){ a->origins, a->norigins, a->norigins };
	a->keys = fresh;
	a->keys_on = keys_configured(new_inline, new_file);
	a->origins = fresh_origins.keys;
	a->norigins = fresh_origins.n;
	/* The sources too: access_reload reads the file named here. */
	SWAP_STR(a->inline_keys, new_inline);
	SWAP_STR(a->keys_file, new_file);
	pthread_mutex_unlock(&a->keys_lock);
	keyset_release(&old);
	keyset_release(&old_origins);
	free(new_inline);
	free(new_file);
	log_info("access_rules_reloaded", "keys=%s key_count=%zu origins=%zu",
	         a->keys_on ? "allowlist" : "any", fresh.n, fresh_origins.n);
	return 0;
fail:
	log_error("access_reload_failed", "reason=%s msg=\"the keys and origins in force stay\"",
	          log_quote(cause ? cause : "out of memory", quoted, sizeof quoted));
	free(cause);
	free(new_inline);
	free(new_file);
	return -1;
}

bool access_key_allowed(struct access *a, const char *key)
{
	bool found = true;

	if (!a)
		return true;
	pthread_mutex_lock(&a->keys_lock);
	if (a->keys_on)
		found = key && a->keys.n &&
(		        bsearch(&key, a->keys.keys, a->keys.n, sizeof *a->keys.keys, cmp_key));
	pthread_mutex_unlock(&a->keys_lock);
	return found;
}

bool access_origin_allowed(struct access *a, const char *origin)
{
	bool found = false;

	if (!a)
		return true;
	pthread_mutex_lock(&a->keys_lock);
	if (!a->origins)
		found = true;
	else if (origin)
		for (size_t i = 0; i < a->norigins && !found; i++)
			found = !strcasecmp(a->origins[i], origin);
	pthread_mutex_unlock(&a->keys_lock);
	return found;
}

const char *access_verdict_reason(enum access_verdict v)
{
	switch (v) {
	case ACCESS_OK: return "ok";
	case ACCESS_TOO_MANY:
		return "too many connections from this address (max-connections-per-ip)";
	case ACCESS_TABLE_FULL: return "too many client addresses at once (ip-table-size)";
	}
	return "refused";
}

enum access_verdict access_conn_acquire(struct access *a, const char *ip)
{
	switch (iplimit_acquire(a ? a->limits : NULL, ip)) {
	case IPLIMIT_OK: return ACCESS_OK;
	case IPLIMIT_TOO_MANY: return ACCESS_TOO_MANY;
	case IPLIMIT_FULL: return ACCESS_TABLE_FULL;
	}
	return ACCESS_TABLE_FULL;
}

void access_conn_release(struct access *a, const char *ip)
{
	iplimit_release(a ? a->limits : NULL, ip);
}

bool access_message_at(struct access *a, const char *ip, int64_t now_ms)
{
	return iplimit_message(a ? a->limits : NULL, ip, now_ms);
}

bool access_message(struct access *a, const char *ip)
{
	return access_message_at(a, ip, mono_ms());
}

size_t access_tracked(struct access *a)
{
	return iplimit_tracked(a ? a->limits : NULL);
}

size_t access_key_count(struct access *a)
{
	size_t n;

	if (!a)
		return 0;
	pthread_mutex_lock(&a->keys_lock);
	n = a->keys.n;
	pthread_mutex_unlock(&a->keys_lock);
	return n;
}
