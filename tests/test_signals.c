/* Tests of asynchronous signals off green stacks (src/fault.c): the misuse
 * of dynstack_sigaction, SA_ONSTACK forced on, SIGSEGV handlers chained
 * behind ours, dynstack_signals_check, and a 10 kHz timer storm over
 * coroutines that grow and trim their stacks. Coroutines and handlers never
 * assert: they count what they see, the test body checks the counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "internal.h"

static char child_err[4096];

static void noop_handler(int sig)
{
	(void)sig;
}

static struct sigaction plain_action(void (*fn)(int))
{
	struct sigaction act;

	memset(&act, 0, sizeof(act));
	act.sa_handler = fn;
	sigemptyset(&act.sa_mask);
	return act;
}

/* ---- misuse */

static void test_sigaction_misuse(void **state)
{
	struct sigaction act = plain_action(noop_handler), old;
	const int bad[] = { 0, -1, NSIG, NSIG + 1, SIGKILL, SIGSTOP };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errno = 12345;
		assert_int_equal(dynstack_sigaction(bad[i], &act, NULL), -EINVAL);
		assert_int_equal(dynstack_sigaction(bad[i], NULL, &old), -EINVAL);
		assert_int_equal(errno, 12345);
	}
}

/* ---- SA_ONSTACK forced on */

static volatile sig_atomic_t usr2_calls, usr2_on_sync;

static void usr2_handler(int sig)
{
	volatile char probe;
	uintptr_t sp = (uintptr_t)&probe;

	(void)sig;
	usr2_calls++;
	if (sp >= ds_sync_lo && sp < ds_sync_hi)
		usr2_on_sync++;
}

static void raise_usr2_fn(void *arg)
{
	(void)arg;
	raise(SIGUSR2);
}

static void test_onstack_forced(void **state)
{
	TAKE_SIGSEGV();
	struct sigaction act = plain_action(usr2_handler), cur, old;

	act.sa_flags = SA_RESTART;
	errno = 777;
	assert_int_equal(dynstack_sigaction(SIGUSR2, &act, NULL), 0);
	assert_int_equal(errno, 777);
	assert_int_equal(sigaction(SIGUSR2, NULL, &cur), 0);
	assert_true(cur.sa_flags & SA_ONSTACK);
	assert_true(cur.sa_flags & SA_RESTART);
	assert_ptr_equal(cur.sa_handler, usr2_handler);

	/* Raised on a green stack, it runs on the thread's sync stack. */
	dynstack_coro_t *c = NULL;
	assert_int_equal(dynstack_coro_create(&c, raise_usr2_fn, NULL, NULL), 0);
	usr2_calls = usr2_on_sync = 0;
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(usr2_calls, 1);
	assert_int_equal(usr2_on_sync, 1);
	assert_int_equal(dynstack_coro_destroy(c), 0);

	/* SIG_IGN and SIG_DFL keep their flags; oldact is the one before. */
	struct sigaction ign = plain_action(SIG_IGN);
	assert_int_equal(dynstack_sigaction(SIGUSR2, &ign, &old), 0);
	assert_ptr_equal(old.sa_handler, usr2_handler);
	assert_true(old.sa_flags & SA_ONSTACK);
	assert_int_equal(sigaction(SIGUSR2, NULL, &cur), 0);
	assert_ptr_equal(cur.sa_handler, SIG_IGN);
	assert_false(cur.sa_flags & SA_ONSTACK);

	struct sigaction dfl = plain_action(SIG_DFL);
	assert_int_equal(dynstack_sigaction(SIGUSR2, &dfl, &old), 0);
	assert_ptr_equal(old.sa_handler, SIG_IGN);
	assert_int_equal(sigaction(SIGUSR2, NULL, &cur), 0);
	assert_ptr_equal(cur.sa_handler, SIG_DFL);
	assert_false(cur.sa_flags & SA_ONSTACK);
}

/* ---- SIGSEGV through dynstack_sigaction */

static void *foreign_page;
static volatile void *foreign_addr;
static volatile sig_atomic_t foreign_calls;

static void foreign_handler(int sig, siginfo_t *si, void *uctx)
{
	(void)sig;
	(void)uctx;
	foreign_calls++;
	foreign_addr = si->si_addr;
	/* Make the page accessible so that the access, re-executed, succeeds. */
	mprotect(foreign_page, page_size(), PROT_READ | PROT_WRITE);
}

static void grow_fn(void *arg)
{
	*(unsigned *)arg =
		touch_down(dynstack_top(dynstack_coro_stack(dynstack_coro_current())), 32 << 10);
}

static int segv_chain_child(void *arg)
{
	(void)arg;
	struct sigaction act, cur;

	CHECK(dynstack_init(NULL) == 0);
	memset(&act, 0, sizeof(act));
	act.sa_sigaction = foreign_handler;
	act.sa_flags = SA_SIGINFO;
	sigemptyset(&act.sa_mask);
	CHECK(dynstack_sigaction(SIGSEGV, &act, NULL) == 0);

	/* Ours is still the installed handler... */
	CHECK(sigaction(SIGSEGV, NULL, &cur) == 0);
	CHECK((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction != foreign_handler);
	CHECK(cur.sa_flags & SA_ONSTACK);

	/* ...so a growth fault still commits, without the new handler. */
	dynstack_stats_t before = stats_now();
	dynstack_coro_t *c = NULL;
	unsigned levels = 0;
	dynstack_attr_t attr;
	CHECK(dynstack_attr_init(&attr) == 0);
	attr.size = 64 << 10;
	CHECK(dynstack_coro_create(&c, grow_fn, &levels, &attr) == 0);
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(levels > 0);
	CHECK(dynstack_committed(dynstack_coro_stack(c)) >= (32 << 10));
	CHECK(stats_now().nr_dynamic_stacks_faults > before.nr_dynamic_stacks_faults ||
	      stacks_whole());
	CHECK(foreign_calls == 0);
	CHECK(dynstack_coro_destroy(c) == 0);

	/* A fault on a page that is not ours reaches the new handler. */
	foreign_page = mmap(NULL, page_size(), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(foreign_page != MAP_FAILED);
	volatile char *p = (char *)foreign_page + 123;
	valgrind_errors_off(); /* the fault is meant */
	*p = 42;
	valgrind_errors_on();
	CHECK(foreign_calls == 1);
	CHECK(foreign_addr == (void *)p);
	CHECK(*p == 42);
	CHECK(stats_now().nr_dynamic_stacks_foreign == before.nr_dynamic_stacks_foreign + 1);

	/* oldact gives it back. */
	struct sigaction old;
	CHECK(dynstack_sigaction(SIGSEGV, NULL, &old) == 0);
	CHECK((old.sa_flags & SA_SIGINFO) && old.sa_sigaction == foreign_handler);
	return 0;
}

static void test_sigsegv_chained(void **state)
{
	TAKE_SIGSEGV();
	expect_child_ok(segv_chain_child, NULL);
}

/* ---- dynstack_signals_check */

static void test_signals_check(void **state)
{
	TAKE_SIGSEGV();
	struct sigaction act = plain_action(noop_handler), saved;
	int pfd[2];
	char out[4096];

	assert_int_equal(sigaction(SIGUSR1, NULL, &saved), 0);
	struct sigaction dfl = plain_action(SIG_DFL);
	assert_int_equal(sigaction(SIGUSR1, &dfl, NULL), 0);
	int base = dynstack_signals_check(-1);
	assert_true(base >= 0);
	/* SIG_IGN with SA_SIGINFO is no handler: the kernel ignores the signal
	 * (Valgrind shows its SIGRTMAX so; it was counted). */
	struct sigaction ign = plain_action(SIG_IGN);
	ign.sa_flags = SA_SIGINFO;
	assert_int_equal(sigaction(SIGUSR1, &ign, NULL), 0);
	assert_int_equal(dynstack_signals_check(-1), base);

	assert_int_equal(sigaction(SIGUSR1, &act, NULL), 0);
	assert_int_equal(pipe(pfd), 0);
	assert_int_equal(dynstack_signals_check(pfd[1]), base + 1);
	close(pfd[1]);
	ssize_t n = read(pfd[0], out, sizeof(out) - 1);
	close(pfd[0]);
	assert_true(n > 0);
	out[n] = '\0';
	char want[64];
	snprintf(want, sizeof(want), "signal %d (USR1)", SIGUSR1);
	if (!contains(out, want))
		fail_msg("no \"%s\" in:\n%s", want, out);

	assert_int_equal(dynstack_sigaction(SIGUSR1, &act, NULL), 0);
	assert_int_equal(dynstack_signals_check(-1), base);
	assert_int_equal(sigaction(SIGUSR1, &saved, NULL), 0);
}

/* ---- the storm: a 10 kHz timer over 200 coroutines that grow and trim */

#define NWORKERS 200
#define STACK_SIZE (64 << 10)
#define MAX_DEPTH (48 << 10)
#define SYNC_PATTERN 0xa5

struct worker {
	dynstack_coro_t *c;
	uint64_t rng;
	uint64_t descents;
	uint64_t corrupt; /* frame words that changed while the frame was live */
};

static struct {
	struct worker w[NWORKERS];
	volatile sig_atomic_t stop;
	volatile sig_atomic_t running; /* index of the running worker, or -1 */
	volatile sig_atomic_t in_body; /* the running worker is outside the library */
	int nested;		       /* the handler touches suspended stacks */
	_Atomic uint64_t deliveries, off_sync, touches, nested_commits;
} storm;

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void storm_yield(void)
{
	storm.in_body = 0;
	dynstack_coro_yield();
	storm.in_body = 1;
}

/* Write a checksummed frame, go deeper until target bytes below top, yield
 * at the bottom (and now and then on the way), check the frame on the way up. */
static void descend(struct worker *w, uintptr_t top, size_t target, unsigned level)
{
	volatile uint64_t frame[48];
	uint64_t seed = mix(w->rng ^ ((uint64_t)level << 40));

	for (unsigned i = 0; i < 48; i++)
		frame[i] = mix(seed + i);
	if (top - (uintptr_t)frame < target)
		descend(w, top, target, level + 1);
	else
		storm_yield();
	if (level % 32 == 31)
		storm_yield();
	for (unsigned i = 0; i < 48; i++)
		if (frame[i] != mix(seed + i))
			w->corrupt++;
}

static void worker_fn(void *arg)
{
	struct worker *w = arg;
	uintptr_t top = (uintptr_t)dynstack_top(dynstack_coro_stack(w->c));

	storm.in_body = 1;
	while (!storm.stop) {
		size_t target = 1024 + next_rand(&w->rng) % (MAX_DEPTH - 1024);
		descend(w, top, target, 0);
		w->descents++;
		next_rand(&w->rng);
		storm_yield(); /* a trim point with a shallow stack pointer */
	}
	storm.in_body = 0;
}

/* Write a byte below the committed edge of a suspended coroutine's stack:
 * the page is free for that coroutine's future growth (its frames are all
 * above the edge), and the write is a commit fault nested in this handler. */
static void touch_suspended_sigsafe(uint64_t n)
{
	int idx = (int)(n % NWORKERS);
	struct worker *w = &storm.w[idx];

	if (idx == storm.running || !w->c || dynstack_coro_status(w->c) != DYNSTACK_CORO_SUSPENDED)
		return;
	dynstack_t *s = dynstack_coro_stack(w->c);
	size_t ps = ds_page_size, committed = dynstack_committed(s);
	size_t depth = committed + ps * (1 + n % 3);
	if (depth > dynstack_size(s))
		return;
	*(volatile char *)((uintptr_t)dynstack_top(s) - depth) = 1;
	atomic_fetch_add(&storm.touches, 1);
	if (dynstack_committed(s) >= depth)
		atomic_fetch_add(&storm.nested_commits, 1);
}

static void on_alarm(int sig)
{
	volatile char probe;
	uintptr_t sp = (uintptr_t)&probe;
	int saved_errno = errno;

	(void)sig;
	uint64_t n = atomic_fetch_add(&storm.deliveries, 1);
	if (sp < ds_sync_lo || sp >= ds_sync_hi)
		atomic_fetch_add(&storm.off_sync, 1);
	if (storm.nested && storm.in_body)
		touch_suspended_sigsafe(n);
	errno = saved_errno;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void set_timer(long usec)
{
	struct itimerval it = { .it_interval = { 0, usec }, .it_value = { 0, usec } };

	assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
}

static void run_storm(int nested)
{
	TAKE_SIGSEGV();
	assert_int_equal(dynstack_thread_init(), 0);
	assert_true(ds_sync_hi - ds_sync_lo >= DYNSTACK_MIN_SYNC_STACK);

	memset(&storm, 0, sizeof(storm));
	storm.running = -1;
	storm.nested = nested;

	dynstack_attr_t attr;
	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = STACK_SIZE;
	attr.policy = "trim=yield:1";
	dynstack_stats_t before = stats_now();
	for (int i = 0; i < NWORKERS; i++) {
		storm.w[i].rng = mix(i + 1) | 1;
		assert_int_equal(dynstack_coro_create(&storm.w[i].c, worker_fn, &storm.w[i], &attr),
				 0);
	}

	/* The sync stack is idle outside handlers: fill it, and after the storm
	 * the lowest byte changed is the high-water mark of the handlers. (To
	 * Memcheck it is a stack whose frames are dead: not to be checked.) */
	valgrind_errors_off();
	memset((void *)ds_sync_lo, SYNC_PATTERN, ds_sync_hi - ds_sync_lo);
	valgrind_errors_on();

	struct sigaction act = plain_action(on_alarm), old;
	act.sa_flags = SA_RESTART;
	assert_int_equal(dynstack_sigaction(SIGALRM, &act, &old), 0);
	set_timer(100);

	/* Run for at least 1.5 s and 2000 deliveries; give up after 10 s (then
	 * the delivery check below fails), 100 s under Valgrind, which delivers
	 * a few hundred signals a second. */
	double start = now_s(), limit = under_valgrind() ? 100.0 : 10.0;
	uint64_t rounds = 0;
	while (now_s() - start < limit &&
	       (now_s() - start < 1.5 || atomic_load(&storm.deliveries) < 2000)) {
		for (int i = 0; i < NWORKERS; i++) {
			storm.running = i;
			int rc = dynstack_coro_resume(storm.w[i].c);
			storm.running = -1;
			if (rc)
				fail_msg("resume of worker %d: %s", i, dynstack_strerror(rc));
		}
		if (++rounds % 4 == 0)
			assert_int_equal(dynstack_flush(), 0);
	}
	/* A tick the timer sent before it stopped may still be pending (Valgrind
	 * delivers asynchronous signals late, at its next poll): it must not
	 * meet the default action once the handler is gone. */
	sigset_t alrm, mask;
	struct timespec now_or_never = { 0, 0 };
	sigemptyset(&alrm);
	sigaddset(&alrm, SIGALRM);
	assert_int_equal(pthread_sigmask(SIG_BLOCK, &alrm, &mask), 0);
	set_timer(0);
	while (sigtimedwait(&alrm, NULL, &now_or_never) == SIGALRM)
		; /* dropped: it came after the last round */
	assert_int_equal(dynstack_sigaction(SIGALRM, &old, NULL), 0);
	assert_int_equal(pthread_sigmask(SIG_SETMASK, &mask, NULL), 0);

	/* Every committed page is accounted for: the gauge is the sum. */
	assert_int_equal(dynstack_flush(), 0);
	dynstack_stats_t after = stats_now();
	uint64_t pages = 0;
	for (int i = 0; i < NWORKERS; i++)
		pages += dynstack_committed(dynstack_coro_stack(storm.w[i].c)) / after.page_size;
	assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages, pages);
	if (!stacks_whole()) { /* otherwise no growth and no trim, only the signals */
		assert_true(after.nr_dynamic_stacks_faults > before.nr_dynamic_stacks_faults);
		assert_true(after.nr_dynamic_stacks_trimmed > before.nr_dynamic_stacks_trimmed);
	}
	assert_int_equal(after.nr_dynamic_stacks_overflows, before.nr_dynamic_stacks_overflows);

	/* Stop: each worker climbs back up, checking its frames, and returns. */
	storm.stop = 1;
	uint64_t corrupt = 0, descents = 0;
	for (int i = 0; i < NWORKERS; i++) {
		for (int guard = 0; guard < 1000; guard++) {
			if (dynstack_coro_status(storm.w[i].c) == DYNSTACK_CORO_DEAD)
				break;
			assert_int_equal(dynstack_coro_resume(storm.w[i].c), 0);
		}
		assert_int_equal(dynstack_coro_status(storm.w[i].c), DYNSTACK_CORO_DEAD);
		corrupt += storm.w[i].corrupt;
		descents += storm.w[i].descents;
		assert_int_equal(dynstack_coro_destroy(storm.w[i].c), 0);
	}

	uintptr_t low = ds_sync_lo;
	valgrind_errors_off();
	while (low < ds_sync_hi && *(volatile unsigned char *)low == SYNC_PATTERN)
		low++;
	valgrind_errors_on();
	size_t used = ds_sync_hi - low;
	print_message("storm%s: %llu deliveries, %llu rounds, %llu descents, %llu faults, "
		      "%llu pages trimmed, %llu nested touches (%llu committed), sync-stack "
		      "high water %zu of %zu bytes\n",
		      nested ? " (nested)" : "", (unsigned long long)storm.deliveries,
		      (unsigned long long)rounds, (unsigned long long)descents,
		      (unsigned long long)(after.nr_dynamic_stacks_faults -
					   before.nr_dynamic_stacks_faults),
		      (unsigned long long)(after.nr_dynamic_stacks_trimmed -
					   before.nr_dynamic_stacks_trimmed),
		      (unsigned long long)storm.touches, (unsigned long long)storm.nested_commits,
		      used, (size_t)(ds_sync_hi - ds_sync_lo));

	assert_int_equal(corrupt, 0);
	assert_true(descents >= NWORKERS);
	assert_true(atomic_load(&storm.deliveries) >= 2000);
	/* TSan's own handler takes the signal on the sync stack and runs ours
	 * later, at a point of its choosing, on whatever stack is live then. */
	if (!under_tsan())
		assert_int_equal(atomic_load(&storm.off_sync), 0);
	assert_true(used > 0); /* the handlers did run there */
	assert_true(used < DYNSTACK_MIN_SYNC_STACK - DS_SYNC_HEADROOM);
	if (nested) {
		assert_true(storm.touches > 0);
		assert_int_equal(storm.nested_commits, storm.touches);
	}
}

static void test_storm(void **state)
{
	run_storm(0);
}

static void test_storm_nested_fault(void **state)
{
	SKIP_IF_WHOLE(); /* the handler's touches are growth faults */
	run_storm(1);
}

/* A handler installed without SA_ONSTACK: the kernel must write its frame on
 * the green stack, and when that page is not committed it cannot deliver the
 * signal at all. The library names the cause and dies, instead of a bare
 * SIGSEGV or a lost signal. */
static volatile int plain_hits;

static void plain_handler(int sig)
{
	volatile char buf[2048];
	memset((char *)buf, sig, sizeof(buf));
	plain_hits++;
}

/* Go down the coroutine's stack until fewer than 1 KiB are committed below
 * the frame, then send SIGALRM to this thread with a raw tgkill: the kernel
 * delivers it on return from the syscall, on this stack (no SA_ONSTACK), and
 * the frame (siginfo, ucontext and the FPU state, plus the 128-byte red zone:
 * more than 1 KiB on any x86-64) cannot be written there. Each level checks
 * before the next one is entered, and a level's frame (under 1 KiB, also
 * with ASan's redzones) never reaches the edge: no page is committed on the
 * way down. Deterministic: no timer, no race with the scheduler. */
static int descend_and_signal(dynstack_t *s, int depth)
{
	volatile char pad[64];
	uintptr_t edge = (uintptr_t)dynstack_top(s) - dynstack_committed(s);
	uintptr_t sp = (uintptr_t)__builtin_frame_address(0);

	for (size_t i = 0; i < sizeof(pad); i++) /* not memset: ASan's has a 2 KiB frame */
		pad[i] = (char)depth;
	if (sp - edge < 1024) {
		syscall(SYS_tgkill, syscall(SYS_getpid), syscall(SYS_gettid), SIGALRM);
		return 3; /* delivered after all: not the case under test */
	}
	return descend_and_signal(s, depth + 1) + pad[0];
}

static void plain_co(void *arg)
{
	*(int *)arg = descend_and_signal(dynstack_coro_stack(dynstack_coro_current()), 0);
}

static int no_onstack_child(void *arg)
{
	dynstack_coro_t *c;
	struct sigaction sa;
	int rc = 0;

	if (dynstack_init(NULL)) /* ours back in front of CMocka's inherited handler */
		return 2;
	if (dynstack_coro_create(&c, plain_co, &rc, NULL))
		return 2;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = plain_handler;
	sigaction(SIGALRM, &sa, NULL); /* no SA_ONSTACK: the mistake under test */
	/* Bind syscall() now: a first call through the PLT runs the dynamic
	 * linker's resolver, whose frame (about 1 KiB) would commit a page. */
	if (syscall(SYS_getpid) != getpid())
		return 2;
	dynstack_coro_resume(c);
	return 3 + rc; /* should have died in the coroutine */
}

static void test_handler_without_onstack_reported(void **state)
{
	SKIP_IF_WHOLE(); /* it needs an uncommitted page below a green stack pointer */
	expect_child_sigsegv(no_onstack_child, NULL);
	assert_non_null(strstr(child_err, "lacks SA_ONSTACK"));
	assert_non_null(strstr(child_err, "dynstack_sigaction"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sigaction_misuse),
		cmocka_unit_test(test_onstack_forced),
		cmocka_unit_test(test_sigsegv_chained),
		cmocka_unit_test(test_signals_check),
		cmocka_unit_test(test_storm),
		cmocka_unit_test(test_storm_nested_fault),
		cmocka_unit_test(test_handler_without_onstack_reported),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
