/*
 * benchutil.h - what the benchmark programs share besides the SDK's
 * message shapes (sdkshape.h): the clocks their figures are made of, and
 * the open-file limit of the programs that hold a socket per connection.
 */
#ifndef WATCHRTC_BENCHUTIL_H
#define WATCHRTC_BENCHUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Seconds of CLOCK_MONOTONIC: wall time of a run. */
double bench_now_s(void);

/* User plus system CPU seconds of this process (all its threads). */
double bench_cpu_s(void);

/* Raises the soft open-file limit to the hard one, quietly: a load
 * generator or sink holds a socket per connection. */
void bench_raise_nofile(void);

/*
 * Reads an HTTP head that arrives in pieces: appends p[0..n) to head (room
 * for max + 1 bytes, *len of them read so far) up to the blank line.
 * Returns how many of the n bytes the head took once it is complete (the
 * bytes after those follow the head: websocket frames, say), with head
 * NUL-terminated after its blank line and *len its length; 0 if it is not
 * complete yet; -1 if it is longer than max.
 */
ssize_t bench_head_add(char *head, size_t *len, size_t max, const uint8_t *p, size_t n);

#endif
