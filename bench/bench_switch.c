/* What a context switch costs: ds_ctx_switch there and back, next to glibc's swapcontext and to
 * the public coroutine API (dynstack_coro_resume + dynstack_coro_yield) on the same machine.
 * Each figure is the median of 7 runs; the three cases take turns so that they share the noise. */
#include <dynstack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>

#include "bench.h"

#include "ctx.h"

#define ROUNDS 7
#define STACK_SIZE (64 * 1024)
/* Pairs per run: ~10 ms each at the speeds DESIGN.md section 3 measured (a few ns for the
 * assembly switch, ~450 ns for swapcontext), long enough that the clock read vanishes. */
#define PAIRS_FAST (1L << 21)
#define PAIRS_SLOW (1L << 15)

static void *stack_new(void)
{
	void *p =
		mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("bench_switch: mmap");
		exit(1);
	}
	return p;
}

/* ---- ds_ctx_switch */
static ds_ctx_t ctx_main, ctx_co;

static void ctx_entry(void *arg)
{
	for (;;)
		ds_ctx_switch(&ctx_co, &ctx_main);
}

static double run_ctx(long pairs)
{
	double t0 = now_ns();

	for (long i = 0; i < pairs; i++)
		ds_ctx_switch(&ctx_main, &ctx_co);
	return (now_ns() - t0) / pairs;
}

/* ---- swapcontext */
static ucontext_t uc_main, uc_co;

static void uc_entry(void)
{
	for (;;)
		swapcontext(&uc_co, &uc_main);
}

static double run_uc(long pairs)
{
	double t0 = now_ns();

	for (long i = 0; i < pairs; i++)
		swapcontext(&uc_main, &uc_co);
	return (now_ns() - t0) / pairs;
}

/* ---- dynstack_coro_resume + dynstack_coro_yield */
static dynstack_coro_t *coro;

static void coro_entry(void *arg)
{
	for (;;)
		dynstack_coro_yield();
}

static double run_coro(long pairs)
{
	double t0 = now_ns();

	for (long i = 0; i < pairs; i++)
		dynstack_coro_resume(coro);
	return (now_ns() - t0) / pairs;
}

int main(void)
{
	double ctx_ns[ROUNDS], uc_ns[ROUNDS], coro_ns[ROUNDS];
	int rc;

	ds_ctx_make(&ctx_co, stack_new(), STACK_SIZE, ctx_entry, NULL);
	getcontext(&uc_co);
	uc_co.uc_stack.ss_sp = stack_new();
	uc_co.uc_stack.ss_size = STACK_SIZE;
	uc_co.uc_link = NULL;
	makecontext(&uc_co, uc_entry, 0);
	rc = dynstack_coro_create(&coro, coro_entry, NULL, NULL);
	if (rc) {
		fprintf(stderr, "bench_switch: dynstack_coro_create: %s\n", dynstack_strerror(rc));
		return 1;
	}

	/* Warm-up: the first switch into each context faults its stack in. */
	run_ctx(PAIRS_FAST / 16);
	run_uc(PAIRS_SLOW / 16);
	run_coro(PAIRS_FAST / 16);
	for (int r = 0; r < ROUNDS; r++) {
		ctx_ns[r] = run_ctx(PAIRS_FAST);
		uc_ns[r] = run_uc(PAIRS_SLOW);
		coro_ns[r] = run_coro(PAIRS_FAST);
	}

#if defined(DS_SWITCH_UCONTEXT)
	printf("# ds_ctx_switch: ucontext fallback (-Dswitch=ucontext)\n");
#else
	printf("# ds_ctx_switch: assembly\n");
#endif
	printf("# %d runs per figure, medians; a pair is one switch there and one back\n", ROUNDS);
	double ctx_med = median(ctx_ns, ROUNDS);
	double uc_med = median(uc_ns, ROUNDS);
	printf("switch_pair_ds_ctx %.1f ns/pair\n", ctx_med);
	printf("switch_pair_swapcontext %.1f ns/pair\n", uc_med);
	printf("switch_swapcontext_vs_ds_ctx %.1f x\n", uc_med / ctx_med);
	printf("switch_pair_coro_resume_yield %.1f ns/pair\n", median(coro_ns, ROUNDS));
	return 0;
}
