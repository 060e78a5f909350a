/*
 * config.h - every setting of the relay, from defaults, a config file
 * ("key = value" lines, '#' comments) and the command line ("--key value",
 * "--key=value", and "--key" alone for a boolean), in that order of
 * precedence from lowest to highest.  One table in config.c names each
 * setting once; --help, the file parser and the README are made from it.
 */
#ifndef WATCHRTC_CONFIG_H
#define WATCHRTC_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct config {
	/* listener */
	char *listen_address;
	unsigned port;
	char *tls_cert, *tls_key;   /* "" = generate a self-signed pair in state_dir */
	char *tls_priorities;
	unsigned http_threads;
	unsigned max_connections;    /* all client connections, websockets included */
	unsigned max_http_connections; /* of them, not yet upgraded (3 descriptors each) */
	unsigned request_timeout_s;  /* a request's TLS handshake, head and body */
	uint64_t max_header_bytes;   /* per-connection memory: request head and headers */
	/* access control (access.c, clientip.c) */
	char *allowed_keys;          /* comma list; "" = no inline keys */
	char *allowed_keys_file;     /* one key per line; "" = none; reloaded on SIGHUP */
	char *allowed_origins;       /* comma list; "" = any origin */
	char *trusted_proxies;       /* comma list of CIDR blocks; "" = none */
	bool proxy_protocol;         /* PROXY headers from trusted proxies name the client */
	unsigned max_connections_per_ip;     /* 0 = no limit */
	unsigned max_messages_per_ip_per_s;  /* 0 = no limit */
	unsigned ip_table_size;      /* clients tracked for those limits */
	/* storage */
	char *state_dir;
	uint64_t queue_max_bytes, queue_max_messages;
	unsigned queue_max_age_s;
	unsigned queue_high_water_pct;
	unsigned commit_window_ms;
	/* ingest */
	uint64_t max_body_bytes;     /* HTTPS fallback body */
	uint64_t max_message_bytes;  /* one websocket message */
	unsigned max_session_id_bytes; /* a sessionId, query or body */
	unsigned ws_max_queued_frames; /* frames queued to one websocket peer */
	unsigned cors_max_age_s;
	unsigned retry_after_s;      /* Retry-After on 503 */
	/* websocket hello and liveness */
	bool websocket_enabled;      /* false: upgrades get 503 (the SDK falls back to HTTPS) */
	unsigned ws_threads;
	unsigned hello_interval_ms, hello_send_interval;
	bool collect_console_log;
	char *console_log_level;
	char *project_id;            /* "" = not sent */
	unsigned ws_ping_interval_s;
	/* upstream */
	char *upstream;
	char *upstream_ca;           /* "" = the system CA bundle */
	char *upstream_ca_extra;     /* "" = none; else CAs added to upstream_ca's bundle */
	char *upstream_proxy;        /* NULL = libcurl's https_proxy/no_proxy handling */
	bool upstream_insecure;
	char *upstream_http_version; /* "1.1" or "2" */
	char *upstream_protocol;     /* "websocket" or "http-post" */
	unsigned upstream_ws_threads, upstream_fence_messages, upstream_fence_ms;
	unsigned forward_workers, forward_inflight;
	unsigned upstream_timeout_ms, upstream_connect_timeout_ms;
	unsigned retry_base_ms, retry_max_ms;
	unsigned key_reject_ttl_s;
	/* monitoring */
	char *admin_listen;          /* "" = no admin listener; else "ADDR:PORT" */
	bool admin_allow_remote;     /* allow a non-loopback admin-listen (plain HTTP) */
	bool tls_metrics;            /* /metrics on the TLS port too (false needs admin_listen) */
	unsigned ready_max_oldest_age_s;     /* 0 = not a readiness reason */
	unsigned ready_max_upstream_down_s;  /* 0 = not a readiness reason */
	/* process */
	char *log_level;
	unsigned shutdown_deadline_ms;
	char *config_file;
	bool check_config;           /* main.c checks the files too, says so, exits */
};

enum config_result {
	CONFIG_RUN = 0,    /* settings loaded: start the relay */
	CONFIG_EXIT = 1,   /* --help or --version done: exit 0 */
	CONFIG_ERROR = -1, /* *cause says why (names the file and line) */
};

/* Sets c to the defaults, then applies --config FILE, then the other
 * arguments.  On CONFIG_ERROR *cause is malloc'd and the caller frees it.
 * Strings in c are owned by c; free them with config_release. */
enum config_result config_load(struct config *c, int argc, char **argv, char **cause);
/* Calls changed with the name of each setting whose value differs between
 * a and b (the command-line-only ones aside), in --help's order. */
void config_diff(const struct config *a, const struct config *b,
                 void (*changed)(const char *name, void *arg), void *arg);
/* Applies the text of a config file (name used in messages). */
int config_apply_file_text(struct config *c, const char *name, const char *text,
                           char **cause);
void config_release(struct config *c);
void config_print_help(FILE *out);

#endif
