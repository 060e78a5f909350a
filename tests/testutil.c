/*
 * testutil.c - scratch directories and clocks for the C unit tests.
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

char *tmpdir_create(const char *prefix)
{
	char *dir = NULL;

	if (asprintf(&dir, "/tmp/%s-XXXXXX", prefix) < 0 || !mkdtemp(dir)) {
		printf("Bail out! mkdtemp /tmp/%s-XXXXXX: %s\n", prefix, strerror(errno));
		exit(1);
	}
	return dir;
}

void tmpdir_remove(char *dir)
{
	char path[4096];
	struct dirent *d;
	DIR *dp;

	if (!dir)
		return;
	dp = opendir(dir);
	if (dp) {
		while ((d = readdir(dp))) {
			if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof path, "%s/%s", dir, d->d_name);
			unlink(path);
		}
		closedir(dp);
	}
	rmdir(dir);
	free(dir);
}

void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

void capture_begin(struct capture *cap, int fd)
{
	fflush(stdout);
	fflush(stderr);
	cap->fd = fd;
	cap->file = tmpfile();
	cap->saved = dup(fd);
	if (cap->file)
		dup2(fileno(cap->file), fd);
}

char *capture_end(struct capture *cap)
{
	char *text = NULL;
	long len;

	fflush(stdout);
	fflush(stderr);
	dup2(cap->saved, cap->fd);
	close(cap->saved);
	if (!cap->file)
		return NULL;
	len = lseek(fileno(cap->file), 0, SEEK_END);
	if (len >= 0 && (text = calloc(1, (size_t)len + 1))) {
		if (pread(fileno(cap->file), text, (size_t)len, 0) != len) {
			free(text);
			text = NULL;
		}
	}
	fclose(cap->file);
	return text;
}
