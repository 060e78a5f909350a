/*
 * tls.c - the listener's certificate: the operator's files, or a
 * self-signed ECDSA P-256 pair made once and kept in the state directory.
 *
 * ECDSA P-256 because its handshakes cost about a third of RSA-2048's on
 * the machines we measured, and a relay's busiest moment is a reconnect
 * storm after a restart.
 */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "cause.h"
#include "log.h"

#define TLS_FILE_MAX (1024 * 1024)        /* a PEM file larger than this is refused */
#define TLS_SELF_SIGNED_DAYS (10 * 365)

/* Reads a whole file into a NUL-terminated buffer (caller frees). */
static char *read_file(const char *path, char **cause)
{
	char *buf = NULL;
	struct stat st;
	ssize_t got;
	size_t len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		cause_set(cause, -1, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0 || st.st_size > TLS_FILE_MAX) {
		cause_set(cause, -1, "%s is not a readable PEM file of at most 1 MiB", path);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		goto out;
	while ((got = read(fd, buf + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)got;
	if (got < 0) {
		cause_set(cause, -1, "cannot read %s: %s", path, strerror(errno));
		free(buf);
		buf = NULL;
		goto out;
	}
	buf[len] = '\0';
out:
	close(fd);
	return buf;
}

/* Writes data to path atomically (temp file, fsync, rename) with mode.  The
 * temp file is made afresh, never opened through a symlink or reused: one
 * planted there would otherwise receive the private key. */
static int write_file(const char *path, const void *data, size_t len, mode_t mode)
{
	char tmp[4096];
	int fd, rc = -1;

	if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
		return -1;
	if (unlink(tmp) < 0 && errno != ENOENT)   /* a leftover, or a symlink: itself */
		return -1;
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return -1;
	if (write(fd, data, len) != (ssize_t)len || fsync(fd) < 0)
		goto out;
	if (rename(tmp, path) < 0)
		goto out;
	rc = 0;
out:
	close(fd);
	if (rc < 0)
		unlink(tmp);
	return rc;
}

static int fingerprint_of(const char *cert_pem, char *out, size_t size)
{
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t d = { (unsigned char *)cert_pem, (unsigned)strlen(cert_pem) };
	unsigned char md[32];
	size_t mdlen = sizeof md;
	int rc = -1;

	if (gnutls_x509_crt_init(&crt) < 0)
		return -1;
	if (gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM) < 0)
		goto out;
	if (gnutls_x509_crt_get_fingerprint(crt, GNUTLS_DIG_SHA256, md, &mdlen) < 0)
		goto out;
	if (size < mdlen * 3)
		goto out;
	for (size_t i = 0; i < mdlen; i++)
		snprintf(out + 3 * i, 4, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");
	rc = 0;
out:
	gnutls_x509_crt_deinit(crt);
	return rc;
}

/* Makes a self-signed ECDSA P-256 certificate for "watchrtc-relay". */
static int generate_pair(char **cert_pem, char **key_pem, char **cause)
{
	gnutls_x509_privkey_t key = NULL;
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t c = { NULL, 0 }, k = { NULL, 0 };
	unsigned char serial[16];
	time_t now = time(NULL);
	int rc = -1, err;

	if ((err = gnutls_x509_privkey_init(&key)) < 0 ||
	    (err = gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
	                                        GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1),
	                                        0)) < 0 ||
	    (err = gnutls_x509_crt_init(&crt)) < 0 ||
	    (err = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial)) < 0)
		goto fail;
	serial[0] &= 0x7f; /* a positive serial number */
	if ((err = gnutls_x509_crt_set_version(crt, 3)) < 0 ||
	    (err = gnutls_x509_crt_set_serial(crt, serial, sizeof serial)) < 0 ||
	    (err = gnutls_x509_crt_set_activation_time(crt, now - 3600)) < 0 ||
	    (err = gnutls_x509_crt_set_expiration_time(crt, now + (time_t)TLS_SELF_SIGNED_DAYS *
	                                                                    86400)) < 0 ||
	    (err = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0,
	                                         "watchrtc-relay", 14)) < 0 ||
	    (err = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, "localhost", 9,
	                                                GNUTLS_FSAN_APPEND)) < 0 ||
	    (err = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, "\x7f\0\0\x01",
	                                                4, GNUTLS_FSAN_APPEND)) < 0 ||
	    (err = gnutls_x509_crt_set_key(crt, key)) < 0 ||
	    (err = gnutls_x509_crt_set_basic_constraints(crt, 0, -1)) < 0 ||
	    (err = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0 ||
	    (err = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0)) < 0 ||
	    (err = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0)) < 0 ||
	    (err = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &c)) < 0 ||
	    (err = gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &k)) < 0)
		goto fail;
	*cert_pem = strndup((char *)c.data, c.size);
	*key_pem = strndup((char *)k.data, k.size);
	if (!*cert_pem || !*key_pem) {
		free(*cert_pem);
		free(*key_pem);
		*cert_pem = *key_pem = NULL;
		*cause = strdup("out of memory");
		goto out;
	}
	rc = 0;
	goto out;
fail:
	cause_set(cause, -1, "cannot generate a certificate: %s", gnutls_strerror(err));
out:
	if (k.data)
		gnutls_memset(k.data, 0, k.size);
	gnutls_free(c.data);
	gnutls_free(k.data);
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
	return rc;
}

/*
 * A key others can read is a leaked key: refuse it.  Its group may read it:
 * that is how Kubernetes' fsGroup (a Secret's 0400 becomes 0440) and
 * Debian's ssl-cert group (0640) share a key with a service.
 */
static int check_key_mode(const char *path, char **cause)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		cause_set(cause, -1, "cannot stat %s: %s", path, strerror(errno));
		return -1;
	}
	if (st.st_mode & 007) {
		cause_set(cause, -1, "%s is accessible by others (mode %04o): chmod 600 or 640 it",
		          path, (unsigned)(st.st_mode & 07777));
		return -1;
	}
	return 0;
}

static int load_files(struct tls_pair *p, const char *cert_file, const char *key_file,
                      char **cause)
{
	if (check_key_mode(key_file, cause) < 0)
		return -1;
	p->cert_pem = read_file(cert_file, cause);
	if (!p->cert_pem)
		return -1;
	p->key_pem = read_file(key_file, cause);
	if (!p->key_pem)
		return -1;
	return 0;
}

static int load_pair(struct tls_pair *p, const char *cert_file, const char *key_file,
                     const char *state_dir, bool may_generate, char **cause)
{
	char cert_path[4096], key_path[4096];
	bool have_cert = cert_file && *cert_file, have_key = key_file && *key_file;

	memset(p, 0, sizeof *p);
	*cause = NULL;
	if (have_cert != have_key) {
		*cause = strdup("--tls-cert and --tls-key go together: give both or neither");
		return -1;
	}
	if (have_cert) {
		if (load_files(p, cert_file, key_file, cause) < 0)
			goto fail;
	} else {
		snprintf(cert_path, sizeof cert_path, "%s/tls-cert.pem", state_dir);
		snprintf(key_path, sizeof key_path, "%s/tls-key.pem", state_dir);
		if (access(cert_path, F_OK) == 0 && access(key_path, F_OK) == 0) {
			if (load_files(p, cert_path, key_path, cause) < 0)
				goto fail;
		} else if (!may_generate) {
			return 0;
		} else {
			if (generate_pair(&p->cert_pem, &p->key_pem, cause) < 0)
				goto fail;
			/* Key first: a certificate without its key would be reused
			 * on the next start and fail there. */
			if (write_file(key_path, p->key_pem, strlen(p->key_pem), 0600) < 0 ||
			    write_file(cert_path, p->cert_pem, strlen(p->cert_pem), 0644) < 0) {
				cause_set(cause, -1, "cannot write %s: %s", key_path,
				          strerror(errno));
				goto fail;
			}
			p->generated = 1;
		}
	}
	if (fingerprint_of(p->cert_pem, p->fingerprint, sizeof p->fingerprint) < 0) {
		cause_set(cause, -1, "%s is not a PEM certificate",
		          have_cert ? cert_file : cert_path);
		goto fail;
	}
	if (!have_cert && may_generate)
		log_warn(
			"tls_self_signed",
			"cert=%s sha256=%s msg=\"SELF-SIGNED CERTIFICATE in use: browsers will refuse it "
			"unless trusted; give --tls-cert and --tls-key for production\"",
			cert_path, p->fingerprint);
	return 0;
fail:
	tls_pair_release(p);
	return -1;
}

int tls_load(struct tls_pair *p, const char *cert_file, const char *key_file,
             const char *state_dir, char **cause)
{
	return load_pair(p, cert_file, key_file, state_dir, true, cause);
}

int tls_load_existing(struct tls_pair *p, const char *cert_file, const char *key_file,
                      const char *state_dir, char **cause)
{
	return load_pair(p, cert_file, key_file, state_dir, false, cause);
}

void tls_pair_release(struct tls_pair *p)
{
	if (!p)
		return;
	if (p->key_pem)
		gnutls_memset(p->key_pem, 0, strlen(p->key_pem));
	free(p->key_pem);
	free(p->cert_pem);
	p->key_pem = p->cert_pem = NULL;
}
