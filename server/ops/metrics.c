/*
 * metrics.c - process-wide counters, gauges and histograms in the
 * Prometheus text exposition format (version 0.0.4).
 *
 * Updates are relaxed atomic adds: the hot paths (a websocket message, a
 * commit) pay a few nanoseconds and never take a lock.  Rendering reads the
 * atomics one by one, so a scrape is a consistent-enough snapshot, as with
 * every Prometheus client library.
 */
#include "metrics.h"

#ifdef HAVE_CONFIG_H
#include "build-config.h"   /* autoconf's: PACKAGE_VERSION */
#else
#define PACKAGE_VERSION "unknown"
#endif

#include <dirent.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "queue.h"

#define METRICS_RENDER_MAX (256 * 1024)  /* ceiling of one scrape's text */

static _Atomic uint64_t counters[M_COUNTER_COUNT];
static _Atomic int64_t gauges[G_GAUGE_COUNT];

/* Histogram buckets: upper bounds, then +Inf implied. */
#define HIST_MAX_BUCKETS 16
struct hist_def {
	const char *name, *help;
	unsigned nbuckets;
	double bounds[HIST_MAX_BUCKETS];
};

static const struct hist_def hist_defs[H_HIST_COUNT] = {
	[H_FORWARD_SECONDS] = { "watchrtc_relay_forward_duration_seconds",
		"Time of one upstream POST, from start to answer.", 12,
		{ 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10 } },
	[H_COMMIT_SECONDS] = { "watchrtc_relay_commit_latency_seconds",
		"Time from a message's receipt to its durable commit.", 11,
		{ 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1 } },
	[H_COMMIT_BATCH] = { "watchrtc_relay_commit_batch_size",
		"Operations (inserts, deletes, moves) committed in one transaction.", 10,
		{ 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000 } },
	[H_FENCE_SECONDS] = { "watchrtc_relay_upstream_fence_seconds",
		"Time from an upstream websocket fence (ping) to its pong.", 11,
		{ 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5 } },
};

struct hist {
	_Atomic uint64_t buckets[HIST_MAX_BUCKETS + 1];
	_Atomic uint64_t count;
	_Atomic uint64_t sum_micro;  /* sum in millionths, to stay integer */
};
static struct hist hists[H_HIST_COUNT];

/* HTTP answers by route and status: a fixed table, so no lock or malloc. */
static const unsigned http_codes[] = {
	101, 200, 204, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 503,
};
#define N_CODES (sizeof http_codes / sizeof http_codes[0])
static _Atomic uint64_t http_counts[ROUTE_COUNT][N_CODES + 1]; /* last: any other code */

void metrics_add(enum metric_counter c, uint64_t n)
{
	atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

void metrics_gauge_add(enum metric_gauge g, int64_t delta)
{
	atomic_fetch_add_explicit(&gauges[g], delta, memory_order_relaxed);
}

/* When the upstream went down (ms since the epoch), 0 while it is up or
 * not yet tried: readiness can refuse traffic after a long outage. */
static _Atomic int64_t upstream_down_since_ms;

void metrics_gauge_set(enum metric_gauge g, int64_t value)
{
	atomic_store_explicit(&gauges[g], value, memory_order_relaxed);
	if (g == G_UPSTREAM_UP) {
		int64_t none = 0;
		if (value) {
			atomic_store(&upstream_down_since_ms, 0);
		} else {
			atomic_compare_exchange_strong(&upstream_down_since_ms, &none, wall_ms());
		}
	}
}

int64_t metrics_gauge_get(enum metric_gauge g)
{
	return atomic_load_explicit(&gauges[g], memory_order_relaxed);
}

int64_t metrics_upstream_down_since_ms(void)
{
	return atomic_load(&upstream_down_since_ms);
}

void metrics_observe(enum metric_hist h, double value)
{
	const struct hist_def *d = &hist_defs[h];
	struct hist *s = &hists[h];
	unsigned i = 0;

	while (i < d->nbuckets && value > d->bounds[i])
		i++;
	atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
	if (value > 0)
		atomic_fetch_add_explicit(&s->sum_micro, (uint64_t)(value * 1e6),
		                          memory_order_relaxed);
}

void metrics_http(enum route route, unsigned status)
{
	size_t r = route < ROUTE_COUNT ? (size_t)route : ROUTE_OTHER, c = N_CODES;

	for (size_t i = 0; i < N_CODES; i++)
		if (http_codes[i] == status) {
			c = i;
			break;
		}
	atomic_fetch_add_explicit(&http_counts[r][c], 1, memory_order_relaxed);
}

/* A bounded text buffer: appends fail quietly once the ceiling is hit. */
struct out {
	char *buf;
	size_t len, cap;
	int failed;
};

__attribute__((format(printf, 2, 3)))
static void out_printf(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			o->failed = 1;
			return;
		}
		if ((size_t)n < o->cap - o->len) {
			o->len += (size_t)n;
			return;
		}
		size_t cap = o->cap * 2;
		if (cap > METRICS_RENDER_MAX || !(o->buf = realloc(o->buf, cap))) {
			o->failed = 1;
			return;
		}
		o->cap = cap;
	}
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
	out_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(struct out *o, const char *name, const char *type, const char *help,
                double value)
{
	head(o, name, type, help);
	out_printf(o, "%s %.17g\n", name, value);
}

static uint64_t get(enum metric_counter c)
{
	return atomic_load_explicit(&counters[c], memory_order_relaxed);
}

static void render_hist(struct out *o, enum metric_hist h)
{
	const struct hist_def *d = &hist_defs[h];
	struct hist *s = &hists[h];
	uint64_t cum = 0;

	head(o, d->name, "histogram", d->help);
	for (unsigned i = 0; i < d->nbuckets; i++) {
		cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
		out_printf(o, "%s_bucket{le=\"%g\"} %llu\n", d->name, d->bounds[i],
		           (unsigned long long)cum);
	}
	cum += atomic_load_explicit(&s->buckets[d->nbuckets], memory_order_relaxed);
	out_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", d->name, (unsigned long long)cum);
	out_printf(o, "%s_sum %.6f\n", d->name,
	           (double)atomic_load_explicit(&s->sum_micro, memory_order_relaxed) / 1e6);
	out_printf(o, "%s_count %llu\n", d->name, (unsigned long long)cum);
}

/* A label value with \\, \" and \n escaped as the text format wants. */
static void out_label(struct out *o, const char *v)
{
	size_t run;

	while (*v != '\0') {
		run = strcspn(v, "\\\"\n");
		out_printf(o, "%.*s", (int)run, v);
		v += run;
		if (*v != '\0') {
			out_printf(o, "\\%c", *v == '\n' ? 'n' : *v);
			v++;
		}
	}
}

/* One labelled family, not an unlabelled total beside it: sum() in PromQL
 * gives the total. */
static void render_dead(struct out *o, const struct queue_dead_reason *dead, size_t n)
{
	head(o, "watchrtc_relay_dead_letters", "gauge",
	     "Messages in the dead-letter table, by reason.");
	for (size_t i = 0; i < n; i++) {
		out_printf(o, "watchrtc_relay_dead_letters{reason=\"");
		out_label(o, dead[i].reason);
		out_printf(o, "\"} %llu\n", (unsigned long long)dead[i].count);
	}
}

static void render_queue(struct out *o, const struct queue_stats *qs,
                         const struct queue_dead_reason *dead, size_t ndead)
{
	double age = 0;

	if (qs->oldest_ms > 0) {
		age = (double)(wall_ms() - qs->oldest_ms) / 1000;
		if (age < 0)
			age = 0;
	}
	one(o, "watchrtc_relay_queue_depth", "gauge", "Messages in the queue, in flight included.",
	    (double)qs->depth);
	one(o, "watchrtc_relay_queue_bytes", "gauge", "Body bytes of the queued messages.",
	    (double)qs->bytes);
	one(o, "watchrtc_relay_queue_capacity_messages", "gauge",
	    "Most messages the queue takes (0: no limit).", (double)qs->max_messages);
	one(o, "watchrtc_relay_queue_capacity_bytes", "gauge",
	    "Most body bytes the queue takes (0: no limit).", (double)qs->max_bytes);
	one(o, "watchrtc_relay_queue_oldest_age_seconds", "gauge",
	    "Age of the oldest queued message.", age);
	one(o, "watchrtc_relay_queue_in_flight", "gauge", "Messages being sent upstream now.",
	    (double)qs->in_flight);
	one(o, "watchrtc_relay_queue_sessions_waiting_retry", "gauge",
	    "Sessions whose next message waits for a retry.", (double)qs->waiting_retry);
	one(o, "watchrtc_relay_queue_writable", "gauge",
	    "1 while the database accepts writes, 0 while writes fail (disk full, I/O error).",
	    qs->writable ? 1 : 0);
	render_dead(o, dead, ndead);
	one(o, "watchrtc_relay_messages_committed_total", "counter",
	    "Messages durably committed to the queue.", (double)qs->committed_total);
	one(o, "watchrtc_relay_commits_total", "counter", "Queue transactions committed.",
	    (double)qs->commits_total);
	one(o, "watchrtc_relay_commits_synced_total", "counter",
	    "Queue transactions committed with an fsync (those that store new messages).",
	    (double)qs->commits_synced_total);
	one(o, "watchrtc_relay_messages_expired_total", "counter",
	    "Messages dead-lettered because they outlived the queue's maximum age.",
	    (double)qs->expired_total);
}

/* Open descriptors: the entries of /proc/self/fd, less the one reading it. */
static long open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	long n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

/* The system's boot time (seconds since the epoch), from /proc/stat. */
static long long boot_time(void)
{
	FILE *f = fopen("/proc/stat", "r");
	char line[256];
	long long bt = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "btime %lld", &bt) == 1)
			break;
	fclose(f);
	return bt;
}

/*
 * The standard process_* metrics every Prometheus client library exports
 * (CPU, memory, descriptors, start time), from /proc/self/stat, and the
 * build's version as watchrtc_relay_build_info.
 */
static void render_process(struct out *o)
{
	unsigned long long utime, stime, start, vsize;
	long long rss, bt = boot_time();
	long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE), fds = open_fds();
	struct rlimit rl;
	char buf[1024], *p = NULL;
	FILE *f = fopen("/proc/self/stat", "r");
	size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;

	if (f)
		fclose(f);
	buf[n] = '\0';
	/* Fields after the command, which is in parentheses and may hold any
	 * character: from the last ')', state is field 3, utime 14, stime 15,
	 * starttime 22, vsize 23, rss 24. */
	if (n)
		p = strrchr(buf, ')');
	if (p && ticks > 0 && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu "
	                             "%*d %*d %*d %*d %*d %*d %llu %llu %lld",
	                             &utime, &stime, &start, &vsize, &rss) == 5) {
		one(o, "process_cpu_seconds_total", "counter",
		    "User and system CPU time spent, in seconds.",
		    (double)(utime + stime) / (double)ticks);
		one(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
		    (double)rss * (double)page);
		one(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
		    (double)vsize);
		if (bt > 0)
			one(o, "process_start_time_seconds", "gauge",
			    "Start time of the process since the Unix epoch, in seconds.",
			    (double)bt + (double)start / (double)ticks);
	}
	if (fds >= 0)
		one(o, "process_open_fds", "gauge", "Open file descriptors.", (double)fds);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		one(o, "process_max_fds", "gauge", "Most file descriptors the process may open.",
		    (double)rl.rlim_cur);
	head(o, "watchrtc_relay_build_info", "gauge",
	     "The relay's version; the value is always 1.");
	out_printf(o, "watchrtc_relay_build_info{version=\"%s\"} 1\n", PACKAGE_VERSION);
}

char *metrics_render(const struct queue_stats *qs, const struct queue_dead_reason *dead,
                     size_t ndead, size_t *len)
{
	struct out o = { malloc(16384), 0, 16384, 0 };

	if (!o.buf)
		return NULL;
	if (qs)
		render_queue(&o, qs, dead, ndead);

	head(&o, "watchrtc_relay_messages_received_total", "counter",
	     "Messages accepted from clients, by transport.");
	out_printf(&o, "watchrtc_relay_messages_received_total{transport=\"websocket\"} %llu\n",
	           (unsigned long long)get(M_RECEIVED_WS));
	out_printf(&o, "watchrtc_relay_messages_received_total{transport=\"https\"} %llu\n",
	           (unsigned long long)get(M_RECEIVED_HTTP));
	one(&o, "watchrtc_relay_received_bytes_total", "counter",
	    "Message body bytes accepted from clients.", (double)get(M_RECEIVED_BYTES));
	one(&o, "watchrtc_relay_messages_forwarded_total", "counter",
	    "Messages the upstream accepted (2xx).", (double)get(M_FORWARDED));

	head(&o, "watchrtc_relay_forward_attempts_total", "counter",
	     "Upstream POSTs by result.");
	static const struct { const char *label; enum metric_counter c; } results[] = {
		{ "success", M_ATTEMPT_SUCCESS }, { "retry", M_ATTEMPT_RETRY },
		{ "dead_letter", M_ATTEMPT_DEAD }, { "rejected_key", M_ATTEMPT_REJECTED_KEY },
	};
	for (size_t i = 0; i < sizeof results / sizeof results[0]; i++)
		out_printf(&o, "watchrtc_relay_forward_attempts_total{result=\"%s\"} %llu\n",
		           results[i].label, (unsigned long long)get(results[i].c));

	one(&o, "watchrtc_relay_websocket_connections", "gauge", "Websocket connections open.",
	    (double)atomic_load_explicit(&gauges[G_WS_OPEN], memory_order_relaxed));
	/* Not websocket_connections_total: OpenMetrics would take that for the
	 * counter of the gauge above, one family with two types. */
	one(&o, "watchrtc_relay_websockets_accepted_total", "counter",
	    "Websocket connections accepted (upgraded).", (double)get(M_WS_CONNECTIONS));
	one(&o, "watchrtc_relay_websocket_refused_total", "counter",
	    "Websocket upgrades refused (bad handshake, missing query, shutting down).",
	    (double)get(M_WS_REFUSED));
	one(&o, "watchrtc_relay_websocket_protocol_errors_total", "counter",
	    "Websocket connections closed for a protocol error (1002, 1007, 1009).",
	    (double)get(M_WS_CLOSED_ERROR));
	one(&o, "watchrtc_relay_upstream_up", "gauge",
	    "1 if the last upstream attempt got an HTTP answer below 500; 0 if it got a 5xx or "
	    "no answer (connection, TLS or timeout error), and before the first attempt.",
	    (double)atomic_load_explicit(&gauges[G_UPSTREAM_UP], memory_order_relaxed));

	one(&o, "watchrtc_relay_upstream_websockets", "gauge",
	    "Upstream websockets open (upstream-protocol websocket).",
	    (double)atomic_load_explicit(&gauges[G_UPWS_OPEN], memory_order_relaxed));
	head(&o, "watchrtc_relay_upstream_upgrades_total", "counter",
	     "Upstream websocket upgrades by result.");
	static const struct {
		const char *label;
		enum metric_counter c;
	} upgrades[] = {
		{ "open", M_UPWS_UPGRADE_OK },
		{ "refused", M_UPWS_UPGRADE_REFUSED },
		{ "key_rejected", M_UPWS_UPGRADE_KEY_REJECTED },
		{ "failed", M_UPWS_UPGRADE_FAILED },
	};
	for (size_t i = 0; i < sizeof upgrades / sizeof upgrades[0]; i++)
		out_printf(&o, "watchrtc_relay_upstream_upgrades_total{result=\"%s\"} %llu\n",
		           upgrades[i].label, (unsigned long long)get(upgrades[i].c));
	one(&o, "watchrtc_relay_upstream_frames_sent_total", "counter",
	    "Messages sent as text frames on upstream websockets (resent ones included).",
	    (double)get(M_UPWS_FRAMES));
	one(&o, "watchrtc_relay_upstream_frames_resent_total", "counter",
	    "Messages sent on an upstream websocket that ended before their fence: sent again.",
	    (double)get(M_UPWS_RESENT));
	one(&o, "watchrtc_relay_upstream_websocket_drops_total", "counter",
	    "Open upstream websockets that ended without the relay's close (drop, backend close, "
	    "timeout).", (double)get(M_UPWS_DROPPED));
	one(&o, "watchrtc_relay_upstream_tls_resumed_total", "counter",
	    "Upstream websockets opened with a resumed TLS session (no certificate check).",
	    (double)get(M_UPWS_TLS_RESUMED));

	head(&o, "watchrtc_relay_http_requests_total", "counter",
	     "HTTP requests answered, by route and status code.");
	for (size_t r = 0; r < ROUTE_COUNT; r++)
		for (size_t c = 0; c <= N_CODES; c++) {
			uint64_t n = atomic_load_explicit(&http_counts[r][c], memory_order_relaxed);
			if (!n)
				continue;
			if (c < N_CODES)
				out_printf(
					&o,
					"watchrtc_relay_http_requests_total{route=\"%s\",code=\"%u\"} %llu\n",
					route_name((enum route)r), http_codes[c],
					(unsigned long long)n);
			else
				out_printf(
					&o,
					"watchrtc_relay_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
					route_name((enum route)r), (unsigned long long)n);
		}

	for (int h = 0; h < H_HIST_COUNT; h++)
		render_hist(&o, (enum metric_hist)h);
	render_process(&o);

	if (o.failed) {
		free(o.buf);
		return NULL;
	}
	*len = o.len;
	return o.buf;
}
