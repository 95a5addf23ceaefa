/* Tests of the scalability claim: the mprotect backend ends cleanly at
 * vm.max_map_count (-ENOMEM, nothing broken, room again after a destroy);
 * the guard backend holds 40,000 stacks in a handful of VMAs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "helpers.h"

#define SMALL (16 * 1024)
#define EXIT_SKIP 77

static long max_map_count(void)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	long v = -1;

	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static dynstack_attr_t small_attr(void)
{
	dynstack_attr_t attr;

	dynstack_attr_init(&attr);
	attr.size = SMALL;
	return attr;
}

/* ---- mprotect: up to the limit and back */

struct survivor {
	unsigned levels;
};

static void survivor_fn(void *arg)
{
	struct survivor *sv = arg;
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	dynstack_coro_yield();
	/* Resumed at the limit: grow 40 KiB, one mprotect per page. */
	sv->levels = touch_down(dynstack_top(self), 40 * 1024);
}

/* In a child, whose results go to stderr as "key value" lines. */
static int map_limit_child(void *arg)
{
	dynstack_config_t cfg;
	dynstack_attr_t attr = small_attr();
	struct survivor sv = { 0 };
	dynstack_coro_t *c;
	long max = max_map_count();
	long n = 0;
	int rc;

	dynstack_config_init(&cfg);
	cfg.backend = DYNSTACK_BACKEND_MPROTECT;
	rc = dynstack_init(&cfg);
	if (rc == -EBUSY)
		return EXIT_SKIP; /* this process chose another backend earlier */
	if (rc || strcmp(dynstack_backend_name(), "mprotect") != 0 || max <= 0)
		return 2;
	dynstack_t **all = calloc((size_t)max, sizeof(*all));
	if (!all)
		return 3;
	dynstack_attr_t big = small_attr();
	big.size = 64 * 1024;
	big.name = "survivor";
	if (dynstack_coro_create(&c, survivor_fn, &sv, &big) || dynstack_coro_resume(c))
		return 4;
	size_t before = dynstack_committed(dynstack_coro_stack(c));

	for (;;) {
		dynstack_t *s = (dynstack_t *)&n;
		rc = dynstack_create(&s, &attr);
		if (rc) {
			fprintf(stderr, "out_reset %d\n", s == NULL);
			break;
		}
		if (n == max) {
			dynstack_destroy(s);
			break;
		}
		all[n++] = s;
	}
	fprintf(stderr, "count %ld\nrc %d\nmax %ld\n", n, rc, max);
	/* More refusals add no second message: it is printed once per process. */
	int refused = 0;
	for (int i = 0; i < 3; i++) {
		dynstack_t *s;
		if (dynstack_create(&s, &attr) == -ENOMEM)
			refused++;
		else
			dynstack_destroy(s);
	}
	fprintf(stderr, "refused %d\n", refused);

	/* Still alive, and the stacks that exist still grow. */
	if (dynstack_coro_resume(c) || dynstack_coro_status(c) != DYNSTACK_CORO_DEAD)
		return 5;
	size_t after = dynstack_committed(dynstack_coro_stack(c));
	fprintf(stderr, "grew %d\n", sv.levels > 0 && after >= before + 40 * 1024);
	char *top = dynstack_top(all[0]);
	*(volatile char *)(top - 2 * page_size()) = 1;
	fprintf(stderr, "grew_plain %d\n", dynstack_committed(all[0]) == 2 * page_size());

	/* Room again after a few destroys. */
	for (int i = 0; i < 10; i++)
		dynstack_destroy(all[--n]);
	int again = 0;
	for (int i = 0; i < 4; i++) {
		if ((rc = dynstack_create(&all[n], &attr)) == 0) {
			again++;
			n++;
		}
	}
	fprintf(stderr, "again %d\n", again);
	while (n)
		dynstack_destroy(all[--n]);
	dynstack_coro_destroy(c);
	free(all);
	fprintf(stderr, "done 1\n");
	return 0;
}

static long value_of(const char *text, const char *key)
{
	char pattern[64];
	const char *p;

	snprintf(pattern, sizeof(pattern), "%s ", key);
	for (p = text; (p = strstr(p, pattern)); p++) {
		if (p == text || p[-1] == '\n')
			return strtol(p + strlen(pattern), NULL, 10);
	}
	fail_msg("no '%s' in the child's output:\n%s", key, text);
	return -1;
}

/* Above this, filling the map would take too long for a unit test. */
#define MAX_MAP_COUNT_TESTED (1L << 20)

static void skip_if_limit_too_high(void)
{
	SKIP_UNDER(valgrind, "Valgrind's own table of mappings (VG_N_SEGMENTS) is full long before "
			     "vm.max_map_count");
	if (max_map_count() > MAX_MAP_COUNT_TESTED) {
		print_message("vm.max_map_count is %ld: too many stacks to reach it here\n",
			      max_map_count());
		skip();
	}
}

/* The -ENOMEM at the limit comes with one message on stderr that names the
 * limit, its value and both remedies, however many creates fail. */
static void check_limit_message(const char *err, long max)
{
	static const char head[] = "libdynstack: cannot create a stack: ";
	char want[128];
	const char *p = strstr(err, head);

	if (!p)
		fail_msg("no '%s...' message on stderr:\n%s", head, err);
	if (strstr(p + 1, head))
		fail_msg("the limit message is printed more than once:\n%s", err);
	const char *eol = strchr(p, '\n');
	assert_non_null(eol);
	char line[512];
	snprintf(line, sizeof(line), "%.*s", (int)(eol - p), p);
	snprintf(want, sizeof(want),
		 "the process has reached vm.max_map_count (%ld mappings), and the mprotect "
		 "backend needs two per stack",
		 max);
	if (!contains(line, want) || !contains(line, "sysctl -w vm.max_map_count=") ||
	    !contains(line, "use the guard backend (Linux >= 6.13, DYNSTACK_BACKEND=guard)"))
		fail_msg("the limit message lacks the limit or a remedy: %s", line);
	print_message("%s\n", line);
}

static void test_mprotect_map_limit(void **state)
{
	static char err[8192];
	int status;

	skip_if_limit_too_high();
	int rc = run_in_child(map_limit_child, NULL, &status, err, sizeof(err));
	assert_int_equal(rc, 0);
	if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIP) {
		print_message(
			"the library was initialised with another backend before this test\n");
		skip();
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; stderr:\n%s", describe_status(status), err);
	long max = value_of(err, "max"), count = value_of(err, "count");
	print_message("%ld stacks before -ENOMEM, vm.max_map_count %ld\n", count, max);
	assert_int_equal(value_of(err, "rc"), -ENOMEM);
	assert_int_equal(value_of(err, "out_reset"), 1);
	/* Two VMAs per stack (its committed page and the floor below it). */
	if (count < max / 2 - 1000 || count > max)
		fail_msg("%ld stacks before -ENOMEM, vm.max_map_count %ld", count, max);
	assert_int_equal(value_of(err, "refused"), 3);
	check_limit_message(err, max);
	if (!stacks_whole()) { /* the survivors grow, where stacks grow at all */
		assert_int_equal(value_of(err, "grew"), 1);
		assert_int_equal(value_of(err, "grew_plain"), 1);
	}
	assert_int_equal(value_of(err, "again"), 4);
	assert_int_equal(value_of(err, "done"), 1);
}

/* A commit the kernel refuses during a fault is reported, and kills. To
 * make it need a new VMA, the page above the edge is made read-only (the
 * new pages cannot merge with it); then every VMA slot is used up. */
static int commit_refused_child(void *arg)
{
	dynstack_config_t cfg;
	dynstack_attr_t attr = small_attr();
	dynstack_t *victim;
	size_t ps = page_size();
	long max = max_map_count();

	dynstack_config_init(&cfg);
	cfg.backend = DYNSTACK_BACKEND_MPROTECT;
	int rc = dynstack_init(&cfg);
	if (rc == -EBUSY)
		return EXIT_SKIP;
	attr.name = "victim";
	if (rc || max <= 0 || dynstack_create(&victim, &attr))
		return 2;
	fprintf(stderr, "id %llu\n", (unsigned long long)dynstack_id(victim));
	attr.name = NULL;
	for (long n = 0; n < max; n++) {
		dynstack_t *s;
		if (dynstack_create(&s, &attr))
			break;
	}
	char *top = dynstack_top(victim);
	if (mprotect(top - ps, ps, PROT_READ))
		return 3;
	/* Single pages of alternating protection never merge: one VMA each. */
	for (int i = 0; i < 1000; i++) {
		int prot = i % 2 ? PROT_READ : PROT_NONE;
		if (mmap(NULL, ps, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED)
			break;
	}
	fprintf(stderr, "filled 1\n");
	*(volatile char *)(top - 2 * ps) = 1;
	return 100;
}

static void test_mprotect_commit_refused(void **state)
{
	static char err[8192];
	char want[128];
	int status;

	SKIP_IF_WHOLE();
	skip_if_limit_too_high();
	int rc = run_in_child(commit_refused_child, NULL, &status, err, sizeof(err));
	assert_int_equal(rc, 0);
	if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIP) {
		print_message(
			"the library was initialised with another backend before this test\n");
		skip();
	}
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSEGV)
		fail_msg("child %s, expected death by SIGSEGV; stderr:\n%s",
			 describe_status(status), err);
	assert_int_equal(value_of(err, "filled"), 1);
	snprintf(want, sizeof(want),
		 "libdynstack: stack overflow: cannot commit on stack %ld "
		 "\"victim\" (size %u, committed %zu,",
		 value_of(err, "id"), SMALL, page_size());
	if (!contains(err, want) || !contains(err, dynstack_strerror(-ENOMEM)))
		fail_msg("no report '%s...: %s'; stderr:\n%s", want, dynstack_strerror(-ENOMEM),
			 err);
}

/* ---- guard: no VMA per stack */

#define MANY 40000

static void test_guard_many_stacks(void **state)
{
	TAKE_SIGSEGV();
	if (strcmp(dynstack_backend_name(), "guard") != 0) {
		print_message("backend is %s: the guard scalability test needs guard regions\n",
			      dynstack_backend_name());
		skip();
	}
	dynstack_attr_t attr = small_attr();
	dynstack_t **all = calloc(MANY, sizeof(*all));
	assert_non_null(all);
	size_t vmas_before = count_vmas();
	assert_true(vmas_before > 0);

	for (long i = 0; i < MANY; i++) {
		int rc = dynstack_create(&all[i], &attr);
		if (rc)
			fail_msg("create #%ld: %s", i, dynstack_strerror(rc));
	}
	size_t vmas_full = count_vmas();
	/* Growth does not split VMAs either: grow every hundredth stack. */
	for (long i = 0; i < MANY; i += 100) {
		char *top = dynstack_top(all[i]);
		touch_pages_down(top - SMALL, top);
	}
	size_t vmas_grown = count_vmas();
	dynstack_stats_t st = stats_now();
	assert_true(st.nr_dynamic_stacks >= MANY);
	for (long i = 0; i < MANY; i++)
		assert_int_equal(dynstack_destroy(all[i]), 0);
	size_t vmas_after = count_vmas();
	free(all);

	if (vmas_full >= 200 || vmas_grown >= 200 || vmas_after >= 200)
		fail_msg("VMAs: %zu before, %zu with %d stacks, %zu grown, %zu after", vmas_before,
			 vmas_full, MANY, vmas_grown, vmas_after);
	assert_true(vmas_full < vmas_before + 50);
	print_message("%d stacks in %zu VMAs (%zu before)\n", MANY, vmas_full, vmas_before);
}

int main(void)
{
	/* The mprotect children first: they need a process where no backend
	 * was chosen yet. */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mprotect_map_limit),
		cmocka_unit_test(test_mprotect_commit_refused),
		cmocka_unit_test(test_guard_many_stacks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
