/* Core data types, glossary first.
 *
 *   arena   one big reservation, aligned to DS_CHUNK_SIZE, cut into equal
 *           power-of-two slots of one size class; its metadata lives in a
 *           separate array, never on a stack.
 *   slot    one stack's address range [base, base + stride).
 *   floor   [base, lo - reserve): never committed. A fault here is an
 *           overflow. It is at least one page (the guard page) and all the
 *           rounding slack.
 *   reserve [lo - reserve, lo): overflow=warn only: committed on demand past
 *           the nominal size, with a warning.
 *   lo      lowest usable address; top - lo == size (the THREAD_SIZE).
 *   top     base + stride: the initial stack pointer.
 *   edge    lowest committed address: [edge, top) is accessible.
 *   commit  make pages accessible (guard: MADV_GUARD_REMOVE, mprotect: RW);
 *           the kernel still allocates them on first touch.
 *   sync stack  the per-thread sigaltstack the fault handler runs on.
 */
#ifndef DS_TYPES_H
#define DS_TYPES_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dynstack.h"

struct ds_policy;
struct dynstack_coro;

enum ds_slot_state {
	DS_SLOT_FREE = 0,   /* not a stack: any fault here is foreign */
	DS_SLOT_LIVE = 1,   /* a stack: faults here are ours */
	DS_SLOT_CACHED = 2, /* a destroyed stack kept warm in a cache: foreign */
};

/* trim_state: a decommit queued for a suspended stack, tagged with a number
 * unique to that queueing, so that a queue entry can never act on a later
 * queueing (of this stack or of a later stack of the slot). Resume cancels
 * a pending one; flush claims it first. */
enum ds_trim_state {
	DS_TRIM_NONE = 0,
	DS_TRIM_PENDING = 1,
	DS_TRIM_FLUSHING = 2,
};
#define DS_TRIM_TAG(tag, st) (((uint64_t)(tag) << 2) | (st))

enum ds_slot_flags {
	DS_SLOT_CORO = 1u << 0,	   /* owned by a coroutine; dynstack_destroy refuses */
	DS_SLOT_SEGMENT = 1u << 1, /* a dynstack_call segment; dynstack_destroy refuses */
	DS_SLOT_RETIRE = 1u << 2,  /* check_handles: never reused once released */
};

/* One stack. The public dynstack_t is this struct; it lives in its arena's
 * metadata array for the life of the process, so the handler may read it
 * at any time without a lock. Fields the handler reads are atomic or are
 * written before `state` is published with release order. */
struct dynstack {
	_Atomic uintptr_t edge;		/* lowest committed address */
	_Atomic uintptr_t peak_edge;	/* lowest edge since creation */
	_Atomic uint32_t state;		/* enum ds_slot_state */
	uint32_t flags;			/* enum ds_slot_flags */
	uintptr_t lo;			/* lowest usable address (nominal size) */
	uintptr_t top;			/* one past the highest usable address */
	size_t reserve;			/* overflow=warn reserve below lo */
	uint64_t id;			/* process-unique, never 0 for a live stack */
	const struct ds_policy *policy; /* interned: never freed */
	size_t learned;			/* learn: what earlier stacks taught this one */
	unsigned vg_id;			/* Valgrind's id for the stack, 0: none */
	uint32_t batch_n;		/* arena.c: a batch to prepare again: its slots */
	size_t slot_hist;		/* learn: peak of this slot's last stack (kept on reuse) */
	_Atomic uint64_t faults;	/* commit faults taken by this stack */
	_Atomic int warned;		/* overflow=warn: the one warning was printed */
	struct dynstack_coro *coro;	/* owning coroutine, or NULL */
	uint64_t caller_id;  /* segment: the stack dynstack_call ran from (0: a thread's own) */
	uintptr_t caller_sp; /* segment: lowest address the crossing used on that stack */
	/* trim (cache.c). faulted/trim_lo/trim_hi/idle_limit are also touched
	 * by the handler of the thread running the stack: relaxed atomics. */
	_Atomic uint64_t trim_state;	    /* DS_TRIM_TAG(tag, enum ds_trim_state) */
	_Atomic int faulted;		    /* grew since the last trim point */
	_Atomic uint32_t idle_limit;	    /* idle trim points before a trim */
	uint32_t idle;			    /* idle trim points so far */
	bool trim_cancelled;		    /* its last queued trim was cancelled by a resume */
	_Atomic uintptr_t trim_lo, trim_hi; /* last trimmed range: a fault in it is a mis-trim */
	struct ds_arena *arena;
	struct dynstack *next_free; /* link in a cache, depot or segment list */
	_Atomic uint64_t slot_next; /* arena.c: link in its class's free list */
	char name[DYNSTACK_NAME_MAX + 1];
};

/* A reservation for one size class. Immutable once published, except for
 * the bump counter `used` (atomic: claimed a batch at a time). */
struct ds_arena {
	uintptr_t base; /* DS_CHUNK_SIZE-aligned */
	uintptr_t end;	/* base + nslots << shift */
	unsigned shift; /* log2(stride) */
	size_t nslots;
	_Atomic size_t used;	/* slots [0, min(used, nslots)) have been claimed */
	struct dynstack *slots; /* metadata, nslots entries */
	void *coros;		/* private coroutine objects, one per slot (coro.c) */
	struct ds_arena *next;	/* next arena of the same class */
};

#endif /* DS_TYPES_H */
