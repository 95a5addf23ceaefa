/* Test-only fault injection (inject.h): per point, how many calls to let
 * through and how many to fail. Built into the internal library alone. The
 * fault handler reaches ds_inject_fire_sigsafe through commit, so it uses
 * lock-free atomics only; arming and clearing run in tests, never in it. */
#include <stdatomic.h>

#include "inject.h"

#if !DS_FAULT_INJECTION
#error "inject.c belongs to the internal library built with -DDS_FAULT_INJECTION=1"
#endif

_Atomic uint32_t ds_inject_mask;

static struct {
	_Atomic uint32_t skip;	/* calls still to let through */
	_Atomic uint32_t times; /* calls still to fail, DS_INJECT_ALWAYS: all */
	_Atomic int err;
	_Atomic uint64_t hits;
} points[DS_INJ_NPOINTS];

void ds_inject_arm(enum ds_inject_point p, uint32_t skip, uint32_t times, int err)
{
	if ((unsigned)p >= DS_INJ_NPOINTS || !times || err >= 0)
		return;
	atomic_store_explicit(&points[p].skip, skip, memory_order_relaxed);
	atomic_store_explicit(&points[p].times, times, memory_order_relaxed);
	atomic_store_explicit(&points[p].err, err, memory_order_relaxed);
	/* Release: a call site that sees the bit sees the counts. */
	atomic_fetch_or_explicit(&ds_inject_mask, 1u << p, memory_order_release);
}

void ds_inject_clear(enum ds_inject_point p)
{
	if ((unsigned)p >= DS_INJ_NPOINTS)
		return;
	atomic_fetch_and_explicit(&ds_inject_mask, ~(1u << p), memory_order_relaxed);
	atomic_store_explicit(&points[p].times, 0, memory_order_relaxed);
}

void ds_inject_clear_all(void)
{
	for (unsigned p = 0; p < DS_INJ_NPOINTS; p++)
		ds_inject_clear((enum ds_inject_point)p);
}

uint64_t ds_inject_hits(enum ds_inject_point p)
{
	return (unsigned)p < DS_INJ_NPOINTS ?
		       atomic_load_explicit(&points[p].hits, memory_order_relaxed) :
		       0;
}

int ds_inject_fire_sigsafe(enum ds_inject_point p)
{
	atomic_thread_fence(memory_order_acquire); /* pairs with arm's release */
	uint32_t n = atomic_load_explicit(&points[p].skip, memory_order_relaxed);
	while (n)
		if (atomic_compare_exchange_weak_explicit(
			    &points[p].skip, &n, n - 1, memory_order_relaxed, memory_order_relaxed))
			return 0;
	uint32_t t = atomic_load_explicit(&points[p].times, memory_order_relaxed);
	do {
		if (!t)
			return 0; /* cleared, or spent by another thread */
		if (t == DS_INJECT_ALWAYS)
			break;
	} while (!atomic_compare_exchange_weak_explicit(
		&points[p].times, &t, t - 1, memory_order_relaxed, memory_order_relaxed));
	if (t == 1) /* the last failure: disarm, so call sites skip us again */
		atomic_fetch_and_explicit(&ds_inject_mask, ~(1u << p), memory_order_relaxed);
	atomic_fetch_add_explicit(&points[p].hits, 1, memory_order_relaxed);
	return atomic_load_explicit(&points[p].err, memory_order_relaxed);
}
