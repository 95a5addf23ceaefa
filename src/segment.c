/* Cooperative stacks (seed 002, Matthew Wilcox: "an 'ensure we have at least
 * N bytes of stack remaining' API"): how much stack is left, committing ahead
 * of use, and running a call on a fresh segment when too little is left.
 * The stack is always found from the stack pointer through the arena map, so
 * these work on coroutines, on segments, and on stacks a runtime switches to
 * with its own code; anything else is a thread's own stack. Segments come
 * from the stack cache, so a loop that crosses the boundary again and again
 * makes no mmap or munmap (stacker's hot-split problem). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "policy.h"
#include "sanitize.h"

/* A segment holds the request plus this much, for fn's own frames and for
 * the library calls it makes before it uses the bytes it asked for. */
#define DS_SEGMENT_MARGIN ((size_t)16 << 10)

/* This thread's own stack, once known: [own_lo, own_hi). */
static DS_TLS uintptr_t own_lo, own_hi;

void *ds_call_on_stack(void *top, void *(*fn)(void *), void *arg)
	__attribute__((visibility("hidden")));

static __attribute__((noinline)) uintptr_t own_stack_lo(void)
{
	int saved = errno; /* pthread_getattr_np reads /proc for the main thread */
	pthread_attr_t a;
	void *addr;
	size_t size;
	if (pthread_getattr_np(pthread_self(), &a) == 0) {
		if (pthread_attr_getstack(&a, &addr, &size) == 0) {
			own_lo = (uintptr_t)addr;
			own_hi = (uintptr_t)addr + size;
		}
		pthread_attr_destroy(&a);
	}
	errno = saved;
	return own_lo;
}

/* The live dynamic stack that sp is on, or NULL for a thread's own stack. */
static inline struct dynstack *stack_at(uintptr_t sp)
{
	struct dynstack *s = ds_arena_lookup_sigsafe(sp);
	if (!s || atomic_load_explicit(&s->state, memory_order_acquire) != DS_SLOT_LIVE ||
	    sp > s->top || sp < s->lo - s->reserve)
		return NULL;
	return s;
}

/* The stack this thread last asked about, so that a repeated query is a
 * range check and one load instead of a map lookup: valid while that stack
 * (same slot, same id) is still the one running here. */
struct where {
	uintptr_t lo, top;  /* [lo, top): the usable part (lo - reserve for the check) */
	struct dynstack *s; /* NULL: the thread's own stack */
	uint64_t id;
};
static DS_TLS struct where here;

static __attribute__((noinline)) const struct where *locate_slow(uintptr_t sp)
{
	struct dynstack *s = stack_at(sp);
	if (s) {
		here = (struct where){ .lo = s->lo, .top = s->top, .s = s, .id = s->id };
	} else {
		uintptr_t lo = own_lo ? own_lo : own_stack_lo();
		if (sp < lo || sp >= own_hi) {
			/* A stack we know nothing about (a signal stack, one a
			 * runtime made itself): no room is promised, so ensure
			 * refuses and dynstack_call switches. Not cached. */
			static DS_TLS struct where unknown;
			unknown = (struct where){ .lo = sp, .top = sp + 1, .s = NULL };
			return &unknown;
		}
		here = (struct where){ .lo = lo, .top = own_hi, .s = NULL };
	}
	return &here;
}

static inline const struct where *locate(uintptr_t sp)
{
	const struct where *w = &here;
	if (__builtin_expect(
		    sp - w->lo < w->top - w->lo &&
			    (!w->s || atomic_load_explicit(&w->s->state, memory_order_relaxed) ==
					      DS_SLOT_LIVE) &&
			    (!w->s || w->s->id == w->id),
		    1))
		return w;
	return locate_slow(sp);
}

static inline size_t remaining_at(uintptr_t sp)
{
	const struct where *w = locate(sp);
	return sp > w->lo ? sp - w->lo : 0;
}

DYNSTACK_API size_t dynstack_remaining(void)
{
	return remaining_at((uintptr_t)__builtin_frame_address(0));
}

static __attribute__((noinline)) int ensure_slow(struct dynstack *s, uintptr_t target,
						 uintptr_t edge)
{
	int saved = errno;
	int rc = ds_stack_grow_sigsafe(s, target, &edge);
	errno = saved;
	if (rc < 0)
		return rc;
	if (rc == 1) {
		DS_STAT_ADD(nr_dynamic_stacks_ensured, (edge - target) / ds_os_page_size());
		/* Growth for the trim hysteresis, as a fault would be. */
		ds_trim_note_fault_sigsafe(s, target);
	}
	return 0;
}

DYNSTACK_API int dynstack_ensure(size_t bytes)
{
	uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
	const struct where *w = locate(sp);
	if (sp < w->lo || bytes > sp - w->lo)
		return -ENOSPC; /* the reserve of overflow=warn is not for planned use */
	if (!w->s)
		return 0; /* a thread's own stack: the kernel commits it on touch */
	uintptr_t target = (sp - bytes) & ~(uintptr_t)(ds_page_size - 1);
	uintptr_t edge = atomic_load_explicit(&w->s->edge, memory_order_acquire);
	if (__builtin_expect(target >= edge, 1))
		return 0;
	return ensure_slow(w->s, target, edge);
}

/* The segment this thread used last, kept live for its next crossing: a
 * loop that crosses the boundary pays a few loads and stores, not a create
 * and a destroy. Released at thread exit. */
static DS_TLS struct dynstack *idle_seg;

void ds_segment_thread_fini(void)
{
	struct dynstack *s = idle_seg;
	idle_seg = NULL;
	if (s)
		ds_stack_release(s);
}

static void put_segment(struct dynstack **segp)
{
	/* Runs when fn returns and when an exception unwinds through us. */
	struct dynstack *s = *segp;
	if (!s)
		return;
	ds_coro_segment_pop(s);
	if (!idle_seg) {
		idle_seg = s;
		return;
	}
	int saved = errno; /* fn's errno is its result too */
	ds_stack_release(s);
	errno = saved;
}

static inline __attribute__((always_inline)) uintptr_t stack_pointer(void)
{
	uintptr_t sp;
#if defined(__x86_64__)
	__asm__ volatile("mov %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
	__asm__ volatile("mov %0, sp" : "=r"(sp));
#else
	sp = (uintptr_t)__builtin_frame_address(0) - 4096; /* a generous bound */
#endif
	return sp;
}

#if DS_ASAN
/* ASan must hear of both crossings, the second one from the segment. Both
 * are announced by cleanups, which also run when a C++ exception unwinds
 * through the crossing: the first on the segment, the second once the
 * unwinder has moved the stack pointer back to the caller's stack, the
 * order the fiber API wants. */
struct annotated_call {
	void *(*fn)(void *);
	void *arg;
	struct ds_san_ctx back; /* the caller's stack */
};

static void leave_segment(struct annotated_call **a)
{
	ds_san_leave(NULL, (*a)->back.bottom, (*a)->back.size, NULL);
}

static void back_from_segment(struct ds_san_ctx *me)
{
	ds_san_arrive(me, NULL);
}

static void *annotated_entry(void *p)
{
	struct annotated_call *a __attribute__((cleanup(leave_segment))) = p;
	ds_san_arrive(NULL, &a->back);
	return a->fn(a->arg);
}

static void *call_annotated(struct dynstack *seg, void *(*fn)(void *), void *arg)
{
	struct annotated_call a = { .fn = fn, .arg = arg };
	struct ds_san_ctx me __attribute__((cleanup(back_from_segment)));
	ds_san_leave(&me, (const void *)seg->lo, seg->top - seg->lo, NULL);
	return ds_call_on_stack((void *)seg->top, annotated_entry, &a);
}
#endif

static __attribute__((noinline)) void *call_on_segment(size_t need, void *(*fn)(void *), void *arg)
{
	/* Power-of-two sizes, so that segments of similar needs share a size
	 * class and come back warm from the cache. */
	size_t size = DS_SEGMENT_MARGIN;
	while (size < need + DS_SEGMENT_MARGIN && size < DYNSTACK_MAX_SIZE)
		size <<= 1;

	struct dynstack *seg __attribute__((cleanup(put_segment))) = NULL;
	if (idle_seg && idle_seg->top - idle_seg->lo >= size) {
		seg = idle_seg;
		idle_seg = NULL;
	} else {
		dynstack_attr_t attr;
		dynstack_attr_init(&attr);
		attr.size = size;
		attr.name = "segment";
		int saved = errno;
		int rc = need > DYNSTACK_MAX_SIZE - DS_SEGMENT_MARGIN ?
				 -EINVAL :
				 ds_stack_create(&seg, &attr, DS_SLOT_SEGMENT);
		errno = saved;
		if (rc) {
			/* Running fn here would overflow this stack: say so, stop. */
			struct ds_buf b = { .len = 0 };
			ds_buf_str_sigsafe(&b, "libdynstack: dynstack_call: no segment of ");
			ds_buf_dec_sigsafe(&b, need);
			ds_buf_str_sigsafe(&b, " bytes: ");
			ds_buf_str_sigsafe(&b, dynstack_strerror(rc));
			ds_buf_str_sigsafe(&b, "\n");
			ds_buf_write_sigsafe(&b, STDERR_FILENO);
			abort();
		}
	}
	const struct where *w = locate((uintptr_t)__builtin_frame_address(0));
	seg->caller_id = w->s ? w->s->id : 0;
	/* A shared-mode coroutine suspended on the segment has its frames on
	 * the shared stack from here up: this frame, and below it what the
	 * crossing pushes (a return address and a saved register). */
	seg->caller_sp = stack_pointer() - 64;
	ds_coro_segment_push(seg);
	DS_STAT_ADD(nr_dynamic_stacks_segments, 1);
#if DS_ASAN
	return call_annotated(seg, fn, arg);
#else
	return ds_call_on_stack((void *)seg->top, fn, arg);
#endif
}

DYNSTACK_API void *dynstack_call(size_t need, void *(*fn)(void *), void *arg)
{
	if (!fn)
		return NULL;
	if (__builtin_expect(remaining_at((uintptr_t)__builtin_frame_address(0)) >= need, 1))
		return fn(arg);
	return call_on_segment(need, fn, arg);
}
