/*
 * egress.h - how the relay reaches the upstream through a corporate
 * firewall: which proxy is in force (the upstream-proxy setting, or the
 * https_proxy / no_proxy environment libcurl reads), logged without its
 * credentials, and a CA bundle that adds a TLS-inspecting proxy's CA to the
 * system's rather than replacing it.
 */
#ifndef WATCHRTC_EGRESS_H
#define WATCHRTC_EGRESS_H

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

/*
 * Writes base (a PEM bundle) followed by extra (PEM CA certificates) to
 * out_path, replacing it atomically (mode 0644: certificates are public).
 * libcurl-gnutls takes a CA file, not a blob, hence the file.  0, or -1 and
 * *cause (malloc'd).
 */
int egress_ca_bundle(const char *base, const char *extra, const char *out_path, char **cause)
	__attribute__((warn_unused_result));

#endif
