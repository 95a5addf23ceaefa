/* Tests of the cooperative-stack calls (src/segment.c, and ds_call_on_stack in src/arch/): how
 * much stack remains (dynstack_remaining) on coroutines, segments, the main thread and other
 * threads, measured against the real stack pointer; committing ahead of use (dynstack_ensure),
 * checked page by page with the kernel's view; and running a call on a segment (dynstack_call):
 * when it switches and when it does not, nesting, every kind of thread, errno, the hot-split
 * property, unwinding through the switch (glibc backtrace() and gdb), overflow reports, and the
 * misuse cases. Runs with the stack cache off (tests/meson.build), except the modes that set
 * DYNSTACK_CACHE themselves. Tests whose outcome depends on where the kernel puts the arenas run
 * in a fresh process (run_self) and arrange the layout first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <execinfo.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <unwind.h>

#include "helpers.h"
#include "internal.h"

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)

/* The largest gap between the address of a local of a small function and what
 * dynstack_remaining() measures from its own frame: "within a few dozen bytes". */
#define REMAINING_SLACK 96

/* Exit status of a child whose arena layout did not come out as the test needs. */
#define LAYOUT_MISSED 77

static char child_err[16384];

/* ---- helpers */

static uintptr_t page_down_u(uintptr_t p)
{
	return p & ~(uintptr_t)(page_size() - 1);
}

static uintptr_t stack_lo(const dynstack_t *s)
{
	return (uintptr_t)dynstack_top(s) - dynstack_size(s);
}

static uintptr_t edge_of(const dynstack_t *s)
{
	return (uintptr_t)dynstack_top(s) - dynstack_committed(s);
}

/* The live stack (coroutine, segment or plain) holding addr, or NULL. */
static struct dynstack *stack_holding(uintptr_t addr)
{
	struct dynstack *s = ds_arena_lookup_sigsafe(addr);
	if (!s || atomic_load(&s->state) != DS_SLOT_LIVE || addr >= s->top ||
	    addr < s->lo - s->reserve)
		return NULL;
	return s;
}

static bool on_stack(const struct dynstack *s, uintptr_t addr)
{
	return s && addr >= s->lo && addr < s->top;
}

/* [lo, hi) of the calling thread's own stack, as pthread_getattr_np reports it. */
static void own_stack(uintptr_t *lo, uintptr_t *hi)
{
	pthread_attr_t a;
	void *addr = NULL;
	size_t size = 0;

	if (pthread_getattr_np(pthread_self(), &a) == 0) {
		pthread_attr_getstack(&a, &addr, &size);
		pthread_attr_destroy(&a);
	}
	*lo = (uintptr_t)addr;
	*hi = (uintptr_t)addr + size;
}

/* Create a coroutine on a stack of `size` bytes (policy may be NULL), resume it until it
 * returns, and destroy it. Returns 0 or the first error. */
static int run_coro(dynstack_coro_fn fn, void *arg, size_t size, const char *policy)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = size;
	attr.policy = policy;
	attr.name = "caller";
	if ((rc = dynstack_coro_create(&c, fn, arg, &attr)))
		return rc;
	while (dynstack_coro_status(c) != DYNSTACK_CORO_DEAD)
		if ((rc = dynstack_coro_resume(c)))
			break;
	int rc2 = dynstack_coro_destroy(c);
	return rc ? rc : rc2;
}

/* What dynstack_remaining() says, next to the address of a local of the same small frame. */
struct probe {
	uintptr_t local;
	size_t rem;
};

static __attribute__((noinline)) void probe_remaining(struct probe *p)
{
	volatile char mark = 0;

	p->rem = dynstack_remaining();
	p->local = (uintptr_t)&mark;
}

/* probe_remaining from `depth` bytes further down the stack. */
static __attribute__((noinline)) void probe_at_depth(struct probe *p, size_t depth)
{
	volatile char buf[1024];

	buf[0] = 1;
	if (depth >= sizeof(buf))
		probe_at_depth(p, depth - sizeof(buf));
	else
		probe_remaining(p);
	buf[1] = buf[0];
}

/* How far the probe's answer is from the distance between its local and lo: in
 * [0, REMAINING_SLACK] when right. */
static long probe_error(const struct probe *p, uintptr_t lo)
{
	return (long)(p->local - lo) - (long)p->rem;
}

/* ---- dynstack_remaining */

struct remaining_run {
	size_t size;
	struct probe at[3];
	uintptr_t lo;
};

static void remaining_coro(void *arg)
{
	struct remaining_run *r = arg;
	dynstack_t *s = dynstack_coro_stack(dynstack_coro_current());

	r->lo = stack_lo(s);
	probe_at_depth(&r->at[0], 0);
	probe_at_depth(&r->at[1], 4 * KIB);
	probe_at_depth(&r->at[2], r->size / 2);
}

/* On coroutines of three sizes and at three depths each, dynstack_remaining() is the distance
 * from the stack pointer down to the stack's floor (dynstack_top - dynstack_size), committed or
 * not, within a few dozen bytes. */
static void test_remaining_coroutine(void **state)
{
	TAKE_SIGSEGV();
	const size_t sizes[] = { 16 * KIB, 64 * KIB, 1 * MIB };

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct remaining_run r = { .size = sizes[i] };
		assert_int_equal(run_coro(remaining_coro, &r, sizes[i], NULL), 0);
		for (int k = 0; k < 3; k++) {
			long err = probe_error(&r.at[k], r.lo);
			if (err < 0 || err > REMAINING_SLACK)
				fail_msg("size %zu depth #%d: remaining %zu, local - floor %zu",
					 sizes[i], k, r.at[k].rem, (size_t)(r.at[k].local - r.lo));
		}
		/* Deeper means less. */
		assert_true(r.at[1].rem + 4 * KIB <= r.at[0].rem);
		assert_true(r.at[2].rem + sizes[i] / 2 <= r.at[0].rem);
	}
}

/* The main thread: what pthread_getattr_np allows below the stack pointer. */
static void test_remaining_main_thread(void **state)
{
	uintptr_t lo, hi;
	struct probe p, deep;

	own_stack(&lo, &hi);
	assert_true(lo != 0);
	probe_remaining(&p);
	probe_at_depth(&deep, 64 * KIB);
	assert_true(p.local > lo && p.local < hi);
	long err = probe_error(&p, lo), err2 = probe_error(&deep, lo);
	if (err < 0 || err > REMAINING_SLACK || err2 < 0 || err2 > REMAINING_SLACK)
		fail_msg("remaining %zu / %zu, local - stack low %zu / %zu", p.rem, deep.rem,
			 (size_t)(p.local - lo), (size_t)(deep.local - lo));
}

struct thread_probe {
	struct probe p;
	uintptr_t lo, hi;
};

static void *remaining_thread(void *arg)
{
	struct thread_probe *t = arg;

	own_stack(&t->lo, &t->hi);
	probe_remaining(&t->p);
	return NULL;
}

/* A thread stack this test maps itself. TSan's per-thread state lives in the static TLS that
 * glibc carves from the top of a thread's stack: there it needs some 900 KiB, or pthread_create
 * fails with EINVAL. */
#define OWN_THREAD_STACK (under_tsan() ? 2 * MIB : 256 * KIB)

/* Other threads: one with the default stack (against pthread_getattr_np) and one on a stack
 * this test mapped itself, whose floor is known without asking glibc. */
static void test_remaining_pthread(void **state)
{
	const size_t size = OWN_THREAD_STACK;
	struct thread_probe t = { .lo = 0 };
	pthread_t th;
	pthread_attr_t attr;

	assert_int_equal(pthread_create(&th, NULL, remaining_thread, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	long err = probe_error(&t.p, t.lo);
	if (err < 0 || err > REMAINING_SLACK)
		fail_msg("default thread: remaining %zu, local - stack low %zu", t.p.rem,
			 (size_t)(t.p.local - t.lo));

	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(mem != MAP_FAILED);
	memset(&t, 0, sizeof(t));
	assert_int_equal(pthread_attr_init(&attr), 0);
	assert_int_equal(pthread_attr_setstack(&attr, mem, size), 0);
	assert_int_equal(pthread_create(&th, &attr, remaining_thread, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	pthread_attr_destroy(&attr);
	err = probe_error(&t.p, (uintptr_t)mem);
	if (err < 0 || err > REMAINING_SLACK)
		fail_msg("own-mapped stack: remaining %zu, local - mapping %zu", t.p.rem,
			 (size_t)(t.p.local - (uintptr_t)mem));
	munmap(mem, size);
}

struct slot_run {
	struct probe p;
	uintptr_t lo, top;
};

static void slot_coro(void *arg)
{
	struct slot_run *r = arg;
	dynstack_t *s = dynstack_coro_stack(dynstack_coro_current());

	r->lo = stack_lo(s);
	r->top = (uintptr_t)dynstack_top(s);
	probe_remaining(&r->p);
}

/* The thread remembers the stack it last asked about. A new stack in the same slot (the same
 * metadata, the same top) but with another size must not get the old stack's answer. */
static void test_remaining_new_stack_same_slot(void **state)
{
	TAKE_SIGSEGV();
	struct slot_run a = { .lo = 0 }, b = { .lo = 0 };
	size_t ps = page_size();

	/* Both in the class of 64 KiB slots, which no other test here uses. */
	assert_int_equal(run_coro(slot_coro, &a, 32 * KIB, NULL), 0);
	assert_int_equal(run_coro(slot_coro, &b, 64 * KIB - ps, NULL), 0);
	if (a.top != b.top)
		skip(); /* the slot was not reused: nothing to test */
	long ea = probe_error(&a.p, a.lo), eb = probe_error(&b.p, b.lo);
	if (ea < 0 || ea > REMAINING_SLACK || eb < 0 || eb > REMAINING_SLACK)
		fail_msg("first stack: remaining %zu for %zu; second: remaining %zu for %zu",
			 a.p.rem, (size_t)(a.p.local - a.lo), b.p.rem, (size_t)(b.p.local - b.lo));
}

/* run_self("--thread-below-arena"): a thread whose own stack ends right where an arena begins
 * asks dynstack_remaining(), then resumes a coroutine whose stack is in that arena. */
static dynstack_coro_t *below_coro;
static struct probe below_probe;
static uintptr_t below_fn_local;

static void *note_local(void *arg)
{
	volatile char mark = 0;

	below_fn_local = (uintptr_t)&mark;
	return arg;
}

static void below_coro_fn(void *arg)
{
	probe_remaining(&below_probe);
	dynstack_call(64 * KIB, note_local, NULL);
}

static void *below_thread(void *arg)
{
	struct probe mine;

	probe_remaining(&mine);
	*(size_t *)arg = mine.rem;
	dynstack_coro_resume(below_coro);
	return NULL;
}

static int thread_below_arena_main(void)
{
	const size_t size = OWN_THREAD_STACK;
	size_t thread_rem = 0;

	CHECK(dynstack_coro_create(&below_coro, below_coro_fn, NULL, NULL) == 0);
	struct dynstack *s = dynstack_coro_stack(below_coro);
	uintptr_t base = s->arena->base;
	void *mem = mmap((void *)(base - size), size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (mem == MAP_FAILED || (uintptr_t)mem != base - size) {
		fprintf(stderr, "cannot map a thread stack right below the arena\n");
		return LAYOUT_MISSED;
	}
	if (s->top - base > MIB) {
		fprintf(stderr, "the coroutine's stack is not near the arena's start\n");
		return LAYOUT_MISSED;
	}
	pthread_attr_t attr;
	pthread_t th;
	CHECK(pthread_attr_init(&attr) == 0);
	CHECK(pthread_attr_setstack(&attr, mem, size) == 0);
	CHECK(pthread_create(&th, &attr, below_thread, &thread_rem) == 0);
	CHECK(pthread_join(th, NULL) == 0);
	CHECK(dynstack_coro_status(below_coro) == DYNSTACK_CORO_DEAD);
	fprintf(stderr, "thread: remaining %zu; coroutine: remaining %zu, local - floor %zu\n",
		thread_rem, below_probe.rem, (size_t)(below_probe.local - s->lo));
	long err = probe_error(&below_probe, s->lo);
	CHECK(err >= 0 && err <= REMAINING_SLACK);
	/* 64 KiB do not fit in a 16 KiB coroutine: the call must have switched. */
	CHECK(!on_stack(s, below_fn_local));
	return 0;
}

static void run_mode(const char *mode, const char *const *env)
{
	int status;

	assert_int_equal(run_self(mode, env, &status, child_err, sizeof(child_err)), 0);
	if (WIFEXITED(status) && WEXITSTATUS(status) == LAYOUT_MISSED) {
		print_message("%s: layout not reached: %s", mode, child_err);
		skip();
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("%s: child %s; its stderr:\n%s", mode, describe_status(status), child_err);
}

/* The thread's own stack is remembered as reaching 1 MiB above the stack pointer it was asked
 * from; a coroutine stack in an arena that begins right above the thread's stack lies inside
 * that range and gets the thread's answer. */
static void test_remaining_thread_below_arena(void **state)
{
	run_mode("--thread-below-arena", NULL);
}

/* ---- dynstack_ensure */

struct ensure_run {
	size_t bytes;		       /* asked for */
	uintptr_t local, target;       /* a local of the asking frame; local - bytes */
	uintptr_t edge0, edge1, edge2; /* before, after, after a second call */
	size_t acc0, acc1, below;      /* pages accessible in the stack before/after; below edge1 */
	int rc, rc2;
	uint64_t ensured, ensured2, faults_touch;
	size_t resident;
};

static void ensure_coro(void *arg)
{
	struct ensure_run *r = arg;
	dynstack_t *s = dynstack_coro_stack(dynstack_coro_current());
	const char *top = dynstack_top(s);
	const char *floor = (const char *)stack_lo(s);
	size_t ps = page_size();
	volatile char mark = 0;
	struct probe warm;

	/* Commit a few KiB below this frame first, so that the calls made while measuring (their
	 * frames) take no fault of their own. */
	probe_at_depth(&warm, 2 * KIB);
	r->local = (uintptr_t)&mark;
	r->edge0 = edge_of(s);
	/* Eight pages below the edge, in the middle of a page: the page the call commits down to
	 * does not depend on the few bytes between this local and the stack pointer. */
	r->target = r->edge0 - 8 * ps + ps / 2;
	r->bytes = r->local - r->target;
	r->acc0 = count_accessible(floor, top);
	dynstack_stats_t st = stats_now();
	r->rc = dynstack_ensure(r->bytes);
	dynstack_stats_t st1 = stats_now();
	r->edge1 = edge_of(s);
	r->acc1 = count_accessible(floor, top);
	r->below = count_accessible((const char *)r->edge1 - ps, (const char *)r->edge1);
	r->ensured = st1.nr_dynamic_stacks_ensured - st.nr_dynamic_stacks_ensured;
	/* Use the pages, lowest byte of each, without a call below this frame. */
	for (uintptr_t p = r->edge1; p < r->edge0; p += ps)
		*(volatile char *)p = 1;
	r->faults_touch = stats_now().nr_dynamic_stacks_faults - st1.nr_dynamic_stacks_faults;
	r->resident = count_resident((const char *)r->edge1, (const char *)r->edge0);
	/* Again: nothing left to commit. */
	st = stats_now();
	r->rc2 = dynstack_ensure(r->bytes);
	r->ensured2 = stats_now().nr_dynamic_stacks_ensured - st.nr_dynamic_stacks_ensured;
	r->edge2 = edge_of(s);
}

/* ensure commits exactly the pages from the current edge down to the page holding sp - bytes,
 * in the kernel's view (process_vm_readv on every page) and in the counters; the page below
 * stays inaccessible; the pages are then used without a single fault. A second call is a no-op. */
static void test_ensure_exact_pages(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct ensure_run r = { .rc = -1 };
	size_t ps = page_size();

	assert_int_equal(run_coro(ensure_coro, &r, 256 * KIB, NULL), 0);
	assert_int_equal(r.rc, 0);
	assert_int_equal(r.edge1, page_down_u(r.target));
	size_t pages = (r.edge0 - r.edge1) / ps;
	assert_int_equal(pages, 8);
	assert_int_equal(r.acc1 - r.acc0, pages);
	assert_int_equal(r.ensured, pages);
	assert_int_equal(r.below, 0);
	assert_int_equal(r.faults_touch, 0);
	assert_int_equal(r.resident, pages);
	assert_int_equal(r.rc2, 0);
	assert_int_equal(r.ensured2, 0);
	assert_int_equal(r.edge2, r.edge1);
}

struct enospc_run {
	size_t size, rem;
	int rc_over, rc_size, rc_max, rc_floor, rc_zero;
	uintptr_t edge_before, edge_after_fail, edge_floor, lo;
	size_t floor_accessible;
	uint64_t ensured_fail;
};

static void enospc_coro(void *arg)
{
	struct enospc_run *r = arg;
	struct dynstack *s = dynstack_coro_stack(dynstack_coro_current());
	volatile char mark = 0;
	uintptr_t local = (uintptr_t)&mark;

	r->lo = s->lo;
	r->rem = dynstack_remaining();
	/* Room for the frames of the calls below (stats_now's are big under
	 * ASan): they must not grow the stack between the edge readings. */
	dynstack_ensure(8 * KIB);
	r->edge_before = edge_of(s);
	dynstack_stats_t st = stats_now();
	r->rc_over = dynstack_ensure(r->rem + page_size());
	r->rc_size = dynstack_ensure(r->size);
	r->rc_max = dynstack_ensure(SIZE_MAX);
	r->ensured_fail = stats_now().nr_dynamic_stacks_ensured - st.nr_dynamic_stacks_ensured;
	r->edge_after_fail = edge_of(s);
	r->rc_zero = dynstack_ensure(0);
	/* All the way down to the floor: allowed, and the floor stays fenced. */
	r->rc_floor = dynstack_ensure(local - s->lo - 512);
	r->edge_floor = edge_of(s);
	r->floor_accessible = count_accessible((const char *)ds_slot_base(s), (const char *)s->lo);
}

/* More than what remains is -ENOSPC and commits nothing; everything down to the floor is
 * allowed and commits the whole stack but not one page of the floor. */
static void test_ensure_enospc(void **state)
{
	TAKE_SIGSEGV();
	struct enospc_run r = { .size = 64 * KIB };

	assert_int_equal(run_coro(enospc_coro, &r, r.size, NULL), 0);
	assert_int_equal(r.rc_over, -ENOSPC);
	assert_int_equal(r.rc_size, -ENOSPC);
	assert_int_equal(r.rc_max, -ENOSPC);
	assert_int_equal(r.ensured_fail, 0);
	assert_int_equal(r.edge_after_fail, r.edge_before);
	assert_int_equal(r.rc_zero, 0);
	assert_int_equal(r.rc_floor, 0);
	assert_int_equal(r.edge_floor, r.lo);
	assert_int_equal(r.floor_accessible, 0);
}

struct own_ensure {
	size_t rem;
	int rc_small, rc_big;
	uint64_t ensured;
};

static void own_ensure_probe(struct own_ensure *o)
{
	dynstack_stats_t st = stats_now();

	o->rem = dynstack_remaining();
	o->rc_small = dynstack_ensure(64 * KIB);
	o->rc_big = dynstack_ensure(o->rem + MIB);
	o->ensured = stats_now().nr_dynamic_stacks_ensured - st.nr_dynamic_stacks_ensured;
}

static void *own_ensure_thread(void *arg)
{
	own_ensure_probe(arg);
	return NULL;
}

/* On a thread's own stack (the kernel grows it): 0 when the bytes fit, -ENOSPC when not, and
 * no page counted as ensured. Main thread and another thread. */
static void test_ensure_own_stack(void **state)
{
	struct own_ensure m, t;
	pthread_t th;

	own_ensure_probe(&m);
	assert_true(m.rem > 64 * KIB);
	assert_int_equal(m.rc_small, 0);
	assert_int_equal(m.rc_big, -ENOSPC);
	assert_int_equal(m.ensured, 0);
	assert_int_equal(pthread_create(&th, NULL, own_ensure_thread, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(t.rem > 64 * KIB);
	assert_int_equal(t.rc_small, 0);
	assert_int_equal(t.rc_big, -ENOSPC);
	assert_int_equal(t.ensured, 0);
}

/* run_in_child: a coroutine under overflow=warn:16k goes 12 KiB into its reserve and asks for
 * 16 KiB more. Nothing remains (the reserve is not for planned use), so the answer must be
 * -ENOSPC, and the floor below the reserve must stay fenced. */
static struct {
	int rc;
	size_t rem;
	uintptr_t local;
} reserve_res;

static __attribute__((noinline)) unsigned reserve_dive(uintptr_t until)
{
	volatile char buf[256];

	buf[0] = 1;
	if ((uintptr_t)buf > until)
		return reserve_dive(until) + buf[0];
	reserve_res.local = (uintptr_t)buf;
	reserve_res.rem = dynstack_remaining();
	reserve_res.rc = dynstack_ensure(16 * KIB);
	return buf[0];
}

static void reserve_coro(void *arg)
{
	struct dynstack *s = dynstack_coro_stack(dynstack_coro_current());

	reserve_dive(s->lo - 12 * KIB);
}

static int ensure_in_reserve_child(void *arg)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	dynstack_attr_init(&attr);
	attr.size = 16 * KIB;
	attr.policy = "overflow=warn:16k";
	CHECK(dynstack_coro_create(&c, reserve_coro, NULL, &attr) == 0);
	struct dynstack *s = dynstack_coro_stack(c);
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(reserve_res.local < s->lo);
	fprintf(stderr, "in the reserve: remaining %zu, ensure(16 KiB) = %d\n", reserve_res.rem,
		reserve_res.rc);
	CHECK(reserve_res.rem == 0);
	const char *floor_lo = (const char *)ds_slot_base(s), *floor_hi = (const char *)s->lo;
	CHECK(count_accessible(floor_lo, floor_hi - s->reserve) == 0);
	CHECK(reserve_res.rc == -ENOSPC);
	return 0;
}

static void test_ensure_in_reserve(void **state)
{
	TAKE_SIGSEGV();
	expect_child_ok(ensure_in_reserve_child, NULL);
}

/* ---- dynstack_call */

struct where_ran {
	uintptr_t local;
	size_t rem;
	struct dynstack *stack; /* the live stack holding local, or NULL */
	uint64_t stack_id, caller_id;
	uint32_t flags;
	size_t size;
};

static __attribute__((noinline)) void note_where(struct where_ran *w)
{
	volatile char mark = 0;

	w->local = (uintptr_t)&mark;
	w->rem = dynstack_remaining();
	w->stack = stack_holding(w->local);
	if (w->stack) {
		w->stack_id = w->stack->id;
		w->caller_id = w->stack->caller_id;
		w->flags = w->stack->flags;
		w->size = w->stack->top - w->stack->lo;
	}
}

struct call_run {
	size_t need;
	void *ret;
	struct where_ran caller, fn;
	uint64_t segments, created;
	int calls;
};

static void *record_fn(void *arg)
{
	struct call_run *r = arg;

	note_where(&r->fn);
	r->calls++;
	return (char *)arg + 1;
}

static void call_from_here(struct call_run *r)
{
	dynstack_stats_t st = stats_now();

	note_where(&r->caller);
	r->ret = dynstack_call(r->need, record_fn, r);
	dynstack_stats_t st1 = stats_now();
	r->segments = st1.nr_dynamic_stacks_segments - st.nr_dynamic_stacks_segments;
	r->created = st1.nr_dynamic_stacks_created - st.nr_dynamic_stacks_created;
}

static void call_coro(void *arg)
{
	call_from_here(arg);
}

/* Enough stack left: fn runs right here, on the caller's stack, and no segment is used. */
static void test_call_direct(void **state)
{
	TAKE_SIGSEGV();
	struct call_run r = { .need = 8 * KIB };

	assert_int_equal(run_coro(call_coro, &r, 64 * KIB, NULL), 0);
	assert_int_equal(r.calls, 1);
	assert_ptr_equal(r.ret, (char *)&r + 1);
	assert_non_null(r.caller.stack);
	assert_ptr_equal(r.fn.stack, r.caller.stack);
	assert_true(r.fn.local < r.caller.local && r.caller.local - r.fn.local < 1024);
	assert_int_equal(r.segments, 0);
	assert_int_equal(r.created, 0);
}

/* Too little left: fn runs on another stack, a segment called from the coroutine's stack, with
 * at least `need` bytes remaining; its result comes back. */
static void test_call_segment(void **state)
{
	TAKE_SIGSEGV();
	struct call_run r = { .need = 64 * KIB };

	assert_int_equal(run_coro(call_coro, &r, 16 * KIB, NULL), 0);
	assert_int_equal(r.calls, 1);
	assert_ptr_equal(r.ret, (char *)&r + 1);
	assert_non_null(r.caller.stack);
	assert_true(r.caller.rem < r.need);
	assert_non_null(r.fn.stack);
	assert_ptr_not_equal(r.fn.stack, r.caller.stack);
	assert_false(on_stack(r.caller.stack, r.fn.local));
	assert_true(r.fn.flags & DS_SLOT_SEGMENT);
	assert_int_equal(r.fn.caller_id, r.caller.stack_id);
	assert_true(r.fn.size > r.need);
	assert_true(r.fn.rem >= r.need);
	assert_int_equal(r.segments, 1);
}

struct nest_run {
	struct where_ran at[4]; /* at[0]: the coroutine; at[1..3]: the levels */
	int depth;
	uintptr_t ret;
	int live_after_states[3];
};

static void *nest_fn(void *arg)
{
	struct nest_run *r = arg;
	int level = ++r->depth;

	note_where(&r->at[level]);
	if (level == 3)
		return (void *)(uintptr_t)1000;
	/* More than what is left here: the next level needs a segment of its own. */
	uintptr_t below = (uintptr_t)dynstack_call(r->at[level].rem + 4 * KIB, nest_fn, r);
	__asm__ volatile("" ::: "memory");
	return (void *)(below + (uintptr_t)level);
}

static void nest_coro(void *arg)
{
	struct nest_run *r = arg;

	note_where(&r->at[0]);
	r->ret = (uintptr_t)dynstack_call(64 * KIB, nest_fn, r);
}

/* A call inside a call inside a call, from a coroutine: four distinct stacks, each segment
 * called from the one before, results passed back up; afterwards at most one segment is still
 * live (the one the thread keeps for its next crossing). */
static void test_call_nested(void **state)
{
	TAKE_SIGSEGV();
	struct nest_run r = { .depth = 0 };
	dynstack_stats_t st = stats_now();

	assert_int_equal(run_coro(nest_coro, &r, 16 * KIB, NULL), 0);
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(r.depth, 3);
	assert_int_equal(r.ret, 1000 + 2 + 1);
	for (int i = 0; i < 4; i++) {
		assert_non_null(r.at[i].stack);
		for (int j = 0; j < i; j++)
			assert_int_not_equal(r.at[i].stack_id, r.at[j].stack_id);
	}
	for (int i = 1; i < 4; i++) {
		assert_true(r.at[i].flags & DS_SLOT_SEGMENT);
		assert_int_equal(r.at[i].caller_id, r.at[i - 1].stack_id);
		assert_true(r.at[i].rem > r.at[i - 1].rem);
		assert_false(on_stack(r.at[i - 1].stack, r.at[i].local));
	}
	assert_int_equal(st1.nr_dynamic_stacks_segments - st.nr_dynamic_stacks_segments, 3);
	assert_true((int64_t)(st1.nr_dynamic_stacks - st.nr_dynamic_stacks) <= 1);
	int live = 0;
	for (int i = 1; i < 4; i++)
		live += atomic_load(&r.at[i].stack->state) == DS_SLOT_LIVE &&
			r.at[i].stack->id == r.at[i].stack_id;
	assert_true(live <= 1);
}

/* From the main thread with a need larger than all it has left: a segment called from "a
 * thread's own stack" (caller id 0), nowhere on the main stack. */
static void test_call_main_thread(void **state)
{
	TAKE_SIGSEGV();
	uintptr_t lo, hi;
	struct call_run r;

	own_stack(&lo, &hi);
	memset(&r, 0, sizeof(r));
	r.need = dynstack_remaining() + MIB;
	call_from_here(&r);
	assert_int_equal(r.calls, 1);
	assert_ptr_equal(r.ret, (char *)&r + 1);
	assert_null(r.caller.stack);
	assert_non_null(r.fn.stack);
	assert_true(r.fn.flags & DS_SLOT_SEGMENT);
	assert_int_equal(r.fn.caller_id, 0);
	assert_false(r.fn.local >= lo && r.fn.local < hi);
	assert_true(r.fn.rem >= r.need);
	assert_int_equal(r.segments, 1);

	/* And a need that fits is a plain call on the main stack. */
	memset(&r, 0, sizeof(r));
	r.need = 16 * KIB;
	call_from_here(&r);
	assert_null(r.fn.stack);
	assert_true(r.fn.local >= lo && r.fn.local < hi);
	assert_int_equal(r.segments, 0);
}

static void *call_thread(void *arg)
{
	struct call_run *r = arg;

	r->need = dynstack_remaining() + 64 * KIB;
	call_from_here(r);
	return NULL;
}

/* From another thread: a segment, and when the thread exits the segment it kept for its next
 * crossing is released (no live stack is left behind). */
static void test_call_pthread(void **state)
{
	TAKE_SIGSEGV();
	struct call_run r;
	pthread_t th;

	memset(&r, 0, sizeof(r));
	dynstack_stats_t st = stats_now();
	assert_int_equal(pthread_create(&th, NULL, call_thread, &r), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(r.calls, 1);
	assert_ptr_equal(r.ret, (char *)&r + 1);
	assert_non_null(r.fn.stack);
	assert_true(r.fn.flags & DS_SLOT_SEGMENT);
	assert_int_equal(r.fn.caller_id, 0);
	assert_true(r.fn.rem >= r.need);
	assert_int_equal(st1.nr_dynamic_stacks_segments - st.nr_dynamic_stacks_segments, 1);
	assert_int_equal(st1.nr_dynamic_stacks, st.nr_dynamic_stacks);
	assert_int_equal(st1.nr_dynamic_stacks_destroyed - st.nr_dynamic_stacks_destroyed,
			 st1.nr_dynamic_stacks_created - st.nr_dynamic_stacks_created);
}

/* ---- errno */

struct errno_run {
	int seen_by_fn, after_direct, after_segment, after_release;
};

static void *set_errno_fn(void *arg)
{
	errno = (int)(intptr_t)arg;
	return NULL;
}

static void *errno_outer_fn(void *arg)
{
	struct errno_run *r = arg;

	r->seen_by_fn = errno;
	/* Two segments in use at once: when both are back, the thread keeps one and this one is
	 * released (system calls with the cache off). */
	dynstack_call(dynstack_remaining() + 4 * KIB, set_errno_fn, (void *)(intptr_t)1111);
	errno = 4242;
	return NULL;
}

static void errno_coro(void *arg)
{
	struct errno_run *r = arg;

	dynstack_call(1 * KIB, set_errno_fn, (void *)(intptr_t)EDOM);
	r->after_direct = errno;
	dynstack_call(64 * KIB, set_errno_fn, (void *)(intptr_t)ERANGE);
	r->after_segment = errno;
	errno = 777;
	dynstack_call(128 * KIB, errno_outer_fn, r);
	r->after_release = errno;
}

/* errno set by fn survives the way back, whether fn ran directly, on the kept segment, or on a
 * segment that is then released; and fn sees the caller's errno. */
static void test_call_errno(void **state)
{
	TAKE_SIGSEGV();
	struct errno_run r = { 0 };

	assert_int_equal(run_coro(errno_coro, &r, 16 * KIB, NULL), 0);
	assert_int_equal(r.after_direct, EDOM);
	assert_int_equal(r.after_segment, ERANGE);
	assert_int_equal(r.seen_by_fn, 777);
	assert_int_equal(r.after_release, 4242);
}

/* ---- the hot split */

#define CROSSINGS 10000

struct hot_run {
	int bad;
	uint64_t created, segments, faults;
	size_t sum;
};

static void *hot_fn(void *arg)
{
	struct hot_run *r = arg;
	volatile char buf[2048];

	buf[0] = 1;
	buf[sizeof(buf) - 1] = 2;
	r->sum += buf[0] + buf[sizeof(buf) - 1];
	return arg;
}

static void hot_coro(void *arg)
{
	struct hot_run *r = arg;
	dynstack_stats_t st = stats_now();

	for (int i = 0; i < CROSSINGS; i++)
		if (dynstack_call(64 * KIB, hot_fn, r) != r)
			r->bad++;
	dynstack_stats_t st1 = stats_now();
	r->created = st1.nr_dynamic_stacks_created - st.nr_dynamic_stacks_created;
	r->segments = st1.nr_dynamic_stacks_segments - st.nr_dynamic_stacks_segments;
	r->faults = st1.nr_dynamic_stacks_faults - st.nr_dynamic_stacks_faults;
}

/* A loop that crosses the boundary 10,000 times creates at most a couple of stacks and takes at
 * most a few faults: the segment stays with the thread, warm (Go's and Rust's hot split). With
 * the cache off, as here, that is the segment kept per thread alone. */
static void test_call_hot_split(void **state)
{
	TAKE_SIGSEGV();
	struct hot_run r = { 0 };

	assert_int_equal(run_coro(hot_coro, &r, 16 * KIB, NULL), 0);
	assert_int_equal(r.bad, 0);
	assert_int_equal(r.sum, (size_t)3 * CROSSINGS);
	assert_int_equal(r.segments, CROSSINGS);
	assert_true(r.created <= 2);
	assert_true(r.faults <= 4);
}

/* run_self("--cache-on", DYNSTACK_CACHE=16): segments go back to the stack cache. Crossings
 * with two needs in turn, a small one and one that the segment the thread keeps cannot hold,
 * release a segment each time (the thread keeps one only): with the cache, every later creation
 * of the big one is a hit, and no new slot, arena or mapping is taken. */
static void *cache_on_fn(void *arg)
{
	return arg;
}

static int cache_on_main(void)
{
	CHECK(dynstack_init(NULL) == 0);
	size_t small = dynstack_remaining() + 4 * KIB, big = 2 * small + MIB;
	/* Warm up: the arenas of both classes exist, the first segments are made. */
	for (int i = 0; i < 4; i++) {
		CHECK(dynstack_call(small, cache_on_fn, &i) == &i);
		CHECK(dynstack_call(big, cache_on_fn, &i) == &i);
	}
	/* Under Valgrind the big segment is committed whole, more than the cache's page budget
	 * holds: each put decommits it and each hit commits it again (some 50 ms there). */
	const int rounds = under_valgrind() ? 100 : 1000;
	size_t vmas = count_vmas();
	dynstack_stats_t st = stats_now();
	for (int i = 0; i < rounds; i++) {
		CHECK(dynstack_call(small, cache_on_fn, &i) == &i);
		CHECK(dynstack_call(big, cache_on_fn, &i) == &i);
	}
	dynstack_stats_t st1 = stats_now();
	uint64_t created = st1.nr_dynamic_stacks_created - st.nr_dynamic_stacks_created;
	uint64_t hits = st1.nr_dynamic_stacks_cache_hits - st.nr_dynamic_stacks_cache_hits;
	fprintf(stderr, "created %llu, cache hits %llu, VMAs %zu -> %zu\n",
		(unsigned long long)created, (unsigned long long)hits, vmas, count_vmas());
	CHECK(st1.nr_dynamic_stacks_segments - st.nr_dynamic_stacks_segments ==
	      2 * (uint64_t)rounds);
	CHECK(hits >= (uint64_t)rounds - 1);
	CHECK(created - hits <= 2);
	CHECK(count_vmas() == vmas);
	CHECK(st1.nr_dynamic_stacks_arenas == st.nr_dynamic_stacks_arenas);
	return 0;
}

static void test_call_cache_on(void **state)
{
	const char *env[] = { "DYNSTACK_CACHE=16", NULL };

	run_mode("--cache-on", env);
}

/* run_self("--fresh"): every call works in a process where the library was never initialised,
 * first thing, on the main thread. */
static void *fresh_fn(void *arg)
{
	volatile char mark = 0;

	*(uintptr_t *)arg = (uintptr_t)&mark;
	return arg;
}

static int fresh_main(void)
{
	uintptr_t lo, hi, local = 0;
	struct probe p;

	CHECK(strcmp(dynstack_backend_name(), "none") == 0);
	probe_remaining(&p);
	own_stack(&lo, &hi);
	long err = probe_error(&p, lo);
	CHECK(err >= 0 && err <= REMAINING_SLACK);
	CHECK(dynstack_ensure(16 * KIB) == 0);
	CHECK(dynstack_ensure(p.rem + MIB) == -ENOSPC);
	CHECK(dynstack_call(16 * KIB, fresh_fn, &local) == &local);
	CHECK(local >= lo && local < hi);
	CHECK(strcmp(dynstack_backend_name(), "none") == 0);
	CHECK(dynstack_call(p.rem + MIB, fresh_fn, &local) == &local);
	CHECK(!(local >= lo && local < hi));
	CHECK(stack_holding(local) != NULL);
	CHECK(strcmp(dynstack_backend_name(), "none") != 0);
	return 0;
}

static void test_call_fresh_process(void **state)
{
	run_mode("--fresh", NULL);
}

/* ---- unwinding across the switch: glibc backtrace() */

#define BT_DEPTH 64

struct bt_run {
	int n;
	void *frames[BT_DEPTH];
	int nested;
};

void segment_bt_caller(void *arg);
void *segment_bt_fn(void *arg);
void *segment_bt_outer(void *arg);

void *segment_bt_fn(void *arg)
{
	struct bt_run *r = arg;

	r->n = backtrace(r->frames, BT_DEPTH);
	return arg;
}

void *segment_bt_outer(void *arg)
{
	/* A second segment: the walk must cross two switches. */
	void *ret = dynstack_call(dynstack_remaining() + 4 * KIB, segment_bt_fn, arg);
	__asm__ volatile("" ::: "memory"); /* no tail call */
	return ret;
}

__attribute__((noinline)) void segment_bt_caller(void *arg)
{
	struct bt_run *r = arg;
	void *(*fn)(void *) = r->nested ? segment_bt_outer : segment_bt_fn;

	if (dynstack_call(64 * KIB, fn, r) != r)
		r->n = -1;
	__asm__ volatile("" ::: "memory"); /* no tail call: this frame stays on the stack */
}

/* Does the backtrace hold a return address inside func (by the unwind tables, so it needs no
 * symbol table)? */
static bool bt_has(const struct bt_run *r, void *func)
{
	for (int i = 1; i < r->n; i++)
		if (_Unwind_FindEnclosingFunction((char *)r->frames[i] - 1) == func)
			return true;
	return false;
}

static __attribute__((noinline)) void main_bt_caller(struct bt_run *r)
{
	uintptr_t lo, hi;

	own_stack(&lo, &hi);
	(void)hi;
	r->nested = 0;
	/* A need that does not fit on the main thread's stack. */
	if (dynstack_call((uintptr_t)__builtin_frame_address(0) - lo + MIB, segment_bt_fn, r) != r)
		r->n = -1;
	__asm__ volatile("" ::: "memory");
}

/* backtrace() called on a segment walks back through the switch into the caller's frames: the
 * function that called dynstack_call is in it, from a coroutine, through two nested segments,
 * and from the main thread. */
static void test_call_backtrace(void **state)
{
	TAKE_SIGSEGV();
	struct bt_run r = { .n = 0 };
	void *warm[4];

	backtrace(warm, 4); /* loads libgcc_s here, not on a segment */
	assert_int_equal(run_coro(segment_bt_caller, &r, 16 * KIB, NULL), 0);
	assert_true(r.n > 3);
	assert_true(bt_has(&r, (void *)segment_bt_caller));

	memset(&r, 0, sizeof(r));
	r.nested = 1;
	assert_int_equal(run_coro(segment_bt_caller, &r, 16 * KIB, NULL), 0);
	assert_true(r.n > 3);
	assert_true(bt_has(&r, (void *)segment_bt_outer));
	assert_true(bt_has(&r, (void *)segment_bt_caller));

	memset(&r, 0, sizeof(r));
	main_bt_caller(&r);
	assert_true(r.n > 3);
	assert_true(bt_has(&r, (void *)main_bt_caller));
}

/* ---- unwinding across the switch: gdb */

void *segment_gdb_fn(void *arg);
void segment_gdb_caller(void *arg);

__attribute__((noinline)) void *segment_gdb_fn(void *arg)
{
	__asm__ volatile("" ::: "memory");
	return arg;
}

__attribute__((noinline)) void segment_gdb_caller(void *arg)
{
	uintptr_t *seg_local = arg;
	volatile char mark = 0;

	seg_local[0] = (uintptr_t)&mark;
	if (dynstack_call(64 * KIB, segment_gdb_fn, arg) != arg)
		abort();
	__asm__ volatile("" ::: "memory");
}

static void *nop_fn(void *arg)
{
	return arg;
}

/* The program gdb runs: a coroutine calls segment_gdb_caller, which crosses to a segment that
 * lies above the coroutine's stack (segment_above) or below it. The arenas of a process are
 * mapped top down, so the class reserved first lies higher. */
static int gdb_target_main(bool segment_above)
{
	uintptr_t locals[1] = { 0 };
	dynstack_coro_t *c;
	dynstack_attr_t attr;
	dynstack_t *pre = NULL;

	CHECK(dynstack_init(NULL) == 0);
	if (segment_above) {
		/* The segments' class first (a segment for 64 KiB is 128 KiB). */
		dynstack_attr_init(&attr);
		attr.size = 128 * KIB;
		CHECK(dynstack_create(&pre, &attr) == 0);
	}
	dynstack_attr_init(&attr);
	attr.size = 16 * KIB;
	CHECK(dynstack_coro_create(&c, segment_gdb_caller, locals, &attr) == 0);
	uintptr_t coro_top = (uintptr_t)dynstack_top(dynstack_coro_stack(c));
	dynstack_destroy(pre);
	/* Where will the segment be? Any stack of its class tells (below: its arena is reserved
	 * now, after the coroutine's). */
	dynstack_t *probe_stack;
	attr.size = 128 * KIB;
	CHECK(dynstack_create(&probe_stack, &attr) == 0);
	uintptr_t seg_top = (uintptr_t)dynstack_top(probe_stack);
	CHECK(dynstack_destroy(probe_stack) == 0);
	if ((seg_top > coro_top) != segment_above) {
		fprintf(stderr, "segment class at %#lx, coroutine at %#lx\n",
			(unsigned long)seg_top, (unsigned long)coro_top);
		return LAYOUT_MISSED;
	}
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(dynstack_coro_status(c) == DYNSTACK_CORO_DEAD);
	return 0;
}

static char self_exe[PATH_MAX];

static int exec_gdb(void *arg)
{
	const char *mode = arg;

	/* gdb's output (stdout) goes where the helper captures stderr. */
	dup2(STDERR_FILENO, STDOUT_FILENO);
	execlp("gdb", "gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-ex",
	       "handle SIGSEGV nostop noprint pass", "-ex", "break segment_gdb_fn", "-ex", "run",
	       "-ex", "bt", "--args", self_exe, mode, (char *)NULL);
	fprintf(stderr, "cannot run gdb: %s\n", strerror(errno));
	return 127;
}

static bool have_gdb(void)
{
	const char *path = getenv("PATH");
	char buf[PATH_MAX];

	if (!path)
		path = "/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		if (n && snprintf(buf, sizeof(buf), "%.*s/gdb", (int)n, path) < (int)sizeof(buf) &&
		    access(buf, X_OK) == 0)
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

/* Run the gdb target in mode under gdb with a breakpoint on the segment; returns gdb's output
 * in child_err, or skips when gdb is missing or cannot run the program here. */
static void gdb_bt(const char *mode)
{
	int status;
	ssize_t n;

	SKIP_UNDER(valgrind,
		   "gdb would run under Valgrind too (--trace-children=yes) and crashes there");
	if (!have_gdb()) {
		print_message("gdb is not installed: skipped\n");
		skip();
	}
	n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
	assert_true(n > 0);
	self_exe[n] = '\0';
	assert_int_equal(
		run_in_child(exec_gdb, (void *)mode, &status, child_err, sizeof(child_err)), 0);
	if (!contains(child_err, "Breakpoint 1, ")) {
		if (contains(child_err, "exited with code 115")) { /* LAYOUT_MISSED, in octal */
			print_message("%s: layout not reached\n", mode);
			skip();
		}
		print_message("gdb did not stop in segment_gdb_fn (no ptrace here?): skipped\n%s\n",
			      child_err);
		skip();
	}
}

/* gdb, stopped on a segment, walks back to the function that called dynstack_call. */
static void test_call_gdb_bt(void **state)
{
	gdb_bt("--gdb-segment-below");
	if (!contains(child_err, "segment_gdb_caller") || contains(child_err, "Backtrace stopped"))
		fail_msg("gdb's bt does not reach the caller:\n%s", child_err);
}

/* The same with the segment above the caller's stack: gdb takes a caller frame at a lower
 * address than its callee for a corrupt stack. */
static void test_call_gdb_bt_segment_above(void **state)
{
	gdb_bt("--gdb-segment-above");
	if (!contains(child_err, "segment_gdb_caller") || contains(child_err, "Backtrace stopped"))
		fail_msg("gdb's bt does not reach the caller:\n%s", child_err);
}

/* ---- overflow on a segment */

static void *overflow_fn(void *arg)
{
	volatile char mark = 0;

	touch_down((const void *)&mark, 1024 * MIB); /* far more than any segment holds */
	return arg;
}

static void overflow_coro(void *arg)
{
	fprintf(stderr, "caller stack id %llu\n",
		(unsigned long long)dynstack_id(dynstack_coro_stack(dynstack_coro_current())));
	dynstack_call(64 * KIB, overflow_fn, NULL);
}

static int overflow_coro_child(void *arg)
{
	run_coro(overflow_coro, NULL, 16 * KIB, NULL);
	return 0;
}

static int overflow_thread_child(void *arg)
{
	dynstack_call(dynstack_remaining() + 4 * KIB, overflow_fn, NULL);
	return 0;
}

/* Overflowing a segment dies by SIGSEGV with a report that names the segment and the stack it
 * was called from: the coroutine's id, or the thread's own stack. */
static void test_call_overflow_report(void **state)
{
	TAKE_SIGSEGV();
	unsigned long long id = 0;
	char want[128];

	expect_child_sigsegv(overflow_coro_child, NULL);
	const char *line = strstr(child_err, "caller stack id ");
	assert_non_null(line);
	assert_int_equal(sscanf(line, "caller stack id %llu", &id), 1);
	assert_true(id != 0);
	snprintf(want, sizeof(want), "a dynstack_call segment called from stack %llu,", id);
	if (!contains(child_err, "stack overflow on stack") || !contains(child_err, want) ||
	    !contains(child_err, "\"segment\""))
		fail_msg("no report naming the segment and \"%s\":\n%s", want, child_err);

	expect_child_sigsegv(overflow_thread_child, NULL);
	if (!contains(child_err, "stack overflow on stack") ||
	    !contains(child_err, "a dynstack_call segment called from a thread's own stack"))
		fail_msg("no report naming the thread's own stack:\n%s", child_err);
}

/* ---- misuse */

/* A NULL fn is refused without a call and without a segment, whatever the need. */
static void test_call_null_fn(void **state)
{
	dynstack_stats_t st = stats_now();

	assert_null(dynstack_call(0, NULL, &st));
	assert_null(dynstack_call(SIZE_MAX, NULL, &st));
	assert_null(dynstack_call(dynstack_remaining() + MIB, NULL, &st));
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(st1.nr_dynamic_stacks_segments, st.nr_dynamic_stacks_segments);
	assert_int_equal(st1.nr_dynamic_stacks_created, st.nr_dynamic_stacks_created);
}

static int no_segment_child(void *arg)
{
	dynstack_call(SIZE_MAX / 2, nop_fn, NULL);
	fprintf(stderr, "dynstack_call returned\n");
	return 1;
}

/* When no segment can be had, running fn anyway would overflow: a report, then abort. */
static void test_call_no_segment_aborts(void **state)
{
	TAKE_SIGSEGV();
	expect_child(no_segment_child, NULL, SIGABRT, child_err, sizeof(child_err));
	if (!contains(child_err, "libdynstack: dynstack_call: no segment of "))
		fail_msg("no report:\n%s", child_err);
}

struct destroy_run {
	struct dynstack *seg;
	uint64_t seg_id;
	int rc_inside;
};

static void *destroy_fn(void *arg)
{
	struct destroy_run *r = arg;
	volatile char mark = 0;

	r->seg = ds_arena_lookup_sigsafe((uintptr_t)&mark);
	r->seg_id = r->seg ? r->seg->id : 0;
	r->rc_inside = dynstack_destroy(r->seg);
	return NULL;
}

static void destroy_coro(void *arg)
{
	dynstack_call(64 * KIB, destroy_fn, arg);
}

/* A segment is not the caller's to destroy: -EBUSY while fn runs on it, and -EBUSY for the
 * segment the thread keeps afterwards. */
static void test_segment_destroy_refused(void **state)
{
	TAKE_SIGSEGV();
	struct destroy_run r = { .rc_inside = 1 };

	assert_int_equal(run_coro(destroy_coro, &r, 16 * KIB, NULL), 0);
	assert_non_null(r.seg);
	assert_int_equal(r.rc_inside, -EBUSY);
	if (atomic_load(&r.seg->state) == DS_SLOT_LIVE && r.seg->id == r.seg_id)
		assert_int_equal(dynstack_destroy(r.seg), -EBUSY);
}

/* ---- coroutines suspended on a segment */

/* run_self("--yield-on-segment"): fn yields while it runs on a segment that lies above the
 * coroutine's stack; the resumer flushes the trim queue after each resume. The frames of fn and
 * of the coroutine must survive. */
static int yield_canary_bad;

static void *yield_fn(void *arg)
{
	volatile unsigned char buf[128];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(i * 7 + 3);
	for (int i = 0; i < 8; i++)
		dynstack_coro_yield();
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != (unsigned char)(i * 7 + 3))
			yield_canary_bad |= 1;
	return arg;
}

static void yield_coro(void *arg)
{
	volatile unsigned char buf[128];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(i * 5 + 1);
	if (dynstack_call(64 * KIB, yield_fn, arg) != arg)
		yield_canary_bad |= 4;
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != (unsigned char)(i * 5 + 1))
			yield_canary_bad |= 2;
}

/* The top of a stack of `size` bytes, made and destroyed: the arena of its class exists now. */
static int class_top(size_t size, uintptr_t *top)
{
	dynstack_attr_t attr;
	dynstack_t *s;

	dynstack_attr_init(&attr);
	attr.size = size;
	CHECK(dynstack_create(&s, &attr) == 0);
	*top = (uintptr_t)dynstack_top(s);
	CHECK(dynstack_destroy(s) == 0);
	return 0;
}

static int yield_on_segment_main(void)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	CHECK(dynstack_init(NULL) == 0);
	/* The segments' class must lie above the coroutine's. The kernel maps arenas top down: that
	 * class is reserved first. Valgrind maps them bottom up (first fit from its low end): last. */
	bool valgrind = under_valgrind();
	uintptr_t seg_top = 0;
	if (!valgrind)
		CHECK(class_top(128 * KIB, &seg_top) == 0);
	dynstack_attr_init(&attr);
	attr.size = 16 * KIB;
	CHECK(dynstack_coro_create(&c, yield_coro, &attr, &attr) == 0);
	if (valgrind)
		CHECK(class_top(128 * KIB, &seg_top) == 0);
	if (seg_top < (uintptr_t)dynstack_top(dynstack_coro_stack(c)))
		return LAYOUT_MISSED;
	int first_flush_error = 0;
	while (dynstack_coro_status(c) != DYNSTACK_CORO_DEAD) {
		CHECK(dynstack_coro_resume(c) == 0);
		int rc = dynstack_flush();
		if (rc && !first_flush_error)
			first_flush_error = rc;
	}
	fprintf(stderr, "flush: %d, canaries: %#x\n", first_flush_error, yield_canary_bad);
	CHECK(yield_canary_bad == 0);
	CHECK(first_flush_error == 0);
	CHECK(dynstack_coro_destroy(c) == 0);
	return 0;
}

static void test_yield_on_segment(void **state)
{
	run_mode("--yield-on-segment", NULL);
}

struct leak_run {
	struct dynstack *seg;
	uint64_t seg_id;
};

static void *leak_fn(void *arg)
{
	struct leak_run *r = arg;
	volatile char mark = 0;

	r->seg = stack_holding((uintptr_t)&mark);
	r->seg_id = r->seg ? r->seg->id : 0;
	dynstack_coro_yield();
	return arg;
}

static void leak_coro(void *arg)
{
	dynstack_call(64 * KIB, leak_fn, arg);
}

/* A coroutine destroyed while suspended inside a dynstack_call: its stack goes, and so must the
 * segment it was suspended on (given back, or kept by the thread for its next crossing). */
static void test_destroy_coro_suspended_on_segment(void **state)
{
	TAKE_SIGSEGV();
	struct leak_run r = { 0 };
	dynstack_coro_t *c;
	struct leak_run again = { 0 };

	assert_int_equal(dynstack_coro_create(&c, leak_coro, &r, NULL), 0);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_SUSPENDED);
	assert_non_null(r.seg);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	bool live = atomic_load(&r.seg->state) == DS_SLOT_LIVE && r.seg->id == r.seg_id;
	if (live) {
		/* Still live is right only if it is the thread's kept segment: then the next
		 * crossing runs on it. */
		assert_int_equal(dynstack_coro_create(&c, leak_coro, &again, NULL), 0);
		assert_int_equal(dynstack_coro_resume(c), 0);
		assert_int_equal(dynstack_coro_resume(c), 0);
		assert_int_equal(dynstack_coro_destroy(c), 0);
		if (again.seg_id != r.seg_id)
			fail_msg("segment %llu is still live and not reused",
				 (unsigned long long)r.seg_id);
	}
}

/* ensure and call together, on a segment: fn asks for what it needs up front and then uses it
 * without a fault. */
struct seg_ensure_run {
	int rc;
	unsigned levels;
	uint64_t faults, ensured;
};

static void *seg_ensure_fn(void *arg)
{
	struct seg_ensure_run *r = arg;
	volatile char mark = 0;

	dynstack_stats_t st = stats_now();
	r->rc = dynstack_ensure(48 * KIB);
	r->ensured = stats_now().nr_dynamic_stacks_ensured - st.nr_dynamic_stacks_ensured;
	st = stats_now();
	r->levels = touch_down((const void *)&mark, 40 * KIB);
	r->faults = stats_now().nr_dynamic_stacks_faults - st.nr_dynamic_stacks_faults;
	return NULL;
}

static void seg_ensure_coro(void *arg)
{
	/* 2 MiB: a size class of its own, so a fresh segment with one page committed. */
	dynstack_call(2 * MIB, seg_ensure_fn, arg);
}

static void test_ensure_on_segment(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	struct seg_ensure_run r = { .rc = 1 };

	assert_int_equal(run_coro(seg_ensure_coro, &r, 16 * KIB, NULL), 0);
	assert_int_equal(r.rc, 0);
	assert_true(r.ensured >= 48 * KIB / page_size() - 1);
	assert_true(r.levels >=
		    10); /* it recursed: 40 KiB in frames of 400 B or less (4 KiB with ASan) */
	assert_int_equal(r.faults, 0);
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--thread-below-arena"))
		return thread_below_arena_main();
	if (argc == 2 && !strcmp(argv[1], "--cache-on"))
		return cache_on_main();
	if (argc == 2 && !strcmp(argv[1], "--fresh"))
		return fresh_main();
	if (argc == 2 && !strcmp(argv[1], "--gdb-segment-below"))
		return gdb_target_main(false);
	if (argc == 2 && !strcmp(argv[1], "--gdb-segment-above"))
		return gdb_target_main(true);
	if (argc == 2 && !strcmp(argv[1], "--yield-on-segment"))
		return yield_on_segment_main();
	if (argc > 1)
		return 64;

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_remaining_coroutine),
		cmocka_unit_test(test_remaining_main_thread),
		cmocka_unit_test(test_remaining_pthread),
		cmocka_unit_test(test_remaining_new_stack_same_slot),
		cmocka_unit_test(test_remaining_thread_below_arena),
		cmocka_unit_test(test_ensure_exact_pages),
		cmocka_unit_test(test_ensure_enospc),
		cmocka_unit_test(test_ensure_own_stack),
		cmocka_unit_test(test_ensure_on_segment),
		cmocka_unit_test(test_ensure_in_reserve),
		cmocka_unit_test(test_call_direct),
		cmocka_unit_test(test_call_segment),
		cmocka_unit_test(test_call_nested),
		cmocka_unit_test(test_call_main_thread),
		cmocka_unit_test(test_call_pthread),
		cmocka_unit_test(test_call_errno),
		cmocka_unit_test(test_call_hot_split),
		cmocka_unit_test(test_call_cache_on),
		cmocka_unit_test(test_call_fresh_process),
		cmocka_unit_test(test_call_backtrace),
		cmocka_unit_test(test_call_gdb_bt),
		cmocka_unit_test(test_call_gdb_bt_segment_above),
		cmocka_unit_test(test_call_overflow_report),
		cmocka_unit_test(test_call_null_fn),
		cmocka_unit_test(test_call_no_segment_aborts),
		cmocka_unit_test(test_segment_destroy_refused),
		cmocka_unit_test(test_yield_on_segment),
		cmocka_unit_test(test_destroy_coro_suspended_on_segment),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
