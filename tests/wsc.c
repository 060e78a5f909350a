/*
 * wsc.c - a websocket client for the integration tests and for load.
 *
 *   wsc --port P [--host H] --path '/websocket?apiKey=k&sessionId=s' [options] [ACTION...]
 *
 * Runs a script of actions, one per argument or, with none, one per line of
 * standard input, and prints one JSON line per event.  Exits 0 if the
 * handshake got the expected status and every expect-* held, 1 otherwise.
 *
 *   send-text STRING         one text message (the rest of the line, verbatim)
 *   send-file PATH           one text message with the file's contents
 *   send-wire PATH           the file's bytes written to the stream as they are
 *   send-frame OP FIN MASKED HEX|@PATH|-   one frame exactly as described
 *                            (OP may be hex and carry RSV bits: 0x41)
 *   send-fragments SIZE STRING   one text message in frames of SIZE bytes
 *   send-big LEN             a text frame of LEN 'a's (streaming stops if answered)
 *   ping [PAYLOAD]           a ping
 *   expect-pong              waits for a pong
 *   close CODE [REASON]      a close frame
 *   expect-close CODE        waits for the server's close frame with CODE
 *   expect-text SUBSTRING    waits for a text frame containing SUBSTRING
 *   expect-eof               waits until the server closes the connection
 *   recv                     prints the next frame
 *   sleep MS                 reads (and prints) frames for MS milliseconds
 *   stop-reading MS          reads nothing for MS milliseconds
 *
 * Like a browser, it answers pings and echoes the server's close unless told
 * otherwise (--no-auto-pong).  --early-wire FILE writes FILE's bytes right
 * after the upgrade request, before the 101 arrives.
 *
 *   wsc --port P --path '/websocket?apiKey=k' --load N --messages M --session-prefix X
 *
 * opens N connections at once (sessionId X0..X{N-1}), waits until all are
 * open and greeted, sends M messages ["seq",i,j] on each, closes them with
 * 1000 and prints a summary line.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "wsclient.h"

#define MAX_FILE_BYTES (64u << 20)
#define MAX_EXTRA_HEADERS 4096

struct script {
	struct wsclient *c;
	int timeout_ms;
	bool auto_pong;
	bool close_sent, close_received, eof;
	uint16_t close_code;
	bool pong_seen;
	int failures;
};

/* --- JSON output ---------------------------------------------------------- */

static bool utf8_ok(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t len;

		if (s[i] < 0x80) {
			i++;
			continue;
		}
		if ((s[i] & 0xe0) == 0xc0)
			len = 2, cp = s[i] & 0x1f;
		else if ((s[i] & 0xf0) == 0xe0)
			len = 3, cp = s[i] & 0x0f;
		else if ((s[i] & 0xf8) == 0xf0)
			len = 4, cp = s[i] & 0x07;
		else
			return false;
		if (n - i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
		    (len == 4 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* Prints s as a JSON string (s must be valid UTF-8). */
static void json_string(FILE *out, const char *s, size_t n)
{
	fputc('"', out);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '"' || ch == '\\')
			fprintf(out, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", out);
		else if (ch == '\r')
			fputs("\\r", out);
		else if (ch == '\t')
			fputs("\\t", out);
		else if (ch < 0x20 || ch == 0x7f)
			fprintf(out, "\\u%04x", ch);
		else
			fputc(ch, out);
	}
	fputc('"', out);
}

static void json_cstr(FILE *out, const char *s)
{
	json_string(out, s, strlen(s));
}

static void print_payload(const uint8_t *p, size_t n)
{
	if (utf8_ok(p, n)) {
		fputs(",\"text\":", stdout);
		json_string(stdout, (const char *)p, n);
	} else {
		fputs(",\"hex\":\"", stdout);
		for (size_t i = 0; i < n; i++)
			printf("%02x", p[i]);
		fputc('"', stdout);
	}
}

static void print_event(const char *event, const char *key, const char *value)
{
	printf("{\"event\":\"%s\"", event);
	if (key) {
		printf(",\"%s\":", key);
		json_cstr(stdout, value);
	}
	printf("}\n");
	fflush(stdout);
}

static void print_handshake(struct wsclient *c)
{
	size_t blen;
	const char *body = wsclient_body(c, &blen);

	printf("{\"event\":\"handshake\",\"status\":%d,\"accept_ok\":%s,\"headers\":{",
	       wsclient_status(c), wsclient_accept_ok(c) ? "true" : "false");
	for (size_t i = 0; i < wsclient_header_count(c); i++) {
		const struct wsclient_header *h = wsclient_header_at(c, i);

		if (i)
			fputc(',', stdout);
		json_cstr(stdout, h->name);
		fputc(':', stdout);
		json_cstr(stdout, h->value);
	}
	fputc('}', stdout);
	if (blen)
		print_payload((const uint8_t *)body, blen);
	printf("}\n");
	fflush(stdout);
}

static void print_expect(const char *what, long want, long got, bool ok)
{
	printf("{\"event\":\"expect\",\"what\":\"%s\",\"want\":%ld,\"got\":%ld,\"ok\":%s}\n", what,
	       want, got, ok ? "true" : "false");
	fflush(stdout);
}

/* --- receiving ------------------------------------------------------------ */

/* Prints a frame and reacts as a browser would: pong, echo a close. */
static void handle_frame(struct script *s, const struct wsclient_frame *f)
{
	if (f->opcode == 0x8) {
		printf("{\"event\":\"close\",\"code\":%u,\"reason\":", f->close_code);
		if (utf8_ok((const uint8_t *)f->close_reason, strlen(f->close_reason)))
			json_cstr(stdout, f->close_reason);
		else
			fputs("\"\"", stdout);
		printf("}\n");
		s->close_received = true;
		s->close_code = f->close_code;
		if (!s->close_sent) {
			/* Echo the code (RFC 6455 5.5.1); 1005 means there was none. */
			wsclient_send_close(s->c, f->close_code == 1005 ? 0 : f->close_code, "");
			s->close_sent = true;
		}
	} else {
		printf("{\"event\":\"frame\",\"opcode\":%u,\"fin\":%s,\"masked\":%s,\"len\":%zu",
		       f->opcode, f->fin ? "true" : "false", f->masked ? "true" : "false", f->len);
		print_payload(f->payload, f->len);
		printf("}\n");
		if (f->opcode == 0x9 && s->auto_pong && !s->close_sent)
			wsclient_send_frame(s->c, 0xa, true, true, f->payload, f->len);
		if (f->opcode == 0xa)
			s->pong_seen = true;
	}
	fflush(stdout);
}

/*
 * Reads and handles one frame within timeout_ms.  Returns 1 for a frame, 0
 * on timeout, -1 once the connection is gone (eof printed once).
 */
static int read_one(struct script *s, int timeout_ms, struct wsclient_frame *keep)
{
	struct wsclient_frame f;
	int r;

	if (s->eof)
		return -1;
	r = wsclient_recv_frame(s->c, &f, timeout_ms);
	if (r == WSC_ETIMEDOUT)
		return 0;
	if (r < 0) {
		s->eof = true;
		if (r == WSC_ECLOSED)
			print_event("eof", NULL, NULL);
		else
			print_event("error", "message", wsclient_strerror(r));
		return -1;
	}
	handle_frame(s, &f);
	if (keep)
		*keep = f;
	else
		wsclient_frame_release(&f);
	return 1;
}

/* --- actions -------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	if (!f)
		return NULL;
	for (;;) {
		if (n == cap) {
			char *grown;

			if (cap >= MAX_FILE_BYTES)
				goto fail;
			cap = cap ? cap * 2 : 65536;
			grown = realloc(buf, cap + 1);
			if (!grown)
				goto fail;
			buf = grown;
		}
		size_t got = fread(buf + n, 1, cap - n, f);
		if (got == 0)
			break;
		n += got;
	}
	if (ferror(f))
		goto fail;
	fclose(f);
	if (!buf && !(buf = malloc(1)))
		return NULL;
	buf[n] = '\0';
	*len = n;
	return buf;
fail:
	fclose(f);
	free(buf);
	return NULL;
}

/* Decodes "-", hex digits or @file into a malloc'd payload. */
static uint8_t *parse_payload(const char *arg, size_t *len)
{
	size_t n = strlen(arg);
	uint8_t *out;

	if (arg[0] == '@')
		return (uint8_t *)read_file(arg + 1, len);
	if (!strcmp(arg, "-"))
		n = 0;
	if (n % 2)
		return NULL;
	out = malloc(n / 2 + 1);
	if (!out)
		return NULL;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;

		if (sscanf(arg + 2 * i, "%2x", &v) != 1) {
			free(out);
			return NULL;
		}
		out[i] = (uint8_t)v;
	}
	*len = n / 2;
	return out;
}

static void report_send(const char *what, int r)
{
	if (r < 0)
		print_event("error", "message", wsclient_strerror(r));
	else
		print_event("sent", "what", what);
}

static void expect_close(struct script *s, long want)
{
	int64_t deadline = mono_ms() + s->timeout_ms;

	while (!s->close_received && !s->eof && mono_ms() < deadline)
		read_one(s, (int)(deadline - mono_ms()), NULL);
	print_expect("close", want, s->close_received ? s->close_code : -1,
	             s->close_received && s->close_code == want);
	if (!s->close_received || s->close_code != want)
		s->failures++;
}

static void expect_pong(struct script *s)
{
	int64_t deadline = mono_ms() + s->timeout_ms;

	while (!s->pong_seen && !s->eof && mono_ms() < deadline)
		read_one(s, (int)(deadline - mono_ms()), NULL);
	print_expect("pong", 1, s->pong_seen, s->pong_seen);
	if (!s->pong_seen)
		s->failures++;
}

static void expect_text(struct script *s, const char *needle)
{
	int64_t deadline = mono_ms() + s->timeout_ms;
	bool found = false;

	while (!found && !s->eof && mono_ms() < deadline) {
		struct wsclient_frame f;

		if (read_one(s, (int)(deadline - mono_ms()), &f) != 1)
			continue;
		found = f.opcode == 0x1 && strstr((const char *)f.payload, needle);
		wsclient_frame_release(&f);
	}
	print_expect("text", 1, found, found);
	if (!found)
		s->failures++;
}

static void expect_eof(struct script *s)
{
	int64_t deadline = mono_ms() + s->timeout_ms;

	while (!s->eof && mono_ms() < deadline)
		read_one(s, (int)(deadline - mono_ms()), NULL);
	print_expect("eof", 1, s->eof, s->eof);
	if (!s->eof)
		s->failures++;
}

static void run_action(struct script *s, char *line)
{
	char *cmd = line, *arg;
	size_t len = 0;
	int r;

	while (*cmd == ' ' || *cmd == '\t')
		cmd++;
	if (!*cmd || *cmd == '#')
		return;
	arg = cmd + strcspn(cmd, " \t");
	if (*arg)
		*arg++ = '\0';
	while (*arg == ' ' || *arg == '\t')
		arg++;

	if (!strcmp(cmd, "send-text")) {
		report_send("text", wsclient_send_message(s->c, 0x1, arg, strlen(arg), 0));
	} else if (!strcmp(cmd, "send-file") || !strcmp(cmd, "send-wire")) {
		char *buf = read_file(arg, &len);

		if (!buf) {
			print_event("error", "message", "cannot read the file");
			s->failures++;
			return;
		}
		r = cmd[5] == 'f' ? wsclient_send_message(s->c, 0x1, buf, len, 0)
		                  : wsclient_send_raw(s->c, buf, len);
		free(buf);
		report_send(cmd + 5, r);
	} else if (!strcmp(cmd, "send-frame")) {
		unsigned fin, masked;
		int op;
		char payload[4096] = "-";
		uint8_t *p;

		if (sscanf(arg, "%i %u %u %4095s", &op, &fin, &masked, payload) < 3 ||
		    !(p = parse_payload(payload, &len))) {
			print_event("error", "message",
			            "usage: send-frame OP FIN MASKED HEX|@FILE|-");
			s->failures++;
			return;
		}
		report_send("frame", wsclient_send_frame(s->c, (unsigned)op, fin, masked, p, len));
		free(p);
	} else if (!strcmp(cmd, "send-fragments")) {
		size_t size = strtoul(arg, &arg, 10);

		if (*arg == ' ')
			arg++;
		report_send("fragments", wsclient_send_message(s->c, 0x1, arg, strlen(arg), size));
	} else if (!strcmp(cmd, "send-big")) {
		uint64_t sent = 0;

		r = wsclient_send_filler(s->c, 0x1, strtoull(arg, NULL, 10), 'a', &sent);
		printf("{\"event\":\"sent\",\"what\":\"big\",\"len\":%s,\"sent\":%llu%s}\n", arg,
		       (unsigned long long)sent, r < 0 ? ",\"error\":true" : "");
		fflush(stdout);
	} else if (!strcmp(cmd, "ping")) {
		s->pong_seen = false;
		report_send("ping", wsclient_send_frame(s->c, 0x9, true, true, arg, strlen(arg)));
	} else if (!strcmp(cmd, "expect-pong")) {
		expect_pong(s);
	} else if (!strcmp(cmd, "close")) {
		unsigned long code = strtoul(arg, &arg, 10);

		while (*arg == ' ')
			arg++;
		s->close_sent = true;
		report_send("close", wsclient_send_close(s->c, (uint16_t)code, arg));
	} else if (!strcmp(cmd, "expect-close")) {
		expect_close(s, strtol(arg, NULL, 10));
	} else if (!strcmp(cmd, "expect-text")) {
		expect_text(s, arg);
	} else if (!strcmp(cmd, "expect-eof")) {
		expect_eof(s);
	} else if (!strcmp(cmd, "recv")) {
		if (read_one(s, s->timeout_ms, NULL) == 0)
			print_event("timeout", NULL, NULL);
	} else if (!strcmp(cmd, "sleep")) {
		int64_t deadline = mono_ms() + strtol(arg, NULL, 10);

		while (!s->eof && mono_ms() < deadline)
			read_one(s, (int)(deadline - mono_ms()), NULL);
	} else if (!strcmp(cmd, "stop-reading")) {
		usleep((useconds_t)strtoul(arg, NULL, 10) * 1000);
	} else {
		print_event("error", "message", "unknown action");
		s->failures++;
	}
}

/* --- load ----------------------------------------------------------------- */

struct load {
	const struct wsclient_opts *base;
	unsigned n, messages, threads;
	const char *prefix;
	pthread_barrier_t opened, sent;
	atomic_uint ok_open, ok_hello, ok_close, errors;
	atomic_ullong msgs;
};

struct load_worker {
	struct load *ld;
	unsigned index;
	pthread_t thread;
};

static void *load_main(void *arg)
{
	struct load_worker *w = arg;
	struct load *ld = w->ld;
	unsigned mine = (ld->n - w->index + ld->threads - 1) / ld->threads;
	struct wsclient **cs = calloc(mine ? mine : 1, sizeof *cs);
	char path[2048], msg[64];

	for (unsigned k = 0; cs && k < mine; k++) {
		unsigned i = w->index + k * ld->threads;
		struct wsclient_opts o = *ld->base;
		struct wsclient_frame f;

		snprintf(path, sizeof path, "%s%ssessionId=%s%u", o.path,
		         strchr(o.path, '?') ? "&" : "?", ld->prefix, i);
		o.path = path;
		if (wsclient_connect(&cs[k], &o, NULL, 0) != WSC_OK ||
		    wsclient_status(cs[k]) != 101) {
			atomic_fetch_add(&ld->errors, 1);
			continue;
		}
		atomic_fetch_add(&ld->ok_open, 1);
		if (wsclient_recv_frame(cs[k], &f, -1) == WSC_OK && f.opcode == 0x1 &&
		    strstr((const char *)f.payload, "\"connectionId\""))
			atomic_fetch_add(&ld->ok_hello, 1);
		else
			atomic_fetch_add(&ld->errors, 1);
		wsclient_frame_release(&f);
	}
	/* Every connection is open before any message goes out. */
	pthread_barrier_wait(&ld->opened);
	for (unsigned j = 0; cs && j < ld->messages; j++) {
		for (unsigned k = 0; k < mine; k++) {
			int n;

			if (!cs[k])
				continue;
			n = snprintf(msg, sizeof msg, "[\"seq\",%u,%u]", w->index + k * ld->threads,
			             j);
			if (wsclient_send_message(cs[k], 0x1, msg, (size_t)n, 0) == WSC_OK) {
				atomic_fetch_add(&ld->msgs, 1);
			} else {
				atomic_fetch_add(&ld->errors, 1);
				wsclient_destroy(cs[k]);
				cs[k] = NULL;
			}
		}
	}
	pthread_barrier_wait(&ld->sent);
	for (unsigned k = 0; cs && k < mine; k++) {
		struct wsclient_frame f;
		bool clean = false;

		if (!cs[k])
			continue;
		if (wsclient_send_close(cs[k], 1000, "") == WSC_OK) {
			/* Skip pings; stop at the close or on error. */
			while (wsclient_recv_frame(cs[k], &f, -1) == WSC_OK) {
				bool done = f.opcode == 0x8;

				clean = done && f.close_code == 1000;
				wsclient_frame_release(&f);
				if (done)
					break;
			}
		}
		atomic_fetch_add(clean ? &ld->ok_close : &ld->errors, 1);
		wsclient_destroy(cs[k]);
	}
	free(cs);
	return NULL;
}

static int run_load(const struct wsclient_opts *o, unsigned n, unsigned messages,
                    const char *prefix, unsigned threads)
{
	struct load ld = { .base = o, .n = n, .messages = messages, .prefix = prefix };
	struct load_worker *ws;
	struct rlimit rl;
	int64_t t0 = mono_ms();
	bool all;

	/* Each connection is one descriptor here. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	ld.threads = threads ? threads : 32;
	if (ld.threads > n)
		ld.threads = n ? n : 1;
	ws = calloc(ld.threads, sizeof *ws);
	if (!ws)
		return 1;
	pthread_barrier_init(&ld.opened, NULL, ld.threads);
	pthread_barrier_init(&ld.sent, NULL, ld.threads);
	for (unsigned t = 0; t < ld.threads; t++) {
		ws[t] = (struct load_worker){ .ld = &ld, .index = t };
		if (pthread_create(&ws[t].thread, NULL, load_main, &ws[t]) != 0) {
			fprintf(stderr, "wsc: cannot start thread %u\n", t);
			exit(1);   /* the barrier would never open */
		}
	}
	for (unsigned t = 0; t < ld.threads; t++)
		pthread_join(ws[t].thread, NULL);
	pthread_barrier_destroy(&ld.opened);
	pthread_barrier_destroy(&ld.sent);
	free(ws);

	all = ld.ok_open == n && ld.ok_hello == n && ld.ok_close == n &&
	      ld.msgs == (unsigned long long)n * messages && ld.errors == 0;
	printf("{\"event\":\"load\",\"connections\":%u,\"opened\":%u,\"hello\":%u,"
	       "\"messages_sent\":%llu,\"closed_clean\":%u,\"errors\":%u,\"elapsed_ms\":%lld,"
	       "\"ok\":%s}\n",
	       n, ld.ok_open, ld.ok_hello, (unsigned long long)ld.msgs, ld.ok_close, ld.errors,
	       (long long)(mono_ms() - t0), all ? "true" : "false");
	return all ? 0 : 1;
}

/* --- main ----------------------------------------------------------------- */

/* Connects, then runs the actions in argv (or, with none, stdin's lines). */
static int run_script(const struct wsclient_opts *o, struct script *s, int expect_status,
                      int argc, char **argv)
{
	char err[256];

	if (wsclient_connect(&s->c, o, err, sizeof err) < 0) {
		print_event("error", "message", err);
		return 1;
	}
	print_handshake(s->c);
	if (wsclient_status(s->c) != expect_status) {
		wsclient_destroy(s->c);
		return 1;
	}
	if (expect_status == 101 && argc > 0) {
		for (int i = 0; i < argc; i++)
			run_action(s, argv[i]);
	} else if (expect_status == 101) {
		char *line = NULL;
		size_t cap = 0;
		ssize_t n;

		while ((n = getline(&line, &cap, stdin)) > 0) {
			while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
				line[--n] = '\0';
			run_action(s, line);
		}
		free(line);
	}
	wsclient_destroy(s->c);
	return s->failures ? 1 : 0;
}

static void usage(FILE *out)
{
	fprintf(out,
	        "usage: wsc --port P [--host H] [--path P] [--no-protocol | --protocol P]\n"
	        "           [--origin O] [--user-agent UA] [--xff V] [--key K] [--version V]\n"
	        "           [--header 'Name: value']... [--timeout-ms MS] [--expect-status N]\n"
	        "           [--no-auto-pong] [--early-wire FILE] [ACTION...]\n"
	        "       wsc --port P --path P --load N --messages M --session-prefix X [--threads T]\n"
		"Actions (from the arguments, else one per line on stdin): see wsc.c's top.\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'H' },
		{ "port", required_argument, NULL, 'p' },
		{ "path", required_argument, NULL, 'P' },
		{ "no-protocol", no_argument, NULL, 'n' },
		{ "protocol", required_argument, NULL, 'r' },
		{ "origin", required_argument, NULL, 'o' },
		{ "user-agent", required_argument, NULL, 'u' },
		{ "xff", required_argument, NULL, 'x' },
		{ "key", required_argument, NULL, 'k' },
		{ "version", required_argument, NULL, 'v' },
		{ "header", required_argument, NULL, 'h' },
		{ "timeout-ms", required_argument, NULL, 't' },
		{ "expect-status", required_argument, NULL, 's' },
		{ "no-auto-pong", no_argument, NULL, 'a' },
		{ "early-wire", required_argument, NULL, 'e' },
		{ "load", required_argument, NULL, 'L' },
		{ "messages", required_argument, NULL, 'M' },
		{ "session-prefix", required_argument, NULL, 'S' },
		{ "threads", required_argument, NULL, 'T' },
		{ "help", no_argument, NULL, '?' },
		{ NULL, 0, NULL, 0 },
	};
	struct wsclient_opts o = { .path = "/" };
	struct script s = { .auto_pong = true };
	char extra[MAX_EXTRA_HEADERS] = "";
	unsigned load = 0, messages = 0, threads = 0;
	const char *prefix = "load-";
	char *early = NULL;
	int expect_status = 101, opt, r;

	/* A server that closes first must not kill us mid-write. */
	signal(SIGPIPE, SIG_IGN);
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'H': o.host = optarg; break;
		case 'p': o.port = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'P': o.path = optarg; break;
		case 'n': o.protocol = ""; break;
		case 'r': o.protocol = optarg; break;
		case 'o': o.origin = optarg; break;
		case 'u': o.user_agent = optarg; break;
		case 'x': o.xff = optarg; break;
		case 'k': o.key = optarg; break;
		case 'v': o.version = optarg; break;
		case 'h':
			if (strlen(extra) + strlen(optarg) + 3 > sizeof extra) {
				fprintf(stderr, "wsc: too many --header bytes\n");
				free(early);
				return 2;
			}
			strcat(extra, optarg);
			strcat(extra, "\r\n");
			o.extra_headers = extra;
			break;
		case 't': o.timeout_ms = (int)strtol(optarg, NULL, 10); break;
		case 's': expect_status = (int)strtol(optarg, NULL, 10); break;
		case 'a': s.auto_pong = false; break;
		case 'e':
			free(early);
			early = read_file(optarg, &o.early_len);
			if (!early) {
				fprintf(stderr, "wsc: cannot read %s\n", optarg);
				return 2;   /* nothing else is allocated yet */
			}
			o.early = early;
			break;
		case 'L': load = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'M': messages = (unsigned)strtoul(optarg, NULL, 10); break;
		case 'S': prefix = optarg; break;
		case 'T': threads = (unsigned)strtoul(optarg, NULL, 10); break;
		default:
			usage(opt == '?' ? stdout : stderr);
			free(early);
			return 2;
		}
	}
	if (!o.port) {
		usage(stderr);
		free(early);
		return 2;
	}
	s.timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : 5000;
	r = load ? run_load(&o, load, messages, prefix, threads)
	         : run_script(&o, &s, expect_status, argc - optind, argv + optind);
	free(early);
	return r;
}
