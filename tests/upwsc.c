/*
 * upwsc.c - drives server/upstream/upstream_ws.c from the command line, for the
 * integration tests (tests/integration/test_upstream_ws.py): one websocket
 * to a backend, a scripted exchange, every callback printed as one line.
 *
 *   upwsc --url https://127.0.0.1:PORT [--ca FILE | --insecure] [--proxy URL]
 *         [--query Q] [--ua UA] [--origin O] [--xff X]
 *         [--send N] [--size BYTES] [--fence-every K] [--interval-ms MS]
 *         [--hold-ms MS] [--close CODE] [--reason R] [--abort-after-fence ID]
 *         [--connect-timeout-ms MS] [--handshake-timeout-ms MS]
 *         [--ping-interval-ms MS] [--pong-timeout-ms MS] [--close-timeout-ms MS]
 *         [--max-send-bytes B] [--max-message-bytes B] [--run-ms MS] [--conns N]
 *
 * After the hello it sends N text messages {"n":i,"pad":"xx…"} (one every
 * interval-ms, or all at once), a fence after every K and one after the
 * last; once the last fence is answered it waits hold-ms and closes with
 * CODE (default 1000), unless --close 0.  Lines printed:
 *   refused-request <why>         upstream_ws_create refused the request
 *   open <hello>
 *   text <message>
 *   sent <n>                      message n handed to upstream_ws_send_text
 *   full <n>                      send refused: queue over max-send-bytes
 *   fence <id> <messages before it>
 *   end <class> opened=<0|1> status=<s> retry_after=<r> code=<c> reason=<…>
 * and exits 0 after "end" (2 on a usage error, 3 if run-ms passes first).
 * With --conns N, N such websockets run at once on the one event loop and
 * each line starts with "c<i> ".
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evloop.h"
#include "upstream_ws.h"

struct driver {
	struct evloop *loop;
	struct upstream_ws *ws;
	struct ev_timer tick, hold, run;
	unsigned send, size, fence_every, interval_ms, hold_ms;
	int close_code;
	const char *reason;
	uint64_t abort_after_fence;
	unsigned sent;
	uint64_t last_fence;          /* the fence after the last message */
	uint64_t *fence_msgs;         /* messages sent before fence i */
	size_t nfences;
	int exit_code;
	bool ended;
	char tag[16];                 /* "" for one websocket, "c<i> " for many */
};

static unsigned live;                 /* websockets not ended yet */

static void out(const struct driver *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void out(const struct driver *d, const char *fmt, ...)
{
	va_list ap;

	fputs(d->tag, stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

static void send_some(struct driver *d);

static void note_fence(struct driver *d)
{
	uint64_t id;

	if (upstream_ws_fence(d->ws, &id) < 0) {
		out(d, "fence-refused %u\n", d->sent);
		return;
	}
	d->fence_msgs = realloc(d->fence_msgs, (id + 1) * sizeof *d->fence_msgs);
	d->fence_msgs[id] = d->sent;
	d->nfences = id + 1;
	if (d->sent == d->send)
		d->last_fence = id;
}

static void send_one(struct driver *d)
{
	char *msg;
	unsigned n = d->sent + 1;
	int len;

	len = asprintf(&msg, "{\"n\":%u,\"pad\":\"%*s\"}", n, (int)d->size, "");
	if (len < 0)
		exit(1);
	for (int i = 0; i < len; i++)
		if (msg[i] == ' ')
			msg[i] = 'x';
	if (upstream_ws_send_text(d->ws, msg, (size_t)len) < 0) {
		out(d, "full %u\n", n);
		free(msg);
		return;
	}
	free(msg);
	d->sent = n;
	out(d, "sent %u\n", n);
	if ((d->fence_every && n % d->fence_every == 0 && n != d->send) || n == d->send)
		note_fence(d);
}

static void send_some(struct driver *d)
{
	while (d->sent < d->send) {
		unsigned before = d->sent;

		send_one(d);
		if (d->sent == before || d->interval_ms)
			break;
	}
	if (d->sent < d->send &&
	    evloop_timer_start(d->loop, &d->tick, d->interval_ms ? d->interval_ms : 10) < 0)
		exit(1);
}

static void on_tick(struct evloop *l, struct ev_timer *t)
{
	struct driver *d = (struct driver *)((char *)t - offsetof(struct driver, tick));

	(void)l;
	if (!d->ended && upstream_ws_is_open(d->ws))
		send_some(d);
}

static void on_hold(struct evloop *l, struct ev_timer *t)
{
	struct driver *d = (struct driver *)((char *)t - offsetof(struct driver, hold));

	(void)l;
	if (!d->ended && d->close_code > 0 && upstream_ws_send_close(d->ws, (uint16_t)d->close_code,
	                                                             d->reason) < 0)
		out(d, "close-refused\n");
}

static void on_run(struct evloop *l, struct ev_timer *t)
{
	struct driver *d = (struct driver *)((char *)t - offsetof(struct driver, run));

	out(d, "run-timeout\n");
	d->exit_code = 3;
	evloop_stop(l);
}

static void cb_open(struct upstream_ws *ws, const char *hello, size_t len, void *arg)
{
	struct driver *d = arg;

	(void)ws;
	out(d, "open %.*s\n", (int)len, hello);
	if (d->send)
		send_some(d);
	else if (d->close_code > 0 && evloop_timer_start(d->loop, &d->hold, d->hold_ms) < 0)
		exit(1);
}

static void cb_text(struct upstream_ws *ws, const char *text, size_t len, void *arg)
{
	(void)ws;
	out(arg, "text %.*s\n", (int)len, text);
}

static void cb_fence(struct upstream_ws *ws, uint64_t id, void *arg)
{
	struct driver *d = arg;

	out(d, "fence %" PRIu64 " %" PRIu64 "\n", id, id < d->nfences ? d->fence_msgs[id] : 0);
	if (d->abort_after_fence && id == d->abort_after_fence) {
		upstream_ws_abort(ws);
		return;
	}
	if (id == d->last_fence && d->close_code > 0 &&
	    evloop_timer_start(d->loop, &d->hold, d->hold_ms) < 0)
		exit(1);
}

static void cb_end(struct upstream_ws *ws, const struct upws_result *r, void *arg)
{
	struct driver *d = arg;

	out(d, "end %s opened=%d status=%d retry_after=%d code=%u reason=%s\n",
	       upws_class_name(r->cls), r->opened, r->http_status, r->retry_after_s, r->close_code,
	       r->reason);
	d->ended = true;
	upstream_ws_destroy(ws);
	d->ws = NULL;
	if (--live == 0)
		evloop_stop(d->loop);
}

static const struct upstream_ws_callbacks callbacks = {
	.on_open = cb_open, .on_text = cb_text, .on_fence = cb_fence, .on_end = cb_end,
};

int main(int argc, char **argv)
{
	struct upstream_client_options o = {
		.connect_timeout_ms = 5000, .handshake_timeout_ms = 5000, .ping_interval_ms = 0,
		.pong_timeout_ms = 5000, .close_timeout_ms = 3000, .max_message_bytes = 1 << 20,
		.max_send_bytes = 4 << 20,
	};
	struct upstream_ws_request req = { 0 };
	struct driver d = { .close_code = 1000, .reason = "done", .size = 16 }, *all;
	unsigned nconns = 1;
	int status = 0;
	struct upstream_client *c = NULL;
	unsigned run_ms = 30000;
	char *cause = NULL;
	enum { O_CA = 256, O_INSECURE, O_PROXY, O_QUERY, O_UA, O_ORIGIN, O_XFF, O_SEND, O_SIZE,
	       O_FENCE, O_INTERVAL, O_HOLD, O_CLOSE, O_REASON, O_ABORT, O_CT, O_HT, O_PI, O_PT,
	       O_CLT, O_MSB, O_MMB, O_RUN, O_URL, O_CONNS };
	static const struct option opts[] = {
		{ "url", 1, 0, O_URL }, { "ca", 1, 0, O_CA }, { "insecure", 0, 0, O_INSECURE },
		{ "proxy", 1, 0, O_PROXY }, { "query", 1, 0, O_QUERY }, { "ua", 1, 0, O_UA },
		{ "origin", 1, 0, O_ORIGIN }, { "xff", 1, 0, O_XFF }, { "send", 1, 0, O_SEND },
		{ "size", 1, 0, O_SIZE }, { "fence-every", 1, 0, O_FENCE },
		{ "interval-ms", 1, 0, O_INTERVAL }, { "hold-ms", 1, 0, O_HOLD },
		{ "close", 1, 0, O_CLOSE }, { "reason", 1, 0, O_REASON },
		{ "abort-after-fence", 1, 0, O_ABORT }, { "connect-timeout-ms", 1, 0, O_CT },
		{ "handshake-timeout-ms", 1, 0, O_HT }, { "ping-interval-ms", 1, 0, O_PI },
		{ "pong-timeout-ms", 1, 0, O_PT }, { "close-timeout-ms", 1, 0, O_CLT },
		{ "max-send-bytes", 1, 0, O_MSB }, { "max-message-bytes", 1, 0, O_MMB },
		{ "run-ms", 1, 0, O_RUN }, { "conns", 1, 0, O_CONNS }, { 0, 0, 0, 0 },
	};
	int ch;

	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case O_URL: o.url = optarg; break;
		case O_CA: o.ca_file = optarg; break;
		case O_INSECURE: o.insecure = true; break;
		case O_PROXY: o.proxy = optarg; break;
		case O_QUERY: req.query = optarg; break;
		case O_UA: req.user_agent = optarg; break;
		case O_ORIGIN: req.origin = optarg; break;
		case O_XFF: req.xff = optarg; break;
		case O_SEND: d.send = (unsigned)atoi(optarg); break;
		case O_SIZE: d.size = (unsigned)atoi(optarg); break;
		case O_FENCE: d.fence_every = (unsigned)atoi(optarg); break;
		case O_INTERVAL: d.interval_ms = (unsigned)atoi(optarg); break;
		case O_HOLD: d.hold_ms = (unsigned)atoi(optarg); break;
		case O_CLOSE: d.close_code = atoi(optarg); break;
		case O_REASON: d.reason = optarg; break;
		case O_ABORT: d.abort_after_fence = strtoull(optarg, NULL, 10); break;
		case O_CT: o.connect_timeout_ms = (unsigned)atoi(optarg); break;
		case O_HT: o.handshake_timeout_ms = (unsigned)atoi(optarg); break;
		case O_PI: o.ping_interval_ms = (unsigned)atoi(optarg); break;
		case O_PT: o.pong_timeout_ms = (unsigned)atoi(optarg); break;
		case O_CLT: o.close_timeout_ms = (unsigned)atoi(optarg); break;
		case O_MSB: o.max_send_bytes = strtoull(optarg, NULL, 10); break;
		case O_MMB: o.max_message_bytes = strtoull(optarg, NULL, 10); break;
		case O_RUN: run_ms = (unsigned)atoi(optarg); break;
		case O_CONNS: nconns = (unsigned)atoi(optarg); break;
		default: return 2;
		}
	}
	if (!o.url) {
		fprintf(stderr, "upwsc: --url is required\n");
		return 2;
	}
	if (upstream_client_create(&c, &o, &cause) < 0) {
		printf("client-error %s\n", cause ? cause : "?");
		free(cause);
		return 1;
	}
	if (evloop_create(&d.loop, &cause) < 0 || nconns == 0 ||
	    !(all = calloc(nconns, sizeof *all))) {
		fprintf(stderr, "upwsc: %s\n", cause ? cause : "bad --conns");
		return 1;
	}
	/* Every websocket on the one loop, as a forwarder thread runs them. */
	for (unsigned i = 0; i < nconns; i++) {
		struct driver *x = &all[i];

		*x = d;
		if (nconns > 1)
			snprintf(x->tag, sizeof x->tag, "c%u ", i);
		ev_timer_init(&x->tick, on_tick);
		ev_timer_init(&x->hold, on_hold);
		ev_timer_init(&x->run, on_run);
		if (upstream_ws_create(&x->ws, c, x->loop, &req, &callbacks, x, &cause) < 0) {
			out(x, "refused-request %s\n", cause ? cause : "?");
			free(cause);
			cause = NULL;
			x->ended = true;
			continue;
		}
		live++;
	}
	if (live && evloop_timer_start(d.loop, &all[0].run, run_ms) == 0)
		evloop_run(d.loop);
	for (unsigned i = 0; i < nconns; i++) {
		upstream_ws_destroy(all[i].ws);
		free(all[i].fence_msgs);
		if (all[i].exit_code)
			status = all[i].exit_code;
	}
	evloop_destroy(d.loop);
	upstream_client_destroy(c);
	free(all);
	return status;
}
