/* What an asynchronous signal storm costs green stacks, the user-space form of the arm64
 * IRQ-stack measurement (seed 001: interrupts on the task stack, maximum use 7256 bytes; on their
 * own stack, 5816). The same coroutine workload runs three times: (a) without signals, (b) under
 * a 10 kHz SIGALRM storm whose handler was installed by plain sigaction (no SA_ONSTACK: it runs on
 * whatever green stack is live), (c) under the same storm with the handler installed by
 * dynstack_sigaction (it runs on the thread's sync stack). The handler takes a profiler-style
 * sample: a few frames with a local buffer each. Per-coroutine peaks come from dynstack_peak
 * (committed bytes, page-granular) and from the lowest non-zero byte of each stack (byte-granular:
 * fresh pages are zero, the workload and the handler write non-zero patterns). Handlers are
 * process-wide, so every case runs in a forked child and reports by a pipe. */
#include <dynstack.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "bench.h"

#define COROS 1000
#define ROUNDS 400
#define RUNS 3		/* children per case; every figure is the median of these */
#define TIMER_US 100	/* 10 kHz */
#define MIN_DEPTH 1024	/* bytes of stack each coroutine digs to: 1 KiB ... */
#define DEPTH_STEPS 21	/* ... + 0..20 x 256 bytes, up to 6 KiB, varying per coroutine */
#define SAMPLE_LEVELS 5 /* frames of the handler's sample, SAMPLE_BYTES of buffer each */
#define SAMPLE_BYTES 256
#define SPIN 1500 /* iterations of work at the deepest point of every round */

enum bench_case {
	CASE_NONE,
	CASE_GREEN,
	CASE_SYNC,
	CASES,
	CASE_GREEN_GROW = CASES /* green, stacks growing on demand: reported, expected to die */
};
static const char *case_name[CASES] = { "none", "green", "sync" };
#define STACK_SIZE (16 * 1024)

/* One child's answer, in one write() below PIPE_BUF. */
struct report {
	int ok;
	char why[160];
	double max_peak, mean_peak; /* dynstack_peak, bytes */
	double max_used, mean_used; /* lowest non-zero byte, bytes from the top */
	double pages;		    /* nr_dynamic_stacks_pages at the end */
	double signals, on_coro;    /* delivered; of those, handled on a green stack */
	double seconds;
};

struct coro_arg {
	size_t depth;
	volatile unsigned sink;
};

static volatile sig_atomic_t nsignals, non_coro;
/* The running coroutine's stack, set by the scheduler before every resume (0: none). */
static volatile uintptr_t cur_lo, cur_hi;
static volatile unsigned sample_sink;

/* A profiler's sample: a few frames deep, a local buffer in each, written so that it is there. */
static __attribute__((noinline)) unsigned sample(int level)
{
	volatile unsigned char buf[SAMPLE_BYTES];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(0xa5 ^ i ^ level);
	unsigned s = buf[level] + (level ? sample(level - 1) : 0);
	return s + buf[sizeof(buf) - 1];
}

static void on_alarm(int sig)
{
	(void)sig;
	uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
	nsignals++;
	if (sp >= cur_lo && sp < cur_hi)
		non_coro++;
	sample_sink += sample(SAMPLE_LEVELS - 1);
}

/* Recurse until `floor`, writing a non-zero pattern into every frame, then do some work there:
 * the coroutine spends most of its time at its deepest point, where a signal adds the most. */
static __attribute__((noinline)) unsigned dig(uintptr_t floor)
{
	volatile unsigned char buf[128];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(0x5a + i);
	if ((uintptr_t)__builtin_frame_address(0) > floor)
		return dig(floor) + buf[7];
	unsigned h = 2166136261u;
	for (unsigned i = 0; i < SPIN; i++)
		h = (h ^ i) * 16777619u;
	return h + buf[3];
}

static void coro_fn(void *arg)
{
	struct coro_arg *a = arg;
	uintptr_t top = (uintptr_t)__builtin_frame_address(0);
	for (;;) {
		a->sink += dig(top - a->depth);
		dynstack_coro_yield();
	}
}

/* Bytes from the top of s down to its lowest non-zero byte: fresh pages read as zero. */
static size_t used_bytes(dynstack_t *s)
{
	const unsigned char *top = dynstack_top(s);
	const unsigned char *p = top - dynstack_committed(s);
	while (p < top && !*p)
		p++;
	return (size_t)(top - p);
}

static void fail(struct report *r, const char *what, int err)
{
	r->ok = 0;
	snprintf(r->why, sizeof(r->why), "%s: %s", what, dynstack_strerror(err));
}

static void run_case(enum bench_case c, struct report *r)
{
	static dynstack_coro_t *co[COROS];
	static struct coro_arg args[COROS];
	dynstack_config_t cfg;
	dynstack_attr_t attr;
	int rc;

	memset(r, 0, sizeof(*r));
	dynstack_config_init(&cfg);
	cfg.cache_stacks = 0;
	if ((rc = dynstack_init(&cfg)))
		return fail(r, "dynstack_init", rc);
	dynstack_attr_init(&attr);
	attr.policy = "trim=off"; /* peaks stay committed, as the stack's high-water mark */
	attr.name = "bench-signals";
	attr.size = STACK_SIZE;
	/* Green: the whole reservation committed up front (see main). The byte-granular figures
	 * still see every byte written; the page figures are then the pages those bytes need. */
	if (c == CASE_GREEN)
		attr.initial = STACK_SIZE;
	for (int i = 0; i < COROS; i++) {
		args[i].depth = MIN_DEPTH + (size_t)((i * 37) % DEPTH_STEPS) * 256;
		if ((rc = dynstack_coro_create(&co[i], coro_fn, &args[i], &attr)))
			return fail(r, "dynstack_coro_create", rc);
	}
	/* Page in the handler's code before the storm starts. */
	sample_sink += sample(SAMPLE_LEVELS - 1);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if ((c == CASE_GREEN || c == CASE_GREEN_GROW) && sigaction(SIGALRM, &sa, NULL))
		return fail(r, "sigaction", -errno);
	if (c == CASE_SYNC && (rc = dynstack_sigaction(SIGALRM, &sa, NULL)))
		return fail(r, "dynstack_sigaction", rc);
	struct itimerval it = { { 0, TIMER_US }, { 0, TIMER_US } };
	if (c != CASE_NONE && setitimer(ITIMER_REAL, &it, NULL))
		return fail(r, "setitimer", -errno);

	double t0 = now_ns();
	for (int round = 0; round < ROUNDS; round++) {
		for (int i = 0; i < COROS; i++) {
			dynstack_t *s = dynstack_coro_stack(co[i]);
			uintptr_t hi = (uintptr_t)dynstack_top(s);
			cur_lo = hi - dynstack_size(s);
			cur_hi = hi;
			rc = dynstack_coro_resume(co[i]);
			cur_lo = cur_hi = 0;
			if (rc)
				return fail(r, "dynstack_coro_resume", rc);
		}
	}
	r->seconds = (now_ns() - t0) / 1e9;
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);
	signal(SIGALRM, SIG_IGN);

	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	double sum_peak = 0, sum_used = 0, need = 0;
	for (int i = 0; i < COROS; i++) {
		dynstack_t *s = dynstack_coro_stack(co[i]);
		double used = (double)used_bytes(s);
		size_t need_i = (used_bytes(s) + page - 1) / page;
		double peak = c == CASE_GREEN ? (double)(need_i * page) : (double)dynstack_peak(s);
		need += (double)need_i;
		sum_peak += peak;
		sum_used += used;
		if (peak > r->max_peak)
			r->max_peak = peak;
		if (used > r->max_used)
			r->max_used = used;
	}
	r->mean_peak = sum_peak / COROS;
	r->mean_used = sum_used / COROS;
	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	r->pages = c == CASE_GREEN ? need : (double)st.nr_dynamic_stacks_pages;
	r->signals = nsignals;
	r->on_coro = non_coro;
	r->ok = 1;
}

static void measure(void *ctx, void *out)
{
	run_case(*(enum bench_case *)ctx, out);
}

static double med(struct report (*r)[RUNS], int c, size_t off)
{
	double v[RUNS];
	for (int k = 0; k < RUNS; k++)
		v[k] = *(double *)((char *)&r[c][k] + off);
	return median(v, RUNS);
}

int main(void)
{
	static struct report rep[CASES][RUNS];
	int okc[CASES] = { 0 };

	printf("# %d coroutines digging %d..%d bytes each, %d rounds; storm: SIGALRM every %d us;"
	       " handler sample: %d frames of %d bytes; %d runs per case, medians\n",
	       COROS, MIN_DEPTH, MIN_DEPTH + (DEPTH_STEPS - 1) * 256, ROUNDS, TIMER_US,
	       SAMPLE_LEVELS, SAMPLE_BYTES, RUNS);
	/* Cases interleaved run by run, so that a change of machine load hits all three alike. */
	for (int k = 0; k < RUNS; k++) {
		for (int c = 0; c < CASES; c++) {
			enum bench_case bc = c;
			struct report *r = &rep[c][k];
			char why[160] = "";
			int rc = bench_in_child(measure, &bc, r, sizeof(*r), why, sizeof(why));
			if (rc < 0) {
				fprintf(stderr, "bench_signals: fork: %s\n", strerror(-rc));
				return 1;
			}
			if (rc > 0) {
				fprintf(stderr, "bench_signals: %s: %s\n", case_name[c], why);
				return 1;
			}
			if (!r->ok) {
				fprintf(stderr, "bench_signals: %s: %s\n", case_name[c], r->why);
				return 1;
			}
			okc[c]++;
		}
	}
	(void)okc;

	/* The storm without SA_ONSTACK on stacks that grow on demand: whenever the kernel's signal
	 * frame (1-3.5 KiB with AVX state) reaches an uncommitted page, the kernel cannot write it
	 * and kills the process with SIGSEGV (si_code SI_KERNEL, no address: no growth fault the
	 * library could serve). That is why the green case above has its stacks committed. */
	int died = 0;
	char grow_why[160] = "";
	for (int k = 0; k < RUNS; k++) {
		enum bench_case bc = CASE_GREEN_GROW;
		struct report r;
		char why[160] = "";
		int rc = bench_in_child(measure, &bc, &r, sizeof(r), why, sizeof(why));
		if (rc < 0) {
			fprintf(stderr, "bench_signals: fork: %s\n", strerror(-rc));
			return 1;
		}
		if (rc > 0 || !r.ok) {
			died++;
			snprintf(grow_why, sizeof(grow_why), "%s", rc > 0 ? why : r.why);
		}
	}
	printf("# green storm on growing stacks: %d of %d runs died%s%s\n", died, RUNS,
	       died ? ": " : "", grow_why);
	printf("signals_green_grow_died %d runs\n", died);

	double max_peak[CASES], mean_peak[CASES], max_used[CASES], mean_used[CASES], pages[CASES];
	for (int c = 0; c < CASES; c++) {
		max_peak[c] = med(rep, c, offsetof(struct report, max_peak));
		mean_peak[c] = med(rep, c, offsetof(struct report, mean_peak));
		max_used[c] = med(rep, c, offsetof(struct report, max_used));
		mean_used[c] = med(rep, c, offsetof(struct report, mean_used));
		pages[c] = med(rep, c, offsetof(struct report, pages));
		printf("signals_max_peak_%s %.0f bytes\n", case_name[c], max_peak[c]);
		printf("signals_mean_peak_%s %.0f bytes\n", case_name[c], mean_peak[c]);
		printf("signals_max_used_%s %.0f bytes\n", case_name[c], max_used[c]);
		printf("signals_mean_used_%s %.0f bytes\n", case_name[c], mean_used[c]);
		printf("signals_pages_%s %.0f pages\n", case_name[c], pages[c]);
		printf("signals_delivered_%s %.0f signals\n", case_name[c],
		       med(rep, c, offsetof(struct report, signals)));
		printf("signals_on_green_stack_%s %.0f signals\n", case_name[c],
		       med(rep, c, offsetof(struct report, on_coro)));
		printf("signals_seconds_%s %.2f s\n", case_name[c],
		       med(rep, c, offsetof(struct report, seconds)));
	}
	for (int c = CASE_GREEN; c < CASES; c++) {
		printf("signals_max_peak_ratio_%s %.3f x\n", case_name[c],
		       max_peak[c] / max_peak[CASE_NONE]);
		printf("signals_mean_peak_ratio_%s %.3f x\n", case_name[c],
		       mean_peak[c] / mean_peak[CASE_NONE]);
		printf("signals_max_used_ratio_%s %.3f x\n", case_name[c],
		       max_used[c] / max_used[CASE_NONE]);
		printf("signals_mean_used_ratio_%s %.3f x\n", case_name[c],
		       mean_used[c] / mean_used[CASE_NONE]);
		printf("signals_pages_ratio_%s %.3f x\n", case_name[c],
		       pages[c] / pages[CASE_NONE]);
	}
	/* The seed's figure, for comparison: the same saving, measured on a kernel's task stacks. */
	printf("signals_seed_irq_on_task_stack 7256 bytes\n");
	printf("signals_seed_irq_own_stack 5816 bytes\n");
	printf("signals_seed_saving 1440 bytes\n");
	printf("signals_max_used_saving %.0f bytes\n", max_used[CASE_GREEN] - max_used[CASE_SYNC]);
	printf("signals_max_peak_saving %.0f bytes\n", max_peak[CASE_GREEN] - max_peak[CASE_SYNC]);
	return 0;
}
