/* White-box tests of src/arena.c and of the fault decision in src/stack.c:
 * the address -> slot map the handler relies on, size classes, slot reuse,
 * and what ds_stack_fault_sigsafe decides and counts, also when two race.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "helpers.h"
#include "internal.h"

static int some_global;

static uintptr_t slot_stride(const struct dynstack *s)
{
	return (uintptr_t)1 << s->arena->shift;
}

static struct dynstack *create(size_t size, size_t initial)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = size;
	attr.initial = initial;
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_non_null(s);
	return s;
}

/* Every byte of the slot, floor included, maps to the slot; its neighbours'
 * bytes do not. */
static void check_slot_map(struct dynstack *s)
{
	uintptr_t base = ds_slot_base(s), stride = slot_stride(s);

	assert_int_equal(base % stride, 0);
	assert_true(base >= s->arena->base && base + stride <= s->arena->end);
	for (uintptr_t a = base; a < base + stride; a++) {
		if (ds_arena_lookup_sigsafe(a) != s)
			fail_msg("address %#lx (slot offset %#lx) not mapped to its slot",
				 (unsigned long)a, (unsigned long)(a - base));
	}
	assert_ptr_not_equal(ds_arena_lookup_sigsafe(base - 1), s);
	assert_ptr_not_equal(ds_arena_lookup_sigsafe(base + stride), s);
}

static void test_lookup_every_address(void **state)
{
	struct dynstack *s[3];

	assert_int_equal(dynstack_init(NULL), 0);
	for (int i = 0; i < 3; i++)
		s[i] = create(0, 0);
	for (int i = 0; i < 3; i++) {
		uintptr_t base = ds_slot_base(s[i]);
		/* The layout types.h describes: top at the end of the slot, at
		 * least a page of floor below lo. */
		assert_int_equal(s[i]->top, base + slot_stride(s[i]));
		assert_int_equal((uintptr_t)dynstack_top(s[i]), s[i]->top);
		assert_int_equal(s[i]->top - s[i]->lo, DYNSTACK_DEFAULT_SIZE);
		assert_true(s[i]->lo - base >= page_size());
		check_slot_map(s[i]);
	}
	for (int i = 0; i < 3; i++)
		assert_int_equal(dynstack_destroy(s[i]), 0);
}

/* The ends of a whole arena: its first and last slots are found, the
 * bytes just outside belong to no slot of it. */
static void check_arena_ends(const struct ds_arena *a)
{
	struct dynstack *r;

	assert_ptr_equal(ds_arena_lookup_sigsafe(a->base), &a->slots[0]);
	assert_ptr_equal(ds_arena_lookup_sigsafe(a->end - 1), &a->slots[a->nslots - 1]);
	r = ds_arena_lookup_sigsafe(a->end);
	if (r && (r->arena == a || r->arena->base != a->end))
		fail_msg("address %#lx, just past an arena, maps to a slot", (unsigned long)a->end);
	r = ds_arena_lookup_sigsafe(a->base - 1);
	if (r && (r->arena == a || r->arena->end != a->base))
		fail_msg("address %#lx, just below an arena, maps to a slot",
			 (unsigned long)a->base - 1);
}

static void test_arena_ends(void **state)
{
	const size_t sizes[] = { DYNSTACK_DEFAULT_SIZE, 1u << 20, DYNSTACK_MAX_SIZE };

	assert_int_equal(dynstack_init(NULL), 0);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct dynstack *s = create(sizes[i], 0);
		const struct ds_arena *a = s->arena;

		assert_int_equal(a->base % DS_CHUNK_SIZE, 0);
		assert_int_equal(a->end - a->base, a->nslots << a->shift);
		check_arena_ends(a);
		assert_int_equal(dynstack_destroy(s), 0);
	}
}

static void test_lookup_outside_is_null(void **state)
{
	int local = 0;
	void *heap = malloc(64);
	size_t ps = page_size();
	void *mine = mmap(NULL, ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct dynstack *s = create(0, 0);

	assert_non_null(heap);
	assert_true(mine != MAP_FAILED);
	const uintptr_t outside[] = {
		0,
		1,
		(uintptr_t)&some_global,
		(uintptr_t)&local,
		(uintptr_t)heap,
		(uintptr_t)mine,
		(uintptr_t)&test_lookup_outside_is_null,
		(uintptr_t)s, /* the slot metadata lives outside any arena */
		(uintptr_t)s->name,
		((uintptr_t)1 << DS_VA_BITS) - 1,
		(uintptr_t)1 << DS_VA_BITS,
		ds_slot_base(s) | ((uintptr_t)1 << 60), /* the map must not wrap */
		UINTPTR_MAX,
	};
	for (size_t i = 0; i < sizeof(outside) / sizeof(outside[0]); i++) {
		if (ds_arena_lookup_sigsafe(outside[i]))
			fail_msg("address %#lx (#%zu) is in no arena but was mapped to a slot",
				 (unsigned long)outside[i], i);
	}
	assert_int_equal(dynstack_destroy(s), 0);
	munmap(mine, ps);
	free(heap);
}

/* class_shift: the smallest power of two of at least 8 KiB that holds the
 * usable size plus one page of floor. */
static unsigned expected_shift(size_t size)
{
	size_t need = ((size + page_size() - 1) & ~(page_size() - 1)) + page_size();
	unsigned shift = 13;

	while (((size_t)1 << shift) < need)
		shift++;
	return shift;
}

static void test_size_classes(void **state)
{
	const size_t sizes[] = { 1, 4096, 16384, 61440, 65536, 100000, 1u << 20, 8u << 20 };
	enum {
		N = sizeof(sizes) / sizeof(sizes[0])
	};
	struct dynstack *s[N];

	for (int i = 0; i < N; i++) {
		s[i] = create(sizes[i], 0);
		assert_int_equal(s[i]->arena->shift, expected_shift(sizes[i]));
		assert_true(s[i]->lo - ds_slot_base(s[i]) >= page_size());
	}
	for (int i = 0; i < N; i++) {
		for (int j = 0; j < N; j++) {
			bool same = s[i]->arena->shift == s[j]->arena->shift;
			if (!same)
				assert_ptr_not_equal(s[i]->arena, s[j]->arena);
		}
		/* The ends of each slot and its usable part. */
		uintptr_t base = ds_slot_base(s[i]);
		assert_ptr_equal(ds_arena_lookup_sigsafe(base), s[i]);
		assert_ptr_equal(ds_arena_lookup_sigsafe(s[i]->lo), s[i]);
		assert_ptr_equal(ds_arena_lookup_sigsafe(s[i]->top - 1), s[i]);
		assert_ptr_not_equal(ds_arena_lookup_sigsafe(s[i]->top), s[i]);
	}
	check_slot_map(s[2]);
	for (int i = 0; i < N; i++)
		assert_int_equal(dynstack_destroy(s[i]), 0);
}

/* The largest class has slots bigger than a chunk: the map has an entry
 * per chunk, all pointing at the one arena. */
static void test_slot_spanning_chunks(void **state)
{
	struct dynstack *s = create(DYNSTACK_MAX_SIZE, 0);
	uintptr_t base = ds_slot_base(s), stride = slot_stride(s);

	assert_true(stride > DS_CHUNK_SIZE);
	assert_int_equal(s->top - s->lo, DYNSTACK_MAX_SIZE);
	for (uintptr_t off = 0; off < stride; off += DS_CHUNK_SIZE / 4) {
		assert_ptr_equal(ds_arena_lookup_sigsafe(base + off), s);
		assert_ptr_equal(ds_arena_lookup_sigsafe(base + off + DS_CHUNK_SIZE / 4 - 1), s);
	}
	assert_ptr_not_equal(ds_arena_lookup_sigsafe(base + stride), s);
	assert_int_equal(dynstack_destroy(s), 0);

	/* Above the largest class there is no slot at all. */
	struct dynstack *none = (struct dynstack *)&some_global;
	assert_int_equal(ds_arena_slot_get(DYNSTACK_MAX_SIZE * 2, &none), -EINVAL);
	assert_null(none);
}

static void test_slot_reuse(void **state)
{
	struct dynstack *a, *b;

	assert_int_equal(dynstack_init(NULL), 0);
	assert_int_equal(ds_arena_slot_get(DYNSTACK_DEFAULT_SIZE, &a), 0);
	uintptr_t base = ds_slot_base(a);
	ds_arena_slot_put(a);
	assert_int_equal(ds_arena_slot_get(DYNSTACK_DEFAULT_SIZE, &b), 0);
	assert_ptr_equal(a, b);
	assert_int_equal(ds_slot_base(b), base);
	ds_arena_slot_put(b);

	/* Through the public calls: the slot comes back as a new stack, with a
	 * new id and its own name, and its addresses map to it. */
	dynstack_attr_t attr;
	dynstack_t *s1, *s2;
	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.name = "first";
	assert_int_equal(dynstack_create(&s1, &attr), 0);
	uint64_t id1 = dynstack_id(s1);
	uintptr_t top1 = (uintptr_t)dynstack_top(s1);
	assert_int_equal(dynstack_destroy(s1), 0);
	assert_int_equal(s1->state, DS_SLOT_FREE);
	attr.name = NULL;
	assert_int_equal(dynstack_create(&s2, &attr), 0);
	assert_ptr_equal(s2, s1);
	assert_int_equal((uintptr_t)dynstack_top(s2), top1);
	assert_true(dynstack_id(s2) > id1);
	assert_string_equal(dynstack_name(s2), "");
	size_t initial = created_committed(DYNSTACK_DEFAULT_SIZE, 0);
	assert_int_equal(dynstack_committed(s2), initial);
	assert_int_equal(count_accessible((void *)s2->lo, (void *)s2->top), initial / page_size());
	assert_ptr_equal(ds_arena_lookup_sigsafe(top1 - 1), s2);
	assert_int_equal(dynstack_destroy(s2), 0);
}

/* The decision the handler takes, called directly: below lo is an
 * overflow, at or above the edge spurious, in between a commit of
 * everything from the fault page up to the edge; a destroyed stack's slot
 * is not ours any more. */
static void test_fault_decision(void **state)
{
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	struct dynstack *s = create(16 * ps, 0);
	dynstack_stats_t before = stats_now();
	int err = 0;

	assert_int_equal(ds_stack_fault_sigsafe(s, s->top - 1, &err), DS_FAULT_SPURIOUS);
	assert_int_equal(ds_stack_fault_sigsafe(s, s->lo - 1, &err), DS_FAULT_OVERFLOW);
	assert_int_equal(ds_stack_fault_sigsafe(s, ds_slot_base(s), &err), DS_FAULT_OVERFLOW);
	assert_int_equal(count_accessible((void *)s->lo, (void *)s->top), 1);

	assert_int_equal(ds_stack_fault_sigsafe(s, s->top - 4 * ps + 17, &err), DS_FAULT_COMMITTED);
	assert_int_equal(err, 0);
	assert_int_equal(dynstack_committed(s), 4 * ps);
	assert_int_equal(dynstack_peak(s), 4 * ps);
	assert_int_equal(count_accessible((void *)s->lo, (void *)s->top), 4);
	assert_int_equal(ds_stack_fault_sigsafe(s, s->top - 4 * ps, &err), DS_FAULT_SPURIOUS);
	assert_int_equal(ds_stack_fault_sigsafe(s, s->lo, &err), DS_FAULT_COMMITTED);
	assert_int_equal(dynstack_committed(s), 16 * ps);
	assert_int_equal(count_accessible((void *)(s->lo - ps), (void *)s->top), 16);

	dynstack_stats_t after = stats_now();
	assert_int_equal(after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults, 2);
	assert_int_equal(after.nr_dynamic_stacks_spurious - before.nr_dynamic_stacks_spurious, 2);
	assert_int_equal(after.nr_dynamic_stacks_overflows - before.nr_dynamic_stacks_overflows, 2);
	assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages, 15);

	uintptr_t lo = s->lo;
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(ds_stack_fault_sigsafe(s, lo, &err), DS_FAULT_FOREIGN);
}

/* Two threads take the same fault at the same moment, as two threads
 * running code on one stack may: both may commit (it is idempotent), but
 * only one moves the edge, and a page range committed once is one fault;
 * the other thread's fault was spurious. The test thread and a helper
 * spin so that their calls start within a commit's time of each other. */
#define RACE_ROUNDS 2000
#define RACE_PAGES 16

struct race {
	struct dynstack *_Atomic target;
	atomic_int go, done;
};

static void *race_helper(void *arg)
{
	struct race *r = arg;
	int err = 0;

	for (int round = 1; round <= RACE_ROUNDS; round++) {
		while (atomic_load(&r->go) != round)
			;
		struct dynstack *s = atomic_load(&r->target);
		ds_stack_fault_sigsafe(s, s->lo, &err);
		atomic_store(&r->done, round);
	}
	return NULL;
}

static void test_fault_race_counts_once(void **state)
{
	size_t ps = page_size();
	struct race r;
	pthread_t th;
	int err = 0;

	SKIP_IF_WHOLE();
	memset(&r, 0, sizeof(r));
	assert_int_equal(dynstack_init(NULL), 0);
	assert_int_equal(pthread_create(&th, NULL, race_helper, &r), 0);
	uint64_t faults = 0;
	for (int round = 1; round <= RACE_ROUNDS; round++) {
		struct dynstack *s = create(RACE_PAGES * ps, 0);
		dynstack_stats_t before = stats_now();
		atomic_store(&r.target, s);
		atomic_store(&r.go, round);
		ds_stack_fault_sigsafe(s, s->lo, &err);
		while (atomic_load(&r.done) != round)
			;
		dynstack_stats_t after = stats_now();
		/* The pages were committed once... */
		assert_int_equal(dynstack_committed(s), RACE_PAGES * ps);
		assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages,
				 RACE_PAGES - 1);
		faults += after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults;
		assert_int_equal(dynstack_destroy(s), 0);
	}
	assert_int_equal(pthread_join(th, NULL), 0);
	/* ...so each round is one fault, not one per thread that raced. */
	if (faults != RACE_ROUNDS)
		fail_msg("%d rounds of two racing faults counted %" PRIu64 " faults", RACE_ROUNDS,
			 faults);
}

/* ---- lock-free slot allocation */

/* Threads take and give back raw slots of one class as fast as they can,
 * each holding a few at a time: no slot is ever held by two (the free list's
 * ABA tag at work), and every slot they got maps back to itself. */
#define CHURN_THREADS 4
#define CHURN_ROUNDS 50000
#define CHURN_HELD 16
#define CHURN_SIZE (2 * 4096) /* a class of its own in this file: 16 KiB slots */

struct churn {
	pthread_barrier_t start;
	_Atomic int errors;
};

static void *churn_main(void *arg)
{
	struct churn *ch = arg;
	struct dynstack *held[CHURN_HELD] = { NULL };

	pthread_barrier_wait(&ch->start);
	for (int i = 0; i < CHURN_ROUNDS; i++) {
		struct dynstack **h = &held[i % CHURN_HELD];
		if (*h) {
			atomic_store(&(*h)->warned, 0);
			ds_arena_slot_put(*h);
			*h = NULL;
		}
		if (ds_arena_slot_get(CHURN_SIZE, h) || !*h) {
			atomic_fetch_add(&ch->errors, 1);
			continue;
		}
		/* warned is free for us on a raw slot (create resets it). */
		if (atomic_exchange(&(*h)->warned, 1) != 0 ||
		    ds_arena_lookup_sigsafe(ds_slot_base(*h)) != *h)
			atomic_fetch_add(&ch->errors, 1);
	}
	for (int k = 0; k < CHURN_HELD; k++) {
		if (held[k]) {
			atomic_store(&held[k]->warned, 0);
			ds_arena_slot_put(held[k]);
		}
	}
	return NULL;
}

static void test_slots_concurrent(void **state)
{
	struct churn ch = { .errors = 0 };
	pthread_t th[CHURN_THREADS];

	assert_int_equal(dynstack_init(NULL), 0);
	assert_int_equal(pthread_barrier_init(&ch.start, NULL, CHURN_THREADS), 0);
	for (int i = 0; i < CHURN_THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, churn_main, &ch), 0);
	for (int i = 0; i < CHURN_THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	pthread_barrier_destroy(&ch.start);
	assert_int_equal(atomic_load(&ch.errors), 0);
}

#if DS_FAULT_INJECTION
#include "inject.h"

/* The ABA case, made to happen on one thread: a pop has read the top slot A
 * and its successor B; before its compare-and-swap, A and B are popped and A
 * pushed back. The head names A again, but B is taken: without the tag the
 * CAS would succeed and put B, still in use, back on top. */
#define ABA_SIZE ((size_t)60 << 10) /* 64 KiB slots: a class of its own here */

static struct dynstack *aba_taken;
static int aba_armed;

static void aba_hook(void)
{
	struct dynstack *a = NULL, *b = NULL;

	if (!aba_armed)
		return;
	aba_armed = 0;
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &a), 0);
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &b), 0);
	ds_arena_slot_put(a);
	aba_taken = b;
}

static void test_free_list_aba(void **state)
{
	struct dynstack *x, *y, *z, *got, *next;

	assert_int_equal(dynstack_init(NULL), 0);
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &x), 0);
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &y), 0);
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &z), 0);
	ds_arena_slot_put(z);
	ds_arena_slot_put(y);
	ds_arena_slot_put(x); /* the list: x, y, z */

	aba_armed = 1;
	ds_arena_pop_hook = aba_hook;
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &got), 0);
	ds_arena_pop_hook = NULL;
	assert_int_equal(aba_armed, 0);
	assert_ptr_equal(aba_taken, y);
	assert_ptr_equal(got, x);
	assert_int_equal(ds_arena_slot_get(ABA_SIZE, &next), 0);
	if (next == aba_taken)
		fail_msg("slot %p handed out twice: the free list took back a stale head",
			 (void *)next);
	assert_ptr_equal(next, z);
	ds_arena_slot_put(next);
	ds_arena_slot_put(aba_taken);
	ds_arena_slot_put(got);
}
#endif

/* Threads create stacks of a class with two slots per arena, all at once:
 * arenas are added concurrently, with no lock. Every stack gets a slot of
 * its own that maps to it, every arena counted is one the stacks use (one
 * that lost the race to be added is kept aside, not counted), and after
 * they are destroyed the same number of stacks needs no new arena. */
#define GROW_THREADS 8
#define GROW_STACKS 6
#define GROW_SIZE ((size_t)256 << 20) /* 512 MiB slots: two per 1 GiB arena */

struct grow {
	pthread_barrier_t start;
	dynstack_t *s[GROW_THREADS][GROW_STACKS];
	_Atomic int errors;
};

struct grow_arg {
	struct grow *g;
	int me;
};

static void *grow_main(void *arg)
{
	struct grow_arg *ga = arg;
	dynstack_attr_t attr;

	dynstack_attr_init(&attr);
	attr.size = GROW_SIZE;
	pthread_barrier_wait(&ga->g->start);
	for (int k = 0; k < GROW_STACKS; k++)
		if (dynstack_create(&ga->g->s[ga->me][k], &attr))
			atomic_fetch_add(&ga->g->errors, 1);
	return NULL;
}

static int grow_round(struct grow *g)
{
	pthread_t th[GROW_THREADS];
	struct grow_arg ga[GROW_THREADS];

	memset(g->s, 0, sizeof(g->s));
	g->errors = 0;
	assert_int_equal(pthread_barrier_init(&g->start, NULL, GROW_THREADS), 0);
	for (int i = 0; i < GROW_THREADS; i++) {
		ga[i] = (struct grow_arg){ g, i };
		assert_int_equal(pthread_create(&th[i], NULL, grow_main, &ga[i]), 0);
	}
	for (int i = 0; i < GROW_THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	pthread_barrier_destroy(&g->start);
	assert_int_equal(atomic_load(&g->errors), 0);

	/* Distinct slots, each mapping to its stack, its top page usable. */
	struct ds_arena *seen[GROW_THREADS * GROW_STACKS];
	int nseen = 0;
	for (int i = 0; i < GROW_THREADS; i++) {
		for (int k = 0; k < GROW_STACKS; k++) {
			struct dynstack *s = g->s[i][k];
			assert_non_null(s);
			assert_ptr_equal(ds_arena_lookup_sigsafe(s->top - 1), s);
			assert_ptr_equal(ds_arena_lookup_sigsafe(ds_slot_base(s)), s);
			((volatile char *)s->top)[-1] = (char)k;
			int j = 0;
			while (j < nseen && seen[j] != s->arena)
				j++;
			if (j == nseen)
				seen[nseen++] = s->arena;
			for (int i2 = 0; i2 < GROW_THREADS; i2++)
				for (int k2 = 0; k2 < GROW_STACKS; k2++)
					if ((i2 != i || k2 != k) && g->s[i2][k2] == s)
						fail_msg("one slot handed out twice");
		}
	}
	return nseen;
}

static void grow_destroy(struct grow *g)
{
	for (int i = 0; i < GROW_THREADS; i++)
		for (int k = 0; k < GROW_STACKS; k++)
			assert_int_equal(dynstack_destroy(g->s[i][k]), 0);
}

static void test_arenas_added_concurrently(void **state)
{
	SKIP_IF_WHOLE(); /* 48 stacks of 256 MiB, committed whole: 12 GiB */
	static struct grow g;

	assert_int_equal(dynstack_init(NULL), 0);
	uint64_t a0 = stats_now().nr_dynamic_stacks_arenas;
	int used = grow_round(&g);
	uint64_t a1 = stats_now().nr_dynamic_stacks_arenas;
	assert_true(used >= GROW_THREADS * GROW_STACKS / 2);
	assert_int_equal(a1 - a0, (uint64_t)used);
	grow_destroy(&g);
	/* The slots are free (in the caches or on the free list): no arena. */
	grow_round(&g);
	assert_int_equal(stats_now().nr_dynamic_stacks_arenas, a1);
	grow_destroy(&g);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lookup_every_address),
		cmocka_unit_test(test_arena_ends),
		cmocka_unit_test(test_lookup_outside_is_null),
		cmocka_unit_test(test_size_classes),
		cmocka_unit_test(test_slot_spanning_chunks),
		cmocka_unit_test(test_slot_reuse),
		cmocka_unit_test(test_fault_decision),
		cmocka_unit_test(test_fault_race_counts_once),
		cmocka_unit_test(test_slots_concurrent),
#if DS_FAULT_INJECTION
		cmocka_unit_test(test_free_list_aba),
#endif
		cmocka_unit_test(test_arenas_added_concurrently),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
