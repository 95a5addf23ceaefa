/* Tests of event traces (src/trace.c, src/trace-read.c): what the library
 * records about real stacks and faults, the per-thread buffers under
 * threads, overflow, nesting and fork, and a reader that refuses every
 * malformed input with -EPROTO and a reason. White-box: it calls the hidden
 * writer hooks and the reader directly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"
#include "policy.h"
#include "trace.h"

/* Records only tests emit: readers pass unknown types through. */
#define EV_MARK 100
#define EV_BIG 101

struct mark {
	struct ds_ev_head h;
	uint64_t seq;
};

/* ---- a trace read back whole */

union rec {
	struct ds_ev_head h;
	struct ds_ev_create create;
	struct ds_ev_fault fault;
	struct ds_ev_destroy destroy;
	struct ds_ev_lost lost;
	struct ds_ev_policy policy;
	struct mark mark;
	unsigned char raw[256]; /* the first bytes of longer records */
};

struct trace {
	struct ds_trace_header hdr;
	union rec *recs;
	size_t n;
};

static char errbuf[512];

/* Read path to its clean end; fail the test with the reader's reason if it
 * does not get there. */
static void load_trace(const char *path, struct trace *t)
{
	struct ds_trace_reader *r;
	const struct ds_ev_head *h;
	size_t cap = 0;
	int rc;

	memset(t, 0, sizeof(*t));
	errbuf[0] = '\0';
	rc = ds_trace_open(path, &r, errbuf, sizeof(errbuf));
	if (rc)
		fail_msg("ds_trace_open(%s) = %d: %s", path, rc, errbuf);
	t->hdr = *ds_trace_header(r);
	while ((rc = ds_trace_next(r, &h, errbuf, sizeof(errbuf))) == 1) {
		if (t->n == cap) {
			cap = cap ? cap * 2 : 256;
			t->recs = realloc(t->recs, cap * sizeof(*t->recs));
			assert_non_null(t->recs);
		}
		memset(&t->recs[t->n], 0, sizeof(t->recs[0]));
		memcpy(&t->recs[t->n], h, h->len < sizeof(union rec) ? h->len : sizeof(union rec));
		t->n++;
	}
	ds_trace_close(r);
	if (rc)
		fail_msg("%s: ds_trace_next = %d after %zu records: %s", path, rc, t->n, errbuf);
}

static size_t count_type(const struct trace *t, uint16_t type, uint64_t stack)
{
	size_t n = 0;
	for (size_t i = 0; i < t->n; i++)
		n += t->recs[i].h.type == type && (!stack || t->recs[i].h.stack == stack);
	return n;
}

static const union rec *find_type(const struct trace *t, uint16_t type, uint64_t stack)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->recs[i].h.type == type && t->recs[i].h.stack == stack)
			return &t->recs[i];
	return NULL;
}

/* Records that went through ds_trace_emit_sigsafe: all but POLICY and LOST. */
static size_t count_emitted(const struct trace *t)
{
	size_t n = 0;
	for (size_t i = 0; i < t->n; i++)
		n += t->recs[i].h.type != DS_EV_POLICY && t->recs[i].h.type != DS_EV_LOST;
	return n;
}

static uint64_t sum_lost(const struct trace *t)
{
	uint64_t n = 0;
	for (size_t i = 0; i < t->n; i++)
		if (t->recs[i].h.type == DS_EV_LOST)
			n += t->recs[i].lost.count;
	return n;
}

static void temp_path(char *buf, size_t len, const char *what)
{
	const char *dir = getenv("TMPDIR");
	snprintf(buf, len, "%s/ds-trace-%ld-%s", dir && *dir ? dir : "/tmp", (long)getpid(), what);
}

static void emit_mark(uint64_t stack, uint64_t seq)
{
	struct mark m;
	memset(&m, 0, sizeof(m));
	m.h.type = EV_MARK;
	m.h.len = sizeof(m);
	m.h.stack = stack;
	m.seq = seq;
	ds_trace_emit_sigsafe(&m);
}

static void emit_big(uint16_t len)
{
	static uint64_t buf[8192 / 8];
	struct ds_ev_head *h = (struct ds_ev_head *)buf;
	memset(buf, 0, sizeof(buf));
	h->type = EV_BIG;
	h->len = len;
	ds_trace_emit_sigsafe(buf);
}

static void set_up_thread(void)
{
	assert_int_equal(dynstack_thread_init(), 0);
	assert_int_equal(ds_trace_thread_init(), 0);
}

/* ---- the public calls and their errors */

static void test_start_twice_busy(void **state)
{
	char a[256], b[256];
	temp_path(a, sizeof(a), "busy-a");
	temp_path(b, sizeof(b), "busy-b");

	assert_int_equal(dynstack_trace_start(a), 0);
	assert_int_equal(atomic_load(&ds_trace_on), 1);
	assert_int_equal(dynstack_trace_start(b), -EBUSY);
	assert_int_equal(dynstack_trace_start(a), -EBUSY);
	assert_int_equal(access(b, F_OK), -1); /* the refused start created nothing */
	assert_int_equal(dynstack_trace_stop(), 0);
	assert_int_equal(atomic_load(&ds_trace_on), 0);
	unlink(a);
}

static void test_stop_flush_when_off(void **state)
{
	assert_int_equal(dynstack_trace_stop(), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	assert_int_equal(dynstack_trace_flush(), 0);
	assert_int_equal(atomic_load(&ds_trace_on), 0);
}

static void test_bad_path(void **state)
{
	errno = 1234;
	assert_int_equal(dynstack_trace_start("/nonexistent-dir-for-trace/x/trace"), -ENOENT);
	assert_int_equal(errno, 1234);
	assert_int_equal(dynstack_trace_start("/"), -EISDIR);
	assert_int_equal(dynstack_trace_start(""), -ENOENT);
	assert_int_equal(dynstack_trace_start(NULL), -EINVAL);
	assert_int_equal(atomic_load(&ds_trace_on), 0);
	/* A failed start leaves nothing half open: a good one still works. */
	char p[256];
	temp_path(p, sizeof(p), "after-bad");
	assert_int_equal(dynstack_trace_start(p), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	unlink(p);
}

/* ---- the header and the policies */

static void test_header_and_policies(void **state)
{
	char p[256];
	struct trace t;
	dynstack_stats_t st = stats_now();
	temp_path(p, sizeof(p), "header");

	assert_int_equal(dynstack_trace_start(p), 0);
	/* Not tracing before: nothing. Tracing: written at once, not buffered,
	 * and an id already in the trace is not written again. */
	ds_trace_policy(40, "step=40");
	ds_trace_policy(40, "step=40");
	ds_trace_policy(41, "");
	load_trace(p, &t); /* the file as it stands, mid-trace */
	assert_int_equal(count_type(&t, DS_EV_POLICY, 0), ds_policy_count() + 2);
	free(t.recs);
	assert_int_equal(dynstack_trace_stop(), 0);
	ds_trace_policy(42, "step=42");

	load_trace(p, &t);
	assert_memory_equal(t.hdr.magic, DS_TRACE_MAGIC, 8);
	assert_int_equal(t.hdr.version, DS_TRACE_VERSION);
	assert_int_equal(t.hdr.header_size, sizeof(struct ds_trace_header));
	assert_int_equal(t.hdr.page_size, page_size());
	assert_int_equal(t.hdr.backend, st.backend);
	assert_int_equal(t.hdr.default_policy, ds_policy_default()->id);
	assert_true(t.hdr.start_ns > 0);
	for (uint32_t id = 0; id < ds_policy_count(); id++) {
		const struct ds_policy *pol = ds_policy_by_id(id);
		size_t seen = 0;
		for (size_t i = 0; i < t.n; i++) {
			const struct ds_ev_policy *e = &t.recs[i].policy;
			if (e->h.type != DS_EV_POLICY || e->id != id)
				continue;
			seen++;
			assert_int_equal(e->spec_len, strlen(pol->spec));
			assert_memory_equal(e->spec, pol->spec, e->spec_len);
			assert_int_equal(e->h.len, DS_EV_LEN(sizeof(*e), e->spec_len));
			assert_int_equal(e->h.tid, thread_id());
		}
		assert_int_equal(seen, 1);
	}
	size_t n40 = 0, n41 = 0, n42 = 0;
	for (size_t i = 0; i < t.n; i++) {
		if (t.recs[i].h.type != DS_EV_POLICY)
			continue;
		n40 += t.recs[i].policy.id == 40 &&
		       !memcmp(t.recs[i].policy.spec, "step=40", t.recs[i].policy.spec_len);
		n41 += t.recs[i].policy.id == 41 && t.recs[i].policy.spec_len == 0;
		n42 += t.recs[i].policy.id == 42;
	}
	assert_int_equal(n40, 1);
	assert_int_equal(n41, 1);
	assert_int_equal(n42, 0);
	free(t.recs);
	unlink(p);
}

/* ---- real stacks, real faults */

static void test_round_trip(void **state)
{
	const size_t ps = page_size();
	const size_t pages = 10;
	char p[256], spec[DS_SPEC_MAX];
	dynstack_attr_t attr;
	dynstack_t *a, *b;
	struct trace t;

	TAKE_SIGSEGV();
	SKIP_IF_WHOLE();
	set_up_thread();
	temp_path(p, sizeof(p), "round-trip");
	assert_true(dynstack_policy_get(spec, sizeof(spec)) > 0);
	dynstack_stats_t before = stats_now();
	assert_int_equal(dynstack_trace_start(p), 0);

	dynstack_attr_init(&attr);
	attr.size = 64 * 1024;
	attr.name = "trace-a";
	assert_int_equal(dynstack_create(&a, &attr), 0);
	attr.name = NULL;
	attr.size = 0;
	assert_int_equal(dynstack_create(&b, &attr), 0);
	size_t committed0 = dynstack_committed(a);
	/* The faults are the stack's by address, whoever touches the pages. */
	char *top = dynstack_top(a);
	touch_pages_down(top - pages * ps, top);
	size_t peak = dynstack_peak(a);
	assert_int_equal(dynstack_committed(a), pages * ps);
	uint64_t ida = dynstack_id(a), idb = dynstack_id(b);
	assert_int_equal(dynstack_destroy(a), 0);
	assert_int_equal(dynstack_destroy(b), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	dynstack_stats_t after = stats_now();

	load_trace(p, &t);
	const union rec *c = find_type(&t, DS_EV_CREATE, ida);
	assert_non_null(c);
	assert_int_equal(c->create.size, 64 * 1024);
	assert_int_equal(c->create.committed, committed0);
	assert_int_equal(c->create.name_len, strlen("trace-a"));
	assert_memory_equal(c->create.name, "trace-a", strlen("trace-a"));
	assert_int_equal(c->h.tid, thread_id());
	/* Its policy is the default, named by a POLICY record. */
	size_t named = 0;
	for (size_t i = 0; i < t.n; i++)
		named += t.recs[i].h.type == DS_EV_POLICY &&
			 t.recs[i].policy.id == c->create.policy &&
			 t.recs[i].policy.spec_len == strlen(spec) &&
			 !memcmp(t.recs[i].policy.spec, spec, strlen(spec));
	assert_int_equal(named, 1);
	c = find_type(&t, DS_EV_CREATE, idb);
	assert_non_null(c);
	assert_int_equal(c->create.name_len, 0);

	/* One fault per page below the first, each one page deeper. */
	size_t faults = count_type(&t, DS_EV_FAULT, ida);
	assert_int_equal(faults, pages - committed0 / ps);
	size_t depth = committed0, k = 0;
	uint64_t last = 0;
	for (size_t i = 0; i < t.n; i++) {
		const union rec *r = &t.recs[i];
		if (r->h.tid)
			assert_int_equal(r->h.tid, thread_id());
		if (r->h.type != DS_EV_POLICY) {
			assert_true(r->h.time_ns >= last); /* one thread: in time order */
			last = r->h.time_ns;
		}
		if (r->h.type != DS_EV_FAULT || r->h.stack != ida)
			continue;
		depth += ps;
		k++;
		assert_int_equal(r->fault.depth, depth);
		assert_int_equal(r->fault.committed, depth);
		assert_true(r->fault.ns > 0);
	}
	assert_int_equal(k, faults);
	c = find_type(&t, DS_EV_DESTROY, ida);
	assert_non_null(c);
	assert_int_equal(c->destroy.peak, peak);
	assert_int_equal(c->destroy.committed, pages * ps);
	assert_non_null(find_type(&t, DS_EV_DESTROY, idb));

	/* The file and the counters tell the same story. */
	assert_int_equal(count_type(&t, DS_EV_CREATE, 0),
			 after.nr_dynamic_stacks_created - before.nr_dynamic_stacks_created);
	assert_int_equal(count_type(&t, DS_EV_FAULT, 0),
			 after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults);
	assert_int_equal(count_type(&t, DS_EV_DESTROY, 0),
			 after.nr_dynamic_stacks_destroyed - before.nr_dynamic_stacks_destroyed);
	assert_int_equal(count_emitted(&t), after.nr_dynamic_stacks_trace_events -
						    before.nr_dynamic_stacks_trace_events);
	assert_int_equal(after.nr_dynamic_stacks_trace_dropped,
			 before.nr_dynamic_stacks_trace_dropped);
	assert_int_equal(count_type(&t, DS_EV_LOST, 0), 0);
	free(t.recs);
	unlink(p);
}

/* ---- two threads at once */

#define THREAD_MARKS 20000
#define THREAD_PAGES 8

struct worker {
	long tid;
	uint64_t stack;
	int rc;
	pthread_barrier_t *go;
};

static void *worker_fn(void *arg)
{
	struct worker *w = arg;
	const size_t ps = page_size();
	dynstack_attr_t attr;
	dynstack_t *s;

	w->tid = thread_id();
	if (dynstack_thread_init() || ds_trace_thread_init()) {
		w->rc = 1;
		return NULL;
	}
	dynstack_attr_init(&attr);
	attr.size = 64 * 1024;
	if (dynstack_create(&s, &attr)) {
		w->rc = 2;
		return NULL;
	}
	w->stack = dynstack_id(s);
	char *top = dynstack_top(s);
	pthread_barrier_wait(w->go);
	for (uint64_t i = 0; i < THREAD_MARKS; i++) {
		/* A fault now and then among the records, on this thread. */
		if (i % (THREAD_MARKS / THREAD_PAGES) == 0) {
			size_t page = (size_t)(i / (THREAD_MARKS / THREAD_PAGES)) + 2;
			top[-(ptrdiff_t)(page * ps)] = 1;
		}
		emit_mark(w->stack, i);
		if (i % 256 == 0)
			ds_trace_flush_maybe();
	}
	dynstack_destroy(s);
	/* No flush: what is left goes out when the thread exits. */
	return NULL;
}

static void test_two_threads(void **state)
{
	pthread_barrier_t go;
	pthread_t th[2];
	struct worker w[2];
	struct trace t;
	char p[256];

	TAKE_SIGSEGV();
	temp_path(p, sizeof(p), "threads");
	dynstack_stats_t before = stats_now();
	assert_int_equal(dynstack_trace_start(p), 0);
	pthread_barrier_init(&go, NULL, 2);
	for (int i = 0; i < 2; i++) {
		memset(&w[i], 0, sizeof(w[i]));
		w[i].go = &go;
		assert_int_equal(pthread_create(&th[i], NULL, worker_fn, &w[i]), 0);
	}
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(w[i].rc, 0);
	}
	pthread_barrier_destroy(&go);
	dynstack_stats_t after = stats_now();
	assert_true(w[0].tid != w[1].tid);

	/* Read before the stop: each thread's exit wrote out its buffer. */
	load_trace(p, &t);
	for (int k = 0; k < 2; k++) {
		uint64_t next = 0;
		size_t faults = 0;
		for (size_t i = 0; i < t.n; i++) {
			const union rec *r = &t.recs[i];
			if (r->h.stack != w[k].stack)
				continue;
			assert_int_equal(r->h.tid, w[k].tid);
			if (r->h.type == DS_EV_FAULT)
				faults++;
			if (r->h.type != EV_MARK)
				continue;
			assert_int_equal(r->mark.seq, next); /* the thread's order, no gap */
			next++;
		}
		assert_int_equal(next, THREAD_MARKS);
		/* None where stacks are committed whole. */
		assert_int_equal(faults, stacks_whole() ? 0 : THREAD_PAGES);
	}
	assert_int_equal(count_type(&t, DS_EV_LOST, 0), 0);
	assert_int_equal(after.nr_dynamic_stacks_trace_dropped,
			 before.nr_dynamic_stacks_trace_dropped);
	assert_int_equal(count_emitted(&t), after.nr_dynamic_stacks_trace_events -
						    before.nr_dynamic_stacks_trace_events);
	free(t.recs);
	assert_int_equal(dynstack_trace_stop(), 0);
	unlink(p);
}

/* ---- a full buffer */

/* The buffer is 64 KiB: 2048 marks of 32 bytes fill it exactly. */
#define RING_MARKS 2048

static void test_overflow_lost(void **state)
{
	struct trace t;
	char p[256];

	set_up_thread();
	temp_path(p, sizeof(p), "overflow");
	assert_int_equal(dynstack_trace_start(p), 0);
	dynstack_stats_t before = stats_now();
	for (uint64_t i = 0; i < RING_MARKS + 952; i++)
		emit_mark(1, i);
	dynstack_stats_t mid = stats_now();
	assert_int_equal(
		mid.nr_dynamic_stacks_trace_dropped - before.nr_dynamic_stacks_trace_dropped, 952);
	assert_int_equal(mid.nr_dynamic_stacks_trace_events - before.nr_dynamic_stacks_trace_events,
			 RING_MARKS);
	/* Nothing recorded after the drops: the flush writes the LOST record. */
	assert_int_equal(dynstack_trace_flush(), 0);
	emit_mark(1, 5000);
	assert_int_equal(dynstack_trace_stop(), 0);

	load_trace(p, &t);
	size_t i = 0;
	while (i < t.n && t.recs[i].h.type == DS_EV_POLICY)
		i++;
	assert_int_equal(t.n - i, RING_MARKS + 2);
	for (uint64_t k = 0; k < RING_MARKS; k++, i++) {
		assert_int_equal(t.recs[i].h.type, EV_MARK);
		assert_int_equal(t.recs[i].mark.seq, k);
	}
	assert_int_equal(t.recs[i].h.type, DS_EV_LOST);
	assert_int_equal(t.recs[i].lost.count, 952);
	assert_int_equal(t.recs[i].h.tid, thread_id());
	assert_int_equal(t.recs[i + 1].h.type, EV_MARK);
	assert_int_equal(t.recs[i + 1].mark.seq, 5000);
	free(t.recs);
	unlink(p);
}

static void test_lost_stands_at_the_gap(void **state)
{
	struct trace t;
	char p[256];

	set_up_thread();
	temp_path(p, sizeof(p), "gap");
	assert_int_equal(dynstack_trace_start(p), 0);
	dynstack_stats_t before = stats_now();
	/* 15 * 4096 + 7 * 512 leaves 512 bytes: too few for another 4096, enough
	 * for a LOST record and a mark, which the LOST record precedes. */
	for (int i = 0; i < 15; i++)
		emit_big(4096);
	for (int i = 0; i < 7; i++)
		emit_big(512);
	emit_big(4096);
	emit_big(4096);
	emit_mark(1, 77);
	dynstack_stats_t after = stats_now();
	assert_int_equal(
		after.nr_dynamic_stacks_trace_dropped - before.nr_dynamic_stacks_trace_dropped, 2);
	assert_int_equal(dynstack_trace_stop(), 0);

	load_trace(p, &t);
	size_t i = 0;
	while (i < t.n && t.recs[i].h.type == DS_EV_POLICY)
		i++;
	assert_int_equal(t.n - i, 15 + 7 + 2);
	for (int k = 0; k < 22; k++, i++) {
		assert_int_equal(t.recs[i].h.type, EV_BIG);
		assert_int_equal(t.recs[i].h.len, k < 15 ? 4096 : 512);
	}
	assert_int_equal(t.recs[i].h.type, DS_EV_LOST);
	assert_int_equal(t.recs[i].lost.count, 2);
	assert_int_equal(t.recs[i + 1].h.type, EV_MARK);
	assert_int_equal(t.recs[i + 1].mark.seq, 77);
	free(t.recs);
	unlink(p);
}

static void test_emit_bad_length_dropped(void **state)
{
	struct mark m;
	char p[256];
	struct trace t;

	set_up_thread();
	temp_path(p, sizeof(p), "badlen");
	assert_int_equal(dynstack_trace_start(p), 0);
	dynstack_stats_t before = stats_now();
	memset(&m, 0, sizeof(m));
	m.h.type = EV_MARK;
	m.h.len = 12; /* below a head */
	ds_trace_emit_sigsafe(&m);
	m.h.len = 28; /* not a multiple of 8 */
	ds_trace_emit_sigsafe(&m);
	dynstack_stats_t after = stats_now();
	assert_int_equal(dynstack_trace_stop(), 0);
	assert_int_equal(
		after.nr_dynamic_stacks_trace_dropped - before.nr_dynamic_stacks_trace_dropped, 2);
	load_trace(p, &t);
	assert_int_equal(count_type(&t, EV_MARK, 0), 0);
	assert_int_equal(sum_lost(&t), 2);
	free(t.recs);
	unlink(p);
}

/* ---- a handler that emits while the thread was emitting */

static volatile uint64_t handler_seq;

static void emit_from_handler(int sig)
{
	emit_mark(2, handler_seq++);
}

static void test_nested_emit(void **state)
{
	struct sigaction act, old;
	struct itimerval tick = { { 0, 20 }, { 0, 20 } }, off = { { 0, 0 }, { 0, 0 } };
	struct trace t;
	char p[256];
	uint64_t n = 0;

	set_up_thread();
	temp_path(p, sizeof(p), "nested");
	memset(&act, 0, sizeof(act));
	act.sa_handler = emit_from_handler;
	act.sa_flags = SA_RESTART;
	sigemptyset(&act.sa_mask);
	assert_int_equal(sigaction(SIGALRM, &act, &old), 0);
	handler_seq = 0;
	dynstack_stats_t before = stats_now();
	assert_int_equal(dynstack_trace_start(p), 0);
	/* Under Valgrind the handler takes longer than 20 us: a write(2) of the
	 * flush below, interrupted and restarted (SA_RESTART), would meet the
	 * next signal every time and never complete. */
	if (under_valgrind())
		tick.it_interval.tv_usec = tick.it_value.tv_usec = 1000;
	assert_int_equal(setitimer(ITIMER_REAL, &tick, NULL), 0);
	/* Until enough signals have landed, whatever the machine's speed. */
	const uint64_t signals = under_valgrind() ? 300 : 3000;
	while (handler_seq < signals || n < 200000) {
		emit_mark(1, n++);
		if (n % 512 == 0)
			assert_int_equal(dynstack_trace_flush(), 0);
		assert_true(n < 200000000);
	}
	/* A tick the timer sent before it stopped may still be pending (Valgrind
	 * delivers asynchronous signals late, at its next poll): it must not
	 * meet the default action once the handler is gone. */
	sigset_t alrm, mask;
	struct timespec now_or_never = { 0, 0 };
	sigemptyset(&alrm);
	sigaddset(&alrm, SIGALRM);
	assert_int_equal(pthread_sigmask(SIG_BLOCK, &alrm, &mask), 0);
	assert_int_equal(setitimer(ITIMER_REAL, &off, NULL), 0);
	while (sigtimedwait(&alrm, NULL, &now_or_never) == SIGALRM)
		; /* dropped: it came after the last mark */
	assert_int_equal(sigaction(SIGALRM, &old, NULL), 0);
	assert_int_equal(pthread_sigmask(SIG_SETMASK, &mask, NULL), 0);
	assert_int_equal(dynstack_trace_stop(), 0);
	dynstack_stats_t after = stats_now();

	load_trace(p, &t);
	uint64_t next[3] = { 0, 0, 0 };
	for (size_t i = 0; i < t.n; i++) {
		if (t.recs[i].h.type != EV_MARK)
			continue;
		uint64_t who = t.recs[i].h.stack;
		assert_true(who == 1 || who == 2);
		assert_int_equal(t.recs[i].mark.seq, next[who]);
		next[who]++;
	}
	assert_int_equal(next[1], n);
	assert_int_equal(next[2], handler_seq);
	assert_int_equal(count_type(&t, DS_EV_LOST, 0), 0);
	assert_int_equal(after.nr_dynamic_stacks_trace_dropped,
			 before.nr_dynamic_stacks_trace_dropped);
	assert_int_equal(after.nr_dynamic_stacks_trace_events -
				 before.nr_dynamic_stacks_trace_events,
			 n + handler_seq);
	free(t.recs);
	unlink(p);
}

/* ---- flush, exit, fork, environment */

static off_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) ? -1 : st.st_size;
}

static void test_flush_writes_now(void **state)
{
	char p[256];

	set_up_thread();
	temp_path(p, sizeof(p), "flush");
	assert_int_equal(dynstack_trace_start(p), 0);
	off_t at_start = file_size(p);
	assert_true(at_start >= (off_t)sizeof(struct ds_trace_header));
	emit_mark(1, 0);
	emit_mark(1, 1);
	assert_int_equal(file_size(p), at_start); /* buffered */
	assert_int_equal(dynstack_trace_flush(), 0);
	assert_int_equal(file_size(p), at_start + 2 * (off_t)sizeof(struct mark));
	ds_trace_flush_maybe(); /* far from half full: nothing */
	emit_mark(1, 2);
	ds_trace_flush_maybe();
	assert_int_equal(file_size(p), at_start + 2 * (off_t)sizeof(struct mark));
	assert_int_equal(dynstack_trace_stop(), 0);
	assert_int_equal(file_size(p), at_start + 3 * (off_t)sizeof(struct mark));
	unlink(p);
}

static char exit_path[256];

static int exit_child(void *arg)
{
	CHECK(ds_trace_thread_init() == 0);
	CHECK(dynstack_trace_start(exit_path) == 0);
	emit_mark(1, 1);
	emit_mark(1, 2);
	exit(0); /* the atexit handler flushes and closes */
}

static void test_flushed_at_exit(void **state)
{
	int status;
	struct trace t;

	temp_path(exit_path, sizeof(exit_path), "exit");
	assert_int_equal(run_in_child(exit_child, NULL, &status, errbuf, sizeof(errbuf)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("child %s: %s", describe_status(status), errbuf);
	load_trace(exit_path, &t);
	assert_int_equal(count_type(&t, EV_MARK, 1), 2);
	free(t.recs);
	unlink(exit_path);
}

static char fork_path[256];

static int fork_child_fn(void *arg)
{
	/* Tracing stopped in the child: nothing of the parent's is written. */
	CHECK(atomic_load(&ds_trace_on) == 0);
	CHECK(dynstack_trace_flush() == 0);
	CHECK(dynstack_trace_stop() == 0);
	emit_mark(9, 0);
	CHECK(dynstack_trace_flush() == 0);
	/* and the child may start its own. */
	CHECK(dynstack_trace_start(fork_path) == 0);
	emit_mark(3, 1);
	exit(0);
}

static void test_fork_stops_in_child(void **state)
{
	char p[256];
	int status;
	struct trace t;

	set_up_thread();
	temp_path(p, sizeof(p), "fork-parent");
	temp_path(fork_path, sizeof(fork_path), "fork-child");
	assert_int_equal(dynstack_trace_start(p), 0);
	for (uint64_t i = 0; i < 10; i++)
		emit_mark(1, i); /* buffered when the child is made */
	assert_int_equal(run_in_child(fork_child_fn, NULL, &status, errbuf, sizeof(errbuf)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("child %s: %s", describe_status(status), errbuf);
	emit_mark(1, 10);
	assert_int_equal(dynstack_trace_stop(), 0);

	load_trace(p, &t);
	assert_int_equal(count_type(&t, EV_MARK, 0), 11); /* none twice, none of the child's */
	assert_int_equal(count_type(&t, EV_MARK, 1), 11);
	for (size_t i = 0; i < t.n; i++)
		if (t.recs[i].h.type == EV_MARK)
			assert_int_equal(t.recs[i].h.tid, thread_id());
	free(t.recs);
	load_trace(fork_path, &t);
	assert_int_equal(count_type(&t, EV_MARK, 0), 1);
	const union rec *m = find_type(&t, EV_MARK, 3);
	assert_non_null(m);
	assert_true(m->h.tid != thread_id());
	assert_int_equal(sum_lost(&t), 0);
	free(t.recs);
	unlink(p);
	unlink(fork_path);
}

static int env_child(void)
{
	if (dynstack_init(NULL))
		return 1;
	if (!atomic_load(&ds_trace_on))
		return 2;
	if (ds_trace_thread_init())
		return 3;
	emit_mark(1, 42);
	return 0; /* from main: the atexit handler writes it out */
}

static int env_bad_child(void)
{
	dynstack_t *s;
	dynstack_init(NULL);
	if (atomic_load(&ds_trace_on))
		return 1;
	if (dynstack_create(&s, NULL) || dynstack_destroy(s))
		return 2;
	return 0;
}

static void test_env(void **state)
{
	char p[256], var[300];
	int status;
	struct trace t;

	temp_path(p, sizeof(p), "env");
	snprintf(var, sizeof(var), "DYNSTACK_TRACE=%s", p);
	const char *env[] = { var, NULL };
	assert_int_equal(run_self("--env-trace", env, &status, errbuf, sizeof(errbuf)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("child %s: %s", describe_status(status), errbuf);
	load_trace(p, &t);
	const union rec *m = find_type(&t, EV_MARK, 1);
	assert_non_null(m);
	assert_int_equal(m->mark.seq, 42);
	free(t.recs);
	unlink(p);

	/* Unset or empty: no trace, no message. */
	const char *unset[] = { "DYNSTACK_TRACE", NULL };
	assert_int_equal(setenv("DYNSTACK_TRACE", "", 1), 0);
	assert_int_equal(ds_trace_init_from_env(), 0);
	assert_int_equal(unsetenv("DYNSTACK_TRACE"), 0);
	assert_int_equal(ds_trace_init_from_env(), 0);
	assert_int_equal(atomic_load(&ds_trace_on), 0);
	assert_int_equal(run_self("--env-bad", unset, &status, errbuf, sizeof(errbuf)), 0);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_false(contains(errbuf, "DYNSTACK_TRACE"));

	const char *bad[] = { "DYNSTACK_TRACE=/nonexistent-dir-for-trace/t", NULL };
	assert_int_equal(run_self("--env-bad", bad, &status, errbuf, sizeof(errbuf)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("child %s: %s", describe_status(status), errbuf);
	assert_true(contains(errbuf, "DYNSTACK_TRACE=\"/nonexistent-dir-for-trace/t\""));
}

/* ---- the reader against made-up input */

struct tb {
	_Alignas(8) unsigned char buf[4096];
	size_t len;
};

static size_t tb_add(struct tb *b, const void *rec, size_t len)
{
	size_t at = b->len;
	assert_true(b->len + len <= sizeof(b->buf));
	memcpy(b->buf + b->len, rec, len);
	b->len += len;
	return at;
}

static void tb_header(struct tb *b, uint32_t default_policy)
{
	struct ds_trace_header h = {
		.magic = DS_TRACE_MAGIC,
		.version = DS_TRACE_VERSION,
		.header_size = sizeof(h),
		.page_size = 4096,
		.backend = DYNSTACK_BACKEND_MPROTECT,
		.start_ns = 1,
		.default_policy = default_policy,
	};
	b->len = 0;
	tb_add(b, &h, sizeof(h));
}

static size_t tb_policy(struct tb *b, uint32_t id, const char *spec)
{
	unsigned char raw[256];
	struct ds_ev_policy p = {
		.h = { .type = DS_EV_POLICY, .len = (uint16_t)DS_EV_LEN(sizeof(p), strlen(spec)) },
		.id = id,
		.spec_len = (uint32_t)strlen(spec),
	};
	memset(raw, 0, sizeof(raw));
	memcpy(raw, &p, sizeof(p));
	memcpy(raw + sizeof(p), spec, strlen(spec));
	return tb_add(b, raw, p.h.len);
}

static size_t tb_create(struct tb *b, uint64_t stack, uint32_t policy, const char *name)
{
	unsigned char raw[256];
	struct ds_ev_create c = {
		.h = { .type = DS_EV_CREATE,
		       .len = (uint16_t)DS_EV_LEN(sizeof(c), strlen(name)),
		       .stack = stack },
		.size = 16384,
		.committed = 4096,
		.policy = policy,
		.name_len = (uint32_t)strlen(name),
	};
	memset(raw, 0, sizeof(raw));
	memcpy(raw, &c, sizeof(c));
	memcpy(raw + sizeof(c), name, strlen(name));
	return tb_add(b, raw, c.h.len);
}

static size_t tb_fault(struct tb *b, uint16_t type, uint64_t stack, uint64_t depth,
		       uint64_t committed)
{
	struct ds_ev_fault f = {
		.h = { .type = type, .len = sizeof(f), .stack = stack },
		.depth = depth,
		.committed = committed,
	};
	return tb_add(b, &f, sizeof(f));
}

static size_t tb_destroy(struct tb *b, uint64_t stack, uint64_t peak, uint64_t committed)
{
	struct ds_ev_destroy d = {
		.h = { .type = DS_EV_DESTROY, .len = sizeof(d), .stack = stack },
		.peak = peak,
		.committed = committed,
	};
	return tb_add(b, &d, sizeof(d));
}

static size_t tb_lost(struct tb *b, uint64_t count)
{
	struct ds_ev_lost l = { .h = { .type = DS_EV_LOST, .len = sizeof(l) }, .count = count };
	return tb_add(b, &l, sizeof(l));
}

static size_t tb_raw(struct tb *b, uint16_t type, uint16_t len)
{
	uint64_t raw[64];
	struct ds_ev_head h = { .type = type, .len = len };
	memset(raw, 0xab, sizeof(raw));
	memcpy(raw, &h, sizeof(h));
	return tb_add(b, raw, len);
}

/* A small valid trace; where each record starts, in off[]. */
enum {
	R_POL0,
	R_POL1,
	R_CREATE,
	R_FAULT,
	R_UNKNOWN,
	R_SPUR,
	R_DESTROY,
	R_LOST,
	R_COUNT
};

static void tb_valid(struct tb *b, size_t off[R_COUNT])
{
	tb_header(b, 0);
	off[R_POL0] = tb_policy(b, 0, "step=1");
	off[R_POL1] = tb_policy(b, 7, "double,overflow=warn:8k");
	off[R_CREATE] = tb_create(b, 5, 7, "worker");
	off[R_FAULT] = tb_fault(b, DS_EV_FAULT, 5, 8192, 8192);
	off[R_UNKNOWN] = tb_raw(b, 99, 64);
	off[R_SPUR] = tb_fault(b, DS_EV_SPURIOUS, 5, 4096, 8192);
	off[R_DESTROY] = tb_destroy(b, 5, 8192, 8192);
	off[R_LOST] = tb_lost(b, 3);
}

/* Run the reader over buf to its end: 0 for a clean end, else the error;
 * *n is the number of records it returned. */
static int read_mem(const void *buf, size_t len, size_t *n)
{
	struct ds_trace_reader *r;
	const struct ds_ev_head *h;
	int rc;

	*n = 0;
	errbuf[0] = '\0';
	if ((rc = ds_trace_open_mem(buf, len, &r, errbuf, sizeof(errbuf))))
		return rc;
	while ((rc = ds_trace_next(r, &h, errbuf, sizeof(errbuf))) == 1) {
		assert_true(h->len >= sizeof(*h) && h->len % 8 == 0 && h->len <= len);
		(*n)++;
	}
	/* After an error or the end, the answer stays the same. */
	char again[sizeof(errbuf)];
	assert_int_equal(ds_trace_next(r, &h, again, sizeof(again)), rc);
	if (rc)
		assert_string_equal(again, errbuf);
	ds_trace_close(r);
	return rc;
}

static void test_reader_valid(void **state)
{
	struct tb b;
	size_t off[R_COUNT], n;
	struct ds_trace_reader *r;
	const struct ds_ev_head *h;
	static const uint16_t types[R_COUNT] = { DS_EV_POLICY,	DS_EV_POLICY, DS_EV_CREATE,
						 DS_EV_FAULT,	99,	      DS_EV_SPURIOUS,
						 DS_EV_DESTROY, DS_EV_LOST };

	tb_valid(&b, off);
	assert_int_equal(ds_trace_open_mem(b.buf, b.len, &r, errbuf, sizeof(errbuf)), 0);
	assert_int_equal(ds_trace_header(r)->default_policy, 0);
	assert_int_equal(ds_trace_header(r)->page_size, 4096);
	for (int i = 0; i < R_COUNT; i++) {
		assert_int_equal(ds_trace_next(r, &h, errbuf, sizeof(errbuf)), 1);
		assert_int_equal(h->type, types[i]);
		assert_ptr_equal(h, b.buf + off[i]);
	}
	assert_int_equal(((const struct ds_ev_lost *)h)->count, 3);
	assert_int_equal(ds_trace_next(r, &h, errbuf, sizeof(errbuf)), 0);
	assert_null(h);
	assert_int_equal(ds_trace_next(r, &h, errbuf, sizeof(errbuf)), 0);
	ds_trace_close(r);
	ds_trace_close(NULL);

	/* A longer header (a later writer's) is skipped by its header_size. */
	struct tb big;
	memcpy(big.buf, b.buf, sizeof(struct ds_trace_header));
	memset(big.buf + sizeof(struct ds_trace_header), 0x5a, 16);
	memcpy(big.buf + sizeof(struct ds_trace_header) + 16,
	       b.buf + sizeof(struct ds_trace_header), b.len - sizeof(struct ds_trace_header));
	big.len = b.len + 16;
	((struct ds_trace_header *)big.buf)->header_size += 16;
	assert_int_equal(read_mem(big.buf, big.len, &n), 0);
	assert_int_equal(n, R_COUNT);

	/* Not 8-byte aligned in memory: read from a copy all the same. */
	static _Alignas(8) unsigned char odd[sizeof(b.buf) + 1];
	memcpy(odd + 1, b.buf, b.len);
	assert_int_equal(read_mem(odd + 1, b.len, &n), 0);
	assert_int_equal(n, R_COUNT);

	/* The same policy twice, same spec: fine (a writer may repeat it). */
	tb_policy(&b, 7, "double,overflow=warn:8k");
	assert_int_equal(read_mem(b.buf, b.len, &n), 0);
	assert_int_equal(n, R_COUNT + 1);

	assert_int_equal(ds_trace_open_mem(b.buf, b.len, NULL, NULL, 0), -EINVAL);
	assert_int_equal(ds_trace_open_mem(NULL, 8, &r, NULL, 0), -EINVAL);
	assert_null(r);
	assert_int_equal(ds_trace_next(NULL, &h, NULL, 0), -EINVAL);
}

static void test_reader_truncated(void **state)
{
	struct tb b;
	size_t off[R_COUNT], n;

	tb_valid(&b, off);
	for (size_t cut = 0; cut < b.len; cut++) {
		bool boundary = false;
		for (int i = R_POL1; i < R_COUNT; i++)
			boundary |= cut == off[i];
		int rc = read_mem(b.buf, cut, &n);
		if (boundary) {
			assert_int_equal(rc, 0);
			continue;
		}
		if (rc != -EPROTO)
			fail_msg("cut at %zu: %d after %zu records", cut, rc, n);
		assert_true(contains(errbuf, "offset "));
		if (cut >= 8)
			assert_true(contains(errbuf, "truncated") || cut == off[R_POL0]);
	}
	/* Header alone: the default policy is never named. */
	assert_int_equal(read_mem(b.buf, off[R_POL0], &n), -EPROTO);
	assert_true(contains(errbuf, "default policy 0"));
}

typedef void (*mutate_fn)(struct tb *b, const size_t off[R_COUNT]);

#define FIELD(b, at, type, field) ((type *)((b)->buf + (at)))->field

static void m_magic(struct tb *b, const size_t *off)
{
	b->buf[3] ^= 1;
}
static void m_version(struct tb *b, const size_t *off)
{
	FIELD(b, 0, struct ds_trace_header, version) = 2;
}
static void m_hsize_small(struct tb *b, const size_t *off)
{
	FIELD(b, 0, struct ds_trace_header, header_size) = 32;
}
static void m_hsize_odd(struct tb *b, const size_t *off)
{
	FIELD(b, 0, struct ds_trace_header, header_size) = 44;
}
static void m_hsize_huge(struct tb *b, const size_t *off)
{
	FIELD(b, 0, struct ds_trace_header, header_size) = 0xfffffff8u;
}
static void m_page(struct tb *b, const size_t *off)
{
	FIELD(b, 0, struct ds_trace_header, page_size) = 3000;
}
static void m_len_small(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_FAULT], struct ds_ev_head, len) = 16;
}
static void m_len_zero(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_FAULT], struct ds_ev_head, len) = 0;
}
static void m_len_odd(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_FAULT], struct ds_ev_head, len) = 52;
}
static void m_len_past(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_LOST], struct ds_ev_head, len) = 40;
}
static void m_len_short_type(struct tb *b, const size_t *off)
{
	/* A FAULT record cut to 40 bytes: the next record is shifted, but the
	 * FAULT itself is below its size. */
	FIELD(b, off[R_FAULT], struct ds_ev_head, len) = 40;
}
static void m_type0(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_UNKNOWN], struct ds_ev_head, type) = 0;
}
static void m_spec_len(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_POL1], struct ds_ev_policy, spec_len) = 200;
}
static void m_spec_nul(struct tb *b, const size_t *off)
{
	b->buf[off[R_POL1] + sizeof(struct ds_ev_policy) + 2] = 0;
}
static void m_name_len(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_CREATE], struct ds_ev_create, name_len) = 0xffffffffu;
}
static void m_name_nul(struct tb *b, const size_t *off)
{
	b->buf[off[R_CREATE] + sizeof(struct ds_ev_create)] = 0;
}
static void m_policy_ref(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_CREATE], struct ds_ev_create, policy) = 8;
}
static void m_policy_redef(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_POL1], struct ds_ev_policy, id) = 0;
}
static void m_default(struct tb *b, const size_t *off)
{
	FIELD(b, 0, struct ds_trace_header, default_policy) = 3;
}
static void m_stack0(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_SPUR], struct ds_ev_head, stack) = 0;
}
static void m_fault_depth(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_FAULT], struct ds_ev_fault, depth) = 12288;
}
static void m_destroy(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_DESTROY], struct ds_ev_destroy, peak) = 4096;
}
static void m_lost0(struct tb *b, const size_t *off)
{
	FIELD(b, off[R_LOST], struct ds_ev_lost, count) = 0;
}

static void test_reader_corrupt(void **state)
{
	static const struct {
		mutate_fn fn;
		bool at_open;
		const char *says;
	} cases[] = {
		{ m_magic, true, "offset 0: not a libdynstack trace" },
		{ m_version, true, "offset 8: trace version 2" },
		{ m_hsize_small, true, "offset 12: header_size 32" },
		{ m_hsize_odd, true, "offset 12: header_size 44" },
		{ m_hsize_huge, true, "past the end" },
		{ m_page, true, "offset 16: page_size 3000" },
		{ m_len_small, false, "record length 16" },
		{ m_len_zero, false, "record length 0" },
		{ m_len_odd, false, "record length 52" },
		{ m_len_past, false, "LOST record of 40 bytes runs past the end" },
		{ m_len_short_type, false, "FAULT record of 40 bytes, below its 48" },
		{ m_type0, false, "record type 0" },
		{ m_spec_len, false, "POLICY spec_len 200" },
		{ m_spec_nul, false, "POLICY spec contains a NUL" },
		{ m_name_len, false, "CREATE name_len 4294967295" },
		{ m_name_nul, false, "CREATE name contains a NUL" },
		{ m_policy_ref, false, "CREATE names policy 8" },
		{ m_policy_redef, false, "POLICY 0 is redefined" },
		{ m_default, false, "default policy 3" },
		{ m_stack0, false, "SPURIOUS record for stack id 0" },
		{ m_fault_depth, false, "FAULT committed 8192 is below its depth 12288" },
		{ m_destroy, false, "DESTROY committed 8192 is above peak 4096" },
		{ m_lost0, false, "LOST record with a count of 0" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tb b;
		size_t off[R_COUNT], n;
		struct ds_trace_reader *r = (void *)&b;

		tb_valid(&b, off);
		cases[i].fn(&b, off);
		int rc = ds_trace_open_mem(b.buf, b.len, &r, errbuf, sizeof(errbuf));
		if (cases[i].at_open) {
			assert_int_equal(rc, -EPROTO);
			assert_null(r);
		} else {
			assert_int_equal(rc, 0);
			ds_trace_close(r);
			rc = read_mem(b.buf, b.len, &n);
			assert_int_equal(rc, -EPROTO);
		}
		if (!contains(errbuf, cases[i].says) || !contains(errbuf, "offset "))
			fail_msg("case %zu: reason \"%s\", expected \"%s\"", i, errbuf,
				 cases[i].says);
	}
}

static void test_reader_garbage(void **state)
{
	static _Alignas(8) unsigned char buf[4096];
	struct tb b;
	size_t off[R_COUNT], n;
	unsigned seed = 12345;

	/* Pure noise is not a trace. */
	for (int round = 0; round < 200; round++) {
		size_t len = (size_t)rand_r(&seed) % sizeof(buf);
		for (size_t i = 0; i < len; i++)
			buf[i] = (unsigned char)rand_r(&seed);
		assert_int_equal(read_mem(buf, len, &n), -EPROTO);
	}
	assert_int_equal(read_mem(buf, 0, &n), -EPROTO);
	assert_true(contains(errbuf, "offset 0"));
	/* A good header over noise, and a good trace with a few bytes
	 * scrambled: whatever the answer, the reader stays inside the buffer
	 * and ends. */
	for (int round = 0; round < 2000; round++) {
		tb_valid(&b, off);
		int flips = 1 + rand_r(&seed) % 4;
		for (int f = 0; f < flips; f++)
			b.buf[sizeof(struct ds_trace_header) +
			      (size_t)rand_r(&seed) % (b.len - sizeof(struct ds_trace_header))] =
				(unsigned char)rand_r(&seed);
		int rc = read_mem(b.buf, b.len, &n);
		assert_true(rc == 0 || rc == -EPROTO);
		assert_true(n <= b.len / sizeof(struct ds_ev_head));
	}
}

static void test_reader_files(void **state)
{
	struct ds_trace_reader *r = (void *)errbuf;
	char p[256];

	assert_int_equal(ds_trace_open("/nonexistent-dir-for-trace/t", &r, errbuf, sizeof(errbuf)),
			 -ENOENT);
	assert_null(r);
	assert_int_equal(ds_trace_open("/dev/null", &r, errbuf, sizeof(errbuf)), -EPROTO);
	assert_true(contains(errbuf, "offset 0"));
	assert_int_equal(ds_trace_open(NULL, &r, NULL, 0), -EINVAL);

	/* A trace this library wrote, and its prefixes, through a file. */
	set_up_thread();
	temp_path(p, sizeof(p), "prefix");
	assert_int_equal(dynstack_trace_start(p), 0);
	emit_mark(1, 1);
	assert_int_equal(dynstack_trace_stop(), 0);
	struct trace t;
	load_trace(p, &t);
	assert_int_equal(count_type(&t, EV_MARK, 1), 1);
	free(t.recs);
	assert_int_equal(truncate(p, file_size(p) - 4), 0);
	assert_int_equal(ds_trace_open(p, &r, errbuf, sizeof(errbuf)), 0);
	const struct ds_ev_head *h;
	int rc;
	while ((rc = ds_trace_next(r, &h, errbuf, sizeof(errbuf))) == 1)
		;
	assert_int_equal(rc, -EPROTO);
	assert_true(contains(errbuf, "truncated"));
	ds_trace_close(r);
	unlink(p);
}

/* ---- the fuzzer's seed corpus */

/* fuzz/corpus/trace in the source tree: $DS_TRACE_CORPUS, or found from
 * this file's name, which the compiler got relative to the build root. */
static void corpus_dir(char *out, size_t len)
{
	const char *env = getenv("DS_TRACE_CORPUS");
	char exe[4096], src[4096];

	if (env && *env) {
		snprintf(out, len, "%s", env);
		return;
	}
	snprintf(src, sizeof(src), "%s", __FILE__);
	*strrchr(src, '/') = '\0';
	if (src[0] == '/') {
		snprintf(out, len, "%s/../fuzz/corpus/trace", src);
		return;
	}
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	assert_true(n > 0);
	exe[n] = '\0';
	*strrchr(exe, '/') = '\0'; /* <build>/tests */
	*strrchr(exe, '/') = '\0'; /* <build> */
	if (snprintf(out, len, "%s/%s/../fuzz/corpus/trace", exe, src) >= (int)len)
		fail_msg("path too long");
}

static void test_corpus(void **state)
{
	char dir[8192], path[8448];
	struct dirent *e;
	size_t files = 0, clean = 0;

	corpus_dir(dir, sizeof(dir));
	DIR *d = opendir(dir);
	if (!d)
		fail_msg("no corpus at %s (set DS_TRACE_CORPUS)", dir);
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		struct ds_trace_reader *r;
		const struct ds_ev_head *h;
		int rc;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		files++;
		rc = ds_trace_open(path, &r, errbuf, sizeof(errbuf));
		if (!rc)
			while ((rc = ds_trace_next(r, &h, errbuf, sizeof(errbuf))) == 1)
				;
		if (!strcmp(e->d_name, "valid.trace") && rc)
			fail_msg("%s: %s", path, errbuf);
		if ((!strcmp(e->d_name, "truncated.trace") ||
		     !strcmp(e->d_name, "corrupt.trace")) &&
		    rc != -EPROTO)
			fail_msg("%s: %d, expected -EPROTO", path, rc);
		clean += rc == 0;
		ds_trace_close(r);
	}
	closedir(d);
	assert_true(files >= 3);
	assert_true(clean >= 1);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "--env-trace") == 0)
			return env_child();
		if (strcmp(argv[1], "--env-bad") == 0)
			return env_bad_child();
		return 64;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_start_twice_busy),
		cmocka_unit_test(test_stop_flush_when_off),
		cmocka_unit_test(test_bad_path),
		cmocka_unit_test(test_header_and_policies),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_two_threads),
		cmocka_unit_test(test_overflow_lost),
		cmocka_unit_test(test_lost_stands_at_the_gap),
		cmocka_unit_test(test_emit_bad_length_dropped),
		cmocka_unit_test(test_nested_emit),
		cmocka_unit_test(test_flush_writes_now),
		cmocka_unit_test(test_flushed_at_exit),
		cmocka_unit_test(test_fork_stops_in_child),
		cmocka_unit_test(test_env),
		cmocka_unit_test(test_reader_valid),
		cmocka_unit_test(test_reader_truncated),
		cmocka_unit_test(test_reader_corrupt),
		cmocka_unit_test(test_reader_garbage),
		cmocka_unit_test(test_reader_files),
		cmocka_unit_test(test_corpus),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
