/* Tests of coroutines (src/coro.c): the status machine, nesting, the calls
 * that must refuse from inside, and a coroutine that moves between threads
 * while its stack grows. Coroutines never assert (a CMocka failure longjmps
 * off their stack): they record what they see, the test body checks it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "helpers.h"

static dynstack_coro_t *coro_new(dynstack_coro_fn fn, void *arg, size_t size, const char *name)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c = NULL;

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = size;
	attr.name = name;
	assert_int_equal(dynstack_coro_create(&c, fn, arg, &attr), 0);
	assert_non_null(c);
	return c;
}

/* ---- the basic sequence */

struct seq {
	dynstack_coro_t *self;
	int step;
	int status_inside[3];
	int self_is_current[3];
	int yield_rc[3];
	long survived; /* a sum of stack-local values kept across the yields */
};

static void seq_fn(void *arg)
{
	struct seq *s = arg;
	volatile long locals[64];

	for (int i = 0; i < 64; i++)
		locals[i] = (long)i * 1000003;
	for (int round = 0; round < 3; round++) {
		s->step = round + 1;
		s->status_inside[round] = dynstack_coro_status(s->self);
		s->self_is_current[round] = dynstack_coro_current() == s->self;
		s->yield_rc[round] = dynstack_coro_yield();
	}
	long sum = 0;
	for (int i = 0; i < 64; i++)
		sum += locals[i];
	s->survived = sum;
	s->step = 100;
}

static void test_resume_yield_sequence(void **state)
{
	TAKE_SIGSEGV();
	struct seq s = { 0 };
	long want = 0;

	s.self = coro_new(seq_fn, &s, 0, "seq");
	assert_int_equal(dynstack_coro_status(s.self), DYNSTACK_CORO_SUSPENDED);
	assert_null(dynstack_coro_current());
	assert_int_equal(s.step, 0); /* nothing runs before the first resume */
	assert_string_equal(dynstack_name(dynstack_coro_stack(s.self)), "seq");

	for (int round = 0; round < 3; round++) {
		assert_int_equal(dynstack_coro_resume(s.self), 0);
		assert_int_equal(s.step, round + 1);
		assert_int_equal(s.status_inside[round], DYNSTACK_CORO_RUNNING);
		assert_true(s.self_is_current[round]);
		assert_int_equal(dynstack_coro_status(s.self), DYNSTACK_CORO_SUSPENDED);
		assert_null(dynstack_coro_current());
	}
	assert_int_equal(dynstack_coro_resume(s.self), 0);
	assert_int_equal(s.step, 100);
	for (int round = 0; round < 3; round++)
		assert_int_equal(s.yield_rc[round], 0);
	for (int i = 0; i < 64; i++)
		want += (long)i * 1000003;
	assert_int_equal(s.survived, want);
	assert_int_equal(dynstack_coro_status(s.self), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_resume(s.self), -EINVAL);
	assert_int_equal(dynstack_coro_status(s.self), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_destroy(s.self), 0);
}

/* Many coroutines interleaved: each keeps its own running sum. */
struct counter {
	long id, total;
};

static void counter_fn(void *arg)
{
	struct counter *k = arg;
	volatile long mine = k->id * 7;

	for (int i = 0; i < 10; i++) {
		k->total = mine;
		mine += k->id;
		dynstack_coro_yield();
	}
	k->total = mine;
}

static void test_many_interleaved(void **state)
{
	TAKE_SIGSEGV();
	enum {
		N = 100
	};
	static struct counter k[N];
	static dynstack_coro_t *c[N];

	for (int i = 0; i < N; i++) {
		k[i] = (struct counter){ .id = i + 1 };
		c[i] = coro_new(counter_fn, &k[i], 0, NULL);
	}
	for (int round = 0; round < 11; round++) {
		for (int i = 0; i < N; i++) {
			assert_int_equal(dynstack_coro_resume(c[i]), 0);
			assert_int_equal(k[i].total, k[i].id * 7 + k[i].id * round);
		}
	}
	for (int i = 0; i < N; i++) {
		assert_int_equal(dynstack_coro_status(c[i]), DYNSTACK_CORO_DEAD);
		assert_int_equal(dynstack_coro_destroy(c[i]), 0);
	}
}

/* ---- nesting, and what a coroutine may not do to itself or its parent */

struct nest {
	dynstack_coro_t *a, *b;
	char log[16];
	int n;
	/* seen by B while A waits for it */
	int a_status, b_status, b_current;
	int resume_parent, resume_self, destroy_parent, destroy_self, destroy_self_stack;
	/* seen by A after B yielded back */
	int a_status_after, b_status_after, a_current_after;
};

static void nest_log(struct nest *n, char who)
{
	if (n->n < (int)sizeof(n->log) - 1)
		n->log[n->n++] = who;
}

static void nest_b(void *arg)
{
	struct nest *n = arg;

	nest_log(n, 'B');
	n->a_status = dynstack_coro_status(n->a);
	n->b_status = dynstack_coro_status(n->b);
	n->b_current = dynstack_coro_current() == n->b;
	n->resume_parent = dynstack_coro_resume(n->a);
	n->resume_self = dynstack_coro_resume(n->b);
	n->destroy_parent = dynstack_coro_destroy(n->a);
	n->destroy_self = dynstack_coro_destroy(n->b);
	n->destroy_self_stack = dynstack_destroy(dynstack_coro_stack(n->b));
	dynstack_coro_yield();
	nest_log(n, 'B'); /* resumed straight from the main thread */
}

static void nest_a(void *arg)
{
	struct nest *n = arg;

	nest_log(n, 'A');
	dynstack_coro_resume(n->b);
	nest_log(n, 'A');
	n->a_status_after = dynstack_coro_status(n->a);
	n->b_status_after = dynstack_coro_status(n->b);
	n->a_current_after = dynstack_coro_current() == n->a;
	dynstack_coro_yield();
	nest_log(n, 'A');
}

static void test_nested(void **state)
{
	TAKE_SIGSEGV();
	struct nest n = { 0 };

	n.a = coro_new(nest_a, &n, 0, "a");
	n.b = coro_new(nest_b, &n, 0, "b");
	assert_int_equal(dynstack_coro_resume(n.a), 0); /* A, B, A */
	assert_int_equal(n.a_status, DYNSTACK_CORO_NORMAL);
	assert_int_equal(n.b_status, DYNSTACK_CORO_RUNNING);
	assert_true(n.b_current);
	assert_int_equal(n.resume_parent, -EBUSY);
	assert_int_equal(n.resume_self, -EBUSY);
	assert_int_equal(n.destroy_parent, -EBUSY);
	assert_int_equal(n.destroy_self, -EBUSY);
	assert_int_equal(n.destroy_self_stack, -EBUSY);
	assert_int_equal(n.a_status_after, DYNSTACK_CORO_RUNNING);
	assert_int_equal(n.b_status_after, DYNSTACK_CORO_SUSPENDED);
	assert_true(n.a_current_after);
	assert_int_equal(dynstack_coro_status(n.a), DYNSTACK_CORO_SUSPENDED);

	/* B yielded to A, A to us: now B is resumed by the main thread. */
	assert_int_equal(dynstack_coro_resume(n.b), 0);
	assert_int_equal(dynstack_coro_status(n.b), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_status(n.a), DYNSTACK_CORO_SUSPENDED);
	assert_int_equal(dynstack_coro_resume(n.a), 0);
	assert_int_equal(dynstack_coro_status(n.a), DYNSTACK_CORO_DEAD);
	assert_string_equal(n.log, "ABABA");
	assert_int_equal(dynstack_coro_destroy(n.a), 0);
	assert_int_equal(dynstack_coro_destroy(n.b), 0);
}

static void noop_fn(void *arg)
{
	*(int *)arg += 1;
}

static void test_refusals(void **state)
{
	TAKE_SIGSEGV();
	int runs = 0;
	dynstack_coro_t *c = coro_new(noop_fn, &runs, 0, NULL);

	assert_int_equal(dynstack_coro_yield(), -EPERM);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(runs, 1);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_resume(c), -EINVAL);
	assert_int_equal(runs, 1);
	assert_int_equal(dynstack_coro_yield(), -EPERM);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* Destroying a suspended coroutine abandons it and frees its pages. */
struct deep_yield {
	unsigned levels;
};

/* Recurses until a local lies at least `bytes` below `top` (measured, so the
 * depth does not depend on the compiler's frame sizes), then yields there. */
static __attribute__((noinline)) void yield_deep(uintptr_t top, size_t bytes)
{
	volatile char buf[1024];

	memset((char *)buf, 1, sizeof(buf));
	if (top - (uintptr_t)buf < bytes)
		yield_deep(top, bytes);
	else
		dynstack_coro_yield();
	buf[0] = 0;
}

static void deep_yield_fn(void *arg)
{
	yield_deep((uintptr_t)dynstack_top(dynstack_coro_stack(dynstack_coro_current())),
		   42 * 1024);
}

static void test_destroy_suspended(void **state)
{
	TAKE_SIGSEGV();
	dynstack_coro_t *c = coro_new(deep_yield_fn, NULL, 128 * 1024, "abandoned");
	dynstack_t *s = dynstack_coro_stack(c);
	char *top = dynstack_top(s);
	char *lo = top - dynstack_size(s) - page_size();
	dynstack_stats_t before = stats_now();

	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_SUSPENDED);
	assert_true(dynstack_committed(s) >= 40 * 1024);
	assert_true(count_resident(lo, top) >= 10);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	dynstack_stats_t after = stats_now();
	assert_int_equal(count_resident(lo, top), 0);
	assert_int_equal(count_accessible(lo, top), 0);
	assert_int_equal(before.nr_dynamic_stacks_coros - after.nr_dynamic_stacks_coros, 1);
	assert_int_equal(before.nr_dynamic_stacks_pages - after.nr_dynamic_stacks_pages,
			 created_committed(128 * 1024, 0) / page_size());
}

/* ---- a running coroutine is refused to other threads */

struct spin {
	atomic_int running, go;
};

static void spin_fn(void *arg)
{
	struct spin *sp = arg;

	atomic_store(&sp->running, 1);
	while (!atomic_load(&sp->go))
		;
}

struct spin_thread {
	dynstack_coro_t *c;
	int rc;
};

static void *spin_thread_main(void *arg)
{
	struct spin_thread *t = arg;

	t->rc = dynstack_coro_resume(t->c);
	return NULL;
}

static void test_running_elsewhere_is_busy(void **state)
{
	TAKE_SIGSEGV();
	struct spin sp = { 0 };
	struct spin_thread t = { .rc = -1 };
	pthread_t th;

	t.c = coro_new(spin_fn, &sp, 0, NULL);
	assert_int_equal(pthread_create(&th, NULL, spin_thread_main, &t), 0);
	while (!atomic_load(&sp.running))
		;
	assert_int_equal(dynstack_coro_status(t.c), DYNSTACK_CORO_RUNNING);
	assert_int_equal(dynstack_coro_resume(t.c), -EBUSY);
	assert_int_equal(dynstack_coro_destroy(t.c), -EBUSY);
	assert_null(dynstack_coro_current()); /* it runs there, not here */
	atomic_store(&sp.go, 1);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(t.rc, 0);
	assert_int_equal(dynstack_coro_status(t.c), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_destroy(t.c), 0);
}

/* ---- one coroutine, resumed by two threads in turn, going deeper each
 * time: its stack grows from both threads and what it left in the frames
 * above must survive. Nothing here keeps a TLS address across a yield. */

#define WALK_LEVELS 200
#define WALK_STEP 10 /* levels per resume: ~6 KiB, more than a page */
#define WALK_RESUMES (WALK_LEVELS / WALK_STEP + 1)

struct walk {
	long tid[WALK_RESUMES]; /* the thread each step ran on */
	int steps;
	int errors; /* frames whose contents changed */
	int deepest;
};

static unsigned char walk_byte(int level, size_t i)
{
	return (unsigned char)(level * 13 + i * 3 + 5);
}

static __attribute__((noinline)) void walk_level(struct walk *w, int level)
{
	volatile unsigned char buf[512];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = walk_byte(level, i);
	w->deepest = level;
	if (level % WALK_STEP == WALK_STEP - 1) {
		dynstack_coro_yield();
		if (w->steps < WALK_RESUMES)
			w->tid[w->steps++] = thread_id();
	}
	if (level + 1 < WALK_LEVELS)
		walk_level(w, level + 1);
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != walk_byte(level, i))
			w->errors++;
}

static void walk_fn(void *arg)
{
	struct walk *w = arg;

	w->tid[w->steps++] = thread_id();
	walk_level(w, 0);
}

struct relay {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	dynstack_coro_t *c;
	int turn; /* which thread resumes next */
	int done;
	int resumes;
	int bad_rc;
	size_t committed[WALK_RESUMES + 1]; /* after each resume */
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
		/* The lock is held across the resume: the other thread waits. */
		if (dynstack_coro_resume(r->c))
			r->bad_rc++;
		if (r->resumes <= WALK_RESUMES)
			r->committed[r->resumes] = dynstack_committed(dynstack_coro_stack(r->c));
		r->resumes++;
		if (dynstack_coro_status(r->c) == DYNSTACK_CORO_DEAD || r->resumes > WALK_RESUMES)
			r->done = 1;
		r->turn = !ra->me;
		pthread_cond_broadcast(&r->cond);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static void test_migrating_coroutine_grows(void **state)
{
	TAKE_SIGSEGV();
	struct walk w = { 0 };
	struct relay r = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct relay_arg ra[2] = { { &r, 0 }, { &r, 1 } };
	pthread_t th[2];

	r.c = coro_new(walk_fn, &w, 256 * 1024, "migrant");
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, relay_main, &ra[i]), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);

	assert_int_equal(r.bad_rc, 0);
	assert_int_equal(dynstack_coro_status(r.c), DYNSTACK_CORO_DEAD);
	assert_int_equal(r.resumes, WALK_RESUMES);
	assert_int_equal(w.deepest, WALK_LEVELS - 1);
	assert_int_equal(w.errors, 0);
	/* It ran where it was resumed: alternately on the two threads. */
	assert_int_equal(w.steps, WALK_RESUMES);
	assert_true(r.tid[0] != r.tid[1]);
	for (int i = 0; i < WALK_RESUMES; i++) {
		if (w.tid[i] != r.tid[i % 2])
			fail_msg("step %d ran on thread %ld, resumed by %ld", i, w.tid[i],
				 r.tid[i % 2]);
	}
	/* Each resume but the last went deeper and committed more (where
	 * stacks grow at all). */
	for (int i = 1; i < WALK_RESUMES - 1 && !stacks_whole(); i++) {
		if (r.committed[i] <= r.committed[i - 1])
			fail_msg("resume %d: committed %zu after %zu", i, r.committed[i],
				 r.committed[i - 1]);
	}
	assert_true(r.committed[WALK_RESUMES - 1] >= WALK_LEVELS * 512);
	assert_int_equal(dynstack_coro_destroy(r.c), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_resume_yield_sequence),
		cmocka_unit_test(test_many_interleaved),
		cmocka_unit_test(test_nested),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_destroy_suspended),
		cmocka_unit_test(test_running_elsewhere_is_busy),
		cmocka_unit_test(test_migrating_coroutine_grows),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
