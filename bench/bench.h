/* What every benchmark shares: a monotonic clock in nanoseconds and the
 * median of a sample set (benchmarks report medians, never means). */
#ifndef DS_BENCH_H
#define DS_BENCH_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Sorts v in place. */
static inline double median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Run measure(ctx, out) in a forked child, for cases that need their own
 * process-wide settings (backend, cache), and copy its result (size bytes)
 * back through a pipe. Returns 0 when the child delivered, 1 when it did not
 * (why says how it ended), or -errno when pipe or fork failed. */
static inline int bench_in_child(void (*measure)(void *ctx, void *out), void *ctx, void *out,
				 size_t size, char *why, size_t whylen)
{
	int fd[2];
	if (pipe(fd))
		return -errno;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int err = errno;
		close(fd[0]);
		close(fd[1]);
		return -err;
	}
	if (pid == 0) {
		close(fd[0]);
		measure(ctx, out);
		_exit(write(fd[1], out, size) == (ssize_t)size ? 0 : 1);
	}
	close(fd[1]);
	ssize_t n = read(fd[0], out, size);
	close(fd[0]);
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (n == (ssize_t)size && WIFEXITED(st) && !WEXITSTATUS(st))
		return 0;
	if (WIFSIGNALED(st))
		snprintf(why, whylen, "child killed by signal %d (%s)", WTERMSIG(st),
			 strsignal(WTERMSIG(st)));
	else
		snprintf(why, whylen, "child exited with status %d",
			 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	return 1;
}

#endif /* DS_BENCH_H */
