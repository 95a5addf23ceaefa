/* Asymmetric coroutines on dynamic stacks. A coroutine may move between OS
 * threads between resumes, so nothing here caches thread-local state across
 * a switch: the resumer's side of a switch always returns on the resumer's
 * own thread, and the coroutine's side reads only the coroutine object. */
#include <errno.h>
#include <stdlib.h>

#include "ctx.h"
#include "internal.h"

struct dynstack_coro {
	ds_ctx_t ctx;	     /* the coroutine's saved state */
	ds_ctx_t caller;     /* the resumer's saved state, valid while it runs */
	_Atomic int status;  /* dynstack_coro_status_t */
	int finished;	     /* set on the coroutine's stack, read by the resumer */
	struct dynstack_coro *parent; /* coroutine that resumed it, or NULL */
	struct dynstack *stack;
	dynstack_coro_fn fn;
	void *arg;
};

static DS_TLS struct dynstack_coro *current;

/* Read through a call the compiler cannot see into, so that a coroutine that
 * resumes on another thread does not reuse the previous thread's TLS address. */
static __attribute__((noinline)) struct dynstack_coro *current_get(void)
{
	struct dynstack_coro *c = current;
	__asm__ volatile("" ::: "memory");
	return c;
}

static __attribute__((noinline)) void current_set(struct dynstack_coro *c)
{
	current = c;
	__asm__ volatile("" ::: "memory");
}

static void coro_main(void *arg)
{
	struct dynstack_coro *c = arg;
	c->fn(c->arg);
	c->finished = 1;
	ds_ctx_switch(&c->ctx, &c->caller);
	abort(); /* a dead coroutine is never resumed (status is DEAD) */
}

DYNSTACK_API int dynstack_coro_create(dynstack_coro_t **out, dynstack_coro_fn fn, void *arg,
				      const dynstack_attr_t *attr)
{
	DS_KEEP_ERRNO();
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!fn)
		return -EINVAL;
	struct dynstack_coro *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int rc = ds_stack_create(&c->stack, attr, DS_SLOT_CORO);
	if (rc) {
		free(c);
		return rc;
	}
	c->fn = fn;
	c->arg = arg;
	ds_ctx_make(&c->ctx, (void *)c->stack->lo, c->stack->top - c->stack->lo, coro_main, c);
	atomic_store_explicit(&c->status, DYNSTACK_CORO_SUSPENDED, memory_order_release);
	DS_STAT_ADD(nr_dynamic_stacks_coros, 1);
	*out = c;
	return 0;
}

DYNSTACK_API int dynstack_coro_resume(dynstack_coro_t *c)
{
	DS_KEEP_ERRNO();
	if (!c)
		return -EINVAL;
	int rc = ds_thread_ensure();
	if (rc)
		return rc;
	int st = DYNSTACK_CORO_SUSPENDED;
	if (!atomic_compare_exchange_strong_explicit(&c->status, &st, DYNSTACK_CORO_RUNNING,
						     memory_order_acquire, memory_order_relaxed))
		return st == DYNSTACK_CORO_DEAD ? -EINVAL : -EBUSY;

	struct dynstack_coro *parent = current_get();
	if (parent)
		atomic_store_explicit(&parent->status, DYNSTACK_CORO_NORMAL, memory_order_relaxed);
	c->parent = parent;
	current_set(c);
	ds_ctx_switch(&c->caller, &c->ctx);
	/* Back on this thread: c yielded or returned, its state is saved, so
	 * only now may another thread resume it (release). */
	current_set(parent);
	if (parent)
		atomic_store_explicit(&parent->status, DYNSTACK_CORO_RUNNING, memory_order_relaxed);
	atomic_store_explicit(&c->status, c->finished ? DYNSTACK_CORO_DEAD : DYNSTACK_CORO_SUSPENDED,
			      memory_order_release);
	return 0;
}

DYNSTACK_API int dynstack_coro_yield(void)
{
	struct dynstack_coro *c = current_get();
	if (!c)
		return -EPERM;
	ds_ctx_switch(&c->ctx, &c->caller);
	return 0;
}

DYNSTACK_API int dynstack_coro_status(const dynstack_coro_t *c)
{
	if (!c)
		return -EINVAL;
	return atomic_load_explicit(&c->status, memory_order_acquire);
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
		return -EINVAL;
	ds_stack_release(c->stack);
	atomic_store_explicit(&c->status, 0, memory_order_relaxed);
	free(c);
	DS_STAT_SUB(nr_dynamic_stacks_coros, 1);
	return 0;
}

DYNSTACK_API dynstack_t *dynstack_coro_stack(const dynstack_coro_t *c)
{
	return c ? c->stack : NULL;
}

DYNSTACK_API dynstack_coro_t *dynstack_coro_current(void)
{
	return current_get();
}
