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

/* Which tool the test runs under. Valgrind: RUNNING_ON_VALGRIND, or the
 * DYNSTACK_UNDER_VALGRIND=1 that `meson test --setup=valgrind` sets (for a
 * build without valgrind.h). TSan and ASan: how this program was compiled. */
bool under_valgrind(void);
bool under_tsan(void);
bool under_asan(void);

/* In a test body (needs cmocka.h): skip this test under `tool` (valgrind,
 * tsan or asan), saying why. Only for what the tool cannot run or observe;
 * docs/tools.md lists every use. */
#define SKIP_UNDER(tool, reason)                                                                   \
	do {                                                                                       \
		if (under_##tool()) {                                                              \
			print_message("skipped under " #tool ": %s\n", (reason));                  \
			skip();                                                                    \
		}                                                                                  \
	} while (0)

/* Whether the library commits every stack whole when it creates it, and
 * never trims it: under Valgrind (it restarts a faulting push with a wrong
 * stack pointer; docs/design.md) and in a TSan build (DS_WHOLE_STACKS_BUILD
 * in src/internal.h). No stack grows by fault there. */
bool stacks_whole(void);
#define WHOLE_STACKS                                                                               \
	"stacks are committed whole at creation here: never grown by fault, never trimmed"
/* In a test body: skip a test whose point is growth by fault (its counts,
 * its trace, trims) where there is none. */
#define SKIP_IF_WHOLE()                                                                            \
	do {                                                                                       \
		SKIP_UNDER(valgrind, WHOLE_STACKS);                                                \
		SKIP_UNDER(tsan, WHOLE_STACKS);                                                    \
	} while (0)
/* Bytes committed on a new stack of `size` bytes created with `initial`
 * (0: the default policy's one page), page-rounded: all of it where stacks
 * are committed whole. */
size_t created_committed(size_t size, size_t initial);

/* Around an access Memcheck would report that the test means to make: one
 * that faults on purpose on an inaccessible page (a handler then makes it
 * accessible, or the process dies), or a read of a whole stack, dead frames
 * below the stack pointer included. Per thread; pairs may nest. */
void valgrind_errors_off(void);
void valgrind_errors_on(void);
/* Tell Memcheck that [p, p + n) is defined: a value computed from such
 * bytes on purpose (a hash of a whole stack). */
void valgrind_make_defined(const void *p, size_t n);

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
 * The child gets no core file and dies by SIGALRM after 20 s (400 s under
 * Valgrind). Its stderr is
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
/* This program's path, to execute it again. Not "/proc/self/exe" itself:
 * under Valgrind that names Valgrind to execve, and only readlink gives the
 * program it runs. */
const char *program_path(void);
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
