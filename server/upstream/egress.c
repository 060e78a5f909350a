/*
 * egress.c - the upstream's proxy, as logged, and the combined CA bundle
 * (egress.h).
 */
#include "egress.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cause.h"
#include "log.h"

#define EGRESS_CA_MAX (16 * 1024 * 1024)   /* a CA file larger than this is not one */

const char *egress_mask_url(const char *url, char *out, size_t size)
{
	const char *auth = strstr(url, "://"), *at, *colon, *slash;

	auth = auth ? auth + 3 : url;
	slash = strchr(auth, '/');
	at = strchr(auth, '@');
	/* user:password@ comes before the host; an '@' after a '/' is path. */
	if (at && (!slash || at < slash)) {
		colon = memchr(auth, ':', (size_t)(at - auth));
		if (colon) {
			snprintf(out, size, "%.*s***%s", (int)(colon + 1 - url), url, at);
			return out;
		}
	}
	snprintf(out, size, "%s", url);
	return out;
}

/* The first of names set to something, or NULL; *source names it. */
static const char *first_set(const char *const *names, const char **source)
{
	for (; *names; names++) {
		const char *v = getenv(*names);

		if (v && *v) {
			if (source)
				*source = *names;
			return v;
		}
	}
	return NULL;
}

const char *egress_env_proxy(bool https, const char **source)
{
	/* libcurl's order, for the scheme of the URL it is given. */
	static const char *const https_vars[] = { "https_proxy", "HTTPS_PROXY", "all_proxy",
	                                          "ALL_PROXY", NULL };
	static const char *const http_vars[] = { "http_proxy", "all_proxy", "ALL_PROXY", NULL };

	return first_set(https ? https_vars : http_vars, source);
}

const char *egress_env_no_proxy(void)
{
	static const char *const vars[] = { "no_proxy", "NO_PROXY", NULL };

	return first_set(vars, NULL);
}

void egress_log_proxy(const char *setting, const char *upstream)
{
	const char *value = NULL, *source = "none", *no_proxy = egress_env_no_proxy();
	char masked[512], q1[600], q2[600];

	if (setting) {
		value = setting;
		source = "upstream-proxy";
	} else {
		value = egress_env_proxy(strncmp(upstream, "http://", 7) != 0, &source);
	}
	if (!value) {
		log_info("upstream_proxy", "proxy=none msg=\"upstream connections are direct: no "
		         "upstream-proxy and no proxy in the environment\"");
		return;
	}
	log_info("upstream_proxy", "proxy=%s source=%s no_proxy=%s",
	         log_quote(egress_mask_url(value, masked, sizeof masked), q1, sizeof q1), source,
	         setting ? "(ignored)" : log_quote(no_proxy ? no_proxy : "", q2, sizeof q2));
}

/* Appends the file at path to fd; 0 or -1 (errno). */
static int append_file(int fd, const char *path, size_t *total)
{
	char buf[65536];
	ssize_t n;
	int in = open(path, O_RDONLY | O_CLOEXEC), rc = 0;

	if (in < 0)
		return -1;
	while ((n = read(in, buf, sizeof buf)) > 0) {
		*total += (size_t)n;
		if (*total > EGRESS_CA_MAX) {
			errno = EFBIG;
			rc = -1;
			break;
		}
		if (write(fd, buf, (size_t)n) != n) {
			rc = -1;
			break;
		}
	}
	if (n < 0)
		rc = -1;
	/* PEM blocks must start on a line of their own. */
	if (rc == 0 && write(fd, "\n", 1) != 1)
		rc = -1;
	close(in);
	return rc;
}

int egress_ca_bundle(const char *base, const char *extra, const char *out_path, char **cause)
{
	char tmp[4096];
	const char *failed = out_path;
	size_t total = 0;
	int fd;

	*cause = NULL;
	snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		goto fail;
	if (append_file(fd, base, &total) < 0) {
		failed = base;
		goto fail_fd;
	}
	if (append_file(fd, extra, &total) < 0) {
		failed = extra;
		goto fail_fd;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	if (rename(tmp, out_path) < 0)
		goto fail;
	return 0;
fail_fd: {
	int saved = errno;

	close(fd);
	errno = saved;
}
fail:
	cause_set(cause, -1, "cannot make the CA bundle %s from %s: %s", out_path, failed,
	          strerror(errno));
	unlink(tmp);
	return -1;
}
