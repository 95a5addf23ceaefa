/* Asymmetric coroutines on dynamic stacks. A coroutine may move between OS
 * threads between resumes, so no function here keeps a thread-local address
 * across a switch after which it could be on another thread: each reads
 * `current` afresh on entry, and the resumer's bookkeeping is done on the
 * coroutine's side before it switches back (see leave()). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include "coro.h"
#include "policy.h"

/* The coroutine running on this thread (NULL on the thread's own stack). */
static DS_TLS struct dynstack_coro *current;

/* Hand the thread back to c's resumer: the resumer's bookkeeping is done
 * here, before the switch, so that the resumer's side returns straight to
 * its caller (see ds_ctx_switch_publish). c's new status is published by the
 * switch itself, once c's state is saved and its stack left. */
static inline int leave(struct dynstack_coro *c, int status, int ret)
{
	/* The green thread's "return to user space": a trim point. Below this
	 * frame only the switch's few saved registers will be written. */
	struct dynstack *s = c->stack;
	uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
	/* Nothing committed below the margin: the common case, decided here
	 * (a call cost 2.3 ns per resume+yield pair). */
	if (atomic_load_explicit(&s->edge, memory_order_relaxed) <
	    ((sp - s->policy->margin) & ~(uintptr_t)(ds_page_size - 1)))
		ds_trim_point_slow(s, sp);
	struct ds_coro_link *l = c->link;
	struct dynstack_coro *parent = l->parent;
	current = parent;
	if (parent)
		atomic_store_explicit(&parent->status, DYNSTACK_CORO_RUNNING, memory_order_relaxed);
	struct dynstack_group *g = c->group;
	_Atomic int *publish = &c->status;
	bool dead = status == DYNSTACK_CORO_DEAD;
	if (g) {
		/* What is published once off the stack is the group's claim:
		 * nobody may copy over these frames before. c's status may show
		 * first: resuming c needs the claim too. */
		atomic_store_explicit(&c->status, status, memory_order_relaxed);
		atomic_store_explicit(&g->claimer, NULL, memory_order_relaxed);
		publish = &g->busy;
		status = 0;
	}
#if DS_SANITIZE
	/* Read the link before the release: for a group it is the group's,
	 * which the next thread to claim the group writes. */
	struct ds_san_ctx back = l->san;
	ds_san_release(publish);
	ds_san_leave(dead ? NULL : &c->san, back.bottom, back.size, back.fiber);
	ret = ds_ctx_switch_publish(&c->ctx, &l->caller, publish, status, ret);
	/* Resumed, perhaps by another thread: c->link is re-read. */
	ds_san_arrive(&c->san, &c->link->san);
	return ret;
#else
	(void)dead;
	return ds_ctx_switch_publish(&c->ctx, &l->caller, publish, status, ret);
#endif
}

/* Out of line: coro_main's frame lives across every migration of c, so the
 * TLS access in leave() must not be hoisted into it. */
static __attribute__((noinline, noreturn)) void finish(struct dynstack_coro *c)
{
	leave(c, DYNSTACK_CORO_DEAD, 0);
	abort(); /* a dead coroutine is never resumed */
}

/* overflow=fail: the handler made the faulting thread continue here, on the
 * top of the coroutine's own stack (its frames are abandoned). Give back all
 * but that top page, then end the coroutine: its resumer's call returns
 * -EOVERFLOW. Locks the coroutine held stay held and memory it owned is not
 * freed: nothing unwinds (docs/policies.md). */
static __attribute__((noinline, noreturn, used)) void overflow_exit(struct dynstack_coro *c)
{
	struct dynstack *s = c->stack;
	size_t ps = ds_os_page_size();
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	/* ASan: the abandoned frames' redzones stay poisoned in shadow memory,
	 * which a decommit does not clear. Our callees' frames below (the
	 * decommit's among them) and whatever runs on this stack next (the
	 * group's next coroutine, the slot's next one) would hit them. First
	 * thing, before any call: [edge, top) is all the coroutine touched. */
	ds_san_unpoison((const void *)edge, s->top - edge);
	/* Not under Valgrind or TSan: there stacks stay committed whole
	 * (stack.c). */
	if (!ds_stack_whole(s) && edge < s->top - ps &&
	    ds_os_decommit(ds_opt.backend, edge, s->top - ps) == 0) {
		atomic_store_explicit(&s->edge, s->top - ps, memory_order_release);
		DS_STAT_SUB(nr_dynamic_stacks_pages, (s->top - ps - edge) / ps);
	}
	DS_STAT_ADD(nr_dynamic_stacks_failed, 1);
	leave(c, DYNSTACK_CORO_DEAD, -EOVERFLOW);
	abort();
}

bool ds_coro_fail_redirect_sigsafe(struct dynstack *s, void *uctx)
{
	struct dynstack_coro *c = s->coro;
	ucontext_t *uc = uctx;
	if (!c || atomic_load_explicit(&c->status, memory_order_relaxed) != DYNSTACK_CORO_RUNNING)
		return false;
	/* Only when the thread was running on this stack: a fault from another
	 * thread touching it is not the coroutine overflowing. The top 256
	 * bytes are committed and no live frame of the coroutine is left. */
	uintptr_t sp, new_sp = (s->top - 256) & ~(uintptr_t)15;
#if defined(__x86_64__)
	sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
	if (sp < ds_slot_base(s) || sp > s->top)
		return false;
	uc->uc_mcontext.gregs[REG_RSP] = (greg_t)(new_sp - 8); /* as if called */
	uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)overflow_exit;
	uc->uc_mcontext.gregs[REG_RDI] = (greg_t)(uintptr_t)c;
	uc->uc_mcontext.gregs[REG_RBP] = 0;
#elif defined(__aarch64__)
	sp = (uintptr_t)uc->uc_mcontext.sp;
	if (sp < ds_slot_base(s) || sp > s->top)
		return false;
	uc->uc_mcontext.sp = new_sp;
	uc->uc_mcontext.pc = (uintptr_t)overflow_exit;
	uc->uc_mcontext.regs[0] = (uintptr_t)c;
	uc->uc_mcontext.regs[29] = 0;
	uc->uc_mcontext.regs[30] = 0;
#else
	(void)sp;
	(void)new_sp;
	return false; /* no context rewrite for this CPU: overflow=fail aborts */
#endif
	return true;
}

void ds_coro_main(void *arg)
{
	struct dynstack_coro *c = arg;
#if DS_SANITIZE
	ds_san_arrive(NULL, &c->link->san);
#endif
	void **top = (void **)c->stack->top;
	dynstack_coro_fn fn = (dynstack_coro_fn)top[-2];
	fn(top[-1]);
	finish(c);
}

DYNSTACK_API int dynstack_coro_create(dynstack_coro_t **out, dynstack_coro_fn fn, void *arg,
				      const dynstack_attr_t *attr)
{
	DS_KEEP_ERRNO();
	dynstack_attr_t a;
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!fn)
		return -EINVAL;
	int rc = ds_attr_load(&a, attr);
	if (rc)
		return rc;
	struct dynstack_coro *c;
	if (a.mode == DYNSTACK_MODE_SHARED) {
		if ((rc = ds_shared_coro_create(&c, &a, fn, arg)))
			return rc;
	} else {
		if (a.mode != DYNSTACK_MODE_PRIVATE || a.group)
			return -EINVAL;
		struct dynstack *s;
		if ((rc = ds_stack_create(&s, &a, DS_SLOT_CORO)))
			return rc;
		c = ds_arena_coro(s);
		memset(c, 0, sizeof(*c));
		c->stack = s;
		c->link = &c->own;
		s->coro = c;
		/* fn and arg in the top 16 bytes (committed: at least the top
		 * page always is), the entry frame below them. */
		void **top = (void **)c->stack->top;
		top[-2] = (void *)fn;
		top[-1] = arg;
		ds_ctx_make(&c->ctx, (void *)c->stack->lo, c->stack->top - 16 - c->stack->lo,
			    ds_coro_main, c);
	}
#if DS_SANITIZE
	c->san.fiber = ds_san_fiber_create();
#endif
	atomic_store_explicit(&c->status, DYNSTACK_CORO_SUSPENDED, memory_order_release);
	DS_TSTAT_ADD(nr_dynamic_stacks_coros, 1);
	*out = c;
	return 0;
}

DYNSTACK_API int dynstack_coro_resume(dynstack_coro_t *c)
{
	if (!c)
		return -EINVAL;
	int rc = ds_thread_ensure();
	if (rc)
		return rc;
	/* No read-modify-write: resuming from two threads at once is a contract
	 * breach, not a race to arbitrate, and a locked instruction would double
	 * the cost of a switch. Sequential misuse (a dead, running or waiting
	 * coroutine, or itself) is still refused. */
	int st = atomic_load_explicit(&c->status, memory_order_acquire);
	if (st != DYNSTACK_CORO_SUSPENDED) {
		if (st == DYNSTACK_CORO_RUNNING || st == DYNSTACK_CORO_NORMAL)
			return -EBUSY;
		return st == DYNSTACK_CORO_DEAD ? -EINVAL :
						  ds_stale_handle(__func__, c, "coroutine");
	}
	ds_san_acquire(&c->status);
	struct dynstack_group *g = c->group;
	if (g) {
		if ((rc = ds_shared_enter(c)))
			return rc;
	} else {
		ds_trim_before_run(c->stack);
	}
	atomic_store_explicit(&c->status, DYNSTACK_CORO_RUNNING, memory_order_relaxed);

	struct dynstack_coro *parent = current;
	if (parent)
		atomic_store_explicit(&parent->status, DYNSTACK_CORO_NORMAL, memory_order_relaxed);
	struct ds_coro_link *l = c->link;
	l->parent = parent;
	current = c;
#if DS_SANITIZE
	struct dynstack *s = c->stack;
	struct ds_san_ctx me;
	l->san.fiber = ds_san_fiber_current();
	ds_san_leave(&me, (const void *)(s->lo - s->reserve), s->top - (s->lo - s->reserve),
		     c->san.fiber);
	rc = ds_ctx_switch_publish(&l->caller, &c->ctx, NULL, 0, 0);
	ds_san_arrive(&me, NULL);
	if (g && (g->flags & DYNSTACK_GROUP_POISON))
		ds_shared_after(c);
	return rc;
#endif
	if (__builtin_expect(g && (g->flags & DYNSTACK_GROUP_POISON), 0)) {
		/* Not a tail call: the frames are copied away and the stack
		 * poisoned once c is off it. */
		rc = ds_ctx_switch_publish(&l->caller, &c->ctx, NULL, 0, 0);
		ds_shared_after(c);
		return rc;
	}
	/* Tail call: c's leave() comes back directly to our caller. */
	return ds_ctx_switch_publish(&l->caller, &c->ctx, NULL, 0, 0);
}

DYNSTACK_API int dynstack_coro_yield(void)
{
	struct dynstack_coro *c = current;
	if (!c)
		return -EPERM;
	/* Tail call; we may come back on another thread, to our caller. */
	return leave(c, DYNSTACK_CORO_SUSPENDED, 0);
}

DYNSTACK_API int dynstack_coro_status(const dynstack_coro_t *c)
{
	if (!c)
		return -EINVAL;
	int st = atomic_load_explicit(&c->status, memory_order_acquire);
	return st ? st : ds_stale_handle(__func__, c, "coroutine");
}

void ds_coro_drop_segments(struct dynstack_coro *c)
{
	/* Suspended inside dynstack_call: its segments are abandoned with it. */
	while (c->segments) {
		struct dynstack *seg = c->segments;
		c->segments = seg->next_free;
		seg->next_free = NULL;
		seg->coro = NULL;
		ds_stack_release(seg);
	}
}

DYNSTACK_API int dynstack_coro_destroy(dynstack_coro_t *c)
{
	DS_KEEP_ERRNO();
	if (!c)
		return 0;
	int st = atomic_load_explicit(&c->status, memory_order_acquire);
	if (st == DYNSTACK_CORO_RUNNING || st == DYNSTACK_CORO_NORMAL)
		return -EBUSY;
	if (st != DYNSTACK_CORO_SUSPENDED && st != DYNSTACK_CORO_DEAD)
		return ds_stale_handle(__func__, c, "coroutine");
#if DS_SANITIZE
	void *fiber = c->san.fiber;
#endif
	if (c->group) {
		int rc = ds_shared_coro_destroy(c);
		if (rc)
			return rc;
	} else {
		ds_coro_drop_segments(c);
		/* The object stays where it is (type-stable, in its slot's
		 * arena): a stale handle reads status 0 until a later create
		 * takes the slot; with check_handles, never again. */
		atomic_store_explicit(&c->status, 0, memory_order_release);
		ds_stack_release(c->stack);
	}
#if DS_SANITIZE
	ds_san_fiber_destroy(fiber);
#endif
	DS_TSTAT_SUB(nr_dynamic_stacks_coros, 1);
	return 0;
}

DYNSTACK_API dynstack_t *dynstack_coro_stack(const dynstack_coro_t *c)
{
	if (!c || ds_coro_stale(c, __func__))
		return NULL;
	return c->stack;
}

DYNSTACK_API dynstack_coro_t *dynstack_coro_current(void)
{
	return current;
}

void ds_coro_segment_push(struct dynstack *seg)
{
	struct dynstack_coro *c = current;
	seg->coro = c;
	if (c) {
		seg->next_free = c->segments;
		c->segments = seg;
	}
}

void ds_coro_segment_pop(struct dynstack *seg)
{
	struct dynstack_coro *c = seg->coro;
	if (c) {
		/* Innermost first: seg is the head unless an exception skipped
		 * an inner one's cleanup, which cannot happen with -fexceptions. */
		struct dynstack **pp = &c->segments;
		while (*pp && *pp != seg)
			pp = &(*pp)->next_free;
		if (*pp)
			*pp = seg->next_free;
		seg->next_free = NULL;
		seg->coro = NULL;
	}
}
