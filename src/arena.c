/* Arenas and slots: where stacks live, and the O(1) map from a fault address
 * to its stack. The map is only ever appended to, with release stores, so
 * the handler reads it with no lock. Slots are taken and given back without
 * a lock too: free slots wait on a lock-free stack per size class; fresh
 * ones are claimed from the newest arena a batch at a time (an atomic add),
 * prepared by the claimer alone, and the rest of the batch pushed on the
 * free list; whoever finds the newest arena full adds one, published with a
 * compare-and-swap (docs/design.md, "Concurrency"). */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "coro.h"
#include "inject.h"
#include "internal.h"

#define DS_MAP_ENTRIES ((size_t)1 << (DS_VA_BITS - DS_CHUNK_SHIFT))
#define DS_MIN_SHIFT 13 /* 8 KiB: one usable page and its guard page */
#define DS_MAX_SHIFT 31 /* DYNSTACK_MAX_SIZE plus its guard page */
/* Slots are made ready in batches: one mprotect + one madvise per batch
 * instead of per stack, without touching page tables of the whole arena. */
#define DS_BATCH_BYTES ((size_t)2 << 20)

/* A free list is a lock-free (Treiber) stack of slots. Its head packs a
 * slot reference in the low DS_REF_BITS bits and an ABA tag, bumped by every
 * push and pop, in the rest: a thread that read the head, then slept while
 * others popped its slot and pushed it back, fails its compare-and-swap. A
 * reference is the arena's chunk number (DS_VA_BITS - DS_CHUNK_SHIFT = 18
 * bits: the address map finds the arena) and the slot's index in it (17
 * bits: an arena has at most 1 GiB / 8 KiB slots), plus one: 0 is "none".
 * The tag has 28 bits: a stale head would have to see 2^28 operations
 * between its read and its CAS to be mistaken. Slot metadata is never
 * unmapped, so reading a popped slot's link is always safe. */
#define DS_SLOT_BITS 17
#define DS_REF_BITS (DS_VA_BITS - DS_CHUNK_SHIFT + DS_SLOT_BITS + 1)
#define DS_REF_MASK (((uint64_t)1 << DS_REF_BITS) - 1)

struct ds_class {
	_Atomic uint64_t free;		 /* released and fresh slots, decommitted */
	_Atomic uint64_t retry;		 /* first slots of batches whose preparation failed */
	struct ds_arena *_Atomic arenas; /* newest first; only ever pushed */
	struct ds_arena *_Atomic spare;	 /* added by threads that lost the race to add one */
};

/* addr >> DS_CHUNK_SHIFT -> arena. 2 MiB of address space, touched only
 * where arenas exist; never freed, so the handler can always read it. */
typedef struct ds_arena *_Atomic ds_arena_ref;
static ds_arena_ref *_Atomic chunk_map;
static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ds_class classes[DS_MAX_SHIFT + 1];

/* The map is made by the first create, under a lock rather than
 * pthread_once: a refused mmap (ENOMEM) must leave the next create free to
 * try again, not fail every create for the life of the process. */
static int map_ensure(void)
{
	int rc = 0;
	if (atomic_load_explicit(&chunk_map, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&map_lock);
	if (!atomic_load_explicit(&chunk_map, memory_order_relaxed)) {
		void *p;
		if (!(rc = ds_os_map_rw(DS_MAP_ENTRIES * sizeof(*chunk_map), &p)))
			atomic_store_explicit(&chunk_map, (ds_arena_ref *)p, memory_order_release);
	}
	pthread_mutex_unlock(&map_lock);
	return rc;
}

struct dynstack *ds_arena_lookup_sigsafe(uintptr_t addr)
{
	ds_arena_ref *map = atomic_load_explicit(&chunk_map, memory_order_acquire);
	if (!map || (addr >> DS_VA_BITS))
		return NULL;
	struct ds_arena *a =
		atomic_load_explicit(&map[addr >> DS_CHUNK_SHIFT], memory_order_acquire);
	if (!a || addr < a->base || addr >= a->end)
		return NULL;
	return &a->slots[(addr - a->base) >> a->shift];
}

uintptr_t ds_slot_base(const struct dynstack *s)
{
	const struct ds_arena *a = s->arena;
	return a->base + ((uintptr_t)(s - a->slots) << a->shift);
}

struct dynstack_coro *ds_arena_coro(const struct dynstack *s)
{
	const struct ds_arena *a = s->arena;
	return (struct dynstack_coro *)a->coros + (s - a->slots);
}

unsigned ds_arena_class(size_t size)
{
	/* The floor must hold at least one whole page below the usable part. */
	size_t need = size + ds_os_page_size();
	unsigned shift = DS_MIN_SHIFT;
	while (((size_t)1 << shift) < need)
		shift++;
	return shift;
}

static int arena_add(unsigned shift, struct ds_arena **out)
{
	size_t stride = (size_t)1 << shift;
	size_t bytes = stride > DS_CHUNK_SIZE ? stride : DS_CHUNK_SIZE;
	size_t nslots = bytes >> shift;
	struct ds_arena *a;
	void *meta, *base;
	int rc;

	/* Metadata and the arena record come from their own mapping: never
	 * freed, never on a stack, readable by the handler at any time. The
	 * coroutine objects follow, cache-line aligned; pages of both are
	 * touched only for slots in use. */
	size_t coros_off = (sizeof(*a) + nslots * sizeof(struct dynstack) + 63) & ~(size_t)63;
	size_t meta_bytes = coros_off + nslots * sizeof(struct dynstack_coro);
	if ((rc = ds_os_map_rw(meta_bytes, &meta)))
		return rc;
	if ((rc = ds_os_reserve(bytes, DS_CHUNK_SIZE, &base))) {
		ds_os_unmap(meta, meta_bytes);
		return rc;
	}
	if (((uintptr_t)base + bytes - 1) >> DS_VA_BITS) {
		/* Outside what the map covers (5-level paging): cannot be ours. */
		ds_os_unmap(base, bytes);
		ds_os_unmap(meta, meta_bytes);
		return -ENOMEM;
	}
	a = meta;
	a->base = (uintptr_t)base;
	a->end = a->base + bytes;
	a->shift = shift;
	a->nslots = nslots;
	a->slots = (struct dynstack *)(a + 1);
	a->coros = (char *)meta + coros_off;
	for (size_t i = 0; i < nslots; i++)
		a->slots[i].arena = a;
	/* Publish after the record is complete: the handler may see it at once,
	 * and a free-list reference to one of its slots is resolved through
	 * the map. */
	ds_arena_ref *map = atomic_load_explicit(&chunk_map, memory_order_relaxed);
	for (uintptr_t c = a->base; c < a->end; c += DS_CHUNK_SIZE)
		atomic_store_explicit(&map[c >> DS_CHUNK_SHIFT], a, memory_order_release);
	*out = a;
	return 0;
}

/* ---- free lists */

static uint64_t slot_ref(const struct dynstack *s)
{
	const struct ds_arena *a = s->arena;
	return ((uint64_t)(a->base >> DS_CHUNK_SHIFT) << DS_SLOT_BITS | (uint64_t)(s - a->slots)) +
	       1;
}

static struct dynstack *ref_slot(uint64_t ref)
{
	ds_arena_ref *map = atomic_load_explicit(&chunk_map, memory_order_relaxed);
	ref -= 1;
	struct ds_arena *a = atomic_load_explicit(&map[ref >> DS_SLOT_BITS], memory_order_acquire);
	return &a->slots[ref & (((uint64_t)1 << DS_SLOT_BITS) - 1)];
}

static inline uint64_t next_head(uint64_t old, uint64_t ref)
{
	return ((old >> DS_REF_BITS) + 1) << DS_REF_BITS | ref;
}

/* Release: whoever pops s sees everything done to it before. */
static void list_push(_Atomic uint64_t *head, struct dynstack *s)
{
	uint64_t ref = slot_ref(s);
	uint64_t old = atomic_load_explicit(head, memory_order_relaxed);
	do
		atomic_store_explicit(&s->slot_next, old & DS_REF_MASK, memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(head, &old, next_head(old, ref),
						      memory_order_release, memory_order_relaxed));
}

#if DS_FAULT_INJECTION
void (*ds_arena_pop_hook)(void);
#define POP_HOOK()                                                                                 \
	do {                                                                                       \
		if (ds_arena_pop_hook)                                                             \
			ds_arena_pop_hook();                                                       \
	} while (0)
#else
#define POP_HOOK()                                                                                 \
	do {                                                                                       \
	} while (0)
#endif

static struct dynstack *list_pop(_Atomic uint64_t *head)
{
	uint64_t old = atomic_load_explicit(head, memory_order_acquire);
	for (;;) {
		if (!(old & DS_REF_MASK))
			return NULL;
		struct dynstack *s = ref_slot(old & DS_REF_MASK);
		/* Stale if s was popped meanwhile: then the tag moved on too, and
		 * the CAS fails. */
		uint64_t next = atomic_load_explicit(&s->slot_next, memory_order_relaxed);
		POP_HOOK();
		if (atomic_compare_exchange_weak_explicit(head, &old, next_head(old, next),
							  memory_order_acquire,
							  memory_order_acquire))
			return s;
	}
}

/* ---- spare arenas: a chain through `next`, pushed one at a time, taken
 * whole with an exchange (so no ABA), the rest pushed back. */

static void spare_push(struct ds_class *c, struct ds_arena *a)
{
	struct ds_arena *old = atomic_load_explicit(&c->spare, memory_order_relaxed);
	do
		a->next = old;
	while (!atomic_compare_exchange_weak_explicit(&c->spare, &old, a, memory_order_release,
						      memory_order_relaxed));
}

static struct ds_arena *spare_take(struct ds_class *c)
{
	if (!atomic_load_explicit(&c->spare, memory_order_relaxed))
		return NULL;
	struct ds_arena *a = atomic_exchange_explicit(&c->spare, NULL, memory_order_acquire);
	if (a) {
		struct ds_arena *rest = a->next;
		while (rest) {
			struct ds_arena *r = rest;
			rest = r->next;
			spare_push(c, r);
		}
	}
	return a;
}

/* ---- fresh slots */

/* Prepare n fresh slots from first on (ours alone: claimed, on no list) and
 * hand out the first; the others go on the free list, lowest on top. If the
 * kernel refuses, the batch waits on the retry list for the next create. */
static int prepare_batch(struct ds_class *c, struct dynstack *first, size_t n,
			 struct dynstack **out)
{
	uintptr_t lo = ds_slot_base(first);
	int rc = ds_os_prepare(ds_opt.backend, lo, lo + (n << first->arena->shift));
	if (rc) {
		first->batch_n = (uint32_t)n;
		list_push(&c->retry, first);
		return rc;
	}
	for (size_t k = n - 1; k >= 1; k--)
		list_push(&c->free, first + k);
	*out = first;
	return 0;
}

/* Claim the next batch of a, or -EAGAIN when a is full. Batches are whole
 * and disjoint: no two threads ever prepare the same page (a second
 * MADV_GUARD_INSTALL would take back a page the first one's stack had
 * committed since). */
static int claim_batch(struct ds_class *c, struct ds_arena *a, struct dynstack **out)
{
	size_t per = DS_BATCH_BYTES >> a->shift;
	if (per == 0)
		per = 1;
	size_t i = atomic_fetch_add_explicit(&a->used, per, memory_order_relaxed);
	if (i >= a->nslots)
		return -EAGAIN;
	size_t n = a->nslots - i < per ? a->nslots - i : per;
	return prepare_batch(c, &a->slots[i], n, out);
}

int ds_arena_slot_get(size_t size, struct dynstack **out)
{
	*out = NULL;
	int rc = map_ensure();
	if (rc)
		return rc;
	unsigned shift = ds_arena_class(size);
	if (shift > DS_MAX_SHIFT)
		return -EINVAL;
	struct ds_class *c = &classes[shift];
	struct dynstack *s;

	if ((s = list_pop(&c->free))) {
		*out = s;
		return 0;
	}
	if ((s = list_pop(&c->retry)))
		return prepare_batch(c, s, s->batch_n, out);
	for (;;) {
		struct ds_arena *a = atomic_load_explicit(&c->arenas, memory_order_acquire);
		if (a && (rc = claim_batch(c, a, out)) != -EAGAIN)
			return rc;
		/* No arena yet, or the newest is full: add one, or take one that
		 * a thread which lost this race kept. */
		struct ds_arena *na = spare_take(c);
		if (!na && (rc = arena_add(shift, &na)))
			return rc;
		na->next = a;
		if (atomic_compare_exchange_strong_explicit(
			    &c->arenas, &a, na, memory_order_release, memory_order_relaxed)) {
			DS_STAT_ADD(nr_dynamic_stacks_arenas, 1);
			continue;
		}
		/* Another thread added one meanwhile: claim from that, and keep
		 * ours (reserved and mapped, untouched) for when it is full. */
		spare_push(c, na);
	}
}

void ds_arena_slot_put(struct dynstack *s)
{
	list_push(&classes[s->arena->shift].free, s);
}

void ds_arena_fork(enum ds_fork_phase ph)
{
	/* Slots and arenas take no lock. A thread that had claimed a batch or
	 * popped a slot when another forked holds it in the parent only: in
	 * the child it is never handed out (address space, no memory). */
	ds_fork_lock(&map_lock, ph);
}
