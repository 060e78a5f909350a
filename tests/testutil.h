/*
 * testutil.h - what the C unit tests share besides tap.h: a scratch
 * directory under /tmp and a monotonic clock to bound their waits.
 */
#ifndef WATCHRTC_TESTUTIL_H
#define WATCHRTC_TESTUTIL_H

#include <stdint.h>

/*
 * Makes a fresh directory /tmp/PREFIX-XXXXXX and returns its path (caller
 * frees it with tmpdir_remove).  A test cannot run without it: on failure
 * this prints "Bail out!" and exits 1.
 */
char *tmpdir_create(const char *prefix);

/* Removes the files in dir (not subdirectories), then dir itself, and
 * frees dir.  Accepts NULL. */
void tmpdir_remove(char *dir);

/* Milliseconds of CLOCK_MONOTONIC, for deadlines. */
int64_t now_ms(void);

/* Sleeps ms milliseconds, the whole time even if a signal interrupts. */
void sleep_ms(long ms);

#endif
