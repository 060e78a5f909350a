/*
 * queue_hello.c - the upstream's hello per API key (queue.h), in memory and
 * in the hellos table.  A hello changes rarely (when the backend's settings
 * for a project change), so a change is written at once, through a
 * connection of its own: the writer thread's batches stay about messages,
 * and the caller waits for one small commit only when something changed.
 */
#include <stdlib.h>
#include <string.h>

#include "queue_internal.h"

static void hello_free(struct hello *h)
{
	if (!h)
		return;
	free(h->key);
	free(h->text);
	free(h);
}

/* Adds key -> text in front of the list (it is the newest), dropping the
 * oldest beyond QUEUE_HELLO_KEYS.  hello_mu held (or no other thread). */
static int hello_put(struct queue *q, const char *key, const char *text)
{
	struct hello *h = calloc(1, sizeof *h), **pp;

	if (!h || !(h->key = strdup(key)) || !(h->text = strdup(text))) {
		hello_free(h);
		return QUEUE_ENOMEM;
	}
	h->next = q->hellos;
	q->hellos = h;
	if (++q->nhellos > QUEUE_HELLO_KEYS) {
		for (pp = &q->hellos; (*pp)->next; pp = &(*pp)->next)
			;
		hello_free(*pp);
		*pp = NULL;
		q->nhellos--;
	}
	return QUEUE_OK;
}

/* Unlinks and returns key's hello; hello_mu held. */
static struct hello *hello_take(struct queue *q, const char *key)
{
	struct hello **pp, *h;

	for (pp = &q->hellos; ((h = *pp)); pp = &h->next) {
		if (strcmp(h->key, key) == 0) {
			*pp = h->next;
			q->nhellos--;
			return h;
		}
	}
	return NULL;
}

int qhello_open(struct queue *q, char **cause)
{
	sqlite3_stmt *st = NULL;
	int rc;

	rc = sqlite3_open_v2(q->path, &q->hdb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_busy_timeout(q->hdb, BUSY_TIMEOUT_MS);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(q->hdb, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
	/* Oldest first, so that each one added goes in front. */
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(q->hdb, "SELECT api_key, hello FROM hellos "
		                        "ORDER BY updated_ms LIMIT ?1 OFFSET max(0, "
		                        "(SELECT count(*) FROM hellos) - ?1)", -1, &st, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int(st, 1, QUEUE_HELLO_KEYS);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			const char *k = (const char *)sqlite3_column_text(st, 0);
			const char *t = (const char *)sqlite3_column_text(st, 1);

			if (k && t && hello_put(q, k, t) != QUEUE_OK) {
				rc = SQLITE_NOMEM;
				break;
			}
		}
		if (rc == SQLITE_DONE)
			rc = SQLITE_OK;
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_OK)
		return cause_set(cause, QUEUE_EIO, "queue database %s: hellos: %s", q->path,
(		              q->hdb) ? sqlite3_errmsg(q->hdb) : sqlite3_errstr(rc));
	return QUEUE_OK;
}

void qhello_close(struct queue *q)
{
	struct hello *h, *next;

	for (h = q->hellos; h; h = next) {
		next = h->next;
		hello_free(h);
	}
	q->hellos = NULL;
	q->nhellos = 0;
	(void)sqlite3_close(q->hdb);
	q->hdb = NULL;
}

char *queue_hello_get(struct queue *q, const char *key)
{
	struct hello *h;
	char *text = NULL;

	if (!q || !key)
		return NULL;
	pthread_mutex_lock(&q->hello_mu);
	for (h = q->hellos; h; h = h->next) {
		if (strcmp(h->key, key) == 0) {
			text = strdup(h->text);
			break;
		}
	}
	pthread_mutex_unlock(&q->hello_mu);
	return text;
}

int queue_hello_set(struct queue *q, const char *key, const char *text)
{
	struct hello *h;
	sqlite3_stmt *st = NULL;
	int rc, err;

	if (!q || !key || !text || strlen(text) > QUEUE_HELLO_MAX)
		return QUEUE_EINVAL;
	pthread_mutex_lock(&q->hello_mu);
	h = hello_take(q, key);
	if (h && strcmp(h->text, text) == 0) {
		h->next = q->hellos;    /* unchanged: nothing to write */
		q->hellos = h;
		q->nhellos++;
		pthread_mutex_unlock(&q->hello_mu);
		return QUEUE_OK;
	}
	hello_free(h);
	err = hello_put(q, key, text);
	/* The SDK connections' loops read hellos: they do not wait for this
	 * commit. */
	pthread_mutex_lock(&q->hello_db_mu);
	pthread_mutex_unlock(&q->hello_mu);
	rc = sqlite3_prepare_v2(q->hdb,
	                        "INSERT OR REPLACE INTO hellos (api_key, hello, updated_ms) "
	                        "VALUES (?1, ?2, ?3)",
	                        -1, &st, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, wall_ms());
		rc = qstore_step_reset(st);
	}
	sqlite3_finalize(st);
	pthread_mutex_unlock(&q->hello_db_mu);
	if (err == QUEUE_OK && rc != SQLITE_OK)
		err = QUEUE_EIO;  /* known in memory; the next change writes it again */
	return err;
}
