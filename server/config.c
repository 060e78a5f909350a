/*
 * config.c - the settings table, and the config file and command-line
 * parsers that fill struct config from it.
 *
 * Every setting is named once, in settings[] below: its option name, type,
 * place in struct config, default, range and help text.  Defaults, the file
 * parser, the command line and --help are all driven by that table, so a new
 * setting is one struct field plus one table row.
 */
#ifdef HAVE_CONFIG_H
#include "build-config.h"   /* autoconf's: PACKAGE_VERSION */
#else
#define PACKAGE_VERSION "unknown"  /* built outside automake, e.g. a fuzz target */
#endif

#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cause.h"
#include "clientip.h"
#include "forwarder.h"   /* FWD_WORKERS_MAX, FWD_INFLIGHT_MAX */
#include "log.h"

/* A config file is a few dozen short lines; anything bigger is a mistake. */
#define CONFIG_FILE_MAX (1024 * 1024)
#define CONFIG_LINE_MAX 4096

/* T_LIST is a comma-separated T_STRING that a repeated option or file line
 * extends; the command line still replaces what the file said. */
enum setting_type { T_STRING, T_UINT, T_U64, T_SIZE, T_BOOL, T_LIST };

struct setting {
	const char *name;       /* option and file key */
	enum setting_type type;
	size_t offset;          /* of the field in struct config */
	const char *def;        /* default, parsed like any other value */
	uint64_t min, max;      /* numbers only */
	const char *help;
	int (*check)(const char *value);  /* strings only: 0 if acceptable */
	const char *expect;     /* what check accepts, for its error message */
	const char *group;      /* heading in --help */
	bool cli_only;          /* not accepted in a config file */
};

static int check_log_level(const char *value)
{
	enum log_level level;

	return log_parse_level(value, &level);
}

static int check_cidr_list(const char *value)
{
	struct trusted_proxies *tp;
	char *cause = NULL;
	int rc = trusted_proxies_create(&tp, value, &cause);

	trusted_proxies_destroy(tp);
	free(cause);
	return rc;
}

/* Each entry is scheme://host[:port], as a browser writes Origin: no path,
 * no blanks inside (around commas they are fine). */
static int check_origin_list(const char *value)
{
	for (const char *p = value; *p; p += *p == ',') {
		size_t len;
		const char *sep;

		p += strspn(p, " \t");
		len = strcspn(p, ",");
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		sep = memmem(p, len, "://", 3);
		if (len && (!sep || sep == p || sep + 3 == p + len ||
		            memchr(sep + 3, '/', len - (size_t)(sep + 3 - p)) ||
		            strcspn(p, " \t") < len))
			return -1;
		p += strcspn(p, ",");
	}
	return 0;
}

static int check_http_version(const char *value)
{
	return strcmp(value, "1.1") && strcmp(value, "2") ? -1 : 0;
}

static int check_upstream_protocol(const char *value)
{
	return strcmp(value, "websocket") && strcmp(value, "http-post") ? -1 : 0;
}

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)
#define TiB (1024 * GiB)

#define F(field) offsetof(struct config, field)
#define STR(n, f, d, h, g) { n, T_STRING, F(f), d, 0, 0, h, NULL, NULL, g, false }
#define NUM(n, t, f, d, lo, hi, h, g) { n, t, F(f), d, lo, hi, h, NULL, NULL, g, false }
#define FLAG(n, f, d, h, g) { n, T_BOOL, F(f), d, 0, 1, h, NULL, NULL, g, false }
#define LIST(n, f, h, chk, exp, g) { n, T_LIST, F(f), "", 0, 0, h, chk, exp, g, false }

static const struct setting settings[] = {
	STR("listen-address", listen_address, "0.0.0.0",
	    "IPv4 or IPv6 address to listen on", "listener"),
	NUM("port", T_UINT, port, "8443", 1, 65535,
	    "TCP port for HTTPS and websocket clients", "listener"),
	STR("tls-cert", tls_cert, "",
	    "PEM certificate chain; empty: a self-signed one kept in state-dir", "listener"),
	STR("tls-key", tls_key, "",
	    "PEM private key for tls-cert", "listener"),
	STR("tls-priorities", tls_priorities, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
	    "GnuTLS priority string", "listener"),
	NUM("http-threads", T_UINT, http_threads, "4", 1, 256,
	    "TLS listener threads, and as many HTTP threads", "listener"),
	NUM("max-connections", T_UINT, max_connections, "10000", 1, 1000000,
	    "concurrent client connections, websockets included", "listener"),
	NUM("max-http-connections", T_UINT, max_http_connections, "1024", 1, 1000000,
	    "client connections not yet upgraded to a websocket: TLS handshakes, HTTP requests, "
	    "fallback POSTs", "listener"),
	NUM("request-timeout-s", T_UINT, request_timeout_s, "30", 1, 3600,
	    "a request's TLS handshake, head and body must be in within this (slow clients)",
	    "listener"),
	NUM("max-header-bytes", T_SIZE, max_header_bytes, "32K", 8 * KiB, MiB,
	    "memory for one connection's request line and headers (larger: refused)", "listener"),

	LIST("allowed-keys", allowed_keys,
	     "API keys allowed, comma separated (with allowed-keys-file: either; both empty: any key)",
	     NULL, NULL, "access"),
	STR("allowed-keys-file", allowed_keys_file, "",
	    "file of allowed API keys, one per line, reloaded on SIGHUP (empty: none)", "access"),
	LIST("allowed-origins", allowed_origins,
	     "page origins allowed for websockets and CORS, comma separated (empty: any)",
	     check_origin_list, "a comma list of origins like https://app.example.com", "access"),
	LIST("trusted-proxy", trusted_proxies,
	     "proxy whose X-Forwarded-For names the client: CIDR block or address, repeatable",
	     check_cidr_list, "a comma list of addresses or CIDR blocks without host bits "
	     "(10.0.0.0/8, 2001:db8::/32)", "access"),
	FLAG("proxy-protocol", proxy_protocol, "false",
	     "take the client's address from a PROXY v1/v2 header sent by a trusted-proxy "
	     "(refused from any other address)", "access"),
	NUM("max-connections-per-ip", T_UINT, max_connections_per_ip, "0", 0, 1000000,
	    "concurrent websockets and requests per client address (0: no limit)", "access"),
	NUM("max-messages-per-ip-per-s", T_UINT, max_messages_per_ip_per_s, "0", 0, 1000000,
	    "messages per second per client address, bursts of 5 s (0: no limit)", "access"),
	NUM("ip-table-size", T_UINT, ip_table_size, "65536", 16, 16777216,
	    "client addresses tracked at once for the per-address limits", "access"),

	STR("state-dir", state_dir, "./var",
	    "directory for the queue database and generated keys", "storage"),
	NUM("queue-max-bytes", T_SIZE, queue_max_bytes, "1G", 1, TiB,
	    "queued payload bytes before ingest is refused", "storage"),
	NUM("queue-max-messages", T_U64, queue_max_messages, "1000000", 1, 1000000000000ULL,
	    "queued messages before ingest is refused", "storage"),
	NUM("queue-max-age-s", T_UINT, queue_max_age_s, "86400", 1, 3650U * 86400,
	    "seconds a message may wait before it is dead-lettered as expired", "storage"),
	NUM("queue-high-water-pct", T_UINT, queue_high_water_pct, "90", 1, 100,
	    "percent of a queue limit above which /healthcheck answers 503", "storage"),
	NUM("commit-window-ms", T_UINT, commit_window_ms, "5", 0, 1000,
	    "longest a message waits before its commit starts (ms)", "storage"),

	NUM("max-body-bytes", T_SIZE, max_body_bytes, "1M", 1, 256 * MiB,
	    "largest HTTPS fallback request body", "ingest"),
	NUM("max-message-bytes", T_SIZE, max_message_bytes, "1M", 1, 256 * MiB,
	    "largest websocket message", "ingest"),
	NUM("max-session-id-bytes", T_UINT, max_session_id_bytes, "256", 1, 65536,
	    "longest sessionId (larger: 413); visible ASCII only", "ingest"),
	NUM("cors-max-age-s", T_UINT, cors_max_age_s, "600", 0, 86400,
	    "Access-Control-Max-Age of CORS preflight answers", "ingest"),
	NUM("retry-after-s", T_UINT, retry_after_s, "5", 0, 3600,
	    "Retry-After of 503 answers", "ingest"),

	FLAG("websocket", websocket_enabled, "true",
	     "accept websocket upgrades (false: answer them 503, the SDK then uses HTTPS)", "websocket"),
	NUM("ws-threads", T_UINT, ws_threads, "2", 1, 256,
	    "websocket I/O threads", "websocket"),
	NUM("hello-interval-ms", T_UINT, hello_interval_ms, "8000", 100, 3600000,
	    "stats collection interval sent to the SDK in the hello", "websocket"),
	NUM("hello-send-interval", T_UINT, hello_send_interval, "1", 1, 100,
	    "records the SDK batches per message", "websocket"),
	FLAG("collect-console-log", collect_console_log, "false",
	     "ask the SDK to send the browser console log", "websocket"),
	STR("console-log-level", console_log_level, "error",
	    "lowest browser console level the SDK sends", "websocket"),
	STR("project-id", project_id, "",
	    "projectId sent in the hello; empty: none", "websocket"),
	NUM("ws-ping-interval-s", T_UINT, ws_ping_interval_s, "30", 0, 3600,
	    "seconds between websocket pings; 0: none", "websocket"),
	NUM("ws-max-queued-frames", T_UINT, ws_max_queued_frames, "64", 4, 65536,
	    "frames (pongs included) queued to a websocket peer before it is dropped as not reading",
	    "websocket"),

	STR("upstream", upstream, "https://watchrtc-server.cyara.com",
	    "base URL messages are forwarded to", "upstream"),
	{ "upstream-protocol", T_STRING, F(upstream_protocol), "websocket", 0, 0,
	  "websocket: each SDK connection replayed as a websocket to the upstream, as the SDK "
	  "would have sent it; http-post: one POST per message (a collector of your own)",
	  check_upstream_protocol, "websocket or http-post", "upstream", false },
	NUM("upstream-ws-threads", T_UINT, upstream_ws_threads, "2", 1, 64,
	    "threads driving upstream websockets (thousands each)", "upstream"),
	NUM("upstream-fence-messages", T_UINT, upstream_fence_messages, "32", 1, 4096,
	    "ping (fence) an upstream websocket after this many messages; a message is deleted "
	    "once a fence after it is answered", "upstream"),
	NUM("upstream-fence-ms", T_UINT, upstream_fence_ms, "1000", 1, 600000,
	    "and at most this long after the first unfenced message (ms)", "upstream"),
	STR("upstream-ca", upstream_ca, "",
	    "PEM CA bundle for upstream; empty: the system's", "upstream"),
	STR("upstream-ca-extra", upstream_ca_extra, "",
	    "PEM CA file trusted in addition to upstream-ca or the system bundle (a TLS-inspecting "
	    "proxy's CA)", "upstream"),
	STR("upstream-proxy", upstream_proxy, "",
	    "proxy for the upstream connections, e.g. http://proxy.example:3128 (empty: libcurl's "
	    "https_proxy/no_proxy environment)", "upstream"),
	FLAG("upstream-insecure", upstream_insecure, "false",
	     "do not verify the upstream certificate (testing only)", "upstream"),
	{ "upstream-http-version", T_STRING, F(upstream_http_version), "1.1", 0, 0,
	  "upstream HTTP version: 1.1 (keep-alive connections) or 2 (multiplexed where offered)",
	  check_http_version, "1.1 or 2",
	  "upstream", false },
	NUM("forward-workers", T_UINT, forward_workers, "4", 1, FWD_WORKERS_MAX,
	    "upstream forwarding threads", "upstream"),
	NUM("forward-inflight", T_UINT, forward_inflight, "16", 1, FWD_INFLIGHT_MAX,
	    "upstream requests in flight per worker", "upstream"),
	NUM("upstream-timeout-ms", T_UINT, upstream_timeout_ms, "10000", 1, 600000,
	    "whole upstream request timeout", "upstream"),
	NUM("upstream-connect-timeout-ms", T_UINT, upstream_connect_timeout_ms, "5000", 1, 600000,
	    "upstream connect timeout", "upstream"),
	NUM("retry-base-ms", T_UINT, retry_base_ms, "500", 1, 3600000,
	    "first retry delay after an upstream failure", "upstream"),
	NUM("retry-max-ms", T_UINT, retry_max_ms, "60000", 1, 3600000,
	    "longest retry delay", "upstream"),
	NUM("key-reject-ttl-s", T_UINT, key_reject_ttl_s, "300", 0, 7 * 86400,
	    "seconds an API key refused upstream is refused here; 0: not at all", "upstream"),

	STR("admin-listen", admin_listen, "",
	    "plain-HTTP listener for /metrics and /healthcheck, e.g. 127.0.0.1:9100 (empty: none)",
	    "monitoring"),
	FLAG("admin-allow-remote", admin_allow_remote, "false",
	     "allow admin-listen on a non-loopback address (it has no TLS)", "monitoring"),
	FLAG("tls-metrics", tls_metrics, "true",
	     "serve /metrics on the TLS port too (false: on admin-listen only, which it needs)",
	     "monitoring"),
	NUM("ready-max-oldest-age-s", T_UINT, ready_max_oldest_age_s, "0", 0, 30U * 86400,
	    "not ready while the oldest queued message is older (0: never)", "monitoring"),
	NUM("ready-max-upstream-down-s", T_UINT, ready_max_upstream_down_s, "0", 0, 30U * 86400,
	    "not ready while the upstream has failed for longer (0: never)", "monitoring"),

	{ "log-level", T_STRING, F(log_level), "info", 0, 0,
	  "least severe level logged: debug, info, warn or error", check_log_level, "debug, info, warn or error",
	  "process", false },
	NUM("shutdown-deadline-ms", T_UINT, shutdown_deadline_ms, "5000", 0, 600000,
	    "how long a shutdown may wait for in-flight work", "process"),
	{ "config", T_STRING, F(config_file), "", 0, 0,
	  "read settings from FILE; the command line overrides it", NULL, NULL,
	  "process", true },
	{ "check-config", T_BOOL, F(check_config), "false", 0, 1,
	  "check the settings and the files they name, print \"configuration ok\" and exit",
	  NULL, NULL, "process", true },
};

#define NSETTINGS (sizeof settings / sizeof settings[0])

static const struct setting *find_setting(const char *name, size_t len)
{
	for (size_t i = 0; i < NSETTINGS; i++) {
		if (strlen(settings[i].name) == len && !memcmp(settings[i].name, name, len))
			return &settings[i];
	}
	return NULL;
}

static void *field(struct config *c, const struct setting *s)
{
	return (char *)c + s->offset;
}

/* Decimal digits only: no sign, no spaces, no hex; 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (*s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return *s ? -1 : 0;
}

/* A byte count with an optional k, m or g suffix (1024-based). */
static int parse_size(const char *s, uint64_t *out)
{
	char digits[32];
	size_t len = strlen(s);
	uint64_t mult = 1, v;

	if (len == 0 || len >= sizeof digits)
		return -1;
	memcpy(digits, s, len + 1);
	switch (digits[len - 1]) {
	case 'k': case 'K': mult = KiB; break;
	case 'm': case 'M': mult = MiB; break;
	case 'g': case 'G': mult = GiB; break;
	}
	if (mult != 1)
		digits[len - 1] = '\0';
	if (parse_u64(digits, &v) < 0 || v > UINT64_MAX / mult)
		return -1;
	*out = v * mult;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
		if (!strcmp(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcmp(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

/* Sizes print with the largest suffix that divides them: 1073741824 -> 1G. */
static void format_size(uint64_t v, char *buf, size_t size)
{
	if (v && v % GiB == 0)
		snprintf(buf, size, "%lluG", (unsigned long long)(v / GiB));
	else if (v && v % MiB == 0)
		snprintf(buf, size, "%lluM", (unsigned long long)(v / MiB));
	else if (v && v % KiB == 0)
		snprintf(buf, size, "%lluK", (unsigned long long)(v / KiB));
	else
		snprintf(buf, size, "%llu", (unsigned long long)v);
}

/*
 * Parses value and stores it in s's field of c.  On failure, c is unchanged
 * and err holds a message that names the setting.
 */
static int setting_set(struct config *c, const struct setting *s, const char *value,
                       bool append, char *err, size_t errsz)
{
	uint64_t v = 0;
	bool b;
	char lo[32], hi[32];

	switch (s->type) {
	case T_STRING:
	case T_LIST: {
		char *copy, **slot = field(c, s);
		int n;

		if (s->check && s->check(value) < 0) {
			snprintf(err, errsz, "%s: \"%s\" is not %s", s->name, value, s->expect);
			return -1;
		}
		if (s->type == T_LIST && append && *slot && **slot && *value)
			n = asprintf(&copy, "%s,%s", *slot, value);
		else
			n = (copy = strdup(value)) ? 0 : -1;
		if (n < 0) {
			snprintf(err, errsz, "%s: out of memory", s->name);
			return -1;
		}
		free(*slot);
		*slot = copy;
		return 0;
	}
	case T_BOOL:
		if (parse_bool(value, &b) < 0) {
			snprintf(err, errsz, "%s: \"%s\" is not a boolean "
			         "(true/false, yes/no, on/off, 1/0)", s->name, value);
			return -1;
		}
		*(bool *)field(c, s) = b;
		return 0;
	case T_SIZE:
		if (parse_size(value, &v) < 0) {
			snprintf(err, errsz, "%s: \"%s\" is not a size "
			         "(a number with an optional k, m or g suffix)", s->name, value);
			return -1;
		}
		format_size(s->min, lo, sizeof lo);
		format_size(s->max, hi, sizeof hi);
		break;
	case T_UINT:
	case T_U64:
		if (parse_u64(value, &v) < 0) {
			snprintf(err, errsz, "%s: \"%s\" is not a number", s->name, value);
			return -1;
		}
		snprintf(lo, sizeof lo, "%llu", (unsigned long long)s->min);
		snprintf(hi, sizeof hi, "%llu", (unsigned long long)s->max);
		break;
	}
	if (v < s->min || v > s->max) {
		snprintf(err, errsz, "%s: %s is out of range (%s..%s)", s->name, value, lo, hi);
		return -1;
	}
	if (s->type == T_UINT)
		*(unsigned *)field(c, s) = (unsigned)v;
	else
		*(uint64_t *)field(c, s) = v;
	return 0;
}

/* Checks the settings against each other and against the filesystem. */
static int validate(const struct config *c, char **cause)
{
	unsigned char addr[sizeof(struct in6_addr)];
	const char *files[][2] = {
		{ "tls-cert", c->tls_cert }, { "tls-key", c->tls_key },
		{ "upstream-ca", c->upstream_ca }, { "allowed-keys-file", c->allowed_keys_file },
		{ "upstream-ca-extra", c->upstream_ca_extra },
	};

	if (inet_pton(AF_INET, c->listen_address, addr) != 1 &&
	    inet_pton(AF_INET6, c->listen_address, addr) != 1) {
		cause_set(cause, -1, "listen-address: \"%s\" is not an IPv4 or IPv6 address",
		          c->listen_address);
		return -1;
	}
	if (!*c->tls_cert != !*c->tls_key) {
		cause_set(cause, -1, "tls-cert and tls-key must be given together");
		return -1;
	}
	for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
		if (*files[i][1] && access(files[i][1], R_OK) < 0) {
			cause_set(cause, -1, "%s: cannot read %s: %s", files[i][0], files[i][1],
			          strerror(errno));
			return -1;
		}
	}
	if (!*c->state_dir) {
		cause_set(cause, -1, "state-dir must not be empty");
		return -1;
	}
	if (!*c->tls_priorities) {
		cause_set(cause, -1, "tls-priorities must not be empty");
		return -1;
	}
	if (strncmp(c->upstream, "https://", 8) && strncmp(c->upstream, "http://", 7)) {
		cause_set(cause, -1, "upstream: \"%s\" is not an http:// or https:// URL",
		          c->upstream);
		return -1;
	}
	if (strpbrk(c->upstream_proxy, " \t\r\n")) {
		cause_set(cause, -1, "upstream-proxy: \"%s\" is not a proxy URL",
		          c->upstream_proxy);
		return -1;
	}
	if (!c->tls_metrics && !*c->admin_listen) {
		cause_set(cause, -1, "tls-metrics = false needs admin-listen: /metrics would be served "
		          "nowhere");
		return -1;
	}
	if (c->proxy_protocol && !*c->trusted_proxies) {
		cause_set(cause, -1, "proxy-protocol needs trusted-proxy: the addresses of the load "
		          "balancers whose PROXY headers are believed");
		return -1;
	}
	if (c->retry_base_ms > c->retry_max_ms) {
		cause_set(cause, -1, "retry-base-ms (%u) is larger than retry-max-ms (%u)",
		          c->retry_base_ms, c->retry_max_ms);
		return -1;
	}
	return 0;
}

/* Sets every field of c to its default.  c holds no strings before. */
static int set_defaults(struct config *c, char **cause)
{
	char err[256];

	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < NSETTINGS; i++) {
		if (setting_set(c, &settings[i], settings[i].def, false, err, sizeof err) < 0) {
			cause_set(cause, -1, "default of %s", err);
			return -1;
		}
	}
	return 0;
}

static bool is_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* Trims spaces and tabs from both ends of s in place. */
static char *trim(char *s)
{
	char *end;

	while (is_blank(*s))
		s++;
	end = s + strlen(s);
	while (end > s && is_blank(end[-1]))
		*--end = '\0';
	return s;
}

/*
 * Splits one line (a writable copy) into key and value.  Returns 1 for a
 * setting, 0 for a blank or comment line, -1 with err set otherwise.
 */
static int parse_line(char *line, char **key, char **value, char *err, size_t errsz)
{
	char *eq, *v, *p;

	line = trim(line);
	if (!*line || *line == '#')
		return 0;
	if (!(eq = strchr(line, '='))) {
		snprintf(err, errsz, "expected \"key = value\"");
		return -1;
	}
	*eq = '\0';
	*key = trim(line);
	if (!**key) {
		snprintf(err, errsz, "missing key before '='");
		return -1;
	}
	v = trim(eq + 1);
	if (*v == '"') {
		if (!(p = strchr(v + 1, '"'))) {
			snprintf(err, errsz, "unterminated quote");
			return -1;
		}
		*p++ = '\0';
		while (is_blank(*p))
			p++;
		if (*p && *p != '#') {
			snprintf(err, errsz, "unexpected text after the closing quote");
			return -1;
		}
		*value = v + 1;
		return 1;
	}
	/* A '#' after whitespace starts a comment; "a#b" is a value.  v was
	 * trimmed, so a '#' at its start also followed whitespace or '='. */
	for (p = v; *p; p++) {
		if (*p == '#' && (p == v || is_blank(p[-1]))) {
			*p = '\0';
			break;
		}
	}
	*value = trim(v);
	return 1;
}

int config_apply_file_text(struct config *c, const char *name, const char *text,
                           char **cause)
{
	char line[CONFIG_LINE_MAX + 1], err[CONFIG_LINE_MAX + 128];
	unsigned lineno = 0;
	bool seen[NSETTINGS] = { false };   /* a list named again is extended */

	if (strnlen(text, CONFIG_FILE_MAX + 1) > CONFIG_FILE_MAX) {
		cause_set(cause, -1, "%s: larger than %d bytes", name, CONFIG_FILE_MAX);
		return -1;
	}
	while (*text) {
		const char *nl = strchr(text, '\n');
		size_t len = nl ? (size_t)(nl - text) : strlen(text);
		const struct setting *s;
		char *key, *value;
		int r;

		lineno++;
		if (len > 0 && text[len - 1] == '\r')
			len--;
		if (len > CONFIG_LINE_MAX) {
			cause_set(cause, -1, "%s:%u: line longer than %d characters", name, lineno,
			          CONFIG_LINE_MAX);
			return -1;
		}
		memcpy(line, text, len);
		line[len] = '\0';
		text = nl ? nl + 1 : text + strlen(text);

		r = parse_line(line, &key, &value, err, sizeof err);
		if (r == 0)
			continue;
		if (r < 0) {
			cause_set(cause, -1, "%s:%u: %s", name, lineno, err);
			return -1;
		}
		s = find_setting(key, strlen(key));
		if (!s) {
			cause_set(cause, -1, "%s:%u: unknown key \"%s\"", name, lineno, key);
			return -1;
		}
		if (s->cli_only) {
			cause_set(cause, -1, "%s:%u: %s is only accepted on the command line",
			          name, lineno, key);
			return -1;
		}
		if (setting_set(c, s, value, seen[s - settings], err, sizeof err) < 0) {
			cause_set(cause, -1, "%s:%u: %s", name, lineno, err);
			return -1;
		}
		seen[s - settings] = true;
	}
	return 0;
}

/* Reads path (at most CONFIG_FILE_MAX bytes) and applies it. */
static int apply_file(struct config *c, const char *path, char **cause)
{
	FILE *f = NULL;
	char *text = NULL;
	size_t n;
	int ret = -1;

	if (!(f = fopen(path, "r"))) {
		cause_set(cause, -1, "cannot open %s: %s", path, strerror(errno));
		goto out;
	}
	if (!(text = malloc(CONFIG_FILE_MAX + 2))) {
		cause_set(cause, -1, "%s: out of memory", path);
		goto out;
	}
	/* One byte over the ceiling tells "too big" from "exactly the limit". */
	n = fread(text, 1, CONFIG_FILE_MAX + 1, f);
	if (ferror(f)) {
		cause_set(cause, -1, "cannot read %s: %s", path, strerror(errno));
		goto out;
	}
	if (n > CONFIG_FILE_MAX) {
		cause_set(cause, -1, "%s: larger than %d bytes", path, CONFIG_FILE_MAX);
		goto out;
	}
	if (memchr(text, '\0', n)) {
		cause_set(cause, -1, "%s: not a text file (contains a NUL byte)", path);
		goto out;
	}
	text[n] = '\0';
	ret = config_apply_file_text(c, path, text, cause);
out:
	free(text);
	if (f)
		fclose(f);
	return ret;
}

enum arg_pass { PASS_CONFIG, PASS_REST };

/*
 * Walks the arguments once.  PASS_CONFIG checks every option's name and
 * arity, answers --help and --version, and applies --config; PASS_REST
 * applies everything else, in order.  Returns CONFIG_RUN to go on.
 */
static enum config_result parse_args(struct config *c, int argc, char **argv,
                                     enum arg_pass pass, char **cause)
{
	char err[512];
	bool seen[NSETTINGS] = { false };   /* a repeated list option is extended */

	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i], *name, *eq, *value = NULL;
		const struct setting *s;
		size_t len;

		if (strncmp(arg, "--", 2) || !arg[2]) {
			cause_set(cause, -1, "unexpected argument \"%s\"", arg);
			return CONFIG_ERROR;
		}
		name = arg + 2;
		eq = strchr(name, '=');
		len = eq ? (size_t)(eq - name) : strlen(name);
		if (eq)
			value = eq + 1;

		if ((len == 4 && !memcmp(name, "help", 4)) ||
		    (len == 7 && !memcmp(name, "version", 7))) {
			if (eq) {
				cause_set(cause, -1, "--%.*s takes no value", (int)len, name);
				return CONFIG_ERROR;
			}
			if (pass == PASS_CONFIG) {
				if (len == 4)
					config_print_help(stdout);
				else
					printf("watchrtc-relay %s\n", PACKAGE_VERSION);
				fflush(stdout);
				return CONFIG_EXIT;
			}
			continue;
		}
		if (!(s = find_setting(name, len))) {
			cause_set(cause, -1, "unknown option --%.*s", (int)len, name);
			return CONFIG_ERROR;
		}
		if (!value) {
			bool b;

			/* "--flag" alone is true; "--flag false" also reads. */
			if (s->type == T_BOOL) {
				value = "true";
				if (i + 1 < argc && parse_bool(argv[i + 1], &b) == 0)
					value = argv[++i];
			} else if (i + 1 < argc) {
				value = argv[++i];
			} else {
				cause_set(cause, -1, "option --%s needs a value", s->name);
				return CONFIG_ERROR;
			}
		}
		if ((pass == PASS_CONFIG) != (s->offset == offsetof(struct config, config_file)))
			continue;
		if (setting_set(c, s, value, seen[s - settings], err, sizeof err) < 0) {
			cause_set(cause, -1, "--%s", err);
			return CONFIG_ERROR;
		}
		seen[s - settings] = true;
		if (pass == PASS_CONFIG && apply_file(c, c->config_file, cause) < 0)
			return CONFIG_ERROR;
	}
	return CONFIG_RUN;
}

enum config_result config_load(struct config *c, int argc, char **argv, char **cause)
{
	enum config_result r;

	if (cause)
		*cause = NULL;
	if (set_defaults(c, cause) < 0)
		return CONFIG_ERROR;
	if ((r = parse_args(c, argc, argv, PASS_CONFIG, cause)) != CONFIG_RUN)
		return r;
	if ((r = parse_args(c, argc, argv, PASS_REST, cause)) != CONFIG_RUN)
		return r;
	if (validate(c, cause) < 0)
		return CONFIG_ERROR;
	/* Unset is NULL: libcurl then reads https_proxy/no_proxy itself. */
	if (!*c->upstream_proxy) {
		free(c->upstream_proxy);
		c->upstream_proxy = NULL;
	}
	/* --check-config goes on to main.c's checks of the files it names. */
	return CONFIG_RUN;
}

/* True if setting s has the same value in a and b. */
static bool same_value(const struct config *a, const struct config *b, const struct setting *s)
{
	const char *pa = (const char *)a + s->offset, *pb = (const char *)b + s->offset;

	switch (s->type) {
	case T_STRING:
	case T_LIST: {
		const char *x = *(char *const *)pa, *y = *(char *const *)pb;

		return (!x && !y) || (x && y && !strcmp(x, y));
	}
	case T_UINT:
		return *(const unsigned *)pa == *(const unsigned *)pb;
	case T_U64:
	case T_SIZE:
		return *(const uint64_t *)pa == *(const uint64_t *)pb;
	case T_BOOL:
		return *(const bool *)pa == *(const bool *)pb;
	}
	return false;
}

void config_diff(const struct config *a, const struct config *b,
                 void (*changed)(const char *name, void *arg), void *arg)
{
	for (size_t i = 0; i < NSETTINGS; i++)
		if (!settings[i].cli_only && !same_value(a, b, &settings[i]))
			changed(settings[i].name, arg);
}

void config_release(struct config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < NSETTINGS; i++) {
		if (settings[i].type == T_STRING || settings[i].type == T_LIST) {
			char **slot = field(c, &settings[i]);
			free(*slot);
			*slot = NULL;
		}
	}
}

void config_print_help(FILE *out)
{
	const char *group = NULL;

	fprintf(out, "usage: watchrtc-relay [--config FILE] [--SETTING VALUE]...\n");
	for (size_t i = 0; i < NSETTINGS; i++) {
		const struct setting *s = &settings[i];
		static const char *const meta[] = {
			[T_STRING] = "TEXT", [T_UINT] = "N", [T_U64] = "N",
			[T_SIZE] = "SIZE", [T_BOOL] = "[BOOL]", [T_LIST] = "LIST",
		};
		char opt[64], range[80] = "", lo[32], hi[32];

		if (!group || strcmp(group, s->group)) {
			group = s->group;
			fprintf(out, "\n%s:\n", group);
		}
		snprintf(opt, sizeof opt, "--%s %s", s->name,
		         s->offset == offsetof(struct config, config_file) ? "FILE"
		                                                           : meta[s->type]);
		if (s->type == T_SIZE) {
			format_size(s->min, lo, sizeof lo);
			format_size(s->max, hi, sizeof hi);
			snprintf(range, sizeof range, ", %s..%s", lo, hi);
		} else if (s->type == T_UINT || s->type == T_U64) {
			snprintf(range, sizeof range, ", %llu..%llu",
			         (unsigned long long)s->min, (unsigned long long)s->max);
		}
		if (s->offset == offsetof(struct config, config_file))
			fprintf(out, "  %-36s %s\n", opt, s->help);
		else
			fprintf(out, "  %-36s %s (default: %s%s%s%s)\n", opt, s->help,
			        s->type == T_STRING || s->type == T_LIST ? "\"" : "", s->def,
			        s->type == T_STRING || s->type == T_LIST ? "\"" : "", range);
	}
	fprintf(out, "  %-36s %s\n", "--help", "print this help and exit");
	fprintf(out, "  %-36s %s\n", "--version", "print the version and exit");
	fprintf(out, "\nSIZE takes a k, m or g suffix (1024-based); "
	        "a file line is \"setting = value\".\n");
}
