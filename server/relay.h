/*
 * relay.h - the parts of one running relay, wired together by main.c and
 * handed to the HTTP routes.  Each part is an opaque module of its own.
 */
#ifndef WATCHRTC_RELAY_H
#define WATCHRTC_RELAY_H

#include <stdatomic.h>
#include <stdbool.h>

#include "config.h"

struct queue;
struct keyban;
struct ws_server;
struct access;
struct trusted_proxies;
struct listener;

struct relay {
	struct config cfg;
	struct queue *queue;
	struct keyban *keyban;
	struct ws_server *ws;
	struct access *access;              /* allowlists and per-client limits */
	struct trusted_proxies *proxies;    /* whose X-Forwarded-For is believed */
	struct listener *listener;          /* set by http_server_start: takes upgrades */
	/* max-connections and max-http-connections as fitted to the open-file
	 * limit at start (main.c); cfg keeps the configured ones, so that a
	 * SIGHUP does not take the fit for a change. */
	unsigned max_connections, max_http_connections;
	atomic_bool stopping;   /* set on SIGTERM: refuse new work */
};

#endif
