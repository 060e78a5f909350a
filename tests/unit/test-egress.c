/* test-egress.c - proxy URLs as logged (no password) and the combined CA bundle. */
#include "egress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tap.h"
#include "testutil.h"

static void mask(const char *url, const char *want, const char *what)
{
	char out[256];

	is_str(egress_mask_url(url, out, sizeof out), want, "%s", what);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf = calloc(1, 65536);
	size_t n = 0;

	if (f && buf)
		n = fread(buf, 1, 65535, f);
	if (f)
		fclose(f);
	if (buf)
		buf[n] = '\0';
	return buf;
}

static void put(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");

	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

int main(void)
{
	char base[300], extra[300], out[300], *text, *cause = NULL, *dir;

	mask("http://proxy.example:3128", "http://proxy.example:3128", "no credentials: unchanged");
	mask("http://user:secret@proxy.example:3128", "http://user:***@proxy.example:3128",
	     "the password is masked");
	mask("https://u:p%40ss@10.0.0.1:8443/", "https://u:***@10.0.0.1:8443/",
	     "an escaped '@' too");
	mask("socks5h://only-user@proxy:1080", "socks5h://only-user@proxy:1080",
	     "a user without a password is kept");
	mask("user:secret@proxy:3128", "user:***@proxy:3128", "without a scheme");
	mask("http://proxy:3128/a:b@c", "http://proxy:3128/a:b@c",
	     "an '@' in the path is not a password");
	mask("", "", "empty");

	dir = tmpdir_create("test-egress");
	snprintf(base, sizeof base, "%s/base.pem", dir);
	snprintf(extra, sizeof extra, "%s/extra.pem", dir);
	snprintf(out, sizeof out, "%s/bundle.pem", dir);
	put(base, "-----BEGIN CERTIFICATE-----\nBASE\n-----END CERTIFICATE-----");
	put(extra, "-----BEGIN CERTIFICATE-----\nEXTRA\n-----END CERTIFICATE-----\n");
	is_int(egress_ca_bundle(base, extra, out, &cause), 0, "the bundle is made");
	text = slurp(out);
	is_str(text, "-----BEGIN CERTIFICATE-----\nBASE\n-----END CERTIFICATE-----\n"
	       "-----BEGIN CERTIFICATE-----\nEXTRA\n-----END CERTIFICATE-----\n\n",
	       "the base then the extra certificates, each block on lines of its own");
	free(text);
	snprintf(extra, sizeof extra, "%s/missing.pem", dir);
	is_int(egress_ca_bundle(base, extra, out, &cause), -1, "a missing extra file fails");
	ok(cause && strstr(cause, "missing.pem"), "naming it: %s", cause ? cause : "");
	free(cause);
	text = slurp(out);
	ok(text && strstr(text, "EXTRA"), "and leaves the previous bundle in place");
	free(text);
	tmpdir_remove(dir);
	return done_testing();
}
