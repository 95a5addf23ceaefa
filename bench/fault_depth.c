/* ns per page of stack growth against depth, for the cost-vs-depth plot in docs/benchmarks.md:
 * a stack grows DEPTH pages below its committed top page, touched one page at a time from the
 * main stack as bench_fault does, for the kernel's demand paging of plain read-write memory,
 * the guard and mprotect backends under the default grow policy (step=1: one fault per page),
 * and the guard backend under `double` (each fault commits as much again as is committed).
 * Every case runs in a forked child (the backend is process-wide), with the stack cache off so
 * that every run faults; children of all cases take turns, and each figure is the median over
 * rounds x repetitions, in thread CPU time (see cpu_ns). Not a benchmark() target: bench/plots.sh builds and runs it. Output:
 * one "depth_pages kernel guard mprotect guard_double" line per depth (ns per page), then
 * "# name value unit" lines. */
#define _GNU_SOURCE
#include <dynstack.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

#define ROUNDS 5
#define REPS 3
#define MIN_PAGES 1024 /* pages touched per repetition: small depths repeat the run */

static const size_t depths[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096 };
#define NDEPTHS (sizeof(depths) / sizeof(depths[0]))

enum {
	C_KERNEL,
	C_GUARD,
	C_MPROTECT,
	C_GUARD_DOUBLE,
	NCASES
};
static const char *const case_name[NCASES] = { "kernel", "guard", "mprotect", "guard_double" };

struct report {
	int status; /* 0 ok */
	char why[160];
	double ns[NDEPTHS][REPS]; /* per page */
};

static size_t page;

/* The thread's CPU time, user + system: on a loaded machine a run of a few ms is often
 * preempted, and wall-clock time would count the wait for the CPU as fault cost (the kernel's
 * faults, ~1 us a page, finish within a time slice more often than the library's, which made
 * wall-clock ratios swing between 3 and 13 x on the shared reference VM). Faults and the
 * signal handler run in this thread and are counted. */
static double cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static double clock_cost; /* of one cpu_ns() pair, subtracted from every run */

static __attribute__((noinline)) double touch_down(char *from, size_t pages)
{
	volatile char *p = from;
	double t0 = cpu_ns();
	for (size_t i = 1; i <= pages; i++)
		p[-(ptrdiff_t)(i * page)] = 1;
	return cpu_ns() - t0 - clock_cost;
}

static void calibrate(void)
{
	double v[101];
	for (int i = 0; i < 101; i++) {
		double t0 = cpu_ns();
		v[i] = cpu_ns() - t0;
	}
	clock_cost = median(v, 101);
}

/* One run of `depth` pages below a committed top page; returns ns, < 0 on error. */
static double run_once(int c, size_t depth, struct report *r)
{
	size_t len = (depth + 1) * page;
	if (c == C_KERNEL) {
		char *p =
			mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return -1;
		madvise(p, len, MADV_NOHUGEPAGE); /* one fault per page, as a stack takes */
		char *top = p + len;
		top[-(ptrdiff_t)page] = 1;
		double ns = touch_down(top - page, depth);
		munmap(p, len);
		return ns;
	}
	dynstack_attr_t attr;
	dynstack_t *s;
	dynstack_stats_t a = { .struct_size = sizeof(a) }, b = { .struct_size = sizeof(b) };
	dynstack_attr_init(&attr);
	attr.size = len;
	attr.policy = c == C_GUARD_DOUBLE ? "double" : "step=1";
	int rc = dynstack_create(&s, &attr);
	if (rc) {
		snprintf(r->why, sizeof(r->why), "dynstack_create: %s", dynstack_strerror(rc));
		return -1;
	}
	char *top = dynstack_top(s);
	top[-(ptrdiff_t)page] = 1;
	dynstack_stats_get(&a);
	double ns = touch_down(top - page, depth);
	dynstack_stats_get(&b);
	dynstack_destroy(s);
	uint64_t faults = b.nr_dynamic_stacks_faults - a.nr_dynamic_stacks_faults;
	if (c != C_GUARD_DOUBLE && faults != depth) {
		snprintf(r->why, sizeof(r->why), "%llu faults for %zu pages",
			 (unsigned long long)faults, depth);
		return -1;
	}
	return ns;
}

static void child(void *ctx, void *out)
{
	int c = *(int *)ctx;
	struct report *r = out;
	r->status = 1;
	if (c != C_KERNEL) {
		dynstack_config_t cfg;
		dynstack_config_init(&cfg);
		cfg.backend = c == C_MPROTECT ? DYNSTACK_BACKEND_MPROTECT : DYNSTACK_BACKEND_GUARD;
		cfg.cache_stacks = 0; /* a warm stack keeps its pages and would not fault */
		int rc = dynstack_init(&cfg);
		if (rc) {
			snprintf(r->why, sizeof(r->why), "dynstack_init: %s",
				 dynstack_strerror(rc));
			return;
		}
	}
	if (run_once(c, 16, r) < 0) /* warm-up: the handler's code and data paged in */
		return;
	for (size_t d = 0; d < NDEPTHS; d++) {
		size_t runs = depths[d] >= MIN_PAGES ? 1 : MIN_PAGES / depths[d];
		for (int k = 0; k < REPS; k++) {
			double total = 0;
			for (size_t i = 0; i < runs; i++) {
				double ns = run_once(c, depths[d], r);
				if (ns < 0)
					return;
				total += ns;
			}
			r->ns[d][k] = total / (double)(runs * depths[d]);
		}
	}
	r->status = 0;
}

int main(void)
{
	static double all[NCASES][NDEPTHS][ROUNDS * REPS];
	static struct report r;
	char why[160];

	page = (size_t)sysconf(_SC_PAGESIZE);
	unsetenv("DYNSTACK_BACKEND");
	unsetenv("DYNSTACK_POLICY");
	unsetenv("DYNSTACK_CACHE");
	unsetenv("DYNSTACK_STATS");
	calibrate();
	for (int round = 0; round < ROUNDS; round++) {
		for (int c = 0; c < NCASES; c++) {
			memset(&r, 0, sizeof(r));
			int rc = bench_in_child(child, &c, &r, sizeof(r), why, sizeof(why));
			if (rc || r.status) {
				fprintf(stderr, "fault_depth: %s: %s\n", case_name[c],
					rc < 0 ? strerror(-rc) :
					rc     ? why :
						 r.why);
				return 1;
			}
			for (size_t d = 0; d < NDEPTHS; d++)
				memcpy(&all[c][d][round * REPS], r.ns[d], sizeof(r.ns[d]));
		}
	}
	printf("# ns of thread CPU time per page of growth by depth; %d children per case x %d"
	       " repetitions of at least %d pages; medians; guard and mprotect: policy step=1,"
	       " cache off; clock read %.0f ns, subtracted\n",
	       ROUNDS, REPS, MIN_PAGES, clock_cost);
	printf("# depth_pages");
	for (int c = 0; c < NCASES; c++)
		printf(" %s", case_name[c]);
	printf("\n");
	double med[NCASES][NDEPTHS];
	for (size_t d = 0; d < NDEPTHS; d++) {
		printf("%zu", depths[d]);
		for (int c = 0; c < NCASES; c++) {
			med[c][d] = median(all[c][d], ROUNDS * REPS);
			printf(" %.0f", med[c][d]);
		}
		printf("\n");
	}
	for (size_t d = 0; d < NDEPTHS; d++)
		for (int c = 1; c < NCASES; c++)
			printf("# depth_%zu_%s_vs_kernel %.2f x\n", depths[d], case_name[c],
			       med[c][d] / med[C_KERNEL][d]);
	return 0;
}
