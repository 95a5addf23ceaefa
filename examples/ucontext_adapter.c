/* POSIX ucontext on a libdynstack stack: makecontext gets the whole reservation as uc_stack and
 * swapcontext switches to it; the library is never told about the switch. A deep recursion
 * grows the stack by faults while it runs, suspended twice on the way. Self-checking: exits 1
 * if the result is wrong or the stack did not grow as expected. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <dynstack.h>

#define STACK_SIZE (1024 * 1024)
#define LEVELS 256 /* 1 KiB frames: 256 KiB deep */

static ucontext_t main_ctx, task_ctx;
static uint64_t result;

static void suspend(void)
{
	swapcontext(&task_ctx, &main_ctx);
}

/* 1 KiB of stack per level, every byte written and read back. */
static uint64_t dig(int level)
{
	volatile unsigned char frame[1000];
	for (unsigned i = 0; i < sizeof(frame); i++)
		frame[i] = (unsigned char)(level + i);
	if (level == LEVELS / 2 || level == LEVELS - 1)
		suspend();
	uint64_t below = level + 1 < LEVELS ? dig(level + 1) : 0;
	uint64_t sum = 0;
	for (unsigned i = 0; i < sizeof(frame); i++)
		sum += frame[i];
	return below + sum;
}

static void task(void)
{
	result = dig(0);
	/* Returning switches to uc_link (main_ctx). */
}

static int fail(const char *what)
{
	fprintf(stderr, "ucontext_adapter: %s\n", what);
	return 1;
}

int main(void)
{
	dynstack_attr_t attr;
	dynstack_t *stack;
	size_t committed[3];
	int rc;

	/* Our stacks are entered by swapcontext, not by the library: this thread needs its
	 * sync stack before the first switch (dynstack_create would also set it up). */
	if ((rc = dynstack_thread_init())) {
		fprintf(stderr, "dynstack_thread_init: %s\n", dynstack_strerror(rc));
		return 1;
	}
	dynstack_attr_init(&attr);
	attr.size = STACK_SIZE;
	attr.name = "ucontext";
	if ((rc = dynstack_create(&stack, &attr))) {
		fprintf(stderr, "dynstack_create: %s\n", dynstack_strerror(rc));
		return 1;
	}

	if (getcontext(&task_ctx))
		return fail("getcontext failed");
	/* uc_stack describes the whole usable reservation: makecontext puts the first frame at
	 * ss_sp + ss_size, the top of the stack, in its committed page. */
	task_ctx.uc_stack.ss_sp = (char *)dynstack_top(stack) - dynstack_size(stack);
	task_ctx.uc_stack.ss_size = dynstack_size(stack);
	task_ctx.uc_link = &main_ctx;
	makecontext(&task_ctx, task, 0);

	committed[0] = dynstack_committed(stack);
	swapcontext(&main_ctx, &task_ctx); /* runs to LEVELS / 2 */
	committed[1] = dynstack_committed(stack);
	swapcontext(&main_ctx, &task_ctx); /* runs to the bottom */
	committed[2] = dynstack_committed(stack);
	swapcontext(&main_ctx, &task_ctx); /* unwinds and returns */

	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	uint64_t want = 0;
	for (int level = 0; level < LEVELS; level++)
		for (unsigned i = 0; i < 1000; i++)
			want += (unsigned char)(level + i);
	printf("ucontext on a %d KiB dynamic stack (backend %s): committed %zu KiB at the start, "
	       "%zu KiB halfway, %zu KiB at the bottom; peak %zu KiB; %llu growth faults\n",
	       STACK_SIZE / 1024, dynstack_backend_name(), committed[0] / 1024, committed[1] / 1024,
	       committed[2] / 1024, dynstack_peak(stack) / 1024,
	       (unsigned long long)st.nr_dynamic_stacks_faults);
	if (result != want)
		return fail("wrong result");
	if (st.nr_dynamic_stacks_overflows != 0)
		return fail("an overflow was counted");
	/* Under Valgrind the library commits every stack whole at creation (docs/design.md,
	 * Valgrind): nothing grows, and only the result is checked. */
	if (committed[0] == dynstack_size(stack)) {
		printf("committed whole at creation (Valgrind): growth not checked\n");
	} else {
		if (!(committed[0] < committed[1] && committed[1] < committed[2]))
			return fail("the stack did not grow");
		if (committed[2] < LEVELS * 1000 || committed[2] >= STACK_SIZE / 2)
			return fail("the stack did not grow to the recursion's depth");
		if (st.nr_dynamic_stacks_faults == 0)
			return fail("no growth fault was counted");
	}
	if ((rc = dynstack_destroy(stack)))
		return fail(dynstack_strerror(rc));
	printf("ucontext_adapter: OK\n");
	return 0;
}
