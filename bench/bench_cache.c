/* What a coroutine's stack costs over its whole life under churn: create, run to a random depth
 * (mostly shallow, a few deep, as in examples/demo.c), destroy. The library with its warm-stack
 * cache, the library without it (cache_stacks = 0), and the stacks a runtime would otherwise use:
 * mmap + a PROT_NONE guard page + munmap per stack (Boost.Context's protected_fixedsize_stack)
 * and malloc'd memory with no guard; the baselines run the same workload through the internal
 * ds_ctx switch. Every case runs in its own forked child (the cache is a process-wide setting),
 * with 1 and with 2 threads (a second thread of the process makes every munmap and decommit a
 * TLB shootdown); the children take turns and each figure is the median over the rounds.
 * --help lists the options. */
#include <dynstack.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "bench.h"

#include "ctx.h"

#define KIB 1024u
/* Every stack reserves 64 KiB: the size DESIGN.md section 3 priced mmap/munmap at. */
#define STACK_SIZE (64 * KIB)
/* The workload of examples/demo.c at --size 64, in bytes below the top of the stack. */
#define SHALLOW_MIN 256u
#define SHALLOW_MAX (2 * KIB)
#define MEDIUM_MAX (6 * KIB)
#define DEEP_MIN (16 * KIB)
#define DEEP_MAX (STACK_SIZE - 8 * KIB - KIB)
#define ALLOCA_BYTES (STACK_SIZE - 8 * KIB)
#define JOB_ALLOCA 0x80000000u /* flag in a plan entry: one alloca instead of recursion */

#define MAX_THREADS 2
#define MAX_WINDOW 64
#define MAX_ROUNDS 15
#define DEFAULT_COUNT 1000000
#define DEFAULT_ROUNDS 3

enum stack_kind {
	KIND_LIB,    /* dynstack_coro_create / resume / destroy */
	KIND_MMAP,   /* mmap + mprotect(guard page) + munmap, the ds_ctx switch */
	KIND_MALLOC, /* malloc + free, no guard, the ds_ctx switch */
};

static const struct bench_case {
	const char *name;
	enum stack_kind kind;
	bool cache;	 /* KIND_LIB: cache_stacks left at its default (else 0) */
	unsigned window; /* coroutines alive at once: created, run and destroyed together */
	bool slow;	 /* microseconds per stack: runs --slow-count coroutines */
} cases[] = {
	{ "cache", KIND_LIB, true, 1, false },
	/* 64 alive at once: more than a thread's cache holds (16), so the global depot and its
	 * lock take part. */
	{ "cache_w64", KIND_LIB, true, 64, false },
	{ "nocache", KIND_LIB, false, 1, true },
	{ "mmap", KIND_MMAP, false, 1, true },
	{ "malloc", KIND_MALLOC, false, 1, false },
};
#define CASES (sizeof(cases) / sizeof(cases[0]))
enum {
	CASE_CACHE
};

enum {
	CHILD_OK,
	CHILD_SKIP,
	CHILD_ERROR
};

/* The figures of one child, ns per coroutine, each the mean of its threads' own figures. */
enum figure {
	F_CD,	  /* create + destroy: F_CREATE + F_DESTROY */
	F_LIFE,	  /* the whole lifecycle, from a loop with no timer inside */
	F_CREATE, /* the parts of the lifecycle, from a loop with the clock read around */
	F_RUN,	  /* each part, less what a clock read costs */
	F_DESTROY,
	F_IDLE, /* create + destroy of a stack that never runs */
	FIGURES
};
static const char *const figure_name[FIGURES] = {
	"create_destroy", "lifecycle", "create", "run", "destroy", "create_destroy_idle",
};

/* Written in one write() below PIPE_BUF, so it arrives whole or not at all. */
struct report {
	int status;
	char why[160];
	double ns[FIGURES];
	double share;  /* lowest share of its time a thread spent on its CPU in the timed loop */
	double faults; /* library: commit faults per coroutine */
	double hits;   /* library: share of creates served by a cache */
};

/* ---- the clock: the TSC where there is one (8 ns a read here; clock_gettime 23 ns) */
static double tick_ns = 1.0;

static inline uint64_t tick(void)
{
#if defined(__x86_64__)
	return __rdtsc();
#else
	return (uint64_t)now_ns();
#endif
}

static void tick_calibrate(void)
{
#if defined(__x86_64__)
	double t0 = now_ns();
	uint64_t c0 = tick();
	while (now_ns() - t0 < 20e6)
		;
	tick_ns = (now_ns() - t0) / (double)(tick() - c0);
#endif
}

/* What an interval between two back-to-back reads measures: taken out of every timed part. */
static double tick_overhead(void)
{
	double v[9];
	for (int r = 0; r < 9; r++) {
		uint64_t sum = 0;
		for (int i = 0; i < 10000; i++) {
			uint64_t a = tick();
			sum += tick() - a;
		}
		v[r] = (double)sum * tick_ns / 10000;
	}
	return median(v, 9);
}

/* ---- the workload */
static uint32_t *plan; /* per coroutine: depth in bytes, or JOB_ALLOCA | bytes */
static size_t plan_len;

static uint64_t splitmix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* demo.c's shares, drawn per coroutine: 4/320 alloca, 5/320 deep, 16/320 medium, the rest
 * (~92 %) shallow. One fixed sequence, the same for every case. */
static int plan_make(size_t n)
{
	uint64_t rng = 1;
	if (!(plan = malloc(n * sizeof(*plan))))
		return -1;
	plan_len = n;
	for (size_t i = 0; i < n; i++) {
		uint64_t r = splitmix(&rng) % 320, x = splitmix(&rng);
		uint32_t lo = SHALLOW_MIN, hi = SHALLOW_MAX;
		if (r < 4) {
			plan[i] = JOB_ALLOCA | ALLOCA_BYTES;
			continue;
		}
		if (r < 9)
			lo = DEEP_MIN, hi = DEEP_MAX;
		else if (r < 25)
			lo = SHALLOW_MAX, hi = MEDIUM_MAX;
		plan[i] = lo + (uint32_t)(x % (hi - lo + 1));
	}
	return 0;
}

/* One alloca of tens of KiB, every byte written from the bottom up, like demo.c's. */
static __attribute__((noinline)) unsigned big_alloca(uint32_t bytes)
{
	char *buf = __builtin_alloca(bytes);
	memset(buf, 1, bytes);
	__asm__ volatile("" : : "r"(buf) : "memory");
	return (unsigned char)buf[bytes / 2];
}

static unsigned run_job(uintptr_t top, uint32_t job)
{
	if (job & JOB_ALLOCA)
		return big_alloca(job & ~JOB_ALLOCA);
	return descend(top, job, 0);
}

/* ---- one thread's churn. A worker has cache lines of its own: the two threads share nothing
 * that the library does not make them share. */
struct stack {
	dynstack_coro_t *co; /* KIND_LIB */
	void *mem;	     /* the baselines: what to free */
	ds_ctx_t ctx;	     /* the baselines: the coroutine's context */
	uint32_t job;
};

struct __attribute__((aligned(128))) worker {
	pthread_t thread;
	const struct bench_case *c;
	int cpu; /* -1: not pinned */
	size_t first, n, warm;
	pthread_barrier_t *barrier;
	ds_ctx_t caller; /* the baselines: the thread's own context */
	struct stack *cur;
	struct stack s[MAX_WINDOW];
	volatile unsigned sink;
	/* results */
	int err;
	const char *what;
	double ns[FIGURES];
	double share;
};

static double thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static size_t page;
static dynstack_attr_t attr;
/* The first two CPUs this process may use, one per thread; -1: only one (no pinning). */
static int cpus[MAX_THREADS] = { -1, -1 };

static void coro_fn(void *arg)
{
	struct stack *s = arg;
	uintptr_t top = (uintptr_t)dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	s->job = run_job(top, s->job);
}

static void ctx_entry(void *arg)
{
	struct worker *w = arg;
	struct stack *s = w->cur;
	s->job = run_job((uintptr_t)s->mem + (w->c->kind == KIND_MMAP ? page : 0) + STACK_SIZE,
			 s->job);
	ds_ctx_switch(&s->ctx, &w->caller);
	abort(); /* never resumed again */
}

/* Create makes a coroutine ready to run, as dynstack_coro_create and Boost's fiber constructor
 * do: the baselines lay the first frame at the top of the stack here too (its first touch). */
static inline int stack_create(struct worker *w, struct stack *s)
{
	switch (w->c->kind) {
	case KIND_LIB:
		return dynstack_coro_create(&s->co, coro_fn, s, &attr);
	case KIND_MMAP:
		/* What protected_fixedsize_stack::allocate does. */
		s->mem = mmap(NULL, STACK_SIZE + page, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (s->mem == MAP_FAILED)
			return -errno;
		if (mprotect(s->mem, page, PROT_NONE))
			return -errno;
		ds_ctx_make(&s->ctx, (char *)s->mem + page, STACK_SIZE, ctx_entry, w);
		return 0;
	default:
		if (!(s->mem = malloc(STACK_SIZE)))
			return -ENOMEM;
		ds_ctx_make(&s->ctx, s->mem, STACK_SIZE, ctx_entry, w);
		return 0;
	}
}

static inline int stack_run(struct worker *w, struct stack *s, uint32_t job)
{
	s->job = job;
	if (w->c->kind == KIND_LIB) {
		int rc = dynstack_coro_resume(s->co);
		if (!rc && dynstack_coro_status(s->co) != DYNSTACK_CORO_DEAD)
			rc = -EBUSY;
		return rc;
	}
	w->cur = s;
	ds_ctx_switch(&w->caller, &s->ctx);
	return 0;
}

static inline int stack_destroy(struct worker *w, struct stack *s)
{
	switch (w->c->kind) {
	case KIND_LIB:
		return dynstack_coro_destroy(s->co);
	case KIND_MMAP:
		return munmap(s->mem, STACK_SIZE + page) ? -errno : 0;
	default:
		free(s->mem);
		return 0;
	}
}

/* n coroutines, window at a time: create them, run each, destroy them. timed: read the clock
 * around each of the three parts (once per window) instead of around the whole loop. */
static int churn(struct worker *w, size_t n, bool timed)
{
	unsigned win = w->c->window;
	uint64_t part[3] = { 0 };
	uint64_t t0 = tick(), t1 = 0, t2 = 0, t3;
	double start = now_ns();
	int rc;

	n -= n % win;
	for (size_t i = w->first; i < w->first + n; i += win) {
		for (unsigned k = 0; k < win; k++)
			if ((rc = stack_create(w, &w->s[k]))) {
				w->what = "create";
				return rc;
			}
		if (timed)
			t1 = tick();
		for (unsigned k = 0; k < win; k++)
			if ((rc = stack_run(w, &w->s[k], plan[(i + k) % plan_len]))) {
				w->what = "run";
				return rc;
			}
		if (timed)
			t2 = tick();
		for (unsigned k = 0; k < win; k++)
			w->sink += w->s[k].job;
		for (unsigned k = 0; k < win; k++)
			if ((rc = stack_destroy(w, &w->s[k]))) {
				w->what = "destroy";
				return rc;
			}
		if (timed) {
			t3 = tick();
			part[0] += t1 - t0;
			part[1] += t2 - t1;
			part[2] += t3 - t2;
			t0 = t3;
		}
	}
	if (!timed) {
		w->ns[F_LIFE] = (now_ns() - start) / (double)n;
		return 0;
	}
	double ovh = tick_overhead() / win; /* one clock read per part per window */
	w->ns[F_CREATE] = (double)part[0] * tick_ns / (double)n - ovh;
	w->ns[F_RUN] = (double)part[1] * tick_ns / (double)n - ovh;
	w->ns[F_DESTROY] = (double)part[2] * tick_ns / (double)n - ovh;
	w->ns[F_CD] = w->ns[F_CREATE] + w->ns[F_DESTROY];
	return 0;
}

/* create + destroy of stacks that never run: the cache's round trip alone; for mmap, the three
 * calls with no page to free. */
static int churn_idle(struct worker *w, size_t n)
{
	unsigned win = w->c->window;
	double start = now_ns();
	int rc;

	n -= n % win;
	for (size_t i = 0; i < n; i += win) {
		for (unsigned k = 0; k < win; k++)
			if ((rc = stack_create(w, &w->s[k])))
				goto fail;
		for (unsigned k = 0; k < win; k++)
			if ((rc = stack_destroy(w, &w->s[k])))
				goto fail;
	}
	w->ns[F_IDLE] = (now_ns() - start) / (double)n;
	return 0;
fail:
	w->what = "create/destroy";
	return rc;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	if (w->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(w->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	size_t n = w->n;
	/* Warm-up: binds the PLT, makes the thread's sync stack, fills its cache and the heap,
	 * faults the code in. Each part starts together on both threads. */
	w->err = churn(w, w->warm, false);
	pthread_barrier_wait(w->barrier);
	double wall = now_ns(), cpu = thread_cpu_ns();
	if (!w->err)
		w->err = churn(w, n, true);
	w->share = (thread_cpu_ns() - cpu) / (now_ns() - wall);
	pthread_barrier_wait(w->barrier);
	if (!w->err)
		w->err = churn(w, n, false);
	pthread_barrier_wait(w->barrier);
	if (!w->err)
		w->err = churn_idle(w, n / 10 > MAX_WINDOW ? n / 10 : MAX_WINDOW);
	return NULL;
}

static void child_main(const struct bench_case *c, int nthreads, size_t count, struct report *r)
{
	static struct worker w[MAX_THREADS];
	pthread_barrier_t barrier;
	int rc;

	if (c->kind == KIND_LIB) {
		dynstack_config_t cfg;
		dynstack_config_init(&cfg);
		if (!c->cache)
			cfg.cache_stacks = 0;
		if ((rc = dynstack_init(&cfg))) {
			r->status = CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "dynstack_init: %s",
				 dynstack_strerror(rc));
			return;
		}
	}
	dynstack_attr_init(&attr);
	attr.size = STACK_SIZE;
	pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);
	for (int t = 0; t < nthreads; t++) {
		w[t].c = c;
		w[t].cpu = nthreads > 1 ? cpus[t] : -1;
		w[t].n = count / (size_t)nthreads;
		w[t].first = (size_t)t * w[t].n;
		w[t].warm = w[t].n / 20 > 1024 ? w[t].n / 20 : 1024;
		w[t].barrier = &barrier;
	}
	/* Both threads exist before anything is measured, so that in the 2-thread runs every
	 * munmap and decommit has a sibling to shoot down from the start. */
	for (int t = 1; t < nthreads; t++)
		if ((rc = pthread_create(&w[t].thread, NULL, worker_main, &w[t]))) {
			r->status = CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "pthread_create: %s", strerror(rc));
			return;
		}
	worker_main(&w[0]);
	for (int t = 1; t < nthreads; t++)
		pthread_join(w[t].thread, NULL);

	for (int t = 0; t < nthreads; t++) {
		if (w[t].err) {
			r->status = CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "thread %d: %s: %s", t, w[t].what,
				 strerror(-w[t].err));
			return;
		}
		for (int f = 0; f < FIGURES; f++)
			r->ns[f] += w[t].ns[f] / nthreads;
		if (!t || w[t].share < r->share)
			r->share = w[t].share;
	}
	if (c->kind == KIND_LIB) {
		dynstack_stats_t st = { .struct_size = sizeof(st) };
		dynstack_stats_get(&st);
		r->faults = (double)st.nr_dynamic_stacks_faults / st.nr_dynamic_stacks_created;
		r->hits = (double)st.nr_dynamic_stacks_cache_hits / st.nr_dynamic_stacks_created;
	}
	r->status = CHILD_OK;
}

/* ---- what one relaxed atomic add costs: alone, and with the other CPU adding to the same
 * cache line (the library's counters are process-wide atomics) */
static _Atomic uint64_t shared_line[8] __attribute__((aligned(64)));
static pthread_barrier_t add_barrier;

static double atomic_adds(_Atomic uint64_t *p)
{
	double t0 = now_ns();
	for (int i = 0; i < (1 << 21); i++)
		atomic_fetch_add_explicit(p, 1, memory_order_relaxed);
	return (now_ns() - t0) / (1 << 21);
}

static void *adder(void *arg)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpus[1] < 0 ? 0 : cpus[1], &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	pthread_barrier_wait(&add_barrier);
	atomic_adds(&shared_line[0]);
	return NULL;
}

static void child_atomics(struct report *r)
{
	static _Atomic uint64_t own __attribute__((aligned(64)));
	pthread_t th;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpus[0] < 0 ? 0 : cpus[0], &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	atomic_adds(&own);
	r->ns[0] = atomic_adds(&own);
	pthread_barrier_init(&add_barrier, NULL, 2);
	if (pthread_create(&th, NULL, adder, NULL)) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "pthread_create failed");
		return;
	}
	pthread_barrier_wait(&add_barrier);
	r->ns[1] = atomic_adds(&shared_line[1]);
	pthread_join(th, NULL);
	r->status = CHILD_OK;
}

struct cache_child {
	const struct bench_case *c;
	int nthreads;
	size_t count;
};

static void measure_cache(void *ctx, void *out)
{
	struct cache_child *k = ctx;
	if (k->c)
		child_main(k->c, k->nthreads, k->count, out);
	else
		child_atomics(out);
}

/* Fork, let the child measure one case (or the atomics, for c == NULL), collect its report. */
static int run_child(const struct bench_case *c, int nthreads, size_t count, struct report *r)
{
	struct cache_child ctx = { c, nthreads, count };
	memset(r, 0, sizeof(*r));
	int rc = bench_in_child(measure_cache, &ctx, r, sizeof(*r), r->why, sizeof(r->why));
	if (rc < 0)
		return rc;
	if (rc)
		r->status = CHILD_ERROR;
	return 0;
}

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--count N] [--slow-count N] [--rounds R] [--quick]\n"
		"  --count N       coroutines per run with the cache and with malloc (default %d)\n"
		"  --slow-count N  coroutines per run without the cache and with mmap, whose\n"
		"                  syscalls cost microseconds (default: --count / 10)\n"
		"  --rounds R      children per case, 1..%d; figures are medians (default %d)\n"
		"  --quick         --count %d\n",
		argv0, DEFAULT_COUNT, MAX_ROUNDS, DEFAULT_ROUNDS, DEFAULT_COUNT / 10);
}

static int parse_count(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end || *s == '-' || v < MAX_WINDOW * MAX_THREADS || v > 1ull << 32)
		return -1;
	*out = (size_t)v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "count", required_argument, NULL, 'n' },
		{ "slow-count", required_argument, NULL, 's' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	size_t count = DEFAULT_COUNT, slow = 0;
	int rounds = DEFAULT_ROUNDS, opt;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'n':
			if (parse_count(optarg, &count))
				goto usage;
			break;
		case 's':
			if (parse_count(optarg, &slow))
				goto usage;
			break;
		case 'r':
			rounds = atoi(optarg);
			if (rounds < 1 || rounds > MAX_ROUNDS)
				goto usage;
			break;
		case 'q':
			count = DEFAULT_COUNT / 10;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return 0;
		default:
			goto usage;
		}
	}
	if (optind != argc)
		goto usage;
	if (!slow)
		slow = count / 10 > MAX_WINDOW * MAX_THREADS ? count / 10 :
							       MAX_WINDOW * MAX_THREADS;

	page = (size_t)sysconf(_SC_PAGESIZE);
	cpu_set_t set;
	int ncpu = 0;
	if (!sched_getaffinity(0, sizeof(set), &set))
		for (int c = 0; c < CPU_SETSIZE && ncpu < MAX_THREADS; c++)
			if (CPU_ISSET(c, &set))
				cpus[ncpu++] = c;
	if (ncpu < MAX_THREADS)
		cpus[0] = cpus[1] = -1;
	/* Other tasks on the CPUs would take the shootdowns away from the 2-thread runs: run above
	 * them where allowed (root), as is otherwise. */
	bool raised = setpriority(PRIO_PROCESS, 0, -20) == 0;
	bench_unset_config_env();
	tick_calibrate();
	if (plan_make(count > slow ? count : slow)) {
		fprintf(stderr, "bench_cache: out of memory\n");
		return 1;
	}

	bench_print_machine(page, raised);
	printf("# %u KiB stacks; the workload of examples/demo.c: ~92%% shallow 0.25-2 KiB, 5%%"
	       " medium 2-6 KiB, 1.6%% deep 16-%u KiB, 1.2%% alloca of %u KiB\n",
	       STACK_SIZE / KIB, DEEP_MAX / KIB, ALLOCA_BYTES / KIB);
	printf("# coroutines per run: %zu (cache, malloc), %zu (nocache, mmap), split among the"
	       " threads; %d rounds; medians; ns per coroutine and thread\n",
	       count, slow, rounds);

	static double samples[CASES][MAX_THREADS][FIGURES][MAX_ROUNDS];
	static struct report last[CASES][MAX_THREADS];
	static double share[CASES][MAX_THREADS]; /* the lowest over the rounds */
	int state[CASES][MAX_THREADS] = { { 0 } }, got[CASES][MAX_THREADS] = { { 0 } };
	int broken = 0;
	/* Rounds of every case in turn, so that a change in machine load hits all alike. */
	for (int round = 0; round < rounds; round++) {
		for (size_t c = 0; c < CASES; c++) {
			for (int t = 0; t < MAX_THREADS; t++) {
				struct report r;
				int rc;
				if (state[c][t] != CHILD_OK)
					continue;
				if ((rc = run_child(&cases[c], t + 1, cases[c].slow ? slow : count,
						    &r))) {
					fprintf(stderr, "bench_cache: fork: %s\n", strerror(-rc));
					return 1;
				}
				if (r.status != CHILD_OK) {
					state[c][t] = r.status;
					printf("# churn_%dt_%s: %s: %s\n", t + 1, cases[c].name,
					       r.status == CHILD_SKIP ? "skipped" : "FAILED",
					       r.why);
					broken |= r.status == CHILD_ERROR;
					continue;
				}
				for (int f = 0; f < FIGURES; f++)
					samples[c][t][f][got[c][t]] = r.ns[f];
				if (!got[c][t] || r.share < share[c][t])
					share[c][t] = r.share;
				got[c][t]++;
				last[c][t] = r;
			}
		}
	}

	double med[CASES][MAX_THREADS][FIGURES] = { { { 0 } } };
	for (int t = 0; t < MAX_THREADS; t++) {
		for (size_t c = 0; c < CASES; c++) {
			if (got[c][t] != rounds)
				continue;
			for (int f = 0; f < FIGURES; f++)
				med[c][t][f] = median(samples[c][t][f], (size_t)rounds);
			if (cases[c].kind == KIND_LIB)
				printf("# churn_%dt_%s: %.3f commit faults per coroutine, %.1f%% of"
				       " creates served by a cache\n",
				       t + 1, cases[c].name, last[c][t].faults,
				       100 * last[c][t].hits);
			/* Off its CPU (preempted, or asleep on the mmap lock) a thread takes no
			 * shootdowns: say how much of the timed loop each thread really ran. */
			if (t)
				printf("# churn_%dt_%s: the threads ran >= %.0f%% of the timed loop\n",
				       t + 1, cases[c].name, 100 * share[c][t]);
			for (int f = 0; f < FIGURES; f++)
				printf("churn_%dt_%s_%s %.0f ns\n", t + 1, cases[c].name,
				       figure_name[f], med[c][t][f]);
		}
		/* The goals: create + destroy from the warm cache in at most 100 ns, and at
		 * least 20x faster than mmap/munmap per stack. */
		double ours = med[CASE_CACHE][t][F_CD], life = med[CASE_CACHE][t][F_LIFE];
		for (size_t c = CASE_CACHE + 1; c < CASES; c++) {
			if (!ours || !med[c][t][F_CD])
				continue;
			printf("churn_%dt_%s_vs_cache_create_destroy %.2f x\n", t + 1,
			       cases[c].name, med[c][t][F_CD] / ours);
			printf("churn_%dt_%s_vs_cache_lifecycle %.2f x\n", t + 1, cases[c].name,
			       med[c][t][F_LIFE] / life);
		}
	}
	/* What a second thread doing the same churn adds: for munmap and decommit, the TLB
	 * shootdown of the sibling's CPU; for the cache, shared cache lines. */
	for (size_t c = 0; c < CASES; c++)
		for (int f = F_CD; f <= F_DESTROY; f += F_DESTROY - F_CD)
			if (med[c][0][f] && med[c][1][f])
				printf("churn_%s_%s_2t_vs_1t %.2f x\n", cases[c].name,
				       figure_name[f], med[c][1][f] / med[c][0][f]);

	struct report r;
	if (!run_child(NULL, 2, 0, &r) && r.status == CHILD_OK) {
		printf("atomic_add_private_line %.1f ns\n", r.ns[0]);
		printf("atomic_add_line_shared_2t %.1f ns\n", r.ns[1]);
	}
	return broken;
usage:
	usage(stderr, argv[0]);
	return 2;
}
