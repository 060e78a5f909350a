/*
 * test-config.c - settings from defaults, files and the command line, and
 * the log.c helpers that config.c is linked with.
 */
#ifdef HAVE_CONFIG_H
#include "build-config.h"  /* autoconf's, for PACKAGE_VERSION */
#endif

/* "config.h" alone would find autoconf's header in the build directory. */
#include "server/config.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tap.h"
#include "testutil.h"

static char tmpdir[] = "/tmp/test-config.XXXXXX";

/* Writes text to a file in tmpdir and returns its path (static buffer). */
static const char *write_file(const char *name, const char *text)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	f = fopen(path, "w");
	if (!f)
		return path;
	fputs(text, f);
	fclose(f);
	return path;
}

/* config_load with a NULL-terminated argument list; argv[0] is added. */
static enum config_result load(struct config *c, char **cause, ...)
{
	char *argv[32] = { "watchrtc-relay" };
	int argc = 1;
	va_list ap;

	va_start(ap, cause);
	while (argc < 31 && (argv[argc] = va_arg(ap, char *)))
		argc++;
	va_end(ap);
	argv[argc] = NULL;
	return config_load(c, argc, argv, cause);
}

/* Loads defaults, applies text as file "t.conf", and checks the error. */
static void file_error(const char *text, const char *want, const char *what)
{
	struct config c;
	char *cause = NULL;
	int r;

	load(&c, &cause, NULL);
	r = config_apply_file_text(&c, "t.conf", text, &cause);
	is_int(r, -1, "%s: refused", what);
	is_str(cause, want, "%s: message", what);
	free(cause);
	config_release(&c);
}

/* Loads with one command line and checks the error message. */
#define cli_error(want, what, ...)                                          \
	do {                                                                \
		struct config c_;                                           \
		char *cause_ = NULL;                                        \
		enum config_result r_ = load(&c_, &cause_, __VA_ARGS__, NULL); \
		is_int(r_, CONFIG_ERROR, "%s: refused", what);              \
		is_str(cause_, want, "%s: message", what);                  \
		free(cause_);                                               \
		config_release(&c_);                                        \
	} while (0)

static void test_defaults(void)
{
	struct config c;
	char *cause = NULL;

	is_int(load(&c, &cause, NULL), CONFIG_RUN, "no arguments: run");
	is_str(cause, NULL, "no cause");
	is_str(c.listen_address, "0.0.0.0", "listen-address default");
	is_int(c.port, 8443, "port default");
	is_str(c.tls_cert, "", "tls-cert default");
	is_str(c.tls_key, "", "tls-key default");
	is_str(c.tls_priorities, "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
	       "tls-priorities default");
	is_int(c.http_threads, 4, "http-threads default");
	is_int(c.max_connections, 10000, "max-connections default");
	is_int(c.max_http_connections, 1024, "max-http-connections default");
	is_str(c.state_dir, "./var", "state-dir default");
	ok(c.queue_max_bytes == 1ULL << 30, "queue-max-bytes default is 1G");
	ok(c.queue_max_messages == 1000000, "queue-max-messages default");
	is_int(c.queue_max_age_s, 86400, "queue-max-age-s default");
	is_int(c.queue_high_water_pct, 90, "queue-high-water-pct default");
	is_int(c.commit_window_ms, 5, "commit-window-ms default");
	ok(c.max_body_bytes == 1 << 20, "max-body-bytes default is 1M");
	ok(c.max_message_bytes == 1 << 20, "max-message-bytes default is 1M");
	is_int(c.cors_max_age_s, 600, "cors-max-age-s default");
	is_int(c.retry_after_s, 5, "retry-after-s default");
	is_int(c.ws_threads, 2, "ws-threads default");
	is_int(c.hello_interval_ms, 8000, "hello-interval-ms default");
	is_int(c.hello_send_interval, 1, "hello-send-interval default");
	ok(!c.collect_console_log, "collect-console-log default");
	is_str(c.console_log_level, "error", "console-log-level default");
	is_str(c.project_id, "", "project-id default");
	is_int(c.ws_ping_interval_s, 30, "ws-ping-interval-s default");
	is_str(c.upstream, "https://watchrtc-server.cyara.com", "upstream default");
	is_str(c.upstream_ca, "", "upstream-ca default");
	ok(!c.upstream_insecure, "upstream-insecure default");
	is_str(c.upstream_http_version, "1.1", "upstream-http-version default");
	is_int(c.forward_workers, 4, "forward-workers default");
	is_int(c.forward_inflight, 16, "forward-inflight default");
	is_int(c.upstream_timeout_ms, 10000, "upstream-timeout-ms default");
	is_int(c.upstream_connect_timeout_ms, 5000, "upstream-connect-timeout-ms default");
	is_int(c.retry_base_ms, 500, "retry-base-ms default");
	is_int(c.retry_max_ms, 60000, "retry-max-ms default");
	is_int(c.key_reject_ttl_s, 300, "key-reject-ttl-s default");
	is_str(c.log_level, "info", "log-level default");
	is_int(c.shutdown_deadline_ms, 5000, "shutdown-deadline-ms default");
	is_str(c.config_file, "", "no config file");
	ok(!c.check_config, "check-config default");
	config_release(&c);
	ok(c.port == 8443 && !c.listen_address, "release clears strings");
	config_release(&c);
	ok(c.port == 8443 && !c.listen_address && !c.log_level,
	   "release twice is safe and leaves the struct cleared");
	{
		struct config zero = { 0 }, untouched = { 0 };
		config_release(&zero);
		config_release(NULL);
		ok(memcmp(&zero, &untouched, sizeof zero) == 0,
		   "release of a zeroed struct leaves it zeroed (and NULL is accepted)");
	}
}

static void test_command_line(void)
{
	struct config c;
	char *cause = NULL;

	is_int(load(&c, &cause, "--port", "9000", "--state-dir=/srv/relay",
	            "--upstream-insecure", "--collect-console-log", "false",
	            "--project-id=", "--log-level", "debug", NULL),
	       CONFIG_RUN, "command line forms: run");
	is_int(c.port, 9000, "--name value");
	is_str(c.state_dir, "/srv/relay", "--name=value");
	ok(c.upstream_insecure, "a boolean alone is true");
	ok(!c.collect_console_log, "a boolean followed by false");
	is_str(c.project_id, "", "--name= sets the empty string");
	is_str(c.log_level, "debug", "log-level debug");
	config_release(&c);

	is_int(load(&c, &cause, "--state-dir", "/a", "--state-dir", "/b",
	            "--port=1", "--port", "65535", "--upstream-insecure=no", NULL),
	       CONFIG_RUN, "repeated options: run");
	is_str(c.state_dir, "/b", "the last string wins (the first is freed)");
	is_int(c.port, 65535, "the last number wins");
	ok(!c.upstream_insecure, "--flag=no");
	config_release(&c);

	/* A value that looks like an option is still the value. */
	is_int(load(&c, &cause, "--project-id", "--port", NULL), CONFIG_RUN,
	       "a string value may start with --");
	is_str(c.project_id, "--port", "it is taken as the value");
	config_release(&c);

	cli_error("unknown option --nope", "unknown option", "--nope");
	cli_error("unknown option --nope", "unknown option with a value", "--nope=1");
	cli_error("unexpected argument \"queue\"", "positional argument", "queue");
	cli_error("unexpected argument \"-p\"", "short option", "-p");
	cli_error("unexpected argument \"--\"", "bare --", "--");
	cli_error("option --port needs a value", "missing value", "--port");
	cli_error("--port: \"abc\" is not a number", "malformed number", "--port=abc");
	cli_error("--port: 0 is out of range (1..65535)", "port 0", "--port", "0");
	cli_error("--port: 65536 is out of range (1..65535)", "port 65536", "--port", "65536");
	cli_error("--port: \"-1\" is not a number", "negative", "--port=-1");
	cli_error("--port: \" 1\" is not a number", "leading space", "--port= 1");
	cli_error("--port: \"0x10\" is not a number", "hex", "--port=0x10");
	cli_error("--port: \"99999999999999999999\" is not a number", "overflow",
	          "--port=99999999999999999999");
	cli_error("--http-threads: 257 is out of range (1..256)", "threads", "--http-threads=257");
	cli_error("--queue-high-water-pct: 101 is out of range (1..100)", "percent",
	          "--queue-high-water-pct=101");
	cli_error(
		"--upstream-insecure: \"maybe\" is not a boolean (true/false, yes/no, on/off, 1/0)",
		"bad boolean", "--upstream-insecure=maybe");
	cli_error("--log-level: \"loud\" is not debug, info, warn or error", "bad log level",
	          "--log-level", "loud");
	cli_error("--help takes no value", "--help=x", "--help=x");
	cli_error("listen-address: \"localhost\" is not an IPv4 or IPv6 address",
	          "listen-address must be an address", "--listen-address", "localhost");
	{
		char *cert = strdup(write_file("cert.pem", "not checked here\n"));

		cli_error("tls-cert and tls-key must be given together", "cert without key",
		          "--tls-cert", cert);
		cli_error("tls-key: cannot read /nonexistent/key.pem: No such file or directory",
		          "unreadable key", "--tls-cert", cert, "--tls-key",
		          "/nonexistent/key.pem");
		is_int(load(&c, &cause, "--tls-cert", cert, "--tls-key", cert, NULL), CONFIG_RUN,
		       "readable cert and key are accepted");
		config_release(&c);
		free(cert);
	}
	cli_error("upstream: \"ftp://x\" is not an http:// or https:// URL", "upstream scheme",
	          "--upstream=ftp://x");
	is_int(load(&c, &cause, "--upstream-http-version", "2", NULL), CONFIG_RUN,
	       "upstream-http-version 2 is accepted");
	is_str(c.upstream_http_version, "2", "... and kept");
	config_release(&c);
	is_int(load(&c, &cause, "--upstream-http-version=1.1", NULL), CONFIG_RUN,
	       "upstream-http-version 1.1 is accepted");
	config_release(&c);
	cli_error("--upstream-http-version: \"1.0\" is not 1.1 or 2", "HTTP/1.0 is refused",
	          "--upstream-http-version=1.0");
	cli_error("--upstream-http-version: \"h2\" is not 1.1 or 2", "an ALPN name is refused",
	          "--upstream-http-version=h2");
	cli_error("--upstream-http-version: \"3\" is not 1.1 or 2", "HTTP/3 is refused",
	          "--upstream-http-version=3");
	cli_error("--upstream-http-version: \"\" is not 1.1 or 2", "an empty version is refused",
	          "--upstream-http-version=");
	file_error("upstream-http-version = 2.0\n",
	           "t.conf:1: upstream-http-version: \"2.0\" is not 1.1 or 2",
	           "upstream-http-version in a file");
	cli_error("--forward-workers: 65 is out of range (1..64)", "more forward workers than the "
	          "forwarder runs", "--forward-workers=65");
	cli_error("--forward-inflight: 1025 is out of range (1..1024)", "more requests in flight "
	          "than the forwarder runs", "--forward-inflight=1025");
	cli_error("retry-base-ms (2000) is larger than retry-max-ms (1000)", "retry order",
	          "--retry-base-ms=2000", "--retry-max-ms=1000");
	cli_error("state-dir must not be empty", "empty state-dir", "--state-dir=");

	is_int(load(&c, &cause, "--listen-address", "::1", NULL), CONFIG_RUN,
	       "an IPv6 listen-address is accepted");
	config_release(&c);
}

static void test_types(void)
{
	static const struct {
		const char *text;
		uint64_t want;
	} sizes[] = {
		{ "max-body-bytes = 10", 10 },
		{ "max-body-bytes = 1k", 1024 },
		{ "max-body-bytes = 2K", 2048 },
		{ "max-body-bytes = 3m", 3 << 20 },
		{ "max-body-bytes = 4M", 4 << 20 },
		{ "max-body-bytes = 256M", 256 << 20 },
		{ "queue-max-bytes = 1g", 1ULL << 30 },
		{ "queue-max-bytes = 5G", 5ULL << 30 },
		{ "queue-max-bytes = 1024G", 1ULL << 40 },
	};
	static const struct {
		const char *word;
		bool want;
	} bools[] = {
		{ "true", true }, { "yes", true }, { "on", true }, { "1", true },
		{ "false", false }, { "no", false }, { "off", false }, { "0", false },
	};
	struct config c;
	char *cause = NULL, text[128];

	load(&c, &cause, NULL);
	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		is_int(config_apply_file_text(&c, "t.conf", sizes[i].text, &cause), 0,
		       "size: %s", sizes[i].text);
		ok((strstr(sizes[i].text, "queue") ? c.queue_max_bytes : c.max_body_bytes) ==
		   sizes[i].want, "size: %s is %llu", sizes[i].text,
		   (unsigned long long)sizes[i].want);
	}
	for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++) {
		c.upstream_insecure = !bools[i].want;
		snprintf(text, sizeof text, "upstream-insecure = %s\n", bools[i].word);
		is_int(config_apply_file_text(&c, "t.conf", text, &cause), 0,
		       "boolean %s accepted", bools[i].word);
		ok(c.upstream_insecure == bools[i].want, "boolean %s", bools[i].word);
	}
	is_int(config_apply_file_text(&c, "t.conf", "queue-max-messages = 1000000000000", &cause),
	       0, "u64 at its maximum");
	ok(c.queue_max_messages == 1000000000000ULL, "u64 value");
	is_int(config_apply_file_text(&c, "t.conf", "commit-window-ms = 0", &cause), 0,
	       "a minimum of 0 accepts 0");
	is_int(c.commit_window_ms, 0, "commit-window-ms 0");
	config_release(&c);

	file_error("max-body-bytes = 1kb", "t.conf:1: max-body-bytes: \"1kb\" is not a size "
	           "(a number with an optional k, m or g suffix)", "size with two letters");
	file_error("max-body-bytes = k", "t.conf:1: max-body-bytes: \"k\" is not a size "
	           "(a number with an optional k, m or g suffix)", "suffix alone");
	file_error("max-body-bytes = 1t", "t.conf:1: max-body-bytes: \"1t\" is not a size "
	           "(a number with an optional k, m or g suffix)", "unknown suffix");
	file_error("max-body-bytes = 257M", "t.conf:1: max-body-bytes: 257M is out of range "
	           "(1..256M)", "size above its maximum");
	file_error("max-body-bytes = 0", "t.conf:1: max-body-bytes: 0 is out of range (1..256M)",
	           "size 0");
	file_error("queue-max-bytes = 17179869184G", "t.conf:1: queue-max-bytes: "
	           "\"17179869184G\" is not a size (a number with an optional k, m or g suffix)",
	           "size overflow");
	file_error("queue-max-messages = 0", "t.conf:1: queue-max-messages: 0 is out of range "
	           "(1..1000000000000)", "u64 of 0");
	file_error("queue-max-age-s = 4294967296", "t.conf:1: queue-max-age-s: 4294967296 is "
	           "out of range (1..315360000)", "unsigned above 32 bits");
	file_error("upstream-insecure =", "t.conf:1: upstream-insecure: \"\" is not a boolean "
	           "(true/false, yes/no, on/off, 1/0)", "empty boolean");
	file_error("port =", "t.conf:1: port: \"\" is not a number", "empty number");
}

static void test_file_syntax(void)
{
	struct config c;
	char *cause = NULL;

	load(&c, &cause, NULL);
	is_int(config_apply_file_text(&c, "t.conf",
	                              "# a comment\n"
	                              "\n"
	                              "   \t\n"
	                              "  port\t=  9001   # trailing comment\n"
	                              "state-dir = /srv/a#b\n"
	                              "project-id = \"a # b = c\"  # quoted\n"
	                              "tls-priorities=\"  NORMAL  \"\n"
	                              "upstream-ca = \"\"\n"
	                              "tls-cert = # no value, only a comment\n"
	                              "console-log-level = log\r\n"
	                              "  # indented comment\n"
	                              "log-level = warn",
	                              &cause), 0, "a file with every syntax");
	is_str(cause, NULL, "no cause");
	is_int(c.port, 9001, "whitespace and a trailing comment");
	is_str(c.state_dir, "/srv/a#b", "'#' without a space before it is part of the value");
	is_str(c.project_id, "a # b = c", "quotes keep '#', '=' and spaces");
	is_str(c.tls_priorities, "  NORMAL  ", "quotes keep surrounding spaces");
	is_str(c.upstream_ca, "", "\"\" is the empty string");
	is_str(c.tls_cert, "", "a comment right after '=' leaves the value empty");
	is_str(c.console_log_level, "log", "CRLF line ending");
	is_str(c.log_level, "warn", "last line without a newline");
	is_int(config_apply_file_text(&c, "t.conf", "", &cause), 0, "an empty file");
	config_release(&c);

	file_error("# one\n\nport = 70000\n", "t.conf:3: port: 70000 is out of range (1..65535)",
	           "the line number counts comments and blanks");
	file_error("port = 1\nnope = 2\n", "t.conf:2: unknown key \"nope\"", "unknown key");
	file_error("port 9000\n", "t.conf:1: expected \"key = value\"", "missing '='");
	file_error("= 9000\n", "t.conf:1: missing key before '='", "missing key");
	file_error("port = \"9000\n", "t.conf:1: unterminated quote", "unterminated quote");
	file_error("project-id = \"a\" b\n", "t.conf:1: unexpected text after the closing quote",
	           "text after a quote");
	file_error("config = other.conf\n", "t.conf:1: config is only accepted on the command line",
	           "config in a file");
	file_error("check-config = true\n",
	           "t.conf:1: check-config is only accepted on the command line",
	           "check-config in a file");
	file_error("port = 9000 extra\n", "t.conf:1: port: \"9000 extra\" is not a number",
	           "a value with a space");
	file_error("log-level = \"verbose\"\n",
	           "t.conf:1: log-level: \"verbose\" is not debug, info, warn or error",
	           "log-level in a file");
	file_error("upstream_timeout_ms = 5\n", "t.conf:1: unknown key \"upstream_timeout_ms\"",
	           "underscores are not dashes");

	{
		/* CONFIG_LINE_MAX is 4096: a longer line is refused, not cut. */
		char *text = malloc(8192);
		if (text) {
			memset(text, ' ', 8192);
			memcpy(text, "project-id = x", 14);
			text[4100] = '\0';
			file_error(text, "t.conf:1: line longer than 4096 characters",
			           "a long line");
			memcpy(text + 4096 - 3, "end", 4);
			load(&c, &cause, NULL);
			is_int(config_apply_file_text(&c, "t.conf", text, &cause), 0,
			       "a line of exactly 4096 characters");
			ok(strlen(c.project_id) == 4096 - 13 && !strcmp(c.project_id +
			   strlen(c.project_id) - 3, "end"), "the whole long value is read");
			config_release(&c);
			free(text);
		}
	}
	{
		size_t big = 1024 * 1024 + 1;
		char *text = malloc(big + 1);
		if (text) {
			memset(text, '\n', big);
			text[big] = '\0';
			file_error(text, "t.conf: larger than 1048576 bytes", "text over 1 MiB");
			free(text);
		}
	}
}

static void test_files_and_precedence(void)
{
	struct config c;
	char *cause = NULL, want[512];
	const char *path;

	path = write_file("relay.conf", "port = 9000\nstate-dir = /from/file\n"
	                  "forward-workers = 7\n");
	char *cfg = strdup(path);

	is_int(load(&c, &cause, "--config", cfg, "--port", "9001", NULL), CONFIG_RUN,
	       "--config FILE then --port");
	is_str(c.config_file, cfg, "config_file is recorded");
	is_int(c.port, 9001, "the command line beats the file");
	is_str(c.state_dir, "/from/file", "the file beats the default");
	is_int(c.forward_workers, 7, "file number applied");
	config_release(&c);

	is_int(load(&c, &cause, "--port", "9002", "--state-dir=/cli", NULL), CONFIG_RUN,
	       "no file");
	config_release(&c);
	snprintf(want, sizeof want, "--config=%s", cfg);
	is_int(load(&c, &cause, "--port", "9002", want, NULL), CONFIG_RUN,
	       "--port before --config=FILE");
	is_int(c.port, 9002, "the command line beats the file even when given first");
	is_str(c.state_dir, "/from/file", "--config=FILE applied");
	config_release(&c);

	path = write_file("bad.conf", "# header\nport = 9000\nworkers = 3\n");
	snprintf(want, sizeof want, "%s:3: unknown key \"workers\"", path);
	cli_error(want, "an error in the file names it and the line", "--config", path);

	snprintf(want, sizeof want, "cannot open %s/missing.conf: No such file or directory",
	         tmpdir);
	{
		char missing[300];
		snprintf(missing, sizeof missing, "%s/missing.conf", tmpdir);
		cli_error(want, "a missing file", "--config", missing);
	}
	cli_error("option --config needs a value", "--config without a file", "--config");

	{
		size_t big = 1024 * 1024 + 10;
		char *text = malloc(big + 1);
		if (text) {
			memset(text, '#', big);
			text[big] = '\0';
			path = write_file("big.conf", text);
			snprintf(want, sizeof want, "%s: larger than 1048576 bytes", path);
			cli_error(want, "a file over 1 MiB", "--config", path);
			free(text);
		}
	}
	free(cfg);
}

static void test_exit_options(void)
{
	struct config c;
	struct capture cap;
	char *cause = NULL, *out;
	enum config_result r;

	capture_begin(&cap, STDOUT_FILENO);
	r = load(&c, &cause, "--check-config", NULL);
	out = capture_end(&cap);
	/* main.c checks the files it names, then says "configuration ok". */
	is_int(r, CONFIG_RUN, "--check-config leaves the file checks to main");
	is_str(out, "", "and prints nothing yet");
	ok(c.check_config, "check_config is set");
	free(out);
	config_release(&c);

	capture_begin(&cap, STDOUT_FILENO);
	r = load(&c, &cause, "--check-config", "--port=0", NULL);
	out = capture_end(&cap);
	is_int(r, CONFIG_ERROR, "--check-config with a bad setting fails");
	is_str(out, "", "and prints nothing to stdout");
	is_str(cause, "--port: 0 is out of range (1..65535)", "the cause names the setting");
	free(out);
	free(cause);
	cause = NULL;
	config_release(&c);

	capture_begin(&cap, STDOUT_FILENO);
	r = load(&c, &cause, "--port=9000", "--help", "--nope", NULL);
	out = capture_end(&cap);
	is_int(r, CONFIG_EXIT, "--help exits before later arguments are looked at");
	ok(out && !strncmp(out, "usage: watchrtc-relay ", 22), "help starts with the usage line");
	ok(out && strstr(out, "\n  --port N "), "help lists --port");
	ok(out && strstr(out, "(default: 8443, 1..65535)"), "help shows port's default and range");
	ok(out && strstr(out, "--queue-max-bytes SIZE"), "help shows sizes");
	ok(out && strstr(out, "(default: 1G, 1..1024G)"), "help shows size defaults with suffixes");
	ok(out && strstr(out, "--upstream-insecure [BOOL]"), "help shows booleans");
	ok(out && strstr(out, "--config FILE "), "help lists --config");
	ok(out && strstr(out, "--shutdown-deadline-ms N"), "help lists the last setting");
	ok(out && strstr(out, "\nlistener:\n") && strstr(out, "\nupstream:\n"),
	   "help is grouped");
	ok(out && strstr(out, "listener:") < strstr(out, "storage:") &&
	   strstr(out, "storage:") < strstr(out, "process:"), "groups in the table's order");
	free(out);
	config_release(&c);

	capture_begin(&cap, STDOUT_FILENO);
	r = load(&c, &cause, "--version", NULL);
	out = capture_end(&cap);
	is_int(r, CONFIG_EXIT, "--version exits");
#ifdef PACKAGE_VERSION
	is_str(out, "watchrtc-relay " PACKAGE_VERSION "\n", "--version prints the version");
#else
	ok(out && !strncmp(out, "watchrtc-relay ", 15), "--version prints the name");
#endif
	free(out);
	config_release(&c);

	capture_begin(&cap, STDOUT_FILENO);
	config_print_help(stdout);
	out = capture_end(&cap);
	ok(out && strchr(out, '\n') && out[strlen(out) - 1] == '\n', "help ends in a newline");
	free(out);
}

/* List settings: a repeat extends, the command line replaces the file. */
static void test_lists(void)
{
	struct config c;
	char *cause = NULL, *cfg;

	is_int(load(&c, &cause, "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy=::1, 192.0.2.1",
	            NULL), CONFIG_RUN, "--trusted-proxy twice");
	is_str(c.trusted_proxies, "10.0.0.0/8,::1, 192.0.2.1",
	       "a repeated list option is extended");
	is_str(c.allowed_keys, "", "a list defaults to empty");
	config_release(&c);

	cfg = strdup(write_file("lists.conf", "allowed-keys = a, b\nallowed-keys = c\n"
	                        "allowed-origins = https://app.example.com\n"));
	is_int(load(&c, &cause, "--config", cfg, NULL), CONFIG_RUN, "lists in a file");
	is_str(c.allowed_keys, "a, b,c", "a repeated file line is extended");
	config_release(&c);
	is_int(load(&c, &cause, "--config", cfg, "--allowed-keys", "z", NULL), CONFIG_RUN,
	       "a list in the file and on the command line");
	is_str(c.allowed_keys, "z", "the command line replaces the file's list");
	is_str(c.allowed_origins, "https://app.example.com", "the file's other lists stay");
	config_release(&c);
	free(cfg);

	cli_error("--trusted-proxy: \"10.0.0.1/8\" is not a comma list of addresses or CIDR blocks "
	          "without host bits (10.0.0.0/8, 2001:db8::/32)", "a block with host bits",
	          "--trusted-proxy", "10.0.0.1/8");
	cli_error("--trusted-proxy: \"proxy.example\" is not a comma list of addresses or CIDR "
	          "blocks without host bits (10.0.0.0/8, 2001:db8::/32)", "a hostname",
	          "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "proxy.example");
	cli_error("--allowed-origins: \"https://app.example.com/\" is not a comma list of origins "
	          "like https://app.example.com", "an origin with a path",
	          "--allowed-origins", "https://app.example.com/");
	cli_error("--allowed-origins: \"app.example.com\" is not a comma list of origins like "
	          "https://app.example.com", "an origin without a scheme",
	          "--allowed-origins", "app.example.com");
	is_int(load(&c, &cause, "--allowed-origins", " https://a.example , http://b.example:8080,",
	            NULL), CONFIG_RUN, "origins with blanks and a trailing comma");
	config_release(&c);
	cli_error("allowed-keys-file: cannot read /nonexistent/keys: No such file or directory",
	          "a key file that cannot be read", "--allowed-keys-file", "/nonexistent/keys");
	cli_error("--max-header-bytes: 4K is out of range (8K..1M)", "a header limit too small",
	          "--max-header-bytes", "4K");
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		printf("Bail out! mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	test_defaults();
	test_command_line();
	test_types();
	test_file_syntax();
	test_files_and_precedence();
	test_exit_options();
	test_lists();

	{
		/* Remove what write_file made. */
		const char *names[] = {"relay.conf", "bad.conf", "big.conf", "cert.pem",
		                       "lists.conf"};
		char path[300];
		for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
			snprintf(path, sizeof path, "%s/%s", tmpdir, names[i]);
			unlink(path);
		}
		ok(rmdir(tmpdir) == 0, "temporary directory removed");
	}
	return done_testing();
}
