/*
 * tls.h - the listener's certificate and key.  Either the operator's PEM
 * files, or a self-signed ECDSA P-256 pair generated once into the state
 * directory and reused on later starts.
 */
#ifndef WATCHRTC_TLS_H
#define WATCHRTC_TLS_H

#include <stddef.h>

struct tls_pair {
	char *cert_pem;     /* NUL-terminated PEM */
	char *key_pem;
	char fingerprint[96]; /* SHA-256 of the certificate, "AB:CD:..." */
	int generated;      /* 1 if made by tls_load, 0 if read from files */
};

/*
 * Loads cert_file/key_file, or when both are NULL or "", loads or creates
 * state_dir/tls-cert.pem and state_dir/tls-key.pem (key mode 0600).
 * Refuses a key file others can read (its group may: fsGroup, ssl-cert).
 * On error returns -1 and sets *cause (malloc'd, caller frees).
 */
int tls_load(struct tls_pair *p, const char *cert_file, const char *key_file,
             const char *state_dir, char **cause) __attribute__((warn_unused_result));
/* tls_load that creates nothing (for --check-config): when the pair would
 * be generated, returns 0 with p->cert_pem NULL. */
int tls_load_existing(struct tls_pair *p, const char *cert_file, const char *key_file,
                      const char *state_dir, char **cause) __attribute__((warn_unused_result));
void tls_pair_release(struct tls_pair *p);

#endif
