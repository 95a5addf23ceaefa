/* What shared (copy) stacks cost and save. Switch: ns per resume + yield pair of N coroutines of
 * one group resumed round robin (each resume copies one coroutine's frames out and the next one's
 * in), for 8 B to 8 KiB of live locals, next to a private coroutine resumed alone (the
 * denominator), N private coroutines round robin (as cold as the shared ones) and a shared one
 * resumed alone (the owner cache: no copy), with libaco's published figures for reference.
 * Memory: RSS per idle coroutine, 1M and 10M shared ones against private ones. Every case runs
 * in a forked child; switch figures are medians of rounds in which the cases take turns.
 * --help lists the options; BENCH_SHARED_SCALE=0.1 (or --scale) scales every count. */
#include <dynstack.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "bench.h"

#define MAX_ROUNDS 15
#define DEFAULT_ROUNDS 5
/* A round of a round-robin case resumes at least this many times (whole passes over N), so
 * that the small-N cases are not timed over a few milliseconds. */
#define RR_MIN_RESUMES 100000
/* Pairs per round of a case that resumes one coroutine: ~20-40 ms at ~20-40 ns a pair. */
#define HOT_PAIRS (1L << 20)
/* The mprotect backend makes a mapping per stack and stops near vm.max_map_count (~32k). */
#define MPROTECT_MAX_STACKS 20000

enum {
	CHILD_OK,
	CHILD_SKIP,
	CHILD_ERROR
};

/* ------------------------------------------------------------------------------------------ */
/* Coroutine bodies: `bytes` of the coroutine's own locals, live across every yield. Both ends
 * are written before each yield and the address escapes to an empty asm, so the array stays in
 * the frame, whole. */

#define LIVE_FN(bytes)                                                                             \
	static void live_##bytes(void *arg)                                                        \
	{                                                                                          \
		volatile char buf[bytes];                                                          \
		for (;;) {                                                                         \
			buf[0] = 1;                                                                \
			buf[(bytes)-1] = 1;                                                        \
			__asm__ volatile("" : : "r"(buf) : "memory");                              \
			dynstack_coro_yield();                                                     \
		}                                                                                  \
	}
LIVE_FN(8)
LIVE_FN(256)
LIVE_FN(1024)
LIVE_FN(8192)

/* The idle coroutines of the memory cases: run to their first yield and stay there. With 16 B
 * of locals, live across the yield, the frames to save (the entry's, this one, the yield's and
 * the switch's) come to ~120 B. */
static void idle_fn(void *arg)
{
	volatile char buf[16];
	buf[0] = 1;
	__asm__ volatile("" : : "r"(buf) : "memory");
	dynstack_coro_yield();
	buf[sizeof(buf) - 1] = 1;
}

/* libaco (github.com/hnes/libaco, README, x86_64, tcmalloc): ns per aco_resume (a resume +
 * yield pair) of co_amount coroutines on one share stack, by bytes copied per switch-out. Its
 * denominator is co_amount=1: 20.76 ns, no copy. */
#define LIBACO_NOCOPY_NS 20.76
static const struct size_case {
	const char *label;
	size_t locals;
	void (*fn)(void *);
	size_t shared_n; /* coroutines in the round robin */
	/* private ones round robin: fewer where a page each is too much (1M private stacks hold
	 * 4.4 GB and take ~4 s to create) */
	size_t private_n;
	size_t libaco_copy, libaco_n;
	double libaco_ns;
} sizes[] = {
	{ "8B", 8, live_8, 1000000, 200000, 8, 2000000, 33.20 },
	{ "256B", 256, live_256, 200000, 200000, 232, 2000000, 59.88 },
	{ "1KiB", 1024, live_1024, 100000, 100000, 1000, 1000000, 210.90 },
	{ "8KiB", 8192, live_8192, 20000, 20000, 7992, 100000, 1090.42 },
};
#define SIZES (sizeof(sizes) / sizeof(sizes[0]))
/* The case whose counters are printed. */
#define COUNTERS_CASE 2
/* libaco at the copy sizes our 8 B case really saves (the frames around the locals). */
static const struct {
	size_t copy;
	double ns;
} libaco_small[] = { { 120, 38.43 }, { 136, 47.22 }, { 152, 53.61 } };

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

static double scale = 1.0;
static int rounds = DEFAULT_ROUNDS;

static size_t scaled(size_t n, size_t floor)
{
	double v = (double)n * scale;
	return v < (double)floor ? floor : (size_t)v;
}

/* "1M", "200k", "1500": a count as a figure name carries it. */
static const char *count_label(size_t n, char *buf, size_t len)
{
	if (n >= 1000000 && n % 1000000 == 0)
		snprintf(buf, len, "%zuM", n / 1000000);
	else if (n >= 1000 && n % 1000 == 0)
		snprintf(buf, len, "%zuk", n / 1000);
	else
		snprintf(buf, len, "%zu", n);
	return buf;
}

/* Resident bytes of this process, from the page tables (smaps_rollup walks them), or from the
 * kernel's counters (VmRSS, which may lag by a few pages per CPU) where that is missing. */
static double rss_bytes(void)
{
	static const char *const src[][2] = { { "/proc/self/smaps_rollup", "Rss:" },
					      { "/proc/self/status", "VmRSS:" } };
	char line[256];
	for (size_t i = 0; i < 2; i++) {
		FILE *f = fopen(src[i][0], "r");
		if (!f)
			continue;
		size_t klen = strlen(src[i][1]);
		while (fgets(line, sizeof(line), f)) {
			if (!strncmp(line, src[i][1], klen)) {
				fclose(f);
				return strtod(line + klen, NULL) * 1024;
			}
		}
		fclose(f);
	}
	return -1;
}

/* The first line of /proc/loadavg, for the reader: other work on the CPUs moves these figures. */
static void print_load(const char *when)
{
	char line[128];
	FILE *f = fopen("/proc/loadavg", "r");
	if (!f)
		return;
	if (fgets(line, sizeof(line), f))
		printf("# load average %s: %s", when, line);
	fclose(f);
}

/* MemAvailable from /proc/meminfo in bytes, or -1. */
static double mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	double v = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, "MemAvailable:", 13))
			v = strtod(line + 13, NULL) * 1024;
	fclose(f);
	return v;
}

static int lib_init(char *why, size_t len)
{
	dynstack_config_t cfg;
	dynstack_config_init(&cfg);
	cfg.cache_stacks = 0; /* nothing is destroyed here: the cache would only hold pages */
	int rc = dynstack_init(&cfg);
	if (rc)
		snprintf(why, len, "dynstack_init: %s", dynstack_strerror(rc));
	return rc;
}

static void stats_now(dynstack_stats_t *st)
{
	memset(st, 0, sizeof(*st));
	st->struct_size = sizeof(*st);
	dynstack_stats_get(st);
}

static bool is_mprotect(void)
{
	return !strcmp(dynstack_backend_name(), "mprotect");
}

/* ------------------------------------------------------------------------------------------ */
/* 1. Switch cost against saved size: one child per size */

enum sw_case {
	SW_SHARED_RR,  /* N shared, round robin: a copy out and a copy in per resume */
	SW_PRIVATE_RR, /* N private, round robin: cold stacks, no copy */
	SW_PRIVATE,    /* one private coroutine: the denominator */
	SW_OWNER_HIT,  /* one shared coroutine alone in its group: no copy */
	SW_CASES
};
static const char *const sw_name[SW_CASES] = { "shared_switch", "private_cold_switch",
					       "private_hot_switch", "shared_owner_hit_switch" };

/* Written in one write() below PIPE_BUF, so it arrives whole or not at all. */
struct sw_report {
	int status;
	char why[160];
	size_t shared_n, private_n;
	bool capped;			 /* private_n cut to what the mprotect backend can map */
	double ns[SW_CASES][MAX_ROUNDS]; /* per resume + yield pair */
	double saved;			 /* bytes saved for a shared coroutine once switched out */
	double buffer;			 /* save buffer capacity per shared coroutine */
	double private_committed;	 /* bytes committed on a private coroutine's stack */
	/* counter deltas over the timed loops of the shared round robin and the owner hits */
	uint64_t rr_resumes, rr_copies, rr_bytes, rr_hits;
	uint64_t hit_resumes, hit_copies, hit_bytes, hit_hits;
};

struct sw_ctx {
	const struct size_case *sc;
	size_t shared_n, private_n;
};

static int create_all(dynstack_coro_t **c, size_t n, void (*fn)(void *),
		      const dynstack_attr_t *attr, struct sw_report *r, const char *what)
{
	for (size_t i = 0; i < n; i++) {
		int rc = dynstack_coro_create(&c[i], fn, NULL, attr);
		if (rc) {
			r->status = rc == -ENOMEM ? CHILD_SKIP : CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "%s coroutine %zu of %zu: %s", what, i, n,
				 dynstack_strerror(rc));
			return rc;
		}
	}
	return 0;
}

/* passes over c[0..n): ns per resume (a resume + yield pair); < 0 when a resume failed. */
static double round_robin(dynstack_coro_t **c, size_t n, size_t passes)
{
	int rc = 0;
	double t0 = now_ns();
	for (size_t p = 0; p < passes; p++)
		for (size_t i = 0; i < n; i++)
			rc |= dynstack_coro_resume(c[i]);
	double ns = (now_ns() - t0) / (double)(n * passes);
	return rc ? -1 : ns;
}

static double alone(dynstack_coro_t *c, long pairs)
{
	int rc = 0;
	double t0 = now_ns();
	for (long i = 0; i < pairs; i++)
		rc |= dynstack_coro_resume(c);
	double ns = (now_ns() - t0) / (double)pairs;
	return rc ? -1 : ns;
}

static void measure_switch(void *vctx, void *out)
{
	struct sw_ctx *k = vctx;
	struct sw_report *r = out;
	const struct size_case *sc = k->sc;
	dynstack_group_t *g, *g_hot;
	dynstack_coro_t *hot_private, *hot_shared;
	dynstack_attr_t ga, sa, pa;
	int rc;

	memset(r, 0, sizeof(*r));
	if (lib_init(r->why, sizeof(r->why))) {
		r->status = CHILD_ERROR;
		return;
	}
	size_t sn = k->shared_n, pn = k->private_n ? k->private_n : 1;
	if (is_mprotect() && pn > MPROTECT_MAX_STACKS) {
		pn = MPROTECT_MAX_STACKS;
		r->capped = true;
	}
	r->shared_n = sn;
	r->private_n = pn;
	dynstack_coro_t **shared = malloc(sn * sizeof(*shared));
	dynstack_coro_t **priv = malloc(pn * sizeof(*priv));
	if (!shared || !priv) {
		r->status = CHILD_SKIP;
		snprintf(r->why, sizeof(r->why), "out of memory for the handles");
		return;
	}
	dynstack_attr_init(&ga);
	if ((rc = dynstack_group_create(&g, &ga, 0)) ||
	    (rc = dynstack_group_create(&g_hot, &ga, 0))) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "dynstack_group_create: %s",
			 dynstack_strerror(rc));
		return;
	}
	dynstack_attr_init(&pa);
	dynstack_attr_init(&sa);
	sa.mode = DYNSTACK_MODE_SHARED;
	sa.group = g;
	if (create_all(shared, sn, sc->fn, &sa, r, "shared") ||
	    create_all(priv, pn, sc->fn, &pa, r, "private") ||
	    create_all(&hot_private, 1, sc->fn, &pa, r, "private"))
		return;
	sa.group = g_hot;
	if (create_all(&hot_shared, 1, sc->fn, &sa, r, "shared"))
		return;

	/* Warm-up: every coroutine runs to its first yield (the shared ones' first copy-in lays
	 * their entry frame; the private ones fault their pages in), and the loops' code. */
	if (round_robin(shared, sn, 1) < 0 || round_robin(priv, pn, 1) < 0 ||
	    alone(hot_private, HOT_PAIRS / 16) < 0 || alone(hot_shared, HOT_PAIRS / 16) < 0) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "warm-up: a resume failed");
		return;
	}
	/* shared[0] was copied out when shared[1] ran. */
	r->saved = (double)dynstack_coro_saved(shared[0]);
	r->private_committed = (double)dynstack_committed(dynstack_coro_stack(priv[0]));

	size_t spasses = (RR_MIN_RESUMES + sn - 1) / sn;
	size_t ppasses = (RR_MIN_RESUMES + pn - 1) / pn;
	long pairs = (long)scaled(HOT_PAIRS, 1 << 14);
	dynstack_stats_t s0, s1;
	for (int round = 0; round < rounds; round++) {
		stats_now(&s0);
		r->ns[SW_SHARED_RR][round] = round_robin(shared, sn, spasses);
		stats_now(&s1);
		r->rr_resumes += sn * spasses;
		r->rr_copies += s1.nr_shared_copies - s0.nr_shared_copies;
		r->rr_bytes += s1.nr_shared_copied_bytes - s0.nr_shared_copied_bytes;
		r->rr_hits += s1.nr_shared_owner_hits - s0.nr_shared_owner_hits;
		r->ns[SW_PRIVATE_RR][round] = round_robin(priv, pn, ppasses);
		r->ns[SW_PRIVATE][round] = alone(hot_private, pairs);
		stats_now(&s0);
		r->ns[SW_OWNER_HIT][round] = alone(hot_shared, pairs);
		stats_now(&s1);
		r->hit_resumes += (uint64_t)pairs;
		r->hit_copies += s1.nr_shared_copies - s0.nr_shared_copies;
		r->hit_bytes += s1.nr_shared_copied_bytes - s0.nr_shared_copied_bytes;
		r->hit_hits += s1.nr_shared_owner_hits - s0.nr_shared_owner_hits;
		for (int c = 0; c < SW_CASES; c++) {
			if (r->ns[c][round] < 0) {
				r->status = CHILD_ERROR;
				snprintf(r->why, sizeof(r->why), "%s: a resume failed", sw_name[c]);
				return;
			}
		}
	}
	stats_now(&s1);
	r->buffer = (double)s1.nr_shared_buffer_bytes / (double)(sn + 1);
	r->status = CHILD_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* 2. Memory: n idle coroutines, each run once to its first yield */

struct mem_ctx {
	bool shared;
	/* Each coroutine runs right after its create, as in a server that starts one per
	 * connection, instead of all being created first: a shared one's first save buffer may
	 * then reuse the block that its predecessor's first copy-out freed. */
	bool interleaved;
	size_t n;
};

struct mem_report {
	int status;
	char why[160];
	size_t n;		      /* coroutines made: fewer than asked under mprotect */
	double rss_before, rss_after; /* bytes */
	double create_ns, resume_ns;  /* per coroutine */
	double saved;		      /* mean bytes saved per coroutine (shared) */
	double buffer;		      /* mean save buffer capacity (shared) */
	double committed;	      /* mean committed stack bytes (private) */
};

static void measure_memory(void *vctx, void *out)
{
	struct mem_ctx *k = vctx;
	struct mem_report *r = out;
	dynstack_attr_t attr;
	dynstack_group_t *g = NULL;
	size_t n = k->n;
	int rc;

	memset(r, 0, sizeof(*r));
	if (lib_init(r->why, sizeof(r->why))) {
		r->status = CHILD_ERROR;
		return;
	}
	if (!k->shared && is_mprotect() && n > MPROTECT_MAX_STACKS)
		n = MPROTECT_MAX_STACKS;
	r->n = n;
	/* The handles are the caller's, not the library's: allocated and touched before the first
	 * RSS reading, so that they are not counted. */
	dynstack_coro_t **c = malloc(n * sizeof(*c));
	if (!c) {
		r->status = CHILD_SKIP;
		snprintf(r->why, sizeof(r->why), "out of memory for %zu handles", n);
		return;
	}
	/* Not zeros: the compiler may turn malloc + memset 0 into calloc, which touches nothing. */
	memset(c, 0xa5, n * sizeof(*c));
	dynstack_attr_init(&attr);
	if (k->shared) {
		if ((rc = dynstack_group_create(&g, &attr, 0))) {
			r->status = CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "dynstack_group_create: %s",
				 dynstack_strerror(rc));
			return;
		}
		attr.mode = DYNSTACK_MODE_SHARED;
		attr.group = g;
	}
	/* One coroutine made, run and destroyed first: the thread's sync stack, the group's stack
	 * pages and the code are in before the first reading. */
	if ((rc = dynstack_coro_create(&c[0], idle_fn, NULL, &attr)) ||
	    (rc = dynstack_coro_resume(c[0])) || (rc = dynstack_coro_destroy(c[0]))) {
		r->status = CHILD_ERROR;
		snprintf(r->why, sizeof(r->why), "warm-up: %s", dynstack_strerror(rc));
		return;
	}
	r->rss_before = rss_bytes();
	double t0 = now_ns();
	for (size_t i = 0; i < n; i++) {
		const char *what = "create";
		if ((rc = dynstack_coro_create(&c[i], idle_fn, NULL, &attr)) ||
		    (k->interleaved && (what = "first resume", rc = dynstack_coro_resume(c[i])))) {
			r->status = rc == -ENOMEM ? CHILD_SKIP : CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "%s %zu of %zu: %s", what, i, n,
				 dynstack_strerror(rc));
			return;
		}
	}
	double t1 = now_ns();
	for (size_t i = 0; i < n && !k->interleaved; i++) {
		if ((rc = dynstack_coro_resume(c[i]))) {
			r->status = rc == -ENOMEM ? CHILD_SKIP : CHILD_ERROR;
			snprintf(r->why, sizeof(r->why), "first resume %zu of %zu: %s", i, n,
				 dynstack_strerror(rc));
			return;
		}
	}
	double t2 = now_ns();
	r->rss_after = rss_bytes();
	r->create_ns = (t1 - t0) / (double)n;
	r->resume_ns = (t2 - t1) / (double)n;
	if (k->shared) {
		/* The last one's frames are still on the shared stack: nothing saved for it. */
		dynstack_stats_t st;
		stats_now(&st);
		r->saved = n > 1 ? (double)st.nr_shared_saved_bytes / (double)(n - 1) : 0;
		r->buffer = (double)st.nr_shared_buffer_bytes / (double)n;
	} else {
		double sum = 0;
		for (size_t i = 0; i < n; i++)
			sum += (double)dynstack_committed(dynstack_coro_stack(c[i]));
		r->committed = sum / (double)n;
	}
	r->status = CHILD_OK;
	/* The child exits without destroying: freeing millions of coroutines is not measured. */
}

/* ------------------------------------------------------------------------------------------ */

static int broken;

/* Runs one child; prints why when it did not deliver. 0: it delivered a CHILD_OK report. */
static int run_child(void (*fn)(void *, void *), void *ctx, void *out, size_t size, int *status,
		     char *why, size_t whylen, const char *name)
{
	int rc = bench_in_child(fn, ctx, out, size, why, whylen);
	if (rc < 0) {
		fprintf(stderr, "bench_shared: fork: %s\n", strerror(-rc));
		exit(1);
	}
	if (rc)
		*status = CHILD_ERROR;
	if (*status == CHILD_OK)
		return 0;
	printf("# %s: %s: %s\n", name, *status == CHILD_SKIP ? "skipped" : "FAILED", why);
	broken |= *status == CHILD_ERROR;
	return -1;
}

/* What a case may use, in bytes per coroutine, when deciding whether it fits the machine: twice
 * the figures measured here (shared ~220 B, private a page plus its page table and metadata). */
#define SHARED_BUDGET 400
#define PRIVATE_BUDGET 10000

/* n, or as many as fit in 80 % of MemAvailable at budget bytes each (said in the output). */
static size_t fit_memory(const char *what, size_t n, double budget)
{
	double avail = mem_available();
	if (avail <= 0 || (double)n * budget <= avail * 0.8)
		return n;
	size_t fit = (size_t)(avail * 0.8 / budget);
	printf("# %s: %.1f GiB available: %zu coroutines instead of %zu\n", what, avail / (1 << 30),
	       fit, n);
	return fit;
}

static void print_switch(void)
{
	static struct sw_report rep[SIZES];
	bool ok[SIZES];

	printf("# 1. switch cost against live-stack size; %d rounds, the cases in turn; medians of"
	       " ns per resume + yield pair\n",
	       rounds);
	for (size_t s = 0; s < SIZES; s++) {
		/* Both sets live in one child: the private budget covers the shared ones too. */
		struct sw_ctx ctx = { &sizes[s], scaled(sizes[s].shared_n, 16),
				      fit_memory(sizes[s].label, scaled(sizes[s].private_n, 16),
						 PRIVATE_BUDGET + sizes[s].locals) };
		double t0 = now_ns();
		ok[s] = !run_child(measure_switch, &ctx, &rep[s], sizeof(rep[s]), &rep[s].status,
				   rep[s].why, sizeof(rep[s].why), sizes[s].label);
		printf("# %s: the child took %.1f s\n", sizes[s].label, (now_ns() - t0) / 1e9);
		fflush(stdout);
	}
	for (size_t s = 0; s < SIZES; s++) {
		const struct size_case *sc = &sizes[s];
		struct sw_report *r = &rep[s];
		double med[SW_CASES];
		if (!ok[s])
			continue;
		for (int c = 0; c < SW_CASES; c++)
			med[c] = median(r->ns[c], (size_t)rounds);
		printf("# %s: %zu B of locals; %zu shared coroutines round robin; %zu private ones"
		       " round robin%s\n",
		       sc->label, sc->locals, r->shared_n, r->private_n,
		       r->capped ? " (fewer: the mprotect backend maps each stack)" :
		       r->private_n < r->shared_n ? " (fewer: each holds its own committed pages)" :
						    " (the same N)");
		printf("shared_count_%s %zu coroutines\n", sc->label, r->shared_n);
		printf("private_cold_count_%s %zu coroutines\n", sc->label, r->private_n);
		printf("shared_saved_bytes_%s %.0f B\n", sc->label, r->saved);
		printf("shared_buffer_bytes_%s %.0f B\n", sc->label, r->buffer);
		printf("private_committed_bytes_%s %.0f B\n", sc->label, r->private_committed);
		for (int c = 0; c < SW_CASES; c++)
			printf("%s_%s %.1f ns/pair\n", sw_name[c], sc->label, med[c]);
		printf("shared_vs_private_ratio_%s %.1f x\n", sc->label,
		       med[SW_SHARED_RR] / med[SW_PRIVATE]);
		printf("shared_vs_private_cold_ratio_%s %.2f x\n", sc->label,
		       med[SW_SHARED_RR] / med[SW_PRIVATE_RR]);
		printf("shared_vs_owner_hit_ratio_%s %.1f x\n", sc->label,
		       med[SW_SHARED_RR] / med[SW_OWNER_HIT]);
		printf("shared_copy_ns_per_byte_%s %.3f ns/B\n", sc->label,
		       (med[SW_SHARED_RR] - med[SW_OWNER_HIT]) / (2 * r->saved));
		printf("# libaco: %.2f ns per resume at %zu B copied, %zu coroutines; %.2f ns with no"
		       " copy\n",
		       sc->libaco_ns, sc->libaco_copy, sc->libaco_n, LIBACO_NOCOPY_NS);
		printf("libaco_ratio_%s %.*f x\n", sc->label,
		       sc->libaco_ns / LIBACO_NOCOPY_NS < 2 ? 2 : 1,
		       sc->libaco_ns / LIBACO_NOCOPY_NS);
	}
	/* libaco's figures are by bytes copied, which in libaco are nearly all locals; ours save
	 * the library's frames too. */
	if (ok[0]) {
		printf("# our 8B case saves %.0f B per switch-out; libaco at similar copy sizes"
		       " (2000000 coroutines):",
		       rep[0].saved);
		for (size_t i = 0; i < sizeof(libaco_small) / sizeof(libaco_small[0]); i++)
			printf(" %zu B %.2f ns (%.2f x)%s", libaco_small[i].copy,
			       libaco_small[i].ns, libaco_small[i].ns / LIBACO_NOCOPY_NS,
			       i + 1 < sizeof(libaco_small) / sizeof(libaco_small[0]) ? "," : "\n");
	}

	/* 3. The counters of one case: two copies per round-robin resume, none and one owner hit
	 * per resume of a coroutine alone in its group. */
	struct sw_report *r = &rep[COUNTERS_CASE];
	const char *l = sizes[COUNTERS_CASE].label;
	if (ok[COUNTERS_CASE] && r->rr_resumes && r->hit_resumes) {
		printf("# 3. counters over the timed loops of the %s case (dynstack_stats_get)\n",
		       l);
		printf("shared_rr_%s_resumes %llu resumes\n", l, (unsigned long long)r->rr_resumes);
		printf("shared_rr_%s_copies %llu copies\n", l, (unsigned long long)r->rr_copies);
		printf("shared_rr_%s_copied_bytes %llu B\n", l, (unsigned long long)r->rr_bytes);
		printf("shared_rr_%s_owner_hits %llu hits\n", l, (unsigned long long)r->rr_hits);
		printf("shared_rr_%s_copies_per_resume %.2f copies\n", l,
		       (double)r->rr_copies / (double)r->rr_resumes);
		printf("shared_rr_%s_bytes_per_copy %.0f B\n", l,
		       r->rr_copies ? (double)r->rr_bytes / (double)r->rr_copies : 0);
		printf("shared_owner_hit_%s_resumes %llu resumes\n", l,
		       (unsigned long long)r->hit_resumes);
		printf("shared_owner_hit_%s_copies %llu copies\n", l,
		       (unsigned long long)r->hit_copies);
		printf("shared_owner_hit_%s_copied_bytes %llu B\n", l,
		       (unsigned long long)r->hit_bytes);
		printf("shared_owner_hit_%s_owner_hits %llu hits\n", l,
		       (unsigned long long)r->hit_hits);
	}
}

/* One memory case; rounds > 1 take the median of the times (RSS is the same every time). */
static int memory_case(bool shared, bool interleaved, size_t n, int nrounds, struct mem_report *out)
{
	double create[MAX_ROUNDS], resume[MAX_ROUNDS];
	char lbl[32], name[64];
	struct mem_ctx ctx = { shared, interleaved, n };
	const char *mode = shared ? "shared" : "private",
		   *suffix = interleaved ? "_interleaved" : "";
	snprintf(name, sizeof(name), "idle_%s_%s%s", mode, count_label(n, lbl, sizeof(lbl)),
		 suffix);
	for (int i = 0; i < nrounds; i++) {
		if (run_child(measure_memory, &ctx, out, sizeof(*out), &out->status, out->why,
			      sizeof(out->why), name))
			return -1;
		create[i] = out->create_ns;
		resume[i] = out->resume_ns;
	}
	if (out->n != n) {
		printf("# %s: the mprotect backend (a mapping per stack): %zu coroutines, not %zu\n",
		       name, out->n, n);
		snprintf(name, sizeof(name), "idle_%s_%s%s", mode,
			 count_label(out->n, lbl, sizeof(lbl)), suffix);
	}
	out->create_ns = median(create, (size_t)nrounds);
	out->resume_ns = median(resume, (size_t)nrounds);
	printf("%s_count %zu coroutines\n", name, out->n);
	printf("%s_bytes_per_coro %.1f B\n", name,
	       (out->rss_after - out->rss_before) / (double)out->n);
	printf("%s_rss_delta %.1f MiB\n", name, (out->rss_after - out->rss_before) / 1048576);
	if (shared) {
		printf("%s_saved_mean %.1f B\n", name, out->saved);
		printf("%s_buffer_mean %.1f B\n", name, out->buffer);
	} else {
		printf("%s_committed_mean %.0f B\n", name, out->committed);
	}
	if (interleaved) {
		printf("%s_create_and_first_resume %.1f ns\n", name, out->create_ns);
	} else {
		printf("%s_create %.1f ns\n", name, out->create_ns);
		printf("%s_first_resume %.1f ns\n", name, out->resume_ns);
	}
	fflush(stdout);
	return 0;
}

static void print_memory(void)
{
	size_t n1 = fit_memory("idle_shared", scaled(1000000, 1000), SHARED_BUDGET);
	size_t n10 = fit_memory("idle_shared", scaled(10000000, 1000), SHARED_BUDGET);
	size_t np = fit_memory("idle_private", scaled(1000000, 1000), PRIVATE_BUDGET);
	struct mem_report small, large, inter, priv;

	printf("# 2. memory: idle coroutines, all created, then each run once to its first yield"
	       " (_interleaved: each run right after its create); RSS growth (from"
	       " /proc/self/smaps_rollup) per coroutine: library metadata, save buffers, stacks\n");
	printf("# goal: <= 200 B per idle shared coroutine; libaco: 10M in 2.8 GB, ~280 B each\n");
	printf("idle_shared_goal_bytes_per_coro 200 B\n");
	printf("libaco_idle_bytes_per_coro 280 B\n");
	int ok1 = memory_case(true, false, n1, 3, &small);
	memory_case(true, false, n10, 1, &large);
	memory_case(true, true, n1, 1, &inter);
	int okp = memory_case(false, false, np, 1, &priv);
	if (!ok1 && !okp) {
		double s = (small.rss_after - small.rss_before) / (double)small.n;
		double p = (priv.rss_after - priv.rss_before) / (double)priv.n;
		printf("idle_private_vs_shared_bytes %.1f x\n", p / s);
		printf("idle_private_vs_shared_create %.2f x\n", priv.create_ns / small.create_ns);
		printf("idle_private_vs_shared_first_resume %.2f x\n",
		       priv.resume_ns / small.resume_ns);
	}
}

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"usage: %s [--scale F] [--rounds R] [--only switch|memory]\n"
		"  --scale F   multiply every coroutine count by F, 0 < F <= 10 (default:\n"
		"              $BENCH_SHARED_SCALE, else 1: up to 10M coroutines, ~2 GB)\n"
		"  --rounds R  rounds of the switch cases, 1..%d; figures are medians (default %d)\n"
		"  --only P    run one part\n",
		argv0, MAX_ROUNDS, DEFAULT_ROUNDS);
}

static int parse_scale(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end || !(v > 0 && v <= 10))
		return -1;
	scale = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "scale", required_argument, NULL, 's' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "only", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *only = NULL, *env = getenv("BENCH_SHARED_SCALE");
	int opt;

	if (env && parse_scale(env)) {
		fprintf(stderr, "bench_shared: BENCH_SHARED_SCALE=%s: not a number in (0, 10]\n",
			env);
		return 2;
	}
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			if (parse_scale(optarg))
				goto usage;
			break;
		case 'r':
			rounds = atoi(optarg);
			if (rounds < 1 || rounds > MAX_ROUNDS)
				goto usage;
			break;
		case 'o':
			if (strcmp(optarg, "switch") && strcmp(optarg, "memory"))
				goto usage;
			only = optarg;
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
	/* DYNSTACK_SHARED_POISON too: it would copy out on every switch. */
	bench_unset_config_env();
	unsetenv("DYNSTACK_SHARED_POISON");

	struct utsname u;
	double t0 = now_ns();
	if (!uname(&u))
		printf("# Linux %s %s, %ld CPUs, %.1f GiB available, DYNSTACK_BACKEND=%s\n",
		       u.release, u.machine, sysconf(_SC_NPROCESSORS_ONLN),
		       mem_available() / (1 << 30),
		       getenv("DYNSTACK_BACKEND") ? getenv("DYNSTACK_BACKEND") : "(auto)");
	if (scale != 1.0)
		printf("# counts scaled by %g\n", scale);
	print_load("at start");
	if (!only || !strcmp(only, "switch"))
		print_switch();
	if (!only || !strcmp(only, "memory"))
		print_memory();
	print_load("at the end");
	printf("# total %.1f s\n", (now_ns() - t0) / 1e9);
	return broken;
usage:
	usage(stderr, argv[0]);
	return 2;
}
