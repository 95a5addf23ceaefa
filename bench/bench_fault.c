/* What one page of stack growth costs through the library's fault path, per backend, next to
 * the kernel's own demand paging and to a bare handler that makes only the same commit syscall;
 * then, on the default backend, what it costs under each built-in fault policy, with and without
 * populate. The backend is process-wide, so every case runs in a forked child and reports by a
 * pipe. */
#include <dynstack.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

/* Guard regions (Linux 6.13); glibc 2.36 does not name them. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

/* 1024 pages (4 MiB) per run: long enough that the clock and the per-run set-up vanish, short
 * enough that 7 rounds of every case stay well under the ~30 s budget of a 2-core VM. */
#define PAGES 1024
#define ROUNDS 7
/* Runs measured per child after one warm-up run, which pages in the handler's code and data,
 * binds the PLT entries and, for the library, recycles the stack once as later runs do. */
#define RUNS 5
#define SAMPLES (ROUNDS * RUNS)
#define ALTSTACK_SIZE (64 * 1024) /* DYNSTACK_MIN_SYNC_STACK: the same as the library's */

enum bench_case {
	CASE_BASELINE,
	CASE_GUARD,
	CASE_GUARD_BARE,
	CASE_MPROTECT,
	CASE_MPROTECT_BARE,
	CASE_POLICY, /* the first of the policy cases, one per entry of policies[] */
	CASES = CASE_POLICY + 8
};

/* The policy cases run on a recycled stack of PAGES + 1 pages: each run destroys its stack and
 * creates the next one under the same name, as a pool of coroutines does, so that learn knows
 * the depth of the run before (the warm-up run teaches the first measured one). */
static const struct policy_case {
	const char *name; /* of the figure */
	const char *spec;
	unsigned step; /* pages per fault under step=N; 0 for double and learn */
	bool learn;    /* one fault per run once a run has taught it the depth */
	bool populate;
} policies[CASES - CASE_POLICY] = {
	{ "fault_policy_step1", "step=1", 1, false, false },
	{ "fault_policy_step1_populate", "step=1,populate", 1, false, true },
	{ "fault_policy_step4", "step=4", 4, false, false },
	{ "fault_policy_step4_populate", "step=4,populate", 4, false, true },
	{ "fault_policy_double", "double", 0, false, false },
	{ "fault_policy_double_populate", "double,populate", 0, false, true },
	{ "fault_policy_learn", "learn", 0, true, false },
	{ "fault_policy_learn_populate", "learn,populate", 0, true, true },
};
#define DOUBLE_CAP (256 * 1024) /* double's default cap per fault, in bytes */

static const char *case_name[CASES] = {
	"fault_baseline_kernel", "fault_guard_ours",	"fault_guard_bare",
	"fault_mprotect_ours",	 "fault_mprotect_bare",
};

enum {
	CHILD_OK,
	CHILD_SKIP,
	CHILD_ERROR
};

/* One child's answer: written in one write() below PIPE_BUF, so it arrives whole or not at all. */
struct report {
	int status;
	char why[200];
	double ns[RUNS]; /* per page */
};

static size_t page;
/* The policy case a child runs; NULL: the library's default policy, step=1. */
static const struct policy_case *policy;

/* Bare handler state: written before the handler is installed, read inside it. */
static int bare_mprotect;
static volatile size_t bare_faults;

/* One write per page, top-down as a stack grows: the page below `from` first, then the next. */
static __attribute__((noinline)) double touch_down(char *from, size_t pages)
{
	volatile char *p = from;
	double t0 = now_ns();
	for (size_t i = 1; i <= pages; i++)
		p[-(ptrdiff_t)(i * page)] = 1;
	return (now_ns() - t0) / (double)pages;
}

static int fail(struct report *r, int status, const char *what, int err)
{
	r->status = status;
	snprintf(r->why, sizeof(r->why), "%s: %s", what, strerror(err));
	return -1;
}

/* 1. The floor: the kernel demand-pages plain RW anonymous memory, no signal involved. */
static int run_baseline(struct report *r, int run)
{
	size_t len = (PAGES + 1) * page;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return fail(r, CHILD_ERROR, "mmap", errno);
	/* Anonymous memory may get a transparent huge page or a large folio for many faults at
	 * once; a stack never does (its page tables exist already, or its VMA grows one page at a
	 * time), so the baseline is kept to one fault per page as well. */
	madvise(p, len, MADV_NOHUGEPAGE);
	char *top = p + len;
	top[-(ptrdiff_t)page] = 1; /* like a stack's first page: there before the growth starts */
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	double ns = touch_down(top - page, PAGES);
	getrusage(RUSAGE_SELF, &ru1);
	if (ru1.ru_minflt - ru0.ru_minflt < PAGES) {
		munmap(p, len);
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "%ld minor faults for %d pages: not one per page",
			 ru1.ru_minflt - ru0.ru_minflt, PAGES);
		return -1;
	}
	munmap(p, len);
	if (run >= 0)
		r->ns[run] = ns;
	return 0;
}

/* The faults a run must report to the stats: the policy's rule replayed on the page-by-page
 * descent from the committed top page. The figures count only if every fault was reported. */
static uint64_t expected_faults(int run)
{
	size_t top = PAGES + 1, committed = 1, cap = DOUBLE_CAP / page, n = 0;

	if (policy && policy->learn && run >= 0)
		return 1; /* the warm-up run (-1) taught it the whole depth */
	for (size_t depth = 2; depth <= top; depth++) {
		if (depth <= committed)
			continue;
		n++;
		if (policy && !policy->step && !policy->learn)
			committed += committed < cap ? committed : cap;
		else
			committed = depth + (policy && policy->step ? policy->step - 1 : 0);
		if (committed > top)
			committed = top;
	}
	return n;
}

/* 2, 3, and the policy cases. The library: a stack touched from the main stack through a
 * pointer. The handler classifies by address, so this is the whole fault path without any
 * context switch. */
static int run_library(struct report *r, int run)
{
	dynstack_attr_t attr;
	dynstack_stats_t before = { .struct_size = sizeof(before) };
	dynstack_stats_t after = { .struct_size = sizeof(after) };
	dynstack_t *s;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = (PAGES + 1) * page; /* the top page is committed at creation */
	attr.name = "bench-fault";
	attr.policy = policy ? policy->spec : NULL;
	if ((rc = dynstack_create(&s, &attr)))
		return fail(r, CHILD_ERROR, "dynstack_create", -rc);
	char *top = dynstack_top(s);
	top[-(ptrdiff_t)page] = 1;
	dynstack_stats_get(&before);
	double ns = touch_down(top - page, PAGES);
	dynstack_stats_get(&after);
	/* Destroyed after every run: the next one gets the same slot back decommitted, so every
	 * run faults on every page it does not commit in bulk. */
	dynstack_destroy(s);
	uint64_t faults = after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults;
	uint64_t populated = after.nr_dynamic_stacks_populated - before.nr_dynamic_stacks_populated;
	if (faults != expected_faults(run)) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "%llu faults for %d pages, expected %llu",
			 (unsigned long long)faults, PAGES,
			 (unsigned long long)expected_faults(run));
		return -1;
	}
	if (policy && policy->populate && populated != PAGES) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "%llu pages populated of %d committed",
			 (unsigned long long)populated, PAGES);
		return -1;
	}
	if (run >= 0)
		r->ns[run] = ns;
	return 0;
}

/* 4. The least any signal-based growth can cost: delivery on an alternate stack, the commit
 * syscall of the backend for the faulting page, sigreturn, and the re-fault. */
static void bare_handler(int sig, siginfo_t *si, void *uctx)
{
	int saved = errno;
	char *pg = (char *)((uintptr_t)si->si_addr & ~(uintptr_t)(page - 1));
	int rc = bare_mprotect ? mprotect(pg, page, PROT_READ | PROT_WRITE) :
				 madvise(pg, page, MADV_GUARD_REMOVE);
	if (rc) {
		/* Returning would fault forever: die by the default action instead. */
		signal(SIGSEGV, SIG_DFL);
		return;
	}
	bare_faults++;
	errno = saved;
}

static char *bare_region;

static int bare_setup(struct report *r, int use_mprotect)
{
	size_t len = (PAGES + 1) * page;
	void *alt = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (alt == MAP_FAILED)
		return fail(r, CHILD_ERROR, "mmap", errno);
	stack_t ss = { .ss_sp = alt, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
	if (sigaltstack(&ss, NULL))
		return fail(r, CHILD_ERROR, "sigaltstack", errno);

	/* The library's flags and mask, so that only the handler body differs. */
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = bare_handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	sigfillset(&sa.sa_mask);
	if (sigaction(SIGSEGV, &sa, NULL))
		return fail(r, CHILD_ERROR, "sigaction", errno);

	bare_mprotect = use_mprotect;
	int prot = use_mprotect ? PROT_NONE : PROT_READ | PROT_WRITE;
	bare_region = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (bare_region == MAP_FAILED)
		return fail(r, CHILD_ERROR, "mmap", errno);
	madvise(bare_region, len, MADV_NOHUGEPAGE);
	if (!use_mprotect && madvise(bare_region, page, MADV_GUARD_INSTALL))
		return fail(r, errno == EINVAL ? CHILD_SKIP : CHILD_ERROR,
			    "madvise(MADV_GUARD_INSTALL)", errno);
	return 0;
}

static int run_bare(struct report *r, int run)
{
	size_t grow = PAGES * page;
	char *top = bare_region + (PAGES + 1) * page;

	/* Decommit the way the backend does, so every page faults again. */
	if (bare_mprotect) {
		if (mprotect(bare_region, grow, PROT_NONE) ||
		    madvise(bare_region, grow, MADV_DONTNEED) ||
		    mprotect(top - page, page, PROT_READ | PROT_WRITE))
			return fail(r, CHILD_ERROR, "mprotect/madvise", errno);
	} else if (madvise(bare_region, grow, MADV_GUARD_INSTALL)) {
		return fail(r, CHILD_ERROR, "madvise(MADV_GUARD_INSTALL)", errno);
	}
	top[-(ptrdiff_t)page] = 1;
	bare_faults = 0;
	double ns = touch_down(top - page, PAGES);
	if (bare_faults != PAGES) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "%zu faults for %d pages: not one per page",
			 (size_t)bare_faults, PAGES);
		return -1;
	}
	if (run >= 0)
		r->ns[run] = ns;
	return 0;
}

static void child_main(enum bench_case c, struct report *r)
{
	int (*run)(struct report *, int) = run_baseline;
	int rc;

	if (c >= CASE_POLICY) {
		/* The default backend, as an application gets it. */
		policy = &policies[c - CASE_POLICY];
		/* The default backend, and no warm-stack cache: a stack re-created
		 * from the cache would keep its pages and take no fault at all. */
		dynstack_config_t cfg;
		dynstack_config_init(&cfg);
		cfg.cache_stacks = 0;
		if ((rc = dynstack_init(&cfg))) {
			r->status = CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "dynstack_init: %s",
				 dynstack_strerror(rc));
			return;
		}
		run = run_library;
	} else if (c == CASE_GUARD || c == CASE_MPROTECT) {
		dynstack_config_t cfg;
		dynstack_config_init(&cfg);
		cfg.backend = c == CASE_GUARD ? DYNSTACK_BACKEND_GUARD : DYNSTACK_BACKEND_MPROTECT;
		cfg.cache_stacks = 0; /* every run must fault: no warm stacks */
		if ((rc = dynstack_init(&cfg))) {
			r->status = rc == -EOPNOTSUPP ? CHILD_SKIP : CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "dynstack_init(%s): %s",
				 c == CASE_GUARD ? "guard" : "mprotect", dynstack_strerror(rc));
			return;
		}
		run = run_library;
	} else if (c == CASE_GUARD_BARE || c == CASE_MPROTECT_BARE) {
		if (bare_setup(r, c == CASE_MPROTECT_BARE))
			return;
		run = run_bare;
	}
	for (int i = -1; i < RUNS; i++) /* run -1 is the warm-up */
		if (run(r, i))
			return;
	r->status = CHILD_OK;
}

struct fault_child {
	enum bench_case c;
};

static void measure_fault(void *ctx, void *out)
{
	child_main(((struct fault_child *)ctx)->c, out);
}

/* Fork, let the child measure one case, collect its samples. */
static int run_child(enum bench_case c, struct report *r)
{
	struct fault_child ctx = { c };
	memset(r, 0, sizeof(*r));
	int rc = bench_in_child(measure_fault, &ctx, r, sizeof(*r), r->why, sizeof(r->why));
	if (rc < 0)
		return rc;
	if (rc)
		r->status = CHILD_ERROR;
	return 0;
}

int main(void)
{
	static double samples[CASES][SAMPLES];
	size_t got[CASES] = { 0 };
	int state[CASES] = { 0 }; /* CHILD_OK until a child skips or fails */
	double med[CASES];
	int broken = 0;

	page = (size_t)sysconf(_SC_PAGESIZE);
	for (int c = CASE_POLICY; c < CASES; c++)
		case_name[c] = policies[c - CASE_POLICY].name;
	/* The children pick their backend through the config and their policy per stack; an
	 * inherited DYNSTACK_BACKEND or DYNSTACK_POLICY would override them and measure one
	 * case under another's name. */
	unsetenv("DYNSTACK_BACKEND");
	unsetenv("DYNSTACK_STATS");
	unsetenv("DYNSTACK_POLICY");
	unsetenv("DYNSTACK_CACHE"); /* the children set cache_stacks = 0 */

	struct utsname u;
	if (!uname(&u))
		printf("# Linux %s %s, %zu-byte pages\n", u.release, u.machine, page);
	printf("# %d pages per run, %d runs per figure (%d children x %d, each after a warm-up);"
	       " medians\n",
	       PAGES, SAMPLES, ROUNDS, RUNS);
	printf("# policy cases: the default backend; faults per run, checked against"
	       " nr_dynamic_stacks_faults in every run:");
	for (int c = CASE_POLICY; c < CASES; c += 2) {
		policy = &policies[c - CASE_POLICY];
		printf(" %s %llu", policy->spec, (unsigned long long)expected_faults(0));
	}
	policy = NULL;
	printf("\n");
	/* Rounds of all cases in turn rather than one case after another: a change in machine
	 * load then hits every case alike, and the ratios stay honest. */
	for (int round = 0; round < ROUNDS; round++) {
		for (int c = 0; c < CASES; c++) {
			struct report r;
			int rc;
			if (state[c] != CHILD_OK)
				continue;
			if ((rc = run_child((enum bench_case)c, &r))) {
				fprintf(stderr, "bench_fault: fork: %s\n", strerror(-rc));
				return 1;
			}
			if (r.status != CHILD_OK) {
				state[c] = r.status;
				printf("# %s: %s: %s\n", case_name[c],
				       r.status == CHILD_SKIP ? "skipped" : "FAILED", r.why);
				broken |= r.status == CHILD_ERROR;
				continue;
			}
			for (int i = 0; i < RUNS; i++)
				samples[c][got[c]++] = r.ns[i];
		}
	}

	for (int c = 0; c < CASES; c++) {
		if (got[c] != SAMPLES) {
			med[c] = 0;
			continue;
		}
		med[c] = median(samples[c], got[c]);
		printf("%s %.0f ns/page\n", case_name[c], med[c]);
	}
	/* ours/baseline: what a page of dynamic stack costs over plain demand paging.
	 * ours/bare - 1: what the library's handler adds over the bare signal + commit of the same
	 * backend (the target: at most 10%). */
	static const struct {
		const char *name;
		enum bench_case ours, bare;
	} backends[] = {
		{ "guard", CASE_GUARD, CASE_GUARD_BARE },
		{ "mprotect", CASE_MPROTECT, CASE_MPROTECT_BARE },
	};
	for (size_t b = 0; b < sizeof(backends) / sizeof(backends[0]); b++) {
		double ours = med[backends[b].ours], bare = med[backends[b].bare];
		if (ours && med[CASE_BASELINE])
			printf("fault_%s_vs_baseline %.2f x\n", backends[b].name,
			       ours / med[CASE_BASELINE]);
		if (ours && bare)
			printf("fault_%s_handler_overhead %.1f %%\n", backends[b].name,
			       100.0 * (ours / bare - 1.0));
	}
	/* policy/baseline: at most 1.0 is growth that costs no more than plain demand paging,
	 * though every fault still goes through the handler and is counted. */
	for (int c = CASE_POLICY; c < CASES; c++)
		if (med[c] && med[CASE_BASELINE])
			printf("%s_vs_baseline %.2f x\n", case_name[c],
			       med[c] / med[CASE_BASELINE]);
	return broken;
}
