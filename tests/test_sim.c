/* Tests of the policy simulator (tools/sim.c, tools/dynstack-sim.c). A trace recorded here and
 * replayed under the policies it ran with gives back every stack's live faults and peak, and
 * the live totals; a trace recorded under step=1 predicts, stack by stack, a live run of the
 * same workload under another policy; a coarser recording is flagged as a lower bound; bad
 * traces are refused with a reason; and the command line keeps its exit statuses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "internal.h"
/* tests/meson.build builds a test from its own file and helpers.c: the replay engine, which
 * the tool compiles in the same way, comes in here. */
#include "tools/sim.c"

#define KIB ((size_t)1024)
#define MAX_STACKS 64

/* What the library said about one stack just before it was destroyed. */
struct live {
	uint64_t id;
	uint64_t faults;
	size_t peak;
	size_t committed;
};

struct live_run {
	struct live st[MAX_STACKS];
	size_t n;
};

static uint64_t splitmix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void remember(struct live_run *lr, const dynstack_t *s)
{
	if (lr->n == MAX_STACKS)
		abort();
	lr->st[lr->n++] = (struct live){
		.id = dynstack_id(s),
		.faults = atomic_load(&s->faults),
		.peak = dynstack_peak(s),
		.committed = dynstack_committed(s),
	};
}

/* A user policy that reads every field the library fills in, so that a replay only agrees with
 * the live run if it fills them in the same way. */
static size_t nosy_grow(const dynstack_fault_info_t *in, void *data)
{
	size_t ps = in->page_size;
	uint64_t mix = in->faults + in->peak / ps + in->learned / ps + in->committed / ps + in->id +
		       (in->name[0] ? (unsigned char)in->name[1] : 7) + in->size / ps +
		       in->limit / ps;
	return in->depth + (size_t)(mix % 3) * ps;
}

static void register_nosy(void)
{
	dynstack_policy_t p = {
		.struct_size = sizeof(p), .name = "nosy", .grow = nosy_grow, .data = NULL
	};
	int rc = dynstack_policy_register(&p);
	if (rc && rc != -EEXIST)
		abort();
}

/* ---- workloads: the same touches whatever the policy */

/* Stacks touched directly from this thread: three rounds of four stacks alive at once, named
 * w0..w3 in every round (learn: slot and name history), each touched at depths that mostly
 * creep down and sometimes jump (a big frame or an alloca), beyond size into a reserve when
 * reserve is set. */
static int direct_workload(const char *spec, size_t reserve, struct live_run *lr)
{
	static const char *const names[] = { "w0", "w1", "w2", "w3" };
	const size_t size = 64 * KIB;
	uint64_t rng = 42;

	for (int round = 0; round < 3; round++) {
		dynstack_t *s[4];
		size_t cur[4] = { 0 };
		for (int i = 0; i < 4; i++) {
			dynstack_attr_t attr;
			dynstack_attr_init(&attr);
			attr.size = size;
			attr.name = names[i];
			attr.policy = spec;
			if (dynstack_create(&s[i], &attr))
				return -1;
		}
		for (int k = 0; k < 60; k++) {
			int i = (int)(splitmix(&rng) % 4);
			uint64_t r = splitmix(&rng);
			size_t depth;
			if (r % 100 < 75)
				depth = cur[i] + 1 + (size_t)(r >> 8) % (6 * KIB);
			else
				depth = 1 + (size_t)(r >> 8) % size;
			if (reserve && r % 100 > 96)
				depth = size + 1 + (size_t)(r >> 8) % reserve;
			if (depth > size + reserve)
				depth = size + reserve;
			if (depth > cur[i])
				cur[i] = depth;
			*((volatile char *)dynstack_top(s[i]) - depth) = 1;
		}
		for (int i = 0; i < 4; i++) {
			remember(lr, s[i]);
			if (dynstack_destroy(s[i]))
				return -1;
		}
	}
	return 0;
}

struct coro_job {
	size_t targets[4];
	int ok;
};

static void coro_body(void *arg)
{
	struct coro_job *j = arg;
	const void *top = dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	j->ok = 1;
	for (int i = 0; i < 4; i++) {
		if (!touch_down(top, j->targets[i]))
			j->ok = 0;
		dynstack_coro_yield();
	}
}

/* Coroutines recursing to varied depths, interleaved, in two rounds with recycled names. */
static int coro_workload(const char *spec, struct live_run *lr)
{
	static const char *const names[] = { "c0", "c1", "c2" };
	uint64_t rng = 7;

	for (int round = 0; round < 2; round++) {
		dynstack_coro_t *c[3];
		struct coro_job jobs[3];
		for (int i = 0; i < 3; i++) {
			dynstack_attr_t attr;
			dynstack_attr_init(&attr);
			attr.size = 48 * KIB;
			attr.name = names[i];
			attr.policy = spec;
			for (int k = 0; k < 4; k++)
				jobs[i].targets[k] = 512 + (size_t)(splitmix(&rng) % (36 * KIB));
			if (dynstack_coro_create(&c[i], coro_body, &jobs[i], &attr))
				return -1;
		}
		for (int k = 0; k < 5; k++)
			for (int i = 0; i < 3; i++)
				if (dynstack_coro_resume(c[i]))
					return -1;
		for (int i = 0; i < 3; i++) {
			if (!jobs[i].ok || dynstack_coro_status(c[i]) != DYNSTACK_CORO_DEAD)
				return -1;
			remember(lr, dynstack_coro_stack(c[i]));
			if (dynstack_coro_destroy(c[i]))
				return -1;
		}
	}
	return 0;
}

static int workload(const char *spec, size_t reserve, struct live_run *lr)
{
	if (direct_workload(spec, reserve, lr))
		return -1;
	return reserve ? 0 : coro_workload(spec, lr);
}

/* ---- checks */

static char *temp_path(char *buf, size_t len, const char *what)
{
	const char *dir = getenv("TMPDIR");
	snprintf(buf, len, "%s/test_sim-%s-XXXXXX", dir && *dir ? dir : "/tmp", what);
	int fd = mkstemp(buf);
	assert_true(fd >= 0);
	close(fd);
	return buf;
}

static struct ds_sim_trace *load_ok(const char *path)
{
	struct ds_sim_trace *t = NULL;
	char err[256] = "";
	int rc = ds_sim_load(path, &t, err, sizeof(err));
	if (rc)
		fail_msg("ds_sim_load(%s): %d: %s", path, rc, err);
	return t;
}

static const struct ds_sim_stack *stack_by_id(const struct ds_sim_trace *t, uint64_t id,
					      size_t *index)
{
	for (size_t i = 0; i < t->nstacks; i++)
		if (t->stacks[i].id == id) {
			*index = i;
			return &t->stacks[i];
		}
	fail_msg("stack %llu is not in the trace", (unsigned long long)id);
	return NULL;
}

/* The replay r agrees with the live run lr, stack by stack and in total. */
static void assert_agrees(const char *what, const struct ds_sim_trace *t,
			  const struct ds_sim_result *r, const struct live_run *lr)
{
	uint64_t faults = 0;
	assert_int_equal(t->nstacks, lr->n);
	for (size_t i = 0; i < lr->n; i++) {
		size_t k = 0;
		const struct ds_sim_stack *s = stack_by_id(t, lr->st[i].id, &k);
		const struct ds_sim_stack_result *o = &r->stacks[k];
		if (o->faults != lr->st[i].faults || o->peak != lr->st[i].peak ||
		    o->committed != lr->st[i].committed)
			fail_msg(
				"%s: stack %llu \"%s\": replay %llu faults, peak %zu, committed %zu; "
				"live %llu faults, peak %zu, committed %zu",
				what, (unsigned long long)s->id, s->name,
				(unsigned long long)o->faults, o->peak, o->committed,
				(unsigned long long)lr->st[i].faults, lr->st[i].peak,
				lr->st[i].committed);
		faults += lr->st[i].faults;
	}
	assert_int_equal(r->faults, faults);
}

static const char *const recorded_specs[] = {
	"step=1",
	"step=3",
	"double",
	"double=8k",
	"learn",
	"learn,initial=8k",
	"initial=8k",
	"step=2,populate",
	"nosy",
	"step=1,overflow=warn:8k",
	"double,overflow=warn:12k",
};

static size_t reserve_of(const char *spec)
{
	const char *w = strstr(spec, "warn:");
	return w ? (size_t)atoi(w + 5) * KIB : 0;
}

/* Replayed under the policy it was recorded with, a trace gives back the live run exactly:
 * every stack's faults, peak and committed at destroy, and the process counters. */
static void test_replay_as_recorded(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	register_nosy();
	for (size_t p = 0; p < sizeof(recorded_specs) / sizeof(*recorded_specs); p++) {
		const char *spec = recorded_specs[p];
		char path[256];
		struct live_run lr = { .n = 0 };
		struct ds_sim_result r;
		char err[256];

		temp_path(path, sizeof(path), "rec");
		dynstack_stats_t before = stats_now();
		assert_int_equal(dynstack_trace_start(path), 0);
		assert_int_equal(workload(spec, reserve_of(spec), &lr), 0);
		assert_int_equal(dynstack_trace_stop(), 0);
		dynstack_stats_t after = stats_now();

		struct ds_sim_trace *t = load_ok(path);
		assert_int_equal(t->lost, 0);
		assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
		assert_agrees(spec, t, &r, &lr);
		assert_int_equal(r.mismatched, 0);
		assert_int_equal(r.inexact, 0);
		assert_int_equal(r.faults,
				 after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults);
		assert_int_equal(r.warnings, after.nr_dynamic_stacks_warnings -
						     before.nr_dynamic_stacks_warnings);
		assert_int_equal(r.populated, after.nr_dynamic_stacks_populated -
						      before.nr_dynamic_stacks_populated);
		assert_int_equal(r.overflows, 0);
		if (reserve_of(spec))
			assert_true(r.warnings > 0);
		/* Everything was destroyed: nothing stays committed. */
		assert_int_equal(r.timeline[t->nevents - 1], 0);
		assert_true(r.peak > 0 && r.mean > 0 && r.mean <= (double)r.peak);
		ds_sim_result_fini(&r);
		ds_sim_free(t);
		unlink(path);
	}
}

/* Two threads: each creates and touches its own stacks, and touches stacks the other created,
 * so that one stack's records sit in two threads' buffers and reach the file in batches, out of
 * time order. The replay still gives back every stack. */
struct shared_stacks {
	dynstack_t *s[8];
	pthread_barrier_t ready, done;
	int failed;
};

static void *toucher(void *arg)
{
	struct shared_stacks *sh = arg;
	uint64_t rng = 99;
	if (dynstack_thread_init())
		sh->failed = 1;
	pthread_barrier_wait(&sh->ready);
	for (int k = 0; k < 40; k++) {
		int i = (int)(splitmix(&rng) % 8);
		size_t depth = 1 + (size_t)(splitmix(&rng) % (32 * KIB));
		*((volatile char *)dynstack_top(sh->s[i]) - depth) = 1;
	}
	pthread_barrier_wait(&sh->done);
	return NULL;
}

static void test_replay_two_threads(void **state)
{
	TAKE_SIGSEGV();
	struct shared_stacks sh = { .failed = 0 };
	struct live_run lr = { .n = 0 };
	struct ds_sim_result r;
	char path[256], err[256];
	dynstack_attr_t attr;
	pthread_t th;

	temp_path(path, sizeof(path), "threads");
	dynstack_attr_init(&attr);
	attr.size = 32 * KIB;
	attr.policy = "step=2";
	assert_int_equal(dynstack_trace_start(path), 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(dynstack_create(&sh.s[i], &attr), 0);
	pthread_barrier_init(&sh.ready, NULL, 2);
	pthread_barrier_init(&sh.done, NULL, 2);
	assert_int_equal(pthread_create(&th, NULL, toucher, &sh), 0);
	pthread_barrier_wait(&sh.ready);
	uint64_t rng = 5;
	for (int k = 0; k < 40; k++) {
		int i = (int)(splitmix(&rng) % 8);
		size_t depth = 1 + (size_t)(splitmix(&rng) % (32 * KIB));
		*((volatile char *)dynstack_top(sh.s[i]) - depth) = 1;
	}
	pthread_barrier_wait(&sh.done);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_false(sh.failed);
	for (int i = 0; i < 8; i++) {
		remember(&lr, sh.s[i]);
		assert_int_equal(dynstack_destroy(sh.s[i]), 0);
	}
	assert_int_equal(dynstack_trace_stop(), 0);
	pthread_barrier_destroy(&sh.ready);
	pthread_barrier_destroy(&sh.done);

	struct ds_sim_trace *t = load_ok(path);
	assert_int_equal(t->lost, 0);
	assert_int_equal(t->orphans, 0);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_agrees("two threads", t, &r, &lr);
	assert_int_equal(r.mismatched, 0);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
	unlink(path);
}

/* ---- predictions, in fresh processes so that learn starts from nothing in both runs */

static int write_live(const char *path, const struct live_run *lr)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	for (size_t i = 0; i < lr->n; i++)
		fprintf(f, "%llu %llu %zu %zu\n", (unsigned long long)lr->st[i].id,
			(unsigned long long)lr->st[i].faults, lr->st[i].peak, lr->st[i].committed);
	return fclose(f) ? -1 : 0;
}

static void read_live(const char *path, struct live_run *lr)
{
	FILE *f = fopen(path, "r");
	unsigned long long id, faults;
	size_t peak, committed;
	assert_non_null(f);
	lr->n = 0;
	while (lr->n < MAX_STACKS &&
	       fscanf(f, "%llu %llu %zu %zu", &id, &faults, &peak, &committed) == 4)
		lr->st[lr->n++] = (struct live){ id, faults, peak, committed };
	fclose(f);
}

/* The child of run_self("workload"): run the workload under SIM_POLICY with a trace into
 * SIM_TRACE, and write what the library said about each stack to SIM_LIVE. */
static int workload_main(void)
{
	const char *spec = getenv("SIM_POLICY"), *trace = getenv("SIM_TRACE");
	const char *out = getenv("SIM_LIVE");
	struct live_run lr = { .n = 0 };

	register_nosy();
	CHECK(spec && trace && out);
	CHECK(dynstack_trace_start(trace) == 0);
	CHECK(workload(spec, reserve_of(spec), &lr) == 0);
	CHECK(dynstack_trace_stop() == 0);
	CHECK(write_live(out, &lr) == 0);
	return 0;
}

static void run_workload(const char *spec, const char *trace, const char *live)
{
	char e1[300], e2[300], e3[300], err[4096];
	int status;
	snprintf(e1, sizeof(e1), "SIM_POLICY=%s", spec);
	snprintf(e2, sizeof(e2), "SIM_TRACE=%s", trace);
	snprintf(e3, sizeof(e3), "SIM_LIVE=%s", live);
	const char *const env[] = { e1, e2, e3, "DYNSTACK_POLICY", "DYNSTACK_TRACE", NULL };
	assert_int_equal(run_self("workload", env, &status, err, sizeof(err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("workload under %s: %s: %s", spec, describe_status(status), err);
}

/* A trace recorded under step=1 holds the first touch of every page: replayed under another
 * policy it gives, stack by stack, what a live run under that policy does. */
static void test_step1_trace_predicts_other_policies(void **state)
{
	static const char *const predict[][2] = {
		{ "step=1", "step=3" },
		{ "step=1", "step=4,populate" },
		{ "step=1", "double" },
		{ "step=1", "double=8k" },
		{ "step=1", "learn" },
		{ "step=1", "learn,initial=12k" },
		{ "step=1", "initial=8k" },
		{ "step=1", "nosy" },
		{ "step=1,overflow=warn:8k", "double,overflow=warn:8k" },
		{ "step=1,overflow=warn:8k", "learn,overflow=warn:8k" },
	};
	char trace[256], live[256], trace2[256], live2[256];

	SKIP_IF_WHOLE();
	struct live_run lr;
	char err[256];

	register_nosy();
	temp_path(trace, sizeof(trace), "step1");
	temp_path(live, sizeof(live), "live1");
	temp_path(trace2, sizeof(trace2), "other");
	temp_path(live2, sizeof(live2), "live2");
	for (size_t i = 0; i < sizeof(predict) / sizeof(*predict); i++) {
		struct ds_policy pol;
		struct ds_sim_result r;
		run_workload(predict[i][0], trace, live);
		run_workload(predict[i][1], trace2, live2);
		read_live(live2, &lr);
		assert_int_equal(ds_policy_parse(predict[i][1], &pol, err, sizeof(err)), 0);

		struct ds_sim_trace *t = load_ok(trace);
		assert_int_equal(ds_sim_coarse_stacks(t), 0);
		assert_int_equal(ds_sim_replay(t, &pol, &r, err, sizeof(err)), 0);
		/* Fresh processes doing the same things hand out the same ids. */
		assert_agrees(predict[i][1], t, &r, &lr);
		assert_int_equal(r.inexact, 0);

		/* And the other run's own trace, replayed as recorded, agrees with both. */
		struct ds_sim_trace *t2 = load_ok(trace2);
		struct ds_sim_result r2;
		assert_int_equal(ds_sim_replay(t2, NULL, &r2, err, sizeof(err)), 0);
		assert_int_equal(r2.mismatched, 0);
		assert_int_equal(r2.faults, r.faults);
		assert_int_equal(r2.warnings, r.warnings);
		assert_int_equal(r2.peak, r.peak);
		ds_sim_result_fini(&r2);
		ds_sim_free(t2);
		ds_sim_result_fini(&r);
		ds_sim_free(t);
	}
	unlink(trace);
	unlink(live);
	unlink(trace2);
	unlink(live2);
}

/* Recorded under step=4, the touches inside the pages step=4 committed early are not in the
 * trace: a step=1 replay is a lower bound, and says so. */
static void test_coarse_recording_is_a_lower_bound(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	char path[256], err[256];
	struct ds_policy step1;
	struct ds_sim_result r;
	dynstack_attr_t attr;
	dynstack_t *s;

	temp_path(path, sizeof(path), "coarse");
	dynstack_attr_init(&attr);
	attr.size = 16 * ps;
	attr.policy = "step=4";
	assert_int_equal(dynstack_trace_start(path), 0);
	assert_int_equal(dynstack_create(&s, &attr), 0);
	/* Every page from the second to the tenth, in order: step=1 faults 9 times. */
	for (size_t p = 2; p <= 10; p++)
		*((volatile char *)dynstack_top(s) - p * ps) = 1;
	assert_int_equal(atomic_load(&s->faults), 3);
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(dynstack_trace_stop(), 0);

	struct ds_sim_trace *t = load_ok(path);
	assert_int_equal(ds_sim_coarse_stacks(t), 1);
	assert_int_equal(ds_policy_parse("step=1", &step1, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, &step1, &r, err, sizeof(err)), 0);
	assert_int_equal(r.faults, 3); /* of the 9 a live step=1 run takes */
	assert_int_equal(r.stacks[0].peak, 10 * ps);
	assert_int_equal(r.inexact, 1);
	assert_true(r.stacks[0].inexact);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
	unlink(path);
}

/* A stack created with attr.initial keeps that commit under every replayed policy; one
 * created without gets the replayed policy's. */
static void test_explicit_initial_is_kept(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	char path[256], err[256];
	struct ds_policy pol;
	struct ds_sim_result r;
	dynstack_attr_t attr;
	dynstack_t *a, *b;

	temp_path(path, sizeof(path), "initial");
	dynstack_attr_init(&attr);
	attr.size = 16 * ps;
	attr.policy = "step=1";
	assert_int_equal(dynstack_trace_start(path), 0);
	attr.initial = 3 * ps;
	assert_int_equal(dynstack_create(&a, &attr), 0);
	attr.initial = 0;
	assert_int_equal(dynstack_create(&b, &attr), 0);
	assert_int_equal(dynstack_destroy(a), 0);
	assert_int_equal(dynstack_destroy(b), 0);
	assert_int_equal(dynstack_trace_stop(), 0);

	struct ds_sim_trace *t = load_ok(path);
	assert_true(t->stacks[0].explicit_ini);
	assert_false(t->stacks[1].explicit_ini);
	assert_int_equal(ds_policy_parse("initial=2", &pol, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, &pol, &r, err, sizeof(err)), 0);
	assert_int_equal(r.stacks[0].initial, 3 * ps);
	assert_int_equal(r.stacks[1].initial, ps);
	ds_sim_result_fini(&r);
	char spec[64];
	snprintf(spec, sizeof(spec), "step=2,initial=%zu", 5 * ps);
	assert_int_equal(ds_policy_parse(spec, &pol, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, &pol, &r, err, sizeof(err)), 0);
	assert_int_equal(r.stacks[0].initial, 3 * ps);
	assert_int_equal(r.stacks[1].initial, 5 * ps);
	/* Two creates and two destroys, nothing else. */
	assert_int_equal(r.syscalls, 4);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
	unlink(path);
}

static void overflowing_body(void *arg)
{
	const void *top = dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	touch_down(top, 64 * KIB);
}

/* overflow=fail: the replay ends the coroutine where the live run did, gives its stack back
 * down to one page as the library does, and counts one overflow. */
static void test_overflow_fail(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	size_t ps = page_size();
	char path[256], err[256];
	struct live_run lr = { .n = 0 };
	struct ds_sim_result r;
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	temp_path(path, sizeof(path), "fail");
	dynstack_attr_init(&attr);
	attr.size = 16 * KIB;
	attr.policy = "step=2,overflow=fail";
	assert_int_equal(dynstack_trace_start(path), 0);
	assert_int_equal(dynstack_coro_create(&c, overflowing_body, NULL, &attr), 0);
	assert_int_equal(dynstack_coro_resume(c), -EOVERFLOW);
	remember(&lr, dynstack_coro_stack(c));
	assert_int_equal(dynstack_coro_destroy(c), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	assert_int_equal(lr.st[0].committed, ps);

	struct ds_sim_trace *t = load_ok(path);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_agrees("overflow=fail", t, &r, &lr);
	assert_int_equal(r.overflows, 1);
	assert_int_equal(r.failed, 1);
	assert_true(r.stacks[0].overflowed);
	assert_int_equal(r.mismatched, 0);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
	unlink(path);
}

/* ---- trims: replayed as the live run made them */

struct trim_job {
	size_t depths[8]; /* how deep each run goes before it yields near the top (0: idle) */
	int ok;
};

static void trim_body(void *arg)
{
	struct trim_job *j = arg;
	const void *top = dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	j->ok = 1;
	for (int k = 0; k < 8; k++) {
		if (j->depths[k] && !touch_down(top, j->depths[k]))
			j->ok = 0;
		dynstack_coro_yield();
	}
}

/* Coroutines that go deep and come back, yield idle, go deep again into what a trim gave back
 * (mis-trims), with the queue flushed now and then; and a stack trimmed by dynstack_trim. */
static int trim_workload(const char *spec, struct live_run *lr)
{
	static const size_t pattern[3][8] = {
		{ 48 * KIB, 0, 0, 56 * KIB, 0, 0, 24 * KIB, 0 },
		{ 32 * KIB, 0, 32 * KIB, 0, 0, 64 * KIB, 0, 0 },
		{ 8 * KIB, 40 * KIB, 0, 0, 40 * KIB, 0, 0, 0 },
	};
	struct trim_job jobs[3];
	dynstack_coro_t *c[3];
	dynstack_attr_t attr;
	dynstack_t *s;

	dynstack_attr_init(&attr);
	attr.size = 96 * KIB;
	attr.policy = spec;
	for (int i = 0; i < 3; i++) {
		memcpy(jobs[i].depths, pattern[i], sizeof(jobs[i].depths));
		if (dynstack_coro_create(&c[i], trim_body, &jobs[i], &attr))
			return -1;
	}
	for (int k = 0; k < 9; k++) {
		for (int i = 0; i < 3; i++)
			if (dynstack_coro_resume(c[i]))
				return -1;
		if (k % 3 == 2 && dynstack_flush())
			return -1;
	}
	if (dynstack_flush())
		return -1;
	for (int i = 0; i < 3; i++) {
		if (!jobs[i].ok || dynstack_coro_status(c[i]) != DYNSTACK_CORO_DEAD)
			return -1;
		remember(lr, dynstack_coro_stack(c[i]));
		if (dynstack_coro_destroy(c[i]))
			return -1;
	}

	/* A runtime's own stack: trimmed synchronously, grown back, trimmed again. */
	if (dynstack_create(&s, &attr))
		return -1;
	char *top = dynstack_top(s);
	for (int round = 0; round < 3; round++) {
		touch_pages_down(top - 40 * KIB, top);
		for (int k = 0; k < 6; k++)
			if (dynstack_trim(s, top - 2 * KIB))
				return -1;
	}
	remember(lr, s);
	return dynstack_destroy(s);
}

/* The trims of a live run replay exactly: the commit after each TRIM is the live one, so the
 * faults that follow (mis-trims included) and every peak and final commit agree. */
static void test_replay_with_trims(void **state)
{
	static const char *const specs[] = {
		"trim=yield:1",
		"step=3,trim=yield:2,margin=8k",
		"double=16k,trim=yield:1",
	};
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();

	for (size_t p = 0; p < sizeof(specs) / sizeof(*specs); p++) {
		struct live_run lr = { .n = 0 };
		struct ds_sim_result r;
		char path[256], err[256];

		temp_path(path, sizeof(path), "trim");
		dynstack_stats_t before = stats_now();
		assert_int_equal(dynstack_trace_start(path), 0);
		assert_int_equal(trim_workload(specs[p], &lr), 0);
		assert_int_equal(dynstack_trace_stop(), 0);
		dynstack_stats_t after = stats_now();
		uint64_t calls =
			after.nr_dynamic_stacks_trim_calls - before.nr_dynamic_stacks_trim_calls;
		uint64_t mistrims =
			after.nr_dynamic_stacks_mistrims - before.nr_dynamic_stacks_mistrims;
		/* The workload does what it is for. */
		assert_true(calls >= 4);
		assert_true(mistrims >= 2);

		struct ds_sim_trace *t = load_ok(path);
		assert_int_equal(t->lost, 0);
		assert_int_equal(t->trims, calls);
		assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
		assert_agrees(specs[p], t, &r, &lr);
		assert_int_equal(r.mismatched, 0);
		assert_int_equal(r.inexact, 0);
		assert_int_equal(r.trims, calls);
		assert_int_equal(r.faults,
				 after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults);
		assert_int_equal(r.timeline[t->nevents - 1], 0);
		ds_sim_result_fini(&r);

		/* Without the TRIM records the same replay would not agree: the faults after
		 * each trim are what the trims caused. */
		struct ds_sim_trace *nt = load_ok(path);
		size_t n = 0;
		for (size_t i = 0; i < nt->nevents; i++)
			if (nt->events[i].kind != DS_SIM_TRIM)
				nt->events[n++] = nt->events[i];
		nt->nevents = n;
		assert_int_equal(ds_sim_replay(nt, NULL, &r, err, sizeof(err)), 0);
		assert_true(r.mismatched > 0);
		assert_true(r.faults <
			    after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults);
		ds_sim_result_fini(&r);
		ds_sim_free(nt);

		/* Under another policy the trims are the live ones all the same. */
		struct ds_policy off;
		assert_int_equal(ds_policy_parse("step=1,trim=off", &off, err, sizeof(err)), 0);
		assert_int_equal(ds_sim_replay(t, &off, &r, err, sizeof(err)), 0);
		assert_true(r.trims > 0);
		ds_sim_result_fini(&r);
		ds_sim_free(t);
		unlink(path);
	}
}

/* ---- the engine on traces built by hand */

struct tbuf {
	unsigned char data[4096];
	size_t len;
};

static void put(struct tbuf *b, const void *rec, size_t len)
{
	size_t padded = (len + 7) & ~(size_t)7;
	assert_true(b->len + padded <= sizeof(b->data));
	memset(b->data + b->len, 0, padded);
	memcpy(b->data + b->len, rec, len);
	b->len += padded;
}

static void put_header(struct tbuf *b)
{
	struct ds_trace_header h;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, DS_TRACE_MAGIC, 8);
	h.version = DS_TRACE_VERSION;
	h.header_size = sizeof(h);
	h.page_size = 4096;
	h.backend = DYNSTACK_BACKEND_GUARD;
	put(b, &h, sizeof(h));
}

/* A record with text after its fixed part (POLICY, CREATE), assembled in a buffer. */
static void put_text(struct tbuf *b, const void *fixed, size_t fixed_len, const char *text)
{
	unsigned char rec[256];
	size_t n = strlen(text);
	assert_true(fixed_len + n <= sizeof(rec));
	memcpy(rec, fixed, fixed_len);
	memcpy(rec + fixed_len, text, n);
	put(b, rec, fixed_len + n);
}

static void put_policy(struct tbuf *b, uint32_t id, const char *spec)
{
	struct ds_ev_policy r;
	size_t n = strlen(spec);
	memset(&r, 0, sizeof(r));
	r.h.type = DS_EV_POLICY;
	r.h.len = (uint16_t)((sizeof(r) + n + 7) & ~(size_t)7);
	r.id = id;
	r.spec_len = (uint32_t)n;
	put_text(b, &r, sizeof(r), spec);
}

static void put_create(struct tbuf *b, uint64_t time, uint64_t stack, uint64_t slot,
		       const char *name, uint64_t learned)
{
	struct ds_ev_create r;
	size_t n = strlen(name);
	memset(&r, 0, sizeof(r));
	r.h.type = DS_EV_CREATE;
	r.h.len = (uint16_t)((sizeof(r) + n + 7) & ~(size_t)7);
	r.h.time_ns = time;
	r.h.stack = stack;
	r.size = 16 * KIB;
	r.committed = 4 * KIB;
	r.slot = slot;
	r.learned = learned;
	r.name_len = (uint32_t)n;
	put_text(b, &r, sizeof(r), name);
}

static void put_fault(struct tbuf *b, uint64_t time, uint64_t stack, size_t depth, size_t committed)
{
	struct ds_ev_fault r;
	memset(&r, 0, sizeof(r));
	r.h.type = DS_EV_FAULT;
	r.h.len = sizeof(r);
	r.h.time_ns = time;
	r.h.stack = stack;
	r.depth = depth;
	r.committed = committed;
	put(b, &r, sizeof(r));
}

static void put_destroy(struct tbuf *b, uint64_t time, uint64_t stack, size_t peak)
{
	struct ds_ev_destroy r;
	memset(&r, 0, sizeof(r));
	r.h.type = DS_EV_DESTROY;
	r.h.len = sizeof(r);
	r.h.time_ns = time;
	r.h.stack = stack;
	r.peak = peak;
	r.committed = peak;
	put(b, &r, sizeof(r));
}

static void put_trim(struct tbuf *b, uint64_t time, uint64_t stack, size_t before, size_t after)
{
	struct ds_ev_fault r;
	memset(&r, 0, sizeof(r));
	r.h.type = DS_EV_TRIM;
	r.h.len = sizeof(r);
	r.h.time_ns = time;
	r.h.stack = stack;
	r.depth = before;
	r.committed = after;
	put(b, &r, sizeof(r));
}

/* Records out of time order (another thread's batch first), an unknown stack, and a mean that
 * can be worked out by hand. */
static void test_synthetic_timeline(void **state)
{
	struct tbuf b = { .len = 0 };
	struct ds_sim_trace *t;
	struct ds_sim_result r;
	char err[256];

	put_header(&b);
	put_policy(&b, 0, "step=1");
	put_fault(&b, 100, 1, 8 * KIB, 8 * KIB); /* flushed before the CREATE */
	put_fault(&b, 50, 99, 8 * KIB, 8 * KIB); /* stack 99: created before tracing */
	put_create(&b, 0, 1, 0x100000, "a", 0);
	put_destroy(&b, 200, 1, 8 * KIB);
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), 0);
	assert_int_equal(t->nstacks, 1);
	assert_int_equal(t->nevents, 3);
	assert_int_equal(t->orphans, 1);
	assert_int_equal(t->stacks[0].faults, 1);
	assert_int_equal(t->stacks[0].peak, 8 * KIB);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_int_equal(r.faults, 1);
	assert_int_equal(r.peak, 8 * KIB);
	/* 4 KiB for 100 ns, then 8 KiB for 100 ns. */
	assert_true(r.mean == 6 * KIB);
	assert_int_equal(r.syscalls, 3);
	assert_int_equal(r.mismatched, 0);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
}

/* learn's history from before the trace started comes from CREATE's learned; inside the trace,
 * from the replay's own destroys. */
static void test_synthetic_learn_history(void **state)
{
	struct tbuf b = { .len = 0 };
	struct ds_sim_trace *t;
	struct ds_sim_result r;
	char err[256];

	put_header(&b);
	put_policy(&b, 0, "learn");
	/* Stack 1: name "x" learned 12 KiB before tracing; one fault commits all of it. */
	put_create(&b, 0, 1, 0x100000, "x", 12 * KIB);
	put_fault(&b, 10, 1, 8 * KIB, 12 * KIB);
	put_destroy(&b, 20, 1, 12 * KIB);
	/* Stack 2, same slot, another name: learns the 12 KiB stack 1 left in the slot. */
	put_create(&b, 30, 2, 0x100000, "y", 12 * KIB);
	put_fault(&b, 40, 2, 8 * KIB, 12 * KIB);
	put_destroy(&b, 50, 2, 12 * KIB);
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_int_equal(r.mismatched, 0);
	assert_int_equal(r.stacks[0].learned, 12 * KIB);
	assert_int_equal(r.stacks[1].learned, 12 * KIB);
	assert_int_equal(r.stacks[1].peak, 12 * KIB);
	ds_sim_result_fini(&r);

	/* Under step=1 stack 1 peaks at 8 KiB, and that is what stack 2 learns. */
	struct ds_policy step1;
	assert_int_equal(ds_policy_parse("step=1", &step1, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, &step1, &r, err, sizeof(err)), 0);
	assert_int_equal(r.stacks[0].peak, 8 * KIB);
	assert_int_equal(r.stacks[1].learned, 8 * KIB);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
}

/* A warm stack from the cache is created with what its last user committed, its reserve
 * included: such a CREATE loads and replays with that commit. Past size + reserve it is
 * refused. */
static void test_synthetic_warm_in_reserve(void **state)
{
	struct tbuf b = { .len = 0 };
	struct ds_sim_trace *t;
	struct ds_sim_result r;
	struct ds_ev_create c;
	char err[256];

	put_header(&b);
	put_policy(&b, 0, "step=1,overflow=warn:8k");
	memset(&c, 0, sizeof(c));
	c.h.type = DS_EV_CREATE;
	c.h.len = sizeof(c);
	c.h.stack = 1;
	c.size = 16 * KIB;
	c.reserve = 8 * KIB;
	c.committed = 20 * KIB;
	c.slot = 0x100000;
	put(&b, &c, sizeof(c));
	put_destroy(&b, 10, 1, 20 * KIB);
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_int_equal(r.mismatched, 0);
	assert_int_equal(r.stacks[0].initial, 20 * KIB);
	ds_sim_result_fini(&r);
	ds_sim_free(t);

	b.len = 0;
	put_header(&b);
	put_policy(&b, 0, "step=1,overflow=warn:8k");
	c.committed = 28 * KIB;
	put(&b, &c, sizeof(c));
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), -EPROTO);
	assert_true(contains(err, "beyond size and reserve"));
}

/* A TRIM lowers the replayed commit to the live one, with one decommit; the fault after it is
 * replayed from there. Where the replay has less committed, it changes nothing. */
static void test_synthetic_trim(void **state)
{
	struct tbuf b = { .len = 0 };
	struct ds_sim_trace *t;
	struct ds_sim_result r;
	struct ds_policy pol;
	char err[256];

	put_header(&b);
	put_policy(&b, 0, "step=1");
	put_create(&b, 0, 1, 0x100000, "a", 0);
	put_fault(&b, 10, 1, 16 * KIB, 16 * KIB);
	put_trim(&b, 20, 1, 16 * KIB, 8 * KIB);
	put_fault(&b, 30, 1, 12 * KIB, 12 * KIB);
	put_destroy(&b, 40, 1, 16 * KIB);
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), 0);
	assert_int_equal(t->trims, 1);
	assert_int_equal(t->stacks[0].trims, 1);
	assert_int_equal(t->stacks[0].faults, 2);
	assert_int_equal(t->stacks[0].deepest, 16 * KIB); /* a TRIM is no touch */
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_int_equal(r.faults, 2);
	assert_int_equal(r.trims, 1);
	assert_int_equal(r.stacks[0].trims, 1);
	assert_int_equal(r.stacks[0].peak, 16 * KIB);
	assert_int_equal(r.stacks[0].committed, 12 * KIB);
	/* create, fault, trim, fault, destroy */
	assert_int_equal(r.timeline[1], 16 * KIB);
	assert_int_equal(r.timeline[2], 8 * KIB);
	assert_int_equal(r.timeline[3], 12 * KIB);
	assert_int_equal(r.timeline[4], 0);
	assert_int_equal(r.syscalls, 5); /* create, two faults, the trim, destroy */
	assert_int_equal(r.mismatched, 0);
	assert_int_equal(r.inexact, 0);
	ds_sim_result_fini(&r);
	/* double: 16 KiB at the first fault, 8 after the trim, 16 again at the second. */
	assert_int_equal(ds_policy_parse("double", &pol, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, &pol, &r, err, sizeof(err)), 0);
	assert_int_equal(r.faults, 2);
	assert_int_equal(r.trims, 1);
	assert_int_equal(r.stacks[0].committed, 16 * KIB);
	ds_sim_result_fini(&r);
	ds_sim_free(t);

	/* Recorded with initial=12k, trimmed to 8k without a fault; replayed under step=1 the
	 * stack never had more than 4k: the trim does nothing there, and costs nothing. */
	b.len = 0;
	put_header(&b);
	put_policy(&b, 0, "step=1,initial=12k");
	size_t created_at = b.len;
	put_create(&b, 0, 1, 0x100000, "a", 0);
	((struct ds_ev_create *)(b.data + created_at))->committed = 12 * KIB;
	put_trim(&b, 10, 1, 12 * KIB, 8 * KIB);
	put_destroy(&b, 20, 1, 12 * KIB);
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), 0);
	assert_false(t->stacks[0].explicit_ini);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), 0);
	assert_int_equal(r.trims, 1);
	assert_int_equal(r.stacks[0].committed, 8 * KIB);
	ds_sim_result_fini(&r);
	assert_int_equal(ds_policy_parse("step=1", &pol, err, sizeof(err)), 0);
	assert_int_equal(ds_sim_replay(t, &pol, &r, err, sizeof(err)), 0);
	assert_int_equal(r.trims, 0);
	assert_int_equal(r.syscalls, 2);
	assert_int_equal(r.stacks[0].committed, 4 * KIB);
	ds_sim_result_fini(&r);
	ds_sim_free(t);
}

/* The reader knows TRIM: its name, its length, its stack and its sizes are checked. */
static void test_reader_trim(void **state)
{
	struct tbuf b = { .len = 0 };
	struct ds_trace_reader *rd;
	const struct ds_ev_head *h;
	char err[256];
	size_t at;
	int rc;

	put_header(&b);
	put_policy(&b, 0, "step=1");
	put_create(&b, 0, 1, 0x100000, "a", 0);
	at = b.len;
	put_trim(&b, 10, 1, 16 * KIB, 8 * KIB);
	assert_int_equal(ds_trace_open_mem(b.data, b.len, &rd, err, sizeof(err)), 0);
	size_t trims = 0;
	while ((rc = ds_trace_next(rd, &h, err, sizeof(err))) == 1)
		trims += h->type == DS_EV_TRIM;
	assert_int_equal(rc, 0);
	assert_int_equal(trims, 1);
	ds_trace_close(rd);

	static const struct {
		size_t field; /* byte offset into the record */
		uint64_t value;
		unsigned width;
		const char *says;
	} bad[] = {
		{ offsetof(struct ds_ev_head, len), 40, 2,
		  "TRIM record of 40 bytes, below its 48" },
		{ offsetof(struct ds_ev_head, stack), 0, 8, "TRIM record for stack id 0" },
		{ offsetof(struct ds_ev_fault, committed), 20 * KIB, 8,
		  "TRIM leaves 20480 committed, above the 16384 before it" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		struct tbuf m = b;
		memcpy(m.data + at + bad[i].field, &bad[i].value, bad[i].width);
		assert_int_equal(ds_trace_open_mem(m.data, m.len, &rd, err, sizeof(err)), 0);
		while ((rc = ds_trace_next(rd, &h, err, sizeof(err))) == 1)
			;
		ds_trace_close(rd);
		assert_int_equal(rc, -EPROTO);
		if (!contains(err, bad[i].says))
			fail_msg("case %zu: \"%s\", expected \"%s\"", i, err, bad[i].says);
	}
}

/* A policy the trace names but this process cannot replay is refused with its name. */
static void test_unregistered_policy(void **state)
{
	struct tbuf b = { .len = 0 };
	struct ds_sim_trace *t;
	struct ds_sim_result r;
	char err[256];

	put_header(&b);
	put_policy(&b, 0, "grow=nobody-has-this,initial=8k");
	put_create(&b, 0, 1, 0x100000, "x", 0);
	assert_int_equal(ds_sim_load_mem(b.data, b.len, &t, err, sizeof(err)), 0);
	assert_int_not_equal(t->policies[0].parse_rc, 0);
	/* Its initial is still known: the 4 KiB the stack got is not the policy's 8 KiB. */
	assert_true(t->stacks[0].explicit_ini);
	assert_int_equal(ds_sim_replay(t, NULL, &r, err, sizeof(err)), -EINVAL);
	assert_true(contains(err, "grow=nobody-has-this"));
	ds_sim_free(t);
}

static void test_bad_traces(void **state)
{
	struct ds_sim_trace *t = (void *)1;
	char err[256] = "", path[256];
	struct tbuf b = { .len = 0 };

	assert_int_equal(ds_sim_load("/nonexistent/trace", &t, err, sizeof(err)), -ENOENT);
	assert_null(t);
	assert_true(contains(err, "No such file"));
	assert_int_equal(ds_sim_load_mem("hello, world\n", 13, &t, err, sizeof(err)), -EPROTO);
	assert_true(contains(err, "not a libdynstack trace"));

	put_header(&b);
	put_policy(&b, 0, "step=1");
	put_create(&b, 0, 1, 0x100000, "x", 0);
	assert_int_equal(ds_sim_load_mem(b.data, b.len - 8, &t, err, sizeof(err)), -EPROTO);
	assert_null(t);
	assert_true(contains(err, "truncated"));

	/* Stack 1 destroyed twice. */
	put_destroy(&b, 10, 1, 4 * KIB);
	put_destroy(&b, 20, 1, 4 * KIB);
	temp_path(path, sizeof(path), "bad");
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(b.data, 1, b.len, f), b.len);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(ds_sim_load(path, &t, err, sizeof(err)), -EPROTO);
	assert_true(contains(err, "destroyed twice"));
	unlink(path);
}

/* ---- the command line */

/* build/tests/test_sim -> build/tools/dynstack-sim */
static bool tool_path(char *buf, size_t len)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return false;
	self[n] = '\0';
	char *slash = strrchr(self, '/');
	if (!slash)
		return false;
	*slash = '\0';
	snprintf(buf, len, "%s/../tools/dynstack-sim", self);
	return access(buf, X_OK) == 0;
}

/* Run the tool with argv (NULL-ended, argv[0] ignored) and PATH set to path (NULL: as is);
 * its stdout and stderr go to out. Returns the exit status, or -1 for a signal. */
static int run_tool(const char *tool, const char *path, char *const *argv, char *out, size_t outlen)
{
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	fflush(stdout);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		dup2(fds[1], STDERR_FILENO);
		close(fds[0]);
		close(fds[1]);
		if (path)
			setenv("PATH", path, 1);
		execv(tool, argv);
		_exit(127);
	}
	close(fds[1]);
	size_t got = 0;
	ssize_t n;
	while ((n = read(fds[0], out + got, outlen - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(fds[0]);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_command_line(void **state)
{
	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	char tool[4200], trace[256], junk[256], csv[256], plot[300], out[16384];
	struct live_run lr = { .n = 0 };

	if (!tool_path(tool, sizeof(tool))) {
		print_message("dynstack-sim not found next to the tests: skipped\n");
		skip();
	}
	temp_path(trace, sizeof(trace), "cli");
	temp_path(junk, sizeof(junk), "junk");
	temp_path(csv, sizeof(csv), "csv");
	snprintf(plot, sizeof(plot), "%s.png", csv);
	assert_int_equal(dynstack_trace_start(trace), 0);
	assert_int_equal(direct_workload("step=1", 0, &lr), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	FILE *f = fopen(junk, "w");
	assert_non_null(f);
	fputs("not a trace\n", f);
	fclose(f);

	char *help[] = { "dynstack-sim", "--help", NULL };
	assert_int_equal(run_tool(tool, NULL, help, out, sizeof(out)), 0);
	assert_true(contains(out, "usage: dynstack-sim"));

	char *bad_spec[] = { "dynstack-sim", trace, "step=1", "step=0", NULL };
	assert_int_equal(run_tool(tool, NULL, bad_spec, out, sizeof(out)), 2);
	assert_true(contains(out, "policy \"step=0\": step=N needs N pages"));

	char *bad_trace[] = { "dynstack-sim", junk, NULL };
	assert_int_equal(run_tool(tool, NULL, bad_trace, out, sizeof(out)), 2);
	assert_true(contains(out, "not a libdynstack trace"));

	char *no_trace[] = { "dynstack-sim", NULL };
	assert_int_equal(run_tool(tool, NULL, no_trace, out, sizeof(out)), 2);

	char *good[] = { "dynstack-sim", "--fault-ns", "2000",	 "--page-ns", "900", "--csv", csv,
			 trace,		 "recorded",   "step=2", NULL };
	assert_int_equal(run_tool(tool, NULL, good, out, sizeof(out)), 0);
	assert_true(contains(out, "recorded under: step=1 (12 stacks)"));
	assert_true(contains(out, "\nstep=2 "));
	if (contains(out, "warning:"))
		fail_msg("%s", out);
	char line[512];
	f = fopen(csv, "r");
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	assert_true(contains(line, "policy,peak_bytes,mean_bytes,faults"));
	assert_non_null(fgets(line, sizeof(line), f));
	assert_true(contains(line, "\"recorded\","));
	fclose(f);

	/* A trace with trims: the summary counts them, and the replay agrees with no warning. */
	char trims[256];
	temp_path(trims, sizeof(trims), "cli-trim");
	lr.n = 0;
	assert_int_equal(dynstack_trace_start(trims), 0);
	assert_int_equal(trim_workload("trim=yield:1", &lr), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	char *trimmed[] = { "dynstack-sim", trims, "recorded", "step=2", NULL };
	assert_int_equal(run_tool(tool, NULL, trimmed, out, sizeof(out)), 0);
	assert_true(contains(out, " trims;"));
	if (contains(out, "warning:"))
		fail_msg("%s", out);
	unlink(trims);

	/* gnuplot is optional: without it the table still comes, with a clear message. */
	char *plotting[] = { "dynstack-sim", "--plot", plot, trace, NULL };
	assert_int_equal(run_tool(tool, "/nonexistent", plotting, out, sizeof(out)), 1);
	assert_true(contains(out, "--plot needs gnuplot, which is not installed"));
	assert_true(contains(out, "peak KiB"));

	unlink(trace);
	unlink(junk);
	unlink(csv);
	unlink(plot);
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "workload"))
		return workload_main();

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_replay_as_recorded),
		cmocka_unit_test(test_replay_two_threads),
		cmocka_unit_test(test_step1_trace_predicts_other_policies),
		cmocka_unit_test(test_coarse_recording_is_a_lower_bound),
		cmocka_unit_test(test_explicit_initial_is_kept),
		cmocka_unit_test(test_overflow_fail),
		cmocka_unit_test(test_replay_with_trims),
		cmocka_unit_test(test_synthetic_timeline),
		cmocka_unit_test(test_synthetic_learn_history),
		cmocka_unit_test(test_synthetic_warm_in_reserve),
		cmocka_unit_test(test_synthetic_trim),
		cmocka_unit_test(test_reader_trim),
		cmocka_unit_test(test_unregistered_policy),
		cmocka_unit_test(test_bad_traces),
		cmocka_unit_test(test_command_line),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
