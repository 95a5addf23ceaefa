/* Shared test helpers: the kernel's own view of a range of memory (mincore,
 * process_vm_readv, /proc/self/maps), forked and re-executed children whose
 * stderr is captured, and recursion that really uses stack. No CMocka here:
 * the helpers also run in children, which report through exit codes. */
#ifndef DS_TEST_HELPERS_H
#define DS_TEST_HELPERS_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/wait.h>

#include <dynstack.h>

/* In a test body (needs cmocka.h): CMocka replaces the SIGSEGV handler
 * around each test with signal(), and dynstack_init puts ours back. */
#define TAKE_SIGSEGV() assert_int_equal(dynstack_init(NULL), 0)

/* In a child function: report a failed check on stderr and return 1, which
 * becomes the child's exit status. */
#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "check failed at line %d: %s\n", __LINE__, #cond);         \
			return 1;                                                                  \
		}                                                                                  \
	} while (0)

/* The page size, from sysconf (not from the library). */
size_t page_size(void);

/* Pages of [lo, hi) the kernel has resident (mincore); both rounded out to
 * pages. Call it before count_accessible, which maps the zero page into
 * every accessible page it reads. */
size_t count_resident(const void *lo, const void *hi);
/* Pages of [lo, hi) the kernel lets this process read: one
 * process_vm_readv(getpid()) per page, EFAULT meaning not accessible. That
 * is true of PROT_NONE pages, guard markers and unmapped pages alike. */
size_t count_accessible(const void *lo, const void *hi);
/* Number of VMAs of this process (lines of /proc/self/maps), or 0 on error. */
size_t count_vmas(void);

/* Run fn(arg) in a forked child that exits with its return value (& 0xff).
 * The child gets no core file and dies by SIGALRM after 20 s. Its stderr is
 * captured into err (always NUL-terminated, truncated to errsize - 1 bytes);
 * err may be NULL. *status is the wait status. Returns 0, or -errno if fork
 * or pipe failed. */
typedef int (*child_fn)(void *arg);
int run_in_child(child_fn fn, void *arg, int *status, char *err, size_t errsize);
/* Like run_in_child, but the child re-executes this test program as
 * `/proc/self/exe mode`: a fresh process in which the library has never been
 * initialised. env lists "NAME=value" to set and "NAME" to unset, NULL-ended
 * (env itself may be NULL). The program's main dispatches on argv[1]. */
int run_self(const char *mode, const char *const *env, int *status, char *err, size_t errsize);
/* Human-readable form of a wait status, for assertion messages. */
const char *describe_status(int status);

#ifdef cmocka_unit_test
/* Run fn(arg) in a child with its stderr in err, and fail the test unless
 * the child exits with 0 (want_signal == 0) or dies by want_signal. */
static inline void expect_child(child_fn fn, void *arg, int want_signal, char *err, size_t errsize)
{
	int status;

	assert_int_equal(run_in_child(fn, arg, &status, err, errsize), 0);
	if (!want_signal && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
		fail_msg("child %s; its stderr:\n%s", describe_status(status), err);
	if (want_signal && (!WIFSIGNALED(status) || WTERMSIG(status) != want_signal))
		fail_msg("child %s, expected death by signal %d; its stderr:\n%s",
			 describe_status(status), want_signal, err);
}
/* For test files that keep their child's stderr in a `child_err` array. */
#define expect_child_ok(fn, arg) expect_child((fn), (arg), 0, child_err, sizeof(child_err))
#define expect_child_sigsegv(fn, arg)                                                              \
	expect_child((fn), (arg), SIGSEGV, child_err, sizeof(child_err))
#endif

/* Recurse until the frame is at least `bytes` below `top`, writing every
 * byte of a 256-byte volatile array per level, and check on the way back up
 * that each level still holds what it wrote. Returns the number of levels
 * (>= 1), or 0 if any level found its data changed. */
unsigned touch_down(const void *top, size_t bytes);
/* Write one byte in each page of [lo, hi), highest page first, as a stack
 * growing down does. */
void touch_pages_down(void *lo, void *hi);

/* A counter snapshot (aborts if dynstack_stats_get fails). */
dynstack_stats_t stats_now(void);

/* The calling thread's kernel id. */
long thread_id(void);

/* strstr(text, needle) != NULL, NULL-safe. */
bool contains(const char *text, const char *needle);

#endif /* DS_TEST_HELPERS_H */
