/* Telling the tools about stack switches: AddressSanitizer's fiber API,
 * ThreadSanitizer's fibers and Valgrind's stack registry. Everything here
 * compiles to nothing in a normal build. With a sanitizer the switches are
 * no longer tail calls (a hook must run after each one), which costs the
 * return-stack mispredictions ctx.h describes: sanitizer builds are slower,
 * never different. */
#ifndef DS_SANITIZE_H
#define DS_SANITIZE_H

#include <stddef.h>

#ifndef __has_feature
#define __has_feature(x) 0
#endif

#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define DS_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define DS_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define DS_TSAN 1
#include <sanitizer/tsan_interface.h>
#else
#define DS_TSAN 0
#endif

#define DS_SANITIZE (DS_ASAN || DS_TSAN)

/* What a context needs to tell the tools where it goes back to. */
struct ds_san_ctx {
	void *fake;	    /* ASan: this context's fake stack while switched out */
	const void *bottom; /* ASan: the stack it was entered from, for the way back */
	size_t size;
	void *fiber; /* TSan: this context's fiber; the resumer's, in a link */
};

/* About to leave the running context for the stack [lo, lo + size), which
 * runs under fiber to_fiber (TSan). from: the leaving context's record
 * (NULL when it never comes back: its fake stack is freed). */
static inline void ds_san_leave(struct ds_san_ctx *from, const void *lo, size_t size,
				void *to_fiber)
{
#if DS_ASAN
	__sanitizer_start_switch_fiber(from ? &from->fake : NULL, lo, size);
#endif
#if DS_TSAN
	__tsan_switch_to_fiber(to_fiber, 0);
#endif
	(void)from;
	(void)lo;
	(void)size;
	(void)to_fiber;
}

/* Just arrived in a context (first code after a switch). self: its record;
 * came_from receives the bounds of the stack we came from (ASan). */
static inline void ds_san_arrive(struct ds_san_ctx *self, struct ds_san_ctx *came_from)
{
#if DS_ASAN
	__sanitizer_finish_switch_fiber(self ? self->fake : NULL,
					came_from ? &came_from->bottom : NULL,
					came_from ? &came_from->size : NULL);
#endif
	(void)self;
	(void)came_from;
}

/* ASan keeps the poisoning of stack redzones in shadow memory, which does
 * not move with bytes copied in and out of a shared stack: the region is
 * unpoisoned before a copy (losing redzone checks on copied frames, never
 * reporting a false error). */
static inline void ds_san_unpoison(const void *p, size_t n)
{
#if DS_ASAN
	__asan_unpoison_memory_region(p, n);
#endif
	(void)p;
	(void)n;
}

/* Happens-before edges the assembly switch's publishing store creates but
 * TSan cannot see. */
static inline void ds_san_release(void *addr)
{
#if DS_TSAN
	__tsan_release(addr);
#endif
	(void)addr;
}
static inline void ds_san_acquire(void *addr)
{
#if DS_TSAN
	__tsan_acquire(addr);
#endif
	(void)addr;
}

static inline void *ds_san_fiber_create(void)
{
#if DS_TSAN
	return __tsan_create_fiber(0);
#else
	return NULL;
#endif
}
static inline void ds_san_fiber_destroy(void *f)
{
#if DS_TSAN
	if (f)
		__tsan_destroy_fiber(f);
#endif
	(void)f;
}
static inline void *ds_san_fiber_current(void)
{
#if DS_TSAN
	return __tsan_get_current_fiber();
#else
	return NULL;
#endif
}

#endif /* DS_SANITIZE_H */
