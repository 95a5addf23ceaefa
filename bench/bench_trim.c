/* What giving stack memory back costs and what it saves, in three parts (--only picks one):
 *
 *   decommit  ns per page given back, one call per page vs one call per stack vs one call for
 *             all of them (process_madvise) vs one call over a contiguous batch, for
 *             MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL and the mprotect backend's pair, alone
 *             and with a sibling thread spinning on the other CPU (each call then pays a TLB
 *             shootdown); whether RSS drops at once, and what touching the pages again costs.
 *   hotsplit  the worst case for trimming: a coroutine that crosses the same depth on every
 *             resume and yields shallow, under trim=off, the default trim=yield:4 and
 *             trim=yield:1; ns per resume + yield cycle and the mis-trims.
 *   burst     10k coroutines go deep once, then idle at shallow depth: resident stack memory
 *             over time with trim=off and with the default policy, against the live-depth
 *             limit; a CSV file and, when gnuplot is installed, a PNG plot.
 *
 * Every case runs in a forked child (the policy, the threads and RSS are process-wide) that
 * reports through a shared mapping; figures are medians over rounds of the cases in turn.
 * --help lists the options. */
#include <dynstack.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
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
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

#define KIB 1024u
#define MAX_ROUNDS 15

enum {
	CHILD_OK,
	CHILD_SKIP,
	CHILD_ERROR
};

static size_t page;
static int rounds = 3;
static bool quick;
static bool guard_ok; /* the kernel has MADV_GUARD_INSTALL (Linux 6.13) */
/* The measuring thread's CPU and the sibling's: the first two this process may use. With one
 * CPU there is no sibling to shoot down, and no sibling figures (sib_modes 1). */
static int cpus[2];
static int sib_modes = 2;

/* ------------------------------------------------------------------------------------------ */
/* Children: each reports into a shared anonymous mapping made before the fork. */

struct child_hdr {
	int status;
	char why[200];
	double sibling_share; /* of the time it existed, the share the sibling ran (1: always) */
};

static void *shared_alloc(size_t size)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void child_fail(struct child_hdr *h, int status, const char *what, int err)
{
	h->status = status;
	snprintf(h->why, sizeof(h->why), "%s: %s", what, strerror(err));
}

/* Run fn(arg, out) in a forked child; out starts with a struct child_hdr. */
static int run_child(void (*fn)(const void *, void *), const void *arg, void *out, size_t size)
{
	struct child_hdr *h = out;
	memset(out, 0, size);
	h->status = CHILD_ERROR;
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		fn(arg, out);
		_exit(0);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		h->status = CHILD_ERROR;
		if (WIFSIGNALED(st))
			snprintf(h->why, sizeof(h->why), "child killed by signal %d (%s)",
				 WTERMSIG(st), strsignal(WTERMSIG(st)));
		else
			snprintf(h->why, sizeof(h->why), "child exited with status %d",
				 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
	return 0;
}

static void pin_to(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* A sibling thread of the measuring one, spinning on the other CPU: its CPU has this mm's
 * page tables loaded, so every TLB flush of a range must interrupt it (a shootdown). It is made
 * with its affinity already set and reports once it runs there: a thread that inherits the
 * creator's CPU can wait milliseconds for its first slice, and until it gets one there is no
 * shootdown at all. Whenever another task takes its CPU, the flushes are free again: it runs at
 * the process's priority (main raises it where allowed) and measures the share of the time it
 * really ran, which the report prints. */
static pthread_t sibling;
static atomic_bool sibling_stop, sibling_running;
static double sibling_share;

static double thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *sibling_main(void *arg)
{
	while (sched_getcpu() != cpus[1])
		sched_yield();
	double wall = now_ns(), cpu = thread_cpu_ns();
	atomic_store(&sibling_running, true);
	while (!atomic_load_explicit(&sibling_stop, memory_order_relaxed))
		__asm__ volatile("" ::: "memory");
	sibling_share = (thread_cpu_ns() - cpu) / (now_ns() - wall);
	return NULL;
}

static int sibling_start(void)
{
	pthread_attr_t attr;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpus[1], &set);
	atomic_store(&sibling_stop, false);
	atomic_store(&sibling_running, false);
	pthread_attr_init(&attr);
	pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
	int rc = pthread_create(&sibling, &attr, sibling_main, NULL);
	pthread_attr_destroy(&attr);
	while (!rc && !atomic_load(&sibling_running))
		sched_yield();
	return rc;
}

static void sibling_join(struct child_hdr *h)
{
	atomic_store(&sibling_stop, true);
	pthread_join(sibling, NULL);
	h->sibling_share = sibling_share;
}

/* The lowest share any sibling of this run got, printed with the figures. */
static double sibling_share_min = 1.0;

static void sibling_note(const struct child_hdr *h)
{
	if (h->sibling_share && h->sibling_share < sibling_share_min)
		sibling_share_min = h->sibling_share;
}

/* ------------------------------------------------------------------------------------------ */
/* The workload */

static volatile unsigned sink;

/* A coroutine that goes deep when asked to, and otherwise yields at once, at shallow depth. */
struct bu_coro {
	dynstack_coro_t *co;
	size_t deep;  /* bytes to descend on the next resume, then 0 */
	uintptr_t sp; /* where it last yielded */
};

static void bu_fn(void *arg)
{
	struct bu_coro *b = arg;
	uintptr_t top = (uintptr_t)dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	for (;;) {
		if (b->deep)
			sink = descend(top, b->deep, 0);
		b->deep = 0;
		volatile char probe = 0;
		b->sp = (uintptr_t)&probe;
		dynstack_coro_yield();
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Part 1: decommit */

#define DC_PAGES 256 /* the library's default trim_batch */
#define DC_STACKS 8  /* ... spread over 8 stacks of 32 pages each, as a flush meets them */
#define DC_STACK_PAGES (DC_PAGES / DC_STACKS)
#define DC_REGION (2 * DC_PAGES) /* stack i's range: [i * 64 + 32, i * 64 + 64) */
#define DC_REPS 7

enum dc_method {
	M_DONTNEED,
	M_FREE,
	M_GUARD,	/* the guard backend's decommit: MADV_GUARD_INSTALL zaps the pages too */
	M_GUARD_2STEP,	/* MADV_DONTNEED first, then MADV_GUARD_INSTALL over the empty range */
	M_MPROTECT,	/* the mprotect backend's: mprotect(PROT_NONE), then MADV_DONTNEED */
	M_MPROTECT_REV, /* the same two calls the other way round */
	METHODS
};
static const char *const method_name[METHODS] = {
	"dontneed", "free", "guard", "dontneed_then_guard", "mprotect", "dontneed_then_mprotect",
};

enum dc_mode {
	MODE_PAGE,   /* one call per page */
	MODE_STACK,  /* one call per stack: what a trim-queue flush makes today */
	MODE_VECTOR, /* one process_madvise over all the stacks' ranges */
	MODE_BATCH,  /* one call over DC_PAGES contiguous pages */
	MODES
};
static const char *const mode_name[MODES] = { "per_page", "per_stack_8x32", "vector_8x32",
					      "batch_256" };

struct dc_report {
	struct child_hdr h;
	bool vector_ok;
	double ns[METHODS][MODES][DC_REPS]; /* per page */
	double retouch[METHODS][DC_REPS];   /* per page, touching the pages again after a batch */
	long rss_drop[METHODS];		    /* resident pages gone right after a batch */
};

static int pidfd = -1;

/* Make the whole region accessible and resident again, whatever the last method left. */
static int dc_prepare(char *region)
{
	size_t len = DC_REGION * page;
	if (mprotect(region, len, PROT_READ | PROT_WRITE) ||
	    (madvise(region, len, MADV_GUARD_REMOVE) && errno != EINVAL))
		return -errno;
	for (size_t i = 0; i < DC_REGION; i++)
		((volatile char *)region)[i * page] = 1;
	return 0;
}

static int dc_call(enum dc_method m, char *lo, size_t len)
{
	switch (m) {
	case M_DONTNEED:
		return madvise(lo, len, MADV_DONTNEED);
	case M_FREE:
		return madvise(lo, len, MADV_FREE);
	case M_GUARD:
		return madvise(lo, len, MADV_GUARD_INSTALL);
	case M_GUARD_2STEP:
		return madvise(lo, len, MADV_DONTNEED) || madvise(lo, len, MADV_GUARD_INSTALL);
	case M_MPROTECT:
		return mprotect(lo, len, PROT_NONE) || madvise(lo, len, MADV_DONTNEED);
	default:
		return madvise(lo, len, MADV_DONTNEED) || mprotect(lo, len, PROT_NONE);
	}
}

static bool method_ok(enum dc_method m)
{
	return guard_ok || (m != M_GUARD && m != M_GUARD_2STEP);
}

/* The advice a vectored call gives, for the methods that have one: the two-step methods make
 * one vectored MADV_DONTNEED, then their second call per range (on empty page tables). */
static const int method_advice[METHODS] = { MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL,
					    MADV_DONTNEED, 0,	      MADV_DONTNEED };

static char *dc_stack_lo(char *region, int i)
{
	return region + ((size_t)i * 2 * DC_STACK_PAGES + DC_STACK_PAGES) * page;
}

/* Decommit DC_PAGES pages of region in the given mode; ns per page, or < 0 on error. */
static double dc_once(enum dc_method m, enum dc_mode mode, char *region)
{
	struct iovec iov[DC_STACKS];
	int rc = 0;
	double t0 = now_ns();
	switch (mode) {
	case MODE_PAGE:
		for (size_t i = 0; i < DC_PAGES && !rc; i++)
			rc = dc_call(m, region + i * page, page);
		break;
	case MODE_STACK:
		for (int i = 0; i < DC_STACKS && !rc; i++)
			rc = dc_call(m, dc_stack_lo(region, i), DC_STACK_PAGES * page);
		break;
	case MODE_VECTOR:
		for (int i = 0; i < DC_STACKS; i++)
			iov[i] = (struct iovec){ dc_stack_lo(region, i), DC_STACK_PAGES * page };
		t0 = now_ns();
		rc = syscall(SYS_process_madvise, pidfd, iov, DC_STACKS, method_advice[m], 0) !=
		     (long)(DC_PAGES * page);
		for (int i = 0; i < DC_STACKS && !rc && m == M_GUARD_2STEP; i++)
			rc = madvise(iov[i].iov_base, iov[i].iov_len, MADV_GUARD_INSTALL);
		for (int i = 0; i < DC_STACKS && !rc && m == M_MPROTECT_REV; i++)
			rc = mprotect(iov[i].iov_base, iov[i].iov_len, PROT_NONE);
		break;
	default:
		rc = dc_call(m, region, DC_PAGES * page);
		break;
	}
	double ns = (now_ns() - t0) / DC_PAGES;
	return rc ? -1 : ns;
}

/* The vectored call works on this kernel for every advice it is used with (process_madvise on
 * the caller's own mm; older kernels refuse most advice). */
static bool dc_vector_ok(char *region)
{
	struct iovec iov = { region, page };
	for (int m = 0; m < METHODS; m++) {
		if (!method_advice[m] || !method_ok((enum dc_method)m))
			continue;
		if (dc_prepare(region) ||
		    syscall(SYS_process_madvise, pidfd, &iov, 1, method_advice[m], 0) != (long)page)
			return false;
	}
	return true;
}

static void dc_child(const void *arg, void *out)
{
	struct dc_report *r = out;
	bool with_sibling = *(const bool *)arg;
	char *region = mmap(NULL, DC_REGION * page, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return child_fail(&r->h, CHILD_ERROR, "mmap", errno);
	madvise(region, DC_REGION * page, MADV_NOHUGEPAGE); /* a page is a page */
	pin_to(cpus[0]);
	pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	r->vector_ok = pidfd >= 0 && dc_vector_ok(region);
	if (with_sibling && sibling_start())
		return child_fail(&r->h, CHILD_ERROR, "pthread_create", EAGAIN);
	for (int rep = -1; rep < DC_REPS; rep++) { /* rep -1 warms up */
		for (int m = 0; m < METHODS; m++) {
			for (int mode = 0; mode < MODES; mode++) {
				if (!method_ok((enum dc_method)m) ||
				    (mode == MODE_VECTOR && (!r->vector_ok || !method_advice[m])))
					continue;
				if (dc_prepare(region))
					return child_fail(&r->h, CHILD_ERROR, "prepare", errno);
				long before = statm_resident();
				double ns = dc_once((enum dc_method)m, (enum dc_mode)mode, region);
				if (ns < 0)
					return child_fail(&r->h, CHILD_ERROR, method_name[m],
							  errno);
				if (rep < 0)
					continue;
				r->ns[m][mode][rep] = ns;
				if (mode != MODE_BATCH)
					continue;
				r->rss_drop[m] = before - statm_resident();
				/* What the next growth over these pages pays: commit them again
				 * (not timed), then the first write to each. */
				mprotect(region, DC_PAGES * page, PROT_READ | PROT_WRITE);
				madvise(region, DC_PAGES * page, MADV_GUARD_REMOVE);
				double t0 = now_ns();
				for (size_t i = 0; i < DC_PAGES; i++)
					((volatile char *)region)[i * page] = 2;
				r->retouch[m][rep] = (now_ns() - t0) / DC_PAGES;
			}
		}
	}
	if (with_sibling)
		sibling_join(&r->h);
	r->h.status = CHILD_OK;
}

/* The same through the library: LF_COROS coroutines go LF_DEEP deep, then idle until the
 * default hysteresis (IDLE = 4) trims them; the trim round and the final dynstack_flush are
 * timed, less an idle round, per page given back. Fresh coroutines every repetition, so that
 * the back-off of a mis-trim never delays a trim. */
#define LF_COROS 64
#define LF_STACK (256 * KIB)
#define LF_DEEP (128 * KIB)

struct lf_report {
	struct child_hdr h;
	double ns[DC_REPS];  /* per page */
	double pages, calls; /* per repetition */
};

struct lf_case {
	bool sibling;
	dynstack_backend_t backend;
};

static void lf_child(const void *arg, void *out)
{
	struct lf_report *r = out;
	const struct lf_case *c = arg;
	bool with_sibling = c->sibling;
	static struct bu_coro co[LF_COROS];
	dynstack_config_t cfg;
	dynstack_attr_t attr;
	int rc;

	dynstack_config_init(&cfg);
	cfg.backend = c->backend;
	if ((rc = dynstack_init(&cfg)))
		return child_fail(&r->h, rc == -EOPNOTSUPP ? CHILD_SKIP : CHILD_ERROR,
				  "dynstack_init", -rc);
	dynstack_attr_init(&attr);
	attr.size = LF_STACK;
	pin_to(cpus[0]);
	if (with_sibling && sibling_start())
		return child_fail(&r->h, CHILD_ERROR, "pthread_create", EAGAIN);
	for (int rep = -1; rep < DC_REPS; rep++) {
		dynstack_stats_t a = { .struct_size = sizeof(a) }, b = { .struct_size = sizeof(b) };
		double idle = 0, t0 = 0;
		for (int i = 0; i < LF_COROS; i++) {
			co[i].deep = LF_DEEP;
			if ((rc = dynstack_coro_create(&co[i].co, bu_fn, &co[i], &attr)))
				return child_fail(&r->h, CHILD_ERROR, "dynstack_coro_create", -rc);
		}
		/* Round 0 goes deep; rounds 1-3 are idle; round 4 trims. */
		for (int round = 0; round <= 4; round++) {
			if (round == 3)
				idle = now_ns();
			if (round == 4) {
				idle = now_ns() - idle;
				dynstack_stats_get(&a);
				t0 = now_ns();
			}
			for (int i = 0; i < LF_COROS; i++)
				if ((rc = dynstack_coro_resume(co[i].co)))
					return child_fail(&r->h, CHILD_ERROR, "resume", -rc);
		}
		dynstack_flush();
		double ns = now_ns() - t0 - idle;
		dynstack_stats_get(&b);
		for (int i = 0; i < LF_COROS; i++)
			dynstack_coro_destroy(co[i].co);
		if (rep < 0)
			continue;
		r->pages = (double)(b.nr_dynamic_stacks_trimmed - a.nr_dynamic_stacks_trimmed);
		r->calls =
			(double)(b.nr_dynamic_stacks_trim_calls - a.nr_dynamic_stacks_trim_calls);
		if (!r->pages)
			return child_fail(&r->h, CHILD_ERROR, "no trims", EINVAL);
		r->ns[rep] = ns / r->pages;
	}
	if (with_sibling)
		sibling_join(&r->h);
	r->h.status = CHILD_OK;
}

static int part_decommit(void)
{
	struct dc_report *r = shared_alloc(sizeof(*r));
	static double all[2][METHODS][MODES][MAX_ROUNDS * DC_REPS];
	static double retouch[METHODS][MAX_ROUNDS * DC_REPS];
	long rss_drop[METHODS] = { 0 };
	bool vector_ok = true;
	int n = 0;
	if (!r)
		return -1;
	printf("# decommit: %d pages per call set, as %d stacks x %d pages where it matters;"
	       " %d children x %d repetitions per figure, medians; main thread pinned to CPU %d",
	       DC_PAGES, DC_STACKS, DC_STACK_PAGES, rounds, DC_REPS, cpus[0]);
	if (sib_modes == 2)
		printf(", the sibling spins on CPU %d", cpus[1]);
	printf("\n");
	for (int round = 0; round < rounds; round++) {
		for (int sib = 0; sib < sib_modes; sib++) {
			bool with = sib;
			if (run_child(dc_child, &with, r, sizeof(*r)) || r->h.status != CHILD_OK) {
				printf("# decommit (%s): FAILED: %s\n", sib ? "sibling" : "alone",
				       r->h.why);
				munmap(r, sizeof(*r));
				return -1;
			}
			vector_ok &= r->vector_ok;
			sibling_note(&r->h);
			for (int m = 0; m < METHODS; m++) {
				for (int mode = 0; mode < MODES; mode++)
					for (int k = 0; k < DC_REPS; k++)
						all[sib][m][mode][n + k] = r->ns[m][mode][k];
				if (!sib) {
					for (int k = 0; k < DC_REPS; k++)
						retouch[m][n + k] = r->retouch[m][k];
					rss_drop[m] = r->rss_drop[m];
				}
			}
		}
		n += DC_REPS;
	}
	munmap(r, sizeof(*r));

	/* The same through the library, per backend: one child per backend and sibling mode. */
	struct lf_report *lf = shared_alloc(sizeof(*lf));
	static const dynstack_backend_t backends[2] = { DYNSTACK_BACKEND_GUARD,
							DYNSTACK_BACKEND_MPROTECT };
	static double lib[2][2][MAX_ROUNDS * DC_REPS];
	double lib_pages = 0, lib_calls = 0;
	bool lib_ok[2] = { lf != NULL, lf != NULL };
	for (int round = 0, k = 0; lf && round < rounds; round++, k += DC_REPS) {
		for (int b = 0; b < 2; b++) {
			for (int sib = 0; sib < sib_modes && lib_ok[b]; sib++) {
				struct lf_case c = { sib, backends[b] };
				if (run_child(lf_child, &c, lf, sizeof(*lf)) ||
				    lf->h.status != CHILD_OK) {
					printf("# decommit_library_%s (%s): %s: %s\n",
					       b ? "mprotect" : "guard", sib ? "sibling" : "alone",
					       lf->h.status == CHILD_SKIP ? "skipped" : "FAILED",
					       lf->h.why);
					lib_ok[b] = false;
					continue;
				}
				memcpy(&lib[b][sib][k], lf->ns, sizeof(lf->ns));
				sibling_note(&lf->h);
				lib_pages = lf->pages;
				lib_calls = lf->calls;
			}
		}
	}
	if (lf)
		munmap(lf, sizeof(*lf));
	if (!vector_ok)
		printf("# decommit: process_madvise refused an advice here: no vector figures\n");
	if (!guard_ok)
		printf("# decommit: no MADV_GUARD_INSTALL on this kernel: no guard figures\n");
	if (sib_modes == 2)
		printf("# decommit: the sibling ran at least %.1f%% of the time in every child"
		       " (below 100%%, another task had its CPU: those flushes needed no"
		       " shootdown)\n",
		       100 * sibling_share_min);
	else
		printf("# decommit: one CPU: no sibling figures\n");

	double med[2][METHODS][MODES];
	for (int m = 0; m < METHODS; m++) {
		if (!method_ok((enum dc_method)m))
			continue;
		for (int mode = 0; mode < MODES; mode++) {
			bool have = mode != MODE_VECTOR || (vector_ok && method_advice[m]);
			for (int sib = 0; sib < sib_modes; sib++) {
				med[sib][m][mode] = have ? median(all[sib][m][mode], (size_t)n) : 0;
				if (have)
					printf("decommit_%s_%s_%s %.0f ns/page\n", method_name[m],
					       mode_name[mode], sib ? "sibling" : "alone",
					       med[sib][m][mode]);
			}
		}
	}
	for (int m = 0; m < METHODS && sib_modes == 2; m++) {
		if (!method_ok((enum dc_method)m))
			continue;
		/* The shootdown, amortised: what a call per page costs over a call per batch, and
		 * what the sibling adds per page in each mode. */
		printf("decommit_%s_per_page_vs_batch_sibling %.1f x\n", method_name[m],
		       med[1][m][MODE_PAGE] / med[1][m][MODE_BATCH]);
		printf("decommit_%s_per_stack_vs_batch_sibling %.1f x\n", method_name[m],
		       med[1][m][MODE_STACK] / med[1][m][MODE_BATCH]);
		if (med[1][m][MODE_VECTOR])
			printf("decommit_%s_vector_vs_batch_sibling %.1f x\n", method_name[m],
			       med[1][m][MODE_VECTOR] / med[1][m][MODE_BATCH]);
		printf("decommit_%s_sibling_adds_per_page %.0f ns/page\n", method_name[m],
		       med[1][m][MODE_PAGE] - med[0][m][MODE_PAGE]);
		printf("decommit_%s_sibling_adds_per_batch %.0f ns/page\n", method_name[m],
		       med[1][m][MODE_BATCH] - med[0][m][MODE_BATCH]);
	}
	/* The library's trims, as queued and flushed today: one call per stack. */
	printf("# decommit_library: %d coroutines %u KiB deep trimmed by the default policy:"
	       " %.0f pages in %.0f decommits (%.1f pages each)\n",
	       LF_COROS, LF_DEEP / KIB, lib_pages, lib_calls,
	       lib_calls ? lib_pages / lib_calls : 0);
	for (int b = 0; b < 2; b++)
		for (int sib = 0; sib < sib_modes && lib_ok[b]; sib++)
			printf("decommit_library_trim_%s_%s %.0f ns/page\n",
			       b ? "mprotect" : "guard", sib ? "sibling" : "alone",
			       median(lib[b][sib], (size_t)n));
	for (int m = 0; m < METHODS; m++) {
		if (!method_ok((enum dc_method)m))
			continue;
		printf("decommit_%s_rss_drop %ld pages of %d\n", method_name[m], rss_drop[m],
		       DC_PAGES);
		printf("decommit_%s_retouch %.0f ns/page\n", method_name[m],
		       median(retouch[m], (size_t)n));
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Part 2: the hot split */

#define HS_STACK (128 * KIB)
#define HS_DEPTH (64 * KIB)
#define HS_CYCLES 20000
#define HS_WARM 100
#define HS_BLOCK 500 /* cycles of one coroutine before the next one's turn */

/* The three policies run side by side in one child, one coroutine each, taking turns in
 * blocks: a cycle is ~2 us and the difference sought is a few percent, which noise between
 * processes would swamp. One child type dynstack_flush()es after every resume, so every
 * queued trim is carried out (the worst case); the other never does: a trim waits in the
 * thread's queue until the queue holds trim_batch pages, and the coroutine's next resume
 * cancels it if that comes first. */
#define HS_POLICIES 3
static const struct hs_policy {
	const char *name;
	const char *spec; /* NULL: the default policy */
} hs_policies[HS_POLICIES] = {
	{ "trim_off", "trim=off" },
	{ "default", NULL },
	{ "yield1", "trim=yield:1" },
};

struct hs_report {
	struct child_hdr h;
	double ns[HS_POLICIES]; /* per resume + yield cycle */
	uint64_t mistrims[HS_POLICIES], trims[HS_POLICIES], trimmed[HS_POLICIES];
	uint64_t faults[HS_POLICIES];
	char spec[HS_POLICIES][48];
};

static void hs_fn(void *arg)
{
	uintptr_t top = (uintptr_t)dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	for (;;) {
		sink = descend(top, HS_DEPTH, 0);
		dynstack_coro_yield(); /* shallow: everything below is free to trim */
	}
}

static void hs_child(const void *arg, void *out)
{
	bool flush = *(const bool *)arg;
	struct hs_report *r = out;
	dynstack_coro_t *co[HS_POLICIES];
	dynstack_attr_t attr;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = HS_STACK;
	for (int p = 0; p < HS_POLICIES; p++) {
		attr.policy = hs_policies[p].spec;
		if ((rc = dynstack_coro_create(&co[p], hs_fn, NULL, &attr)))
			return child_fail(&r->h, CHILD_ERROR, "dynstack_coro_create", -rc);
		snprintf(r->spec[p], sizeof(r->spec[p]), "%s",
			 dynstack_policy_of(dynstack_coro_stack(co[p])));
		for (int i = 0; i < HS_WARM; i++)
			if ((rc = dynstack_coro_resume(co[p])))
				return child_fail(&r->h, CHILD_ERROR, "resume", -rc);
	}
	dynstack_flush(); /* nothing left over from the warm-up */
	size_t cycles = quick ? HS_CYCLES / 4 : HS_CYCLES;
	double t[HS_POLICIES] = { 0 };
	for (size_t done = 0, k = 0; done < cycles; done += HS_BLOCK, k++) {
		for (int j = 0; j < HS_POLICIES; j++) {
			int p = (int)((j + k) % HS_POLICIES); /* every policy goes first in turn */
			dynstack_stats_t a = { .struct_size = sizeof(a) };
			dynstack_stats_t b = { .struct_size = sizeof(b) };
			dynstack_stats_get(&a);
			double t0 = now_ns();
			for (int i = 0; i < HS_BLOCK; i++) {
				dynstack_coro_resume(co[p]);
				if (flush)
					dynstack_flush();
			}
			t[p] += now_ns() - t0;
			dynstack_stats_get(&b);
			r->mistrims[p] +=
				b.nr_dynamic_stacks_mistrims - a.nr_dynamic_stacks_mistrims;
			r->trims[p] +=
				b.nr_dynamic_stacks_trim_calls - a.nr_dynamic_stacks_trim_calls;
			r->trimmed[p] += b.nr_dynamic_stacks_trimmed - a.nr_dynamic_stacks_trimmed;
			r->faults[p] += b.nr_dynamic_stacks_faults - a.nr_dynamic_stacks_faults;
		}
	}
	for (int p = 0; p < HS_POLICIES; p++)
		r->ns[p] = t[p] / (double)cycles;
	r->h.status = CHILD_OK;
}

static int part_hotsplit(void)
{
	struct hs_report *r = shared_alloc(sizeof(*r));
	static double ns[2][HS_POLICIES][MAX_ROUNDS], ratio[2][HS_POLICIES][MAX_ROUNDS];
	static struct hs_report last[2];
	int cycles = quick ? HS_CYCLES / 4 : HS_CYCLES;
	if (!r)
		return -1;
	printf("# hotsplit: coroutines on %u KiB stacks descend %u KiB on every resume and yield"
	       " at the top; one per policy in one child, taking turns in blocks of %d, %d"
	       " cycles each; %d children per mode; medians\n",
	       HS_STACK / KIB, HS_DEPTH / KIB, HS_BLOCK, cycles, rounds);
	for (int k = 0; k < rounds; k++) {
		for (int q = 0; q < 2; q++) {
			bool flush = !q;
			if (run_child(hs_child, &flush, r, sizeof(*r)) || r->h.status != CHILD_OK) {
				printf("# hotsplit: FAILED: %s\n", r->h.why);
				munmap(r, sizeof(*r));
				return -1;
			}
			for (int p = 0; p < HS_POLICIES; p++) {
				ns[q][p][k] = r->ns[p];
				ratio[q][p][k] = r->ns[p] / r->ns[0];
			}
			last[q] = *r;
		}
	}
	munmap(r, sizeof(*r));
	static const char *const mode[2] = { "", "queued_" };
	for (int q = 0; q < 2; q++) {
		for (int p = 0; p < HS_POLICIES; p++) {
			printf("# hotsplit_%s%s: policy %s; last child: %llu trims (%llu pages),"
			       " %llu faults\n",
			       mode[q], hs_policies[p].name, last[q].spec[p],
			       (unsigned long long)last[q].trims[p],
			       (unsigned long long)last[q].trimmed[p],
			       (unsigned long long)last[q].faults[p]);
			printf("hotsplit_%s%s %.0f ns/cycle\n", mode[q], hs_policies[p].name,
			       median(ns[q][p], (size_t)rounds));
			printf("hotsplit_%s%s_mistrims %llu per %d cycles\n", mode[q],
			       hs_policies[p].name, (unsigned long long)last[q].mistrims[p],
			       cycles);
		}
		/* The goal: the default policy within 5 % of trim=off on this worst case. */
		for (int p = 1; p < HS_POLICIES; p++)
			printf("hotsplit_%s%s_vs_trim_off %.3f x\n", mode[q], hs_policies[p].name,
			       median(ratio[q][p], (size_t)rounds));
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Part 3: the burst */

#define BU_STACK (256 * KIB)
#define BU_DEEP (200 * KIB)
#define BU_COROS 10000
#define BU_IDLE_ROUNDS 8 /* resumes at shallow depth per coroutine after the burst */
#define BU_SAMPLES_PER_ROUND 5
#define BU_MAX_SAMPLES 128
#define BU_MARGIN 4096 /* the policy's default margin */

struct bu_sample {
	double t_ms;
	int round; /* 0: the burst; 1..: idle rounds; BU_IDLE_ROUNDS + 1: after dynstack_flush */
	long resumes;
	long statm_kib, stack_kib, committed_kib;
};

struct bu_report {
	struct child_hdr h;
	int nsamples;
	long limit_kib; /* the live-depth limit */
	long peak_stack_kib;
	long trims, mistrims;
	struct bu_sample s[BU_MAX_SAMPLES];
};

struct bu_state {
	struct bu_coro *co;
	size_t n;
	double t0;
	unsigned char *vec;
	struct bu_report *r;
};

static long stack_resident_kib(struct bu_state *st)
{
	size_t pages = BU_STACK / page, res = 0;
	for (size_t i = 0; i < st->n; i++) {
		char *top = dynstack_top(dynstack_coro_stack(st->co[i].co));
		if (mincore(top - BU_STACK, BU_STACK, st->vec))
			return -1;
		for (size_t k = 0; k < pages; k++)
			res += st->vec[k] & 1;
	}
	return (long)(res * page / KIB);
}

static void bu_sample(struct bu_state *st, int round, long resumes)
{
	struct bu_report *r = st->r;
	if (r->nsamples == BU_MAX_SAMPLES)
		return;
	dynstack_stats_t s = { .struct_size = sizeof(s) };
	dynstack_stats_get(&s);
	struct bu_sample *x = &r->s[r->nsamples++];
	x->t_ms = (now_ns() - st->t0) / 1e6;
	x->round = round;
	x->resumes = resumes;
	x->statm_kib = statm_resident() * (long)(page / KIB);
	x->stack_kib = stack_resident_kib(st);
	x->committed_kib = (long)(s.nr_dynamic_stacks_pages * (page / KIB));
	if (x->stack_kib > r->peak_stack_kib)
		r->peak_stack_kib = x->stack_kib;
}

static void bu_child(const void *arg, void *out)
{
	bool trim = *(const bool *)arg;
	struct bu_report *r = out;
	struct bu_state st = { .r = r, .n = quick ? BU_COROS / 5 : BU_COROS };
	dynstack_attr_t attr;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = BU_STACK;
	if (!trim && (rc = dynstack_policy_set("trim=off")))
		return child_fail(&r->h, CHILD_ERROR, "dynstack_policy_set", -rc);
	st.co = calloc(st.n, sizeof(*st.co));
	st.vec = malloc(BU_STACK / page);
	if (!st.co || !st.vec)
		return child_fail(&r->h, CHILD_ERROR, "calloc", ENOMEM);
	for (size_t i = 0; i < st.n; i++) {
		st.co[i].deep = BU_DEEP;
		if ((rc = dynstack_coro_create(&st.co[i].co, bu_fn, &st.co[i], &attr)))
			return child_fail(&r->h, CHILD_ERROR, "dynstack_coro_create", -rc);
	}
	st.t0 = now_ns();
	long resumes = 0, every = (long)st.n / BU_SAMPLES_PER_ROUND;
	bu_sample(&st, 0, 0);
	for (int round = 0; round <= BU_IDLE_ROUNDS; round++) {
		for (size_t i = 0; i < st.n; i++) {
			if ((rc = dynstack_coro_resume(st.co[i].co)))
				return child_fail(&r->h, CHILD_ERROR, "resume", -rc);
			if (++resumes % every == 0)
				bu_sample(&st, round, resumes);
		}
		if (resumes % every)
			bu_sample(&st, round, resumes);
	}
	/* What is left in the thread's trim queue (under trim_batch pages) goes now. */
	dynstack_flush();
	bu_sample(&st, BU_IDLE_ROUNDS + 1, resumes);

	/* The live-depth limit: per coroutine, the pages from the one holding sp - margin up to
	 * the top, which is what a perfect trim keeps. */
	size_t limit = 0;
	for (size_t i = 0; i < st.n; i++) {
		uintptr_t top = (uintptr_t)dynstack_top(dynstack_coro_stack(st.co[i].co));
		uintptr_t keep = (st.co[i].sp - BU_MARGIN) & ~(uintptr_t)(page - 1);
		limit += (top - keep) / page;
	}
	r->limit_kib = (long)(limit * page / KIB);
	dynstack_stats_t s = { .struct_size = sizeof(s) };
	dynstack_stats_get(&s);
	r->trims = (long)s.nr_dynamic_stacks_trim_calls;
	r->mistrims = (long)s.nr_dynamic_stacks_mistrims;
	r->h.status = CHILD_OK;
}

/* One coroutine alone: deep once, then BU_LONE_IDLE resume + yield cycles at shallow depth,
 * with and without a dynstack_flush after each resume (a scheduler that flushes whenever it has
 * nothing else to run). Its queued trim is cancelled by the next resume, so without a flush in
 * between, nothing ever decommits it. */
#define BU_LONE_IDLE 1000

struct lone_report {
	struct child_hdr h;
	long resident_kib, limit_kib;
	long trims;
};

static void lone_child(const void *arg, void *out)
{
	bool flush = *(const bool *)arg;
	struct lone_report *r = out;
	struct bu_coro b;
	dynstack_attr_t attr;
	unsigned char vec[BU_STACK / 4096];
	int rc;

	dynstack_attr_init(&attr);
	attr.size = BU_STACK;
	b.deep = BU_DEEP;
	if ((rc = dynstack_coro_create(&b.co, bu_fn, &b, &attr)))
		return child_fail(&r->h, CHILD_ERROR, "dynstack_coro_create", -rc);
	for (int i = 0; i <= BU_LONE_IDLE; i++) {
		if ((rc = dynstack_coro_resume(b.co)))
			return child_fail(&r->h, CHILD_ERROR, "resume", -rc);
		if (flush)
			dynstack_flush();
	}
	char *top = dynstack_top(dynstack_coro_stack(b.co));
	size_t pages = BU_STACK / page, res = 0;
	if (pages > sizeof(vec) || mincore(top - BU_STACK, BU_STACK, vec))
		return child_fail(&r->h, CHILD_ERROR, "mincore", errno ? errno : EINVAL);
	for (size_t k = 0; k < pages; k++)
		res += vec[k] & 1;
	r->resident_kib = (long)(res * page / KIB);
	uintptr_t keep = (b.sp - BU_MARGIN) & ~(uintptr_t)(page - 1);
	r->limit_kib = (long)(((uintptr_t)top - keep) / KIB);
	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	r->trims = (long)st.nr_dynamic_stacks_trim_calls;
	r->h.status = CHILD_OK;
}

static void part_lone(void)
{
	struct lone_report *r = shared_alloc(sizeof(*r));
	if (!r)
		return;
	for (int flush = 0; flush < 2; flush++) {
		bool f = flush;
		if (run_child(lone_child, &f, r, sizeof(*r)) || r->h.status != CHILD_OK) {
			printf("# burst_lone: FAILED: %s\n", r->h.why);
			break;
		}
		printf("# burst_lone_%s: one coroutine, %u KiB once, then %d idle cycles: %ld KiB"
		       " resident, limit %ld KiB, %ld decommit calls\n",
		       flush ? "flush_each" : "no_flush", BU_DEEP / KIB, BU_LONE_IDLE,
		       r->resident_kib, r->limit_kib, r->trims);
		printf("burst_lone_%s_vs_limit %.3f x\n", flush ? "flush_each" : "no_flush",
		       (double)r->resident_kib / (double)r->limit_kib);
	}
	munmap(r, sizeof(*r));
}

static bool have_gnuplot(void)
{
	const char *path = getenv("PATH");
	char buf[PATH_MAX];
	if (!path)
		return false;
	for (const char *p = path; *p;) {
		size_t n = strcspn(p, ":");
		if (n && snprintf(buf, sizeof(buf), "%.*s/gnuplot", (int)n, p) < (int)sizeof(buf) &&
		    access(buf, X_OK) == 0)
			return true;
		p += n + (p[n] == ':');
	}
	return false;
}

static const char *csv_path = "bench_trim_burst.csv";
static const char *png_path = "bench_trim_burst.png";
static bool plot = true;

static int bu_plot(const struct bu_report *on, const struct bu_report *off)
{
	size_t n = quick ? BU_COROS / 5 : BU_COROS;
	FILE *g = popen("gnuplot", "w");
	if (!g)
		return -1;
	double limit = on->limit_kib / 1024.0;
	fprintf(g,
		"set terminal pngcairo size 1000,560 font ',10'\n"
		"set output '%s'\n"
		"set datafile separator ','\n"
		"set key top right\n"
		"set title 'bench\\_trim burst: %zu coroutines reach %u KiB once, then idle at"
		" shallow depth'\n"
		"set xlabel 'coroutine resumes since the burst began (%zu per round; round 0 is"
		" the burst)'\n"
		"set ylabel 'resident stack memory (MiB, mincore)'\n"
		"set logscale y\n"
		"set yrange [10:*]\n"
		"plot '%s' using 4:(strcol(1) eq 'off' ? $7/1024 : NaN) with linespoints pt 7 ps 0.5"
		" title 'trim=off', \\\n"
		"     '%s' using 4:(strcol(1) eq 'on' ? $7/1024 : NaN) with linespoints pt 7 ps 0.5"
		" title 'default (trim=yield:4)', \\\n"
		"     %g with lines dt 2 title 'live-depth limit (%.1f MiB)'\n",
		png_path, n, BU_DEEP / KIB, n, csv_path, csv_path, limit, limit);
	(void)off;
	return pclose(g) == 0 ? 0 : -1;
}

static int part_burst(void)
{
	struct bu_report *r = shared_alloc(sizeof(*r));
	static struct bu_report keep[2];
	double ratio[2][MAX_ROUNDS], after_flush[2][MAX_ROUNDS];
	if (!r)
		return -1;
	size_t n = quick ? BU_COROS / 5 : BU_COROS;
	printf("# burst: %zu coroutines on %u KiB stacks each reach %u KiB once, then yield at"
	       " shallow depth %d more times; stack RSS = mincore over every stack;"
	       " %d children per mode, medians\n",
	       n, BU_STACK / KIB, BU_DEEP / KIB, BU_IDLE_ROUNDS, rounds);
	for (int round = 0; round < rounds; round++) {
		for (int on = 0; on < 2; on++) {
			bool trim = on;
			if (run_child(bu_child, &trim, r, sizeof(*r)) || r->h.status != CHILD_OK) {
				printf("# burst (trim %s): FAILED: %s\n", on ? "on" : "off",
				       r->h.why);
				munmap(r, sizeof(*r));
				return -1;
			}
			/* The last sample of the idle rounds, and the one after the flush. */
			const struct bu_sample *end = &r->s[r->nsamples - 2];
			ratio[on][round] = (double)end->stack_kib / (double)r->limit_kib;
			after_flush[on][round] =
				(double)r->s[r->nsamples - 1].stack_kib / (double)r->limit_kib;
			if (round == 0)
				keep[on] = *r;
		}
	}
	munmap(r, sizeof(*r));

	/* The time series of the first round of each mode. */
	FILE *f = fopen(csv_path, "w");
	if (f) {
		fprintf(f, "mode,t_ms,round,resumes,statm_rss_kib,committed_kib,stack_rss_kib\n");
		for (int on = 0; on < 2; on++)
			for (int i = 0; i < keep[on].nsamples; i++) {
				const struct bu_sample *x = &keep[on].s[i];
				fprintf(f, "%s,%.1f,%d,%ld,%ld,%ld,%ld\n", on ? "on" : "off",
					x->t_ms, x->round, x->resumes, x->statm_kib,
					x->committed_kib, x->stack_kib);
			}
		fclose(f);
		char abs[PATH_MAX];
		printf("# burst: time series written to %s\n",
		       realpath(csv_path, abs) ? abs : csv_path);
	} else {
		printf("# burst: cannot write %s: %s\n", csv_path, strerror(errno));
	}
	if (f && plot) {
		if (!have_gnuplot())
			printf("# burst: gnuplot not found: no plot\n");
		else if (bu_plot(&keep[1], &keep[0]))
			printf("# burst: gnuplot failed: no plot\n");
		else {
			char abs[PATH_MAX];
			printf("# burst: plot written to %s\n",
			       realpath(png_path, abs) ? abs : png_path);
		}
	}

	/* RSS at the end of each round, side by side: the stacks' (mincore) and the process's
	 * (statm). */
	printf("# after     trim=off: stacks  process    default: stacks  process (MiB)\n");
	for (int i = 0; i < keep[1].nsamples && i < keep[0].nsamples; i++) {
		const struct bu_sample *a = &keep[0].s[i], *b = &keep[1].s[i];
		if (i + 1 < keep[1].nsamples && keep[1].s[i + 1].round == b->round)
			continue; /* not the last sample of its round */
		char what[24];
		if (b->round > BU_IDLE_ROUNDS)
			snprintf(what, sizeof(what), "flush");
		else if (b->round)
			snprintf(what, sizeof(what), "idle %d", b->round);
		else
			snprintf(what, sizeof(what), "burst");
		printf("# %-8s %15.1f %8.1f %17.1f %8.1f\n", what, a->stack_kib / 1024.0,
		       a->statm_kib / 1024.0, b->stack_kib / 1024.0, b->statm_kib / 1024.0);
	}
	printf("burst_live_depth_limit %.1f MiB\n", keep[1].limit_kib / 1024.0);
	printf("burst_peak_stack_rss %.1f MiB\n", keep[1].peak_stack_kib / 1024.0);
	static const char *const mode[2] = { "trim_off", "default" };
	for (int on = 0; on < 2; on++) {
		printf("burst_%s_final_stack_rss %.1f MiB\n", mode[on],
		       keep[on].s[keep[on].nsamples - 2].stack_kib / 1024.0);
		printf("burst_%s_vs_limit %.3f x\n", mode[on], median(ratio[on], (size_t)rounds));
		printf("burst_%s_vs_limit_after_flush %.3f x\n", mode[on],
		       median(after_flush[on], (size_t)rounds));
	}
	printf("# burst: default policy, first child: %ld decommit calls, %ld mis-trims\n",
	       keep[1].trims, keep[1].mistrims);
	part_lone();
	return 0;
}

/* ------------------------------------------------------------------------------------------ */

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--only decommit|hotsplit|burst] [--rounds R] [--quick]\n"
		"          [--csv PATH] [--png PATH] [--no-plot]\n"
		"  --only PART   run one part (default: all three)\n"
		"  --rounds R    children per case, 1..%d; figures are medians (default 3)\n"
		"  --quick       a quarter of the hot-split cycles, a fifth of the burst\n"
		"  --csv PATH    the burst's time series (default %s)\n"
		"  --png PATH    its plot, made with gnuplot when installed (default %s)\n"
		"  --no-plot     do not run gnuplot\n",
		argv0, MAX_ROUNDS, csv_path, png_path);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "only", required_argument, NULL, 'o' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },
		{ "csv", required_argument, NULL, 'c' },
		{ "png", required_argument, NULL, 'p' },
		{ "no-plot", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *only = NULL;
	int opt;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'o':
			only = optarg;
			if (strcmp(only, "decommit") && strcmp(only, "hotsplit") &&
			    strcmp(only, "burst"))
				goto usage;
			break;
		case 'r':
			rounds = atoi(optarg);
			if (rounds < 1 || rounds > MAX_ROUNDS)
				goto usage;
			break;
		case 'q':
			quick = true;
			break;
		case 'c':
			csv_path = optarg;
			break;
		case 'p':
			png_path = optarg;
			break;
		case 'n':
			plot = false;
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

	page = (size_t)sysconf(_SC_PAGESIZE);
	/* Other tasks on the sibling's CPU would take the shootdowns away: run above them where
	 * allowed (root), as is. */
	bool raised = setpriority(PRIO_PROCESS, 0, -20) == 0;
	bench_unset_config_env();
	bench_print_machine(page, raised);

	cpu_set_t set;
	int ncpu = 0;
	if (!sched_getaffinity(0, sizeof(set), &set))
		for (int c = 0; c < CPU_SETSIZE && ncpu < 2; c++)
			if (CPU_ISSET(c, &set))
				cpus[ncpu++] = c;
	if (ncpu < 2)
		sib_modes = 1;
	void *probe = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	guard_ok = probe != MAP_FAILED && madvise(probe, page, MADV_GUARD_INSTALL) == 0;
	if (probe != MAP_FAILED)
		munmap(probe, page);

	int failed = 0;
	if (!only || !strcmp(only, "decommit"))
		failed |= part_decommit() != 0;
	if (!only || !strcmp(only, "hotsplit"))
		failed |= part_hotsplit() != 0;
	if (!only || !strcmp(only, "burst"))
		failed |= part_burst() != 0;
	return failed;
usage:
	usage(stderr, argv[0]);
	return 2;
}
