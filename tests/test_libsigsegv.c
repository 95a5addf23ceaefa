/* Tests of the libsigsegv front end (-Dlibsigsegv=enabled; docs/signals.md):
 * stacks grow through libsigsegv's global handler, overflows are still
 * reported, foreign faults in another libsigsegv user's area reach that
 * user's handler, a sent SIGSEGV does not make libsigsegv drop us, and why
 * our entry must carry SA_ONSTACK. Each case runs in a fresh process, since
 * libsigsegv's state is process-wide and the order of installs matters.
 * Built without the option, the program only reports a skip (exit 77). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if DS_HAVE_LIBSIGSEGV
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <sigsegv.h>

#include "helpers.h"

static char child_err[8192];

/* ---- helpers for the children */

/* sa's handler is libsigsegv's own (a static function of the object that
 * defines sigsegv_install_handler), as opposed to the library's entry. */
static bool is_libsigsegv_entry(const struct sigaction *sa)
{
	Dl_info in, lib;
	return (sa->sa_flags & SA_SIGINFO) && dladdr((void *)sa->sa_sigaction, &in) &&
	       dladdr((void *)sigsegv_install_handler, &lib) && in.dli_fbase == lib.dli_fbase;
}

static struct sigaction segv_action(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigaction(SIGSEGV, NULL, &sa);
	return sa;
}

struct dig {
	size_t bytes;
	unsigned levels;
};

/* Goes down d->bytes, yields there, and checks its frames on the way up. */
static void dig_fn(void *arg)
{
	struct dig *d = arg;
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	d->levels = touch_down(dynstack_top(self), d->bytes / 2);
	dynstack_coro_yield();
	d->levels = d->levels ? touch_down(dynstack_top(self), d->bytes) : 0;
}

static dynstack_coro_t *make_coro(dynstack_coro_fn fn, void *arg, size_t size, const char *name,
				  const char *policy)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c = NULL;

	dynstack_attr_init(&attr);
	attr.size = size;
	attr.name = name;
	attr.policy = policy;
	return dynstack_coro_create(&c, fn, arg, &attr) ? NULL : c;
}

/* Eight coroutines of 256 KiB reservations, each going 192 KiB deep in two
 * steps with a yield between: every step past the committed edge is a
 * growth fault. Returns 0, or 1 (with a message) when one went wrong. */
static int grow_coros(void)
{
	enum {
		N = 8
	};
	struct dig d[N];
	dynstack_coro_t *c[N];
	dynstack_stats_t s0 = stats_now();

	for (int i = 0; i < N; i++) {
		d[i] = (struct dig){ .bytes = 192 << 10 };
		c[i] = make_coro(dig_fn, &d[i], 256 << 10, "grower", NULL);
		CHECK(c[i] != NULL);
	}
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < N; i++)
			CHECK(dynstack_coro_resume(c[i]) == 0);
	for (int i = 0; i < N; i++) {
		CHECK(dynstack_coro_status(c[i]) == DYNSTACK_CORO_DEAD);
		CHECK(d[i].levels > 0);
		CHECK(dynstack_coro_destroy(c[i]) == 0);
	}
	/* Where stacks are committed whole (Valgrind) they take no growth fault: the frames above
	 * are what is checked there. */
	if (!stacks_whole())
		CHECK(stats_now().nr_dynamic_stacks_faults >= s0.nr_dynamic_stacks_faults + N);
	return 0;
}

static void *grow_thread(void *arg)
{
	*(int *)arg = grow_coros();
	return NULL;
}

/* A child of the child, for a step that must kill: its wait status. */
static int fate(child_fn fn, void *arg)
{
	int status = 0;
	if (run_in_child(fn, arg, &status, NULL, 0))
		return -1;
	return status;
}

static bool died_by(int status, int sig)
{
	return status >= 0 && WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

static int grow_in_child(void *arg)
{
	return grow_coros();
}

/* ---- our entry in front of libsigsegv's handler */

static int grow_child(void)
{
	CHECK(dynstack_init(NULL) == 0);
	struct sigaction sa = segv_action();
	/* Ours, not libsigsegv's, with SA_ONSTACK; nothing left without it. */
	CHECK((sa.sa_flags & SA_SIGINFO) && (sa.sa_flags & SA_ONSTACK));
	CHECK(!is_libsigsegv_entry(&sa));
	CHECK(dynstack_signals_check(-1) == 0);
	CHECK(grow_coros() == 0);

	int rc = -1;
	pthread_t t;
	CHECK(pthread_create(&t, NULL, grow_thread, &rc) == 0);
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(rc == 0);
	/* Re-initialising keeps our entry; it does not go back to libsigsegv. */
	CHECK(dynstack_init(NULL) == 0);
	CHECK(segv_action().sa_sigaction == sa.sa_sigaction);
	fprintf(stderr, "grow-child-done\n");
	return 0;
}

static void expect_self(const char *mode, int want_signal)
{
	/* The stack cache off: a warm stack from an earlier step would spare a
	 * later one the growth faults it is there to take. */
	static const char *const env[] = { "DYNSTACK_CACHE=0", NULL };
	int status;

	assert_int_equal(run_self(mode, env, &status, child_err, sizeof(child_err)), 0);
	if (!want_signal && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
		fail_msg("child %s %s; its stderr:\n%s", mode, describe_status(status), child_err);
	if (want_signal && !died_by(status, want_signal))
		fail_msg("child %s %s, expected death by signal %d; its stderr:\n%s", mode,
			 describe_status(status), want_signal, child_err);
}

static void expect_in_err(const char *needle)
{
	if (!contains(child_err, needle))
		fail_msg("stderr lacks '%s'; it was:\n%s", needle, child_err);
}

static void test_grow_through_front_end(void **state)
{
	expect_self("--grow", 0);
	expect_in_err("grow-child-done");
}

/* ---- libsigsegv's own handler in front again: a stack-overflow handler of
 * another libsigsegv user, installed after us, re-installs it. Our global
 * handler stays (libsigsegv keeps the two apart), so stacks still grow, with
 * the fault address alone. */

static char so_stack[1 << 16];

static void so_handler(int emergency, stackoverflow_context_t scp)
{
	static const char msg[] = "other user's stack overflow handler\n";
	write(STDERR_FILENO, msg, sizeof(msg) - 1);
	_exit(42);
}

/* The main thread's own stack overflows: libsigsegv's stack-overflow handler
 * must get it (we decline: not our address). */
static int main_stack_overflow(void *arg)
{
	struct rlimit rl = { 1 << 20, 1 << 20 };
	char here;
	setrlimit(RLIMIT_STACK, &rl);
	return touch_down(&here, 64 << 20) ? 100 : 101;
}

static int after_so_child(void)
{
	CHECK(dynstack_init(NULL) == 0);
	CHECK(stackoverflow_install_handler(so_handler, so_stack, sizeof(so_stack)) == 0);
	struct sigaction sa = segv_action();
	CHECK(is_libsigsegv_entry(&sa) && (sa.sa_flags & SA_ONSTACK));
	CHECK(grow_coros() == 0);
	/* Under Valgrind the main thread's stack is Valgrind's: it meets the overflow first and the
	 * process dies by its default action, libsigsegv's handler never called. */
	if (!under_valgrind())
		CHECK(fate(main_stack_overflow, NULL) == 42 << 8);
	fprintf(stderr, "after-so-child-done\n");
	return 0;
}

static void test_grow_after_stackoverflow_handler(void **state)
{
	expect_self("--after-so", 0);
	expect_in_err("after-so-child-done");
}

/* ---- overflows: reported, with our entry in front (overflow=fail ends the
 * coroutine, since the context is kept) and without (it cannot) */

static void deep_fn(void *arg)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());
	touch_down(dynstack_top(self), (size_t)1 << 30);
}

static int overflow_child(void *arg)
{
	const char *policy = arg;
	dynstack_coro_t *c = make_coro(deep_fn, NULL, 64 << 10, "sigsegv-victim", policy);
	CHECK(c != NULL);
	int rc = dynstack_coro_resume(c);
	fprintf(stderr, "resume returned %d\n", rc);
	return rc == -EOVERFLOW ? 0 : 100;
}

static int overflow_modes_child(bool after_so)
{
	char err[2048];
	int status;

	CHECK(dynstack_init(NULL) == 0);
	if (after_so)
		CHECK(stackoverflow_install_handler(so_handler, so_stack, sizeof(so_stack)) == 0);

	CHECK(run_in_child(overflow_child, NULL, &status, err, sizeof(err)) == 0);
	fprintf(stderr, "abort: %s: %s", describe_status(status), err);
	CHECK(died_by(status, SIGSEGV));
	CHECK(contains(err, "libdynstack: stack overflow on stack "));
	CHECK(contains(err, "\"sigsegv-victim\""));

	CHECK(run_in_child(overflow_child, "overflow=fail", &status, err, sizeof(err)) == 0);
	fprintf(stderr, "fail: %s: %s", describe_status(status), err);
	if (after_so) {
		CHECK(died_by(status, SIGSEGV));
		CHECK(contains(err, "libdynstack: stack overflow (overflow=fail: libsigsegv passed "
				    "no signal context"));
	} else {
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		CHECK(contains(err, "overflow=fail: the coroutine is ended"));
	}
	fprintf(stderr, "overflow-child-done\n");
	return 0;
}

static void test_overflow_reported(void **state)
{
	expect_self("--overflow", 0);
	expect_in_err("overflow-child-done");
}

static void test_overflow_reported_after_stackoverflow_handler(void **state)
{
	expect_self("--overflow-after-so", 0);
	expect_in_err("overflow-child-done");
}

/* ---- another libsigsegv user's area */

static sigsegv_dispatcher other_dispatcher;
static char *area;
static size_t area_len;
static volatile int area_hits;

static int area_handler(void *fault_address, void *user_arg)
{
	size_t ps = page_size();
	char *page = (char *)((uintptr_t)fault_address & ~(uintptr_t)(ps - 1));
	area_hits++;
	return mprotect(page, ps, PROT_READ | PROT_WRITE) == 0;
}

static int other_global_handler(void *fault_address, int serious)
{
	return sigsegv_dispatch(&other_dispatcher, fault_address);
}

static void other_user_install(void)
{
	area_len = 4 * page_size();
	area = mmap(NULL, area_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	sigsegv_init(&other_dispatcher);
	sigsegv_register(&other_dispatcher, area, area_len, area_handler, NULL);
	sigsegv_install_handler(other_global_handler);
}

static void touch_area_fn(void *arg)
{
	*(volatile char *)(area + 2 * page_size()) = 2;
}

/* A fault in nobody's area: libsigsegv's default, death by SIGSEGV. */
static int stray_fault(void *arg)
{
	char *p = mmap(NULL, page_size(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	valgrind_errors_off();
	*(volatile char *)p = 1;
	return 100;
}

static int area_faults_reach_other_user(void)
{
	CHECK(area != MAP_FAILED);
	int before = area_hits;
	valgrind_errors_off();	    /* faults on the area's PROT_NONE pages, on purpose */
	*(volatile char *)area = 1; /* from the thread's own stack */
	CHECK(area_hits == before + 1);
	dynstack_coro_t *c = make_coro(touch_area_fn, NULL, 64 << 10, "area-toucher", NULL);
	CHECK(c != NULL);
	CHECK(dynstack_coro_resume(c) == 0); /* from a coroutine, on the sync stack */
	valgrind_errors_on();
	CHECK(area_hits == before + 2);
	CHECK(area[2 * page_size()] == 2);
	CHECK(dynstack_coro_destroy(c) == 0);
	CHECK(died_by(fate(stray_fault, NULL), SIGSEGV));
	return 0;
}

/* The other user was there first: we do not take libsigsegv's global handler
 * from it, but go in front of libsigsegv's handler and pass it the rest. */
static int area_before_child(void)
{
	other_user_install();
	CHECK(dynstack_init(NULL) == 0);
	struct sigaction sa = segv_action();
	CHECK(!is_libsigsegv_entry(&sa) && (sa.sa_flags & SA_ONSTACK));
	CHECK(grow_coros() == 0);
	CHECK(area_faults_reach_other_user() == 0);
	CHECK(area_hits == 2);
	fprintf(stderr, "area-before-child-done\n");
	return 0;
}

static void test_area_of_earlier_user(void **state)
{
	expect_self("--area-before", 0);
	expect_in_err("area-before-child-done");
}

/* The other user came after us: its sigsegv_install_handler replaced ours
 * (libsigsegv keeps one global handler), and stacks no longer grow until
 * dynstack_init runs again, which goes in front of libsigsegv's handler. */
static int area_after_child(void)
{
	CHECK(dynstack_init(NULL) == 0);
	CHECK(grow_coros() == 0);
	other_user_install();
	CHECK(is_libsigsegv_entry((struct sigaction[]){ segv_action() }));
	if (!stacks_whole()) /* no growth fault to lose there */
		CHECK(died_by(fate(grow_in_child, NULL), SIGSEGV));
	CHECK(dynstack_init(NULL) == 0);
	CHECK(!is_libsigsegv_entry((struct sigaction[]){ segv_action() }));
	CHECK(grow_coros() == 0);
	CHECK(area_faults_reach_other_user() == 0);
	fprintf(stderr, "area-after-child-done\n");
	return 0;
}

static void test_area_of_later_user(void **state)
{
	expect_self("--area-after", 0);
	expect_in_err("area-after-child-done");
}

/* ---- a sent SIGSEGV goes to the previous handler, as without libsigsegv;
 * declined, libsigsegv would have reset SIGSEGV to SIG_DFL for good. */

static volatile int sent_calls, sent_code;

static void sent_handler(int sig, siginfo_t *si, void *uctx)
{
	sent_calls++;
	sent_code = si->si_code;
}

static int sent_child(void)
{
	struct sigaction act;

	CHECK(dynstack_init(NULL) == 0);
	memset(&act, 0, sizeof(act));
	act.sa_sigaction = sent_handler;
	act.sa_flags = SA_SIGINFO;
	sigemptyset(&act.sa_mask);
	CHECK(dynstack_sigaction(SIGSEGV, &act, NULL) == 0);
	struct sigaction before = segv_action();
	CHECK(kill(getpid(), SIGSEGV) == 0);
	CHECK(sent_calls == 1 && sent_code == SI_USER);
	CHECK(segv_action().sa_sigaction == before.sa_sigaction);
	CHECK(grow_coros() == 0);
	fprintf(stderr, "sent-child-done\n");
	return 0;
}

static void test_sent_sigsegv(void **state)
{
	expect_self("--sent", 0);
	expect_in_err("sent-child-done");
}

/* ---- why our entry carries SA_ONSTACK: libsigsegv's own handler lacks it
 * while no stack-overflow handler is installed. Installing and removing one
 * leaves libsigsegv's handler in front of ours, without SA_ONSTACK: a growth
 * fault on a green stack then kills, since the kernel cannot write the
 * signal frame below the stack pointer. dynstack_init puts ours back. */
static int no_onstack_child(void)
{
	CHECK(dynstack_init(NULL) == 0);
	CHECK(stackoverflow_install_handler(so_handler, so_stack, sizeof(so_stack)) == 0);
	stackoverflow_deinstall_handler();
	struct sigaction sa = segv_action();
	CHECK(is_libsigsegv_entry(&sa) && !(sa.sa_flags & SA_ONSTACK));
	CHECK(dynstack_signals_check(-1) == 1);
	if (!stacks_whole()) /* no growth fault to lose there */
		CHECK(died_by(fate(grow_in_child, NULL), SIGSEGV));
	CHECK(dynstack_init(NULL) == 0);
	CHECK(segv_action().sa_flags & SA_ONSTACK);
	CHECK(dynstack_signals_check(-1) == 0);
	CHECK(grow_coros() == 0);
	fprintf(stderr, "no-onstack-child-done\n");
	return 0;
}

static void test_onstack_needed(void **state)
{
	expect_self("--no-onstack", 0);
	expect_in_err("no-onstack-child-done");
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "--grow") == 0)
			return grow_child();
		if (strcmp(argv[1], "--after-so") == 0)
			return after_so_child();
		if (strcmp(argv[1], "--overflow") == 0)
			return overflow_modes_child(false);
		if (strcmp(argv[1], "--overflow-after-so") == 0)
			return overflow_modes_child(true);
		if (strcmp(argv[1], "--area-before") == 0)
			return area_before_child();
		if (strcmp(argv[1], "--area-after") == 0)
			return area_after_child();
		if (strcmp(argv[1], "--sent") == 0)
			return sent_child();
		if (strcmp(argv[1], "--no-onstack") == 0)
			return no_onstack_child();
		return 64;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_grow_through_front_end),
		cmocka_unit_test(test_grow_after_stackoverflow_handler),
		cmocka_unit_test(test_overflow_reported),
		cmocka_unit_test(test_overflow_reported_after_stackoverflow_handler),
		cmocka_unit_test(test_area_of_earlier_user),
		cmocka_unit_test(test_area_of_later_user),
		cmocka_unit_test(test_sent_sigsegv),
		cmocka_unit_test(test_onstack_needed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

#else /* !DS_HAVE_LIBSIGSEGV */

int main(void)
{
	printf("test_libsigsegv: skipped, built without -Dlibsigsegv=enabled\n");
	return 77; /* meson: skipped */
}

#endif
