/* Test-only fault injection in the port layer (docs/design.md, "Testing:
 * fault injection"). Only the internal static library that white-box tests
 * link is built with DS_FAULT_INJECTION; in the installed libraries every
 * DS_INJECT() below expands to nothing and inject.c is not even compiled. */
#ifndef DS_INJECT_H
#define DS_INJECT_H

#include <stdatomic.h>
#include <stdint.h>

#include "internal.h"

/* One per os-linux.c function that can fail; each fails before its system
 * call, except decommit, which fails after it (see ds_os_decommit). */
enum ds_inject_point {
	DS_INJ_RESERVE,	    /* ds_os_reserve: an arena's address space */
	DS_INJ_MAP,	    /* ds_os_map_rw: arena metadata, the address map, trace rings */
	DS_INJ_PREPARE,	    /* ds_os_prepare: a batch of slots made ready */
	DS_INJ_SYNC_MAP,    /* ds_os_map_guarded: a thread's sync stack */
	DS_INJ_SIGALTSTACK, /* ds_os_sigaltstack with a new stack (install, restore) */
	DS_INJ_COMMIT,	    /* ds_os_commit_sigsafe: fault handler, create, ensure */
	DS_INJ_POPULATE,    /* ds_os_populate_sigsafe */
	DS_INJ_DECOMMIT,    /* ds_os_decommit: trim, destroy, cache */
	DS_INJ_NPOINTS
};

/* ds_inject_arm's `times` for "until cleared". */
#define DS_INJECT_ALWAYS UINT32_MAX

/* Defined only in the internal library built with DS_FAULT_INJECTION; tests
 * that link it call the functions. Bit p of the mask set: point p is armed.
 * The only thing a call site reads when nothing is armed: one relaxed load
 * and a branch predicted not taken. */
DS_HIDDEN extern _Atomic uint32_t ds_inject_mask;
/* Let `skip` calls at p through, then fail the next `times` calls (or all,
 * DS_INJECT_ALWAYS) with err, a negative errno. Calls from every thread
 * count. */
DS_HIDDEN void ds_inject_arm(enum ds_inject_point p, uint32_t skip, uint32_t times, int err);
DS_HIDDEN void ds_inject_clear(enum ds_inject_point p);
DS_HIDDEN void ds_inject_clear_all(void);
/* Failures injected at p since the process started. */
DS_HIDDEN uint64_t ds_inject_hits(enum ds_inject_point p);
/* An armed point was reached: 0 to go on, or the error to fail with.
 * Lock-free: the fault handler reaches commit and populate. */
DS_HIDDEN int ds_inject_fire_sigsafe(enum ds_inject_point p);

#if DS_FAULT_INJECTION
/* Called by arena.c's free-list pop between reading the head's successor and
 * its compare-and-swap, when set: a test makes other pops and pushes happen
 * right there (the ABA case) on one thread. */
DS_HIDDEN extern void (*ds_arena_pop_hook)(void);
/* 0, or the injected error for this call at p. */
#define DS_INJECTED(p)                                                                             \
	(__builtin_expect(                                                                         \
		 atomic_load_explicit(&ds_inject_mask, memory_order_relaxed) & (1u << (p)), 0) ?   \
		 ds_inject_fire_sigsafe(p) :                                                       \
		 0)
/* Return the injected error from the calling function, if there is one. */
#define DS_INJECT(p)                                                                               \
	do {                                                                                       \
		int ds_inject_rc_ = DS_INJECTED(p);                                                \
		if (ds_inject_rc_)                                                                 \
			return ds_inject_rc_;                                                      \
	} while (0)
#else
#define DS_INJECTED(p) 0
#define DS_INJECT(p)                                                                               \
	do {                                                                                       \
	} while (0)
#endif

#endif /* DS_INJECT_H */
