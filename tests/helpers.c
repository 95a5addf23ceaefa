/* Shared test helpers (see helpers.h): what the kernel says about a range,
 * children whose stderr and fate are captured, and stack-hungry recursion.
 * No CMocka here, so that they work the same in a forked child. */
#include "helpers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#if DS_HAVE_VALGRIND_H
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#endif

#ifndef __has_feature
#define __has_feature(x) 0
#endif

bool under_valgrind(void)
{
	const char *env = getenv("DYNSTACK_UNDER_VALGRIND");
#if DS_HAVE_VALGRIND_H
	if (RUNNING_ON_VALGRIND)
		return true;
#endif
	return env && strcmp(env, "1") == 0;
}

bool under_tsan(void)
{
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
	return true;
#else
	return false;
#endif
}

bool under_asan(void)
{
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
	return true;
#else
	return false;
#endif
}

void valgrind_errors_off(void)
{
#if DS_HAVE_VALGRIND_H
	VALGRIND_DISABLE_ERROR_REPORTING;
#endif
}

void valgrind_errors_on(void)
{
#if DS_HAVE_VALGRIND_H
	VALGRIND_ENABLE_ERROR_REPORTING;
#endif
}

size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

void valgrind_make_defined(const void *p, size_t n)
{
#if DS_HAVE_VALGRIND_H
	VALGRIND_MAKE_MEM_DEFINED(p, n);
#endif
	(void)p;
	(void)n;
}

bool stacks_whole(void)
{
	return under_valgrind() || under_tsan();
}

size_t created_committed(size_t size, size_t initial)
{
	size_t ps = page_size();
	size_t bytes = stacks_whole() ? size : initial ? initial : ps;

	return (bytes + ps - 1) & ~(ps - 1);
}

static uintptr_t page_down(const void *p)
{
	return (uintptr_t)p & ~(uintptr_t)(page_size() - 1);
}

static uintptr_t page_up(const void *p)
{
	return ((uintptr_t)p + page_size() - 1) & ~(uintptr_t)(page_size() - 1);
}

size_t count_resident(const void *lo, const void *hi)
{
	size_t ps = page_size();
	uintptr_t a = page_down(lo), b = page_up(hi);
	size_t n = 0;
	unsigned char v;

	/* Page by page: a failing page (unmapped, ENOMEM) is simply not resident. */
	for (uintptr_t p = a; p < b; p += ps)
		if (mincore((void *)p, ps, &v) == 0 && (v & 1))
			n++;
	return n;
}

size_t count_accessible(const void *lo, const void *hi)
{
	size_t ps = page_size();
	uintptr_t a = page_down(lo), b = page_up(hi);
	pid_t self = getpid();
	size_t n = 0;
	char byte;

	for (uintptr_t p = a; p < b; p += ps) {
		struct iovec local = { .iov_base = &byte, .iov_len = 1 };
		struct iovec remote = { .iov_base = (void *)p, .iov_len = 1 };
		if (process_vm_readv(self, &local, 1, &remote, 1, 0) == 1)
			n++;
	}
	return n;
}

size_t count_vmas(void)
{
	char buf[8192];
	size_t lines = 0;
	ssize_t got;
	int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	while ((got = read(fd, buf, sizeof(buf))) != 0) {
		if (got < 0) {
			if (errno == EINTR)
				continue;
			lines = 0;
			break;
		}
		for (ssize_t i = 0; i < got; i++)
			lines += buf[i] == '\n';
	}
	close(fd);
	return lines;
}

/* Read fd to EOF, keeping what fits in err (NUL-terminated). */
static void drain(int fd, char *err, size_t errsize)
{
	char sink[4096];
	size_t len = 0;
	ssize_t got;

	for (;;) {
		char *dst = sink;
		size_t room = sizeof(sink);
		if (err && len + 1 < errsize) {
			dst = err + len;
			room = errsize - 1 - len;
		}
		got = read(fd, dst, room);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			break;
		if (dst != sink)
			len += (size_t)got;
	}
	if (err && errsize)
		err[len] = '\0';
}

/* Longest a child may take: a handler that retries a fault forever must
 * fail the test (by SIGALRM), not hang the suite. Valgrind runs a program
 * 10 to 50 times slower (its setup gives meson tests 20 times as long). */
#define CHILD_SECONDS 20
#define CHILD_SECONDS_VALGRIND 400

/* In the child: no core file for the crashes we provoke on purpose. */
static void child_setup(void)
{
	struct rlimit none = { 0, 0 };

	setrlimit(RLIMIT_CORE, &none);
	alarm(under_valgrind() ? CHILD_SECONDS_VALGRIND : CHILD_SECONDS);
}

const char *program_path(void)
{
	static char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n <= 0)
		return "/proc/self/exe";
	exe[n] = '\0';
	return exe;
}

static int spawn(child_fn fn, void *arg, const char *mode, const char *const *env, int *status,
		 char *err, size_t errsize)
{
	int fds[2];

	if (pipe2(fds, O_CLOEXEC))
		return -errno;
	/* Nothing buffered may be written twice, once by each process. */
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid < 0) {
		int rc = -errno;
		close(fds[0]);
		close(fds[1]);
		return rc;
	}
	if (pid == 0) {
		child_setup();
		dup2(fds[1], STDERR_FILENO);
		close(fds[0]);
		close(fds[1]);
		if (fn)
			_exit(fn(arg) & 0xff);
		for (; env && *env; env++) {
			const char *eq = strchr(*env, '=');
			if (eq) {
				char name[128];
				size_t n = (size_t)(eq - *env);
				if (n >= sizeof(name))
					_exit(126);
				memcpy(name, *env, n);
				name[n] = '\0';
				setenv(name, eq + 1, 1);
			} else {
				unsetenv(*env);
			}
		}
		char *const argv[] = { (char *)program_path(), (char *)mode, NULL };
		execv(argv[0], argv);
		_exit(127);
	}
	close(fds[1]);
	drain(fds[0], err, errsize);
	close(fds[0]);
	while (waitpid(pid, status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

int run_in_child(child_fn fn, void *arg, int *status, char *err, size_t errsize)
{
	return spawn(fn, arg, NULL, NULL, status, err, errsize);
}

int run_self(const char *mode, const char *const *env, int *status, char *err, size_t errsize)
{
	return spawn(NULL, NULL, mode, env, status, err, errsize);
}

const char *describe_status(int status)
{
	static char text[64];

	if (WIFEXITED(status))
		snprintf(text, sizeof(text), "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(text, sizeof(text), "killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(text, sizeof(text), "wait status %#x", status);
	return text;
}

#define TOUCH_FRAME 256

static unsigned char touch_pattern(unsigned level, size_t i)
{
	return (unsigned char)(level * 31u + i * 7u + 1u);
}

static __attribute__((noinline)) unsigned touch_level(uintptr_t limit, unsigned level)
{
	volatile unsigned char buf[TOUCH_FRAME];
	unsigned n = 1;

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = touch_pattern(level, i);
	if ((uintptr_t)buf > limit) {
		unsigned below = touch_level(limit, level + 1);
		n = below ? below + 1 : 0;
	}
	/* The levels below ran, faulted and returned: ours must be intact. */
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != touch_pattern(level, i))
			return 0;
	return n;
}

unsigned touch_down(const void *top, size_t bytes)
{
	return touch_level((uintptr_t)top - bytes, 0);
}

void touch_pages_down(void *lo, void *hi)
{
	size_t ps = page_size();

	/* Atomic: threads race through the same pages on purpose (the fault
	 * handler is what is under test), and TSan must not call that a bug. */
	for (uintptr_t p = page_up(hi); p > page_down(lo); p -= ps)
		__atomic_store_n((char *)(p - 1), 1, __ATOMIC_RELAXED);
}

dynstack_stats_t stats_now(void)
{
	dynstack_stats_t st;

	memset(&st, 0, sizeof(st));
	st.struct_size = sizeof(st);
	if (dynstack_stats_get(&st))
		abort();
	return st;
}

long thread_id(void)
{
	return syscall(SYS_gettid);
}

bool contains(const char *text, const char *needle)
{
	return text && needle && strstr(text, needle) != NULL;
}
