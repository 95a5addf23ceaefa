/* The program tests/test_gdb.py debugs with tools/dynstack-gdb.py: coroutines in every state,
 * each stopped in a function the test names, and one running coroutine that calls
 * in_coroutine(), where the test breaks. Built -O0 -g so every frame is visible. Checks its own
 * results and exits 0 when everything ran to the end.
 *
 * At the breakpoint:
 *   deep     suspended in waiting_in_level3 <- level2 <- level1 <- deep_entry
 *   fresh    suspended, never started
 *   done     dead (returned, not destroyed)
 *   outer    normal: resumed inner and waits for it, in outer_entry
 *   inner    running: in_coroutine <- running_level <- inner_entry, after growing its stack
 *   shared_a, shared_b: shared mode, one group; shared_b's frames are on the group's stack
 *            (suspended in shared_wait_b), shared_a's are in its save buffer
 *   worker   running on a second thread, blocked in worker_waiting <- worker_entry
 *   a plain stack "plain" with no coroutine
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dynstack.h>

static volatile int sink;
static int failures;
/* For `dynstack bt EXPRESSION` in the test. */
static dynstack_coro_t *deep_coro, *shared_a_coro;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "gdb_target: %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

/* The test's breakpoint. */
static __attribute__((noinline)) void in_coroutine(void)
{
	sink++;
}

static __attribute__((noinline)) void waiting_in_level3(int depth)
{
	char buf[64];
	memset(buf, depth, sizeof(buf));
	sink += buf[7];
	CHECK(dynstack_coro_yield() == 0);
	sink++;
}

static __attribute__((noinline)) void level2(int depth)
{
	waiting_in_level3(depth + 1);
	sink++;
}

static __attribute__((noinline)) void level1(int depth)
{
	level2(depth + 1);
	sink++;
}

static void deep_entry(void *arg)
{
	level1(1);
}

static void fresh_entry(void *arg)
{
	sink++;
}

static void done_entry(void *arg)
{
	sink++;
}

/* Grows the stack by some pages first (commit faults, passed through gdb), then stops. */
static __attribute__((noinline)) void running_level(size_t bytes)
{
	char *p = __builtin_alloca(bytes);
	memset(p, 1, bytes);
	sink += p[bytes / 2];
	in_coroutine();
}

static void inner_entry(void *arg)
{
	running_level(3 * 4096);
}

static void outer_entry(void *arg)
{
	dynstack_coro_t *inner = arg;
	CHECK(dynstack_coro_resume(inner) == 0);
	CHECK(dynstack_coro_status(inner) == DYNSTACK_CORO_DEAD);
}

static __attribute__((noinline)) void shared_wait_a(void)
{
	CHECK(dynstack_coro_yield() == 0);
}

static __attribute__((noinline)) void shared_wait_b(void)
{
	CHECK(dynstack_coro_yield() == 0);
}

static void shared_a_entry(void *arg)
{
	shared_wait_a();
}

static void shared_b_entry(void *arg)
{
	shared_wait_b();
}

static sem_t worker_ready, worker_go;

static __attribute__((noinline)) void worker_waiting(void)
{
	sem_post(&worker_ready);
	while (sem_wait(&worker_go) != 0)
		;
}

static void worker_entry(void *arg)
{
	worker_waiting();
}

static void *worker_thread(void *arg)
{
	CHECK(dynstack_coro_resume(arg) == 0);
	return NULL;
}

static dynstack_coro_t *make(dynstack_coro_fn fn, void *arg, const char *name)
{
	dynstack_attr_t a;
	dynstack_coro_t *c;
	dynstack_attr_init(&a);
	a.size = 64 * 1024;
	a.name = name;
	if (dynstack_coro_create(&c, fn, arg, &a) != 0) {
		fprintf(stderr, "gdb_target: cannot create coroutine %s\n", name);
		exit(1);
	}
	return c;
}

static dynstack_coro_t *make_shared(dynstack_coro_fn fn, dynstack_group_t *g)
{
	dynstack_attr_t a;
	dynstack_coro_t *c;
	dynstack_attr_init(&a);
	a.mode = DYNSTACK_MODE_SHARED;
	a.group = g;
	if (dynstack_coro_create(&c, fn, NULL, &a) != 0) {
		fprintf(stderr, "gdb_target: cannot create a shared coroutine\n");
		exit(1);
	}
	return c;
}

int main(void)
{
	dynstack_attr_t a;
	dynstack_t *plain;
	dynstack_group_t *group;

	/* Created first: coroutine #1 of `dynstack coros`, which lists in stack id order. */
	dynstack_coro_t *deep = make(deep_entry, NULL, "deep");
	dynstack_attr_init(&a);
	a.name = "plain";
	CHECK(dynstack_create(&plain, &a) == 0);
	dynstack_attr_init(&a);
	a.size = 64 * 1024;
	a.name = "group";
	CHECK(dynstack_group_create(&group, &a, 0) == 0);

	dynstack_coro_t *fresh = make(fresh_entry, NULL, "fresh");
	dynstack_coro_t *done = make(done_entry, NULL, "done");
	dynstack_coro_t *inner = make(inner_entry, NULL, "inner");
	dynstack_coro_t *outer = make(outer_entry, inner, "outer");
	dynstack_coro_t *shared_a = make_shared(shared_a_entry, group);
	dynstack_coro_t *shared_b = make_shared(shared_b_entry, group);
	dynstack_coro_t *worker = make(worker_entry, NULL, "worker");
	deep_coro = deep;
	shared_a_coro = shared_a;

	CHECK(dynstack_coro_resume(deep) == 0);
	CHECK(dynstack_coro_resume(done) == 0);
	CHECK(dynstack_coro_resume(shared_a) == 0);
	CHECK(dynstack_coro_resume(shared_b) == 0);
	CHECK(dynstack_coro_saved(shared_a) > 0);
	CHECK(dynstack_coro_saved(shared_b) == 0);

	pthread_t thread;
	sem_init(&worker_ready, 0, 0);
	sem_init(&worker_go, 0, 0);
	CHECK(pthread_create(&thread, NULL, worker_thread, worker) == 0);
	while (sem_wait(&worker_ready) != 0)
		;

	/* The breakpoint is hit in here. */
	CHECK(dynstack_coro_resume(outer) == 0);
	CHECK(dynstack_coro_status(outer) == DYNSTACK_CORO_DEAD);

	sem_post(&worker_go);
	CHECK(pthread_join(thread, NULL) == 0);
	CHECK(dynstack_coro_status(worker) == DYNSTACK_CORO_DEAD);

	/* Everything runs to its end: the debugger changed nothing. */
	CHECK(dynstack_coro_resume(deep) == 0);
	CHECK(dynstack_coro_status(deep) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_resume(fresh) == 0);
	CHECK(dynstack_coro_resume(shared_a) == 0);
	CHECK(dynstack_coro_resume(shared_b) == 0);
	CHECK(dynstack_coro_status(shared_a) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_status(shared_b) == DYNSTACK_CORO_DEAD);

	dynstack_coro_t *all[] = { deep, fresh, done, inner, outer, shared_a, shared_b, worker };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		CHECK(dynstack_coro_destroy(all[i]) == 0);
	CHECK(dynstack_group_destroy(group) == 0);
	CHECK(dynstack_destroy(plain) == 0);

	if (failures) {
		fprintf(stderr, "gdb_target: %d checks failed\n", failures);
		return 1;
	}
	printf("gdb_target: done\n");
	return 0;
}
