/*
 * admin.h - the optional admin listener: plain HTTP for /metrics and
 * /healthcheck, for a Prometheus scraper or a probe on the same host.  It
 * serves nothing else, and only on a loopback address unless the operator
 * says otherwise (admin-allow-remote), because it has no TLS.
 */
#ifndef WATCHRTC_ADMIN_H
#define WATCHRTC_ADMIN_H

#include <stdbool.h>

struct relay;
struct admin_server;

/* What admin_server_start refuses, checked without opening anything (for
 * --check-config): 0, or -1 and *cause (malloc'd). */
int admin_check_listen(const char *spec, bool allow_remote, char **cause)
	__attribute__((warn_unused_result));

/* Starts listening on r->cfg.admin_listen ("ADDR:PORT", "[V6]:PORT"); with
 * an empty setting does nothing and sets *out to NULL.  On failure *cause
 * (malloc'd, caller frees) says why. */
int admin_server_start(struct admin_server **out, struct relay *r, char **cause)
	__attribute__((warn_unused_result));
void admin_server_stop(struct admin_server *s);  /* accepts NULL */

/* Splits "ADDR:PORT" or "[V6ADDR]:PORT" (exposed for tests): 0 or -1. */
int admin_parse_listen(const char *spec, char *addr, unsigned addr_size, unsigned *port);

#endif
