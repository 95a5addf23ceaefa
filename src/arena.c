/* Arenas and slots: where stacks live, and the O(1) map from a fault address
 * to its stack. The map is only ever appended to, with release stores, so
 * the handler reads it with no lock. Slot allocation takes a per-class
 * mutex: it runs on create/destroy, never in the handler. */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "coro.h"
#include "internal.h"

#define DS_MAP_ENTRIES ((size_t)1 << (DS_VA_BITS - DS_CHUNK_SHIFT))
#define DS_MIN_SHIFT 13 /* 8 KiB: one usable page and its guard page */
#define DS_MAX_SHIFT 31 /* DYNSTACK_MAX_SIZE plus its guard page */
/* Slots are made ready in batches: one mprotect + one madvise per batch
 * instead of per stack, without touching page tables of the whole arena. */
#define DS_BATCH_BYTES ((size_t)2 << 20)

struct ds_class {
	pthread_mutex_t lock;
	struct ds_arena *arenas; /* newest first */
	struct dynstack *free;	 /* released slots, decommitted */
};

/* addr >> DS_CHUNK_SHIFT -> arena. 2 MiB of address space, touched only
 * where arenas exist; never freed, so the handler can always read it. */
typedef struct ds_arena *_Atomic ds_arena_ref;
static ds_arena_ref *_Atomic chunk_map;
static pthread_once_t locks_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ds_class classes[DS_MAX_SHIFT + 1];

static void locks_init(void)
{
	for (size_t i = 0; i <= DS_MAX_SHIFT; i++)
		pthread_mutex_init(&classes[i].lock, NULL);
}

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
	a->prepared = 0;
	a->slots = (struct dynstack *)(a + 1);
	a->coros = (char *)meta + coros_off;
	for (size_t i = 0; i < nslots; i++)
		a->slots[i].arena = a;
	/* Publish after the record is complete: the handler may see it at once. */
	ds_arena_ref *map = atomic_load_explicit(&chunk_map, memory_order_relaxed);
	for (uintptr_t c = a->base; c < a->end; c += DS_CHUNK_SIZE)
		atomic_store_explicit(&map[c >> DS_CHUNK_SHIFT], a, memory_order_release);
	DS_STAT_ADD(nr_dynamic_stacks_arenas, 1);
	*out = a;
	return 0;
}

/* Make the next batch of slots of a ready; class lock held. */
static int arena_prepare_batch(struct ds_arena *a)
{
	size_t stride = (size_t)1 << a->shift;
	size_t n = DS_BATCH_BYTES / stride;
	if (n == 0)
		n = 1;
	if (n > a->nslots - a->prepared)
		n = a->nslots - a->prepared;
	uintptr_t lo = a->base + (a->prepared << a->shift);
	int rc = ds_os_prepare(ds_opt.backend, lo, lo + (n << a->shift));
	if (rc)
		return rc;
	a->prepared += n;
	return 0;
}

int ds_arena_slot_get(size_t size, struct dynstack **out)
{
	*out = NULL;
	pthread_once(&locks_once, locks_init);
	int rc = map_ensure();
	if (rc)
		return rc;
	unsigned shift = ds_arena_class(size);
	if (shift > DS_MAX_SHIFT)
		return -EINVAL;
	struct ds_class *c = &classes[shift];
	struct dynstack *s = NULL;

	pthread_mutex_lock(&c->lock);
	if ((s = c->free)) {
		c->free = s->next_free;
		s->next_free = NULL;
		goto out;
	}
	struct ds_arena *a = c->arenas;
	if (!a || a->used == a->nslots) {
		if ((rc = arena_add(shift, &a)))
			goto out;
		a->next = c->arenas;
		c->arenas = a;
	}
	if (a->used == a->prepared && (rc = arena_prepare_batch(a)))
		goto out;
	s = &a->slots[a->used++];
out:
	pthread_mutex_unlock(&c->lock);
	*out = s;
	return rc;
}

void ds_arena_slot_put(struct dynstack *s)
{
	struct ds_class *c = &classes[s->arena->shift];
	pthread_mutex_lock(&c->lock);
	s->next_free = c->free;
	c->free = s;
	pthread_mutex_unlock(&c->lock);
}

void ds_arena_fork(enum ds_fork_phase ph)
{
	pthread_once(&locks_once, locks_init);
	ds_fork_lock(&map_lock, ph);
	for (size_t i = 0; i <= DS_MAX_SHIFT; i++)
		ds_fork_lock(&classes[i].lock, ph);
}
