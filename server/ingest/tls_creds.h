/*
 * tls_creds.h - the certificate and key the TLS listener presents, as
 * parsed GnuTLS credentials that SIGHUP swaps without dropping a
 * connection.  The listener asks for them at every handshake through
 * gnutls_certificate_set_retrieve_function2, whose callback takes no
 * argument of ours, so there is one set of live credentials per process.
 */
#ifndef WATCHRTC_TLS_CREDS_H
#define WATCHRTC_TLS_CREDS_H

#include <gnutls/abstract.h>

struct tls_pair;

/*
 * Parses p and makes it what new handshakes get; connections already open
 * keep theirs.  Refuses a certificate whose key is not p's key, and leaves
 * the current credentials in place on any failure (-1, *cause malloc'd).
 */
int tls_creds_install(const struct tls_pair *p, char **cause)
	__attribute__((warn_unused_result));

/* What tls_creds_install refuses, without installing anything: 0, or -1
 * and *cause (malloc'd). */
int tls_creds_check(const struct tls_pair *p, char **cause)
	__attribute__((warn_unused_result));

/* Frees every credential; only once no handshake can run any more. */
void tls_creds_release(void);

/* The gnutls_certificate_retrieve_function2 that hands out the current
 * credentials. */
int tls_creds_retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_dn, int nreqs,
                       const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
                       gnutls_pcert_st **pcert, unsigned int *pcert_length,
                       gnutls_privkey_t *pkey);

#endif
