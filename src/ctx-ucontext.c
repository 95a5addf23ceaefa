/* Portable context switch on getcontext/makecontext/swapcontext, for CPUs
 * without switch.S (-Dswitch=ucontext). Some 50 times slower than the
 * assembly: glibc's swapcontext makes a sigprocmask system call every time,
 * so the signal mask travels with the context (a coroutine resumed on another
 * thread brings its mask; the thread gets its own back when it yields).
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "ctx.h"

/* swapcontext runs no code between saving one context and loading the
 * other, so the publish store is left to the side that runs next: the switch
 * writes it into the incoming context, and the code right after swapcontext
 * (or the trampoline, for a new context) reads it from its own ds_ctx_t and
 * makes it, once the outgoing context is saved and its stack left.
 *
 * Not in thread-local variables: a coroutine suspended on thread A may come
 * back on thread B, and the compiler computes a TLS address once per function
 * (one __tls_get_addr call before swapcontext, reused after it), so the side
 * resumed on B read and cleared A's pending store. That store published a
 * context A had not saved yet, B's own was never made, and the stress suite
 * died at once.
 *
 * All fields are read before the store: once it is made, another thread may
 * switch away from the context they belong to (a group's shared link) and
 * write them. */
static int arrive(ds_ctx_t *self)
{
	_Atomic int *p = self->publish;
	int ret = self->ret;

	if (p)
		atomic_store_explicit(p, self->value, memory_order_release);
	return ret;
}

/* makecontext passes only int arguments: each pointer travels as two 32-bit
 * halves (uint64_t so the shift is defined where pointers are 32 bits). */
#define HI(p) ((int)(unsigned)((uint64_t)(uintptr_t)(p) >> 32))
#define LO(p) ((int)(unsigned)(uintptr_t)(p))
#define JOIN(hi, lo) ((uintptr_t)((uint64_t)(unsigned)(hi) << 32 | (unsigned)(lo)))

/* Runs on the new stack, called by the first swapcontext to it. */
static void trampoline(int entry_hi, int entry_lo, int arg_hi, int arg_lo, int self_hi, int self_lo)
{
	ds_ctx_entry_fn entry = (ds_ctx_entry_fn)JOIN(entry_hi, entry_lo);

	arrive((ds_ctx_t *)JOIN(self_hi, self_lo));

	entry((void *)JOIN(arg_hi, arg_lo));
	/* entry must never return (ctx.h); uc_link is NULL, so returning would
	 * silently end the whole thread. */
	abort();
}

void ds_ctx_make(ds_ctx_t *ctx, void *lo, size_t size, ds_ctx_entry_fn entry, void *arg)
{
	/* getcontext only fills in the signal mask and FP state that the new
	 * context starts with; it cannot fail for a valid pointer. */
	getcontext(&ctx->uc);
	ctx->uc.uc_stack.ss_sp = lo;
	ctx->uc.uc_stack.ss_size = size;
	ctx->uc.uc_link = NULL;
	ctx->publish = NULL;
	makecontext(&ctx->uc, (void (*)(void))trampoline, 6, HI(entry), LO(entry), HI(arg), LO(arg),
		    HI(ctx), LO(ctx));
}

int ds_ctx_switch_publish(ds_ctx_t *from, ds_ctx_t *to, _Atomic int *publish, int value, int ret)
{
	/* to is suspended and ours to resume: nobody else writes it now. */
	to->publish = publish;
	to->value = value;
	to->ret = ret;
	/* Fails only for invalid pointers, which are bugs in the caller. */
	swapcontext(&from->uc, &to->uc);
	/* Back in *from, perhaps on another thread: from is a local of this
	 * frame, restored with it, and the switch to us wrote its fields. */
	return arrive(from);
}

uintptr_t ds_ctx_sp(const ds_ctx_t *ctx)
{
	/* glibc's swapcontext saves the stack pointer as it will be after its
	 * return: the caller's frames are above it, nothing below is live. */
#if defined(__x86_64__)
	return (uintptr_t)ctx->uc.uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
	return (uintptr_t)ctx->uc.uc_mcontext.sp;
#else
	(void)ctx;
	return 0;
#endif
}

#if !defined(__x86_64__) && !defined(__aarch64__)
#include "internal.h"

/* dynstack_call's switch for CPUs without switch.S: through a context of
 * its own. Unwinders and C++ exceptions do not cross it. */
struct call_on_stack {
	ucontext_t caller, seg;
	void *(*fn)(void *);
	void *arg, *ret;
};

static void call_on_stack_entry(int hi, int lo)
{
	struct call_on_stack *c = (struct call_on_stack *)JOIN(hi, lo);
	c->ret = c->fn(c->arg);
	swapcontext(&c->seg, &c->caller);
}

void *ds_call_on_stack(void *top, void *(*fn)(void *), void *arg);
void *ds_call_on_stack(void *top, void *(*fn)(void *), void *arg)
{
	struct call_on_stack c = { .fn = fn, .arg = arg };
	struct dynstack *s = ds_arena_lookup_sigsafe((uintptr_t)top - 1);
	getcontext(&c.seg);
	c.seg.uc_stack.ss_sp = (void *)s->lo;
	c.seg.uc_stack.ss_size = s->top - s->lo;
	c.seg.uc_link = NULL;
	makecontext(&c.seg, (void (*)(void))call_on_stack_entry, 2, HI(&c), LO(&c));
	swapcontext(&c.caller, &c.seg);
	return c.ret;
}
#endif
