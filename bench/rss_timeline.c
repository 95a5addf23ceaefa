/* RSS over time through a burst, for the plot in docs/benchmarks.md: N coroutines are resumed
 * round robin once per tick at shallow depth, all go DEEP deep in one tick, then return to
 * shallow depth and keep yielding. The process's RSS (/proc/self/statm) and the library's
 * committed stack pages (nr_dynamic_stacks_pages) are sampled every few ms, for one mode per
 * run: the library with its default policy (trim=yield:4), the library with trim=off, or
 * fixed stacks from malloc switched by swapcontext (the baseline: nothing is ever given back).
 * Not a benchmark() target: bench/plots.sh builds it against a build directory's library and
 * runs it once per mode. Output: one "t_ms rss_kib committed_kib phase" line per sample, then
 * "# name value unit" lines with the figures. */
#define _GNU_SOURCE
#include <dynstack.h>
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "bench.h"

#define KIB 1024u
#define MAX_SAMPLES 100000

enum mode {
	MODE_TRIM,
	MODE_NOTRIM,
	MODE_FIXED
};
static const char *const mode_name[] = { "trim", "notrim", "fixed" };

/* Phases, as the "phase" column shows them: before the burst, the burst tick, after it. */
enum phase {
	PH_BEFORE,
	PH_BURST,
	PH_AFTER
};

static enum mode mode = MODE_TRIM;
static size_t ncoro = 10000, stack_size = 64 * KIB, deep = 48 * KIB;
static int ticks_before = 10, ticks_after = 40;
static double tick_ms = 5, sample_ms = 1;
static size_t page;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- the workload, the same on both kinds of stack */

static volatile unsigned sink;

struct coro {
	dynstack_coro_t *co; /* library modes */
	ucontext_t uc;	     /* fixed mode */
	char *stack;
	uintptr_t top;
	size_t deep; /* bytes to descend on the next resume, then 0 */
};

static struct coro *coros;
static ucontext_t uc_main;
static struct coro *uc_current;

static void yield_now(struct coro *c)
{
	if (mode == MODE_FIXED)
		swapcontext(&c->uc, &uc_main);
	else
		dynstack_coro_yield();
}

static void body(struct coro *c)
{
	for (;;) {
		if (c->deep)
			sink = descend(c->top, c->deep, 0);
		c->deep = 0;
		yield_now(c);
	}
}

static void lib_entry(void *arg)
{
	body(arg);
}

static void uc_entry(void)
{
	body(uc_current);
}

static int resume(struct coro *c)
{
	if (mode != MODE_FIXED)
		return dynstack_coro_resume(c->co);
	uc_current = c;
	return swapcontext(&uc_main, &c->uc) ? -errno : 0;
}

static int create(struct coro *c)
{
	if (mode != MODE_FIXED) {
		dynstack_attr_t attr;
		dynstack_attr_init(&attr);
		attr.size = stack_size;
		int rc = dynstack_coro_create(&c->co, lib_entry, c, &attr);
		if (!rc)
			c->top = (uintptr_t)dynstack_top(dynstack_coro_stack(c->co));
		return rc;
	}
	/* What a runtime without dynamic stacks does: a fixed stack per coroutine, here from
	 * malloc (64 KiB is under glibc's mmap threshold: the heap, no guard page). */
	if (!(c->stack = malloc(stack_size)) || getcontext(&c->uc))
		return -ENOMEM;
	c->uc.uc_stack.ss_sp = c->stack;
	c->uc.uc_stack.ss_size = stack_size;
	c->uc.uc_link = NULL;
	makecontext(&c->uc, uc_entry, 0);
	c->top = ((uintptr_t)c->stack + stack_size) & ~(uintptr_t)15;
	return 0;
}

/* ---- sampling */

struct sample {
	double t_ms;
	long rss_kib, committed_kib;
	enum phase phase;
};

static struct sample *samples;
static size_t nsamples;
static double t0, next_sample;

static long statm_rss_kib(void)
{
	long res = statm_resident();
	return res < 0 ? -1 : res * (long)(page / KIB);
}

static void sample(enum phase ph, int force)
{
	double t = now_ms();
	if ((!force && t < next_sample) || nsamples == MAX_SAMPLES)
		return;
	next_sample = t + sample_ms;
	dynstack_stats_t s = { .struct_size = sizeof(s) };
	long committed = 0;
	if (mode != MODE_FIXED && !dynstack_stats_get(&s))
		committed = (long)(s.nr_dynamic_stacks_pages * (page / KIB));
	samples[nsamples++] = (struct sample){ t - t0, statm_rss_kib(), committed, ph };
}

/* One tick: every coroutine resumed once (sampling between resumes), then sleep until tick_ms
 * have passed since the tick began (sampling while asleep), as a scheduler waiting for its next
 * events. A tick whose work takes longer (the burst) simply lasts longer. */
static int tick(enum phase ph)
{
	double end = now_ms() + tick_ms;
	for (size_t i = 0; i < ncoro; i++) {
		int rc = resume(&coros[i]);
		if (rc) {
			fprintf(stderr, "rss_timeline: resume: %s\n", strerror(-rc));
			return rc;
		}
		sample(ph, 0);
	}
	for (double t; (t = now_ms()) < end;) {
		double wait = next_sample < end ? next_sample - t : end - t;
		if (wait > 0) {
			struct timespec ts = { 0, (long)(wait * 1e6) };
			nanosleep(&ts, NULL);
		}
		sample(ph, 0);
	}
	return 0;
}

static size_t parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (*end == 'k' || *end == 'K')
		v *= KIB;
	else if (*end == 'm' || *end == 'M')
		v *= KIB * KIB;
	return v > 0 ? (size_t)v : 0;
}

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--mode trim|notrim|fixed] [--coros N] [--stack SIZE] [--deep SIZE]\n"
		"          [--tick MS] [--sample MS] [--before TICKS] [--after TICKS]\n"
		"  --mode     trim: the library, default policy; notrim: the library, trim=off;\n"
		"             fixed: malloc'd stacks and swapcontext (default trim)\n"
		"  --coros    coroutines (default %zu)\n"
		"  --stack    stack size, k/m suffix (default %zuk)\n"
		"  --deep     how deep each goes in the burst (default %zuk)\n"
		"  --tick     ms per scheduler tick: every coroutine resumed once (default %g)\n"
		"  --sample   ms between RSS samples (default %g)\n"
		"  --before, --after  ticks before and after the burst tick (default %d, %d)\n",
		argv0, ncoro, stack_size / KIB, deep / KIB, tick_ms, sample_ms, ticks_before,
		ticks_after);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "mode", required_argument, NULL, 'm' },
		{ "coros", required_argument, NULL, 'n' },
		{ "stack", required_argument, NULL, 's' },
		{ "deep", required_argument, NULL, 'd' },
		{ "tick", required_argument, NULL, 't' },
		{ "sample", required_argument, NULL, 'p' },
		{ "before", required_argument, NULL, 'b' },
		{ "after", required_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			for (mode = MODE_TRIM; mode <= MODE_FIXED; mode++)
				if (!strcmp(optarg, mode_name[mode]))
					break;
			if (mode > MODE_FIXED)
				goto usage;
			break;
		case 'n':
			ncoro = strtoul(optarg, NULL, 10);
			break;
		case 's':
			stack_size = parse_size(optarg);
			break;
		case 'd':
			deep = parse_size(optarg);
			break;
		case 't':
			tick_ms = atof(optarg);
			break;
		case 'p':
			sample_ms = atof(optarg);
			break;
		case 'b':
			ticks_before = atoi(optarg);
			break;
		case 'a':
			ticks_after = atoi(optarg);
			break;
		case 'h':
			usage(stdout, argv[0]);
			return 0;
		default:
			goto usage;
		}
	}
	if (optind != argc || !ncoro || !stack_size || deep + 8 * KIB > stack_size ||
	    tick_ms <= 0 || sample_ms <= 0 || ticks_before < 1 || ticks_after < 1)
		goto usage;

	page = (size_t)sysconf(_SC_PAGESIZE);
	/* This run's policy is its mode's, not one inherited from the environment. */
	unsetenv("DYNSTACK_POLICY");
	unsetenv("DYNSTACK_STATS");
	int rc;
	if (mode == MODE_NOTRIM && (rc = dynstack_policy_set("trim=off"))) {
		fprintf(stderr, "rss_timeline: dynstack_policy_set: %s\n", dynstack_strerror(rc));
		return 1;
	}
	coros = calloc(ncoro, sizeof(*coros));
	samples = calloc(MAX_SAMPLES, sizeof(*samples));
	if (!coros || !samples) {
		fprintf(stderr, "rss_timeline: out of memory\n");
		return 1;
	}
	t0 = now_ms();
	long rss_start = statm_rss_kib();
	for (size_t i = 0; i < ncoro; i++) {
		if ((rc = create(&coros[i]))) {
			fprintf(stderr, "rss_timeline: create %zu: %s\n", i, strerror(-rc));
			return 1;
		}
	}
	/* The ticks count from here: creation is not what the plot is about. */
	t0 = now_ms();
	next_sample = t0;
	sample(PH_BEFORE, 1);
	for (int k = 0; k < ticks_before; k++)
		if (tick(PH_BEFORE))
			return 1;
	long rss_before = samples[nsamples - 1].rss_kib;
	for (size_t i = 0; i < ncoro; i++)
		coros[i].deep = deep;
	double burst_start = now_ms() - t0;
	if (tick(PH_BURST))
		return 1;
	double burst_end = now_ms() - t0;
	long rss_peak = 0;
	for (int k = 0; k < ticks_after; k++)
		if (tick(PH_AFTER))
			return 1;
	sample(PH_AFTER, 1);

	size_t drop_at = 0; /* the first sample after the peak below half of it */
	for (size_t i = 0; i < nsamples; i++)
		if (samples[i].rss_kib > rss_peak)
			rss_peak = samples[i].rss_kib;
	for (size_t i = 0; i < nsamples; i++)
		if (samples[i].phase == PH_AFTER &&
		    samples[i].rss_kib - rss_before < (rss_peak - rss_before) / 2) {
			drop_at = i;
			break;
		}
	printf("# mode %s: %zu coroutines, %zu KiB stacks, %zu KiB deep once; tick %g ms, sample"
	       " every %g ms; t = 0 after all were created\n",
	       mode_name[mode], ncoro, stack_size / KIB, deep / KIB, tick_ms, sample_ms);
	printf("# t_ms rss_kib committed_kib phase(0 before, 1 burst, 2 after)\n");
	for (size_t i = 0; i < nsamples; i++)
		printf("%.2f %ld %ld %d\n", samples[i].t_ms, samples[i].rss_kib,
		       samples[i].committed_kib, samples[i].phase);
	const struct sample *last = &samples[nsamples - 1];
	printf("# timeline_%s_rss_start %.1f MiB\n", mode_name[mode], rss_start / 1024.0);
	printf("# timeline_%s_rss_before_burst %.1f MiB\n", mode_name[mode], rss_before / 1024.0);
	printf("# timeline_%s_burst_start %.1f ms\n", mode_name[mode], burst_start);
	printf("# timeline_%s_burst_end %.1f ms\n", mode_name[mode], burst_end);
	printf("# timeline_%s_rss_peak %.1f MiB\n", mode_name[mode], rss_peak / 1024.0);
	printf("# timeline_%s_rss_end %.1f MiB\n", mode_name[mode], last->rss_kib / 1024.0);
	printf("# timeline_%s_committed_end %.1f MiB\n", mode_name[mode],
	       last->committed_kib / 1024.0);
	printf("# timeline_%s_end %.1f ms\n", mode_name[mode], last->t_ms);
	if (drop_at)
		printf("# timeline_%s_half_drop_at %.1f ms\n", mode_name[mode],
		       samples[drop_at].t_ms);
	return 0;
usage:
	usage(stderr, argv[0]);
	return 2;
}
