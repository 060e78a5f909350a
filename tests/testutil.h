/*
 * testutil.h - what the C unit tests share besides tap.h: a scratch
 * directory under /tmp and a monotonic clock to bound their waits.
 */
#ifndef WATCHRTC_TESTUTIL_H
#define WATCHRTC_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

#include "clock.h"   /* mono_ms() for deadlines, wall_ms() for timestamps */

/*
 * Makes a fresh directory /tmp/PREFIX-XXXXXX and returns its path (caller
 * frees it with tmpdir_remove).  A test cannot run without it: on failure
 * this prints "Bail out!" and exits 1.
 */
char *tmpdir_create(const char *prefix);

/* Removes the files in dir (not subdirectories), then dir itself, and
 * frees dir.  Accepts NULL. */
void tmpdir_remove(char *dir);

/* Sleeps ms milliseconds, the whole time even if a signal interrupts. */
void sleep_ms(long ms);

/* Redirects fd (stdout or stderr) to an anonymous file until capture_end. */
struct capture {
	int fd, saved;
	FILE *file;
};
void capture_begin(struct capture *cap, int fd);
/* Restores the fd and returns what was written to it (caller frees). */
char *capture_end(struct capture *cap);

#endif
