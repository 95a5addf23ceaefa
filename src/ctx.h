/* Execution contexts: the one seam between C and the per-CPU switch.
 * Two implementations: src/arch/<cpu>/switch.S + ctx-asm.c (the default on
 * x86-64 and aarch64) and ctx-ucontext.c (portable fallback, -Dswitch=ucontext).
 */
#ifndef DS_CTX_H
#define DS_CTX_H

#include <stddef.h>
#include <stdint.h>

#if defined(DS_SWITCH_UCONTEXT)
#include <ucontext.h>
typedef struct ds_ctx {
	ucontext_t uc;
	/* Left here by the switch to this context, for the code that runs in
	 * it right after swapcontext returns (ctx-ucontext.c): the publish
	 * store and the return value. Not thread-local: that side may run on
	 * another thread than the one that saved it. */
	_Atomic int *publish;
	int value, ret;
} ds_ctx_t;
#else
typedef struct ds_ctx {
	void *sp; /* saved stack pointer; the callee-saved state lies above it */
} ds_ctx_t;
#endif

typedef void (*ds_ctx_entry_fn)(void *arg);

/* Prepare ctx so that the first ds_ctx_switch() to it runs entry(arg) on the
 * stack [lo, lo + size), starting at its top (lo + size must be 16-byte
 * aligned). Writes only the top few hundred bytes of the stack. entry must
 * never return: it ends by switching away for the last time. */
void ds_ctx_make(ds_ctx_t *ctx, void *lo, size_t size, ds_ctx_entry_fn entry, void *arg)
	__attribute__((visibility("hidden")));

/* Save the callee-saved state of the running context into *from and resume
 * *to. If publish is not NULL, store value into *publish with release order
 * once *from is saved and this thread has left its stack: that is when
 * another thread may safely resume *from. The call that saved *to returns
 * ret; this call returns whatever the switch back to *from passes.
 *
 * Callers on a hot path end with "return ds_ctx_switch(...)": the tail call
 * leaves the caller's return address as the resume address, so the other
 * side's jmp lands in the caller's caller and no ret is ever executed against
 * a return-stack entry pushed in the other context (measured here: 26 ns per
 * resume+yield pair with the bookkeeping after a normal call, 8 ns with it
 * done before and the switch tail-called). */
int ds_ctx_switch_publish(ds_ctx_t *from, ds_ctx_t *to, _Atomic int *publish, int value, int ret)
	__attribute__((visibility("hidden")));

/* The stack pointer of a suspended context: nothing below it is live (the
 * switch is a call, so no red-zone data survives it). 0 when this build
 * cannot tell (a ucontext CPU we do not know). */
#if defined(DS_SWITCH_UCONTEXT)
uintptr_t ds_ctx_sp(const ds_ctx_t *ctx) __attribute__((visibility("hidden")));
#else
static inline uintptr_t ds_ctx_sp(const ds_ctx_t *ctx)
{
	return (uintptr_t)ctx->sp;
}
#endif

static inline void ds_ctx_switch(ds_ctx_t *from, ds_ctx_t *to)
{
	ds_ctx_switch_publish(from, to, (_Atomic int *)0, 0, 0);
}

#endif /* DS_CTX_H */
