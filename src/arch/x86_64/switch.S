/* x86-64 SysV context switch: ds_ctx_switch_publish() and the trampoline that starts a
 * context prepared by ds_ctx_make() (src/ctx-asm.c, which must match the frame
 * below). Runs on whichever stack calls it, and leaves on the other one.
 *
 * Saved frame, at ctx->sp (16-byte aligned), lowest address first:
 *	+0  MXCSR (4 bytes), x87 control word (2 bytes), 2 bytes unused
 *	+8  r15   +16 r14   +24 r13   +32 r12   +40 rbx   +48 rbp
 *	+56 resume address (the return address pushed by the call)
 * A new context has the trampoline as resume address, entry in r12, arg in r13.
 *
 * No GNU property note: resuming with jmp, not ret, gives up shadow stacks
 * (the call pushed a shadow entry that no ret pops) and its target is no
 * endbr64 (a return address), so the object must not claim SHSTK or IBT.
 * Leaving the note out makes the linker drop both from the whole output,
 * which is the truth. The endbr64 below are NOPs until then, and make the
 * entry points ready for IBT.
 */

#ifndef DS_SWITCH_UCONTEXT
	.text

	.globl	ds_ctx_switch_publish
	.hidden	ds_ctx_switch_publish
	.type	ds_ctx_switch_publish, @function
	.p2align 4
/* int ds_ctx_switch_publish(ds_ctx_t *from, ds_ctx_t *to, _Atomic int *publish,
 * int value, int ret): from in rdi, to in rsi, publish in rdx, value in ecx,
 * ret (what the other side's call returns) in r8d. */
ds_ctx_switch_publish:
	.cfi_startproc
	endbr64
	movq	%rdx, %r9		/* rdx and ecx are needed below */
	movl	%ecx, %r10d
	pushq	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset rbp, 0
	pushq	%rbx
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset rbx, 0
	pushq	%r12
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset r12, 0
	pushq	%r13
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset r13, 0
	pushq	%r14
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset r14, 0
	pushq	%r15
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset r15, 0
	/* The psABI makes the control bits of MXCSR and the x87 control word
	 * callee-saved: a context that changed its rounding mode keeps it. */
	subq	$8, %rsp
	.cfi_adjust_cfa_offset 8
	stmxcsr	(%rsp)
	fnstcw	4(%rsp)
	movl	(%rsp), %eax		/* the thread's current MXCSR and CW */
	movzwl	4(%rsp), %ecx
	movq	%rsp, (%rdi)
	/* From here on rsp is in the other context's frame, which has the same
	 * layout, so the CFI above describes it just as well. */
	movq	(%rsi), %rsp
	/* Off the old stack: another thread may take it now. A plain store is a
	 * release store on x86-64. */
	testq	%r9, %r9
	jz	1f
	movl	%r10d, (%r9)
1:
	/* Loading MXCSR costs ~70 ns even with an equal value (DESIGN.md §3):
	 * load only when the control bits (all but the six status flags,
	 * bits 0-5) differ, which is almost never. */
	movl	(%rsp), %edx
	xorl	%eax, %edx
	testl	$~0x3f, %edx
	jnz	.Lload_mxcsr
.Lmxcsr_done:
	cmpw	%cx, 4(%rsp)
	jne	.Lload_fpucw
.Lfpucw_done:
	.cfi_remember_state
	addq	$8, %rsp
	.cfi_adjust_cfa_offset -8
	popq	%r15
	.cfi_adjust_cfa_offset -8
	.cfi_restore r15
	popq	%r14
	.cfi_adjust_cfa_offset -8
	.cfi_restore r14
	popq	%r13
	.cfi_adjust_cfa_offset -8
	.cfi_restore r13
	popq	%r12
	.cfi_adjust_cfa_offset -8
	.cfi_restore r12
	popq	%rbx
	.cfi_adjust_cfa_offset -8
	.cfi_restore rbx
	popq	%rbp
	.cfi_adjust_cfa_offset -8
	.cfi_restore rbp
	movl	%r8d, %eax		/* the other side's call returns ret */
	/* pop+jmp, not ret: the return-stack predictor expects the caller of
	 * this call, which is in the other context, so ret would mispredict on
	 * every switch (12.8 ns vs 2.6 ns one way, DESIGN.md §3). */
	popq	%rcx
	.cfi_adjust_cfa_offset -8
	.cfi_register rip, rcx
	jmp	*%rcx

	/* Out of line so the common path falls straight through. */
	.cfi_restore_state
.Lload_mxcsr:
	/* The status flags are not callee-saved: they belong to the thread
	 * and stay as they are; only the control bits come from the frame. */
	xorl	%eax, %edx		/* back to the saved MXCSR */
	andl	$~0x3f, %edx
	andl	$0x3f, %eax
	orl	%eax, %edx
	movl	%edx, (%rsp)		/* the frame is about to be popped: reuse it */
	ldmxcsr	(%rsp)
	jmp	.Lmxcsr_done
.Lload_fpucw:
	fldcw	4(%rsp)
	jmp	.Lfpucw_done
	.cfi_endproc
	.size	ds_ctx_switch_publish, .-ds_ctx_switch_publish

	.globl	ds_ctx_trampoline
	.hidden	ds_ctx_trampoline
	.type	ds_ctx_trampoline, @function
	.p2align 4
/* First code of every new context, reached by the jmp of ds_ctx_switch_publish with
 * rsp at the top of the new stack (16-byte aligned, as a call needs). Its
 * frame is the outermost one: no return address, so debuggers and unwinders
 * stop here instead of wandering past the top of the stack. */
	.cfi_startproc
	.cfi_undefined rip
	/* While ds_ctx_switch_publish runs on a new stack, its return address is the
	 * trampoline itself; unwinders look up return address - 1, so that byte
	 * has to belong to this FDE too. */
	nop
ds_ctx_trampoline:
	endbr64
	movq	%r13, %rdi
	callq	*%r12
	/* entry must never return (ctx.h): trap rather than run off the stack. */
	ud2
	.cfi_endproc
	.size	ds_ctx_trampoline, .-ds_ctx_trampoline

#endif /* DS_SWITCH_UCONTEXT */

	.text
	.globl	ds_call_on_stack
	.hidden	ds_call_on_stack
	.type	ds_call_on_stack, @function
	.p2align 4
/* void *ds_call_on_stack(void *top, void *(*fn)(void *), void *arg): run
 * fn(arg) with the stack pointer at top (16-byte aligned) and come back.
 * The caller's stack pointer lives in rbp, and the CFA is described from
 * rbp: debuggers, backtrace() and C++ exceptions unwind from the segment
 * straight back into the caller's frames on the old stack. */
ds_call_on_stack:
	.cfi_startproc
	endbr64
	pushq	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset rbp, 0
	movq	%rsp, %rbp
	.cfi_def_cfa_register rbp
	movq	%rdi, %rsp
	movq	%rdx, %rdi
	/* gdb stops a backtrace at a frame whose caller lies below it ("previous
	 * frame inner to this frame") unless the frame is in a function named
	 * __morestack, the name of gcc's split-stack switch: a local symbol of
	 * that name covers this call, so `bt` walks on into the caller. */
	.type	__morestack, @function
__morestack:
	callq	*%rsi
.Lmorestack_end:
	.size	__morestack, .Lmorestack_end - __morestack
	movq	%rbp, %rsp
	.cfi_def_cfa_register rsp
	popq	%rbp
	.cfi_adjust_cfa_offset -8
	.cfi_restore rbp
	ret
	.cfi_endproc
	.size	ds_call_on_stack, .-ds_call_on_stack

	.section .note.GNU-stack, "", @progbits

