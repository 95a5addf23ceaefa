/* Tests with several OS threads: concurrent faults (on each thread's own
 * coroutines, or racing on one stack) and concurrent creates keep pages,
 * ids and counters exact; a thread gets its sync stack lazily from the first
 * create or resume, gives it back at exit, and -ENOMEM when there is none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <ucontext.h>

#include "helpers.h"

#define THREADS 2
#define CORO_SIZE (256 * 1024)
#define CORO_PAGES (CORO_SIZE / 4096)
#define PER_BATCH 32
#define BATCHES 5
#define PAGES_PER_RESUME 9 /* 7 resumes of 9 pages: 63 = all but the initial page */

/* ---- concurrent faults */

/* Runs on its own stack and writes one byte per page below its frame,
 * PAGES_PER_RESUME pages a resume, top down: each write is exactly one
 * commit fault of exactly one page. */
struct toucher {
	char *top;
	size_t next; /* index from the top of the next page to touch */
	size_t ps;
};

static void toucher_fn(void *arg)
{
	struct toucher *t = arg;

	while (t->next < CORO_PAGES) {
		for (int i = 0; i < PAGES_PER_RESUME && t->next < CORO_PAGES; i++, t->next++)
			*(volatile char *)(t->top - (t->next + 1) * t->ps) = 1;
		dynstack_coro_yield();
	}
}

struct worker {
	pthread_barrier_t *start, *checked;
	int errors;
	uint64_t faults_seen; /* pages committed, from the stacks themselves */
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	size_t ps = page_size();
	struct toucher t[PER_BATCH];
	dynstack_coro_t *c[PER_BATCH];
	dynstack_attr_t attr;

	dynstack_attr_init(&attr);
	attr.size = CORO_SIZE;
	pthread_barrier_wait(w->start);
	for (int batch = 0; batch < BATCHES; batch++) {
		for (int i = 0; i < PER_BATCH; i++) {
			if (dynstack_coro_create(&c[i], toucher_fn, &t[i], &attr)) {
				w->errors++;
				return NULL;
			}
			/* The entry frame lives in the initial page: start below it. */
			t[i] = (struct toucher){ .top = dynstack_top(dynstack_coro_stack(c[i])),
						 .next = 1,
						 .ps = ps };
		}
		/* Round robin: faults of all the coroutines interleave. */
		for (int live = PER_BATCH; live;) {
			live = 0;
			for (int i = 0; i < PER_BATCH; i++) {
				if (dynstack_coro_status(c[i]) == DYNSTACK_CORO_DEAD)
					continue;
				if (dynstack_coro_resume(c[i]))
					w->errors++;
				live++;
			}
		}
		for (int i = 0; i < PER_BATCH; i++) {
			size_t committed = dynstack_committed(dynstack_coro_stack(c[i]));
			if (committed != CORO_SIZE)
				w->errors++;
			w->faults_seen += committed / ps - 1;
		}
		if (batch == BATCHES - 1)
			pthread_barrier_wait(w->checked); /* the main thread counts */
		pthread_barrier_wait(w->checked);
		for (int i = 0; i < PER_BATCH; i++)
			if (dynstack_coro_destroy(c[i]))
				w->errors++;
	}
	return NULL;
}

static void test_concurrent_faults_exact(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	assert_int_equal(CORO_PAGES * 4096, CORO_SIZE);
	if (page_size() != 4096) {
		print_message("page size is not 4 KiB: the page counts are for 4 KiB\n");
		skip();
	}
	pthread_barrier_t start, checked;
	struct worker w[THREADS];
	pthread_t th[THREADS];
	const uint64_t per_thread = (uint64_t)BATCHES * PER_BATCH * (CORO_PAGES - 1);

	assert_true(per_thread >= 10000);
	assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
	assert_int_equal(pthread_barrier_init(&checked, NULL, THREADS + 1), 0);
	memset(w, 0, sizeof(w));
	dynstack_stats_t before = stats_now();
	for (int i = 0; i < THREADS; i++) {
		w[i].start = &start;
		w[i].checked = &checked;
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	/* Every batch but the last: let the workers go on. */
	for (int batch = 0; batch < BATCHES - 1; batch++)
		pthread_barrier_wait(&checked);
	/* The last batch is complete and still alive on both threads. */
	pthread_barrier_wait(&checked);
	dynstack_stats_t mid = stats_now();
	pthread_barrier_wait(&checked);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	dynstack_stats_t after = stats_now();

	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(w[i].errors, 0);
		assert_int_equal(w[i].faults_seen, per_thread);
	}
	assert_int_equal(after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults,
			 THREADS * per_thread);
	assert_int_equal(after.nr_dynamic_stacks_spurious, before.nr_dynamic_stacks_spurious);
	assert_int_equal(after.nr_dynamic_stacks_foreign, before.nr_dynamic_stacks_foreign);
	assert_int_equal(after.nr_dynamic_stacks_created - before.nr_dynamic_stacks_created,
			 THREADS * BATCHES * PER_BATCH);
	assert_int_equal(after.nr_dynamic_stacks_destroyed - before.nr_dynamic_stacks_destroyed,
			 THREADS * BATCHES * PER_BATCH);
	/* While the last batches lived: every page of every stack, counted once. */
	assert_int_equal(mid.nr_dynamic_stacks - before.nr_dynamic_stacks, THREADS * PER_BATCH);
	assert_int_equal(mid.nr_dynamic_stacks_coros - before.nr_dynamic_stacks_coros,
			 THREADS * PER_BATCH);
	assert_int_equal(mid.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages,
			 THREADS * PER_BATCH * CORO_PAGES);
	/* And all of it given back. */
	assert_int_equal(after.nr_dynamic_stacks_pages, before.nr_dynamic_stacks_pages);
	assert_int_equal(after.nr_dynamic_stacks, before.nr_dynamic_stacks);
	assert_int_equal(after.nr_dynamic_stacks_coros, before.nr_dynamic_stacks_coros);
	pthread_barrier_destroy(&start);
	pthread_barrier_destroy(&checked);
}

/* ---- lazy sync stacks */

struct lazy {
	dynstack_coro_t *coro; /* resume this, or create a stack if NULL */
	int rc;
	int disabled_before;
	stack_t after;
	size_t guard_accessible, sync_accessible;
	dynstack_stats_t stats_after;
};

static void nothing_fn(void *arg)
{
	*(int *)arg = 1;
}

static void *lazy_main(void *arg)
{
	struct lazy *l = arg;
	stack_t ss;

	sigaltstack(NULL, &ss);
	l->disabled_before = (ss.ss_flags & SS_DISABLE) != 0;
	if (l->coro) {
		l->rc = dynstack_coro_resume(l->coro);
	} else {
		dynstack_t *s;
		l->rc = dynstack_create(&s, NULL);
		if (!l->rc)
			l->rc = dynstack_destroy(s);
	}
	sigaltstack(NULL, &l->after);
	char *sp = l->after.ss_sp;
	if (sp) {
		l->guard_accessible = count_accessible(sp - page_size(), sp);
		l->sync_accessible = count_accessible(sp, sp + l->after.ss_size);
	}
	l->stats_after = stats_now();
	return NULL;
}

static void check_lazy(struct lazy *l, const dynstack_stats_t *before)
{
	pthread_t th;

	assert_int_equal(pthread_create(&th, NULL, lazy_main, l), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	dynstack_stats_t joined = stats_now();

	assert_int_equal(l->rc, 0);
	assert_true(l->disabled_before); /* threads do not inherit sigaltstack */
	assert_false(l->after.ss_flags & SS_DISABLE);
	assert_true(l->after.ss_size >= DYNSTACK_MIN_SYNC_STACK);
	assert_non_null(l->after.ss_sp);
	/* All of it usable, with a guard page below. */
	assert_int_equal(l->sync_accessible, l->after.ss_size / page_size());
	assert_int_equal(l->guard_accessible, 0);
	/* One more sync stack while it lived, given back when it exited. */
	assert_int_equal(l->stats_after.nr_dynamic_stacks_sync_stacks -
				 before->nr_dynamic_stacks_sync_stacks,
			 1);
	assert_int_equal(joined.nr_dynamic_stacks_sync_stacks,
			 before->nr_dynamic_stacks_sync_stacks);
	/* ...and unmapped, guard page included. */
	char *sp = l->after.ss_sp;
	assert_int_equal(count_accessible(sp - page_size(), sp + l->after.ss_size), 0);
}

static void test_lazy_sync_stack_on_create(void **state)
{
	TAKE_SIGSEGV();
	struct lazy l = { 0 };
	dynstack_stats_t before = stats_now();

	check_lazy(&l, &before);
}

static void test_lazy_sync_stack_on_resume(void **state)
{
	TAKE_SIGSEGV();
	int ran = 0;
	struct lazy l = { 0 };

	assert_int_equal(dynstack_coro_create(&l.coro, nothing_fn, &ran, NULL), 0);
	dynstack_stats_t before = stats_now();
	check_lazy(&l, &before);
	assert_int_equal(ran, 1);
	assert_int_equal(dynstack_coro_destroy(l.coro), 0);
}

/* Growth is by address, not by thread: threads that never called the
 * library grow stacks they do not run on (the handler runs on their own
 * stack then), both at once, one page per fault. */
struct grower {
	pthread_barrier_t *start;
	dynstack_t *s;
	int ok;
};

static void *grower_main(void *arg)
{
	struct grower *g = arg;
	char *top = dynstack_top(g->s);

	pthread_barrier_wait(g->start);
	touch_pages_down(top - dynstack_size(g->s), top);
	g->ok = dynstack_committed(g->s) == dynstack_size(g->s);
	return NULL;
}

static void test_threads_grow_foreign_stacks(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	pthread_barrier_t start;
	struct grower g[THREADS];
	pthread_t th[THREADS];
	dynstack_attr_t attr;

	dynstack_attr_init(&attr);
	attr.size = 4 << 20;
	assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
	for (int i = 0; i < THREADS; i++) {
		g[i] = (struct grower){ .start = &start };
		assert_int_equal(dynstack_create(&g[i].s, &attr), 0);
	}
	dynstack_stats_t before = stats_now();
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, grower_main, &g[i]), 0);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	dynstack_stats_t after = stats_now();
	assert_int_equal(after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults,
			 THREADS * (attr.size / page_size() - 1));
	assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages,
			 THREADS * (attr.size / page_size() - 1));
	for (int i = 0; i < THREADS; i++) {
		assert_true(g[i].ok);
		char *top = dynstack_top(g[i].s);
		assert_int_equal(count_accessible(top - attr.size, top), attr.size / page_size());
		assert_int_equal(dynstack_destroy(g[i].s), 0);
	}
	pthread_barrier_destroy(&start);
}

/* Two threads grow the same stack at once, racing for every page: the
 * commit edge only moves down and each page is counted once, whoever wins. */
static void test_shared_stack_race(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	pthread_barrier_t start;
	struct grower g[THREADS];
	pthread_t th[THREADS];
	dynstack_attr_t attr;
	dynstack_t *s;

	dynstack_attr_init(&attr);
	attr.size = 8 << 20;
	attr.name = "shared";
	const uint64_t new_pages = attr.size / page_size() - 1;
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
	dynstack_stats_t before = stats_now();
	for (int i = 0; i < THREADS; i++) {
		g[i] = (struct grower){ .start = &start, .s = s };
		assert_int_equal(pthread_create(&th[i], NULL, grower_main, &g[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	dynstack_stats_t after = stats_now();

	for (int i = 0; i < THREADS; i++)
		assert_true(g[i].ok);
	assert_int_equal(dynstack_committed(s), attr.size);
	assert_int_equal(dynstack_peak(s), attr.size);
	assert_int_equal(after.nr_dynamic_stacks_pages - before.nr_dynamic_stacks_pages, new_pages);
	/* Each page faulted at least once; a loser saw it committed or lost the
	 * race for the edge, at most once per thread. */
	uint64_t faults = after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults;
	uint64_t spurious = after.nr_dynamic_stacks_spurious - before.nr_dynamic_stacks_spurious;
	assert_true(faults >= 1 && faults <= THREADS * new_pages);
	assert_true(faults + spurious >= new_pages);
	assert_true(faults + spurious <= THREADS * new_pages);
	assert_int_equal(after.nr_dynamic_stacks_foreign, before.nr_dynamic_stacks_foreign);
	char *top = dynstack_top(s);
	assert_int_equal(count_accessible(top - attr.size - page_size(), top), new_pages + 1);
	assert_int_equal(dynstack_destroy(s), 0);
	pthread_barrier_destroy(&start);
}

/* A runtime with its own context switch: after dynstack_thread_init on the
 * thread, code it runs on a dynamic stack grows it like a coroutine would.
 * Without the sync stack the kernel could not deliver the fault. */
struct own_switch {
	ucontext_t back, on_stack;
	dynstack_t *s;
	int init_rc;
	unsigned levels;
};

/* makecontext passes int arguments only: the entry finds its state here. */
static struct own_switch *own_switch_current;

static void own_switch_entry(void)
{
	struct own_switch *o = own_switch_current;

	o->levels = touch_down(dynstack_top(o->s), dynstack_size(o->s) - 2 * page_size());
}

static void *own_switch_main(void *arg)
{
	struct own_switch *o = arg;

	o->init_rc = dynstack_thread_init();
	if (o->init_rc || getcontext(&o->on_stack))
		return NULL;
	o->on_stack.uc_stack.ss_sp = (char *)dynstack_top(o->s) - dynstack_size(o->s);
	o->on_stack.uc_stack.ss_size = dynstack_size(o->s);
	o->on_stack.uc_link = &o->back;
	own_switch_current = o;
	makecontext(&o->on_stack, own_switch_entry, 0);
	swapcontext(&o->back, &o->on_stack);
	return NULL;
}

static void test_own_switch_after_thread_init(void **state)
{
	TAKE_SIGSEGV();
	struct own_switch o = { 0 };
	dynstack_attr_t attr;
	pthread_t th;

	dynstack_attr_init(&attr);
	attr.size = 256 * 1024;
	/* makecontext writes its frame at the top: commit two pages for it. */
	attr.initial = 2 * page_size();
	assert_int_equal(dynstack_create(&o.s, &attr), 0);
	assert_int_equal(pthread_create(&th, NULL, own_switch_main, &o), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(o.init_rc, 0);
	assert_true(o.levels > 0);
	assert_true(dynstack_committed(o.s) >= attr.size - 2 * page_size());
	assert_int_equal(dynstack_destroy(o.s), 0);
}

/* Creates and destroys from several threads at once: the class lock keeps
 * slots, ids and counters consistent. */
#define CHURN_ROUNDS 200
#define CHURN_LIVE 64

struct churn {
	uint64_t ids[CHURN_ROUNDS * CHURN_LIVE];
	int errors;
};

static void *churn_main(void *arg)
{
	struct churn *ch = arg;
	dynstack_t *s[CHURN_LIVE];
	size_t n = 0;

	for (int round = 0; round < CHURN_ROUNDS; round++) {
		for (int i = 0; i < CHURN_LIVE; i++) {
			if (dynstack_create(&s[i], NULL)) {
				ch->errors++;
				return NULL;
			}
			ch->ids[n++] = dynstack_id(s[i]);
			/* A byte in the initial page: it must be fresh (zero). */
			volatile char *p = (char *)dynstack_top(s[i]) - 1;
			if (*p != 0)
				ch->errors++;
			*p = 1;
		}
		for (int i = 0; i < CHURN_LIVE; i++)
			if (dynstack_destroy(s[i]))
				ch->errors++;
	}
	return NULL;
}

static int compare_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

static void test_concurrent_create_destroy(void **state)
{
	TAKE_SIGSEGV();
	static struct churn ch[THREADS];
	static uint64_t all[THREADS * CHURN_ROUNDS * CHURN_LIVE];
	pthread_t th[THREADS];
	const size_t per = CHURN_ROUNDS * CHURN_LIVE;

	memset(ch, 0, sizeof(ch));
	dynstack_stats_t before = stats_now();
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, churn_main, &ch[i]), 0);
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	dynstack_stats_t after = stats_now();

	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(ch[i].errors, 0);
		memcpy(all + i * per, ch[i].ids, sizeof(ch[i].ids));
	}
	qsort(all, THREADS * per, sizeof(all[0]), compare_u64);
	assert_true(all[0] != 0);
	for (size_t i = 1; i < THREADS * per; i++)
		if (all[i] == all[i - 1])
			fail_msg("id %llu handed out twice", (unsigned long long)all[i]);
	assert_int_equal(after.nr_dynamic_stacks_created - before.nr_dynamic_stacks_created,
			 THREADS * per);
	assert_int_equal(after.nr_dynamic_stacks_destroyed - before.nr_dynamic_stacks_destroyed,
			 THREADS * per);
	assert_int_equal(after.nr_dynamic_stacks, before.nr_dynamic_stacks);
	assert_int_equal(after.nr_dynamic_stacks_pages, before.nr_dynamic_stacks_pages);
}

/* With no memory for a sync stack, resume says so instead of running a
 * coroutine that could not grow. In a child: it caps its address space. */
static long vm_size(void)
{
	char buf[4096];
	FILE *f = fopen("/proc/self/status", "r");
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(buf, sizeof(buf), f))
		if (sscanf(buf, "VmSize: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

struct starved {
	pthread_barrier_t ready, capped;
	dynstack_coro_t *c;
	int init_rc, resume_rc, status_after, resume_again_rc;
};

static void *starved_main(void *arg)
{
	struct starved *st = arg;

	pthread_barrier_wait(&st->ready);
	pthread_barrier_wait(&st->capped);
	st->init_rc = dynstack_thread_init();
	st->resume_rc = dynstack_coro_resume(st->c);
	st->status_after = dynstack_coro_status(st->c);
	pthread_barrier_wait(&st->ready); /* the cap is lifted */
	pthread_barrier_wait(&st->capped);
	st->resume_again_rc = dynstack_coro_resume(st->c);
	return NULL;
}

static void set_one(void *arg)
{
	*(int *)arg = 1;
}

static int starved_child(void *arg)
{
	struct starved st;
	struct rlimit old, cap;
	pthread_t th;
	int ran = 0;

	if (dynstack_init(NULL) || dynstack_coro_create(&st.c, set_one, &ran, NULL))
		return 2;
	pthread_barrier_init(&st.ready, NULL, 2);
	pthread_barrier_init(&st.capped, NULL, 2);
	if (pthread_create(&th, NULL, starved_main, &st))
		return 3;
	pthread_barrier_wait(&st.ready);
	getrlimit(RLIMIT_AS, &old);
	cap = old;
	cap.rlim_cur = (rlim_t)vm_size() + 16 * 1024; /* less than a sync stack */
	if (setrlimit(RLIMIT_AS, &cap))
		return 4;
	pthread_barrier_wait(&st.capped);
	pthread_barrier_wait(&st.ready);
	setrlimit(RLIMIT_AS, &old);
	pthread_barrier_wait(&st.capped);
	pthread_join(th, NULL);
	fprintf(stderr, "init %d resume %d status %d again %d ran %d\n", st.init_rc, st.resume_rc,
		st.status_after, st.resume_again_rc, ran);
	if (st.init_rc != -ENOMEM || st.resume_rc != -ENOMEM)
		return 5;
	if (st.status_after != DYNSTACK_CORO_SUSPENDED || st.resume_again_rc != 0 || !ran)
		return 6;
	return 0;
}

static void test_resume_without_sync_stack(void **state)
{
	char err[1024];
	int status;

	int rc = run_in_child(starved_child, NULL, &status, err, sizeof(err));
	assert_int_equal(rc, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; stderr:\n%s", describe_status(status), err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_concurrent_faults_exact),
		cmocka_unit_test(test_lazy_sync_stack_on_create),
		cmocka_unit_test(test_lazy_sync_stack_on_resume),
		cmocka_unit_test(test_threads_grow_foreign_stacks),
		cmocka_unit_test(test_shared_stack_race),
		cmocka_unit_test(test_own_switch_after_thread_init),
		cmocka_unit_test(test_concurrent_create_destroy),
		cmocka_unit_test(test_resume_without_sync_stack),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
