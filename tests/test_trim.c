/* Tests of trims (src/cache.c, the trim points of src/coro.c): pages below a suspended
 * coroutine's stack pointer minus the margin are really given back (mincore and
 * process_vm_readv say so, on both backends) once the hysteresis allows, and never while the
 * stack may run on them: a resume cancels a queued trim, on any thread, and a destroy makes a
 * stale entry harmless. Decommits are batched per thread and flushed by dynstack_flush, a full
 * queue and thread exit. Runs with the stack cache off (tests/meson.build). Coroutines never
 * assert (a CMocka failure longjmps off their stack): they record, the test body checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "internal.h"
#include "policy.h"
#include "trace.h"

#define KIB ((size_t)1024)
#define FRAME 1024 /* bytes of checksummed data in each frame of a held recursion */

static char child_err[8192];

/* ---- a scripted coroutine: the test sets j->cmd, resumes, and the coroutine yields once */

enum cmd {
	CMD_RUN,  /* go down to j->deep (if not 0) and back, then yield near the top */
	CMD_HOLD, /* recurse to j->hold with checksummed frames and yield there, going down to
		   * j->deep first at each resume, until cmd changes; then unwind, checking */
	CMD_EXIT, /* return from the coroutine's function */
};

struct job {
	volatile enum cmd cmd;
	size_t deep, hold;
	int ok;	      /* 0 once a frame found its data changed */
	uintptr_t sp; /* a stack address just above the last yield's frame */
};

static unsigned char pattern(unsigned level, size_t i)
{
	return (unsigned char)(level * 131u + i * 7u + 3u);
}

/* Out of line, so that its frame sits between the caller's data and the yield's frame: the
 * library's trim point is below j->sp by at most a few dozen bytes. */
static __attribute__((noinline)) void yield_here(struct job *j)
{
	j->sp = (uintptr_t)__builtin_frame_address(0);
	dynstack_coro_yield();
}

static void go_deep(struct job *j, const char *top)
{
	if (j->deep && !touch_down(top, j->deep))
		j->ok = 0;
}

static __attribute__((noinline)) void hold_level(struct job *j, const char *top, unsigned level)
{
	volatile unsigned char buf[FRAME];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = pattern(level, i);
	if ((uintptr_t)buf > (uintptr_t)top - j->hold) {
		hold_level(j, top, level + 1);
	} else {
		while (j->cmd == CMD_HOLD) {
			go_deep(j, top);
			yield_here(j);
		}
	}
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != pattern(level, i))
			j->ok = 0;
}

static void script(void *arg)
{
	struct job *j = arg;
	const char *top = dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	volatile unsigned char mine[FRAME];

	for (size_t i = 0; i < sizeof(mine); i++)
		mine[i] = pattern(1000, i);
	for (;;) {
		enum cmd c = j->cmd;
		if (c == CMD_EXIT)
			break;
		if (c == CMD_HOLD) {
			hold_level(j, top, 0);
			continue; /* held until the next command: do it now */
		}
		go_deep(j, top);
		yield_here(j);
	}
	for (size_t i = 0; i < sizeof(mine); i++)
		if (mine[i] != pattern(1000, i))
			j->ok = 0;
}

static dynstack_coro_t *job_new(struct job *j, const char *policy, size_t size, size_t initial)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c = NULL;

	memset(j, 0, sizeof(*j));
	j->ok = 1;
	dynstack_attr_init(&attr);
	attr.size = size;
	attr.initial = initial;
	attr.policy = policy;
	attr.name = "trimmed";
	assert_int_equal(dynstack_coro_create(&c, script, j, &attr), 0);
	return c;
}

/* Run one step of the script: cmd, going down to deep first (0: not at all). */
static void step(dynstack_coro_t *c, struct job *j, enum cmd cmd, size_t deep)
{
	j->cmd = cmd;
	j->deep = deep;
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c),
			 cmd == CMD_EXIT ? DYNSTACK_CORO_DEAD : DYNSTACK_CORO_SUSPENDED);
}

static void finish(dynstack_coro_t *c, struct job *j)
{
	step(c, j, CMD_EXIT, 0);
	assert_true(j->ok);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

static uintptr_t edge_of(const dynstack_t *s)
{
	return (uintptr_t)dynstack_top(s) - dynstack_committed(s);
}

static uintptr_t lo_of(const dynstack_t *s)
{
	return (uintptr_t)dynstack_top(s) - dynstack_size(s);
}

static uintptr_t page_down(uintptr_t p)
{
	return p & ~(uintptr_t)(page_size() - 1);
}

static bool pending(const dynstack_t *s)
{
	return (atomic_load(&s->trim_state) & 3) == DS_TRIM_PENDING;
}

/* The kernel's view of a stack: nothing resident or accessible below its edge, all of
 * [edge, top) accessible. */
static void assert_kernel_view(const dynstack_t *s)
{
	const char *lo = (const char *)lo_of(s), *edge = (const char *)edge_of(s);
	const char *top = dynstack_top(s);

	if (edge > lo) {
		size_t res = count_resident(lo, edge), acc = count_accessible(lo, edge);
		if (res || acc)
			fail_msg("below the edge: %zu pages resident, %zu accessible", res, acc);
	}
	assert_int_equal(count_accessible(edge, top), (size_t)(top - edge) / page_size());
}

/* The stack was trimmed at the yield whose frame is just below sp: what is left reaches down
 * to sp minus margin, and at most one page (and the yield's own frame) further. */
static void assert_trimmed_at(const dynstack_t *s, uintptr_t sp, size_t margin)
{
	uintptr_t edge = edge_of(s);

	if (edge > sp - margin || edge + page_size() + 256 <= sp - margin)
		fail_msg("edge %#lx: expected just below sp %#lx - margin %zu = %#lx",
			 (unsigned long)edge, (unsigned long)sp, margin,
			 (unsigned long)(sp - margin));
	assert_kernel_view(s);
}

/* Counter deltas of the trim machinery. */
struct delta {
	int64_t trimmed, calls, mistrims, pages, faults;
};

static struct delta since(const dynstack_stats_t *a)
{
	dynstack_stats_t b = stats_now();
	return (struct delta){
		.trimmed = (int64_t)(b.nr_dynamic_stacks_trimmed - a->nr_dynamic_stacks_trimmed),
		.calls =
			(int64_t)(b.nr_dynamic_stacks_trim_calls - a->nr_dynamic_stacks_trim_calls),
		.mistrims = (int64_t)(b.nr_dynamic_stacks_mistrims - a->nr_dynamic_stacks_mistrims),
		.pages = (int64_t)(b.nr_dynamic_stacks_pages - a->nr_dynamic_stacks_pages),
		.faults = (int64_t)(b.nr_dynamic_stacks_faults - a->nr_dynamic_stacks_faults),
	};
}

/* Yield n times without growth, flushing after each, and check that nothing was trimmed. */
static void idle_yields_keep(dynstack_coro_t *c, struct job *j, unsigned n)
{
	dynstack_t *s = dynstack_coro_stack(c);
	size_t committed = dynstack_committed(s);
	dynstack_stats_t st = stats_now();

	for (unsigned i = 0; i < n; i++) {
		step(c, j, j->cmd, 0); /* where it is: near the top, or held */
		if (pending(s))
			fail_msg("a trim was queued at idle yield %u of %u", i + 1, n);
		assert_int_equal(dynstack_flush(), 0);
		assert_int_equal(dynstack_committed(s), committed);
	}
	assert_int_equal(since(&st).calls, 0);
}

/* One idle yield that must queue a trim, and the flush that does it. */
static void idle_yield_trims(dynstack_coro_t *c, struct job *j, size_t margin)
{
	dynstack_t *s = dynstack_coro_stack(c);
	size_t before = dynstack_committed(s);
	dynstack_stats_t st = stats_now();

	step(c, j, j->cmd, 0);
	assert_true(pending(s));
	assert_int_equal(dynstack_committed(s), before); /* queued, not done */
	assert_int_equal(since(&st).calls, 0);
	assert_int_equal(dynstack_flush(), 0);
	assert_false(pending(s));
	struct delta d = since(&st);
	size_t gone = before - dynstack_committed(s);
	assert_true(gone > 0);
	assert_int_equal(d.calls, 1);
	assert_int_equal(d.trimmed, (int64_t)(gone / page_size()));
	assert_int_equal(d.pages, -(int64_t)(gone / page_size()));
	assert_trimmed_at(s, j->sp, margin);
}

/* ---- trimming */

/* The whole cycle under trim=yield:1: deep, back, a hot yield that keeps, an idle yield that
 * queues, the flush that gives the pages back, and frames above that survive it. */
static void test_trim_gives_pages_back(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:1", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);

	/* Held 8 KiB down, with checksummed frames above; 64 KiB further down and back. */
	j.hold = 8 * KIB;
	dynstack_stats_t st = stats_now();
	step(c, &j, CMD_HOLD, 64 * KIB);
	assert_true(since(&st).faults >= 1);
	assert_true(dynstack_committed(s) >= 64 * KIB);
	uintptr_t keep = j.sp - 4 * KIB;
	size_t resident = count_resident((void *)edge_of(s), (void *)(keep - ps));
	assert_true(resident >= 40 * KIB / ps); /* touched: what a trim must give back */
	/* It grew since the last trim point: hot, nothing queued. */
	assert_false(pending(s));
	assert_int_equal(dynstack_flush(), 0);
	assert_int_equal(since(&st).calls, 0);

	size_t vmas = count_vmas();
	j.deep = 0;
	idle_yield_trims(c, &j, 4 * KIB);
	/* Neither backend adds a mapping to give pages back. */
	assert_int_equal(count_vmas(), vmas);
	assert_true(dynstack_committed(s) <= 8 * KIB + 4 * KIB + 2 * ps);

	/* Back up through the held frames: their data survived. */
	step(c, &j, CMD_RUN, 0);
	assert_true(j.ok);
	finish(c, &j);
}

/* trim=yield:4 waits for exactly four idle trim points after the last growth. */
static void test_idle_count(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:4", 256 * KIB, 0);

	step(c, &j, CMD_RUN, 64 * KIB); /* hot */
	idle_yields_keep(c, &j, 3);
	idle_yield_trims(c, &j, 4 * KIB);
	/* And again from zero: nothing below the margin now, so no count either. */
	idle_yields_keep(c, &j, 8);
	finish(c, &j);
}

/* Growth between trim points resets the count: the stack is hot. */
static void test_growth_resets_count(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:4", 256 * KIB, 0);
	dynstack_stats_t st = stats_now();

	step(c, &j, CMD_RUN, 64 * KIB);
	idle_yields_keep(c, &j, 2);
	/* Deeper than ever: new faults, none in a trimmed range. */
	dynstack_stats_t g = stats_now();
	step(c, &j, CMD_RUN, 96 * KIB);
	assert_true(since(&g).faults >= 1);
	assert_false(pending(dynstack_coro_stack(c)));
	idle_yields_keep(c, &j, 3);
	idle_yield_trims(c, &j, 4 * KIB);
	assert_int_equal(since(&st).mistrims, 0);
	finish(c, &j);
}

/* A fault in the range the last trim gave back is a mis-trim: counted once, and the wait
 * doubles (4, then 8, then 16 idle trim points). */
static void test_mistrim_doubles_wait(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:4", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);

	step(c, &j, CMD_RUN, 64 * KIB);
	idle_yields_keep(c, &j, 3);
	idle_yield_trims(c, &j, 4 * KIB);
	for (unsigned wait = 8; wait <= 16; wait *= 2) {
		dynstack_stats_t st = stats_now();
		step(c, &j, CMD_RUN, 64 * KIB); /* needs the trimmed pages again */
		struct delta d = since(&st);
		assert_true(d.faults >= 1);
		assert_int_equal(d.mistrims, 1);
		assert_int_equal(atomic_load(&s->idle_limit), wait);
		idle_yields_keep(c, &j, wait - 1);
		idle_yield_trims(c, &j, 4 * KIB);
	}
	/* Growth below the trimmed range is no mis-trim. */
	dynstack_stats_t st = stats_now();
	step(c, &j, CMD_RUN, 128 * KIB);
	assert_int_equal(since(&st).mistrims, 1); /* the first fault, in the trimmed range */
	st = stats_now();
	step(c, &j, CMD_RUN, 160 * KIB);
	assert_true(since(&st).faults >= 1);
	assert_int_equal(since(&st).mistrims, 0);
	finish(c, &j);
}

/* The back-off stops at 1024 idle trim points (DS_TRIM_IDLE_MAX, docs/policies.md). */
static void test_mistrim_backoff_is_capped(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:768", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);

	step(c, &j, CMD_RUN, 64 * KIB);
	idle_yields_keep(c, &j, 767);
	idle_yield_trims(c, &j, 4 * KIB);
	step(c, &j, CMD_RUN, 64 * KIB); /* a mis-trim: 768 doubles, up to the cap */
	/* The back-off is capped at DS_TRIM_IDLE_MAX, not doubled past it. */
	assert_int_equal(atomic_load(&s->idle_limit), DS_TRIM_IDLE_MAX);
	idle_yields_keep(c, &j, DS_TRIM_IDLE_MAX - 1);
	idle_yield_trims(c, &j, 4 * KIB);
	finish(c, &j);
}

static void test_trim_off(void **state)
{
	TAKE_SIGSEGV();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=off", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);
	dynstack_stats_t st = stats_now();

	step(c, &j, CMD_RUN, 64 * KIB);
	size_t committed = dynstack_committed(s);
	idle_yields_keep(c, &j, 20);
	step(c, &j, CMD_EXIT, 0);
	assert_int_equal(dynstack_flush(), 0);
	assert_int_equal(dynstack_committed(s), committed);
	assert_int_equal(since(&st).calls, 0);
	assert_true(j.ok);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* margin=SIZE keeps that much committed below the stack pointer. */
static void test_margin(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:1,margin=40k", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);

	j.hold = 16 * KIB;
	step(c, &j, CMD_HOLD, 128 * KIB);
	j.deep = 0;
	idle_yield_trims(c, &j, 40 * KIB);
	/* The 40 KiB below the stack pointer are still there, untouched ones included. */
	assert_true(edge_of(s) <= j.sp - 40 * KIB);
	uintptr_t from = page_down(j.sp - 40 * KIB), to = page_down(j.sp) + page_size();
	assert_int_equal(count_accessible((void *)from, (void *)to), (to - from) / page_size());
	step(c, &j, CMD_RUN, 0);
	finish(c, &j);
}

/* A coroutine's return is a trim point too. */
static void test_exit_is_trim_point(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:1", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);

	step(c, &j, CMD_RUN, 64 * KIB); /* hot */
	dynstack_stats_t st = stats_now();
	step(c, &j, CMD_EXIT, 0);
	assert_true(j.ok);
	assert_true(pending(s));
	assert_int_equal(dynstack_flush(), 0);
	assert_int_equal(since(&st).calls, 1);
	assert_true(dynstack_committed(s) <= 4 * KIB + 2 * page_size() + 4 * KIB);
	assert_kernel_view(s);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* ---- a queued trim and the stack running again */

/* Resumed before the flush, a coroutine cancels its trim: its pages stay committed, it
 * takes no fault on them, and the flush makes no call. */
static void test_resume_cancels(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:2", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);

	step(c, &j, CMD_RUN, 64 * KIB);
	idle_yields_keep(c, &j, 1);
	step(c, &j, CMD_RUN, 0);
	assert_true(pending(s));
	size_t committed = dynstack_committed(s);
	dynstack_stats_t st = stats_now();
	step(c, &j, CMD_RUN, 64 * KIB); /* the same depth again */
	assert_false(pending(s));
	assert_int_equal(since(&st).faults, 0);
	assert_int_equal(dynstack_flush(), 0);
	assert_int_equal(dynstack_committed(s), committed);
	struct delta d = since(&st);
	assert_int_equal(d.calls, 0);
	assert_int_equal(d.trimmed, 0);
	finish(c, &j);
}

/* A coroutine alone on its thread is resumed before any flush, so each queued trim of it is
 * cancelled; the trim after a cancelled one is done at once, with no flush. */
static void lone_fn(void *arg)
{
	volatile int *deep = arg;
	for (;;) {
		if (*deep)
			touch_down(dynstack_top(dynstack_coro_stack(dynstack_coro_current())),
				   64 * KIB);
		dynstack_coro_yield();
	}
}

static void test_lone_coroutine_trimmed_without_flush(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	volatile int deep = 1;
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	dynstack_attr_init(&attr);
	attr.size = 256 * KIB;
	attr.policy = "trim=yield:1";
	assert_int_equal(dynstack_coro_create(&c, lone_fn, (void *)&deep, &attr), 0);
	dynstack_t *s = dynstack_coro_stack(c);
	assert_int_equal(dynstack_coro_resume(c), 0); /* deep: hot, kept */
	assert_true(dynstack_committed(s) >= 64 * KIB);
	dynstack_stats_t st = stats_now();
	deep = 0;
	for (int i = 0; i < 3; i++)
		assert_int_equal(dynstack_coro_resume(c), 0);
	struct delta d = since(&st);
	assert_int_equal(d.calls, 1);
	assert_true(dynstack_committed(s) <= 16 * KIB);
	assert_int_equal(count_accessible((const char *)lo_of(s), (const char *)edge_of(s)), 0);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* The trim queued at the first idle yield must not act once the coroutine has run again and
 * queued a second one from a deeper stack pointer: the flush may only decommit below where
 * the stack now stands. The child dies if held frames are decommitted. */
static int stale_entry_child(void *arg)
{
	struct job j = { .cmd = CMD_RUN, .ok = 1 };
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_attr_init(&attr);
	attr.size = 256 * KIB;
	attr.policy = "trim=yield:1";
	CHECK(dynstack_coro_create(&c, script, &j, &attr) == 0);
	dynstack_t *s = dynstack_coro_stack(c);
	j.deep = 64 * KIB;
	CHECK(dynstack_coro_resume(c) == 0); /* hot */
	j.deep = 0;
	CHECK(dynstack_coro_resume(c) == 0); /* queues a trim below ~8 KiB */
	CHECK(pending(s));
	/* Runs again (the first entry is cancelled), and stops 32 KiB down, above pages that
	 * are still committed: because its last queued trim was cancelled, this trim is done
	 * at once, below ~44 KiB (two pages under the margin), and nothing is queued. The
	 * stale first entry is still in the queue: the flush must leave the stack alone. */
	j.hold = 32 * KIB;
	j.cmd = CMD_HOLD;
	uint64_t faults = atomic_load(&s->faults);
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(atomic_load(&s->faults) == faults);
	CHECK(!pending(s));
	uintptr_t edge = edge_of(s);
	CHECK(edge <= j.sp - 4 * KIB);
	CHECK(dynstack_flush() == 0);
	CHECK(edge_of(s) == edge);
	CHECK(edge_of(s) <= j.sp - 4 * KIB);
	j.cmd = CMD_RUN;
	CHECK(dynstack_coro_resume(c) == 0); /* unwinds through the held frames */
	CHECK(j.ok);
	j.cmd = CMD_EXIT;
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(j.ok);
	return 0;
}

static void test_stale_entry_after_requeue(void **state)
{
	SKIP_IF_WHOLE();
	int status;

	assert_int_equal(
		run_in_child(stale_entry_child, NULL, &status, child_err, sizeof(child_err)), 0);
	/* A cancelled entry must never claim the stack's later queueing. */
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("a stale trim entry acted on a later one: child %s\n%s",
			 describe_status(status), child_err);
}

/* A trim queued on thread A, the coroutine resumed and run deep on thread B (this one), then
 * A flushes: A's entry was cancelled and B's pages are intact. */
struct cross {
	dynstack_coro_t *c;
	struct job *j;
	pthread_barrier_t queued, ran, flushed;
	int rc[3];
};

static void *cross_thread_a(void *arg)
{
	struct cross *x = arg;

	x->j->deep = 64 * KIB;
	x->rc[0] = dynstack_coro_resume(x->c); /* hot */
	x->j->deep = 0;
	x->rc[1] = dynstack_coro_resume(x->c); /* queued on A */
	pthread_barrier_wait(&x->queued);
	pthread_barrier_wait(&x->ran);
	x->rc[2] = dynstack_flush();
	pthread_barrier_wait(&x->flushed);
	return NULL;
}

static void test_cancel_across_threads(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	struct cross x = { .j = &j };
	pthread_t a;

	x.c = job_new(&j, "trim=yield:1", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(x.c);
	pthread_barrier_init(&x.queued, NULL, 2);
	pthread_barrier_init(&x.ran, NULL, 2);
	pthread_barrier_init(&x.flushed, NULL, 2);
	assert_int_equal(pthread_create(&a, NULL, cross_thread_a, &x), 0);
	pthread_barrier_wait(&x.queued);
	assert_true(pending(s));
	dynstack_stats_t st = stats_now();
	/* Held below the deepest point so far (it grows: the yield there queues nothing),
	 * with checksummed frames all the way down. */
	j.hold = 80 * KIB;
	j.deep = 0;
	j.cmd = CMD_HOLD;
	assert_int_equal(dynstack_coro_resume(x.c), 0);
	assert_false(pending(s));
	size_t committed = dynstack_committed(s);
	pthread_barrier_wait(&x.ran);
	pthread_barrier_wait(&x.flushed);
	assert_int_equal(pthread_join(a, NULL), 0);
	assert_int_equal(x.rc[0], 0);
	assert_int_equal(x.rc[1], 0);
	assert_int_equal(x.rc[2], 0);
	assert_int_equal(since(&st).calls, 0);
	assert_int_equal(dynstack_committed(s), committed);
	j.cmd = CMD_RUN;
	assert_int_equal(dynstack_coro_resume(x.c), 0);
	assert_true(j.ok);
	finish(x.c, &j);
	pthread_barrier_destroy(&x.queued);
	pthread_barrier_destroy(&x.ran);
	pthread_barrier_destroy(&x.flushed);
}

/* Destroyed with a trim queued: the entry is dead. A new stack in the same slot keeps its
 * pages through a flush. */
static void test_destroy_with_queued_trim(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	struct job j;
	dynstack_coro_t *c = job_new(&j, "trim=yield:1", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(c);
	void *top = dynstack_top(s);

	step(c, &j, CMD_RUN, 64 * KIB);
	step(c, &j, CMD_RUN, 0);
	assert_true(pending(s));
	assert_int_equal(dynstack_coro_destroy(c), 0);

	dynstack_attr_t attr;
	dynstack_t *n;
	dynstack_attr_init(&attr);
	attr.size = 256 * KIB;
	attr.policy = "trim=yield:1";
	assert_int_equal(dynstack_create(&n, &attr), 0);
	assert_ptr_equal(dynstack_top(n), top); /* the same slot, from the arena's free list */
	char *lo = (char *)top - 64 * KIB;
	touch_pages_down(lo, top);
	for (char *p = lo; p < (char *)top; p += ps)
		p[1] = (char)((size_t)(p - lo) / ps + 5);
	size_t committed = dynstack_committed(n);
	dynstack_stats_t st = stats_now();
	assert_int_equal(dynstack_flush(), 0);
	assert_int_equal(since(&st).calls, 0);
	assert_int_equal(dynstack_committed(n), committed);
	for (char *p = lo; p < (char *)top; p += ps)
		assert_int_equal(p[1], (char)((size_t)(p - lo) / ps + 5));
	assert_int_equal(dynstack_destroy(n), 0);
}

/* A new stack has not grown before its first trim point, whatever the slot's last stack did:
 * a stack created with its pages committed is trimmed at its first idle yield. */
static void test_new_stack_is_not_hot(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	dynstack_attr_t attr;
	dynstack_t *old;
	struct job j;

	/* The slot's previous stack grew and was never at a trim point after that. */
	dynstack_attr_init(&attr);
	attr.size = 256 * KIB;
	assert_int_equal(dynstack_create(&old, &attr), 0);
	void *top = dynstack_top(old);
	touch_pages_down((char *)top - 16 * KIB, top);
	assert_int_equal(dynstack_destroy(old), 0);

	dynstack_coro_t *c = job_new(&j, "trim=yield:1", 256 * KIB, 128 * KIB);
	dynstack_t *s = dynstack_coro_stack(c);
	assert_ptr_equal(dynstack_top(s), top);
	dynstack_stats_t st = stats_now();
	step(c, &j, CMD_RUN, 64 * KIB);
	assert_int_equal(since(&st).faults, 0);
	/* Not hot: the slot's previous stack's growth flag is not inherited. */
	assert_true(pending(s));
	assert_int_equal(dynstack_flush(), 0);
	assert_trimmed_at(s, j.sp, 4 * KIB);
	finish(c, &j);
}

/* ---- batching */

/* Coroutines on 32-page stacks that go 16 pages down and back, each queueing one trim of 14
 * to 16 pages (all but the page or two the margin keeps near the top). */
static int batch_main(void)
{
	enum {
		N = 6
	};
	struct job j[N];
	dynstack_coro_t *c[N];
	dynstack_attr_t attr;
	uint64_t calls_after[N];
	size_t before[N], at_yield[N];

	CHECK(dynstack_init(NULL) == 0);
	dynstack_attr_init(&attr);
	attr.size = 32 * page_size();
	attr.policy = "trim=yield:1";
	dynstack_stats_t st = stats_now();
	for (int i = 0; i < N; i++) {
		memset(&j[i], 0, sizeof(j[i]));
		j[i].ok = 1;
		CHECK(dynstack_coro_create(&c[i], script, &j[i], &attr) == 0);
		j[i].deep = 16 * page_size();
		CHECK(dynstack_coro_resume(c[i]) == 0); /* hot */
		before[i] = dynstack_committed(dynstack_coro_stack(c[i]));
		j[i].deep = 0;
		CHECK(dynstack_coro_resume(c[i]) == 0); /* queued */
		CHECK(pending(dynstack_coro_stack(c[i])));
		calls_after[i] =
			stats_now().nr_dynamic_stacks_trim_calls - st.nr_dynamic_stacks_trim_calls;
		at_yield[i] = dynstack_committed(dynstack_coro_stack(c[i]));
	}
	CHECK(dynstack_flush() == 0);
	dynstack_stats_t end = stats_now();
	CHECK(end.nr_dynamic_stacks_trim_calls - st.nr_dynamic_stacks_trim_calls == N);
	uint64_t pages = 0;
	for (int i = 0; i < N; i++) {
		size_t now = dynstack_committed(dynstack_coro_stack(c[i]));
		size_t gone = (before[i] - now) / page_size();
		/* The premise of the counts below: two entries stay under 40 pages, three not. */
		CHECK(gone >= 14 && gone <= 19);
		pages += gone;
	}
	CHECK(end.nr_dynamic_stacks_trimmed - st.nr_dynamic_stacks_trimmed == pages);
	/* DYNSTACK_TRIM_BATCH=40: nothing is decommitted at the yield that queues it; the three
	 * first entries (over 40 pages) are flushed together by the yield that queues a fourth,
	 * and the other three wait for dynstack_flush. */
	static const uint64_t want[N] = { 0, 0, 0, 3, 3, 3 };
	for (int i = 0; i < N; i++) {
		CHECK(at_yield[i] == before[i]);
		if (calls_after[i] != want[i]) {
			fprintf(stderr, "after yield %d: %llu trim calls, expected %llu\n", i,
				(unsigned long long)calls_after[i], (unsigned long long)want[i]);
			return 1;
		}
	}
	for (int i = 0; i < N; i++) {
		j[i].cmd = CMD_EXIT;
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(j[i].ok);
		CHECK(dynstack_coro_destroy(c[i]) == 0);
	}
	return 0;
}

/* A queue of 64 entries is flushed by the yield that would queue a 65th, whatever the pages. */
static int batch_entries_main(void)
{
	enum {
		N = 65
	};
	static struct job j[N];
	static dynstack_coro_t *c[N];
	dynstack_attr_t attr;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_attr_init(&attr);
	attr.size = 16 * page_size();
	attr.policy = "trim=yield:1";
	dynstack_stats_t st = stats_now();
	for (int i = 0; i < N; i++) {
		j[i].ok = 1;
		CHECK(dynstack_coro_create(&c[i], script, &j[i], &attr) == 0);
		j[i].deep = 4 * page_size();
		CHECK(dynstack_coro_resume(c[i]) == 0);
		j[i].deep = 0;
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(pending(dynstack_coro_stack(c[i])));
		uint64_t calls =
			stats_now().nr_dynamic_stacks_trim_calls - st.nr_dynamic_stacks_trim_calls;
		CHECK(calls == (i < 64 ? 0 : 64));
	}
	CHECK(dynstack_flush() == 0);
	CHECK(stats_now().nr_dynamic_stacks_trim_calls - st.nr_dynamic_stacks_trim_calls == N);
	for (int i = 0; i < N; i++) {
		j[i].cmd = CMD_EXIT;
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(j[i].ok);
		CHECK(dynstack_coro_destroy(c[i]) == 0);
	}
	return 0;
}

static void run_mode(const char *mode, const char *const *env)
{
	int status;

	assert_int_equal(run_self(mode, env, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("%s: child %s; its stderr:\n%s", mode, describe_status(status), child_err);
}

static void test_batches(void **state)
{
	SKIP_IF_WHOLE();
	static const char *const pages40[] = { "DYNSTACK_TRIM_BATCH=40", "DYNSTACK_POLICY", NULL };
	static const char *const big[] = { "DYNSTACK_TRIM_BATCH=1000000", "DYNSTACK_POLICY", NULL };

	run_mode("--batch", pages40);
	run_mode("--batch-entries", big);
}

/* ---- thread exit */

struct on_thread {
	dynstack_coro_t *c;
	struct job *j;
	int rc[2];
	bool pending;
};

static void *queue_and_exit(void *arg)
{
	struct on_thread *t = arg;

	t->j->deep = 64 * KIB;
	t->rc[0] = dynstack_coro_resume(t->c);
	t->j->deep = 0;
	t->rc[1] = dynstack_coro_resume(t->c);
	t->pending = pending(dynstack_coro_stack(t->c));
	return NULL; /* no flush: the thread's exit does it */
}

static void test_thread_exit_flushes(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct job j;
	struct on_thread t = { .j = &j };
	pthread_t th;

	t.c = job_new(&j, "trim=yield:1", 256 * KIB, 0);
	dynstack_t *s = dynstack_coro_stack(t.c);
	dynstack_stats_t st = stats_now();
	assert_int_equal(pthread_create(&th, NULL, queue_and_exit, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(t.rc[0], 0);
	assert_int_equal(t.rc[1], 0);
	assert_true(t.pending);
	assert_false(pending(s));
	assert_int_equal(since(&st).calls, 1);
	assert_trimmed_at(s, j.sp, 4 * KIB);
	finish(t.c, &j);
}

/* The TRIM made by a thread's exit reaches the trace like any other. */
static void test_thread_exit_trim_is_traced(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	char path[256];
	struct job j;
	struct on_thread t = { .j = &j };
	pthread_t th;
	const char *dir = getenv("TMPDIR");

	snprintf(path, sizeof(path), "%s/test_trim-XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	t.c = job_new(&j, "trim=yield:1", 256 * KIB, 0);
	uint64_t id = dynstack_id(dynstack_coro_stack(t.c));
	assert_int_equal(dynstack_trace_start(path), 0);
	assert_int_equal(pthread_create(&th, NULL, queue_and_exit, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(t.pending);
	assert_int_equal(dynstack_trace_stop(), 0);

	struct ds_trace_reader *r;
	const struct ds_ev_head *h;
	char err[256];
	size_t trims = 0, lost = 0;
	int rc;
	assert_int_equal(ds_trace_open(path, &r, err, sizeof(err)), 0);
	while ((rc = ds_trace_next(r, &h, err, sizeof(err))) == 1) {
		trims += h->type == DS_EV_TRIM && h->stack == id;
		lost += h->type == DS_EV_LOST;
	}
	assert_int_equal(rc, 0);
	ds_trace_close(r);
	unlink(path);
	finish(t.c, &j);
	/* The exit flush's trim is recorded before the thread's ring goes. */
	assert_int_equal(trims, 1);
	assert_int_equal(lost, 0);
}

/* ---- dynstack_trim, for runtimes with their own switch */

static void test_trim_api_misuse(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_t *s, *w;
	int x;

	assert_int_equal(dynstack_trim(NULL, &x), -EINVAL);
	dynstack_attr_init(&attr);
	attr.size = 64 * KIB;
	attr.policy = "trim=yield:1";
	assert_int_equal(dynstack_create(&s, &attr), 0);
	const char *top = dynstack_top(s), *lo = top - dynstack_size(s);
	assert_int_equal(dynstack_trim(s, top + 1), -EINVAL);
	assert_int_equal(dynstack_trim(s, top + 64 * KIB), -EINVAL);
	assert_int_equal(dynstack_trim(s, lo - 1), -EINVAL);
	assert_int_equal(dynstack_trim(s, &x), -EINVAL); /* another stack altogether */
	assert_int_equal(dynstack_trim(s, top), 0);
	assert_int_equal(dynstack_trim(s, lo), 0);
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(dynstack_trim(s, top - 8 * KIB), -EINVAL);

	/* overflow=warn: the reserve belongs to the stack. */
	attr.policy = "trim=yield:1,overflow=warn:8k";
	assert_int_equal(dynstack_create(&w, &attr), 0);
	lo = (const char *)dynstack_top(w) - dynstack_size(w);
	assert_int_equal(dynstack_trim(w, lo - 8 * KIB), 0);
	assert_int_equal(dynstack_trim(w, lo - 8 * KIB - 1), -EINVAL);
	assert_int_equal(dynstack_destroy(w), 0);

	/* Nothing queued, or a thread that never used the library: a flush is a no-op. */
	assert_int_equal(dynstack_flush(), 0);
}

static void *flush_fresh(void *arg)
{
	*(int *)arg = dynstack_flush();
	return NULL;
}

static void test_flush_fresh_thread(void **state)
{
	pthread_t th;
	int rc = -1;

	assert_int_equal(pthread_create(&th, NULL, flush_fresh, &rc), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(rc, 0);
}

/* A stack touched from this thread, trimmed with an address inside it as its "stack pointer":
 * the first trim point after growth keeps, the next gives back at once (no queue). */
static void test_trim_api_sync(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	dynstack_attr_t attr;
	dynstack_t *s;

	dynstack_attr_init(&attr);
	attr.size = 256 * KIB;
	attr.policy = "trim=yield:1";
	assert_int_equal(dynstack_create(&s, &attr), 0);
	char *top = dynstack_top(s);
	touch_pages_down(top - 64 * KIB, top);
	assert_int_equal(dynstack_committed(s), 64 * KIB);
	char *sp = top - 8 * KIB - 100;

	dynstack_stats_t st = stats_now();
	assert_int_equal(dynstack_trim(s, sp), 0); /* hot */
	assert_int_equal(dynstack_committed(s), 64 * KIB);
	assert_int_equal(since(&st).calls, 0);
	assert_int_equal(dynstack_trim(s, sp), 0);
	struct delta d = since(&st);
	assert_int_equal(d.calls, 1);
	assert_int_equal(edge_of(s), page_down((uintptr_t)sp - 4 * KIB));
	assert_int_equal(d.trimmed, (int64_t)((64 * KIB - dynstack_committed(s)) / ps));
	assert_int_equal(d.pages, -d.trimmed);
	assert_kernel_view(s);
	/* Needed again: a mis-trim, and the wait doubles. */
	touch_pages_down(top - 64 * KIB, top);
	assert_int_equal(since(&st).mistrims, 1);
	assert_int_equal(atomic_load(&s->idle_limit), 2);
	size_t committed = dynstack_committed(s);
	assert_int_equal(dynstack_trim(s, sp), 0); /* hot */
	assert_int_equal(dynstack_trim(s, sp), 0); /* 1 of 2 */
	assert_int_equal(dynstack_committed(s), committed);
	assert_int_equal(dynstack_trim(s, sp), 0);
	assert_int_equal(edge_of(s), page_down((uintptr_t)sp - 4 * KIB));
	assert_int_equal(since(&st).calls, 2);
	/* Nothing below the margin: nothing to do. */
	assert_int_equal(dynstack_trim(s, sp), 0);
	assert_int_equal(since(&st).calls, 2);
	assert_int_equal(dynstack_destroy(s), 0);

	attr.policy = "trim=off";
	assert_int_equal(dynstack_create(&s, &attr), 0);
	top = dynstack_top(s);
	touch_pages_down(top - 64 * KIB, top);
	for (int i = 0; i < 8; i++)
		assert_int_equal(dynstack_trim(s, top - 8 * KIB), 0);
	assert_int_equal(dynstack_committed(s), 64 * KIB);
	assert_int_equal(dynstack_destroy(s), 0);
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--batch"))
		return batch_main();
	if (argc == 2 && !strcmp(argv[1], "--batch-entries"))
		return batch_entries_main();
	if (argc > 1)
		return 64;

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_trim_gives_pages_back),
		cmocka_unit_test(test_idle_count),
		cmocka_unit_test(test_growth_resets_count),
		cmocka_unit_test(test_mistrim_doubles_wait),
		cmocka_unit_test(test_mistrim_backoff_is_capped),
		cmocka_unit_test(test_trim_off),
		cmocka_unit_test(test_margin),
		cmocka_unit_test(test_exit_is_trim_point),
		cmocka_unit_test(test_resume_cancels),
		cmocka_unit_test(test_lone_coroutine_trimmed_without_flush),
		cmocka_unit_test(test_stale_entry_after_requeue),
		cmocka_unit_test(test_cancel_across_threads),
		cmocka_unit_test(test_destroy_with_queued_trim),
		cmocka_unit_test(test_new_stack_is_not_hot),
		cmocka_unit_test(test_batches),
		cmocka_unit_test(test_thread_exit_flushes),
		cmocka_unit_test(test_thread_exit_trim_is_traced),
		cmocka_unit_test(test_trim_api_misuse),
		cmocka_unit_test(test_flush_fresh_thread),
		cmocka_unit_test(test_trim_api_sync),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
