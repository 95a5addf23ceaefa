/* What the benchmarks share: a monotonic clock in nanoseconds, the median of a
 * sample set (benchmarks report medians, never means), forked children and
 * the environment they start from, the process's RSS, and the recursion that
 * makes a stack deep. Static inline helpers: each program takes what it uses. */
#ifndef DS_BENCH_H
#define DS_BENCH_H

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/utsname.h>
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

/* The children choose their policy and config themselves: an inherited DYNSTACK_* variable
 * would override them and measure one case under another's name. The backend is left to the
 * environment. */
static inline void bench_unset_config_env(void)
{
	static const char *const vars[] = {
		"DYNSTACK_CACHE", "DYNSTACK_CACHE_PAGES", "DYNSTACK_TRIM_BATCH", "DYNSTACK_POLICY",
		"DYNSTACK_SIZE",  "DYNSTACK_STATS",	  "DYNSTACK_TRACE",
	};

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
}

/* The first output line of a benchmark whose figures depend on the machine: kernel, page size,
 * CPUs, and the nice level it runs at (raised: its setpriority(-20) succeeded). */
static inline void bench_print_machine(size_t page, bool raised)
{
	struct utsname u;

	if (!uname(&u))
		printf("# Linux %s %s, %zu-byte pages, %ld CPUs, nice %d%s\n", u.release, u.machine,
		       page, sysconf(_SC_NPROCESSORS_ONLN), getpriority(PRIO_PROCESS, 0),
		       raised ? "" : " (cannot raise the priority)");
}

/* Resident pages of the whole process (/proc/self/statm, second field), or -1. */
static inline long statm_resident(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size, res = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &res) != 2)
		res = -1;
	fclose(f);
	return res;
}

#define BENCH_FRAME_BYTES 192

/* Recursion with BENCH_FRAME_BYTES of locals per level, every byte written, down to target
 * bytes below top: a stack as deep as asked, every page of it touched. Not inline, as each
 * level must be a frame of its own ("unused" keeps quiet the programs that do not use it). */
static __attribute__((noinline, unused)) unsigned descend(uintptr_t top, size_t target,
							  unsigned level)
{
	char frame[BENCH_FRAME_BYTES];

	memset(frame, (int)level, sizeof(frame));
	__asm__ volatile("" : : "r"(frame) : "memory");
	if (top - (uintptr_t)frame < target)
		level = descend(top, target, level + 1);
	__asm__ volatile("" : : "r"(frame) : "memory");
	return level + (unsigned char)frame[level % BENCH_FRAME_BYTES];
}

#endif /* DS_BENCH_H */
