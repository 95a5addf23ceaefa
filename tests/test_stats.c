/* Tests of the counters (src/stats.c): snapshots follow creates, destroys
 * and faults exactly, the printed form has every counter of the X-macro,
 * and short or bad arguments are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "helpers.h"

#define NAME_OF(name, kind, desc) #name,
static const char *const counter_names[] = { DYNSTACK_STATS_COUNTERS(NAME_OF) };
#undef NAME_OF
#define NCOUNTERS (sizeof(counter_names) / sizeof(counter_names[0]))

/* The counters of a snapshot, in X-macro order. */
static void counter_values(const dynstack_stats_t *st, uint64_t out[NCOUNTERS])
{
	size_t i = 0;
#define VALUE_OF(name, kind, desc) out[i++] = st->name;
	DYNSTACK_STATS_COUNTERS(VALUE_OF)
#undef VALUE_OF
}

static void never_fn(void *arg)
{
	abort(); /* created, never resumed */
}

static void test_snapshot_follows_activity(void **state)
{
	TAKE_SIGSEGV();
	size_t ps = page_size();
	dynstack_attr_t attr;
	dynstack_t *s[3];
	dynstack_coro_t *c;

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = 64 * 1024;
	attr.initial = 2 * ps;
	/* Where stacks are committed whole, all at
	 * create and no faults. */
	const uint64_t per_stack = created_committed(attr.size, attr.initial) / ps;
	const uint64_t faults = stacks_whole() ? 0 : 2;
	dynstack_stats_t st0 = stats_now();
	assert_int_equal(st0.struct_size, sizeof(dynstack_stats_t));
	assert_int_equal(st0.page_size, ps);
	assert_int_equal(st0.backend, strcmp(dynstack_backend_name(), "guard") == 0 ?
					      DYNSTACK_BACKEND_GUARD :
					      DYNSTACK_BACKEND_MPROTECT);

	for (int i = 0; i < 3; i++)
		assert_int_equal(dynstack_create(&s[i], &attr), 0);
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(st1.nr_dynamic_stacks - st0.nr_dynamic_stacks, 3);
	assert_int_equal(st1.nr_dynamic_stacks_created - st0.nr_dynamic_stacks_created, 3);
	assert_int_equal(st1.nr_dynamic_stacks_pages - st0.nr_dynamic_stacks_pages, 3 * per_stack);
	assert_int_equal(st1.nr_dynamic_stacks_destroyed, st0.nr_dynamic_stacks_destroyed);
	assert_int_equal(st1.nr_dynamic_stacks_faults, st0.nr_dynamic_stacks_faults);
	assert_true(st1.nr_dynamic_stacks_sync_stacks >= 1); /* this thread's, from create */
	assert_true(st1.nr_dynamic_stacks_arenas >= 1);

	/* Two faults: one page, then five at once. */
	char *top = dynstack_top(s[1]);
	*(volatile char *)(top - 3 * ps) = 1;
	*(volatile char *)(top - 8 * ps) = 1;
	dynstack_stats_t st2 = stats_now();
	assert_int_equal(st2.nr_dynamic_stacks_faults - st1.nr_dynamic_stacks_faults, faults);
	assert_int_equal(st2.nr_dynamic_stacks_pages - st1.nr_dynamic_stacks_pages, faults ? 6 : 0);

	assert_int_equal(dynstack_coro_create(&c, never_fn, NULL, NULL), 0);
	dynstack_stats_t st3 = stats_now();
	assert_int_equal(st3.nr_dynamic_stacks_coros - st2.nr_dynamic_stacks_coros, 1);
	assert_int_equal(st3.nr_dynamic_stacks - st2.nr_dynamic_stacks, 1);
	assert_int_equal(dynstack_coro_destroy(c), 0);

	for (int i = 0; i < 3; i++)
		assert_int_equal(dynstack_destroy(s[i]), 0);
	dynstack_stats_t st4 = stats_now();
	assert_int_equal(st4.nr_dynamic_stacks, st0.nr_dynamic_stacks);
	assert_int_equal(st4.nr_dynamic_stacks_pages, st0.nr_dynamic_stacks_pages);
	assert_int_equal(st4.nr_dynamic_stacks_coros, st0.nr_dynamic_stacks_coros);
	assert_int_equal(st4.nr_dynamic_stacks_created - st0.nr_dynamic_stacks_created, 4);
	assert_int_equal(st4.nr_dynamic_stacks_destroyed - st0.nr_dynamic_stacks_destroyed, 4);
	assert_int_equal(st4.nr_dynamic_stacks_faults - st0.nr_dynamic_stacks_faults, faults);
	assert_int_equal(st4.nr_dynamic_stacks_overflows, st0.nr_dynamic_stacks_overflows);
	assert_int_equal(st4.nr_dynamic_stacks_commit_failed, st0.nr_dynamic_stacks_commit_failed);
}

/* A size class nobody used yet reserves one arena; the gauge keeps it. */
static void test_arena_gauge(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_t *s, *t;

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = 300 << 20; /* the 512 MiB class: used by no other test here */
	dynstack_stats_t st0 = stats_now();
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_int_equal(dynstack_create(&t, &attr), 0);
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(st1.nr_dynamic_stacks_arenas - st0.nr_dynamic_stacks_arenas, 1);
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(dynstack_destroy(t), 0);
	dynstack_stats_t st2 = stats_now();
	assert_int_equal(st2.nr_dynamic_stacks_arenas, st1.nr_dynamic_stacks_arenas);
}

static void *sync_stack_thread(void *arg)
{
	dynstack_stats_t *out = arg;

	if (dynstack_thread_init() == 0)
		*out = stats_now();
	return NULL;
}

static void test_sync_stack_gauge(void **state)
{
	TAKE_SIGSEGV();
	dynstack_stats_t inside = { 0 };
	pthread_t th;

	dynstack_stats_t st0 = stats_now();
	assert_int_equal(pthread_create(&th, NULL, sync_stack_thread, &inside), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(inside.nr_dynamic_stacks_sync_stacks - st0.nr_dynamic_stacks_sync_stacks,
			 1);
	assert_int_equal(st1.nr_dynamic_stacks_sync_stacks, st0.nr_dynamic_stacks_sync_stacks);
}

/* ---- struct_size: 0 means the current size, shorter gets a prefix */

static void test_struct_size(void **state)
{
	TAKE_SIGSEGV();
	dynstack_stats_t st;
	const size_t first = offsetof(dynstack_stats_t, nr_dynamic_stacks);
	dynstack_t *s;

	assert_int_equal(dynstack_create(&s, NULL), 0); /* nr_dynamic_stacks >= 1 */
	memset(&st, 0, sizeof(st));
	assert_int_equal(dynstack_stats_get(&st), 0);
	assert_int_equal(st.struct_size, sizeof(st));
	assert_true(st.nr_dynamic_stacks >= 1);

	/* Room for the first counter only: the rest is left alone. */
	memset(&st, 0xa5, sizeof(st));
	st.struct_size = first + sizeof(uint64_t);
	assert_int_equal(dynstack_stats_get(&st), 0);
	assert_int_equal(st.struct_size, first + sizeof(uint64_t));
	assert_true(st.nr_dynamic_stacks >= 1 && st.nr_dynamic_stacks < 1000000);
	assert_int_equal(st.page_size, page_size());
	const unsigned char *tail = (const unsigned char *)&st + first + sizeof(uint64_t);
	for (size_t i = 0; i < sizeof(st) - first - sizeof(uint64_t); i++)
		assert_int_equal(tail[i], 0xa5);

	/* Too short for any counter. */
	const size_t too_short[] = { 1, sizeof(size_t), first, first + sizeof(uint64_t) - 1 };
	for (size_t i = 0; i < sizeof(too_short) / sizeof(too_short[0]); i++) {
		memset(&st, 0xa5, sizeof(st));
		st.struct_size = too_short[i];
		assert_int_equal(dynstack_stats_get(&st), -EINVAL);
	}

	/* A caller from the future with a bigger struct gets today's fields. */
	struct {
		dynstack_stats_t st;
		uint64_t more[4];
	} big;
	memset(&big, 0xa5, sizeof(big));
	big.st.struct_size = sizeof(big);
	assert_int_equal(dynstack_stats_get(&big.st), 0);
	assert_int_equal(big.st.struct_size, sizeof(dynstack_stats_t));
	assert_int_equal(big.more[0], 0xa5a5a5a5a5a5a5a5ull);

	assert_int_equal(dynstack_stats_get(NULL), -EINVAL);
	assert_int_equal(dynstack_destroy(s), 0);
}

/* ---- the printed form */

/* Print to a memfd and read it all back. */
static char *print_to_memory(void)
{
	int fd = memfd_create("stats", 0);
	static char buf[8192];

	assert_true(fd >= 0);
	assert_int_equal(dynstack_stats_print(fd), 0);
	off_t len = lseek(fd, 0, SEEK_CUR);
	assert_true(len > 0 && (size_t)len < sizeof(buf));
	assert_int_equal(pread(fd, buf, (size_t)len, 0), len);
	buf[len] = '\0';
	close(fd);
	return buf;
}

static void test_print_parses(void **state)
{
	TAKE_SIGSEGV();
	dynstack_t *s;
	uint64_t want[NCOUNTERS];
	char name[64], backend[64] = "";
	unsigned long long value;
	size_t seen = 0;
	int consumed;

	assert_int_equal(dynstack_create(&s, NULL), 0);
	dynstack_stats_t st = stats_now(); /* nothing else runs: the same values */
	counter_values(&st, want);
	char *text = print_to_memory();
	char *line = text;

	/* Every counter in X-macro order, one "name value" line each, then
	 * the backend line, and nothing else. */
	while (*line) {
		char *end = strchr(line, '\n');
		assert_non_null(end);
		*end = '\0';
		if (seen < NCOUNTERS) {
			assert_int_equal(sscanf(line, "%63s %llu%n", name, &value, &consumed), 2);
			assert_int_equal(line[consumed], '\0');
			assert_string_equal(name, counter_names[seen]);
			if (value != want[seen])
				fail_msg("%s printed %llu, snapshot %" PRIu64, name, value,
					 want[seen]);
		} else {
			assert_int_equal(seen, NCOUNTERS);
			assert_int_equal(
				sscanf(line, "dynamic_stacks_backend %63s%n", backend, &consumed),
				1);
			assert_int_equal(line[consumed], '\0');
		}
		seen++;
		line = end + 1;
	}
	assert_int_equal(seen, NCOUNTERS + 1);
	assert_string_equal(backend, dynstack_backend_name());
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_print_bad_fd(void **state)
{
	int fds[2];

	assert_int_equal(dynstack_stats_print(-1), -EBADF);
	assert_int_equal(dynstack_stats_print(-1000), -EBADF);
	/* A closed descriptor and one not open for writing. */
	assert_int_equal(pipe(fds), 0);
	close(fds[1]);
	assert_int_equal(dynstack_stats_print(fds[1]), -EBADF);
	assert_int_equal(dynstack_stats_print(fds[0]), -EBADF);
	close(fds[0]);
	int ro = open("/dev/null", O_RDONLY);
	assert_true(ro >= 0);
	assert_int_equal(dynstack_stats_print(ro), -EBADF);
	close(ro);
	/* A full device: the error of write(2), negative. */
	int full = open("/dev/full", O_WRONLY);
	if (full >= 0) {
		assert_int_equal(dynstack_stats_print(full), -ENOSPC);
		close(full);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_snapshot_follows_activity),
		cmocka_unit_test(test_arena_gauge),
		cmocka_unit_test(test_sync_stack_gauge),
		cmocka_unit_test(test_struct_size),
		cmocka_unit_test(test_print_parses),
		cmocka_unit_test(test_print_bad_fd),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
