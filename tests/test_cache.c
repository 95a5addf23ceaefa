/* Tests of the stack cache (src/cache.c, its use in src/stack.c): a destroyed stack keeps its
 * committed pages, and a create of its size class takes it back with no system call and no
 * fault; cached stacks are not live; the per-thread cache, the depot behind it, the page
 * budget, the floor of a smaller stack in a deeper one's slot, and thread exit; no leak under
 * churn. Runs with the cache on (tests/meson.build). Every test that shares this process uses
 * size classes of its own, since cached stacks stay cached from test to test; tests that
 * need other settings run in a fresh process (run_self) with DYNSTACK_CACHE* set.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "internal.h"

#define KIB ((size_t)1024)

static char child_err[8192];

/* The largest usable size of size class `shift` (a slot of 1 << shift bytes, floor page
 * included: src/arena.c ds_arena_class). */
static size_t class_size(unsigned shift)
{
	return ((size_t)1 << shift) - page_size();
}

static dynstack_t *create_sized(size_t size, size_t initial, const char *policy)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	dynstack_attr_init(&attr);
	attr.size = size;
	attr.initial = initial;
	attr.policy = policy;
	if (dynstack_create(&s, &attr))
		return NULL;
	return s;
}

static dynstack_t *create(size_t size)
{
	return create_sized(size, 0, NULL);
}

/* Commit the top `pages` pages of s by touching them, as a stack grows. */
static void touch_top(dynstack_t *s, size_t pages)
{
	char *top = dynstack_top(s);
	touch_pages_down(top - pages * page_size(), top);
}

static const char *top_of(const dynstack_t *s)
{
	return dynstack_top(s);
}

/* The whole slot of a stack of usable size `size` whose top is top: floor included. */
static const char *slot_base(const char *top, size_t size)
{
	return top - ((size_t)1 << ds_arena_class(size));
}

struct delta {
	int64_t stacks, pages, faults, cached, cached_pages, hits, created;
};

static struct delta since(const dynstack_stats_t *a)
{
	dynstack_stats_t b = stats_now();
	return (struct delta){
		.stacks = (int64_t)(b.nr_dynamic_stacks - a->nr_dynamic_stacks),
		.pages = (int64_t)(b.nr_dynamic_stacks_pages - a->nr_dynamic_stacks_pages),
		.faults = (int64_t)(b.nr_dynamic_stacks_faults - a->nr_dynamic_stacks_faults),
		.cached = (int64_t)(b.nr_dynamic_stacks_cached - a->nr_dynamic_stacks_cached),
		.cached_pages = (int64_t)(b.nr_dynamic_stacks_cached_pages -
					  a->nr_dynamic_stacks_cached_pages),
		.hits = (int64_t)(b.nr_dynamic_stacks_cache_hits - a->nr_dynamic_stacks_cache_hits),
		.created = (int64_t)(b.nr_dynamic_stacks_created - a->nr_dynamic_stacks_created),
	};
}

static void run_mode(const char *mode, const char *const *env)
{
	int status;

	assert_int_equal(run_self(mode, env, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("%s: child %s; its stderr:\n%s", mode, describe_status(status), child_err);
}

/* ---- a warm create */

/* Destroy keeps the pages (still resident, counted as cached, not as live); the next create of
 * the class gets the same slot with them committed, and touching them takes no fault. */
static void test_warm_create(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size(), size = class_size(16);
	dynstack_t *s = create(size);

	assert_non_null(s);
	touch_top(s, 8);
	const char *top = top_of(s);
	assert_int_equal(dynstack_committed(s), 8 * ps);
	uint64_t id = dynstack_id(s);
	dynstack_stats_t st = stats_now();
	assert_int_equal(dynstack_destroy(s), 0);
	struct delta d = since(&st);
	assert_int_equal(d.stacks, -1);
	assert_int_equal(d.pages, -8);
	assert_int_equal(d.cached, 1);
	assert_int_equal(d.cached_pages, 8);
	assert_int_equal(atomic_load(&s->state), DS_SLOT_CACHED);
	assert_int_equal(count_resident(top - 8 * ps, top), 8);

	st = stats_now();
	dynstack_t *n = create(size);
	assert_non_null(n);
	d = since(&st);
	assert_int_equal(d.hits, 1);
	assert_int_equal(d.cached, -1);
	assert_int_equal(d.cached_pages, -8);
	assert_int_equal(d.pages, 8);
	assert_int_equal(d.stacks, 1);
	assert_ptr_equal(top_of(n), top);
	assert_int_equal(dynstack_committed(n), 8 * ps);
	assert_int_equal(dynstack_peak(n), 8 * ps);
	assert_true(dynstack_id(n) > id); /* a new stack all the same */
	touch_top(n, 8);
	assert_int_equal(since(&st).faults, 0);
	assert_int_equal(count_resident(top - 8 * ps, top), 8);
	/* Growth beyond the warm pages works as on a cold stack. */
	touch_top(n, 10);
	assert_int_equal(since(&st).faults, 2);
	assert_int_equal(dynstack_destroy(n), 0);
}

/* Memory system calls made to fail with EPERM from here on (seccomp); 0, or -errno when the
 * kernel refuses the filter. */
static int forbid_memory_syscalls(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mmap, 5, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_munmap, 4, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mprotect, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_madvise, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mremap, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
		return -errno;
	return 0;
}

#define NO_SECCOMP 77

/* A warm create and the use of its pages need no mmap, mprotect or madvise: with those
 * forbidden they still work, while a cold create fails. */
static int no_syscall_child(void *arg)
{
	size_t size = class_size(15);

	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = create(size);
	CHECK(s != NULL);
	touch_top(s, 6);
	CHECK(dynstack_destroy(s) == 0);
	if (forbid_memory_syscalls()) {
		fprintf(stderr, "no seccomp here\n");
		return NO_SECCOMP;
	}
	dynstack_stats_t st = stats_now();
	dynstack_t *n = create(size);
	CHECK(n != NULL);
	touch_top(n, 6); /* a fault here could not commit, and would kill */
	struct delta d = since(&st);
	CHECK(d.hits == 1);
	CHECK(d.faults == 0);
	CHECK(dynstack_destroy(n) == 0);
	/* The control: where the cache has nothing, a create needs the kernel. */
	dynstack_t *cold;
	dynstack_attr_t attr;
	dynstack_attr_init(&attr);
	attr.size = class_size(24);
	CHECK(dynstack_create(&cold, &attr) == -EPERM);
	return 0;
}

static void test_warm_create_makes_no_syscall(void **state)
{
	int status;

	SKIP_UNDER(valgrind, "the seccomp filter would deny mmap to Valgrind's own allocator, "
			     "which runs in the same process");

	assert_int_equal(
		run_in_child(no_syscall_child, NULL, &status, child_err, sizeof(child_err)), 0);
	if (WIFEXITED(status) && WEXITSTATUS(status) == NO_SECCOMP) {
		print_message("seccomp filters are not allowed here: skipped\n");
		skip();
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; its stderr:\n%s", describe_status(status), child_err);
}

/* A cached stack is not live: destroy, trim and an access below its committed pages are
 * refused; the access is a foreign fault (SIGSEGV by default), not a growth or an overflow. */
static int not_live_child(void *arg)
{
	size_t ps = page_size();

	CHECK(signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	CHECK(dynstack_init(NULL) == 0); /* ours again, over SIG_DFL */
	dynstack_t *live = create(class_size(17));
	dynstack_t *s = create(class_size(18));
	CHECK(live && s);
	char *top = dynstack_top(s);
	CHECK(dynstack_destroy(s) == 0);
	CHECK(atomic_load(&s->state) == DS_SLOT_CACHED);
	CHECK(dynstack_destroy(s) == -EINVAL);
	CHECK(dynstack_trim(s, top - 64) == -EINVAL);
	/* The control: the same access on a live stack grows it (none where
	 * stacks are committed whole). */
	if (!stacks_whole()) {
		*(volatile char *)((char *)dynstack_top(live) - 3 * ps) = 1;
		CHECK(dynstack_committed(live) == 3 * ps);
	}
	fprintf(stderr, "touching\n");
	/* Below its committed pages: below lo where it was committed whole. */
	size_t below = stacks_whole() ? dynstack_committed(s) + 1 : 3 * ps;
	valgrind_errors_off();
	*(volatile char *)(top - below) = 1;
	return 100;
}

static void test_cached_is_not_live(void **state)
{
	expect_child_sigsegv(not_live_child, NULL);
	assert_true(contains(child_err, "touching"));
	assert_false(contains(child_err, "libdynstack:"));
}

/* The cached gauges follow every destroy and every warm create exactly. */
static void test_gauges(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size(), size = class_size(19);
	static const size_t pages[3] = { 1, 3, 5 };
	dynstack_t *s[3];
	const char *tops[3];

	for (int i = 0; i < 3; i++) {
		s[i] = create(size);
		assert_non_null(s[i]);
		touch_top(s[i], pages[i]);
		tops[i] = top_of(s[i]);
	}
	dynstack_stats_t st = stats_now();
	for (int i = 0; i < 3; i++) {
		assert_int_equal(dynstack_destroy(s[i]), 0);
		struct delta d = since(&st);
		assert_int_equal(d.cached, i + 1);
		assert_int_equal(d.cached_pages,
				 (int64_t)(pages[0] + (i > 0) * pages[1] + (i > 1) * pages[2]));
	}
	assert_int_equal(since(&st).pages, -9);
	/* Newest first. */
	for (int i = 2; i >= 0; i--) {
		dynstack_t *n = create(size);
		assert_non_null(n);
		assert_ptr_equal(top_of(n), tops[i]);
		assert_int_equal(dynstack_committed(n), pages[i] * ps);
		s[i] = n;
	}
	struct delta d = since(&st);
	assert_int_equal(d.cached, 0);
	assert_int_equal(d.cached_pages, 0);
	assert_int_equal(d.hits, 3);
	assert_int_equal(d.pages, 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(dynstack_destroy(s[i]), 0);
}

/* ---- reuse by a different stack of the class */

/* A deeper stack's pages in what is a smaller stack's floor are taken away: the floor is
 * neither accessible nor resident, and an access there is an overflow. */
static int floor_child(void *arg)
{
	dynstack_t *s = arg;
	CHECK(dynstack_init(NULL) == 0);
	*(volatile char *)((char *)dynstack_top(s) - dynstack_size(s) - 1) = 1;
	return 100;
}

static void test_smaller_stack_floor(void **state)
{
	TAKE_SIGSEGV();
	size_t ps = page_size(), big = class_size(17), small = 68 * KIB;
	dynstack_t *s = create(big);

	assert_int_equal(ds_arena_class(small), ds_arena_class(big));
	assert_non_null(s);
	touch_top(s, 100 * KIB / ps);
	const char *top = top_of(s);
	assert_int_equal(dynstack_destroy(s), 0);
	dynstack_stats_t st = stats_now();
	dynstack_t *n = create(small);
	assert_non_null(n);
	struct delta d = since(&st);
	assert_int_equal(d.hits, 1);
	assert_ptr_equal(top_of(n), top);
	assert_int_equal(dynstack_committed(n), small);
	assert_int_equal(d.pages, (int64_t)(small / ps));
	const char *base = slot_base(top, small), *lo = top - small;
	assert_int_equal(count_resident(base, lo), 0);
	assert_int_equal(count_accessible(base, lo), 0);
	assert_int_equal(count_accessible(lo, top), small / ps);

	expect_child_sigsegv(floor_child, n);
	char want[96];
	snprintf(want, sizeof(want), "libdynstack: stack overflow on stack %llu",
		 (unsigned long long)dynstack_id(n));
	if (!contains(child_err, want))
		fail_msg("expected '%s'; stderr:\n%s", want, child_err);
	assert_int_equal(dynstack_destroy(n), 0);
}

/* initial= on a warm stack: more than the cached commit is committed at creation, less keeps
 * the warm pages. */
static void test_initial_on_warm(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size(), size = class_size(20);
	dynstack_t *s = create(size);

	assert_non_null(s);
	touch_top(s, 2);
	const char *top = top_of(s);
	assert_int_equal(dynstack_destroy(s), 0);
	dynstack_stats_t st = stats_now();
	s = create_sized(size, 6 * ps, NULL);
	assert_non_null(s);
	assert_ptr_equal(top_of(s), top);
	assert_int_equal(dynstack_committed(s), 6 * ps);
	assert_int_equal(count_accessible(top - 6 * ps, top), 6);
	assert_int_equal(count_accessible(top - 7 * ps, top - 6 * ps), 0);
	touch_top(s, 6);
	struct delta d = since(&st);
	assert_int_equal(d.hits, 1);
	assert_int_equal(d.faults, 0);
	assert_int_equal(d.pages, 6);
	assert_int_equal(dynstack_destroy(s), 0);

	s = create_sized(size, ps, NULL);
	assert_non_null(s);
	assert_ptr_equal(top_of(s), top);
	assert_int_equal(dynstack_committed(s), 6 * ps);
	assert_int_equal(since(&st).hits, 2);
	assert_int_equal(dynstack_destroy(s), 0);
}

/* learn on a warm stack the cache trimmed to one page: the first fault still commits down to
 * what the slot's and the name's previous stack reached. (DYNSTACK_CACHE_PAGES=4) */
static int learn_main(void)
{
	size_t ps = page_size(), size = class_size(17);
	dynstack_attr_t attr;
	dynstack_t *a, *b;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_attr_init(&attr);
	attr.size = size;
	attr.policy = "learn";
	attr.name = "job";
	CHECK(dynstack_create(&a, &attr) == 0);
	touch_top(a, 16);
	const char *top = top_of(a);
	dynstack_stats_t st = stats_now();
	CHECK(dynstack_destroy(a) == 0);
	struct delta d = since(&st);
	CHECK(d.cached == 1);
	CHECK(d.cached_pages == 1);
	CHECK(count_resident(top - size, top - ps) == 0);
	CHECK(count_accessible(top - size, top - ps) == 0);
	CHECK(dynstack_create(&b, &attr) == 0);
	CHECK(since(&st).hits == 1);
	CHECK(top_of(b) == top);
	CHECK(dynstack_committed(b) == ps);
	CHECK(b->learned == 16 * ps);
	*(volatile char *)(top - 3 * ps) = 1;
	d = since(&st);
	CHECK(d.faults == 1);
	CHECK(dynstack_committed(b) == 16 * ps);
	CHECK(dynstack_destroy(b) == 0);
	return 0;
}

static void test_learn_on_warm(void **state)
{
	static const char *const env[] = { "DYNSTACK_CACHE_PAGES=4", "DYNSTACK_POLICY", NULL };
	SKIP_IF_WHOLE();
	run_mode("--learn", env);
}

/* A trim queued for a coroutine that is then destroyed, and whose warm stack is taken by a new
 * stack: the flush leaves the new stack's pages alone. */
struct trim_job {
	volatile int phase;
};

static void trim_body(void *arg)
{
	struct trim_job *j = arg;
	const void *top = dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	while (j->phase >= 0) {
		if (j->phase == 1)
			touch_down(top, 64 * KIB);
		dynstack_coro_yield();
	}
}

static void test_queued_trim_then_warm_reuse(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size(), size = class_size(18);
	struct trim_job j = { .phase = 1 };
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	dynstack_attr_init(&attr);
	attr.size = size;
	attr.policy = "trim=yield:1";
	assert_int_equal(dynstack_coro_create(&c, trim_body, &j, &attr), 0);
	dynstack_t *s = dynstack_coro_stack(c);
	const char *top = top_of(s);
	assert_int_equal(dynstack_coro_resume(c), 0); /* deep: hot */
	j.phase = 0;
	assert_int_equal(dynstack_coro_resume(c), 0); /* queued */
	assert_int_equal(atomic_load(&s->trim_state) & 3, DS_TRIM_PENDING);
	size_t committed = dynstack_committed(s);
	assert_true(committed >= 64 * KIB);
	assert_int_equal(dynstack_coro_destroy(c), 0);

	dynstack_stats_t st = stats_now();
	dynstack_t *n = create(size);
	assert_non_null(n);
	assert_int_equal(since(&st).hits, 1);
	assert_ptr_equal(top_of(n), top);
	assert_int_equal(dynstack_committed(n), committed);
	char *p;
	for (p = (char *)top - committed; p < top; p += ps)
		*p = (char)((size_t)p / ps);
	assert_int_equal(dynstack_flush(), 0);
	assert_int_equal(stats_now().nr_dynamic_stacks_trim_calls, st.nr_dynamic_stacks_trim_calls);
	assert_int_equal(dynstack_committed(n), committed);
	for (p = (char *)top - committed; p < top; p += ps)
		assert_int_equal(*p, (char)((size_t)p / ps));
	assert_int_equal(dynstack_destroy(n), 0);
}

/* ---- per-thread caches and the depot */

struct take {
	size_t size;
	int n;
	const char *tops[8];
	dynstack_t *got[8];
	int64_t hits;
	int rc;
};

/* On a new thread: create t->n stacks of t->size, note their tops and the hits they made. */
static void *take_on_thread(void *arg)
{
	struct take *t = arg;
	dynstack_stats_t st = stats_now();

	t->rc = 0;
	for (int i = 0; i < t->n; i++) {
		if (!(t->got[i] = create(t->size))) {
			t->rc = -1;
			break;
		}
		t->tops[i] = top_of(t->got[i]);
	}
	t->hits = since(&st).hits;
	return NULL;
}

static bool among(const char *p, const char *const *set, int n)
{
	for (int i = 0; i < n; i++)
		if (set[i] == p)
			return true;
	return false;
}

/* DYNSTACK_CACHE=4: a thread keeps 4 stacks for itself, and the older half of a full cache goes
 * to the depot, where another thread finds them. */
static int capacity_main(void)
{
	size_t size = class_size(16);
	dynstack_t *s[5];
	const char *tops[5];
	pthread_t th;

	CHECK(dynstack_init(NULL) == 0);
	for (int i = 0; i < 5; i++) {
		CHECK((s[i] = create(size)) != NULL);
		tops[i] = top_of(s[i]);
	}
	dynstack_stats_t st = stats_now();
	for (int i = 0; i < 4; i++)
		CHECK(dynstack_destroy(s[i]) == 0);
	CHECK(since(&st).cached == 4);

	/* All four are in this thread's cache: another thread finds none. */
	struct take b = { .size = size, .n = 1 };
	CHECK(pthread_create(&th, NULL, take_on_thread, &b) == 0);
	CHECK(pthread_join(th, NULL) == 0);
	CHECK(b.rc == 0 && b.hits == 0);
	CHECK(!among(b.tops[0], tops, 5));

	/* A fifth destroy: s0 and s1, the older half, move to the depot. */
	CHECK(dynstack_destroy(s[4]) == 0);
	CHECK(since(&st).cached == 5);
	struct take c = { .size = size, .n = 3 };
	CHECK(pthread_create(&th, NULL, take_on_thread, &c) == 0);
	CHECK(pthread_join(th, NULL) == 0);
	CHECK(c.rc == 0);
	CHECK(c.hits == 2);
	CHECK(c.tops[0] == tops[1] && c.tops[1] == tops[0]); /* the depot is last in, first out */
	CHECK(!among(c.tops[2], tops, 5));

	/* And this thread still has s4, s3, s2, newest first. */
	dynstack_stats_t mine = stats_now();
	for (int i = 4; i >= 2; i--) {
		dynstack_t *n = create(size);
		CHECK(n != NULL);
		CHECK(top_of(n) == tops[i]);
	}
	CHECK(since(&mine).hits == 3);
	CHECK(since(&st).cached == 0);
	return 0;
}

static void test_thread_cache_and_depot(void **state)
{
	static const char *const env[] = { "DYNSTACK_CACHE=4", NULL };
	run_mode("--capacity", env);
}

/* A thread's exit hands its cache to the depot: the stacks stay cached, warm, and this thread's
 * creates take them. */
struct make {
	size_t size;
	const char *tops[5];
	int rc;
};

static void *make_and_drop(void *arg)
{
	struct make *m = arg;
	dynstack_t *s[5];

	m->rc = 0;
	for (int i = 0; i < 5; i++) {
		if (!(s[i] = create(m->size))) {
			m->rc = -1;
			return NULL;
		}
		touch_top(s[i], 2);
		m->tops[i] = top_of(s[i]);
	}
	for (int i = 0; i < 5; i++)
		m->rc |= dynstack_destroy(s[i]);
	return NULL;
}

static void test_thread_exit_to_depot(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	struct make m = { .size = class_size(21) };
	pthread_t th;

	dynstack_stats_t st = stats_now();
	assert_int_equal(pthread_create(&th, NULL, make_and_drop, &m), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(m.rc, 0);
	struct delta d = since(&st);
	assert_int_equal(d.cached, 5);
	assert_int_equal(d.cached_pages, 10);
	for (int i = 0; i < 5; i++)
		assert_int_equal(count_resident(m.tops[i] - 2 * ps, m.tops[i]), 2);

	dynstack_t *n[5];
	st = stats_now();
	for (int i = 0; i < 5; i++) {
		n[i] = create(m.size);
		assert_non_null(n[i]);
		assert_true(among(top_of(n[i]), m.tops, 5));
		assert_int_equal(dynstack_committed(n[i]), 2 * ps);
		touch_top(n[i], 2);
	}
	d = since(&st);
	assert_int_equal(d.hits, 5);
	assert_int_equal(d.faults, 0);
	assert_int_equal(d.cached, -5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(dynstack_destroy(n[i]), 0);
}

/* ---- the page budget (DYNSTACK_CACHE_PAGES=12) */

static int budget_main(void)
{
	size_t ps = page_size(), a = class_size(16), b = class_size(17);
	static const size_t pages[4] = { 10, 6, 3, 2 };
	dynstack_t *s[4];
	const char *tops[4];

	CHECK(dynstack_init(NULL) == 0);
	for (int i = 0; i < 4; i++) {
		CHECK((s[i] = create(i < 3 ? a : b)) != NULL);
		touch_top(s[i], pages[i]);
		tops[i] = top_of(s[i]);
	}
	dynstack_stats_t st = stats_now();

	/* 10 pages fit. */
	CHECK(dynstack_destroy(s[0]) == 0);
	CHECK(since(&st).cached_pages == 10);
	CHECK(count_resident(tops[0] - 10 * ps, tops[0]) == 10);
	/* 10 + 6 do not: trimmed to one page first, then 11 fit; likewise 11 + 3 -> 12. */
	for (int i = 1; i <= 2; i++) {
		CHECK(dynstack_destroy(s[i]) == 0);
		struct delta d = since(&st);
		CHECK(d.cached == i + 1);
		CHECK(d.cached_pages == 10 + i);
		const char *lo = tops[i] - a;
		CHECK(count_resident(lo, tops[i] - ps) == 0);
		CHECK(count_accessible(lo, tops[i] - ps) == 0);
		CHECK(count_resident(tops[i] - ps, tops[i]) == 1);
		CHECK(count_accessible(tops[i] - ps, tops[i]) == 1);
	}
	/* 12 + 1 does not fit even trimmed: released to the arena, all its pages gone. */
	CHECK(dynstack_destroy(s[3]) == 0);
	struct delta d = since(&st);
	CHECK(d.cached == 3);
	CHECK(d.cached_pages == 12);
	CHECK(count_resident(slot_base(tops[3], b), tops[3]) == 0);
	CHECK(count_accessible(slot_base(tops[3], b), tops[3]) == 0);
	/* Its slot is free: a cold create of its class gets it, with one page. */
	dynstack_t *cold = create(b);
	CHECK(cold != NULL);
	CHECK(since(&st).hits == 0);
	CHECK(top_of(cold) == tops[3]);
	CHECK(dynstack_committed(cold) == ps);
	/* The three cached ones come back newest first, as cached. */
	static const size_t kept[3] = { 10, 1, 1 };
	for (int i = 2; i >= 0; i--) {
		dynstack_t *n = create(a);
		CHECK(n != NULL);
		CHECK(top_of(n) == tops[i]);
		CHECK(dynstack_committed(n) == kept[i] * ps);
	}
	d = since(&st);
	CHECK(d.hits == 3);
	CHECK(d.cached == 0 && d.cached_pages == 0);
	return 0;
}

static void test_page_budget(void **state)
{
	static const char *const env[] = { "DYNSTACK_CACHE_PAGES=12", NULL };
	SKIP_IF_WHOLE();
	run_mode("--budget", env);
}

/* DYNSTACK_CACHE=0: no cache at all. */
static int off_main(void)
{
	size_t ps = page_size(), size = class_size(16);

	CHECK(dynstack_init(NULL) == 0);
	dynstack_stats_t st = stats_now();
	dynstack_t *s = create(size);
	CHECK(s != NULL);
	touch_top(s, 4);
	const char *top = top_of(s);
	CHECK(dynstack_destroy(s) == 0);
	CHECK(count_resident(slot_base(top, size), top) == 0);
	CHECK(count_accessible(slot_base(top, size), top) == 0);
	dynstack_t *n = create(size);
	CHECK(n != NULL);
	CHECK(top_of(n) == top);
	CHECK(dynstack_committed(n) == ps);
	struct delta d = since(&st);
	CHECK(d.hits == 0 && d.cached == 0 && d.cached_pages == 0);
	CHECK(dynstack_destroy(n) == 0);
	return 0;
}

static void test_cache_off(void **state)
{
	static const char *const env[] = { "DYNSTACK_CACHE=0", NULL };
	SKIP_IF_WHOLE();
	run_mode("--off", env);
}

/* ---- churn: 10,000 creates and destroys on two threads, some of the stacks destroyed by the
 * thread that did not create them */

#define CHURN_PER_THREAD 5000
#define CHURN_RING 8
#define CHURN_CLASSES 2
#define CHURN_SLOTS 256

struct churn {
	pthread_mutex_t lock;
	dynstack_t *mailbox; /* a stack posted by one thread for the other to destroy */
	int mailbox_from;
	const char *slots[CHURN_SLOTS]; /* every distinct slot top seen */
	size_t sizes[CHURN_SLOTS];
	size_t nslots;
	int failed;
};

static struct churn churn = { .lock = PTHREAD_MUTEX_INITIALIZER };

static const unsigned churn_shift[CHURN_CLASSES] = { 22, 23 };

static void churn_note(dynstack_t *s, size_t size)
{
	const char *top = top_of(s);
	for (size_t i = 0; i < churn.nslots; i++)
		if (churn.slots[i] == top)
			return;
	if (churn.nslots == CHURN_SLOTS) {
		churn.failed = 1;
		return;
	}
	churn.sizes[churn.nslots] = size;
	churn.slots[churn.nslots++] = top;
}

static void *churn_thread(void *arg)
{
	int me = (int)(intptr_t)arg;
	uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(me + 1);
	dynstack_t *ring[CHURN_RING] = { NULL };

	for (int k = 0; k < CHURN_PER_THREAD; k++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		int r = k % CHURN_RING;
		if (ring[r] && dynstack_destroy(ring[r]))
			churn.failed = 1;
		ring[r] = NULL;
		size_t size = class_size(churn_shift[rng % CHURN_CLASSES]);
		dynstack_t *s = create(size);
		if (!s) {
			churn.failed = 1;
			break;
		}
		touch_top(s, 1 + (rng >> 8) % 6);
		pthread_mutex_lock(&churn.lock);
		churn_note(s, size);
		dynstack_t *theirs = NULL;
		if (churn.mailbox && churn.mailbox_from != me) {
			theirs = churn.mailbox;
			churn.mailbox = NULL;
		}
		bool post = !churn.mailbox && (rng >> 20) % 8 == 0;
		if (post) {
			churn.mailbox = s;
			churn.mailbox_from = me;
		}
		pthread_mutex_unlock(&churn.lock);
		if (theirs && dynstack_destroy(theirs))
			churn.failed = 1;
		if (!post)
			ring[r] = s;
	}
	for (int r = 0; r < CHURN_RING; r++)
		if (ring[r] && dynstack_destroy(ring[r]))
			churn.failed = 1;
	return NULL;
}

static void test_churn_no_leak(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	pthread_t th[2];

	dynstack_stats_t st = stats_now();
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, churn_thread, (void *)(intptr_t)i),
				 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	if (churn.mailbox)
		assert_int_equal(dynstack_destroy(churn.mailbox), 0);
	assert_false(churn.failed);

	dynstack_stats_t end = stats_now();
	struct delta d = since(&st);
	assert_int_equal(d.created, 2 * CHURN_PER_THREAD);
	assert_int_equal(end.nr_dynamic_stacks_destroyed - st.nr_dynamic_stacks_destroyed,
			 2 * CHURN_PER_THREAD);
	assert_int_equal(d.stacks, 0);
	assert_int_equal(d.pages, 0);
	/* Nothing went over the page budget, so nothing was released: every create that missed
	 * took a new slot, and every slot ever used is cached now, with its pages committed. */
	assert_int_equal(d.hits, (int64_t)(2 * CHURN_PER_THREAD - churn.nslots));
	assert_int_equal(d.cached, (int64_t)churn.nslots);
	size_t resident = 0, accessible = 0;
	for (size_t i = 0; i < churn.nslots; i++) {
		const char *base = slot_base(churn.slots[i], churn.sizes[i]);
		size_t acc;
		resident += count_resident(base, churn.slots[i]);
		acc = count_accessible(base, churn.slots[i]);
		assert_true(acc >= 1 && acc <= 6);
		accessible += acc;
	}
	assert_int_equal(d.cached_pages, (int64_t)accessible);
	assert_int_equal(resident, accessible);
	/* A new slot is taken only when the creating thread's cache and the depot hold none of
	 * its class: then every other slot of the class is live (both rings, the mailbox, the
	 * other thread's new stack: 2 * 8 + 2) or in the other thread's cache (16). */
	assert_true(churn.nslots <= CHURN_CLASSES * (2 * CHURN_RING + 2 + 16 + 1));
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--capacity"))
		return capacity_main();
	if (argc == 2 && !strcmp(argv[1], "--budget"))
		return budget_main();
	if (argc == 2 && !strcmp(argv[1], "--learn"))
		return learn_main();
	if (argc == 2 && !strcmp(argv[1], "--off"))
		return off_main();
	if (argc > 1)
		return 64;

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_warm_create),
		cmocka_unit_test(test_warm_create_makes_no_syscall),
		cmocka_unit_test(test_cached_is_not_live),
		cmocka_unit_test(test_gauges),
		cmocka_unit_test(test_smaller_stack_floor),
		cmocka_unit_test(test_initial_on_warm),
		cmocka_unit_test(test_learn_on_warm),
		cmocka_unit_test(test_queued_trim_then_warm_reuse),
		cmocka_unit_test(test_thread_cache_and_depot),
		cmocka_unit_test(test_thread_exit_to_depot),
		cmocka_unit_test(test_page_budget),
		cmocka_unit_test(test_cache_off),
		cmocka_unit_test(test_churn_no_leak),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
