/*
 * tls_creds.c - the listener's live credentials (tls_creds.h).
 *
 * GnuTLS uses what the retrieve callback returns during the handshake
 * without copying or freeing it.  So credentials that a reload replaces are
 * not freed at once: they are kept, retired, for longer than any handshake
 * may take (the listener closes a connection idle for 30 s), and freed by a
 * later reload or at shutdown.  The number kept is bounded: a reload that
 * would exceed it is refused and logged, and the current credentials stay.
 */
#include "tls_creds.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "cause.h"
#include "clock.h"
#include "tls.h"

#define TLS_CHAIN_MAX 16          /* certificates in a chain */
#define TLS_RETIRED_MAX 32        /* replaced credentials kept for handshakes in progress */
#define TLS_RETIRE_GRACE_S 120    /* how long they are kept: longer than any handshake */

struct tls_creds {
	gnutls_pcert_st pcert[TLS_CHAIN_MAX];
	unsigned npcert;
	gnutls_privkey_t key;
	time_t retired_at;            /* CLOCK_MONOTONIC seconds */
};

static struct {
	pthread_mutex_t mu;
	struct tls_creds *current;
	struct tls_creds *retired[TLS_RETIRED_MAX];
	size_t nretired;
} live = { .mu = PTHREAD_MUTEX_INITIALIZER };

static time_t mono_s(void)
{
	return (time_t)(mono_ms() / 1000);
}

static void creds_free(struct tls_creds *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->npcert; i++)
		gnutls_pcert_deinit(&c->pcert[i]);
	gnutls_privkey_deinit(c->key);
	free(c);
}

/* True if the certificate's public key is the private key's. */
static bool key_matches(gnutls_pcert_st *cert, gnutls_privkey_t key)
{
	unsigned char a[64], b[64];
	size_t alen = sizeof a, blen = sizeof b;
	gnutls_pubkey_t pub = NULL;
	bool same = false;

	if (gnutls_pubkey_init(&pub) < 0)
		return false;
	if (gnutls_pubkey_import_privkey(pub, key, 0, 0) == 0 &&
	    gnutls_pubkey_get_key_id(pub, 0, a, &alen) == 0 &&
	    gnutls_pubkey_get_key_id(cert->pubkey, 0, b, &blen) == 0)
		same = alen == blen && memcmp(a, b, alen) == 0;
	gnutls_pubkey_deinit(pub);
	return same;
}

static int creds_create(struct tls_creds **out, const struct tls_pair *p, char **cause)
{
	struct tls_creds *c = calloc(1, sizeof *c);
	gnutls_datum_t cert = { (unsigned char *)p->cert_pem, (unsigned)strlen(p->cert_pem) };
	gnutls_datum_t key = { (unsigned char *)p->key_pem, (unsigned)strlen(p->key_pem) };
	const char *what = "out of memory";
	int err = 0;

	*out = NULL;
	if (!c)
		goto fail;
	c->npcert = TLS_CHAIN_MAX;
	what = "the certificate chain";
	err = gnutls_pcert_list_import_x509_raw(c->pcert, &c->npcert, &cert,
	                                        GNUTLS_X509_FMT_PEM, 0);
	if (err < 0) {
		c->npcert = 0;
		goto fail;
	}
	what = "the private key";
	if ((err = gnutls_privkey_init(&c->key)) < 0 ||
	    (err = gnutls_privkey_import_x509_raw(c->key, &key, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0)
		goto fail;
	if (c->npcert == 0 || !key_matches(&c->pcert[0], c->key)) {
		what = "the key";
		err = 0;
		goto fail;
	}
	*out = c;
	return 0;
fail:
	cause_set(cause, -1, "cannot use %s: %s", what,
	          err < 0 ? gnutls_strerror(err) : "it is not the certificate's key");
	creds_free(c);
	return -1;
}

int tls_creds_check(const struct tls_pair *p, char **cause)
{
	struct tls_creds *c = NULL;

	*cause = NULL;
	if (creds_create(&c, p, cause) < 0)
		return -1;
	creds_free(c);
	return 0;
}

/* Frees the retired credentials no handshake can still use.  Locked. */
static void retired_sweep(time_t now)
{
	size_t i, kept = 0;

	for (i = 0; i < live.nretired; i++) {
		if (now - live.retired[i]->retired_at >= TLS_RETIRE_GRACE_S)
			creds_free(live.retired[i]);
		else
			live.retired[kept++] = live.retired[i];
	}
	live.nretired = kept;
}

int tls_creds_install(const struct tls_pair *p, char **cause)
{
	struct tls_creds *c = NULL;
	time_t now = mono_s();
	int rc = 0;

	*cause = NULL;
	if (creds_create(&c, p, cause) < 0)
		return -1;
	pthread_mutex_lock(&live.mu);
	retired_sweep(now);
	if (live.current && live.nretired == TLS_RETIRED_MAX) {
		rc = -1;
	} else {
		if (live.current) {
			live.current->retired_at = now;
			live.retired[live.nretired++] = live.current;
		}
		live.current = c;
		c = NULL;
	}
	pthread_mutex_unlock(&live.mu);
	if (rc < 0)
		cause_set(cause, rc, "%d certificates were replaced in the last %d s: wait before "
		          "reloading again", TLS_RETIRED_MAX, TLS_RETIRE_GRACE_S);
	creds_free(c);
	return rc;
}

void tls_creds_release(void)
{
	pthread_mutex_lock(&live.mu);
	creds_free(live.current);
	live.current = NULL;
	for (size_t i = 0; i < live.nretired; i++)
		creds_free(live.retired[i]);
	live.nretired = 0;
	pthread_mutex_unlock(&live.mu);
}

int tls_creds_retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                       const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                       gnutls_pcert_st **pcert, unsigned int *pcert_length,
                       gnutls_privkey_t *pkey)
{
	int rc = -1;

	pthread_mutex_lock(&live.mu);
	if (live.current) {
		*pcert = live.current->pcert;
		*pcert_length = live.current->npcert;
		*pkey = live.current->key;
		rc = 0;
	}
	pthread_mutex_unlock(&live.mu);
	return rc;
}
