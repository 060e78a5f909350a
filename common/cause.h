/*
 * cause.h - the human detail of an error, for a caller's `char **cause`.
 *
 * Functions that can fail for reasons an operator must read take
 * `char **cause` and, on failure, leave a malloc'd sentence there that the
 * caller frees.  The first cause set wins: a failure deep in a call chain is
 * not overwritten by its callers' more general ones.
 */
#ifndef WATCHRTC_CAUSE_H
#define WATCHRTC_CAUSE_H

/* Sets *cause to a malloc'd message made from fmt, unless cause is NULL or
 * *cause is already set (out of memory leaves it NULL), and returns err so
 * that a caller can write `return cause_set(cause, -1, "...")`. */
int cause_set(char **cause, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
