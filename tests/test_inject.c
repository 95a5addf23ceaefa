/* Fault injection in the port layer (src/inject.h): what the library does when the kernel
 * refuses. A commit refused in the fault handler is reported by name and kills at once, never
 * retried; dynstack_ensure reports it and leaves the stack usable; a thread whose sync stack
 * cannot be set up gets -ENOMEM from every entry point, with nothing half set up; an arena that
 * cannot be reserved fails the create and nothing else; a refused decommit leaves the range
 * committed, as its stack's edge says, and a slot with stale pages is never handed out again.
 * Each injection is cleared before the test ends. Runs with the stack cache off
 * (tests/meson.build) except where a child turns it on. Coroutines and threads never assert:
 * they record, the test body checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "inject.h"
#include "internal.h"

#define KIB ((size_t)1024)
#define MIB ((size_t)1 << 20)

static char child_err[8192];

static dynstack_t *create(size_t size, const char *name, const char *policy)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	dynstack_attr_init(&attr);
	attr.size = size;
	attr.name = name;
	attr.policy = policy;
	return dynstack_create(&s, &attr) ? NULL : s;
}

static int create_rc(size_t size)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	dynstack_attr_init(&attr);
	attr.size = size;
	int rc = dynstack_create(&s, &attr);
	if (!rc)
		dynstack_destroy(s);
	return rc;
}

static char *top_of(dynstack_t *s)
{
	return dynstack_top(s);
}

static void teardown_injection(void)
{
	ds_inject_clear_all();
}

/* ---- commit refused in the fault handler: report by name, die by SIGSEGV, no retry */

#define FAULTS_BEFORE 3 /* growth faults that succeed before the refused one */

static void deep_fn(void *arg)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	touch_down(dynstack_top(self), (size_t)(uintptr_t)arg);
}

static int commit_fault_child(void *arg)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_attr_init(&attr);
	attr.size = 256 * KIB;
	attr.name = "inject-victim";
	attr.policy = "step=1"; /* one page per fault */
	CHECK(dynstack_coro_create(&c, deep_fn, (void *)(uintptr_t)(192 * KIB), &attr) == 0);
	dynstack_t *s = dynstack_coro_stack(c);
	fprintf(stderr, "id=%" PRIu64 " committed=%zu\n", dynstack_id(s), dynstack_committed(s));
	/* Every commit from the fourth fault on fails: a handler that retried would spin
	 * until the child's alarm. */
	ds_inject_arm(DS_INJ_COMMIT, FAULTS_BEFORE, DS_INJECT_ALWAYS, -ENOMEM);
	dynstack_coro_resume(c);
	return 100; /* survived */
}

static size_t count_of(const char *text, const char *needle)
{
	size_t n = 0;

	for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_commit_fails_in_fault(void **state)
{
	SKIP_IF_WHOLE();
	double t0 = now_s();
	expect_child_sigsegv(commit_fault_child, NULL);
	double took = now_s() - t0;
	if (took > 5.0)
		fail_msg("the child took %.1f s to die: a retry loop?\n%s", took, child_err);

	uint64_t id = 0;
	size_t committed = 0;
	const char *p = strstr(child_err, "id=");
	assert_non_null(p);
	assert_int_equal(sscanf(p, "id=%" SCNu64 " committed=%zu", &id, &committed), 2);
	/* The fourth fault is the one refused: three pages were committed before it. */
	char want[256];
	snprintf(want, sizeof(want),
		 "libdynstack: stack overflow: cannot commit on stack %" PRIu64
		 " \"inject-victim\" (size %zu, committed %zu,",
		 id, 256 * KIB, committed + FAULTS_BEFORE * page_size());
	if (!contains(child_err, want))
		fail_msg("report lacks '%s'; stderr:\n%s", want, child_err);
	if (!contains(child_err, dynstack_strerror(-ENOMEM)))
		fail_msg("report lacks the reason; stderr:\n%s", child_err);
	if (count_of(child_err, "cannot commit") != 1)
		fail_msg("reported more than once; stderr:\n%s", child_err);
}

/* The same from a thread's own code touching a named plain stack: the report names it. */
static int commit_direct_child(void *arg)
{
	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = create(64 * KIB, "direct-victim", NULL);
	CHECK(s != NULL);
	ds_inject_arm(DS_INJ_COMMIT, 0, DS_INJECT_ALWAYS, -ENOMEM);
	touch_pages_down(top_of(s) - 16 * KIB, top_of(s));
	return 100;
}

static void test_commit_fails_direct_access(void **state)
{
	SKIP_IF_WHOLE();
	expect_child_sigsegv(commit_direct_child, NULL);
	if (!contains(child_err, "stack overflow: cannot commit on stack ") ||
	    !contains(child_err, "\"direct-victim\"") ||
	    !contains(child_err, dynstack_strerror(-ENOMEM)))
		fail_msg("no report naming the stack; stderr:\n%s", child_err);
}

/* ---- dynstack_ensure: the refusal is returned, the stack stays usable */

struct ensure_job {
	int rc_fail, rc_ok;
	size_t before, after_fail, after_ok;
	uint64_t ensured_before, ensured_after_fail, hits;
	unsigned levels;
};

static void ensure_fn(void *arg)
{
	struct ensure_job *j = arg;
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	j->ensured_before = stats_now().nr_dynamic_stacks_ensured;
	j->before = dynstack_committed(self);
	uint64_t hits = ds_inject_hits(DS_INJ_COMMIT);
	ds_inject_arm(DS_INJ_COMMIT, 0, 1, -ENOMEM);
	j->rc_fail = dynstack_ensure(48 * KIB);
	ds_inject_clear(DS_INJ_COMMIT);
	j->hits = ds_inject_hits(DS_INJ_COMMIT) - hits;
	j->after_fail = dynstack_committed(self);
	j->ensured_after_fail = stats_now().nr_dynamic_stacks_ensured;
	/* Still a working stack: it grows by faults, and ensure works again. */
	j->levels = touch_down(dynstack_top(self), 40 * KIB);
	j->rc_ok = dynstack_ensure(48 * KIB);
	j->after_ok = dynstack_committed(self);
}

static void test_ensure_commit_fails(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE(); /* ensure would have nothing to commit */
	struct ensure_job j;
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	memset(&j, 0, sizeof(j));
	dynstack_attr_init(&attr);
	attr.size = 64 * KIB;
	attr.initial = 16 * KIB; /* no fault between arming and ensure */
	attr.name = "ensure-victim";
	assert_int_equal(dynstack_coro_create(&c, ensure_fn, &j, &attr), 0);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	teardown_injection();

	assert_int_equal(j.rc_fail, -ENOMEM);
	assert_int_equal(j.hits, 1);
	assert_int_equal(j.after_fail, j.before);
	assert_int_equal(j.ensured_after_fail, j.ensured_before);
	assert_true(j.levels > 0);
	assert_int_equal(j.rc_ok, 0);
	assert_true(j.after_ok >= 48 * KIB);
}

/* ---- populate refused: the growth stands, only the populate is not counted */

static void test_populate_fails(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	dynstack_t *s = create(64 * KIB, "populate-victim", "populate");
	assert_non_null(s);
	dynstack_stats_t before = stats_now();
	uint64_t hits = ds_inject_hits(DS_INJ_POPULATE);
	ds_inject_arm(DS_INJ_POPULATE, 0, DS_INJECT_ALWAYS, -ENOMEM);
	touch_pages_down(top_of(s) - 32 * KIB, top_of(s));
	ds_inject_clear(DS_INJ_POPULATE);
	dynstack_stats_t after = stats_now();

	assert_true(ds_inject_hits(DS_INJ_POPULATE) > hits);
	assert_int_equal(dynstack_committed(s), 32 * KIB);
	assert_true(after.nr_dynamic_stacks_faults > before.nr_dynamic_stacks_faults);
	assert_int_equal(after.nr_dynamic_stacks_populated, before.nr_dynamic_stacks_populated);
	assert_int_equal(after.nr_dynamic_stacks_commit_failed,
			 before.nr_dynamic_stacks_commit_failed);
	assert_int_equal(dynstack_destroy(s), 0);
}

/* ---- commit refused at create: -ENOMEM, the slot goes back to its class */

static void test_commit_fails_at_create(void **state)
{
	TAKE_SIGSEGV();
	dynstack_t *s = create(64 * KIB, "first", NULL);
	assert_non_null(s);
	char *top = top_of(s);
	assert_int_equal(dynstack_destroy(s), 0);

	dynstack_stats_t before = stats_now();
	uint64_t hits = ds_inject_hits(DS_INJ_COMMIT);
	ds_inject_arm(DS_INJ_COMMIT, 0, 1, -ENOMEM);
	assert_int_equal(create_rc(64 * KIB), -ENOMEM);
	teardown_injection();
	assert_int_equal(ds_inject_hits(DS_INJ_COMMIT), hits + 1);
	dynstack_stats_t after = stats_now();
	assert_int_equal(after.nr_dynamic_stacks, before.nr_dynamic_stacks);
	assert_int_equal(after.nr_dynamic_stacks_pages, before.nr_dynamic_stacks_pages);
	assert_int_equal(after.nr_dynamic_stacks_created, before.nr_dynamic_stacks_created);

	/* The free list is last in, first out: the failed create's slot is the next one. */
	s = create(64 * KIB, "again", NULL);
	assert_non_null(s);
	assert_ptr_equal(top_of(s), top);
	assert_int_equal(dynstack_committed(s), created_committed(64 * KIB, 0));
	assert_int_equal(dynstack_destroy(s), 0);
}

/* ---- the sync stack cannot be set up at thread init */

static volatile int coro_ran;

static void mark_fn(void *arg)
{
	coro_ran = 1;
}

static void noop_fn(void *arg)
{
}

struct thread_job {
	dynstack_coro_t *c; /* made by the main thread, resumed here */
	int rc_create, rc_resume, rc_init_map, rc_init_alt, rc_init_ok, rc_resume_ok;
	size_t vmas_before, vmas_after_fail, vmas_after_fini;
	int alt_disabled_after_fail, alt_kept_after_bad_fini, alt_disabled_after_fini;
	uint64_t sync_before, sync_after_fail, sync_after_ok, sync_after_bad_fini, sync_after_fini;
	uint64_t map_hits, alt_hits;
};

static bool alt_disabled(void)
{
	stack_t ss;

	return sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_DISABLE);
}

static void *init_thread(void *arg)
{
	struct thread_job *j = arg;
	dynstack_coro_t *c2 = NULL;
	stack_t ss;

	/* The thread's malloc arena (two VMAs), made now so that it is not counted below;
	 * volatile, or the compiler drops the pair. */
	void *volatile heap = malloc(64);
	free(heap);
	j->vmas_before = count_vmas();
	j->sync_before = stats_now().nr_dynamic_stacks_sync_stacks;

	/* The guarded mapping of the sync stack is refused. */
	uint64_t h = ds_inject_hits(DS_INJ_SYNC_MAP);
	ds_inject_arm(DS_INJ_SYNC_MAP, 0, DS_INJECT_ALWAYS, -ENOMEM);
	j->rc_create = dynstack_coro_create(&c2, noop_fn, NULL, NULL);
	j->rc_resume = dynstack_coro_resume(j->c);
	j->rc_init_map = dynstack_thread_init();
	ds_inject_clear(DS_INJ_SYNC_MAP);
	j->map_hits = ds_inject_hits(DS_INJ_SYNC_MAP) - h;

	/* Mapped, but sigaltstack() refuses it: the mapping must go again. */
	h = ds_inject_hits(DS_INJ_SIGALTSTACK);
	ds_inject_arm(DS_INJ_SIGALTSTACK, 0, 1, -ENOMEM);
	j->rc_init_alt = dynstack_thread_init();
	ds_inject_clear(DS_INJ_SIGALTSTACK);
	j->alt_hits = ds_inject_hits(DS_INJ_SIGALTSTACK) - h;

	j->vmas_after_fail = count_vmas();
	j->alt_disabled_after_fail = alt_disabled();
	j->sync_after_fail = stats_now().nr_dynamic_stacks_sync_stacks;

	/* Nothing armed: the same thread sets up, and runs a coroutine. */
	j->rc_init_ok = dynstack_thread_init();
	j->sync_after_ok = stats_now().nr_dynamic_stacks_sync_stacks;
	j->rc_resume_ok = dynstack_coro_resume(j->c);
	sigaltstack(NULL, &ss);
	void *ours = ss.ss_sp;

	/* fini cannot take ours down: it must stay installed and mapped. */
	ds_inject_arm(DS_INJ_SIGALTSTACK, 0, 1, -ENOMEM);
	dynstack_thread_fini();
	ds_inject_clear(DS_INJ_SIGALTSTACK);
	j->alt_kept_after_bad_fini = sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE) &&
				     ss.ss_sp == ours &&
				     count_accessible(ours, (char *)ours + 1) == 1;
	j->sync_after_bad_fini = stats_now().nr_dynamic_stacks_sync_stacks;

	dynstack_thread_fini();
	j->alt_disabled_after_fini = alt_disabled();
	j->sync_after_fini = stats_now().nr_dynamic_stacks_sync_stacks;
	j->vmas_after_fini = count_vmas();
	return NULL;
}

static void test_sync_stack_fails_at_thread_init(void **state)
{
	TAKE_SIGSEGV();
	struct thread_job j;
	pthread_t th;

	memset(&j, 0, sizeof(j));
	coro_ran = 0;
	assert_int_equal(dynstack_coro_create(&j.c, mark_fn, NULL, NULL), 0);
	assert_int_equal(pthread_create(&th, NULL, init_thread, &j), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	teardown_injection();

	assert_int_equal(j.rc_create, -ENOMEM);
	assert_int_equal(j.rc_resume, -ENOMEM);
	assert_int_equal(j.rc_init_map, -ENOMEM);
	assert_int_equal(j.map_hits, 3);
	assert_int_equal(j.rc_init_alt, -ENOMEM);
	assert_int_equal(j.alt_hits, 1);
	/* Nothing half set up: no mapping, no alternate stack, no count. */
	if (!under_valgrind() && !under_tsan()) /* the tool maps memory of its own */
		assert_int_equal(j.vmas_after_fail, j.vmas_before);
	assert_true(j.alt_disabled_after_fail);
	assert_int_equal(j.sync_after_fail, j.sync_before);
	/* And nothing stuck: the same thread succeeds once the kernel agrees. */
	assert_int_equal(j.rc_init_ok, 0);
	assert_int_equal(j.sync_after_ok, j.sync_before + 1);
	assert_int_equal(j.rc_resume_ok, 0);
	assert_true(coro_ran);
	assert_true(j.alt_kept_after_bad_fini);
	assert_int_equal(j.sync_after_bad_fini, j.sync_before + 1);
	assert_true(j.alt_disabled_after_fini);
	assert_int_equal(j.sync_after_fini, j.sync_before);
	/* ASan too, from the thread's first switch: its fiber call maps a page for its dynamic-TLS
	 * records (DTLS_NextBlock), freed at thread exit; a new VMA unless it lands next to
	 * another anonymous mapping. */
	if (!under_valgrind() && !under_tsan() && !under_asan())
		assert_int_equal(j.vmas_after_fini, j.vmas_before);
	assert_int_equal(dynstack_coro_status(j.c), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_destroy(j.c), 0);
}

/* ---- a new arena cannot be reserved */

/* Sizes whose next create needs a new arena. 512 MiB stacks have a 1 GiB stride, one slot
 * per arena: once one exists, its arena is full. Under Valgrind, which commits stacks whole
 * (minutes for 512 MiB), 7 MiB stacks instead: a class no stack of the process used yet. */
#define BIG (512 * MIB)
#define FRESH (7 * MIB)

/* Valgrind maps memory of its own into the process: no VMA count is stable under it. */
static bool vmas_still(size_t before)
{
	return ds_os_on_valgrind() || count_vmas() == before;
}

static volatile size_t loop_depth;
static volatile unsigned loop_levels;

static void loop_fn(void *arg)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	while (loop_depth) {
		loop_levels = touch_down(dynstack_top(self), loop_depth);
		dynstack_coro_yield();
	}
}

static int arena_child(void *arg)
{
	const bool full = !ds_os_on_valgrind();
	const size_t big = full ? BIG : FRESH;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_stats_t st0 = stats_now();

	/* Stacks that exist before: a coroutine, a plain stack, a big one filling its arena. */
	dynstack_attr_t attr;
	dynstack_coro_t *a;
	dynstack_attr_init(&attr);
	attr.size = 64 * KIB;
	attr.name = "existing-coro";
	CHECK(dynstack_coro_create(&a, loop_fn, NULL, &attr) == 0);
	loop_depth = 16 * KIB;
	CHECK(dynstack_coro_resume(a) == 0 && loop_levels > 0);
	dynstack_t *s = create(64 * KIB, "existing", NULL);
	CHECK(s != NULL);
	touch_pages_down(top_of(s) - 16 * KIB, top_of(s));
	dynstack_t *b1 = NULL;
	if (full) {
		CHECK((b1 = create(BIG, "big-1", NULL)) != NULL);
		touch_pages_down(top_of(b1) - 64 * KIB, top_of(b1));
	}

	dynstack_stats_t st1 = stats_now();
	CHECK(st1.nr_dynamic_stacks == st0.nr_dynamic_stacks + 2 + full);
	size_t vmas = count_vmas();

	/* A create that has room in an arena never reaches the reservation. */
	uint64_t h = ds_inject_hits(DS_INJ_RESERVE);
	ds_inject_arm(DS_INJ_RESERVE, 0, DS_INJECT_ALWAYS, -ENOMEM);
	CHECK(create_rc(64 * KIB) == 0);
	CHECK(ds_inject_hits(DS_INJ_RESERVE) == h);
	/* One that needs a new arena fails, and leaves no mapping behind. */
	CHECK(create_rc(big) == -ENOMEM);
	CHECK(create_rc(big) == -ENOMEM);
	CHECK(ds_inject_hits(DS_INJ_RESERVE) == h + 2);
	ds_inject_clear(DS_INJ_RESERVE);
	CHECK(vmas_still(vmas));
	/* The same when the arena's metadata cannot be mapped. */
	h = ds_inject_hits(DS_INJ_MAP);
	ds_inject_arm(DS_INJ_MAP, 0, 1, -ENOMEM);
	CHECK(create_rc(big) == -ENOMEM);
	CHECK(ds_inject_hits(DS_INJ_MAP) == h + 1);
	CHECK(vmas_still(vmas));

	dynstack_stats_t st2 = stats_now();
	CHECK(st2.nr_dynamic_stacks == st1.nr_dynamic_stacks);
	CHECK(st2.nr_dynamic_stacks_arenas == st1.nr_dynamic_stacks_arenas);
	CHECK(st2.nr_dynamic_stacks_pages == st1.nr_dynamic_stacks_pages);
	CHECK(st2.nr_dynamic_stacks_created == st1.nr_dynamic_stacks_created + 1);

	/* The stacks that existed are untouched: they grow and run. */
	loop_depth = 48 * KIB;
	CHECK(dynstack_coro_resume(a) == 0 && loop_levels > 0);
	CHECK(dynstack_committed(dynstack_coro_stack(a)) >= 48 * KIB);
	touch_pages_down(top_of(s) - 48 * KIB, top_of(s));
	CHECK(dynstack_committed(s) >= 48 * KIB);
	if (b1) {
		touch_pages_down(top_of(b1) - MIB, top_of(b1));
		CHECK(dynstack_committed(b1) >= MIB);
	}

	/* Once the kernel agrees, a new arena is reserved again. */
	dynstack_t *b2 = create(big, "big-2", NULL);
	CHECK(b2 != NULL);
	touch_pages_down(top_of(b2) - 64 * KIB, top_of(b2));
	dynstack_stats_t st3 = stats_now();
	CHECK(st3.nr_dynamic_stacks_arenas == st1.nr_dynamic_stacks_arenas + 1);
	CHECK(st3.nr_dynamic_stacks == st0.nr_dynamic_stacks + 3 + full);

	loop_depth = 0;
	CHECK(dynstack_coro_resume(a) == 0);
	CHECK(dynstack_coro_destroy(a) == 0);
	CHECK(dynstack_destroy(s) == 0);
	CHECK(!b1 || dynstack_destroy(b1) == 0);
	CHECK(dynstack_destroy(b2) == 0);
	dynstack_stats_t st4 = stats_now();
	CHECK(st4.nr_dynamic_stacks == st0.nr_dynamic_stacks);
	CHECK(st4.nr_dynamic_stacks_pages == st0.nr_dynamic_stacks_pages);
	return 0;
}

static void test_arena_reserve_fails(void **state)
{
	expect_child_ok(arena_child, NULL);
}

/* A batch of slots cannot be prepared: the arena stays, the next create prepares it. */
static int prepare_child(void *arg)
{
	const size_t size = 3 * MIB; /* a class no other test here uses */

	CHECK(dynstack_init(NULL) == 0);
	dynstack_stats_t st0 = stats_now();
	ds_inject_arm(DS_INJ_PREPARE, 0, 1, -ENOMEM);
	CHECK(create_rc(size) == -ENOMEM);
	CHECK(ds_inject_hits(DS_INJ_PREPARE) == 1u);
	dynstack_stats_t st1 = stats_now();
	CHECK(st1.nr_dynamic_stacks_arenas == st0.nr_dynamic_stacks_arenas + 1);
	CHECK(st1.nr_dynamic_stacks == st0.nr_dynamic_stacks);
	dynstack_t *s = create(size, "prepared-late", NULL);
	CHECK(s != NULL);
	touch_pages_down(top_of(s) - 64 * KIB, top_of(s));
	CHECK(stats_now().nr_dynamic_stacks_arenas == st1.nr_dynamic_stacks_arenas);
	CHECK(dynstack_destroy(s) == 0);
	return 0;
}

static void test_prepare_fails(void **state)
{
	expect_child_ok(prepare_child, NULL);
}

/* The address map, made by the first create of the process, cannot be mapped: that create
 * fails, the next one must not (it used to: pthread_once kept the first error for good). */
static int first_map_child(void)
{
	CHECK(dynstack_init(NULL) == 0);
	ds_inject_arm(DS_INJ_MAP, 0, 1, -ENOMEM);
	CHECK(create_rc(64 * KIB) == -ENOMEM);
	CHECK(ds_inject_hits(DS_INJ_MAP) == 1u);
	CHECK(create_rc(64 * KIB) == 0);
	return 0;
}

static void test_first_map_fails(void **state)
{
	int status;

	assert_int_equal(run_self("--first-map", NULL, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; its stderr:\n%s", describe_status(status), child_err);
}

/* ---- decommit refused */

/* A trim: dynstack_trim returns the error and the pages stay committed, accessible, as the
 * stack's edge says; touching them takes no fault (with the undo missing, the guard backend
 * kept its markers there and the touch was retried as spurious until the handler gave up). */
static int trim_child(void *arg)
{
	size_t ps = page_size();

	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = create(64 * KIB, "trim-victim", NULL);
	CHECK(s != NULL);
	char *top = top_of(s);
	touch_pages_down(top - 8 * ps, top);
	CHECK(dynstack_committed(s) == 8 * ps);

	dynstack_stats_t before = stats_now();
	ds_inject_arm(DS_INJ_DECOMMIT, 0, DS_INJECT_ALWAYS, -ENOMEM);
	int rc = 0;
	for (int i = 0; i < 16 && !rc; i++) /* past the hysteresis */
		rc = dynstack_trim(s, top - ps);
	ds_inject_clear(DS_INJ_DECOMMIT);
	CHECK(rc == -ENOMEM);
	CHECK(dynstack_committed(s) == 8 * ps);
	CHECK(count_accessible(top - 8 * ps, top) == 8);
	touch_pages_down(top - 8 * ps, top);
	dynstack_stats_t after = stats_now();
	CHECK(after.nr_dynamic_stacks_trimmed == before.nr_dynamic_stacks_trimmed);
	CHECK(after.nr_dynamic_stacks_pages == before.nr_dynamic_stacks_pages);
	CHECK(after.nr_dynamic_stacks_spurious == before.nr_dynamic_stacks_spurious);

	/* Then a trim that works. */
	for (int i = 0; i < 16 && dynstack_committed(s) == 8 * ps; i++)
		CHECK(dynstack_trim(s, top - ps) == 0);
	CHECK(dynstack_committed(s) < 8 * ps);
	size_t left = dynstack_committed(s) / ps;
	CHECK(count_accessible(top - 8 * ps, top) == left);
	CHECK(dynstack_destroy(s) == 0);
	return 0;
}

static void test_decommit_fails_in_trim(void **state)
{
	SKIP_IF_WHOLE();
	expect_child_ok(trim_child, NULL);
}

/* A destroy (the cache is off): the slot is never handed out again, so its pages, left
 * committed, cannot reach another stack. */
static int destroy_child(void *arg)
{
	size_t ps = page_size();

	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = create(64 * KIB, "leaked", NULL);
	CHECK(s != NULL);
	char *top1 = top_of(s);
	touch_pages_down(top1 - 4 * ps, top1);
	dynstack_stats_t before = stats_now();
	ds_inject_arm(DS_INJ_DECOMMIT, 0, 1, -ENOMEM);
	CHECK(dynstack_destroy(s) == 0);
	CHECK(ds_inject_hits(DS_INJ_DECOMMIT) == 1u);
	dynstack_stats_t after = stats_now();
	CHECK(after.nr_dynamic_stacks == before.nr_dynamic_stacks - 1);
	CHECK(after.nr_dynamic_stacks_pages == before.nr_dynamic_stacks_pages - 4);
	CHECK(count_accessible(top1 - 4 * ps, top1) == 4); /* left committed, as documented */

	dynstack_t *s2 = create(64 * KIB, "next", NULL);
	CHECK(s2 != NULL);
	char *top2 = top_of(s2);
	CHECK(top2 != top1);
	CHECK(dynstack_committed(s2) == ps);
	CHECK(count_accessible(top2 - 64 * KIB, top2) == 1);
	/* Without an injection the slot is reused as usual. */
	CHECK(dynstack_destroy(s2) == 0);
	dynstack_t *s3 = create(64 * KIB, "reused", NULL);
	CHECK(s3 != NULL && top_of(s3) == top2);
	CHECK(dynstack_destroy(s3) == 0);
	return 0;
}

static void test_decommit_fails_at_destroy(void **state)
{
	SKIP_IF_WHOLE();
	expect_child_ok(destroy_child, NULL);
}

/* A warm stack from the cache whose pages in the new, smaller stack's floor cannot be
 * decommitted: the create fails and the slot goes back to its arena decommitted; the next
 * create gets it with its initial page only. Run with the cache on, in a fresh process. */
static int warm_floor_child(void)
{
	size_t ps = page_size();

	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = create(60 * KIB, "deep", NULL); /* class 64 KiB */
	CHECK(s != NULL);
	char *top = top_of(s);
	touch_pages_down(top - 56 * KIB, top);
	CHECK(dynstack_destroy(s) == 0);
	CHECK(stats_now().nr_dynamic_stacks_cached == 1);

	ds_inject_arm(DS_INJ_DECOMMIT, 0, 1, -ENOMEM);
	CHECK(create_rc(40 * KIB) == -ENOMEM); /* same class, smaller: its floor had pages */
	CHECK(ds_inject_hits(DS_INJ_DECOMMIT) == 1u);
	CHECK(stats_now().nr_dynamic_stacks_cached == 0);
	dynstack_t *s2 = create(40 * KIB, "shallow", NULL);
	CHECK(s2 != NULL);
	CHECK(top_of(s2) == top);
	CHECK(dynstack_committed(s2) == ps);
	CHECK(count_accessible(top - 64 * KIB, top) == 1);
	CHECK(dynstack_destroy(s2) == 0);
	return 0;
}

static void test_decommit_fails_on_warm_create(void **state)
{
	SKIP_IF_WHOLE();
	const char *const env[] = { "DYNSTACK_CACHE", NULL };
	int status;

	assert_int_equal(run_self("--warm-floor", env, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; its stderr:\n%s", describe_status(status), child_err);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "--first-map") == 0)
			return first_map_child();
		if (strcmp(argv[1], "--warm-floor") == 0)
			return warm_floor_child();
		return 64;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_commit_fails_in_fault),
		cmocka_unit_test(test_commit_fails_direct_access),
		cmocka_unit_test(test_ensure_commit_fails),
		cmocka_unit_test(test_populate_fails),
		cmocka_unit_test(test_commit_fails_at_create),
		cmocka_unit_test(test_sync_stack_fails_at_thread_init),
		cmocka_unit_test(test_arena_reserve_fails),
		cmocka_unit_test(test_prepare_fails),
		cmocka_unit_test(test_first_map_fails),
		cmocka_unit_test(test_decommit_fails_in_trim),
		cmocka_unit_test(test_decommit_fails_at_destroy),
		cmocka_unit_test(test_decommit_fails_on_warm_create),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
