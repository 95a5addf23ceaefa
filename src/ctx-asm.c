/* ds_ctx_make() for the assembly switch: lays at the top of a new stack the
 * frame that ds_ctx_switch() pops, so the first switch lands in the trampoline
 * of src/arch/<cpu>/switch.S with entry and arg in callee-saved registers.
 */
#include <assert.h>
#include <stdint.h>

#include "ctx.h"

/* In switch.S: calls entry(arg) from the registers the frame below fills. */
void ds_ctx_trampoline(void) __attribute__((visibility("hidden")));

#if defined(__x86_64__)

/* Slots of the frame, in 8-byte words from ctx->sp (see switch.S). */
enum {
	FR_FPCTL,
	FR_R15,
	FR_R14,
	FR_R13,
	FR_R12,
	FR_RBX,
	FR_RBP,
	FR_RESUME,
	FR_WORDS
};

void ds_ctx_make(ds_ctx_t *ctx, void *lo, size_t size, ds_ctx_entry_fn entry, void *arg)
{
	uint64_t *fr = (uint64_t *)((char *)lo + size) - FR_WORDS;
	uint32_t mxcsr;
	uint16_t fpucw;

	assert(((uintptr_t)lo + size) % 16 == 0);
	/* The new context starts with the control bits of the thread that made
	 * it, as a new thread would; the switch loads them only if they differ
	 * from those of the context switching to it. */
	__asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
	__asm__ volatile("fnstcw %0" : "=m"(fpucw));

	fr[FR_FPCTL] = mxcsr | (uint64_t)fpucw << 32;
	fr[FR_R15] = 0;
	fr[FR_R14] = 0;
	fr[FR_R13] = (uintptr_t)arg;
	fr[FR_R12] = (uintptr_t)entry;
	fr[FR_RBX] = 0;
	fr[FR_RBP] = 0; /* ends the frame-pointer chain for perf and friends */
	fr[FR_RESUME] = (uintptr_t)ds_ctx_trampoline;
	/* The switch pops all FR_WORDS words and jumps, so the trampoline starts
	 * with rsp = lo + size: 16-byte aligned, as its call requires. */
	ctx->sp = fr;
}

#elif defined(__aarch64__)

/* Slots of the frame, in 8-byte words from ctx->sp (see switch.S):
 * x19..x28, x29, x30, then d8..d15. */
enum {
	FR_X19,
	FR_X20,
	FR_X30 = 11,
	FR_WORDS = 20
};

void ds_ctx_make(ds_ctx_t *ctx, void *lo, size_t size, ds_ctx_entry_fn entry, void *arg)
{
	uint64_t *fr = (uint64_t *)((char *)lo + size) - FR_WORDS;

	assert(((uintptr_t)lo + size) % 16 == 0);

	for (int i = 0; i < FR_WORDS; i++)
		fr[i] = 0; /* x29 = 0 ends the frame-record chain */
	fr[FR_X19] = (uintptr_t)entry;
	fr[FR_X20] = (uintptr_t)arg;
	fr[FR_X30] = (uintptr_t)ds_ctx_trampoline;
	/* The switch pops all 160 bytes, so the trampoline starts with
	 * sp = lo + size, 16-byte aligned as AAPCS64 requires. */
	ctx->sp = fr;
}

#else
#error "no assembly context switch for this CPU: configure with -Dswitch=ucontext"
#endif
