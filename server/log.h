/*
 * log.h - one line per event on stderr, in logfmt:
 *   ts=2026-11-24T18:50:00.123Z level=info event=listening addr=0.0.0.0 port=8443
 * Control characters in the formatted text are replaced, so a client-supplied
 * value can never forge a second line.
 */
#ifndef WATCHRTC_LOG_H
#define WATCHRTC_LOG_H

#include <stdatomic.h>
#include <stdbool.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
/* "debug", "info", "warn", "error" -> 0, or -1 if name is none of them. */
int log_parse_level(const char *name, enum log_level *out);

/* event is one word; fmt adds " key=value" pairs (may be NULL). */
void log_event(enum log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Quotes s for a logfmt value into buf (cut to fit): "a b" -> "\"a b\"". */
const char *log_quote(const char *s, char *buf, unsigned size);
/* The first characters of an API key followed by "...", never the whole key. */
const char *log_key(const char *key, char *buf, unsigned size);

/* Lets one line per interval through for an event that may repeat
 * thousands of times a second (refused connections, descriptors run out),
 * counting the rest.  Zeroed, it lets the first one through. */
struct log_gate {
	atomic_llong logged_ms;           /* when the last line went out */
	atomic_ullong unlogged;           /* events since, not logged one by one */
};

/* Whether to log the event now: at most once per interval_ms, and then
 * *others says how many went unlogged since the last line.  Any thread. */
bool log_gate_pass(struct log_gate *g, unsigned interval_ms, unsigned long long *others);

#define log_debug(ev, ...) log_event(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...) log_event(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_event(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_ERROR, ev, __VA_ARGS__)

#endif
