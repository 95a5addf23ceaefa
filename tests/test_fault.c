/* Tests of the fault handler (src/fault.c): overflows are reported and
 * kill, faults that are not ours reach the handler installed before us as
 * the kernel would deliver them, errno survives, and the counters are exact.
 * Anything that may die or changes signal dispositions runs in a child.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static char child_err[8192];

static dynstack_t *create(size_t size, const char *name)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	dynstack_attr_init(&attr);
	attr.size = size;
	attr.name = name;
	if (dynstack_create(&s, &attr))
		return NULL;
	return s;
}

/* ---- overflow */

static void overflow_fn(void *arg)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	touch_down(dynstack_top(self), (size_t)1 << 30); /* far past the bottom */
}

static int overflow_child(void *arg)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_attr_init(&attr);
	attr.name = "overflow-victim";
	CHECK(dynstack_coro_create(&c, overflow_fn, NULL, &attr) == 0);
	fprintf(stderr, "id=%" PRIu64 "\n", dynstack_id(dynstack_coro_stack(c)));
	dynstack_coro_resume(c);
	return 100; /* survived the overflow */
}

static uint64_t reported_id(const char *err)
{
	const char *p = strstr(err, "id=");

	return p ? strtoull(p + 3, NULL, 10) : 0;
}

static void test_overflow_kills_with_report(void **state)
{
	char want[128];

	expect_child_sigsegv(overflow_child, NULL);
	uint64_t id = reported_id(child_err);
	assert_true(id != 0);
	snprintf(want, sizeof(want),
		 "libdynstack: stack overflow on stack %" PRIu64 " \"overflow-victim\" (size %u,",
		 id, DYNSTACK_DEFAULT_SIZE);
	if (!contains(child_err, want))
		fail_msg("report lacks '%s'; stderr:\n%s", want, child_err);
	assert_true(contains(child_err, "bytes below the stack)"));
}

/* Not only code running on the stack: any access below lo is an overflow
 * of the stack it belongs to. */
static int overflow_direct_child(void *arg)
{
	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = create(64 * 1024, "direct");
	CHECK(s != NULL);
	fprintf(stderr, "id=%" PRIu64 "\n", dynstack_id(s));
	char *lo = (char *)dynstack_top(s) - dynstack_size(s);
	valgrind_errors_off();
	*(volatile char *)(lo - 1) = 1;
	return 100;
}

static void test_overflow_direct_access(void **state)
{
	char want[128];

	expect_child_sigsegv(overflow_direct_child, NULL);
	snprintf(want, sizeof(want), "stack overflow on stack %" PRIu64 " \"direct\" (size 65536",
		 reported_id(child_err));
	if (!contains(child_err, want) || !contains(child_err, ", 1 bytes below the stack)"))
		fail_msg("report lacks '%s'; stderr:\n%s", want, child_err);
}

/* ---- foreign faults go to the previous handler */

static char *foreign_page;
static volatile sig_atomic_t prev_calls;
static void *volatile prev_addr;
static volatile int prev_sig, prev_code, prev_blocked_self, prev_blocked_mask, prev_has_uctx;

/* Volatile: the compiler must not move a faulting access past the checks of
 * what the handler did, nor fold it into them. The access is meant to fault
 * (Memcheck is told so). */
static void poke(char *p, char v)
{
	valgrind_errors_off();
	*(volatile char *)p = v;
	valgrind_errors_on();
}

static char peek(const char *p)
{
	return *(const volatile char *)p;
}

static void *map_none(void)
{
	void *p = mmap(NULL, page_size(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void note_mask(int sig)
{
	sigset_t now;

	pthread_sigmask(SIG_SETMASK, NULL, &now);
	prev_blocked_self = sigismember(&now, sig);
	prev_blocked_mask = sigismember(&now, SIGUSR2);
}

static void prev_info_handler(int sig, siginfo_t *si, void *uctx)
{
	prev_calls++;
	prev_sig = sig;
	prev_addr = si->si_addr;
	prev_code = si->si_code;
	prev_has_uctx = uctx != NULL;
	note_mask(sig);
	mprotect(foreign_page, page_size(), PROT_READ | PROT_WRITE);
}

static void prev_plain_handler(int sig)
{
	prev_calls++;
	prev_sig = sig;
	note_mask(sig);
	mprotect(foreign_page, page_size(), PROT_READ | PROT_WRITE);
}

/* Install prev for sig, then the library on top of it. */
static int install_prev(int sig, void (*info)(int, siginfo_t *, void *), void (*plain)(int),
			int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sa.sa_flags = flags;
	if (info) {
		sa.sa_sigaction = info;
		sa.sa_flags |= SA_SIGINFO;
	} else {
		sa.sa_handler = plain;
	}
	if (sigaction(sig, &sa, NULL))
		return -errno;
	return dynstack_init(NULL);
}

/* Growth must still work with the previous handler in place (not where
 * stacks are committed whole). */
static int grow_one_page(void)
{
	if (stacks_whole())
		return 0;
	dynstack_t *s = create(64 * 1024, "grow");

	if (!s)
		return -1;
	char *top = dynstack_top(s);
	size_t before = dynstack_committed(s);
	*(volatile char *)(top - before - 1) = 1;
	int ok = dynstack_committed(s) == before + page_size();
	dynstack_destroy(s);
	return ok ? 0 : -1;
}

static int foreign_siginfo_child(void *arg)
{
	CHECK((foreign_page = map_none()) != NULL);
	CHECK(install_prev(SIGSEGV, prev_info_handler, NULL, 0) == 0);
	CHECK(grow_one_page() == 0);
	dynstack_stats_t before = stats_now();
	poke(&foreign_page[100], 42);
	dynstack_stats_t after = stats_now();
	CHECK(prev_calls == 1);
	CHECK(prev_sig == SIGSEGV);
	CHECK(prev_addr == foreign_page + 100);
	CHECK(prev_code == SEGV_ACCERR);
	CHECK(prev_has_uctx);
	CHECK(prev_blocked_self); /* no SA_NODEFER: blocked while it runs */
	CHECK(prev_blocked_mask); /* and its sa_mask applies */
	CHECK(peek(&foreign_page[100]) == 42);
	CHECK(after.nr_dynamic_stacks_foreign - before.nr_dynamic_stacks_foreign == 1);
	CHECK(after.nr_dynamic_stacks_faults == before.nr_dynamic_stacks_faults);
	/* The mask is back to normal after the handler. */
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	CHECK(!sigismember(&now, SIGSEGV) && !sigismember(&now, SIGUSR2));
	CHECK(grow_one_page() == 0);
	return 0;
}

static void test_foreign_to_siginfo_handler(void **state)
{
	expect_child_ok(foreign_siginfo_child, NULL);
}

static int foreign_plain_child(void *arg)
{
	CHECK((foreign_page = map_none()) != NULL);
	CHECK(install_prev(SIGSEGV, NULL, prev_plain_handler, 0) == 0);
	CHECK(grow_one_page() == 0);
	poke(&foreign_page[0], 7);
	CHECK(prev_calls == 1);
	CHECK(prev_sig == SIGSEGV);
	CHECK(prev_blocked_self && prev_blocked_mask);
	CHECK(peek(&foreign_page[0]) == 7);
	CHECK(grow_one_page() == 0);
	return 0;
}

static void test_foreign_to_plain_handler(void **state)
{
	expect_child_ok(foreign_plain_child, NULL);
}

/* SA_NODEFER: the previous handler runs with its signal unblocked. */
static int foreign_nodefer_child(void *arg)
{
	CHECK((foreign_page = map_none()) != NULL);
	CHECK(install_prev(SIGSEGV, prev_info_handler, NULL, SA_NODEFER) == 0);
	poke(&foreign_page[0], 7);
	CHECK(prev_calls == 1);
	CHECK(!prev_blocked_self);
	CHECK(prev_blocked_mask);
	return 0;
}

static void test_foreign_nodefer(void **state)
{
	expect_child_ok(foreign_nodefer_child, NULL);
}

/* SA_RESETHAND: the previous handler runs once, the next fault kills. */
static int foreign_resethand_child(void *arg)
{
	CHECK((foreign_page = map_none()) != NULL);
	char *second = map_none();
	CHECK(second != NULL);
	CHECK(install_prev(SIGSEGV, prev_info_handler, NULL, SA_RESETHAND) == 0);
	poke(&foreign_page[0], 7);
	CHECK(prev_calls == 1);
	CHECK(grow_one_page() == 0); /* ours is still installed */
	fprintf(stderr, "second fault\n");
	poke(&second[0], 7);
	return 100;
}

static void test_foreign_resethand(void **state)
{
	expect_child_sigsegv(foreign_resethand_child, NULL);
	assert_true(contains(child_err, "second fault"));
}

static int foreign_dfl_child(void *arg)
{
	CHECK((foreign_page = map_none()) != NULL);
	CHECK(signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	CHECK(dynstack_init(NULL) == 0);
	CHECK(grow_one_page() == 0);
	fprintf(stderr, "grown\n");
	poke(&foreign_page[0], 1);
	return 100;
}

static void test_foreign_with_sig_dfl_kills(void **state)
{
	expect_child_sigsegv(foreign_dfl_child, NULL);
	assert_true(contains(child_err, "grown"));
	assert_false(contains(child_err, "libdynstack:"));
}

static int foreign_ign_child(void *arg)
{
	CHECK((foreign_page = map_none()) != NULL);
	CHECK(signal(SIGSEGV, SIG_IGN) != SIG_ERR);
	CHECK(dynstack_init(NULL) == 0);
	CHECK(grow_one_page() == 0);
	fprintf(stderr, "grown\n");
	poke(&foreign_page[0], 1);
	return 100;
}

static void test_foreign_with_sig_ign_kills(void **state)
{
	expect_child_sigsegv(foreign_ign_child, NULL);
	assert_true(contains(child_err, "grown"));
	assert_false(contains(child_err, "libdynstack:"));
}

/* A SIGSEGV that somebody sent carries no fault address: never ours, and
 * ignored when the previous disposition says so (as the kernel would). */
static int sent_ign_child(void *arg)
{
	CHECK(signal(SIGSEGV, SIG_IGN) != SIG_ERR);
	CHECK(dynstack_init(NULL) == 0);
	dynstack_stats_t before = stats_now();
	CHECK(raise(SIGSEGV) == 0);
	dynstack_stats_t after = stats_now();
	CHECK(after.nr_dynamic_stacks_foreign - before.nr_dynamic_stacks_foreign == 1);
	return 0;
}

static void test_sent_sigsegv_ignored(void **state)
{
	expect_child_ok(sent_ign_child, NULL);
}

static int sent_info_child(void *arg)
{
	CHECK(install_prev(SIGSEGV, prev_info_handler, NULL, 0) == 0);
	CHECK(raise(SIGSEGV) == 0);
	CHECK(prev_calls == 1);
	CHECK(prev_code == SI_TKILL || prev_code == SI_USER);
	return 0;
}

static void test_sent_sigsegv_to_handler(void **state)
{
	expect_child_ok(sent_info_child, NULL);
}

static int sent_dfl_child(void *arg)
{
	CHECK(signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	CHECK(dynstack_init(NULL) == 0);
	raise(SIGSEGV);
	return 100;
}

static void test_sent_sigsegv_default_kills(void **state)
{
	expect_child_sigsegv(sent_dfl_child, NULL);
}

/* SIGBUS is chained too: a read past the end of a shared file mapping. */
static int bus_fd = -1;

static void prev_bus_handler(int sig, siginfo_t *si, void *uctx)
{
	prev_calls++;
	prev_sig = sig;
	prev_addr = si->si_addr;
	prev_code = si->si_code;
	if (ftruncate(bus_fd, 2 * (off_t)page_size()))
		_exit(99);
}

static int foreign_sigbus_child(void *arg)
{
	size_t ps = page_size();

	CHECK((bus_fd = memfd_create("bus", 0)) >= 0);
	CHECK(ftruncate(bus_fd, (off_t)ps) == 0);
	char *map = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_SHARED, bus_fd, 0);
	CHECK(map != MAP_FAILED);
	CHECK(install_prev(SIGBUS, prev_bus_handler, NULL, 0) == 0);
	struct sigaction cur;
	CHECK(sigaction(SIGBUS, NULL, &cur) == 0 && (cur.sa_flags & SA_ONSTACK));
	poke(&map[ps + 5], 9);
	CHECK(prev_calls == 1);
	CHECK(prev_sig == SIGBUS);
	CHECK(prev_addr == map + ps + 5);
	CHECK(prev_code == BUS_ADRERR);
	CHECK(peek(&map[ps + 5]) == 9);
	return 0;
}

static void test_foreign_sigbus(void **state)
{
	expect_child_ok(foreign_sigbus_child, NULL);
}

/* A page the user made inaccessible again is not a commit matter: after a
 * bounded number of retries it is passed on, with a line on stderr. */
static int repeated_child(void *arg)
{
	size_t ps = page_size();

	CHECK(install_prev(SIGSEGV, prev_info_handler, NULL, 0) == 0);
	dynstack_t *s = create(64 * 1024, "reprotected");
	CHECK(s != NULL);
	foreign_page = (char *)dynstack_top(s) - ps;
	CHECK(mprotect(foreign_page, ps, PROT_NONE) == 0);
	dynstack_stats_t before = stats_now();
	poke(&foreign_page[1], 3);
	dynstack_stats_t after = stats_now();
	CHECK(prev_calls == 1);
	CHECK(prev_addr == foreign_page + 1);
	CHECK(peek(&foreign_page[1]) == 3);
	CHECK(after.nr_dynamic_stacks_spurious - before.nr_dynamic_stacks_spurious > 1);
	CHECK(after.nr_dynamic_stacks_foreign - before.nr_dynamic_stacks_foreign == 1);
	CHECK(after.nr_dynamic_stacks_faults == before.nr_dynamic_stacks_faults);
	CHECK(dynstack_committed(s) == created_committed(64 * 1024, 0));
	return 0;
}

/* The same, with a report that cannot be written (stderr read-only): the
 * failed write(2) inside the handler must not leak into errno. */
static void prev_fixing_handler(int sig, siginfo_t *si, void *uctx)
{
	int saved = errno; /* a well-behaved handler */

	prev_calls++;
	mprotect(foreign_page, page_size(), PROT_READ | PROT_WRITE);
	errno = saved;
}

static int errno_report_child(void *arg)
{
	size_t ps = page_size();

	CHECK(install_prev(SIGSEGV, prev_fixing_handler, NULL, 0) == 0);
	dynstack_t *s = create(64 * 1024, "quiet");
	CHECK(s != NULL);
	foreign_page = (char *)dynstack_top(s) - ps;
	CHECK(mprotect(foreign_page, ps, PROT_NONE) == 0);
	int ro = open("/dev/null", O_RDONLY);
	CHECK(ro >= 0 && dup2(ro, STDERR_FILENO) == STDERR_FILENO);
	errno = 1234;
	poke(foreign_page, 1);
	int seen = errno;
	if (prev_calls != 1 || seen != 1234)
		return 10 + (seen == EBADF);
	return 0;
}

static void test_errno_preserved_when_report_fails(void **state)
{
	expect_child_ok(errno_report_child, NULL);
}

static void test_repeated_fault_passed_on(void **state)
{
	expect_child_ok(repeated_child, NULL);
	if (!contains(child_err, "libdynstack: repeated fault on a committed page (passed on) on "
				 "stack ") ||
	    !contains(child_err, "\"reprotected\""))
		fail_msg("no report of the repeated fault; stderr:\n%s", child_err);
}

/* A destroyed stack's pages are not committed again behind the user's back:
 * an access there is a use after destroy, passed on like any foreign fault. */
static sigjmp_buf escape;

static void escape_handler(int sig, siginfo_t *si, void *uctx)
{
	prev_calls++;
	prev_addr = si->si_addr;
	siglongjmp(escape, 1);
}

static int use_after_destroy_child(void *arg)
{
	CHECK(install_prev(SIGSEGV, escape_handler, NULL, 0) == 0);
	dynstack_t *s = create(64 * 1024, "destroyed");
	CHECK(s != NULL);
	char *top = dynstack_top(s);
	touch_pages_down(top - 4 * page_size(), top);
	CHECK(dynstack_destroy(s) == 0);
	dynstack_stats_t before = stats_now();
	char *const targets[] = { top - 1, top - 3 * page_size(), top - 10 * page_size() };
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		if (sigsetjmp(escape, 1) == 0)
			poke(targets[i], 1);
		valgrind_errors_on(); /* the handler jumped out of poke */
		CHECK(prev_calls == (int)i + 1);
		CHECK(prev_addr == targets[i]);
	}
	dynstack_stats_t after = stats_now();
	CHECK(after.nr_dynamic_stacks_foreign - before.nr_dynamic_stacks_foreign == 3);
	CHECK(after.nr_dynamic_stacks_faults == before.nr_dynamic_stacks_faults);
	CHECK(after.nr_dynamic_stacks_pages == before.nr_dynamic_stacks_pages);
	CHECK(count_accessible(top - 64 * 1024, top) == 0);
	return 0;
}

static void test_use_after_destroy_is_foreign(void **state)
{
	expect_child_ok(use_after_destroy_child, NULL);
	assert_false(contains(child_err, "libdynstack:"));
}

/* ---- errno and counters (in this process) */

static void test_errno_preserved(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	dynstack_t *s = create(64 * 1024, "errno");
	assert_non_null(s);
	char *top = dynstack_top(s);

	for (size_t page = 2; page <= 16; page += 7) {
		size_t before = dynstack_committed(s);
		errno = 1234;
		*(volatile char *)(top - page * page_size()) = 1;
		int seen = errno;
		assert_int_equal(seen, 1234);
		assert_true(dynstack_committed(s) > before);
	}
	assert_int_equal(dynstack_destroy(s), 0);
}

struct errno_on_stack {
	int seen;
	unsigned levels;
};

static __attribute__((noinline)) int errno_dive(struct errno_on_stack *e)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	errno = 4321;
	e->levels = touch_down(dynstack_top(self), dynstack_size(self) / 2);
	return errno;
}

static void errno_fn(void *arg)
{
	struct errno_on_stack *e = arg;

	e->seen = errno_dive(e);
}

static void test_errno_preserved_on_stack(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	dynstack_attr_t attr;
	dynstack_coro_t *c;
	struct errno_on_stack e = { 0 };

	dynstack_attr_init(&attr);
	attr.size = 128 * 1024;
	assert_int_equal(dynstack_coro_create(&c, errno_fn, &e, &attr), 0);
	dynstack_stats_t before = stats_now();
	assert_int_equal(dynstack_coro_resume(c), 0);
	dynstack_stats_t after = stats_now();
	assert_true(e.levels > 0);
	assert_true(after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults >= 10);
	assert_int_equal(e.seen, 4321);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

static void touch_page(char *top, size_t index)
{
	/* Page `index` counts from the top: page 0 is [top - ps, top). */
	*(volatile char *)(top - (index + 1) * page_size() + 8) = 1;
}

static void test_fault_counters_exact(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	const size_t ps = page_size();
	dynstack_t *s = create(16 * ps, "counted");
	assert_non_null(s);
	char *top = dynstack_top(s);
	/* page touched, faults and pages it adds, committed after */
	const struct {
		size_t page, faults, pages;
	} steps[] = {
		{ 0, 0, 0 },		   /* the initial page */
		{ 3, 1, 3 },		   /* pages 1..3 in one fault */
		{ 2, 0, 0 },		   /* already committed */
		{ 1, 0, 0 },  { 7, 1, 4 }, /* 4..7 */
		{ 8, 1, 1 },		   /* the next page */
		{ 15, 1, 7 },		   /* down to lo */
		{ 5, 0, 0 },
	};
	size_t committed = ps;

	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		dynstack_stats_t before = stats_now();
		touch_page(top, steps[i].page);
		dynstack_stats_t after = stats_now();
		committed += steps[i].pages * ps;
		if (after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults !=
			    steps[i].faults ||
		    after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages !=
			    steps[i].pages)
			fail_msg("step %zu (page %zu): %" PRIu64 " faults, %" PRIu64 " pages", i,
				 steps[i].page,
				 after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults,
				 after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages);
		assert_int_equal(after.nr_dynamic_stacks_spurious,
				 before.nr_dynamic_stacks_spurious);
		assert_int_equal(after.nr_dynamic_stacks_foreign, before.nr_dynamic_stacks_foreign);
		assert_int_equal(after.nr_dynamic_stacks_overflows,
				 before.nr_dynamic_stacks_overflows);
		assert_int_equal(dynstack_committed(s), committed);
		assert_int_equal(dynstack_peak(s), committed);
		assert_int_equal(count_accessible(top - 17 * ps, top), committed / ps);
	}
	assert_int_equal(committed, 16 * ps);
	assert_int_equal(dynstack_destroy(s), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_overflow_kills_with_report),
		cmocka_unit_test(test_overflow_direct_access),
		cmocka_unit_test(test_foreign_to_siginfo_handler),
		cmocka_unit_test(test_foreign_to_plain_handler),
		cmocka_unit_test(test_foreign_nodefer),
		cmocka_unit_test(test_foreign_resethand),
		cmocka_unit_test(test_foreign_with_sig_dfl_kills),
		cmocka_unit_test(test_foreign_with_sig_ign_kills),
		cmocka_unit_test(test_sent_sigsegv_ignored),
		cmocka_unit_test(test_sent_sigsegv_to_handler),
		cmocka_unit_test(test_sent_sigsegv_default_kills),
		cmocka_unit_test(test_foreign_sigbus),
		cmocka_unit_test(test_repeated_fault_passed_on),
		cmocka_unit_test(test_errno_preserved_when_report_fails),
		cmocka_unit_test(test_use_after_destroy_is_foreign),
		cmocka_unit_test(test_errno_preserved),
		cmocka_unit_test(test_errno_preserved_on_stack),
		cmocka_unit_test(test_fault_counters_exact),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
