/*
 * egress.h - how the relay reaches the upstream through a corporate
 * firewall: which proxy is in force (the upstream-proxy setting, or the
 * https_proxy / no_proxy environment libcurl reads), logged without its
 * credentials, and a CA bundle that adds a TLS-inspecting proxy's CA to the
 * system's rather than replacing it.
 */
#ifndef WATCHRTC_EGRESS_H
#define WATCHRTC_EGRESS_H

#include <stdbool.h>
#include <stddef.h>

/* url with any password replaced by "***" ("http://u:***@proxy:3128"),
 * written into out (cut to fit).  Returns out. */
const char *egress_mask_url(const char *url, char *out, size_t size);

/*
 * Logs the proxy the upstream connections use: setting when not NULL,
 * else the environment variable libcurl takes for upstream's scheme
 * (https_proxy, HTTPS_PROXY or all_proxy for https://; http_proxy for
 * http://), with no_proxy; or that there is none.
 */
void egress_log_proxy(const char *setting, const char *upstream);

/* The proxy the environment names for an https:// upstream (https is true:
 * https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY) or an http:// one
 * (http_proxy, all_proxy, ALL_PROXY), read in libcurl's order: the first
 * set and not empty, or NULL.  *source (when not NULL) names the variable.
 * Every kind of upstream connection asks here, so they agree with the log. */
const char *egress_env_proxy(bool https, const char **source);
/* no_proxy, else NO_PROXY, or NULL. */
const char *egress_env_no_proxy(void);

/*
 * Writes base (a PEM bundle) followed by extra (PEM CA certificates) to
 * out_path, replacing it atomically (mode 0644: certificates are public).
 * libcurl-gnutls takes a CA file, not a blob, hence the file.  0, or -1 and
 * *cause (malloc'd).
 */
int egress_ca_bundle(const char *base, const char *extra, const char *out_path, char **cause)
	__attribute__((warn_unused_result));

#endif
