/* Tests of shared (copy) stacks (src/shared.c, and their use in coro.c and
 * segment.c): frames survive being copied out and in, the owner cache and
 * the save buffers behave as the counters say, groups refuse what they must
 * (other threads, a second runner, bad attrs), orphaned and any-thread
 * groups, poisoning, overflows of a group's stack and dynstack_call from a
 * shared-mode coroutine. Coroutines never assert (a CMocka failure longjmps
 * off their stack): they record what they see, the test body checks it.
 * Every test takes a counter snapshot first: the process keeps groups and
 * buffers of its own (the main thread's group) across tests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

static char child_err[16384];

#define POISON 0xdb

/* ---- helpers usable in children (no CMocka): NULL on failure */

static dynstack_group_t *try_group(size_t size, const char *name, const char *policy,
				   unsigned flags)
{
	dynstack_attr_t attr;
	dynstack_group_t *g = NULL;

	if (dynstack_attr_init(&attr))
		return NULL;
	attr.size = size;
	attr.name = name;
	attr.policy = policy;
	if (dynstack_group_create(&g, &attr, flags))
		return NULL;
	return g;
}

/* A shared-mode coroutine of g (NULL: the calling thread's own group). */
static int shared_create(dynstack_coro_t **out, dynstack_coro_fn fn, void *arg, dynstack_group_t *g)
{
	dynstack_attr_t attr;

	dynstack_attr_init(&attr);
	attr.mode = DYNSTACK_MODE_SHARED;
	attr.group = g;
	return dynstack_coro_create(out, fn, arg, &attr);
}

static dynstack_coro_t *try_shared(dynstack_coro_fn fn, void *arg, dynstack_group_t *g)
{
	dynstack_coro_t *c = NULL;

	return shared_create(&c, fn, arg, g) ? NULL : c;
}

/* ---- the same, asserting */

static dynstack_group_t *group_new(size_t size, const char *name, unsigned flags)
{
	dynstack_group_t *g = try_group(size, name, NULL, flags);

	assert_non_null(g);
	return g;
}

static dynstack_coro_t *shared_new(dynstack_coro_fn fn, void *arg, dynstack_group_t *g)
{
	dynstack_coro_t *c = NULL;

	assert_int_equal(shared_create(&c, fn, arg, g), 0);
	assert_non_null(c);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_SUSPENDED);
	if (g)
		assert_ptr_equal(dynstack_coro_group(c), g);
	assert_ptr_equal(dynstack_coro_stack(c), dynstack_group_stack(dynstack_coro_group(c)));
	return c;
}

/* The gauges a test must leave as it found them. */
static void expect_back_to(const dynstack_stats_t *before)
{
	dynstack_stats_t now = stats_now();

	assert_int_equal(now.nr_shared_groups, before->nr_shared_groups);
	assert_int_equal(now.nr_shared_saved_bytes, before->nr_shared_saved_bytes);
	assert_int_equal(now.nr_shared_buffer_bytes, before->nr_shared_buffer_bytes);
	assert_int_equal(now.nr_dynamic_stacks_coros, before->nr_dynamic_stacks_coros);
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static unsigned char pattern_byte(uint64_t seed, size_t i)
{
	return (unsigned char)((seed >> ((i & 7) * 8)) + i * 37u);
}

static void fill(volatile unsigned char *buf, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = pattern_byte(seed, i);
}

static bool intact(const volatile unsigned char *buf, size_t len, uint64_t seed)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != pattern_byte(seed, i))
			return false;
	return true;
}

/* A coroutine that keeps a patterned buffer on its frame, yields `yields`
 * times and checks the buffer after each resume. */
struct ticker {
	uint64_t seed;
	int yields;
	int runs;   /* resumes seen */
	int errors; /* buffer changed across a yield */
	int done;
	long tid[64]; /* thread of each run */
};

static void ticker_fn(void *arg)
{
	struct ticker *t = arg;
	volatile unsigned char buf[384];

	fill(buf, sizeof(buf), t->seed);
	for (int i = 0; i < t->yields; i++) {
		if (t->runs < 64)
			t->tid[t->runs] = thread_id();
		t->runs++;
		dynstack_coro_yield();
		if (!intact(buf, sizeof(buf), t->seed))
			t->errors++;
	}
	if (t->runs < 64)
		t->tid[t->runs] = thread_id();
	t->runs++;
	t->done = 1;
}

/* ---- 1. many coroutines, random depths, random order */

#define MIX_COROS 200
#define MIX_ROUNDS 6
#define MIX_MAX_LEVELS 20
#define MIX_SEED 0x5eed5eedull

/* The whole run of coroutine id is a function of (id, round, level): the
 * test body recomputes what each must return and how often it yields. */
static uint64_t plan(unsigned id, unsigned round, unsigned level, unsigned what)
{
	return mix64(MIX_SEED ^ ((uint64_t)id << 40) ^ ((uint64_t)round << 28) ^
		     ((uint64_t)level << 12) ^ what);
}

static unsigned plan_levels(unsigned id, unsigned round)
{
	return (unsigned)(plan(id, round, 0, 1) % (MIX_MAX_LEVELS + 1));
}

static size_t plan_len(unsigned id, unsigned round, unsigned level)
{
	return 4 + (size_t)(plan(id, round, level, 2) % 509); /* 4..512 bytes a frame */
}

static unsigned plan_deep_yields(unsigned id, unsigned round)
{
	return 1 + (unsigned)(plan(id, round, 0, 3) % 3);
}

static bool plan_yield_down(unsigned id, unsigned round, unsigned level)
{
	return plan(id, round, level, 4) % 5 == 0;
}

static bool plan_yield_up(unsigned id, unsigned round, unsigned level)
{
	return plan(id, round, level, 5) % 5 == 0;
}

static uint64_t plan_seed(unsigned id, unsigned round, unsigned level)
{
	return plan(id, round, level, 6);
}

/* One frame's record, on that frame: the chain goes up to the outermost
 * frame. Pointers into the coroutine's own stack, used only while it runs:
 * copied back to the same addresses, they stay valid across yields. */
struct mix_frame {
	const struct mix_frame *up;
	const volatile unsigned char *buf;
	size_t len;
	uint64_t seed;
};

struct mix {
	unsigned id;
	uint64_t result; /* the coroutine's "return value", through arg */
	unsigned yields, errors, checks;
	int done;
};

static void mix_check(struct mix *m, const struct mix_frame *f)
{
	for (; f; f = f->up) {
		m->checks++;
		if (!intact(f->buf, f->len, f->seed))
			m->errors++;
	}
}

static void mix_yield(struct mix *m, const struct mix_frame *f)
{
	m->yields++;
	dynstack_coro_yield();
	mix_check(m, f); /* every frame of the coroutine, after every resume */
}

static __attribute__((noinline)) uint64_t mix_level(struct mix *m, unsigned round, unsigned level,
						    unsigned levels, const struct mix_frame *up)
{
	size_t len = plan_len(m->id, round, level);
	unsigned char raw[len];
	struct mix_frame f = { up, raw, len, plan_seed(m->id, round, level) };
	uint64_t sum = 0;

	fill(raw, len, f.seed);
	if (plan_yield_down(m->id, round, level))
		mix_yield(m, &f);
	if (level < levels) {
		sum = mix_level(m, round, level + 1, levels, &f);
	} else {
		for (unsigned y = plan_deep_yields(m->id, round); y; y--)
			mix_yield(m, &f);
	}
	if (plan_yield_up(m->id, round, level))
		mix_yield(m, &f);
	mix_check(m, &f);
	for (size_t i = 0; i < len; i++)
		sum += f.buf[i] * (uint64_t)(level + 1);
	return sum;
}

static void mix_fn(void *arg)
{
	struct mix *m = arg;
	uint64_t total = m->id;

	for (unsigned r = 0; r < MIX_ROUNDS; r++)
		total = total * 31 + mix_level(m, r, 0, plan_levels(m->id, r), NULL);
	m->result = total;
	m->done = 1;
}

static uint64_t mix_expected(unsigned id, unsigned *yields)
{
	uint64_t total = id;

	*yields = 0;
	for (unsigned r = 0; r < MIX_ROUNDS; r++) {
		unsigned levels = plan_levels(id, r);
		uint64_t sum = 0;
		for (unsigned l = 0; l <= levels; l++) {
			uint64_t seed = plan_seed(id, r, l);
			for (size_t i = 0; i < plan_len(id, r, l); i++)
				sum += pattern_byte(seed, i) * (uint64_t)(l + 1);
			*yields += plan_yield_down(id, r, l) + plan_yield_up(id, r, l);
		}
		*yields += plan_deep_yields(id, r);
		total = total * 31 + sum;
	}
	return total;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void test_many_random_depths(void **state)
{
	TAKE_SIGSEGV();
	static struct mix m[MIX_COROS];
	static dynstack_coro_t *c[MIX_COROS];
	static unsigned resumes[MIX_COROS];
	static bool started[MIX_COROS];
	unsigned live[MIX_COROS], nlive = MIX_COROS;
	uint64_t rng = MIX_SEED, want_copies = 0, want_bytes = 0, want_hits = 0;
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = group_new(256 * 1024, "mix", 0);
	unsigned last = MIX_COROS; /* whose frames are on the shared stack */

	for (unsigned i = 0; i < MIX_COROS; i++) {
		m[i] = (struct mix){ .id = i };
		c[i] = shared_new(mix_fn, &m[i], g);
		resumes[i] = 0;
		started[i] = false;
		live[i] = i;
	}
	dynstack_stats_t s0 = stats_now();
	assert_int_equal(s0.nr_shared_groups, b.nr_shared_groups + 1);
	for (unsigned step = 1; nlive; step++) {
		/* Mostly a random live one; one time in four the last one again. */
		unsigned pick = (unsigned)(xorshift(&rng) % nlive);
		unsigned k = live[pick];
		if (last < MIX_COROS && dynstack_coro_status(c[last]) == DYNSTACK_CORO_SUSPENDED &&
		    xorshift(&rng) % 4 == 0)
			k = last;
		/* What the copies must be: nothing on an owner hit; else the
		 * previous owner out (unless dead) and k in (unless fresh). */
		size_t in = dynstack_coro_saved(c[k]);
		bool hit = k == last;
		if (hit) {
			want_hits++;
			assert_int_equal(in, 0);
		} else if (started[k]) {
			want_copies++;
			want_bytes += in;
			assert_true(in > 0);
		}
		bool out = !hit && last < MIX_COROS &&
			   dynstack_coro_status(c[last]) != DYNSTACK_CORO_DEAD;
		assert_int_equal(dynstack_coro_resume(c[k]), 0);
		started[k] = true;
		resumes[k]++;
		assert_int_equal(dynstack_coro_saved(c[k]), 0); /* its frames are still there */
		if (out) {
			size_t saved = dynstack_coro_saved(c[last]);
			assert_true(saved > 0);
			want_copies++;
			want_bytes += saved;
		}
		last = k;
		if (dynstack_coro_status(c[k]) == DYNSTACK_CORO_DEAD) {
			for (unsigned j = 0; j < nlive; j++) {
				if (live[j] == k) {
					live[j] = live[--nlive];
					break;
				}
			}
		}
		if (step % 256 == 0 || !nlive) {
			/* The gauge is the sum of what the coroutines hold. */
			uint64_t sum = 0;
			for (unsigned i = 0; i < MIX_COROS; i++)
				sum += dynstack_coro_saved(c[i]);
			dynstack_stats_t now = stats_now();
			assert_int_equal(now.nr_shared_saved_bytes - b.nr_shared_saved_bytes, sum);
			assert_true(now.nr_shared_buffer_bytes - b.nr_shared_buffer_bytes >= sum);
			assert_int_equal(now.nr_shared_copies - s0.nr_shared_copies, want_copies);
			assert_int_equal(now.nr_shared_copied_bytes - s0.nr_shared_copied_bytes,
					 want_bytes);
			assert_int_equal(now.nr_shared_owner_hits - s0.nr_shared_owner_hits,
					 want_hits);
		}
	}
	assert_true(want_hits > 100);
	for (unsigned i = 0; i < MIX_COROS; i++) {
		unsigned yields;
		uint64_t want = mix_expected(i, &yields);
		if (m[i].errors || !m[i].done || m[i].result != want || m[i].yields != yields ||
		    resumes[i] != yields + 1)
			fail_msg("coroutine %u: %u bad checks of %u, done %d, result %#" PRIx64
				 " (want %#" PRIx64 "), yields %u (want %u), resumes %u",
				 i, m[i].errors, m[i].checks, m[i].done, m[i].result, want,
				 m[i].yields, yields, resumes[i]);
		assert_int_equal(dynstack_coro_status(c[i]), DYNSTACK_CORO_DEAD);
		assert_int_equal(dynstack_coro_resume(c[i]), -EINVAL);
	}
	assert_int_equal(dynstack_group_destroy(g), -EBUSY);
	for (unsigned i = 0; i < MIX_COROS; i++)
		assert_int_equal(dynstack_coro_destroy(c[i]), 0);
	assert_int_equal(dynstack_group_destroy(g), 0);
	expect_back_to(&b);
}

/* The thread's own group (attr.group NULL) runs the same kind of load: one
 * group for all, made lazily. */
static void test_own_group(void **state)
{
	TAKE_SIGSEGV();
	enum {
		N = 16
	};
	struct ticker t[N];
	dynstack_coro_t *c[N];
	dynstack_stats_t b = stats_now();

	for (int i = 0; i < N; i++) {
		t[i] = (struct ticker){ .seed = mix64(i + 1), .yields = 5 };
		c[i] = shared_new(ticker_fn, &t[i], NULL);
		assert_non_null(dynstack_coro_group(c[i]));
		assert_ptr_equal(dynstack_coro_group(c[i]), dynstack_coro_group(c[0]));
	}
	/* The own group lives on between tests: at most one new one. */
	assert_true(stats_now().nr_shared_groups - b.nr_shared_groups <= 1);
	for (int round = 0; round <= 5; round++)
		for (int i = N - 1; i >= 0; i--)
			assert_int_equal(dynstack_coro_resume(c[(i * 7 + round) % N]), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(t[i].errors, 0);
		assert_int_equal(t[i].runs, 6);
		assert_true(t[i].done);
		assert_int_equal(dynstack_coro_destroy(c[i]), 0);
	}
	dynstack_stats_t now = stats_now();
	assert_int_equal(now.nr_shared_saved_bytes, b.nr_shared_saved_bytes);
	assert_int_equal(now.nr_shared_buffer_bytes, b.nr_shared_buffer_bytes);
	assert_int_equal(now.nr_dynamic_stacks_coros, b.nr_dynamic_stacks_coros);
}

/* ---- 2. the owner cache */

static void test_owner_cache(void **state)
{
	TAKE_SIGSEGV();
	struct ticker ta = { .seed = 11, .yields = 40 }, tb = { .seed = 22, .yields = 40 };
	dynstack_stats_t b = stats_now();
	dynstack_coro_t *a = shared_new(ticker_fn, &ta, NULL);
	dynstack_coro_t *bc = shared_new(ticker_fn, &tb, NULL);

	/* The same one again and again: nothing is copied. */
	assert_int_equal(dynstack_coro_resume(a), 0);
	dynstack_stats_t s0 = stats_now();
	for (int i = 1; i <= 10; i++) {
		assert_int_equal(dynstack_coro_resume(a), 0);
		assert_int_equal(dynstack_coro_saved(a), 0);
		dynstack_stats_t now = stats_now();
		assert_int_equal(now.nr_shared_owner_hits - s0.nr_shared_owner_hits, i);
		assert_int_equal(now.nr_shared_copies, s0.nr_shared_copies);
		assert_int_equal(now.nr_shared_copied_bytes, s0.nr_shared_copied_bytes);
	}

	/* Alternating: one copy out and one copy in per resume, of exactly
	 * the bytes the two coroutines report. */
	assert_int_equal(dynstack_coro_resume(bc), 0); /* a out; b fresh, nothing in */
	size_t a_saved = dynstack_coro_saved(a);
	assert_true(a_saved >= 384);
	assert_true(a_saved < 4096);
	assert_int_equal(dynstack_coro_saved(bc), 0);
	for (int i = 0; i < 20; i++) {
		dynstack_coro_t *in = i % 2 ? bc : a, *out = i % 2 ? a : bc;
		size_t in_bytes = dynstack_coro_saved(in);
		dynstack_stats_t before = stats_now();
		assert_true(in_bytes >= 384);
		assert_int_equal(dynstack_coro_saved(out), 0);
		assert_int_equal(dynstack_coro_resume(in), 0);
		dynstack_stats_t after = stats_now();
		size_t out_bytes = dynstack_coro_saved(out);
		assert_int_equal(dynstack_coro_saved(in), 0);
		assert_true(out_bytes >= 384);
		assert_int_equal(after.nr_shared_copies - before.nr_shared_copies, 2);
		assert_int_equal(after.nr_shared_copied_bytes - before.nr_shared_copied_bytes,
				 in_bytes + out_bytes);
		assert_int_equal(after.nr_shared_owner_hits, before.nr_shared_owner_hits);
		assert_int_equal(after.nr_shared_saved_bytes - before.nr_shared_saved_bytes,
				 (uint64_t)out_bytes - in_bytes);
	}
	assert_int_equal(ta.errors + tb.errors, 0);
	assert_int_equal(ta.runs, 21);
	assert_int_equal(tb.runs, 11);
	assert_int_equal(dynstack_coro_destroy(a), 0);
	assert_int_equal(dynstack_coro_destroy(bc), 0);
	expect_back_to(&b);
}

/* ---- 3. save buffers follow the saved size down again */

#define DEEP_BYTES (8 * 1024)

struct shrink {
	int errors, stage;
};

static __attribute__((noinline)) void deep_yield(struct shrink *s)
{
	volatile unsigned char big[DEEP_BYTES];

	fill(big, sizeof(big), 0xabcdef);
	s->stage = 1;
	dynstack_coro_yield();
	if (!intact(big, sizeof(big), 0xabcdef))
		s->errors++;
}

static void shrink_fn(void *arg)
{
	struct shrink *s = arg;

	deep_yield(s);
	s->stage = 2;
	dynstack_coro_yield(); /* shallow */
	s->stage = 3;
}

static void test_buffer_shrinks(void **state)
{
	TAKE_SIGSEGV();
	struct shrink s = { 0 };
	struct ticker t = { .seed = 5, .yields = 10 };
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = group_new(64 * 1024, "shrink", 0);
	dynstack_coro_t *x = shared_new(shrink_fn, &s, g);
	dynstack_coro_t *y = shared_new(ticker_fn, &t, g);

	assert_int_equal(dynstack_coro_resume(x), 0);
	assert_int_equal(s.stage, 1);
	assert_int_equal(dynstack_coro_resume(y), 0); /* x is copied out */
	size_t deep = dynstack_coro_saved(x);
	uint64_t deep_buffers = stats_now().nr_shared_buffer_bytes - b.nr_shared_buffer_bytes;
	assert_true(deep >= DEEP_BYTES);
	assert_true(deep < DEEP_BYTES + 4096);
	assert_true(deep_buffers >= deep);

	assert_int_equal(dynstack_coro_resume(x), 0); /* back up, yields shallow */
	assert_int_equal(s.stage, 2);
	assert_int_equal(dynstack_coro_resume(y), 0); /* x is copied out again */
	size_t shallow = dynstack_coro_saved(x);
	uint64_t shallow_buffers = stats_now().nr_shared_buffer_bytes - b.nr_shared_buffer_bytes;
	assert_true(shallow > 0);
	assert_true(shallow < 2048);
	/* The big buffer was given back: what is left is x's small one and
	 * y's (y's is at most its own saved bytes doubled, as is x's). */
	if (shallow_buffers > 2 * shallow + 2 * 2048 || deep_buffers - shallow_buffers < 6 * 1024)
		fail_msg("buffers: %" PRIu64 " bytes with %zu saved deep, %" PRIu64
			 " with %zu saved shallow",
			 deep_buffers, deep, shallow_buffers, shallow);

	assert_int_equal(dynstack_coro_resume(x), 0);
	assert_int_equal(s.stage, 3);
	assert_int_equal(s.errors, 0);
	while (dynstack_coro_status(y) != DYNSTACK_CORO_DEAD)
		assert_int_equal(dynstack_coro_resume(y), 0);
	assert_int_equal(t.errors, 0);
	assert_int_equal(dynstack_coro_destroy(x), 0);
	assert_int_equal(dynstack_coro_destroy(y), 0);
	assert_int_equal(dynstack_group_destroy(g), 0);
	expect_back_to(&b);
}

/* ---- 4. misuse */

static void noop_fn(void *arg)
{
}

static void test_attr_refused(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_group_t *g = (dynstack_group_t *)&attr;
	dynstack_coro_t *c = (dynstack_coro_t *)&attr;
	dynstack_t *s = (dynstack_t *)&attr;
	dynstack_stats_t b = stats_now();
	dynstack_group_t *grp = group_new(32 * 1024, "attrs", 0);
	size_t gsize = dynstack_size(dynstack_group_stack(grp));

	assert_int_equal(gsize, 32 * 1024);
	/* Groups: NULL out, flags, a shared or grouped attr, bad struct_size. */
	assert_int_equal(dynstack_group_create(NULL, NULL, 0), -EINVAL);
	assert_int_equal(dynstack_group_create(&g, NULL, 1u << 2), -EINVAL);
	assert_null(g);
	g = grp;
	assert_int_equal(dynstack_group_create(&g, NULL, ~0u), -EINVAL);
	assert_null(g);
	dynstack_attr_init(&attr);
	attr.mode = DYNSTACK_MODE_SHARED;
	g = grp;
	assert_int_equal(dynstack_group_create(&g, &attr, 0), -EINVAL);
	assert_null(g);
	dynstack_attr_init(&attr);
	attr.group = grp;
	g = grp;
	assert_int_equal(dynstack_group_create(&g, &attr, 0), -EINVAL);
	assert_null(g);
	dynstack_attr_init(&attr);
	attr.struct_size = sizeof(attr) - 1;
	assert_int_equal(dynstack_group_create(&g, &attr, 0), -EINVAL);
	dynstack_attr_init(&attr);
	attr.policy = "no-such-policy";
	assert_int_equal(dynstack_group_create(&g, &attr, 0), -EINVAL);

	/* A plain stack has no mode nor group. */
	dynstack_attr_init(&attr);
	attr.mode = DYNSTACK_MODE_SHARED;
	assert_int_equal(dynstack_create(&s, &attr), -EINVAL);
	assert_null(s);
	dynstack_attr_init(&attr);
	attr.group = grp;
	s = (dynstack_t *)&attr;
	assert_int_equal(dynstack_create(&s, &attr), -EINVAL);
	assert_null(s);

	/* Coroutines: initial and policy are the group's; size must fit. */
	dynstack_attr_init(&attr);
	attr.mode = DYNSTACK_MODE_SHARED;
	attr.group = grp;
	attr.initial = 4096;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c);
	attr.initial = 0;
	attr.policy = "step=2";
	c = (dynstack_coro_t *)&attr;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c);
	attr.policy = NULL;
	attr.size = gsize + 1;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	attr.size = 1u << 20;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	attr.group = NULL; /* the thread's own group: the default size */
	attr.size = DYNSTACK_MAX_SIZE;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	attr.group = grp;
	attr.size = 0;
	assert_int_equal(dynstack_coro_create(&c, NULL, NULL, &attr), -EINVAL);
	assert_int_equal(dynstack_coro_create(NULL, noop_fn, NULL, &attr), -EINVAL);
	attr.mode = (dynstack_mode_t)7;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	attr.mode = DYNSTACK_MODE_PRIVATE; /* a group in private mode */
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c);
	/* Nothing of all that was left behind. */
	dynstack_stats_t mid = stats_now();
	assert_int_equal(mid.nr_shared_groups, b.nr_shared_groups + 1);
	assert_int_equal(mid.nr_dynamic_stacks_coros, b.nr_dynamic_stacks_coros);
	assert_int_equal(mid.nr_shared_buffer_bytes, b.nr_shared_buffer_bytes);

	/* Exactly the group's size fits, and a name is accepted (not kept). */
	attr.mode = DYNSTACK_MODE_SHARED;
	attr.size = gsize;
	attr.name = "ignored";
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), 0);
	assert_ptr_equal(dynstack_coro_group(c), grp);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_DEAD);

	/* The group's stack belongs to the group, a coroutine's to nobody. */
	assert_int_equal(dynstack_destroy(dynstack_group_stack(grp)), -EBUSY);
	assert_int_equal(dynstack_destroy(dynstack_coro_stack(c)), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	assert_int_equal(dynstack_group_destroy(grp), 0);
	expect_back_to(&b);
}

static void test_null_and_private(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_coro_t *p;

	assert_int_equal(dynstack_group_destroy(NULL), 0);
	assert_null(dynstack_group_stack(NULL));
	assert_null(dynstack_coro_group(NULL));
	assert_int_equal(dynstack_coro_saved(NULL), 0);
	assert_int_equal(dynstack_attr_init(&attr), 0);
	assert_int_equal(attr.struct_size, sizeof(attr));
	assert_int_equal(attr.mode, DYNSTACK_MODE_PRIVATE);
	assert_null(attr.group);
	/* A private coroutine has no group and nothing saved. */
	assert_int_equal(dynstack_coro_create(&p, noop_fn, NULL, &attr), 0);
	assert_null(dynstack_coro_group(p));
	assert_int_equal(dynstack_coro_saved(p), 0);
	assert_int_equal(dynstack_coro_destroy(p), 0);
	assert_true(dynstack_strerror(-EBUSY) != NULL);
}

/* A 0.1 caller: an attr that ends before mode, placed at the very end of a
 * readable page, so that reading mode or group would crash. */
static int old_layout_child(void *arg)
{
	size_t ps = page_size();
	size_t n = offsetof(dynstack_attr_t, mode);
	char *map = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int runs = 0;

	CHECK(dynstack_init(NULL) == 0);
	CHECK(map != MAP_FAILED);
	CHECK(mprotect(map + ps, ps, PROT_NONE) == 0);
	dynstack_attr_t *old = (dynstack_attr_t *)(map + ps - n);
	memset(old, 0, n);
	old->struct_size = n;
	old->size = 64 * 1024;
	old->name = "old-layout";

	dynstack_t *s;
	CHECK(dynstack_create(&s, old) == 0);
	CHECK(dynstack_size(s) == 64 * 1024);
	CHECK(strcmp(dynstack_name(s), "old-layout") == 0);
	CHECK(dynstack_destroy(s) == 0);

	dynstack_coro_t *c;
	CHECK(dynstack_coro_create(&c, noop_fn, &runs, old) == 0);
	CHECK(dynstack_coro_group(c) == NULL); /* private */
	CHECK(dynstack_size(dynstack_coro_stack(c)) == 64 * 1024);
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(dynstack_coro_status(c) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_destroy(c) == 0);

	dynstack_group_t *g;
	CHECK(dynstack_group_create(&g, old, 0) == 0);
	CHECK(dynstack_size(dynstack_group_stack(g)) == 64 * 1024);
	CHECK(dynstack_group_destroy(g) == 0);

	/* A size that is neither layout's is refused. */
	old->struct_size = n - sizeof(size_t);
	CHECK(dynstack_create(&s, old) == -EINVAL);
	CHECK(dynstack_coro_create(&c, noop_fn, &runs, old) == -EINVAL);
	return 0;
}

static void test_old_attr_layout(void **state)
{
	expect_child_ok(old_layout_child, NULL);
}

/* What a coroutine of a group may not do to its group, directly or through a
 * private coroutine it resumed; and what it may (another group, creating). */
struct inside {
	dynstack_group_t *g;
	dynstack_coro_t *self, *sibling, *priv, *other, *made;
	int direct, itself, destroy_self, destroy_sibling_ok, group_destroy, via_private,
		parent_from_private, destroy_parent, other_group, create, made_status, canary_ok,
		made_group_ok;
	int sibling_runs, other_runs;
};

static void sibling_fn(void *arg)
{
	struct inside *in = arg;

	in->sibling_runs++;
}

static void other_fn(void *arg)
{
	struct inside *in = arg;
	volatile unsigned char buf[512];

	fill(buf, sizeof(buf), 77);
	in->other_runs++;
	dynstack_coro_yield();
	if (!intact(buf, sizeof(buf), 77))
		in->other_runs = -1000;
	in->other_runs++;
}

static void priv_fn(void *arg)
{
	struct inside *in = arg;

	in->via_private = dynstack_coro_resume(in->sibling);
	in->parent_from_private = dynstack_coro_resume(in->self);
	in->destroy_parent = dynstack_coro_destroy(in->self);
}

static void inside_fn(void *arg)
{
	struct inside *in = arg;
	volatile unsigned char canary[256];

	fill(canary, sizeof(canary), 1234);
	in->direct = dynstack_coro_resume(in->sibling);
	in->itself = dynstack_coro_resume(in->self);
	in->destroy_self = dynstack_coro_destroy(in->self);
	in->group_destroy = dynstack_group_destroy(in->g);
	dynstack_coro_resume(in->priv);
	/* Another group is outside this one: allowed, and it keeps its frames. */
	in->other_group = dynstack_coro_resume(in->other);
	/* Creating in the running group is allowed, resuming it is not. */
	in->create = shared_create(&in->made, sibling_fn, in, in->g);
	in->made_group_ok = in->made && dynstack_coro_group(in->made) == in->g;
	in->made_status = in->made ? dynstack_coro_resume(in->made) : 1;
	dynstack_coro_yield();
	in->canary_ok = intact(canary, sizeof(canary), 1234);
}

static void test_inside_group_busy(void **state)
{
	TAKE_SIGSEGV();
	struct inside in = { 0 };
	dynstack_attr_t attr;
	dynstack_stats_t b = stats_now();
	dynstack_group_t *h = group_new(32 * 1024, "other", 0);

	in.g = group_new(32 * 1024, "inside", 0);
	in.self = shared_new(inside_fn, &in, in.g);
	in.sibling = shared_new(sibling_fn, &in, in.g);
	in.other = shared_new(other_fn, &in, h);
	dynstack_attr_init(&attr);
	assert_int_equal(dynstack_coro_create(&in.priv, priv_fn, &in, &attr), 0);

	assert_int_equal(dynstack_coro_resume(in.self), 0);
	assert_int_equal(in.direct, -EBUSY);
	assert_int_equal(in.itself, -EBUSY);
	assert_int_equal(in.destroy_self, -EBUSY);
	assert_int_equal(in.group_destroy, -EBUSY);
	assert_int_equal(in.via_private, -EBUSY);
	assert_int_equal(in.parent_from_private, -EBUSY);
	assert_int_equal(in.destroy_parent, -EBUSY);
	assert_int_equal(in.other_group, 0);
	assert_int_equal(in.other_runs, 1);
	assert_int_equal(in.create, 0);
	assert_true(in.made_group_ok);
	assert_int_equal(in.made_status, -EBUSY);
	assert_int_equal(in.sibling_runs, 0);
	assert_int_equal(dynstack_coro_status(in.priv), DYNSTACK_CORO_DEAD);

	/* All of them still work from outside. */
	assert_int_equal(dynstack_coro_status(in.sibling), DYNSTACK_CORO_SUSPENDED);
	assert_int_equal(dynstack_coro_resume(in.sibling), 0);
	assert_int_equal(dynstack_coro_resume(in.made), 0);
	assert_int_equal(in.sibling_runs, 2);
	assert_int_equal(dynstack_coro_resume(in.self), 0);
	assert_true(in.canary_ok);
	assert_int_equal(dynstack_coro_resume(in.other), 0);
	assert_int_equal(in.other_runs, 2);
	assert_int_equal(dynstack_coro_status(in.self), DYNSTACK_CORO_DEAD);

	assert_int_equal(dynstack_group_destroy(in.g), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(in.self), 0);
	assert_int_equal(dynstack_coro_destroy(in.sibling), 0);
	assert_int_equal(dynstack_group_destroy(in.g), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(in.made), 0);
	assert_int_equal(dynstack_group_destroy(in.g), 0);
	assert_int_equal(dynstack_coro_destroy(in.other), 0);
	assert_int_equal(dynstack_coro_destroy(in.priv), 0);
	assert_int_equal(dynstack_group_destroy(h), 0);
	expect_back_to(&b);
}

/* A thread's own group is the library's to free; destroying a group with a
 * suspended (or never run) coroutine is refused until it is gone. */
static void test_group_destroy_refused(void **state)
{
	TAKE_SIGSEGV();
	struct ticker t = { .seed = 9, .yields = 3 };
	dynstack_stats_t b = stats_now();
	dynstack_coro_t *own = shared_new(noop_fn, NULL, NULL);
	dynstack_group_t *g = group_new(0, NULL, 0);
	dynstack_coro_t *fresh = shared_new(noop_fn, NULL, g);
	dynstack_coro_t *mid = shared_new(ticker_fn, &t, g);

	assert_int_equal(dynstack_group_destroy(dynstack_coro_group(own)), -EINVAL);
	assert_int_equal(dynstack_coro_destroy(own), 0);
	assert_int_equal(dynstack_size(dynstack_group_stack(g)), DYNSTACK_DEFAULT_SIZE);
	assert_int_equal(dynstack_group_destroy(g), -EBUSY);
	assert_int_equal(dynstack_coro_resume(mid), 0);
	assert_int_equal(dynstack_group_destroy(g), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(fresh), 0); /* never ran */
	assert_int_equal(dynstack_group_destroy(g), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(mid), 0); /* suspended, frames on the stack */
	assert_int_equal(dynstack_group_destroy(g), 0);
	expect_back_to(&b);
}

/* ---- threads: a group of one thread, and an any-thread group */

struct foreign {
	dynstack_coro_t *own, *mine;
	dynstack_group_t *g;
	int resume_own, resume_mine, destroy_own, destroy_mine, create_own, create_mine,
		group_destroy;
	dynstack_coro_t *created_own, *created_mine;
};

static void *foreign_main(void *arg)
{
	struct foreign *f = arg;

	f->resume_own = dynstack_coro_resume(f->own);
	f->resume_mine = dynstack_coro_resume(f->mine);
	f->destroy_own = dynstack_coro_destroy(f->own);
	f->destroy_mine = dynstack_coro_destroy(f->mine);
	f->create_own = shared_create(&f->created_own, noop_fn, NULL, dynstack_coro_group(f->own));
	f->create_mine = shared_create(&f->created_mine, noop_fn, NULL, f->g);
	f->group_destroy = dynstack_group_destroy(f->g);
	return NULL;
}

static void test_other_thread_refused(void **state)
{
	TAKE_SIGSEGV();
	struct ticker to = { .seed = 1, .yields = 2 }, tm = { .seed = 2, .yields = 2 };
	struct foreign f = { 0 };
	pthread_t th;
	dynstack_stats_t b = stats_now();

	f.g = group_new(0, "mine", 0);
	f.own = shared_new(ticker_fn, &to, NULL);
	f.mine = shared_new(ticker_fn, &tm, f.g);
	assert_int_equal(dynstack_coro_resume(f.own), 0);
	assert_int_equal(dynstack_coro_resume(f.mine), 0);
	f.created_own = f.created_mine = (dynstack_coro_t *)&f;
	assert_int_equal(pthread_create(&th, NULL, foreign_main, &f), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(f.resume_own, -EINVAL);
	assert_int_equal(f.resume_mine, -EINVAL);
	assert_int_equal(f.destroy_own, -EINVAL);
	assert_int_equal(f.destroy_mine, -EINVAL);
	assert_int_equal(f.create_own, -EINVAL);
	assert_int_equal(f.create_mine, -EINVAL);
	assert_null(f.created_own);
	assert_null(f.created_mine);
	assert_int_equal(f.group_destroy, -EINVAL);
	/* On their own thread they carry on, frames intact. */
	for (int i = 0; i < 2; i++) {
		assert_int_equal(dynstack_coro_resume(f.own), 0);
		assert_int_equal(dynstack_coro_resume(f.mine), 0);
	}
	assert_true(to.done && tm.done);
	assert_int_equal(to.errors + tm.errors, 0);
	assert_int_equal(dynstack_coro_destroy(f.own), 0);
	assert_int_equal(dynstack_coro_destroy(f.mine), 0);
	assert_int_equal(dynstack_group_destroy(f.g), 0);
	expect_back_to(&b);
}

/* ---- 5. any-thread group: two threads take turns */

#define RELAY_COROS 4
#define RELAY_YIELDS 20

struct relay {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	dynstack_coro_t *c[RELAY_COROS];
	int turn, turns, done, bad_rc;
	long tid[2];
};

struct relay_arg {
	struct relay *r;
	int me;
};

static void *relay_main(void *arg)
{
	struct relay_arg *ra = arg;
	struct relay *r = ra->r;

	r->tid[ra->me] = thread_id();
	pthread_mutex_lock(&r->lock);
	for (;;) {
		while (!r->done && r->turn != ra->me)
			pthread_cond_wait(&r->cond, &r->lock);
		if (r->done)
			break;
		/* A turn: each live coroutine once, starting at a different one. */
		int dead = 0;
		for (int i = 0; i < RELAY_COROS; i++) {
			dynstack_coro_t *c = r->c[(i + r->turns) % RELAY_COROS];
			if (dynstack_coro_status(c) == DYNSTACK_CORO_DEAD) {
				dead++;
				continue;
			}
			if (dynstack_coro_resume(c))
				r->bad_rc++;
		}
		r->turns++;
		if (dead == RELAY_COROS || r->turns > 4 * RELAY_YIELDS)
			r->done = 1;
		r->turn = !ra->me;
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static void test_any_thread_relay(void **state)
{
	TAKE_SIGSEGV();
	struct relay r = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct relay_arg ra[2] = { { &r, 0 }, { &r, 1 } };
	struct ticker t[RELAY_COROS];
	pthread_t th[2];
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = group_new(64 * 1024, "relay", DYNSTACK_GROUP_ANY_THREAD);

	for (int i = 0; i < RELAY_COROS; i++) {
		t[i] = (struct ticker){ .seed = mix64(100 + i), .yields = RELAY_YIELDS };
		r.c[i] = shared_new(ticker_fn, &t[i], g);
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, relay_main, &ra[i]), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	assert_int_equal(r.bad_rc, 0);
	assert_true(r.tid[0] != r.tid[1]);
	for (int i = 0; i < RELAY_COROS; i++) {
		assert_int_equal(dynstack_coro_status(r.c[i]), DYNSTACK_CORO_DEAD);
		assert_int_equal(t[i].errors, 0);
		assert_int_equal(t[i].runs, RELAY_YIELDS + 1);
		/* Run n ran in turn n, on thread n % 2. */
		for (int n = 0; n <= RELAY_YIELDS; n++)
			if (t[i].tid[n] != r.tid[n % 2])
				fail_msg("coroutine %d run %d on thread %ld, want %ld", i, n,
					 t[i].tid[n], r.tid[n % 2]);
		assert_int_equal(dynstack_coro_destroy(r.c[i]), 0);
	}
	/* And the main thread may destroy it. */
	assert_int_equal(dynstack_group_destroy(g), 0);
	expect_back_to(&b);
}

/* While one thread runs a coroutine of the group, another gets -EBUSY for
 * everything that touches the group. */
struct blocker {
	sem_t running, go;
	long tid;
};

static void blocker_fn(void *arg)
{
	struct blocker *bl = arg;

	bl->tid = thread_id();
	sem_post(&bl->running);
	while (sem_wait(&bl->go))
		;
	dynstack_coro_yield();
}

struct busy_thread {
	dynstack_coro_t *c;
	int rc;
};

static void *busy_main(void *arg)
{
	struct busy_thread *bt = arg;

	bt->rc = dynstack_coro_resume(bt->c);
	return NULL;
}

static void test_any_thread_busy(void **state)
{
	TAKE_SIGSEGV();
	struct blocker bl;
	struct ticker t = { .seed = 3, .yields = 1 };
	struct busy_thread bt = { .rc = 1 };
	dynstack_coro_t *made = (dynstack_coro_t *)&bt;
	pthread_t th;
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = group_new(0, "busy", DYNSTACK_GROUP_ANY_THREAD);

	assert_int_equal(sem_init(&bl.running, 0, 0), 0);
	assert_int_equal(sem_init(&bl.go, 0, 0), 0);
	bt.c = shared_new(blocker_fn, &bl, g);
	dynstack_coro_t *other = shared_new(ticker_fn, &t, g);
	assert_int_equal(pthread_create(&th, NULL, busy_main, &bt), 0);
	while (sem_wait(&bl.running))
		;
	assert_int_equal(dynstack_coro_status(bt.c), DYNSTACK_CORO_RUNNING);
	assert_int_equal(dynstack_coro_resume(other), -EBUSY);
	assert_int_equal(dynstack_coro_resume(bt.c), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(other), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(bt.c), -EBUSY);
	assert_int_equal(shared_create(&made, noop_fn, NULL, g), -EBUSY);
	assert_null(made);
	assert_int_equal(dynstack_group_destroy(g), -EBUSY);
	assert_int_equal(dynstack_coro_status(other), DYNSTACK_CORO_SUSPENDED);
	assert_int_equal(t.runs, 0);
	sem_post(&bl.go);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(bt.rc, 0);
	assert_true(bl.tid != thread_id());

	/* Free again: the main thread runs both. */
	assert_int_equal(dynstack_coro_resume(other), 0);
	assert_int_equal(dynstack_coro_resume(bt.c), 0);
	assert_int_equal(dynstack_coro_resume(other), 0);
	assert_int_equal(dynstack_coro_status(bt.c), DYNSTACK_CORO_DEAD);
	assert_true(t.done);
	assert_int_equal(t.errors, 0);
	assert_int_equal(dynstack_coro_destroy(other), 0);
	assert_int_equal(dynstack_coro_destroy(bt.c), 0);
	assert_int_equal(dynstack_group_destroy(g), 0);
	sem_destroy(&bl.running);
	sem_destroy(&bl.go);
	expect_back_to(&b);
}

/* ---- 6. a thread exits with coroutines left in its own group */

#define ORPHANS 3

struct orphanage {
	struct ticker t[ORPHANS];
	dynstack_coro_t *c[ORPHANS];
	dynstack_group_t *g;
	int errors;
	uint64_t groups_inside;
};

static void *orphan_parent(void *arg)
{
	struct orphanage *o = arg;

	for (int i = 0; i < ORPHANS; i++) {
		o->t[i] = (struct ticker){ .seed = 40 + i, .yields = 5 };
		if (!(o->c[i] = try_shared(ticker_fn, &o->t[i], NULL)) ||
		    dynstack_coro_resume(o->c[i]) != 0)
			o->errors++;
	}
	o->g = dynstack_coro_group(o->c[0]);
	for (int i = 1; i < ORPHANS; i++)
		if (dynstack_coro_group(o->c[i]) != o->g)
			o->errors++;
	o->groups_inside = stats_now().nr_shared_groups;
	return NULL;
}

static void *orphan_prober(void *arg)
{
	struct orphanage *o = arg;

	/* A new thread may get the old one's thread-local addresses. */
	o->errors += dynstack_coro_resume(o->c[0]) != -EINVAL;
	return NULL;
}

static void *lone_thread(void *arg)
{
	struct ticker *t = arg;
	dynstack_coro_t *c = try_shared(ticker_fn, t, NULL);

	if (c) {
		while (dynstack_coro_status(c) == DYNSTACK_CORO_SUSPENDED)
			dynstack_coro_resume(c);
		dynstack_coro_destroy(c);
	}
	return NULL;
}

static void test_orphaned_group(void **state)
{
	TAKE_SIGSEGV();
	struct orphanage o = { 0 };
	pthread_t th;
	dynstack_stats_t b = stats_now();

	assert_int_equal(pthread_create(&th, NULL, orphan_parent, &o), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(o.errors, 0);
	assert_non_null(o.g);
	assert_int_equal(o.groups_inside, b.nr_shared_groups + 1);
	assert_int_equal(stats_now().nr_shared_groups, b.nr_shared_groups + 1);
	for (int i = 0; i < ORPHANS; i++) {
		assert_int_equal(dynstack_coro_status(o.c[i]), DYNSTACK_CORO_SUSPENDED);
		assert_int_equal(dynstack_coro_resume(o.c[i]), -EINVAL);
		assert_int_equal(dynstack_coro_status(o.c[i]), DYNSTACK_CORO_SUSPENDED);
	}
	assert_int_equal(dynstack_group_destroy(o.g), -EINVAL); /* still a thread's own */
	assert_int_equal(pthread_create(&th, NULL, orphan_prober, &o), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(o.errors, 0);
	for (int i = 0; i < ORPHANS; i++) {
		assert_int_equal(o.t[i].runs, 1);
		assert_int_equal(dynstack_coro_destroy(o.c[i]), 0);
		assert_int_equal(stats_now().nr_shared_groups,
				 b.nr_shared_groups + (i < ORPHANS - 1));
	}
	expect_back_to(&b);

	/* A thread whose own group is empty at exit takes it with it. */
	struct ticker t = { .seed = 8, .yields = 3 };
	assert_int_equal(pthread_create(&th, NULL, lone_thread, &t), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_true(t.done);
	assert_int_equal(t.errors, 0);
	expect_back_to(&b);
}

/* ---- 7. poisoning */

static volatile uint64_t *volatile published;

struct pub {
	uint64_t value;
	int bad, runs;
};

static void publish_fn(void *arg)
{
	struct pub *p = arg;
	volatile uint64_t local = p->value;

	published = &local;
	for (int i = 0; i < 3; i++) {
		p->runs++;
		dynstack_coro_yield();
		if (local != p->value)
			p->bad++;
	}
	p->runs++;
}

/* Every committed byte of the group's stack is poison. */
static bool all_poisoned(dynstack_group_t *g)
{
	dynstack_t *s = dynstack_group_stack(g);
	const volatile unsigned char *top = dynstack_top(s);

	if (dynstack_committed(s) == 0)
		return false;
	for (size_t i = 1; i <= dynstack_committed(s); i++)
		if (top[-(ptrdiff_t)i] != POISON)
			return false;
	return true;
}

static void test_poison(void **state)
{
	TAKE_SIGSEGV();
	struct pub p = { .value = 0x1122334455667788ull };
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = group_new(0, "poisoned", DYNSTACK_GROUP_POISON);
	dynstack_coro_t *c = shared_new(publish_fn, &p, g);

	assert_int_equal(dynstack_coro_resume(c), 0);
	/* Switched out, copied away, poisoned: the stale pointer reads 0xdb. */
	assert_int_equal(*published, 0xdbdbdbdbdbdbdbdbull);
	assert_true(all_poisoned(g));
	assert_true(dynstack_coro_saved(c) >= sizeof(uint64_t));
	/* No owner cache: every resume copies in, every switch-out out. */
	for (int i = 0; i < 3; i++) {
		dynstack_stats_t before = stats_now();
		size_t in = dynstack_coro_saved(c);
		assert_int_equal(dynstack_coro_resume(c), 0);
		dynstack_stats_t after = stats_now();
		assert_int_equal(after.nr_shared_owner_hits, before.nr_shared_owner_hits);
		if (i < 2) {
			assert_int_equal(after.nr_shared_copies - before.nr_shared_copies, 2);
			assert_int_equal(after.nr_shared_copied_bytes -
						 before.nr_shared_copied_bytes,
					 in + dynstack_coro_saved(c));
			assert_int_equal(*published, 0xdbdbdbdbdbdbdbdbull);
		}
		assert_true(all_poisoned(g));
	}
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_DEAD);
	assert_int_equal(p.bad, 0);
	assert_int_equal(p.runs, 4);
	assert_int_equal(dynstack_coro_saved(c), 0);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	assert_int_equal(dynstack_group_destroy(g), 0);
	expect_back_to(&b);
}

/* Without poison the stale pointer goes on "working": the owner cache
 * leaves the frames where they were, so it reads the old value, and once
 * another coroutine of the group has run it reads that one's frame. That
 * silent aliasing is the danger DYNSTACK_GROUP_POISON exists to expose. */
static void test_no_poison_stale_pointer(void **state)
{
	TAKE_SIGSEGV();
	struct pub pa = { .value = 0xaaaa0000aaaa0001ull }, pb = { .value = 0xbbbb0000bbbb0002ull };
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = group_new(0, "plain", 0);
	dynstack_coro_t *a = shared_new(publish_fn, &pa, g);
	dynstack_coro_t *bc = shared_new(publish_fn, &pb, g);

	assert_int_equal(dynstack_coro_resume(a), 0);
	volatile uint64_t *stale = published;
	assert_int_equal(*stale, pa.value); /* still there: nothing copied */
	assert_int_equal(dynstack_coro_saved(a), 0);
	assert_int_equal(dynstack_coro_resume(bc), 0);
	assert_ptr_equal(published, stale); /* same code, same depth, same address */
	assert_int_equal(*stale, pb.value); /* a's pointer now reads b's local */
	assert_int_equal(dynstack_coro_resume(a), 0);
	assert_int_equal(*stale, pa.value);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(dynstack_coro_resume(bc), 0);
		assert_int_equal(dynstack_coro_resume(a), 0);
	}
	assert_int_equal(dynstack_coro_resume(bc), 0);
	assert_int_equal(dynstack_coro_status(a), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_status(bc), DYNSTACK_CORO_DEAD);
	assert_int_equal(pa.bad + pb.bad, 0);
	assert_int_equal(pa.runs + pb.runs, 8);
	assert_int_equal(dynstack_coro_destroy(a), 0);
	assert_int_equal(dynstack_coro_destroy(bc), 0);
	assert_int_equal(dynstack_group_destroy(g), 0);
	expect_back_to(&b);
}

/* In a fresh process (run_self): what a stale pointer reads after one
 * switch-out, in a group made with no flags and in the thread's own group. */
static int poison_probe_child(bool by_config)
{
	struct pub p1 = { .value = 0x0102030405060708ull }, p2 = { .value = 0x1112131415161718ull };

	if (by_config) {
		dynstack_config_t cfg;
		CHECK(dynstack_config_init(&cfg) == 0);
		CHECK(cfg.shared_poison == 0);
		cfg.shared_poison = 1;
		CHECK(dynstack_init(&cfg) == 0);
	} else {
		CHECK(dynstack_init(NULL) == 0);
	}
	dynstack_group_t *g = try_group(0, NULL, NULL, 0);
	CHECK(g != NULL);
	dynstack_coro_t *c1 = try_shared(publish_fn, &p1, g);
	dynstack_coro_t *c2 = try_shared(publish_fn, &p2, NULL);
	CHECK(c1 && c2);
	CHECK(dynstack_coro_resume(c1) == 0);
	fprintf(stderr, "group %016" PRIx64 "\n", *published);
	CHECK(dynstack_coro_resume(c2) == 0);
	fprintf(stderr, "own %016" PRIx64 "\n", *published);
	while (dynstack_coro_status(c1) != DYNSTACK_CORO_DEAD)
		CHECK(dynstack_coro_resume(c1) == 0);
	while (dynstack_coro_status(c2) != DYNSTACK_CORO_DEAD)
		CHECK(dynstack_coro_resume(c2) == 0);
	CHECK(p1.bad == 0 && p2.bad == 0);
	CHECK(dynstack_coro_destroy(c1) == 0 && dynstack_coro_destroy(c2) == 0);
	CHECK(dynstack_group_destroy(g) == 0);
	return 0;
}

static void expect_probe(const char *mode, const char *const *env, bool poisoned)
{
	int status;

	assert_int_equal(run_self(mode, env, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("%s: child %s; its stderr:\n%s", mode, describe_status(status), child_err);
	const char *want_group = poisoned ? "group dbdbdbdbdbdbdbdb\n" : "group 0102030405060708\n";
	const char *want_own = poisoned ? "own dbdbdbdbdbdbdbdb\n" : "own 1112131415161718\n";
	if (!contains(child_err, want_group) || !contains(child_err, want_own))
		fail_msg("%s (%s): want \"%s\" and \"%s\"; stderr:\n%s", mode,
			 env && env[0] ? env[0] : "-", want_group, want_own, child_err);
}

static void test_poison_env_and_config(void **state)
{
	static const char *const on[] = { "DYNSTACK_SHARED_POISON=1", NULL };
	static const char *const off[] = { "DYNSTACK_SHARED_POISON=0", NULL };
	static const char *const unset[] = { "DYNSTACK_SHARED_POISON", NULL };

	expect_probe("--poison-probe", on, true);
	expect_probe("--poison-probe", off, false);
	expect_probe("--poison-probe", unset, false);
	expect_probe("--poison-probe-cfg", unset, true);
}

/* ---- 8. overflow of a group's stack */

static void endless_fn(void *arg)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	touch_down(dynstack_top(self), (size_t)1 << 30);
	*(int *)arg = 1; /* not reached */
}

static int overflow_child(void *arg)
{
	struct ticker t = { .seed = 4, .yields = 2 };
	int reached = 0;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_group_t *g = try_group(16 * 1024, "ovf-group", NULL, 0);
	CHECK(g != NULL);
	dynstack_coro_t *idle = try_shared(ticker_fn, &t, g);
	dynstack_coro_t *victim = try_shared(endless_fn, &reached, g);
	CHECK(idle && victim);
	CHECK(dynstack_coro_resume(idle) == 0);
	fprintf(stderr, "id=%" PRIu64 "\n", dynstack_id(dynstack_group_stack(g)));
	dynstack_coro_resume(victim);
	return 100; /* survived the overflow */
}

static void test_overflow_reported(void **state)
{
	char want[128];

	expect_child_sigsegv(overflow_child, NULL);
	const char *id = strstr(child_err, "id=");
	assert_non_null(id);
	snprintf(want, sizeof(want),
		 "stack overflow on stack %" PRIu64 " \"ovf-group\" (size 16384",
		 (uint64_t)strtoull(id + 3, NULL, 10));
	if (!contains(child_err, want) || !contains(child_err, "shared stack of a group"))
		fail_msg("report lacks '%s' or the group; stderr:\n%s", want, child_err);
}

struct deep_ok {
	size_t bytes;
	unsigned levels;
};

static void deep_ok_fn(void *arg)
{
	struct deep_ok *d = arg;
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	d->levels = touch_down(dynstack_top(self), d->bytes);
}

static int overflow_fail_child(void *arg)
{
	struct ticker a = { .seed = 6, .yields = 3 }, z = { .seed = 7, .yields = 1 };
	struct deep_ok d = { .bytes = 10 * 1024 };
	int reached = 0;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_stats_t b = stats_now();
	dynstack_group_t *g = try_group(16 * 1024, "fail-group", "overflow=fail", 0);
	CHECK(g != NULL);
	dynstack_coro_t *keeper = try_shared(ticker_fn, &a, g);
	dynstack_coro_t *victim = try_shared(endless_fn, &reached, g);
	dynstack_coro_t *late = try_shared(ticker_fn, &z, g);
	CHECK(keeper && victim && late);
	CHECK(dynstack_coro_resume(keeper) == 0);
	CHECK(dynstack_coro_resume(late) == 0);
	CHECK(dynstack_coro_resume(victim) == -EOVERFLOW);
	CHECK(!reached);
	CHECK(dynstack_coro_status(victim) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_current() == NULL);
	CHECK(dynstack_coro_resume(victim) == -EINVAL);
	CHECK(stats_now().nr_dynamic_stacks_failed == b.nr_dynamic_stacks_failed + 1);
	/* The others of the group carry on with their frames intact. */
	while (dynstack_coro_status(keeper) != DYNSTACK_CORO_DEAD)
		CHECK(dynstack_coro_resume(keeper) == 0);
	CHECK(dynstack_coro_resume(late) == 0);
	CHECK(a.done && z.done && a.errors == 0 && z.errors == 0);
	/* The stack is sound afterwards: a deep run on it works. */
	dynstack_coro_t *deep = try_shared(deep_ok_fn, &d, g);
	CHECK(deep != NULL);
	CHECK(dynstack_coro_resume(deep) == 0);
	CHECK(d.levels > 0);
	CHECK(dynstack_coro_destroy(victim) == 0);
	CHECK(dynstack_coro_destroy(keeper) == 0);
	CHECK(dynstack_coro_destroy(late) == 0);
	CHECK(dynstack_coro_destroy(deep) == 0);
	CHECK(dynstack_group_destroy(g) == 0);
	dynstack_stats_t e = stats_now();
	CHECK(e.nr_shared_groups == b.nr_shared_groups);
	CHECK(e.nr_shared_saved_bytes == b.nr_shared_saved_bytes);
	CHECK(e.nr_shared_buffer_bytes == b.nr_shared_buffer_bytes);
	return 0;
}

static void test_overflow_fail(void **state)
{
	expect_child_ok(overflow_fail_child, NULL);
	if (!contains(child_err, "overflow=fail") ||
	    !contains(child_err, "shared stack of a group"))
		fail_msg("no overflow=fail report on the group's stack; stderr:\n%s", child_err);
}

/* ---- 9. dynstack_call from a shared-mode coroutine */

#define SEG_NEED (256 * 1024)

struct seg {
	dynstack_group_t *g;
	int errors, fn_yields, on_segment;
	uintptr_t result;
};

static bool on_group_stack(dynstack_group_t *g, const volatile void *p)
{
	dynstack_t *s = dynstack_group_stack(g);
	uintptr_t top = (uintptr_t)dynstack_top(s);

	return (uintptr_t)p < top && (uintptr_t)p >= top - dynstack_size(s);
}

static void *seg_fn(void *arg)
{
	struct seg *sg = arg;
	volatile unsigned char buf[1024];

	fill(buf, sizeof(buf), 0x5e6);
	sg->on_segment = !on_group_stack(sg->g, buf);
	for (int i = 0; i < 3; i++) {
		sg->fn_yields++;
		dynstack_coro_yield();
		if (!intact(buf, sizeof(buf), 0x5e6))
			sg->errors++;
	}
	return (void *)(uintptr_t)0xfeedface;
}

static void seg_coro(void *arg)
{
	struct seg *sg = arg;
	volatile unsigned char mine[2048];

	fill(mine, sizeof(mine), 0xca11);
	if (!on_group_stack(sg->g, mine))
		sg->errors += 100;
	sg->result = (uintptr_t)dynstack_call(SEG_NEED, seg_fn, sg);
	if (!intact(mine, sizeof(mine), 0xca11))
		sg->errors++;
}

/* Writes 8 KiB of another pattern over where seg_coro's frames were. */
static void scribble_fn(void *arg)
{
	int *errors = arg;
	volatile unsigned char big[8192];

	fill(big, sizeof(big), 0x5c);
	dynstack_coro_yield();
	if (!intact(big, sizeof(big), 0x5c))
		(*errors)++;
}

static void test_call_inside_shared(void **state)
{
	TAKE_SIGSEGV();
	int scribble_errors = 0;
	dynstack_stats_t b = stats_now();
	struct seg sg = { .g = group_new(16 * 1024, "seg-group", 0) };
	dynstack_coro_t *a = shared_new(seg_coro, &sg, sg.g);
	dynstack_coro_t *x = shared_new(scribble_fn, &scribble_errors, sg.g);
	dynstack_coro_t *y = shared_new(scribble_fn, &scribble_errors, sg.g);

	assert_int_equal(dynstack_coro_resume(a), 0);
	assert_int_equal(sg.fn_yields, 1);
	assert_true(sg.on_segment);
	assert_int_equal(stats_now().nr_dynamic_stacks_segments - b.nr_dynamic_stacks_segments, 1);
	assert_int_equal(dynstack_coro_resume(x), 0);
	/* a's frames on the shared stack (not those on the segment) are saved. */
	size_t saved = dynstack_coro_saved(a);
	assert_true(saved >= 2048);
	assert_true(saved < 8192);
	assert_int_equal(dynstack_coro_resume(a), 0);
	assert_int_equal(sg.fn_yields, 2);
	assert_int_equal(dynstack_coro_resume(y), 0);
	assert_int_equal(dynstack_coro_resume(x), 0);
	assert_int_equal(dynstack_coro_resume(a), 0);
	assert_int_equal(sg.fn_yields, 3);
	assert_int_equal(dynstack_coro_resume(y), 0);
	assert_int_equal(dynstack_coro_resume(a), 0); /* fn returns, then a */
	assert_int_equal(dynstack_coro_status(a), DYNSTACK_CORO_DEAD);
	assert_int_equal(sg.errors, 0);
	assert_int_equal(scribble_errors, 0);
	assert_int_equal(sg.result, 0xfeedface);
	assert_int_equal(dynstack_coro_destroy(a), 0);
	assert_int_equal(dynstack_coro_destroy(x), 0);
	assert_int_equal(dynstack_coro_destroy(y), 0);

	/* Destroyed while suspended on its segment: the segment goes with it. */
	sg.fn_yields = 0;
	a = shared_new(seg_coro, &sg, sg.g);
	x = shared_new(scribble_fn, &scribble_errors, sg.g);
	assert_int_equal(dynstack_coro_resume(a), 0);
	assert_int_equal(dynstack_coro_resume(x), 0);
	assert_int_equal(dynstack_coro_destroy(a), 0);
	assert_int_equal(dynstack_coro_resume(x), 0);
	assert_int_equal(scribble_errors, 0);
	assert_int_equal(dynstack_coro_destroy(x), 0);
	assert_int_equal(dynstack_group_destroy(sg.g), 0);
	expect_back_to(&b);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "--poison-probe") == 0)
			return poison_probe_child(false);
		if (strcmp(argv[1], "--poison-probe-cfg") == 0)
			return poison_probe_child(true);
		return 64;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_many_random_depths),
		cmocka_unit_test(test_own_group),
		cmocka_unit_test(test_owner_cache),
		cmocka_unit_test(test_buffer_shrinks),
		cmocka_unit_test(test_attr_refused),
		cmocka_unit_test(test_null_and_private),
		cmocka_unit_test(test_old_attr_layout),
		cmocka_unit_test(test_inside_group_busy),
		cmocka_unit_test(test_group_destroy_refused),
		cmocka_unit_test(test_other_thread_refused),
		cmocka_unit_test(test_any_thread_relay),
		cmocka_unit_test(test_any_thread_busy),
		cmocka_unit_test(test_orphaned_group),
		cmocka_unit_test(test_poison),
		cmocka_unit_test(test_no_poison_stale_pointer),
		cmocka_unit_test(test_poison_env_and_config),
		cmocka_unit_test(test_overflow_reported),
		cmocka_unit_test(test_overflow_fail),
		cmocka_unit_test(test_call_inside_shared),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
