/* Scale: 1,000,000 live coroutines on private dynamic stacks in one process, at the default
 * vm.max_map_count (65,530), with the guard backend: how fast they are created and first
 * resumed, the RSS each costs as the kernel counts it (smaps_rollup; page tables from
 * /proc/self/status), and the VMAs they take (lines of /proc/self/maps, those inside the
 * arenas that hold the stacks apart from the rest), printed at 10k, 100k and 1M to show that
 * the count stays flat. Then the mprotect backend, which needs two VMAs per stack, is driven
 * to its limit: the number of stacks it stops at and the message the library prints there.
 * Each case runs in a forked child (the backend is process-wide). BENCH_SCALE_N sets the number
 * of coroutines (default 1,000,000: about 4.5 GB of RSS and 15 s here). */
#include <dynstack.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "bench.h"

#define DEFAULT_N 1000000
#define MIN_N 1000
#define MAX_N 100000000
#define BATCH 1000   /* coroutines per timed batch: figures are medians over batches */
#define MAX_CHECKS 8 /* checkpoints at 10k, 100k, ... and N */
#define CHUNK_SHIFT 30
#define MAX_LIMIT_RUN (4L << 20) /* the largest vm.max_map_count the limit case runs up to */

/* The goals, printed for reference: one stack page plus metadata, and a VMA count
 * that does not grow with the number of stacks. */
#define GOAL_RSS_BYTES 5120
#define GOAL_STACK_VMAS 100

enum {
	CHILD_OK,
	CHILD_SKIP,
	CHILD_ERROR
};

/* Comes back through a pipe in one write: under PIPE_BUF. */
struct scale_report {
	int status;
	char why[160];
	size_t n;
	double create_ns, resume_ns, destroy_ns; /* medians over batches, per coroutine */
	double create_s, resume_s;		 /* the whole phase, wall clock */
	double rss_per, pte_per;		 /* bytes per coroutine */
	uint64_t faults;			 /* commit faults taken by the first resumes */
	uint64_t arenas;
	unsigned nchecks;
	size_t check_n[MAX_CHECKS];
	long vmas_total[MAX_CHECKS], vmas_stacks[MAX_CHECKS];
	double rss_per_at[MAX_CHECKS];
};

struct limit_report {
	int status;
	char why[160];
	size_t n;
	int rc;
	double create_ns;  /* median over batches */
	double refused_ns; /* the create refused at the limit */
	long vmas;
	char message[1024]; /* what the library wrote to stderr when it stopped */
};

static long proc_number(const char *path, const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!key) {
			v = strtol(line, NULL, 10);
			break;
		}
		if (!strncmp(line, key, strlen(key))) {
			v = strtol(line + strlen(key), NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* Resident KiB of the whole process and of its page tables, from the kernel. */
static long rss_kib(void)
{
	return proc_number("/proc/self/smaps_rollup", "Rss:");
}

static long pte_kib(void)
{
	return proc_number("/proc/self/status", "VmPTE:");
}

/* The 1 GiB chunks that hold stacks (arenas are aligned to, and a multiple of, 1 GiB). */
struct chunks {
	uintptr_t *v;
	size_t n, cap;
};

static bool chunks_has(const struct chunks *c, uintptr_t k)
{
	for (size_t i = 0; i < c->n; i++)
		if (c->v[i] == k)
			return true;
	return false;
}

static int chunks_add(struct chunks *c, uintptr_t k)
{
	if (chunks_has(c, k))
		return 0;
	if (c->n == c->cap) {
		size_t cap = c->cap ? 2 * c->cap : 64;
		uintptr_t *v = realloc(c->v, cap * sizeof(*v));
		if (!v)
			return -1;
		c->v = v;
		c->cap = cap;
	}
	c->v[c->n++] = k;
	return 0;
}

/* Lines of /proc/self/maps, and how many of them lie in the stacks' chunks. */
static long count_vmas(const struct chunks *c, long *in_stacks)
{
	char line[512];
	long total = 0, in = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		total++;
		if (c && sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi > lo &&
		    chunks_has(c, lo >> CHUNK_SHIFT) && chunks_has(c, (hi - 1) >> CHUNK_SHIFT))
			in++;
	}
	fclose(f);
	if (in_stacks)
		*in_stacks = in;
	return total;
}

static void fail(struct scale_report *r, const char *what, int err)
{
	r->status = CHILD_ERROR;
	snprintf(r->why, sizeof(r->why), "%s: %s", what, dynstack_strerror(err));
}

static void yield_once(void *arg)
{
	(void)arg;
	dynstack_coro_yield();
}

static size_t next_check(size_t done, size_t n)
{
	size_t c = 10000;
	while (c <= done)
		c *= 10;
	return c < n ? c : n;
}

/* ---- guard: N live coroutines */

static void measure_guard(void *ctx, void *out)
{
	struct scale_report *r = out;
	size_t n = *(size_t *)ctx;
	size_t nbatch = (n + BATCH - 1) / BATCH;
	dynstack_config_t cfg;
	struct chunks ch = { 0 };
	int rc;

	memset(r, 0, sizeof(*r));
	dynstack_config_init(&cfg);
	cfg.backend = DYNSTACK_BACKEND_GUARD;
	if ((rc = dynstack_init(&cfg))) {
		r->status = rc == -EOPNOTSUPP ? CHILD_SKIP : CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "dynstack_init(guard): %s", dynstack_strerror(rc));
		return;
	}
	if ((rc = dynstack_thread_init())) {
		fail(r, "dynstack_thread_init", rc);
		return;
	}
	dynstack_coro_t **c = calloc(n, sizeof(*c));
	double *create = calloc(nbatch, sizeof(double));
	double *resume = calloc(nbatch, sizeof(double));
	double *destroy = calloc(nbatch, sizeof(double));
	if (!c || !create || !resume || !destroy) {
		fail(r, "calloc", -ENOMEM);
		return;
	}
	/* Every page of the arrays resident before the baseline. */
	memset(c, 0, n * sizeof(*c));
	memset(create, 0, nbatch * sizeof(double));
	memset(resume, 0, nbatch * sizeof(double));
	memset(destroy, 0, nbatch * sizeof(double));
	long rss0 = rss_kib(), pte0 = pte_kib();
	if (rss0 < 0 || pte0 < 0) {
		fail(r, "/proc/self/smaps_rollup or status", -EIO);
		return;
	}
	dynstack_stats_t st0 = { .struct_size = sizeof(st0) };
	dynstack_stats_get(&st0);

	size_t done = 0;
	while (done < n) {
		size_t check = next_check(done, n);
		/* Create a batch, then resume the same batch once each, to its yield. */
		for (size_t b = done; b < check; b += BATCH) {
			size_t end = b + BATCH < check ? b + BATCH : check;
			double t0 = now_ns();
			for (size_t i = b; i < end; i++)
				if ((rc = dynstack_coro_create(&c[i], yield_once, NULL, NULL))) {
					snprintf(r->why, sizeof(r->why),
						 "dynstack_coro_create #%zu: %s", i,
						 dynstack_strerror(rc));
					r->status = CHILD_ERROR;
					return;
				}
			double t1 = now_ns();
			for (size_t i = b; i < end; i++)
				if ((rc = dynstack_coro_resume(c[i]))) {
					fail(r, "dynstack_coro_resume", rc);
					return;
				}
			double t2 = now_ns();
			create[b / BATCH] = (t1 - t0) / (double)(end - b);
			resume[b / BATCH] = (t2 - t1) / (double)(end - b);
			r->create_s += (t1 - t0) / 1e9;
			r->resume_s += (t2 - t1) / 1e9;
			/* Stacks of a batch are neighbours: their chunks are few. */
			for (size_t i = b; i < end; i += BATCH / 10)
				if (chunks_add(&ch,
					       ((uintptr_t)dynstack_top(dynstack_coro_stack(c[i])) -
						1) >> CHUNK_SHIFT)) {
					fail(r, "realloc", -ENOMEM);
					return;
				}
			if (chunks_add(&ch,
				       ((uintptr_t)dynstack_top(dynstack_coro_stack(c[end - 1])) -
					1) >> CHUNK_SHIFT)) {
				fail(r, "realloc", -ENOMEM);
				return;
			}
		}
		done = check;
		if (r->nchecks < MAX_CHECKS) {
			unsigned k = r->nchecks++;
			r->check_n[k] = done;
			r->vmas_total[k] = count_vmas(&ch, &r->vmas_stacks[k]);
			r->rss_per_at[k] = (double)(rss_kib() - rss0) * 1024 / (double)done;
		}
	}
	r->rss_per = (double)(rss_kib() - rss0) * 1024 / (double)n;
	r->pte_per = (double)(pte_kib() - pte0) * 1024 / (double)n;
	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	r->faults = st.nr_dynamic_stacks_faults - st0.nr_dynamic_stacks_faults;
	r->arenas = st.nr_dynamic_stacks_arenas;

	for (size_t b = 0; b < n; b += BATCH) {
		size_t end = b + BATCH < n ? b + BATCH : n;
		double t0 = now_ns();
		for (size_t i = b; i < end; i++)
			if ((rc = dynstack_coro_destroy(c[i]))) {
				fail(r, "dynstack_coro_destroy", rc);
				return;
			}
		destroy[b / BATCH] = (now_ns() - t0) / (double)(end - b);
	}
	r->n = n;
	r->create_ns = median(create, nbatch);
	r->resume_ns = median(resume, nbatch);
	r->destroy_ns = median(destroy, nbatch);
	r->status = CHILD_OK;
}

/* ---- mprotect: up to vm.max_map_count */

static void measure_limit(void *ctx, void *out)
{
	struct limit_report *r = out;
	size_t cap = *(size_t *)ctx;
	dynstack_config_t cfg;
	int rc, fds[2], saved;

	memset(r, 0, sizeof(*r));
	dynstack_config_init(&cfg);
	cfg.backend = DYNSTACK_BACKEND_MPROTECT;
	if ((rc = dynstack_init(&cfg)) || (rc = dynstack_thread_init())) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "dynstack_init(mprotect): %s",
			 dynstack_strerror(rc));
		return;
	}
	dynstack_coro_t **c = calloc(cap, sizeof(*c));
	double *batches = calloc(cap / BATCH + 1, sizeof(double));
	/* The library's stderr goes to a pipe while it runs into the limit: what it says
	 * there is part of the result. Non-blocking: a long message is cut, never a hang. */
	if (!c || !batches || pipe2(fds, O_CLOEXEC | O_NONBLOCK) ||
	    (saved = dup(STDERR_FILENO)) < 0) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "set-up: %s", strerror(errno));
		return;
	}
	fflush(stderr);
	dup2(fds[1], STDERR_FILENO);
	/* Each create timed: the medians are over whole batches of successes, and the one
	 * refused at the limit (which reads /proc/self/maps to explain itself) apart. */
	size_t nb = 0;
	double sum = 0;
	for (rc = 0; r->n < cap;) {
		double t0 = now_ns();
		rc = dynstack_coro_create(&c[r->n], yield_once, NULL, NULL);
		double t1 = now_ns();
		if (rc) {
			r->refused_ns = t1 - t0;
			break;
		}
		sum += t1 - t0;
		if (++r->n % BATCH == 0) {
			batches[nb++] = sum / BATCH;
			sum = 0;
		}
	}
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	ssize_t got = read(fds[0], r->message, sizeof(r->message) - 1);
	r->message[got > 0 ? got : 0] = '\0';
	close(fds[0]);
	char *nl = strchr(r->message, '\n');
	if (nl && !nl[1])
		*nl = '\0';
	r->rc = rc;
	r->create_ns = nb ? median(batches, nb) : 0;
	r->vmas = count_vmas(NULL, NULL);
	r->status = CHILD_OK;
}

static size_t scale_n(void)
{
	const char *s = getenv("BENCH_SCALE_N");
	char *end;
	if (!s || !*s)
		return DEFAULT_N;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || *s == '-' || v < MIN_N || v > MAX_N) {
		fprintf(stderr, "bench_scale: BENCH_SCALE_N=\"%s\": want %d..%d; using %d\n", s,
			MIN_N, MAX_N, DEFAULT_N);
		return DEFAULT_N;
	}
	return (size_t)v;
}

int main(void)
{
	size_t n = scale_n();
	long max_map = proc_number("/proc/sys/vm/max_map_count", NULL);
	struct utsname u;
	int broken = 0, rc;

	/* The children set their config themselves; an inherited variable would override it. */
	unsetenv("DYNSTACK_BACKEND");
	unsetenv("DYNSTACK_SIZE");
	unsetenv("DYNSTACK_POLICY");
	unsetenv("DYNSTACK_CACHE");
	unsetenv("DYNSTACK_CACHE_PAGES");
	unsetenv("DYNSTACK_TRACE");
	unsetenv("DYNSTACK_STATS");
	if (!uname(&u))
		printf("# Linux %s %s, %ld-byte pages, vm.max_map_count %ld\n", u.release,
		       u.machine, sysconf(_SC_PAGESIZE), max_map);
	printf("# guard: %zu coroutines (BENCH_SCALE_N), default attr (%u KiB stacks), each"
	       " resumed once to a yield and left suspended; per-coroutine times are medians over"
	       " batches of %d\n",
	       n, DYNSTACK_DEFAULT_SIZE / 1024, BATCH);
	printf("# goals: <= %d bytes of RSS per coroutine (one stack page plus metadata), <= %d"
	       " VMAs for all stacks\n",
	       GOAL_RSS_BYTES, GOAL_STACK_VMAS);

	static struct scale_report g;
	char why[160];
	if ((rc = bench_in_child(measure_guard, &n, &g, sizeof(g), why, sizeof(why))) < 0) {
		fprintf(stderr, "bench_scale: fork: %s\n", strerror(-rc));
		return 1;
	}
	if (rc) {
		printf("# guard: FAILED: %s\n", why);
		broken = 1;
	} else if (g.status != CHILD_OK) {
		printf("# guard: %s: %s\n", g.status == CHILD_SKIP ? "skipped" : "FAILED", g.why);
		broken |= g.status == CHILD_ERROR;
	} else {
		printf("scale_coroutines %zu coroutines\n", g.n);
		printf("scale_create %.0f ns\n", g.create_ns);
		printf("scale_create_rate %.0f coroutines/s\n", 1e9 / g.create_ns);
		printf("scale_create_all %.2f s\n", g.create_s);
		printf("scale_first_resume %.0f ns\n", g.resume_ns);
		printf("scale_first_resume_rate %.0f coroutines/s\n", 1e9 / g.resume_ns);
		printf("scale_first_resume_all %.2f s\n", g.resume_s);
		printf("scale_destroy %.0f ns\n", g.destroy_ns);
		printf("scale_rss_per_coroutine %.0f bytes\n", g.rss_per);
		printf("scale_page_tables_per_coroutine %.0f bytes\n", g.pte_per);
		printf("scale_commit_faults %llu faults\n", (unsigned long long)g.faults);
		printf("scale_arenas %llu arenas\n", (unsigned long long)g.arenas);
		for (unsigned k = 0; k < g.nchecks; k++) {
			printf("scale_vmas_total_at_%zu %ld VMAs\n", g.check_n[k], g.vmas_total[k]);
			printf("scale_vmas_stacks_at_%zu %ld VMAs\n", g.check_n[k],
			       g.vmas_stacks[k]);
			printf("scale_rss_per_coroutine_at_%zu %.0f bytes\n", g.check_n[k],
			       g.rss_per_at[k]);
		}
		long last = g.nchecks ? g.vmas_stacks[g.nchecks - 1] : -1;
		printf("# goal RSS per coroutine <= %d bytes: %s (%.0f)\n", GOAL_RSS_BYTES,
		       g.rss_per <= GOAL_RSS_BYTES ? "met" : "NOT met", g.rss_per);
		printf("# goal VMAs for all stacks <= %d: %s (%ld)\n", GOAL_STACK_VMAS,
		       last >= 0 && last <= GOAL_STACK_VMAS ? "met" : "NOT met", last);
	}

	/* The limit case runs until the mprotect backend is refused (two VMAs a stack: about
	 * vm.max_map_count / 2 stacks), but no further than N stacks where the limit was raised
	 * past MAX_LIMIT_RUN (some distributions set it to 2^31 - 5). */
	static struct limit_report m;
	size_t cap = max_map > 0 && max_map <= MAX_LIMIT_RUN ? (size_t)max_map : n;
	if ((rc = bench_in_child(measure_limit, &cap, &m, sizeof(m), why, sizeof(why))) < 0) {
		fprintf(stderr, "bench_scale: fork: %s\n", strerror(-rc));
		return 1;
	}
	if (rc || m.status != CHILD_OK) {
		printf("# mprotect: FAILED: %s\n", rc ? why : m.why);
		broken = 1;
	} else {
		printf("limit_mprotect_stacks %zu stacks\n", m.n);
		printf("limit_mprotect_vmas %ld VMAs\n", m.vmas);
		printf("limit_mprotect_create %.0f ns\n", m.create_ns);
		if (m.rc)
			printf("limit_mprotect_refused_create %.0f ns\n", m.refused_ns);
		if (m.rc)
			printf("# mprotect: stopped by %d (%s) after %zu stacks, vm.max_map_count"
			       " %ld\n",
			       m.rc, dynstack_strerror(m.rc), m.n, max_map);
		else
			printf("# mprotect: %zu stacks without reaching vm.max_map_count %ld\n",
			       m.n, max_map);
		printf("# mprotect: the library said: %s\n",
		       m.message[0] ? m.message : "(nothing)");
	}
	return broken;
}
