/*
 * benchutil.c - clocks and limits for the benchmark programs.
 */
#include "benchutil.h"

#include <string.h>
#include <sys/resource.h>
#include <time.h>

double bench_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

double bench_cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

void bench_raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

ssize_t bench_head_add(char *head, size_t *len, size_t max, const uint8_t *p, size_t n)
{
	size_t old = *len, take = n < max - old ? n : max - old;
	char *end;

	memcpy(head + old, p, take);
	*len = old + take;
	head[*len] = '\0';
	/* The blank line may have begun in the bytes read before. */
	end = strstr(head + (old > 3 ? old - 3 : 0), "\r\n\r\n");
	if (!end)
		return *len == max ? -1 : 0;
	end[4] = '\0';
	*len = (size_t)(end + 4 - head);
	return (ssize_t)(*len - old);
}
