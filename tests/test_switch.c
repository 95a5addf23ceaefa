/* Tests of the context switch alone (src/ctx.h): ds_ctx_make and ds_ctx_switch
 * on plain mmap'd stacks, with no other part of the library. Coroutines never
 * assert (a CMocka failure longjmps, which must not leave their stack): they
 * record what they see, and the test body on the main stack checks it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <unwind.h>

#include "ctx.h"
#include "helpers.h"
#if DS_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

#define STACK_SIZE (256 * 1024)

/* A stack with a PROT_NONE page on both sides: an overrun below faults, and
 * so does an unwinder that walks past the top instead of stopping. */
struct stack {
	char *map;
	size_t maplen;
	void *lo;
	unsigned vg_id; /* Valgrind's id for it, + 1 (0: not registered) */
};

static void stack_new(struct stack *s)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	s->maplen = STACK_SIZE + 2 * pg;
	s->map = mmap(NULL, s->maplen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(s->map != MAP_FAILED);
	s->lo = s->map + pg;
	assert_int_equal(mprotect(s->lo, STACK_SIZE, PROT_READ | PROT_WRITE), 0);
	/* Valgrind takes a move of the stack pointer into memory it does not
	 * know as a stack for a huge frame, and reports the other side's
	 * frames as uninitialised: tell it, as the library does for its own. */
	s->vg_id = 0;
#if DS_HAVE_VALGRIND_H
	if (RUNNING_ON_VALGRIND)
		s->vg_id = VALGRIND_STACK_REGISTER(s->lo, (char *)s->lo + STACK_SIZE) + 1;
#endif
}

static void stack_free(struct stack *s)
{
#if DS_HAVE_VALGRIND_H
	if (s->vg_id)
		VALGRIND_STACK_DEREGISTER(s->vg_id - 1);
#endif
	assert_int_equal(munmap(s->map, s->maplen), 0);
}

static uintptr_t stack_top(const struct stack *s)
{
	return (uintptr_t)s->lo + STACK_SIZE;
}

/* ---- ping-pong: values go both ways through memory, many times */

struct pingpong {
	ds_ctx_t main, co;
	long in, out;
	long rounds;
	void *arg_seen;
};

static void pingpong_entry(void *arg)
{
	struct pingpong *pp = arg;

	pp->arg_seen = arg;
	for (;;) {
		pp->out = pp->in * 3 + 1;
		pp->rounds++;
		ds_ctx_switch(&pp->co, &pp->main);
	}
}

static void test_ping_pong(void **state)
{
	struct stack st;
	struct pingpong pp = { 0 };
	const long n = 100000;

	stack_new(&st);
	ds_ctx_make(&pp.co, st.lo, STACK_SIZE, pingpong_entry, &pp);
	for (long i = 0; i < n; i++) {
		pp.in = i;
		ds_ctx_switch(&pp.main, &pp.co);
		if (pp.out != i * 3 + 1)
			fail_msg("round %ld: got %ld, want %ld", i, pp.out, i * 3 + 1);
	}
	assert_ptr_equal(pp.arg_seen, &pp);
	assert_int_equal(pp.rounds, n);
	stack_free(&st);
}

/* ---- ds_ctx_make writes only the top of the stack (a grow-on-fault stack
 * has only its top page committed when it is made) */

static void test_make_touches_only_top(void **state)
{
	struct stack st;
	struct pingpong pp = { 0 };
	unsigned char *lo;
	size_t lowest = STACK_SIZE;

	stack_new(&st);
	lo = st.lo;
	memset(lo, 0xa5, STACK_SIZE);
	ds_ctx_make(&pp.co, st.lo, STACK_SIZE, pingpong_entry, &pp);
	for (size_t i = 0; i < STACK_SIZE; i++) {
		if (lo[i] != 0xa5) {
			lowest = i;
			break;
		}
	}
	assert_true(lowest < STACK_SIZE); /* it did write its frame */
	assert_true(STACK_SIZE - lowest <= 512);
	stack_free(&st);
}

/* ---- callee-saved registers survive a switch, exactly. Two helpers written
 * in assembly (the only way to know which register holds what): probe_switch
 * loads a known pattern into every callee-saved register, switches, and
 * stores what the registers hold when it is switched back to;
 * garbage_switch switches away with garbage in all of them. Both save and
 * restore the caller's registers themselves, as the ABI asks. */

#if defined(__x86_64__)

/* rbx rbp r12 r13 r14 r15 */
#define NSAVED 6
#define PATTERN(i) (0x5a5a5a5a5a5a5a01 + (uint64_t)(i))
__asm__(".text\n"
	".p2align 4\n"
	".globl probe_switch\n"
	".hidden probe_switch\n"
	".type probe_switch, @function\n"
	"probe_switch:\n"
	"	pushq %rbp\n"
	"	pushq %rbx\n"
	"	pushq %r12\n"
	"	pushq %r13\n"
	"	pushq %r14\n"
	"	pushq %r15\n"
	"	pushq %rdx\n" /* out; also makes rsp 16-byte aligned for the call */
	"	movabsq $0x5a5a5a5a5a5a5a01, %rbx\n"
	"	movabsq $0x5a5a5a5a5a5a5a02, %rbp\n"
	"	movabsq $0x5a5a5a5a5a5a5a03, %r12\n"
	"	movabsq $0x5a5a5a5a5a5a5a04, %r13\n"
	"	movabsq $0x5a5a5a5a5a5a5a05, %r14\n"
	"	movabsq $0x5a5a5a5a5a5a5a06, %r15\n"
	"	xorl %edx, %edx\n" /* no publish */
	"	call ds_ctx_switch_publish\n"
	"	popq %rax\n"
	"	movq %rbx, 0(%rax)\n"
	"	movq %rbp, 8(%rax)\n"
	"	movq %r12, 16(%rax)\n"
	"	movq %r13, 24(%rax)\n"
	"	movq %r14, 32(%rax)\n"
	"	movq %r15, 40(%rax)\n"
	"	popq %r15\n"
	"	popq %r14\n"
	"	popq %r13\n"
	"	popq %r12\n"
	"	popq %rbx\n"
	"	popq %rbp\n"
	"	ret\n"
	".size probe_switch, .-probe_switch\n"
	"\n"
	".p2align 4\n"
	".globl garbage_switch\n"
	".hidden garbage_switch\n"
	".type garbage_switch, @function\n"
	"garbage_switch:\n"
	"	pushq %rbp\n"
	"	pushq %rbx\n"
	"	pushq %r12\n"
	"	pushq %r13\n"
	"	pushq %r14\n"
	"	pushq %r15\n"
	"	subq $8, %rsp\n"
	"	movq $-1, %rbx\n"
	"	movq $-1, %rbp\n"
	"	movq $-1, %r12\n"
	"	movq $-1, %r13\n"
	"	movq $-1, %r14\n"
	"	movq $-1, %r15\n"
	"	xorl %edx, %edx\n" /* no publish */
	"	call ds_ctx_switch_publish\n"
	"	addq $8, %rsp\n"
	"	popq %r15\n"
	"	popq %r14\n"
	"	popq %r13\n"
	"	popq %r12\n"
	"	popq %rbx\n"
	"	popq %rbp\n"
	"	ret\n"
	".size garbage_switch, .-garbage_switch\n");

#elif defined(__aarch64__)

/* x19..x29, then d8..d15 */
#define NSAVED 19
#define PATTERN(i) (0x5a5a000000000001 + (uint64_t)(i))
__asm__(".text\n"
	".p2align 4\n"
	".globl probe_switch\n"
	".hidden probe_switch\n"
	".type probe_switch, %function\n"
	"probe_switch:\n"
	"	stp x29, x30, [sp, #-176]!\n"
	"	stp x19, x20, [sp, #16]\n"
	"	stp x21, x22, [sp, #32]\n"
	"	stp x23, x24, [sp, #48]\n"
	"	stp x25, x26, [sp, #64]\n"
	"	stp x27, x28, [sp, #80]\n"
	"	stp d8, d9, [sp, #96]\n"
	"	stp d10, d11, [sp, #112]\n"
	"	stp d12, d13, [sp, #128]\n"
	"	stp d14, d15, [sp, #144]\n"
	"	str x2, [sp, #160]\n"
	"	mov x19, #1\n"
	"	movk x19, #0x5a5a, lsl #48\n"
	"	mov x20, #2\n"
	"	movk x20, #0x5a5a, lsl #48\n"
	"	mov x21, #3\n"
	"	movk x21, #0x5a5a, lsl #48\n"
	"	mov x22, #4\n"
	"	movk x22, #0x5a5a, lsl #48\n"
	"	mov x23, #5\n"
	"	movk x23, #0x5a5a, lsl #48\n"
	"	mov x24, #6\n"
	"	movk x24, #0x5a5a, lsl #48\n"
	"	mov x25, #7\n"
	"	movk x25, #0x5a5a, lsl #48\n"
	"	mov x26, #8\n"
	"	movk x26, #0x5a5a, lsl #48\n"
	"	mov x27, #9\n"
	"	movk x27, #0x5a5a, lsl #48\n"
	"	mov x28, #10\n"
	"	movk x28, #0x5a5a, lsl #48\n"
	"	mov x29, #11\n"
	"	movk x29, #0x5a5a, lsl #48\n"
	"	mov x9, #12\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d8, x9\n"
	"	mov x9, #13\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d9, x9\n"
	"	mov x9, #14\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d10, x9\n"
	"	mov x9, #15\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d11, x9\n"
	"	mov x9, #16\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d12, x9\n"
	"	mov x9, #17\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d13, x9\n"
	"	mov x9, #18\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d14, x9\n"
	"	mov x9, #19\n"
	"	movk x9, #0x5a5a, lsl #48\n"
	"	fmov d15, x9\n"
	"	mov x2, xzr\n" /* no publish */
	"	bl ds_ctx_switch_publish\n"
	"	ldr x9, [sp, #160]\n"
	"	stp x19, x20, [x9, #0]\n"
	"	stp x21, x22, [x9, #16]\n"
	"	stp x23, x24, [x9, #32]\n"
	"	stp x25, x26, [x9, #48]\n"
	"	stp x27, x28, [x9, #64]\n"
	"	str x29, [x9, #80]\n"
	"	stp d8, d9, [x9, #88]\n"
	"	stp d10, d11, [x9, #104]\n"
	"	stp d12, d13, [x9, #120]\n"
	"	stp d14, d15, [x9, #136]\n"
	"	ldp x19, x20, [sp, #16]\n"
	"	ldp x21, x22, [sp, #32]\n"
	"	ldp x23, x24, [sp, #48]\n"
	"	ldp x25, x26, [sp, #64]\n"
	"	ldp x27, x28, [sp, #80]\n"
	"	ldp d8, d9, [sp, #96]\n"
	"	ldp d10, d11, [sp, #112]\n"
	"	ldp d12, d13, [sp, #128]\n"
	"	ldp d14, d15, [sp, #144]\n"
	"	ldp x29, x30, [sp], #176\n"
	"	ret\n"
	".size probe_switch, .-probe_switch\n"
	".p2align 4\n"
	".globl garbage_switch\n"
	".hidden garbage_switch\n"
	".type garbage_switch, %function\n"
	"garbage_switch:\n"
	"	stp x29, x30, [sp, #-176]!\n"
	"	stp x19, x20, [sp, #16]\n"
	"	stp x21, x22, [sp, #32]\n"
	"	stp x23, x24, [sp, #48]\n"
	"	stp x25, x26, [sp, #64]\n"
	"	stp x27, x28, [sp, #80]\n"
	"	stp d8, d9, [sp, #96]\n"
	"	stp d10, d11, [sp, #112]\n"
	"	stp d12, d13, [sp, #128]\n"
	"	stp d14, d15, [sp, #144]\n"
	"	mov x19, #-1\n"
	"	mov x20, #-1\n"
	"	mov x21, #-1\n"
	"	mov x22, #-1\n"
	"	mov x23, #-1\n"
	"	mov x24, #-1\n"
	"	mov x25, #-1\n"
	"	mov x26, #-1\n"
	"	mov x27, #-1\n"
	"	mov x28, #-1\n"
	"	mov x29, #-1\n"
	"	movi d8, #0xffffffffffffffff\n"
	"	movi d9, #0xffffffffffffffff\n"
	"	movi d10, #0xffffffffffffffff\n"
	"	movi d11, #0xffffffffffffffff\n"
	"	movi d12, #0xffffffffffffffff\n"
	"	movi d13, #0xffffffffffffffff\n"
	"	movi d14, #0xffffffffffffffff\n"
	"	movi d15, #0xffffffffffffffff\n"
	"	mov x2, xzr\n" /* no publish */
	"	bl ds_ctx_switch_publish\n"
	"	ldp x19, x20, [sp, #16]\n"
	"	ldp x21, x22, [sp, #32]\n"
	"	ldp x23, x24, [sp, #48]\n"
	"	ldp x25, x26, [sp, #64]\n"
	"	ldp x27, x28, [sp, #80]\n"
	"	ldp d8, d9, [sp, #96]\n"
	"	ldp d10, d11, [sp, #112]\n"
	"	ldp d12, d13, [sp, #128]\n"
	"	ldp d14, d15, [sp, #144]\n"
	"	ldp x29, x30, [sp], #176\n"
	"	ret\n"
	".size garbage_switch, .-garbage_switch\n");

#endif

#ifdef NSAVED
void probe_switch(ds_ctx_t *from, ds_ctx_t *to, uint64_t out[NSAVED])
	__attribute__((visibility("hidden")));
void garbage_switch(ds_ctx_t *from, ds_ctx_t *to) __attribute__((visibility("hidden")));
#define SWITCH_BACK garbage_switch
#else
/* No assembly helper for this CPU: the live-locals test still runs. */
#define SWITCH_BACK ds_ctx_switch
#endif

struct clobber {
	ds_ctx_t main, co;
	long rounds;
};

static void clobber_entry(void *arg)
{
	struct clobber *c = arg;

	for (;;) {
		c->rounds++;
		SWITCH_BACK(&c->co, &c->main);
	}
}

static void test_callee_saved_exact(void **state)
{
#ifdef NSAVED
	struct stack st;
	struct clobber c = { 0 };
	uint64_t got[NSAVED];

	stack_new(&st);
	ds_ctx_make(&c.co, st.lo, STACK_SIZE, clobber_entry, &c);
	for (int round = 0; round < 3; round++) {
		memset(got, 0, sizeof(got));
		probe_switch(&c.main, &c.co, got);
		for (int i = 0; i < NSAVED; i++) {
			if (got[i] != PATTERN(i))
				fail_msg("round %d: callee-saved register #%d is %#llx", round, i,
					 (unsigned long long)got[i]);
		}
	}
	assert_int_equal(c.rounds, 3);
	stack_free(&st);
#else
	print_message("no register probe for this CPU\n");
	skip();
#endif
}

/* Many integer and floating-point locals live across the switch: the
 * compiler keeps what it can in callee-saved registers (d8-d15 too on
 * aarch64), the rest in this frame; the other side trashes the registers. */
static void test_callee_saved_live_locals(void **state)
{
	struct stack st;
	struct clobber c = { 0 };
	volatile long seed = 7;
	volatile double fseed = 1.25;
	const int rounds = 1000;

	stack_new(&st);
	ds_ctx_make(&c.co, st.lo, STACK_SIZE, clobber_entry, &c);

	long a0 = seed, a1 = seed * 2, a2 = seed * 3, a3 = seed * 4, a4 = seed * 5, a5 = seed * 6;
	long a6 = seed * 7, a7 = seed * 8, a8 = seed * 9, a9 = seed * 10, a10 = seed * 11;
	long a11 = seed * 12;
	double f0 = fseed, f1 = fseed * 2, f2 = fseed * 3, f3 = fseed * 4, f4 = fseed * 5;
	double f5 = fseed * 6, f6 = fseed * 7, f7 = fseed * 8, f8 = fseed * 9, f9 = fseed * 10;

	for (int r = 0; r < rounds; r++) {
		ds_ctx_switch(&c.main, &c.co);
		a0 += 1, a1 += 2, a2 += 3, a3 += 4, a4 += 5, a5 += 6;
		a6 += 7, a7 += 8, a8 += 9, a9 += 10, a10 += 11, a11 += 12;
		f0 += 0.5, f1 += 0.5, f2 += 0.5, f3 += 0.5, f4 += 0.5;
		f5 += 0.5, f6 += 0.5, f7 += 0.5, f8 += 0.5, f9 += 0.5;
	}

	long ints[] = { a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11 };
	double fps[] = { f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 };
	for (int i = 0; i < 12; i++)
		assert_int_equal(ints[i], 7 * (i + 1) + rounds * (i + 1));
	for (int i = 0; i < 10; i++)
		assert_true(fps[i] == 1.25 * (i + 1) + rounds * 0.5);
	assert_int_equal(c.rounds, rounds);
	stack_free(&st);
}

/* ---- the entry starts on a 16-byte aligned stack, at the top of its stack */

struct align {
	ds_ctx_t main, co;
	uintptr_t frame, local;
};

static __attribute__((noinline)) void note_aligned_local(uintptr_t *out)
{
	_Alignas(16) volatile char buf[16];

	buf[0] = 1;
	*out = (uintptr_t)buf;
}

static void align_entry(void *arg)
{
	struct align *a = arg;

	/* gcc sets up a frame pointer for this: on x86-64 it is the entry rsp
	 * minus 8, which the ABI makes 16-byte aligned (rsp + 8 is, at entry). */
	a->frame = (uintptr_t)__builtin_frame_address(0);
	note_aligned_local(&a->local);
	ds_ctx_switch(&a->co, &a->main);
}

static void test_entry_alignment(void **state)
{
	struct stack st;
	struct align a = { 0 };

	stack_new(&st);
	ds_ctx_make(&a.co, st.lo, STACK_SIZE, align_entry, &a);
	ds_ctx_switch(&a.main, &a.co);
	assert_int_equal(a.frame % 16, 0);
	assert_int_equal(a.local % 16, 0);
	assert_true(a.frame < stack_top(&st) && a.frame >= stack_top(&st) - 1024);
	assert_true(a.local < a.frame && a.local >= (uintptr_t)st.lo);
	stack_free(&st);
}

/* ---- A switches to B switches to C and back, also across a level */

struct nest {
	ds_ctx_t a, b, c;
	char log[16];
	int n;
	int bad; /* a stack-local value of B or C that did not survive */
};

static void nest_log(struct nest *n, char who)
{
	if (n->n < (int)sizeof(n->log) - 1)
		n->log[n->n++] = who;
}

static void nest_b(void *arg)
{
	struct nest *n = arg;
	volatile long mine = 0xb0b;

	nest_log(n, 'B');
	ds_ctx_switch(&n->b, &n->c);
	n->bad |= mine != 0xb0b;
	nest_log(n, 'B');
	ds_ctx_switch(&n->b, &n->a);
	n->bad |= mine != 0xb0b;
	nest_log(n, 'B');
	ds_ctx_switch(&n->b, &n->c);
	n->bad = 1; /* never resumed */
	ds_ctx_switch(&n->b, &n->a);
}

static void nest_c(void *arg)
{
	struct nest *n = arg;
	volatile long mine = 0xc0c;

	nest_log(n, 'C');
	ds_ctx_switch(&n->c, &n->b);
	n->bad |= mine != 0xc0c;
	nest_log(n, 'C');
	ds_ctx_switch(&n->c, &n->a); /* straight back to A, past B */
	n->bad |= mine != 0xc0c;
	nest_log(n, 'C');
	ds_ctx_switch(&n->c, &n->a);
	n->bad = 1; /* never resumed */
	ds_ctx_switch(&n->c, &n->a);
}

static void test_nested(void **state)
{
	struct stack sb, sc;
	struct nest n = { 0 };

	stack_new(&sb);
	stack_new(&sc);
	ds_ctx_make(&n.b, sb.lo, STACK_SIZE, nest_b, &n);
	ds_ctx_make(&n.c, sc.lo, STACK_SIZE, nest_c, &n);
	nest_log(&n, 'A');
	ds_ctx_switch(&n.a, &n.b); /* B, C, B */
	nest_log(&n, 'A');
	ds_ctx_switch(&n.a, &n.c); /* C */
	nest_log(&n, 'A');
	ds_ctx_switch(&n.a, &n.b); /* B, C */
	nest_log(&n, 'A');
	assert_string_equal(n.log, "ABCBACABCA");
	assert_int_equal(n.bad, 0);
	stack_free(&sb);
	stack_free(&sc);
}

/* ---- a context suspended with a publish on one thread and resumed on
 * another, as a runtime migrating coroutines does: the publish word is the
 * hand-off. Round i runs the context on thread i % 2: that thread waits for
 * the context's publish of i (acquire), switches to it publishing that its
 * own context is saved and passing a return value, and gets one back.
 *
 * The ucontext switch once kept the deferred publish in thread-local
 * variables whose address the compiler held across swapcontext: the context
 * resumed on thread B then made thread A's store (or none) and returned A's
 * value, and B's own store was lost. Only the 70 s stress suite saw it. */

#define MIGRATE_IDLE (-1) /* a publish word that has been taken */
#define RESUME_RET(i) ((int)(i)*2 + 1000001)
#define YIELD_RET(i) ((int)(i)*2 + 2000002)

struct migrate {
	ds_ctx_t home[2], co;
	long rounds;
	/* The context's publish: the round that may resume it now. */
	_Atomic int turn;
	/* Each thread's publish as it switches to the context: the round it
	 * resumes it for, so its own context is saved. */
	_Atomic int saved[2];
	atomic_bool stop;
	atomic_int errors;
	char first_error[160];
};

static void migrate_error(struct migrate *m, const char *fmt, ...)
{
	va_list ap;

	if (atomic_fetch_add(&m->errors, 1) == 0) {
		va_start(ap, fmt);
		vsnprintf(m->first_error, sizeof(m->first_error), fmt, ap);
		va_end(ap);
	}
	atomic_store(&m->stop, true);
}

/* Waits for the context's publish of round want and takes it. Until then the
 * word holds nothing (taken) or the other thread's round, which that thread
 * takes: any other value is a publish made twice, late or wrong. Waits at
 * most 5 s. */
static bool migrate_take_turn(struct migrate *m, int want)
{
	struct timespec start, now;
	int v;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (unsigned spin = 1;; spin++) {
		v = atomic_load_explicit(&m->turn, memory_order_acquire);
		if (v == want)
			break;
		if (v != MIGRATE_IDLE && v != want - 1) {
			migrate_error(m, "round %d: the context's publish word holds %d", want, v);
			return false;
		}
		if (atomic_load_explicit(&m->stop, memory_order_relaxed))
			return false;
		if (spin % 64 == 0)
			sched_yield(); /* two threads may share one CPU (or Valgrind's lock) */
		if (spin % 4096 == 0) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (now.tv_sec - start.tv_sec > 5) {
				migrate_error(m, "round %d: the context's publish never landed",
					      want);
				return false;
			}
		}
	}
	v = atomic_exchange_explicit(&m->turn, MIGRATE_IDLE, memory_order_acquire);
	if (v != want) {
		migrate_error(m, "round %d: the context's publish word changed to %d", want, v);
		return false;
	}
	return true;
}

/* Runs on whichever thread resumed it; never asserts (see the top). */
static void migrate_entry(void *arg)
{
	struct migrate *m = arg;
	/* On this stack: it must travel with the context, and a resume from a
	 * context saved before the last round would show an old value. */
	volatile long count = 0;
	volatile uint64_t sum = 0;
	uint64_t want_sum = 0;
	int ret = RESUME_RET(0);

	for (long i = 0;; i++) {
		int t = (int)(i % 2);

		if (ret != RESUME_RET(i))
			migrate_error(m, "round %ld: the context's switch returned %d, want %d", i,
				      ret, RESUME_RET(i));
		/* Made on arrival, before the switch returned to us. */
		if (atomic_exchange_explicit(&m->saved[t], MIGRATE_IDLE, memory_order_acquire) != i)
			migrate_error(m, "round %ld: thread %d's publish did not land once", i, t);
		if (count != i || sum != want_sum)
			migrate_error(m, "round %ld: the context's stack says round %ld", i,
				      (long)count);
		count = count + 1;
		sum = sum * 31 + (uint64_t)i;
		want_sum = want_sum * 31 + (uint64_t)i;
		ret = ds_ctx_switch_publish(&m->co, &m->home[t], &m->turn, (int)i + 1,
					    YIELD_RET(i));
	}
}

struct migrate_thread {
	struct migrate *m;
	int t;
};

static void *migrate_thread(void *arg)
{
	struct migrate_thread *mt = arg;
	struct migrate *m = mt->m;
	int t = mt->t;

	for (long i = t; i < m->rounds; i += 2) {
		if (!migrate_take_turn(m, (int)i))
			break;
		int r = ds_ctx_switch_publish(&m->home[t], &m->co, &m->saved[t], (int)i,
					      RESUME_RET(i));
		if (r != YIELD_RET(i)) {
			migrate_error(m, "round %ld: thread %d's switch returned %d, want %d", i, t,
				      r, YIELD_RET(i));
			break;
		}
	}
	return NULL;
}

static void test_publish_across_threads(void **state)
{
	struct stack st;
	struct migrate m = { 0 };
	struct migrate_thread mt[2] = { { &m, 0 }, { &m, 1 } };
	pthread_t other;

	m.rounds = under_valgrind() ? 2000 : 20000;
	atomic_init(&m.turn, 0);
	atomic_init(&m.saved[0], MIGRATE_IDLE);
	atomic_init(&m.saved[1], MIGRATE_IDLE);
	stack_new(&st);
	ds_ctx_make(&m.co, st.lo, STACK_SIZE, migrate_entry, &m);
	assert_int_equal(pthread_create(&other, NULL, migrate_thread, &mt[1]), 0);
	migrate_thread(&mt[0]);
	assert_int_equal(pthread_join(other, NULL), 0);
	if (atomic_load(&m.errors))
		fail_msg("%d errors, the first: %s", atomic_load(&m.errors), m.first_error);
	/* The last round's publish, not yet taken. */
	assert_int_equal(atomic_load(&m.turn), m.rounds);
	stack_free(&st);
}

/* ---- the unwinder stops at the trampoline instead of walking past the top
 * of the stack (on x86-64 into the guard page above it: a crash) or going
 * round in circles (aarch64: the trampoline would be its own caller) */

#if !defined(DS_SWITCH_UCONTEXT)
void ds_ctx_trampoline(void) __attribute__((visibility("hidden")));
#endif

#define UNWIND_MAX 64

struct unwind {
	ds_ctx_t main, co;
	uintptr_t ips[UNWIND_MAX];
	int depth;
};

static _Unwind_Reason_Code unwind_step(struct _Unwind_Context *uc, void *arg)
{
	struct unwind *u = arg;
	uintptr_t ip = _Unwind_GetIP(uc);

	/* libgcc reports the end of the stack as one more frame with IP 0. */
	if (ip == 0)
		return _URC_END_OF_STACK;
	if (u->depth == UNWIND_MAX)
		return _URC_END_OF_STACK; /* looping: the test fails on the depth */
	u->ips[u->depth++] = ip;
	return _URC_NO_REASON;
}

static __attribute__((noinline)) void unwind_inner(struct unwind *u)
{
	_Unwind_Backtrace(unwind_step, u);
	__asm__ volatile("" ::: "memory"); /* no tail call: keep this frame */
}

static void unwind_entry(void *arg)
{
	struct unwind *u = arg;

	unwind_inner(u);
	ds_ctx_switch(&u->co, &u->main);
}

static void test_unwind_stops(void **state)
{
	struct stack st;
	struct unwind u = { 0 };

	stack_new(&st);
	ds_ctx_make(&u.co, st.lo, STACK_SIZE, unwind_entry, &u);
	ds_ctx_switch(&u.main, &u.co);
	/* unwind_inner, unwind_entry, the trampoline, maybe glibc's own */
	assert_in_range(u.depth, 3, 8);
#if !defined(DS_SWITCH_UCONTEXT)
	uintptr_t last = u.ips[u.depth - 1];
	assert_in_range(last, (uintptr_t)ds_ctx_trampoline, (uintptr_t)ds_ctx_trampoline + 16);
#endif
	stack_free(&st);
}

/* ---- an entry that returns traps (ctx.h forbids it) instead of running
 * whatever lies above the stack; checked in a child */

static void returning_entry(void *arg)
{
	*(int *)arg = 1;
}

/* Whether a forked child runs at all: under qemu-user 7.2 on this kernel a
 * child of a guest hangs before its first instruction. Polls for 10 s. */
static bool fork_works(void)
{
	int status;
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0)
		_exit(0);
	for (int i = 0; i < 1000; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return true;
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return false;
}

static void test_entry_return_traps(void **state)
{
	int status;
	pid_t pid;

	if (!fork_works()) {
		print_message("forked children do not run here (qemu-user?): skipped\n");
		skip();
	}
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct stack st;
		ds_ctx_t main, co;
		int ran = 0;

		/* CMocka catches these around each test; we want to die by them. */
		signal(SIGILL, SIG_DFL);
		signal(SIGTRAP, SIG_DFL);
		signal(SIGABRT, SIG_DFL);
		stack_new(&st);
		ds_ctx_make(&co, st.lo, STACK_SIZE, returning_entry, &ran);
		ds_ctx_switch(&main, &co);
		_exit(ran ? 0 : 2);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	/* ud2 on x86-64, brk on aarch64, abort() under ucontext */
	assert_true(WTERMSIG(status) == SIGILL || WTERMSIG(status) == SIGTRAP ||
		    WTERMSIG(status) == SIGABRT);
}

/* ---- MXCSR and x87 control word are per context (x86-64 assembly only):
 * the psABI makes their control bits callee-saved, their status flags not */

#if defined(__x86_64__) && !defined(DS_SWITCH_UCONTEXT)
/* Set directly rather than with fesetround(), which would need libm. */
#define MXCSR_ZE 0x0004u /* divide-by-zero status flag */
#define MXCSR_RC 0x6000u /* rounding control */
#define MXCSR_RC_DOWN 0x2000u
#define MXCSR_RC_UP 0x4000u
#define MXCSR_FTZ 0x8000u /* flush-to-zero */
#define FPUCW_RC 0x0c00u  /* x87 rounding control */
#define FPUCW_RC_UP 0x0800u
#define FPUCW_PC 0x0300u /* x87 precision control: 11 extended, 00 single */

static uint32_t get_mxcsr(void)
{
	uint32_t v;

	__asm__ volatile("stmxcsr %0" : "=m"(v));
	return v;
}

static void set_mxcsr(uint32_t v)
{
	__asm__ volatile("ldmxcsr %0" : : "m"(v));
}

static uint16_t get_fpucw(void)
{
	uint16_t v;

	__asm__ volatile("fnstcw %0" : "=m"(v));
	return v;
}

static void set_fpucw(uint16_t v)
{
	__asm__ volatile("fldcw %0" : : "m"(v));
}

struct fpctl {
	ds_ctx_t main, co;
	uint32_t mxcsr_at_start, mxcsr_later;
	uint16_t fpucw_later;
};

static void fpctl_entry(void *arg)
{
	struct fpctl *f = arg;

	f->mxcsr_at_start = get_mxcsr();
	set_mxcsr((get_mxcsr() & ~MXCSR_RC) | MXCSR_RC_UP | MXCSR_FTZ);
	set_fpucw((get_fpucw() & ~(FPUCW_RC | FPUCW_PC)) | FPUCW_RC_UP);
	set_mxcsr(get_mxcsr() | MXCSR_ZE); /* as a division by zero would */
	ds_ctx_switch(&f->co, &f->main);
	f->mxcsr_later = get_mxcsr();
	f->fpucw_later = get_fpucw();
	ds_ctx_switch(&f->co, &f->main);
}
#endif

static void test_fp_control_per_context(void **state)
{
#if defined(__x86_64__) && !defined(DS_SWITCH_UCONTEXT)
	struct stack st;
	struct fpctl f = { 0 };
	uint32_t mxcsr = get_mxcsr() & ~0x3fu;
	uint16_t fpucw = get_fpucw();
	/* Valgrind emulates the rounding controls only: it drops MXCSR's FTZ
	 * and status flags and reads the x87 precision control back as
	 * extended. Those bits are checked on the hardware alone. */
	const bool vg = under_valgrind();
	const uint32_t mx_ctl = vg ? MXCSR_RC : MXCSR_RC | MXCSR_FTZ;
	const uint16_t cw_ctl = vg ? FPUCW_RC : FPUCW_RC | FPUCW_PC;

	if (vg)
		print_message("under valgrind: rounding controls only (no FTZ, flags, x87 PC)\n");
	stack_new(&st);
	/* A new context starts with the control bits of its maker. */
	set_mxcsr((mxcsr & ~MXCSR_RC) | MXCSR_RC_DOWN);
	ds_ctx_make(&f.co, st.lo, STACK_SIZE, fpctl_entry, &f);
	set_mxcsr(mxcsr);

	ds_ctx_switch(&f.main, &f.co);
	assert_int_equal(f.mxcsr_at_start & MXCSR_RC, MXCSR_RC_DOWN);
	/* Our control bits are back... */
	assert_int_equal(get_mxcsr() & ~0x3fu, mxcsr);
	assert_int_equal(get_fpucw(), fpucw);
	/* ...but the status flag the other context raised stays: flags belong
	 * to the thread, and loading the control bits must not drop them. */
	if (!vg)
		assert_int_equal(get_mxcsr() & MXCSR_ZE, MXCSR_ZE);

	ds_ctx_switch(&f.main, &f.co);
	assert_int_equal(f.mxcsr_later & mx_ctl, (MXCSR_RC_UP | MXCSR_FTZ) & mx_ctl);
	assert_int_equal(f.fpucw_later & cw_ctl, FPUCW_RC_UP);
	assert_int_equal(get_mxcsr() & ~0x3fu, mxcsr);
	assert_int_equal(get_fpucw(), fpucw);

	set_mxcsr(mxcsr);
	stack_free(&st);
#else
	print_message("MXCSR/x87 control word are switched by the x86-64 assembly only\n");
	skip();
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ping_pong),
		cmocka_unit_test(test_make_touches_only_top),
		cmocka_unit_test(test_callee_saved_exact),
		cmocka_unit_test(test_callee_saved_live_locals),
		cmocka_unit_test(test_entry_alignment),
		cmocka_unit_test(test_nested),
		cmocka_unit_test(test_publish_across_threads),
		cmocka_unit_test(test_unwind_stops),
		cmocka_unit_test(test_entry_return_traps),
		cmocka_unit_test(test_fp_control_per_context),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
