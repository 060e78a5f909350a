/*
 * cli.c - the queue CLI (cli.h): parses `watchrtc-relay queue ...`, finds
 * the database (--state-dir, or the state-dir of --config, or the default)
 * and prints what queue_admin.h reports, for a person or, with --json, for
 * a script.
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "clock.h"
#include "config.h"
#include "queue.h"
#include "queue_admin.h"

#define CLI_HEADS_SHOWN 20        /* retry heads `stats` lists (it counts them all) */
#define CLI_DETAIL_SHOWN 160      /* bytes of a dead letter's detail shown per line */
#define CLI_FIELD_MAX 512         /* bytes of a session or target shown */

struct cli {
	const char *state_dir, *config_file, *output;
	bool json, all;
	uint64_t limit;               /* 0: everything */
	const char *cmd, *sub;
	int64_t *ids;
	size_t nids;
	char db[PATH_MAX];
	bool relay_running;
};

static const char usage_text[] =
        "usage: watchrtc-relay queue [--state-dir DIR | --config FILE] [--json] COMMAND\n"
        "  stats                       depth, bytes, oldest age, sessions waiting for a retry,\n"
        "                              dead letters by reason\n"
        "  dead list [--limit N]       the dead letters, oldest first\n"
        "  dead replay --all | ID...   move dead letters back into the queue (ids and order kept)\n"
        "  dead purge [--all | ID...]  delete dead letters (all of them without IDs)\n"
        "  check                       full integrity check of the database\n"
        "  salvage [--output FILE]     copy every readable row of a corrupt database into a new\n"
        "                              one and move the bad file aside (the relay must be stopped)\n"
        "It works while the relay runs (except salvage).  Exit status: 0 done, 1 failed\n"
        "(check: the database is damaged), 2 bad usage.\n";

static int usage(const char *why)
{
	if (why)
		fprintf(stderr, "watchrtc-relay queue: %s\n", why);
	fputs(usage_text, stderr);
	return 2;
}

static int failed(const char *cause, int err)
{
	fprintf(stderr, "watchrtc-relay queue: %s\n", cause ? cause : queue_strerror(err));
	return 1;
}

/* --- formatting ------------------------------------------------------------------ */

static const char *fmt_time(int64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	if (ms <= 0 || !gmtime_r(&t, &tm))
		snprintf(buf, len, "-");
	else
		strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return buf;
}

static const char *fmt_age(int64_t ms, char *buf, size_t len)
{
	int64_t s = ms / 1000;

	if (ms < 1000)
		snprintf(buf, len, "%" PRId64 " ms", ms < 0 ? 0 : ms);
	else if (s < 3600)
		snprintf(buf, len, "%" PRId64 "m %" PRId64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, len, "%" PRId64 "h %" PRId64 "m", s / 3600, s / 60 % 60);
	else
		snprintf(buf, len, "%" PRId64 "d %" PRId64 "h", s / 86400, s / 3600 % 24);
	return buf;
}

/* s for one line of output: control characters become '?', and it is cut to
 * fit len. */
static const char *printable(const char *s, char *buf, size_t len)
{
	size_t i;

	for (i = 0; s && s[i] != '\0' && i + 1 < len; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	buf[i] = '\0';
	return buf;
}

/* A target with its API key cut to its first characters, as the log shows
 * keys: output gets pasted into tickets. */
static const char *masked_target(const char *t, char *buf, size_t len)
{
	static const char *const names[] = { "apiKey=", "token=" };
	const char *p = NULL, *k, *end;
	size_t i, n, keep;

	if (!t)
		return printable("", buf, len);
	for (i = 0; i < sizeof names / sizeof names[0] && !p; i++) {
		k = strstr(t, names[i]);
		if (k && (k == t || k[-1] == '?' || k[-1] == '&'))
			p = k + strlen(names[i]);
	}
	if (!p)
		return printable(t, buf, len);
	end = p + strcspn(p, "&");
	keep = end - p > 4 ? 4 : (size_t)(end - p);
	n = (size_t)(p - t) + keep;
	snprintf(buf, len, "%.*s...%s", (int)n, t, end);
	return printable(buf, buf, len);
}

/* Prints doc as the whole output and frees it. */
static int print_json(json_t *doc)
{
	char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;

	json_decref(doc);
	if (!text)
		return failed("out of memory", QUEUE_ENOMEM);
	puts(text);
	free(text);
	return 0;
}

/* --- stats ----------------------------------------------------------------------- */

struct heads {
	const struct cli *c;
	json_t *list;
	uint64_t count;
};

static int on_head(void *arg, const struct queue_admin_row *r)
{
	struct heads *h = arg;
	char sess[CLI_FIELD_MAX], tgt[CLI_FIELD_MAX], age[32];

	if (h->count++ >= (h->c->limit > 0 ? h->c->limit : CLI_HEADS_SHOWN))
		return 0; /* counted, not shown */
	if (h->list) {
		json_array_append_new(h->list, json_pack("{s:I, s:s, s:s, s:I, s:I, s:I}",
			"id", (json_int_t)r->id, "session", r->session ? r->session : "",
			"target", masked_target(r->target, tgt, sizeof tgt),
			"attempts", (json_int_t)r->attempts, "queued", (json_int_t)r->queued,
			"received_ms", (json_int_t)r->received_ms));
		return 0;
	}
	printf("  #%" PRId64 "  session %s  %" PRIu32 " attempts  %" PRIu64 " queued  "
	       "received %s ago  %s\n", r->id, printable(r->session, sess, sizeof sess),
	       r->attempts, r->queued, fmt_age(wall_ms() - r->received_ms, age, sizeof age),
	       masked_target(r->target, tgt, sizeof tgt));
	return 0;
}

static int on_reason(void *arg, const struct queue_admin_row *r)
{
	json_t *obj = arg;
	char why[CLI_FIELD_MAX];

	if (obj)
		json_object_set_new(obj, r->reason ? r->reason : "",
		                    json_integer((json_int_t)r->queued));
	else
		printf("  %8" PRIu64 "  %s\n", r->queued, printable(r->reason, why, sizeof why));
	return 0;
}

static int cmd_stats(struct cli *c, struct queue_admin *a)
{
	struct queue_admin_stats st;
	struct heads h = { .c = c };
	json_t *doc = NULL, *reasons = NULL;
	char *cause = NULL, t[32], age[32];
	int err;

	if ((err = queue_admin_stats(a, &st, &cause)) != QUEUE_OK)
		goto fail;
	if (c->json) {
		h.list = json_array();
		reasons = json_object();
	} else {
		printf("database      %s (schema %" PRId64 ")\n", c->db, st.schema_version);
		printf("instance      %s\n", st.instance_id[0] ? st.instance_id : "-");
		printf("relay         %s\n", c->relay_running ? "running" : "not running");
		printf("queued        %" PRIu64 " messages, %" PRIu64 " bytes, %" PRIu64
		       " sessions\n",
		       st.depth, st.bytes, st.sessions);
		if (c->relay_running)
			printf("upstream      %" PRIu64 " sessions on upstream websockets\n",
			       st.sessions_upstream);
		if (st.oldest_ms > 0)
			printf("oldest        received %s, %s ago\n",
			       fmt_time(st.oldest_ms, t, sizeof t),
			       fmt_age(wall_ms() - st.oldest_ms, age, sizeof age));
		printf("retrying      sessions whose head waits for a retry:\n");
	}
	if ((err = queue_admin_retry_heads(a, 0, on_head, &h, &cause)) != QUEUE_OK)
		goto fail;
	if (!c->json) {
		if (h.count > (c->limit > 0 ? c->limit : CLI_HEADS_SHOWN))
			printf("  ... %" PRIu64 " sessions in all\n", h.count);
		else if (h.count == 0)
			printf("  none\n");
		printf("dead letters  %" PRIu64 "\n", st.dead);
	}
	if ((err = queue_admin_dead_reasons(a, on_reason, reasons, &cause)) != QUEUE_OK)
		goto fail;
	if (!c->json)
		return 0;
	doc = json_pack("{s:s, s:I, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:o, s:I, s:I, s:o}",
		"database", c->db, "schema_version", (json_int_t)st.schema_version,
		"instance_id", st.instance_id, "relay_running", c->relay_running,
		"depth", (json_int_t)st.depth, "bytes", (json_int_t)st.bytes,
		"sessions", (json_int_t)st.sessions, "oldest_received_ms", (json_int_t)st.oldest_ms,
		"oldest_age_ms", (json_int_t)(st.oldest_ms > 0 ? wall_ms() - st.oldest_ms : 0),
		"waiting_retry", h.list, "sessions_waiting_retry", (json_int_t)h.count,
		"dead_letters", (json_int_t)st.dead, "dead_by_reason", reasons);
	if (doc)
		json_object_set_new(
			doc, "sessions_upstream",
			json_integer(c->relay_running ? (json_int_t)st.sessions_upstream : 0));
	return print_json(doc);
fail:
	json_decref(h.list);
	json_decref(reasons);
	err = failed(cause, err);
	free(cause);
	return err;
}

/* --- dead letters ------------------------------------------------------------------- */

struct listing {
	bool json;
	uint64_t n;
};

static int on_dead(void *arg, const struct queue_admin_row *r)
{
	struct listing *l = arg;
	char sess[CLI_FIELD_MAX], tgt[CLI_FIELD_MAX], why[CLI_FIELD_MAX], det[CLI_DETAIL_SHOWN];
	char t[32];
	json_t *row;
	char *text;

	masked_target(r->target, tgt, sizeof tgt);
	if (l->json) {
		/* One element at a time: the list may be longer than memory. */
		row = json_pack("{s:I, s:s, s:s, s:s, s:i, s:s?, s:I, s:I, s:I, s:I}",
			"id", (json_int_t)r->id, "session", r->session ? r->session : "",
			"target", tgt, "reason", r->reason ? r->reason : "", "status", r->status,
			"detail", r->detail, "attempts", (json_int_t)r->attempts,
			"bytes", (json_int_t)r->body_len, "received_ms", (json_int_t)r->received_ms,
			"dead_ms", (json_int_t)r->dead_ms);
		text = row ? json_dumps(row, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
		json_decref(row);
		if (!text)
			return -1;
		printf("%s\n  %s", l->n == 0 ? "" : ",", text);
		free(text);
	} else {
		printf("#%" PRId64 "  dead %s  reason=\"%s\" status=%d attempts=%" PRIu32
		       " bytes=%" PRIu64 " session=%s target=%s",
		       r->id, fmt_time(r->dead_ms, t, sizeof t),
		       printable(r->reason, why, sizeof why), r->status, r->attempts, r->body_len,
		       printable(r->session, sess, sizeof sess), tgt);
		if (r->detail && r->detail[0] != '\0')
			printf(" detail=\"%s\"", printable(r->detail, det, sizeof det));
		putchar('\n');
	}
	l->n++;
	return 0;
}

static int cmd_dead_list(struct cli *c, struct queue_admin *a)
{
	struct listing l = { .json = c->json };
	char *cause = NULL;
	int err;

	if (c->json)
		fputs("[", stdout);
	err = queue_admin_dead_list(a, c->limit, on_dead, &l, &cause);
	if (c->json)
		puts(l.n > 0 ? "\n]" : "]");
	else if (err == QUEUE_OK && l.n == 0)
		puts("no dead letters");
	if (err != QUEUE_OK) {
		err = failed(cause, err);
		free(cause);
	}
	return err;
}

static int cmd_dead_move(struct cli *c, struct queue_admin *a)
{
	bool replay = strcmp(c->sub, "replay") == 0;
	uint64_t n = 0;
	char *cause = NULL;
	int err;

	if (replay && !c->all && c->nids == 0)
		return usage("dead replay needs --all or the ids to replay");
	if (c->all && c->nids > 0)
		return usage("give --all or ids, not both");
	err = replay ? queue_admin_dead_replay(a, c->ids, c->nids, &n, &cause)
	             : queue_admin_dead_purge(a, c->ids, c->nids, &n, &cause);
	if (err != QUEUE_OK) {
		err = failed(cause, err);
		free(cause);
		return err;
	}
	if (c->json)
		return print_json(json_pack("{s:I, s:I, s:b}", replay ? "replayed" : "purged",
		                            (json_int_t)n, "requested", (json_int_t)c->nids,
		                            "relay_running", c->relay_running));
	if (!replay) {
		printf("deleted %" PRIu64 " dead letters\n", n);
	} else {
		printf("moved %" PRIu64 " dead letters back into the queue\n", n);
		if (n > 0)
			printf("%s\n", c->relay_running
			                       ? "the running relay sends them within a second"
			                       : "the relay sends them when it starts");
	}
	if (c->nids > n)
		printf("%" PRIu64 " of the ids given are not dead letters\n",
		       (uint64_t)c->nids - n);
	return 0;
}

/* --- check and salvage ------------------------------------------------------------------ */

static int cmd_check(struct cli *c, struct queue_admin *a)
{
	char report[4096], *cause = NULL;
	bool ok = false;
	int err;

	err = queue_admin_check(a, &ok, report, sizeof report, &cause);
	if (err != QUEUE_OK) {
		err = failed(cause, err);
		free(cause);
		return err;
	}
	if (c->json)
		return print_json(json_pack("{s:s, s:b, s:s}", "database", c->db, "ok", ok,
		                            "report", report)) || !ok;
	if (ok) {
		printf("%s: ok\n", c->db);
		return 0;
	}
	printf("%s: DAMAGED\n%s\nStop the relay and run `watchrtc-relay queue --state-dir %s "
	       "salvage`: it keeps every readable row and moves the bad file aside.\n",
	       c->db, report, c->state_dir);
	return 1;
}

static int cmd_salvage(struct cli *c)
{
	struct queue_admin_salvage res;
	char *cause = NULL;
	int err;

	err = queue_admin_salvage(c->db, c->output, &res, &cause);
	if (err != QUEUE_OK) {
		err = failed(cause, err);
		free(cause);
		return err;
	}
	if (c->json)
		return print_json(json_pack(
			"{s:s, s:s, s:s?, s:I, s:I, s:I, s:b}", "database", c->db, "output",
			res.output, "moved_to", res.moved_to[0] ? res.moved_to : NULL, "messages",
			(json_int_t)res.messages, "dead_letters", (json_int_t)res.dead,
			"read_errors", (json_int_t)res.read_errors, "kept_instance_id",
			res.kept_instance_id));
	printf("salvaged %" PRIu64 " queued messages and %" PRIu64 " dead letters into %s\n",
	       res.messages, res.dead, res.output);
	if (res.read_errors > 0)
		printf("%" PRIu64 " damaged %s could not be read: the rows there are lost\n",
		       res.read_errors, res.read_errors == 1 ? "place" : "places");
	if (res.moved_to[0] != '\0')
		printf("the damaged file is now %s\n", res.moved_to);
	printf("%s\n", res.kept_instance_id ? "instance id kept: re-sent messages keep their "
	       "Idempotency-Key" : "new instance id: the old file no longer tells the ids it "
	       "used, and a new message must not reuse a delivered one's Idempotency-Key");
	return 0;
}

/* --- arguments ---------------------------------------------------------------------------- */

/* The value of --name VALUE or --name=VALUE at argv[*i]; NULL if it is
 * another option. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, bool *missing)
{
	size_t n = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, n) != 0)
		return NULL;
	if (a[n] == '=')
		return a + n + 1;
	if (a[n] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		*missing = true;
		return NULL;
	}
	return argv[++*i];
}

static int parse_id(const char *s, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v <= 0)
		return -1;
	*out = v;
	return 0;
}

/* Fills c from argv; returns 0, or the usage error's exit status. */
static int parse(struct cli *c, int argc, char **argv)
{
	const char *v;
	bool missing = false;
	char *end;
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--json")) {
			c->json = true;
		} else if (!strcmp(a, "--all")) {
			c->all = true;
		} else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(usage_text, stdout);
			return -1;
		} else if ((v = opt_value(argc, argv, &i, "--state-dir", &missing))) {
			c->state_dir = v;
		} else if ((v = opt_value(argc, argv, &i, "--config", &missing))) {
			c->config_file = v;
		} else if ((v = opt_value(argc, argv, &i, "--output", &missing))) {
			c->output = v;
		} else if ((v = opt_value(argc, argv, &i, "--limit", &missing))) {
			c->limit = strtoull(v, &end, 10);
			if (*v == '\0' || *end != '\0' || *v == '-')
				return usage("--limit takes a number");
		} else if (missing || a[0] == '-') {
			fprintf(stderr, "watchrtc-relay queue: %s %s\n", a,
			        missing ? "needs a value" : "is not an option");
			return usage(NULL);
		} else if (!c->cmd) {
			c->cmd = a;
		} else if (!c->sub && !strcmp(c->cmd, "dead")) {
			c->sub = a;
		} else if (parse_id(a, &c->ids[c->nids]) == 0) {
			c->nids++;
		} else {
			fprintf(stderr, "watchrtc-relay queue: unexpected argument %s\n", a);
			return usage(NULL);
		}
	}
	if (!c->cmd)
		return usage("which command?");
	return 0;
}

/* The state directory: --state-dir, else --config's state-dir, else the
 * relay's default; the queue database is queue.db in it. */
static int find_db(struct cli *c, struct config *cfg)
{
	char *args[5] = { "watchrtc-relay" }, *cause = NULL;
	int n = 1;

	if (c->config_file) {
		args[n++] = "--config";
		args[n++] = (char *)c->config_file;
	}
	if (c->state_dir) {
		args[n++] = "--state-dir";
		args[n++] = (char *)c->state_dir;
	}
	if (config_load(cfg, n, args, &cause) != CONFIG_RUN) {
		fprintf(stderr, "watchrtc-relay queue: %s\n", cause ? cause : "bad configuration");
		free(cause);
		return 2;
	}
	c->state_dir = cfg->state_dir;
	if (snprintf(c->db, sizeof c->db, "%s/queue.db", c->state_dir) >= (int)sizeof c->db)
		return usage("the state directory's path is too long");
	return 0;
}

int cli_queue_main(int argc, char **argv)
{
	static const struct {
		const char *cmd, *sub;
		int (*run)(struct cli *, struct queue_admin *);
		bool write;
	} commands[] = {
		{ "stats", NULL, cmd_stats, false },
		{ "dead", "list", cmd_dead_list, false },
		{ "dead", "replay", cmd_dead_move, true },
		{ "dead", "purge", cmd_dead_move, true },
		{ "check", NULL, cmd_check, false },
	};
	struct cli c = { 0 };
	struct config cfg = { 0 };
	struct queue_admin *a = NULL;
	char *cause = NULL;
	size_t i;
	int rc;

	c.ids = calloc((size_t)argc, sizeof *c.ids);
	if (!c.ids)
		return failed("out of memory", QUEUE_ENOMEM);
	rc = parse(&c, argc, argv);
	if (rc != 0) {
		rc = rc < 0 ? 0 : rc;
		goto out;
	}
	if ((rc = find_db(&c, &cfg)) != 0)
		goto out;
	if (c.nids > 0 && (!c.sub || strcmp(c.cmd, "dead") || !strcmp(c.sub, "list"))) {
		rc = usage("only dead replay and dead purge take ids");
		goto out;
	}
	/* Only where there is a queue: the probe creates the lock file. */
	c.relay_running = access(c.db, F_OK) == 0 && queue_admin_in_use(c.db);
	if (!strcmp(c.cmd, "salvage")) {
		rc = cmd_salvage(&c);
		goto out;
	}
	for (i = 0; i < sizeof commands / sizeof commands[0]; i++) {
		if (strcmp(commands[i].cmd, c.cmd) != 0 ||
		    (commands[i].sub && (!c.sub || strcmp(commands[i].sub, c.sub))))
			continue;
		rc = queue_admin_open(&a, c.db, commands[i].write, &cause);
		if (rc != QUEUE_OK) {
			rc = failed(cause, rc);
			goto out;
		}
		rc = commands[i].run(&c, a);
		goto out;
	}
	rc = usage("unknown command");
out:
	queue_admin_close(a);
	free(cause);
	free(c.ids);
	config_release(&cfg);
	return rc;
}
