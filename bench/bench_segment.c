/* What the cooperative-stack calls cost (src/segment.c), each next to what it replaces, in one
 * run: dynstack_remaining; dynstack_ensure with nothing to commit; dynstack_ensure committing one page, against
 * taking the growth fault for that page; dynstack_call when it calls fn directly, against a plain
 * call through a pointer; and dynstack_call crossing to the segment the thread keeps, against
 * what Rust's stacker does on every crossing (mmap a stack and a guard page, switch with the
 * library's own ds_call_on_stack, munmap). Each figure is the median of ROUNDS runs; the cases
 * take turns within a round so that they share the noise. The stack cache is off, so that every
 * stack starts cold and "fresh page" means one. */
#include <dynstack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

/* src/arch/<cpu>/switch.S: run fn(arg) with the stack pointer at top, and come back. */
void *ds_call_on_stack(void *top, void *(*fn)(void *), void *arg);

#define ROUNDS 7
#define CALLS (1L << 24)     /* ensure no-op and calls: a few ns each, ~30 ms per run */
#define CROSSINGS (1L << 21) /* crossings to the kept segment: ~10 ns each */
#define MMAPS (1L << 12)     /* mmap + munmap crossings: several us each */
#define PAGES 1024	     /* pages committed per run, by ensure and by faults */
#define NEED (64 * 1024)     /* what the crossing calls ask for */

static size_t ps;

static void die(const char *what, int rc)
{
	fprintf(stderr, "bench_segment: %s: %s\n", what, dynstack_strerror(rc));
	exit(1);
}

/* Run fn(arg) on a new coroutine with a stack of size bytes, to its end. */
static void on_coro(void (*fn)(void *), void *arg, size_t size)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = size;
	if ((rc = dynstack_coro_create(&c, fn, arg, &attr)))
		die("dynstack_coro_create", rc);
	while (dynstack_coro_status(c) != DYNSTACK_CORO_DEAD)
		if ((rc = dynstack_coro_resume(c)))
			die("dynstack_coro_resume", rc);
	dynstack_coro_destroy(c);
}

static __attribute__((noinline)) void *ident(void *arg)
{
	__asm__ volatile("" ::: "memory");
	return arg;
}

static __attribute__((noinline)) void *ident_remaining(void *arg)
{
	return (char *)arg + (dynstack_remaining() == 0);
}

/* ---- one round: every figure once */

struct round {
	double remaining, ensure_noop, ensure_noop_own;
	double ensure_page, touch_after_ensure, fault_page, ensure_batch;
	double call_plain, call_direct;
	double cross, cross_remaining, cross_mmap;
	int bad;
};

static void ensure_noop_coro(void *arg)
{
	struct round *r = arg;
	int sum = 0;
	size_t rem = 0;

	if (dynstack_ensure(8 * 1024))
		r->bad = 1;
	double t0 = now_ns();
	for (long i = 0; i < CALLS; i++)
		sum += dynstack_ensure(8 * 1024);
	double t1 = now_ns();
	for (long i = 0; i < CALLS; i++)
		rem += dynstack_remaining() < 8 * 1024;
	r->ensure_noop = (t1 - t0) / CALLS;
	r->remaining = (now_ns() - t1) / CALLS;
	r->bad |= sum != 0 || rem != 0;
}

/* Commit PAGES pages one ensure call each, then touch them (the kernel's demand-zero fault
 * still comes on first touch), then touch PAGES further pages with no ensure: each is a growth
 * fault (signal, commit, retry). Last, PAGES more pages in a single ensure call. */
static void ensure_page_coro(void *arg)
{
	struct round *r = arg;
	dynstack_t *s = dynstack_coro_stack(dynstack_coro_current());
	uintptr_t top = (uintptr_t)dynstack_top(s);
	volatile char mark = 0;
	uintptr_t local = (uintptr_t)&mark;
	int sum = 0;

	/* The calls below this frame never leave the pages committed now. */
	if (dynstack_ensure(4 * ps))
		r->bad = 1;
	uintptr_t e0 = top - dynstack_committed(s);
	double t0 = now_ns();
	for (size_t i = 1; i <= PAGES; i++)
		sum += dynstack_ensure(local - (e0 - i * ps) - ps / 2);
	double t1 = now_ns();
	for (size_t i = 1; i <= PAGES; i++)
		*(volatile char *)(e0 - i * ps) = 1;
	double t2 = now_ns();
	uintptr_t e1 = e0 - PAGES * ps;
	for (size_t i = 1; i <= PAGES; i++)
		*(volatile char *)(e1 - i * ps) = 1;
	double t3 = now_ns();
	uintptr_t e2 = e1 - PAGES * ps;
	sum += dynstack_ensure(local - (e2 - PAGES * ps) - ps / 2);
	double t4 = now_ns();
	if (top - dynstack_committed(s) != e2 - PAGES * ps)
		r->bad = 1;
	r->ensure_page = (t1 - t0) / PAGES;
	r->touch_after_ensure = (t2 - t1) / PAGES;
	r->fault_page = (t3 - t2) / PAGES;
	r->ensure_batch = t4 - t3;
	r->bad |= sum != 0;
}

static void calls_coro(void *arg)
{
	struct round *r = arg;
	void *(*volatile fp)(void *) = ident;
	uintptr_t sum = 0;

	double t0 = now_ns();
	for (long i = 0; i < CALLS; i++)
		sum += (uintptr_t)fp((void *)i);
	double t1 = now_ns();
	for (long i = 0; i < CALLS; i++)
		sum -= (uintptr_t)dynstack_call(1024, ident, (void *)i);
	double t2 = now_ns();
	r->call_plain = (t1 - t0) / CALLS;
	r->call_direct = (t2 - t1) / CALLS;
	r->bad |= sum != 0;
}

/* Rust's stacker, per crossing: a fresh mapping with a PROT_NONE guard page at its bottom. */
static void *cross_mmap(size_t size, void *(*fn)(void *), void *arg)
{
	char *p = mmap(NULL, size + ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED || mprotect(p, ps, PROT_NONE)) {
		perror("bench_segment: mmap");
		exit(1);
	}
	void *ret = ds_call_on_stack(p + ps + size, fn, arg);
	munmap(p, size + ps);
	return ret;
}

/* The size of the segment dynstack_call takes for NEED: NEED plus a 16 KiB margin, rounded up
 * to a power of two (src/segment.c). The mmap case uses the same. */
static size_t segment_size(void)
{
	size_t size = 16 * 1024;

	while (size < NEED + 16 * 1024)
		size <<= 1;
	return size;
}

static void cross_coro(void *arg)
{
	struct round *r = arg;
	uintptr_t sum = 0;

	if (dynstack_remaining() >= NEED)
		r->bad = 1;		  /* every call below must cross */
	dynstack_call(NEED, ident, NULL); /* the kept segment exists from here on */
	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	uint64_t created = st.nr_dynamic_stacks_created;
	double t0 = now_ns();
	for (long i = 0; i < CROSSINGS; i++)
		sum += (uintptr_t)dynstack_call(NEED, ident, (void *)i);
	double t1 = now_ns();
	for (long i = 0; i < CROSSINGS; i++)
		sum -= (uintptr_t)dynstack_call(NEED, ident_remaining, (void *)i);
	double t2 = now_ns();
	for (long i = 0; i < MMAPS; i++)
		sum += (uintptr_t)cross_mmap(segment_size(), ident, (void *)i);
	double t3 = now_ns();
	for (long i = 0; i < MMAPS; i++)
		sum -= (uintptr_t)cross_mmap(segment_size(), ident, (void *)i);
	dynstack_stats_get(&st);
	r->cross = (t1 - t0) / CROSSINGS;
	r->cross_remaining = (t2 - t1) / CROSSINGS;
	r->cross_mmap = (t3 - t2) / MMAPS;
	r->bad |= sum != 0 || st.nr_dynamic_stacks_created != created;
}

static void run_round(struct round *r)
{
	int sum = 0;

	on_coro(ensure_noop_coro, r, 64 * 1024);
	double t0 = now_ns();
	for (long i = 0; i < CALLS; i++)
		sum += dynstack_ensure(8 * 1024);
	r->ensure_noop_own = (now_ns() - t0) / CALLS;
	r->bad |= sum != 0;
	on_coro(ensure_page_coro, r, (3 * PAGES + 64) * ps);
	on_coro(calls_coro, r, 64 * 1024);
	on_coro(cross_coro, r, 16 * 1024);
}

#define FIGURE(field)                                                                              \
	({                                                                                         \
		double v_[ROUNDS];                                                                 \
		for (int i_ = 0; i_ < ROUNDS; i_++)                                                \
			v_[i_] = rounds[i_].field;                                                 \
		median(v_, ROUNDS);                                                                \
	})

int main(void)
{
	dynstack_config_t cfg;
	struct round rounds[ROUNDS], warm;
	int rc;

	ps = (size_t)sysconf(_SC_PAGESIZE);
	dynstack_config_init(&cfg);
	cfg.cache_stacks = 0;
	if ((rc = dynstack_init(&cfg)))
		die("dynstack_init", rc);
	memset(&warm, 0, sizeof(warm));
	run_round(&warm); /* code paged in, PLT bound, arenas reserved, the kept segment made */
	memset(rounds, 0, sizeof(rounds));
	for (int i = 0; i < ROUNDS; i++) {
		run_round(&rounds[i]);
		if (rounds[i].bad) {
			fprintf(stderr, "bench_segment: a run did not do what it measures\n");
			return 1;
		}
	}

	printf("# backend %s, %zu-byte pages, stack cache off; %d runs per figure, medians\n",
	       dynstack_backend_name(), ps, ROUNDS);
	printf("# ensure: %d pages per run; crossings: need %d bytes from a 16 KiB coroutine, "
	       "segment of %zu bytes\n",
	       PAGES, NEED, segment_size());
	double remaining = FIGURE(remaining);
	double noop = FIGURE(ensure_noop), noop_own = FIGURE(ensure_noop_own);
	double page = FIGURE(ensure_page), touch = FIGURE(touch_after_ensure);
	double fault = FIGURE(fault_page), batch = FIGURE(ensure_batch);
	double plain = FIGURE(call_plain), direct = FIGURE(call_direct);
	double cross = FIGURE(cross), cross_rem = FIGURE(cross_remaining);
	double cross_mmap_ns = FIGURE(cross_mmap);
	printf("remaining %.2f ns\n", remaining);
	printf("ensure_noop %.2f ns\n", noop);
	printf("ensure_noop_own_stack %.2f ns\n", noop_own);
	printf("ensure_commit_1page %.0f ns\n", page);
	printf("ensure_commit_1page_then_touch %.0f ns\n", page + touch);
	printf("fault_1page %.0f ns\n", fault);
	printf("fault_vs_ensure_then_touch %.2f x\n", fault / (page + touch));
	printf("ensure_commit_%dpages_one_call %.0f ns\n", PAGES, batch);
	printf("ensure_commit_%dpages_one_call_per_page %.1f ns\n", PAGES, batch / PAGES);
	printf("call_plain %.2f ns\n", plain);
	printf("call_dynstack_direct %.2f ns\n", direct);
	printf("call_dynstack_direct_overhead %.2f ns\n", direct - plain);
	printf("cross_kept_segment %.1f ns\n", cross);
	printf("cross_kept_segment_fn_asks_remaining %.1f ns\n", cross_rem);
	printf("cross_mmap_guard_munmap %.0f ns\n", cross_mmap_ns);
	printf("cross_mmap_vs_kept_segment %.0f x\n", cross_mmap_ns / cross);
	return 0;
}
