/*
 * log.c - logfmt lines on stderr.
 *
 * Each line is built in a bounded stack buffer and handed to one write(2),
 * so lines from different threads never interleave (a pipe write of at
 * most PIPE_BUF bytes is atomic) and logging never allocates.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

/* Longest line, newline included; longer lines end in "...". */
#define LOG_LINE_MAX 2048
#define LOG_CUT "..."

static atomic_int min_level = LOG_INFO;

static const char *const level_names[] = {
	[LOG_DEBUG] = "debug",
	[LOG_INFO] = "info",
	[LOG_WARN] = "warn",
	[LOG_ERROR] = "error",
};

void log_set_level(enum log_level level)
{
	atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);
}

int log_parse_level(const char *name, enum log_level *out)
{
	if (!name)
		return -1;
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
		if (!strcmp(name, level_names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* Writes all of buf, retrying on EINTR; a short write to a full pipe is
 * finished rather than lost.  Errors are ignored: there is nowhere left
 * to report them. */
static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* "2026-11-24T18:50:00.123Z" into buf; returns its length. */
static size_t format_time(char *buf, size_t size)
{
	struct timespec ts;
	struct tm tm;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
	return n;
}

void log_event(enum log_level level, const char *event, const char *fmt, ...)
{
	char line[LOG_LINE_MAX];
	char ts[32];
	size_t len, start;
	int n, saved_errno = errno;
	const char *name;

	if ((int)level < atomic_load_explicit(&min_level, memory_order_relaxed))
		return;
	name = (unsigned)level < sizeof level_names / sizeof level_names[0] ?
	       level_names[level] : "?";

	format_time(ts, sizeof ts);
	n = snprintf(line, sizeof line, "ts=%s level=%s event=", ts, name);
	start = (size_t)n;  /* the prefix is ours; everything after is sanitised */

	/* One byte is kept back for the newline: every snprintf below writes
	 * at most sizeof line - 1 - len characters plus its NUL. */
	n = snprintf(line + start, sizeof line - start, "%s", event ? event : "-");
	len = start + (n > 0 ? (size_t)n : 0);
	if (fmt && len < sizeof line - 1) {
		va_list ap;

		line[len] = ' ';
		va_start(ap, fmt);
		n = vsnprintf(line + len + 1, sizeof line - len - 1, fmt, ap);
		va_end(ap);
		if (n > 0)  /* no trailing space when fmt produced nothing */
			len += 1 + (size_t)n;
	}
	if (len > sizeof line - 1) {
		len = sizeof line - 1;
		memcpy(line + len - strlen(LOG_CUT), LOG_CUT, strlen(LOG_CUT));
	}

	/* A client-supplied value must never forge a line of its own. */
	for (size_t i = start; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 0x20 || c == 0x7f)
			line[i] = '?';
	}
	line[len++] = '\n';
	write_all(STDERR_FILENO, line, len);
	errno = saved_errno;
}

/* Whether s has to be quoted to stay one logfmt value. */
static int needs_quotes(const char *s)
{
	return !*s || strpbrk(s, " =\"");
}

const char *log_quote(const char *s, char *buf, unsigned size)
{
	size_t o = 0;

	if (size == 0)
		return "";
	if (!s)
		s = "";
	if (!needs_quotes(s)) {
		snprintf(buf, size, "%s", s);
		return buf;
	}
	if (size < 3) {  /* not even room for "" */
		buf[0] = '\0';
		return buf;
	}
	buf[o++] = '"';
	for (; *s; s++) {
		size_t need = (*s == '"' || *s == '\\') ? 2 : 1;
		/* Cut rather than split an escape; keep room for '"' and NUL. */
		if (o + need + 2 > size)
			break;
		if (need == 2)
			buf[o++] = '\\';
		buf[o++] = *s;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* Enough of a key to tell keys apart in a log, too little to use one. */
#define LOG_KEY_SHOWN 4

const char *log_key(const char *key, char *buf, unsigned size)
{
	size_t n = 0;

	if (size == 0)
		return "";
	if (key && strnlen(key, LOG_KEY_SHOWN + 1) > LOG_KEY_SHOWN) {
		for (; n < LOG_KEY_SHOWN && n + 1 < size; n++) {
			unsigned char c = (unsigned char)key[n];
			/* Keep the result a bare logfmt value. */
			buf[n] = (c <= ' ' || c == '=' || c == '"' || c >= 0x7f) ? '?' : (char)c;
		}
	}
	snprintf(buf + n, size - n, "%s", LOG_CUT);
	return buf;
}

bool log_gate_pass(struct log_gate *g, unsigned interval_ms, unsigned long long *others)
{
	long long now = (long long)mono_ms(), last = atomic_load(&g->logged_ms);

	/* Of two threads that find the interval over, the one whose swap
	 * succeeds logs; the other counts. */
	if ((last && now - last < (long long)interval_ms) ||
	    !atomic_compare_exchange_strong(&g->logged_ms, &last, now)) {
		atomic_fetch_add(&g->unlogged, 1);
		return false;
	}
	*others = atomic_exchange(&g->unlogged, 0);
	return true;
}
