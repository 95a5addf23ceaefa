/* AAPCS64 context switch: ds_ctx_switch_publish() and the trampoline that starts a
 * context prepared by ds_ctx_make() (src/ctx-asm.c, which must match the frame
 * below). Runs on whichever stack calls it, and leaves on the other one.
 *
 * Saved frame, 160 bytes at ctx->sp (16-byte aligned), lowest address first:
 *	+0   x19 x20   +16  x21 x22   +32  x23 x24   +48  x25 x26   +64 x27 x28
 *	+80  x29 x30 (frame pointer, resume address)
 *	+96  d8 d9     +112 d10 d11   +128 d12 d13   +144 d14 d15
 * A new context has the trampoline in the x30 slot, entry in x19, arg in x20.
 * Only the low 64 bits of v8-v15 are callee-saved (AAPCS64 6.1.2), so d8-d15
 * suffice. FPCR is not switched: contexts share the thread's rounding mode.
 */

/* Resuming with "br x30" instead of "ret" keeps the return-stack predictor
 * out of it: ret would predict the caller of this call, which is in the other
 * context, and mispredict on every switch (on x86-64 that costs 12.8 ns vs
 * 2.6 ns, DESIGN.md section 3). But under BTI an indirect br may only land on
 * a landing pad, and a return address is none, while ret is not checked. So
 * when the build asks for BTI we use ret and mark the object BTI-compatible;
 * otherwise br, and no mark, so that nobody can enforce BTI on it. */
#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define RESUME ret
#define GNU_PROPERTY_AARCH64_FEATURE_1_BTI 1
#else
#define RESUME br x30
#endif

#ifndef DS_SWITCH_UCONTEXT
	.text

	.globl	ds_ctx_switch_publish
	.hidden	ds_ctx_switch_publish
	.type	ds_ctx_switch_publish, %function
	.p2align 4
/* int ds_ctx_switch_publish(ds_ctx_t *from, ds_ctx_t *to, _Atomic int *publish,
 * int value, int ret): from in x0, to in x1, publish in x2, value in w3, ret
 * (what the other side's call returns) in w4. */
ds_ctx_switch_publish:
	.cfi_startproc
	hint	#34			/* bti c: a NOP unless the page is guarded */
	sub	sp, sp, #160
	.cfi_def_cfa_offset 160
	stp	x19, x20, [sp, #0]
	stp	x21, x22, [sp, #16]
	stp	x23, x24, [sp, #32]
	stp	x25, x26, [sp, #48]
	stp	x27, x28, [sp, #64]
	stp	x29, x30, [sp, #80]
	stp	d8, d9, [sp, #96]
	stp	d10, d11, [sp, #112]
	stp	d12, d13, [sp, #128]
	stp	d14, d15, [sp, #144]
	.cfi_offset x19, -160
	.cfi_offset x20, -152
	.cfi_offset x21, -144
	.cfi_offset x22, -136
	.cfi_offset x23, -128
	.cfi_offset x24, -120
	.cfi_offset x25, -112
	.cfi_offset x26, -104
	.cfi_offset x27, -96
	.cfi_offset x28, -88
	.cfi_offset x29, -80
	.cfi_offset x30, -72
	.cfi_offset d8, -64
	.cfi_offset d9, -56
	.cfi_offset d10, -48
	.cfi_offset d11, -40
	.cfi_offset d12, -32
	.cfi_offset d13, -24
	.cfi_offset d14, -16
	.cfi_offset d15, -8
	/* sp cannot be stored directly; x9-x15 are free scratch here. */
	mov	x9, sp
	str	x9, [x0]
	/* From here on sp is in the other context's frame, which has the same
	 * layout, so the CFI above describes it just as well. */
	ldr	x9, [x1]
	mov	sp, x9
	/* Off the old stack: another thread may take it now (release). */
	cbz	x2, 1f
	stlr	w3, [x2]
1:
	ldp	x19, x20, [sp, #0]
	ldp	x21, x22, [sp, #16]
	ldp	x23, x24, [sp, #32]
	ldp	x25, x26, [sp, #48]
	ldp	x27, x28, [sp, #64]
	ldp	x29, x30, [sp, #80]
	ldp	d8, d9, [sp, #96]
	ldp	d10, d11, [sp, #112]
	ldp	d12, d13, [sp, #128]
	ldp	d14, d15, [sp, #144]
	add	sp, sp, #160
	.cfi_def_cfa_offset 0
	.cfi_restore x19
	.cfi_restore x20
	.cfi_restore x21
	.cfi_restore x22
	.cfi_restore x23
	.cfi_restore x24
	.cfi_restore x25
	.cfi_restore x26
	.cfi_restore x27
	.cfi_restore x28
	.cfi_restore x29
	.cfi_restore x30
	.cfi_restore d8
	.cfi_restore d9
	.cfi_restore d10
	.cfi_restore d11
	.cfi_restore d12
	.cfi_restore d13
	.cfi_restore d14
	.cfi_restore d15
	mov	w0, w4			/* the other side's call returns ret */
	RESUME
	.cfi_endproc
	.size	ds_ctx_switch_publish, .-ds_ctx_switch_publish

	.globl	ds_ctx_trampoline
	.hidden	ds_ctx_trampoline
	.type	ds_ctx_trampoline, %function
	.p2align 4
/* First code of every new context, reached from ds_ctx_switch_publish with sp at the
 * top of the new stack (16-byte aligned, as AAPCS64 requires at all times).
 * Its frame is the outermost one: x30 is undefined, so debuggers and
 * unwinders stop here; x29 is 0 for frame-pointer walkers. It needs no
 * landing pad: under BTI it is entered by ret, which BTI does not check. */
	.cfi_startproc
	.cfi_undefined x30
	/* While ds_ctx_switch_publish runs on a new stack, its return address is the
	 * trampoline itself; unwinders look up return address - 1, so the word
	 * before has to belong to this FDE too. */
	nop
ds_ctx_trampoline:
	mov	x0, x20
	blr	x19
	/* entry must never return (ctx.h): trap rather than run off the stack. */
	brk	#0x3e8
	.cfi_endproc
	.size	ds_ctx_trampoline, .-ds_ctx_trampoline

#endif /* DS_SWITCH_UCONTEXT */

	.text
	.globl	ds_call_on_stack
	.hidden	ds_call_on_stack
	.type	ds_call_on_stack, %function
	.p2align 4
/* void *ds_call_on_stack(void *top, void *(*fn)(void *), void *arg): run
 * fn(arg) with sp at top (16-byte aligned) and come back. The caller's sp
 * lives in x29 and the CFA is described from x29, so unwinders walk from the
 * segment straight back into the caller's frames on the old stack. */
ds_call_on_stack:
	.cfi_startproc
	hint	#34			/* bti c */
	stp	x29, x30, [sp, #-16]!
	.cfi_def_cfa_offset 16
	.cfi_offset x29, -16
	.cfi_offset x30, -8
	mov	x29, sp
	.cfi_def_cfa_register x29
	mov	sp, x0
	mov	x0, x2
	/* gdb stops a backtrace at a frame whose caller lies below it unless
	 * the frame is in a function named __morestack (gcc's split-stack
	 * switch): a local symbol of that name covers this call. */
	.type	__morestack, %function
__morestack:
	blr	x1
.Lmorestack_end:
	.size	__morestack, .Lmorestack_end - __morestack
	mov	sp, x29
	.cfi_def_cfa_register sp
	ldp	x29, x30, [sp], #16
	.cfi_def_cfa_offset 0
	.cfi_restore x29
	.cfi_restore x30
	ret
	.cfi_endproc
	.size	ds_call_on_stack, .-ds_call_on_stack

	.section .note.GNU-stack, "", %progbits

#ifdef GNU_PROPERTY_AARCH64_FEATURE_1_BTI
	/* NT_GNU_PROPERTY_TYPE_0 with GNU_PROPERTY_AARCH64_FEATURE_1_AND = BTI. */
	.section .note.gnu.property, "a"
	.p2align 3
	.word	4			/* name size ("GNU\0") */
	.word	16			/* descriptor size */
	.word	5			/* NT_GNU_PROPERTY_TYPE_0 */
	.asciz	"GNU"
	.word	0xc0000000		/* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
	.word	4			/* property size */
	.word	GNU_PROPERTY_AARCH64_FEATURE_1_BTI
	.word	0			/* pad to 8 bytes */
#endif
