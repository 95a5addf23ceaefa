/* Tests of stacks (src/stack.c): what create promises about size, commit,
 * name and id, growth on deep calls and big frames, and destroy returning
 * every page, each checked against what the kernel reports for the range.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <alloca.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"

static dynstack_t *create(size_t size, size_t initial, const char *name)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = size;
	attr.initial = initial;
	attr.name = name;
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_non_null(s);
	return s;
}

static size_t round_page(size_t v)
{
	return (v + page_size() - 1) & ~(page_size() - 1);
}

/* The whole slot as seen from outside: one floor page below lo, the
 * usable part, nothing above top. */
static char *floor_of(dynstack_t *s)
{
	return (char *)dynstack_top(s) - dynstack_size(s) - page_size();
}

static void test_create_default(void **state)
{
	TAKE_SIGSEGV();
	dynstack_t *s = NULL;
	size_t ps = page_size();
	size_t want = created_committed(DYNSTACK_DEFAULT_SIZE, 0);

	assert_int_equal(dynstack_create(&s, NULL), 0);
	assert_non_null(s);
	char *top = dynstack_top(s);
	assert_int_equal((uintptr_t)top % 16, 0);
	assert_int_equal(dynstack_size(s), DYNSTACK_DEFAULT_SIZE);
	assert_int_equal(dynstack_committed(s), want);
	assert_int_equal(dynstack_peak(s), want);
	assert_string_equal(dynstack_name(s), "");
	assert_true(dynstack_id(s) != 0);
	/* Committed is not resident: create itself touches nothing. */
	assert_int_equal(count_resident(floor_of(s), top), 0);
	assert_int_equal(count_accessible(floor_of(s), top), want / ps);
	assert_int_equal(count_accessible(top - ps, top), 1);
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_create_custom(void **state)
{
	TAKE_SIGSEGV();
	size_t ps = page_size();
	const struct {
		size_t size, initial;
		const char *name;
	} cases[] = {
		{ 64 * 1024, 3 * ps, "custom" },
		{ 10000, 5000, "unaligned" },
		{ 3 * ps, 3 * ps, "full" },
		{ 1 << 20, 0, "one megabyte" },
		{ 1, 1, "tiny" },
		{ 200 * 1024, 17 * ps + 1, "a name that is much longer than thirty-one bytes" },
	};
	uint64_t last_id = 0;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		dynstack_t *s = create(cases[i].size, cases[i].initial, cases[i].name);
		size_t want_committed = created_committed(cases[i].size, cases[i].initial);
		char *top = dynstack_top(s);

		assert_int_equal((uintptr_t)top % 16, 0);
		assert_int_equal(dynstack_size(s), round_page(cases[i].size));
		assert_int_equal(dynstack_committed(s), want_committed);
		assert_int_equal(dynstack_peak(s), want_committed);
		assert_int_equal(strlen(dynstack_name(s)),
				 strlen(cases[i].name) > DYNSTACK_NAME_MAX ? DYNSTACK_NAME_MAX :
									     strlen(cases[i].name));
		assert_memory_equal(dynstack_name(s), cases[i].name, strlen(dynstack_name(s)));
		/* Ids are process-unique: here, strictly increasing. */
		assert_true(dynstack_id(s) > last_id);
		last_id = dynstack_id(s);
		/* Exactly the initial pages, at the top; floor never. */
		assert_int_equal(count_resident(floor_of(s), top), 0);
		assert_int_equal(count_accessible(floor_of(s), top), want_committed / ps);
		assert_int_equal(count_accessible(top - want_committed, top), want_committed / ps);
		assert_int_equal(dynstack_destroy(s), 0);
	}
}

/* Every initial size from one page to the whole stack commits exactly that. */
static void test_initial_commits_exactly(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();

	for (size_t pages = 1; pages <= 16; pages++) {
		dynstack_t *s = create(16 * ps, pages * ps, NULL);
		char *top = dynstack_top(s);

		assert_int_equal(dynstack_committed(s), pages * ps);
		assert_int_equal(count_accessible(floor_of(s), top), pages);
		assert_int_equal(count_accessible(top - pages * ps, top), pages);
		assert_int_equal(dynstack_destroy(s), 0);
	}
}

/* ---- running on the stack */

struct dive {
	size_t bytes;	 /* how far below the top to go */
	unsigned levels; /* touch_down's result */
};

static void dive_fn(void *arg)
{
	struct dive *d = arg;
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	d->levels = touch_down(dynstack_top(self), d->bytes);
}

static void test_deep_recursion(void **state)
{
	TAKE_SIGSEGV();
	const size_t size = 256 * 1024, ps = page_size();
	dynstack_attr_t attr;
	dynstack_coro_t *c;
	struct dive d = { .bytes = size - ps };

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = size;
	attr.name = "deep";
	assert_int_equal(dynstack_coro_create(&c, dive_fn, &d, &attr), 0);
	dynstack_t *s = dynstack_coro_stack(c);
	char *top = dynstack_top(s);
	dynstack_stats_t before = stats_now();

	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_DEAD);
	dynstack_stats_t after = stats_now();

	/* Every level found its frame intact after the levels below faulted. */
	assert_true(d.levels > (size - ps) / 512);
	size_t committed = dynstack_committed(s);
	if (stacks_whole()) { /* no growth: the frames are what is left */
		assert_int_equal(committed, size);
		assert_int_equal(dynstack_coro_destroy(c), 0);
		return;
	}
	assert_true(committed >= size - ps);
	assert_true(committed <= size);
	assert_int_equal(dynstack_peak(s), committed);
	/* Every committed page was touched on the way down, and nothing else
	 * is accessible: not the floor. */
	assert_int_equal(count_resident(floor_of(s), top), committed / ps);
	assert_int_equal(count_accessible(floor_of(s), top), committed / ps);
	assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages,
			 committed / ps - 1);
	assert_true(after.nr_dynamic_stacks_faults > before.nr_dynamic_stacks_faults);
	assert_true(after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults <=
		    committed / ps - 1);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* A frame far bigger than a page: the first access lands many pages below
 * the edge, and one fault must commit all of them. */
#define JUMP (60 * 1024)

struct jump {
	uintptr_t low;	/* lowest byte of the alloca'd block */
	uintptr_t high; /* highest byte */
};

/* No stack-clash probing here: it would touch each page on the way down,
 * which is exactly what this test must not do. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-stack-clash-protection")))
#endif
static __attribute__((noinline)) void
jump_down(struct jump *j)
{
	volatile char *p = alloca(JUMP);

	p[0] = 1; /* the lowest byte first: one fault below everything */
	p[JUMP - 1] = 2;
	j->low = (uintptr_t)&p[0];
	j->high = (uintptr_t)&p[JUMP - 1];
}

static void jump_fn(void *arg)
{
	jump_down(arg);
}

static void test_big_frame_one_fault(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	const size_t size = 128 * 1024, ps = page_size();
	dynstack_attr_t attr;
	dynstack_coro_t *c;
	struct jump j = { 0 };

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = size;
	attr.initial = 2 * ps; /* room for the frames above the jump */
	assert_int_equal(dynstack_coro_create(&c, jump_fn, &j, &attr), 0);
	dynstack_t *s = dynstack_coro_stack(c);
	char *top = dynstack_top(s);
	dynstack_stats_t before = stats_now();

	assert_int_equal(dynstack_coro_resume(c), 0);
	dynstack_stats_t after = stats_now();

	size_t committed = dynstack_committed(s);
	uintptr_t fault_page = j.low & ~(uintptr_t)(ps - 1);
	assert_true((uintptr_t)top - j.low > JUMP);
	assert_int_equal(after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults, 1);
	assert_int_equal(committed, (uintptr_t)top - fault_page);
	assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages,
			 committed / ps - 2);
	/* Committed, not touched: only the pages written are resident... */
	size_t resident = count_resident(floor_of(s), top);
	assert_true(resident >= 2 && resident <= 5);
	/* ...but the whole range in between is accessible, and no more. */
	assert_int_equal(count_accessible(top - committed, top), committed / ps);
	assert_int_equal(count_accessible(floor_of(s), top), committed / ps);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* ---- destroy gives everything back */

static void test_destroy_returns_pages(void **state)
{
	TAKE_SIGSEGV();
	const size_t size = 64 * 1024, ps = page_size();
	dynstack_t *s = create(size, 0, "give-back");
	char *top = dynstack_top(s), *lo = floor_of(s);
	size_t initial = created_committed(size, 0);
	dynstack_stats_t before = stats_now();

	/* Grown from this thread: the handler goes by address, not by stack. */
	touch_pages_down(top - size, top);
	assert_int_equal(dynstack_committed(s), size);
	assert_int_equal(count_resident(lo, top), size / ps);
	assert_int_equal(count_accessible(lo, top), size / ps);
	dynstack_stats_t grown = stats_now();
	assert_int_equal(grown.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages,
			 (size - initial) / ps);

	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(count_resident(lo, top), 0);
	assert_int_equal(count_accessible(lo, top), 0);
	dynstack_stats_t after = stats_now();
	assert_int_equal(before.nr_dynamic_stacks_pages - after.nr_dynamic_stacks_pages,
			 initial / ps);
	assert_int_equal(before.nr_dynamic_stacks - after.nr_dynamic_stacks, 1);
}

static void test_destroy_coro_returns_pages(void **state)
{
	TAKE_SIGSEGV();
	const size_t size = 128 * 1024, ps = page_size();
	dynstack_attr_t attr;
	dynstack_coro_t *c;
	struct dive d = { .bytes = size / 2 };

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = size;
	assert_int_equal(dynstack_coro_create(&c, dive_fn, &d, &attr), 0);
	dynstack_t *s = dynstack_coro_stack(c);
	char *top = dynstack_top(s), *lo = floor_of(s);

	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_true(d.levels > 0);
	assert_true(count_resident(lo, top) >= size / 2 / ps);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	assert_int_equal(count_resident(lo, top), 0);
	assert_int_equal(count_accessible(lo, top), 0);
}

/* A reused slot starts from scratch: one page committed, nothing resident. */
static void test_reused_slot_is_fresh(void **state)
{
	TAKE_SIGSEGV();
	const size_t size = 32 * 1024, ps = page_size();
	dynstack_t *a = create(size, 0, "a");
	char *top = dynstack_top(a);

	touch_pages_down(top - size, top);
	assert_int_equal(dynstack_destroy(a), 0);
	dynstack_t *b = create(size, 0, "b");
	assert_ptr_equal(dynstack_top(b), top); /* same slot (free list is LIFO) */
	assert_int_equal(dynstack_committed(b), created_committed(size, 0));
	assert_int_equal(dynstack_peak(b), created_committed(size, 0));
	assert_int_equal(count_resident(floor_of(b), top), 0);
	assert_int_equal(count_accessible(floor_of(b), top), created_committed(size, 0) / ps);
	/* Its first page reads as zero, not as what a wrote. */
	assert_int_equal(*(volatile char *)(top - 1), 0);
	assert_int_equal(dynstack_destroy(b), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_default),
		cmocka_unit_test(test_create_custom),
		cmocka_unit_test(test_initial_commits_exactly),
		cmocka_unit_test(test_deep_recursion),
		cmocka_unit_test(test_big_frame_one_fault),
		cmocka_unit_test(test_destroy_returns_pages),
		cmocka_unit_test(test_destroy_coro_returns_pages),
		cmocka_unit_test(test_reused_slot_is_fresh),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
