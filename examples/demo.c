/* The seed's headline on real code: 320 green threads on 16 KiB stacks, each suspended at its own
 * depth, their memory as the kernel sees it (mincore) next to the library's counters, and a
 * checksum of every frame to prove the pages kept their contents. --help lists the options. */
#include <alloca.h>
#include <dynstack.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KIB 1024u
/* Bytes of locals per recursion level: the frame itself is this plus saved registers. */
#define FRAME_BYTES 192
/* Room kept below the target depth for the last frame and the switch frame of the yield. */
#define SLOP_BYTES 1024u
/* Workload depths (bytes below the stack top), clamped to the size the user picked. */
#define SHALLOW_MIN 256u
#define SHALLOW_MAX (2u * KIB)
#define MEDIUM_MAX (6u * KIB)
#define DEEP_MIN (16u * KIB)
#define DEEP_MAX (56u * KIB) /* "tens of KiB" even on a big stack */
#define ALLOCA_MAX (60u * KIB)
#define ALLOCA_MARGIN (8u * KIB)

enum job_kind {
	JOB_SHALLOW,
	JOB_MEDIUM,
	JOB_DEEP,
	JOB_ALLOCA,
	JOB_KINDS
};
static const char *const kind_name[JOB_KINDS] = { "shallow", "medium", "deep", "alloca" };

struct job {
	dynstack_coro_t *co;
	enum job_kind kind;
	size_t target;	 /* bytes below the top the workload reaches (alloca: its size) */
	uint64_t key;	 /* seeds the bytes written to every frame */
	unsigned levels; /* recursion levels reached, set by the coroutine */
	size_t reached;	 /* deepest point seen (top - address), set by the coroutine */
	uint64_t sum;	 /* checksum of its frames, read back after the yield */
	int finished;
};

struct plan {
	size_t count, size, page;
	uint64_t seed;
	size_t lo[JOB_KINDS], hi[JOB_KINDS]; /* target ranges per kind */
	size_t n[JOB_KINDS];
	size_t alloca_bytes;
};

static uint64_t splitmix(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static size_t uniform(uint64_t *rng, size_t lo, size_t hi)
{
	return hi <= lo ? lo : lo + (size_t)(splitmix(rng) % (hi - lo + 1));
}

/* The byte a frame holds at offset i: a function of (key, level, i) only, so main can recompute
 * every checksum without the stacks. */
static inline uint8_t pattern(uint64_t key, unsigned level, size_t i)
{
	uint64_t x = key + level * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 31)) * 0x94d049bb133111ebull;
	return (uint8_t)(x >> 29);
}

static inline uint64_t mix(uint64_t h, uint8_t b)
{
	return (h ^ b) * 0x100000001b3ull; /* FNV-1a */
}

static __attribute__((noinline)) uint64_t bottom(struct job *j, uintptr_t top, unsigned levels)
{
	volatile char probe = 0;
	j->levels = levels;
	j->reached = top - (uintptr_t)&probe;
	/* Suspended at the deepest point: every frame above stays live while the others run and
	 * while main measures, and is checked when the recursion unwinds after the resume. */
	dynstack_coro_yield();
	return j->key + (uint64_t)probe;
}

static __attribute__((noinline)) uint64_t descend(struct job *j, uintptr_t top, unsigned level)
{
	/* volatile: the compiler may neither drop the locals nor keep them in registers, so every
	 * level really occupies (and touches) FRAME_BYTES of the stack. */
	volatile uint8_t frame[FRAME_BYTES];
	for (size_t i = 0; i < FRAME_BYTES; i++)
		frame[i] = pattern(j->key, level, i);
	uint64_t h = top - (uintptr_t)frame < j->target ? descend(j, top, level + 1) :
							  bottom(j, top, level + 1);
	for (size_t i = 0; i < FRAME_BYTES; i++)
		h = mix(h, frame[i]);
	return h;
}

static __attribute__((noinline)) uint64_t big_alloca(struct job *j, uintptr_t top)
{
	/* gcc adds no stack-clash probes here: the alloca moves the stack pointer tens of KiB down
	 * and the first write lands far below the committed edge, which the handler must commit
	 * in one go. Every byte is written so that every committed page is also resident. */
	volatile uint8_t *buf = alloca(j->target);
	for (size_t i = 0; i < j->target; i++)
		buf[i] = pattern(j->key, 0, i);
	j->levels = 1;
	j->reached = top - (uintptr_t)buf;
	dynstack_coro_yield();
	uint64_t h = j->key;
	for (size_t i = 0; i < j->target; i++)
		h = mix(h, buf[i]);
	return h;
}

static void green_thread(void *arg)
{
	struct job *j = arg;
	uintptr_t top = (uintptr_t)dynstack_top(dynstack_coro_stack(dynstack_coro_current()));
	j->sum = j->kind == JOB_ALLOCA ? big_alloca(j, top) : descend(j, top, 0);
	j->finished = 1;
}

/* What the coroutine's checksum must be, computed on main's stack from the job alone. */
static uint64_t expected_sum(const struct job *j)
{
	uint64_t h = j->key;
	if (j->kind == JOB_ALLOCA) {
		for (size_t i = 0; i < j->target; i++)
			h = mix(h, pattern(j->key, 0, i));
		return h;
	}
	for (unsigned level = j->levels; level-- > 0;)
		for (size_t i = 0; i < FRAME_BYTES; i++)
			h = mix(h, pattern(j->key, level, i));
	return h;
}

static void usage(FILE *f, const char *argv0, int full)
{
	fprintf(f, "usage: %s [--count N] [--size KiB] [--backend guard|mprotect] [--seed S]\n%s",
		argv0, full ? "" : "(--help explains them)\n");
	if (!full)
		return;
	fprintf(f, "\n"
		   "Starts N green threads (coroutines on dynamic stacks of THREAD_SIZE KiB\n"
		   "each), lets each go to its own stack depth and suspend there, then measures\n"
		   "the memory the stacks use and compares it with fixed, fully allocated stacks\n"
		   "of the same size: the seed's '320 * 4 KB dynamic vs 320 * 16 KB fixed' on\n"
		   "real code.\n"
		   "\n"
		   "  --count N      number of green threads (default 320)\n"
		   "  --size KiB     THREAD_SIZE, the reservation of each stack: a multiple of\n"
		   "                 the page size, at least 16 (default 16)\n"
		   "  --backend B    commit backend: guard (MADV_GUARD_REMOVE, Linux >= 6.13)\n"
		   "                 or mprotect; default: guard where the kernel has it. The\n"
		   "                 environment variable DYNSTACK_BACKEND=guard|mprotect\n"
		   "                 overrides this option.\n"
		   "  --seed S       seed of the workload generator (default 1): same seed,\n"
		   "                 same depths\n"
		   "  --help         this text\n"
		   "\n"
		   "Workload, one kind per thread, depths drawn at random within the kind:\n"
		   "  shallow  ~92%%  recursion with locals down to 256 B - 2 KiB\n"
		   "  medium   ~5%%   recursion down to 2 - 6 KiB\n"
		   "  deep     ~1.5%% recursion down to 16 - 56 KiB (tens of KiB)\n"
		   "  alloca   ~1.2%% one alloca of min(60 KiB, THREAD_SIZE - 8 KiB), every\n"
		   "                 byte written: 8 KiB with the default 16 KiB stacks, 56 KiB\n"
		   "                 at --size 64, 60 KiB from --size 68 on, so nearly 2 pages\n"
		   "                 stay free below it\n"
		   "Recursion depths are clamped to THREAD_SIZE - 2 pages - 1 KiB, so no thread\n"
		   "overflows; on small stacks the deep range shrinks (5.25 - 7 KiB at 16 KiB).\n"
		   "\n"
		   "Each thread yields at its deepest point. With all of them suspended the demo\n"
		   "prints the library's counters (/proc/vmstat style), the pages resident in the\n"
		   "stacks according to the kernel (mincore(2) over each stack's range), the\n"
		   "counters' view of the same, and a histogram of pages per stack. Then it\n"
		   "resumes every thread, which unwinds and checksums its frames, and checks the\n"
		   "sums and that every page was given back.\n"
		   "Exit status: 0 when every check passes, 1 otherwise, 2 for a usage error.\n");
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-')
		return -1;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end || v > max)
		return -1;
	*out = v;
	return 0;
}

static void plan_make(struct plan *p)
{
	/* The alloca scales with the stack (min(60 KiB, size - 8 KiB)); recursion keeps two pages
	 * and the slop free so that a stack never reaches its guard page. */
	size_t limit = p->size - 2 * p->page - SLOP_BYTES;
	size_t deep_hi = limit < DEEP_MAX ? limit : DEEP_MAX;
	size_t deep_lo = deep_hi * 3 / 4 < DEEP_MIN ? deep_hi * 3 / 4 : DEEP_MIN;
	size_t med_hi = limit < MEDIUM_MAX ? limit : MEDIUM_MAX;

	p->alloca_bytes =
		p->size - ALLOCA_MARGIN < ALLOCA_MAX ? p->size - ALLOCA_MARGIN : ALLOCA_MAX;
	p->lo[JOB_SHALLOW] = SHALLOW_MIN;
	p->hi[JOB_SHALLOW] = SHALLOW_MAX;
	p->lo[JOB_MEDIUM] = SHALLOW_MAX;
	p->hi[JOB_MEDIUM] = med_hi;
	p->lo[JOB_DEEP] = deep_lo;
	p->hi[JOB_DEEP] = deep_hi;
	p->lo[JOB_ALLOCA] = p->hi[JOB_ALLOCA] = p->alloca_bytes;

	/* Fixed shares, not a die roll per thread, so that every run has a few of each kind
	 * (4 alloca, 5 deep, 16 medium of 320); the seed only picks which thread gets which. */
	size_t left = p->count;
	size_t want[JOB_KINDS] = { 0, p->count / 20, p->count / 64, (p->count + 79) / 80 };
	for (int k = JOB_ALLOCA; k > JOB_SHALLOW; k--) {
		p->n[k] = want[k] < left ? want[k] : left;
		left -= p->n[k];
	}
	p->n[JOB_SHALLOW] = left;
}

static void jobs_make(const struct plan *p, struct job *jobs)
{
	uint64_t rng = p->seed;
	size_t i = 0;
	for (int k = 0; k < JOB_KINDS; k++)
		for (size_t n = 0; n < p->n[k]; n++)
			jobs[i++].kind = (enum job_kind)k;
	for (i = p->count; i > 1; i--) { /* Fisher-Yates */
		size_t r = (size_t)(splitmix(&rng) % i);
		enum job_kind t = jobs[i - 1].kind;
		jobs[i - 1].kind = jobs[r].kind;
		jobs[r].kind = t;
	}
	for (i = 0; i < p->count; i++) {
		jobs[i].target = uniform(&rng, p->lo[jobs[i].kind], p->hi[jobs[i].kind]);
		jobs[i].key = splitmix(&rng);
	}
}

static double kib(size_t bytes)
{
	return bytes / 1024.0;
}

/* Pages of [top - size, top) the kernel has resident, and how many of them lie below the
 * committed edge (there should be none: an uncommitted page is inaccessible). */
static int resident_pages(const dynstack_t *st, size_t page, unsigned char *vec, size_t *res,
			  size_t *below_edge)
{
	size_t size = dynstack_size(st), npages = size / page;
	size_t uncommitted = (size - dynstack_committed(st)) / page;
	char *lo = (char *)dynstack_top(st) - size;
	*res = *below_edge = 0;
	if (mincore(lo, size, vec))
		return -errno;
	for (size_t i = 0; i < npages; i++) {
		if (!(vec[i] & 1))
			continue;
		++*res;
		if (i < uncommitted)
			++*below_edge;
	}
	return 0;
}

/* Returns -1 to go on, else the exit status (0 after --help, 2 for a usage error). */
static int parse_args(int argc, char **argv, struct plan *p, dynstack_config_t *cfg)
{
	static const struct option longopts[] = {
		{ "count", required_argument, NULL, 'n' },
		{ "size", required_argument, NULL, 's' },
		{ "backend", required_argument, NULL, 'b' },
		{ "seed", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t v;
	int opt;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'n':
			if (parse_u64(optarg, 1000000, &v) || v == 0)
				goto bad;
			p->count = (size_t)v;
			break;
		case 's':
			if (parse_u64(optarg, DYNSTACK_MAX_SIZE / KIB, &v) || v < 16 ||
			    (v * KIB) % p->page)
				goto bad;
			p->size = (size_t)v * KIB;
			break;
		case 'b':
			if (!strcmp(optarg, "guard"))
				cfg->backend = DYNSTACK_BACKEND_GUARD;
			else if (!strcmp(optarg, "mprotect"))
				cfg->backend = DYNSTACK_BACKEND_MPROTECT;
			else
				goto bad;
			break;
		case 'r':
			if (parse_u64(optarg, UINT64_MAX, &v))
				goto bad;
			p->seed = v;
			break;
		case 'h':
			usage(stdout, argv[0], 1);
			return 0;
		default:
			goto usage;
		}
	}
	if (optind == argc)
		return -1;
	goto usage;
bad:
	fprintf(stderr, "%s: invalid value '%s' for --%s\n", argv[0], optarg,
		opt == 'n' ? "count" :
		opt == 's' ? "size" :
		opt == 'b' ? "backend" :
			     "seed");
usage:
	usage(stderr, argv[0], 0);
	return 2;
}

/* Create every green thread and run each to its deepest point, where it yields: all of them
 * are alive and suspended when main measures. */
static int start_all(const struct plan *p, struct job *jobs)
{
	dynstack_attr_t attr;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = p->size;
	for (size_t i = 0; i < p->count; i++) {
		char name[DYNSTACK_NAME_MAX + 1];
		snprintf(name, sizeof(name), "green-%zu-%s", i, kind_name[jobs[i].kind]);
		attr.name = name;
		if ((rc = dynstack_coro_create(&jobs[i].co, green_thread, &jobs[i], &attr))) {
			fprintf(stderr, "demo: coroutine %zu of %zu: %s\n", i, p->count,
				dynstack_strerror(rc));
			return -1;
		}
	}
	for (size_t i = 0; i < p->count; i++) {
		if ((rc = dynstack_coro_resume(jobs[i].co)) ||
		    dynstack_coro_status(jobs[i].co) != DYNSTACK_CORO_SUSPENDED) {
			fprintf(stderr, "demo: coroutine %zu did not suspend: %s\n", i,
				dynstack_strerror(rc));
			return -1;
		}
	}
	return 0;
}

static void print_histogram(const size_t *hist, size_t buckets)
{
	size_t max = 0;
	for (size_t n = 0; n < buckets; n++)
		if (hist[n] > max)
			max = hist[n];
	printf("pages per stack (measured):\n");
	for (size_t n = 0; n < buckets; n++) {
		if (!hist[n])
			continue;
		char bar[41];
		size_t w = (hist[n] * 40 + max - 1) / max;
		memset(bar, '#', w);
		bar[w] = '\0';
		printf("  %3zu page%s: %6zu stack%s  %s\n", n, n == 1 ? " " : "s", hist[n],
		       hist[n] == 1 ? " " : "s", bar);
	}
}

/* With every thread suspended: the counters, the kernel's view, and the comparison. Returns
 * 0, 1 when the counters contradict the stacks, -1 when mincore fails. */
static int measure(const struct plan *p, const struct job *jobs)
{
	size_t npages = p->size / p->page;
	unsigned char *vec = malloc(npages);
	size_t *hist = calloc(npages + 1, sizeof(*hist));
	size_t resident = 0, committed = 0, below_edge = 0, deepest = 0;
	int rc, failed = 0;

	/* Counters first, then the kernel's view, with nothing running in between. */
	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	if (!vec || !hist) {
		fprintf(stderr, "demo: out of memory\n");
		failed = -1;
		goto out;
	}
	for (size_t i = 0; i < p->count; i++) {
		const dynstack_t *s = dynstack_coro_stack(jobs[i].co);
		size_t r, b;
		if ((rc = resident_pages(s, p->page, vec, &r, &b))) {
			fprintf(stderr, "demo: mincore: %s\n", strerror(-rc));
			failed = -1;
			goto out;
		}
		resident += r;
		below_edge += b;
		committed += dynstack_committed(s) / p->page;
		hist[r]++;
		if (jobs[i].reached > deepest)
			deepest = jobs[i].reached;
	}

	printf("nr_dynamic_stacks %" PRIu64 "\n", st.nr_dynamic_stacks);
	printf("nr_dynamic_stacks_pages %" PRIu64 "\n", st.nr_dynamic_stacks_pages);
	printf("nr_dynamic_stacks_faults %" PRIu64 "\n", st.nr_dynamic_stacks_faults);
	printf("nr_dynamic_stacks_spurious %" PRIu64 "\n", st.nr_dynamic_stacks_spurious);
	printf("nr_dynamic_stacks_overflows %" PRIu64 "\n", st.nr_dynamic_stacks_overflows);
	printf("backend %s\n", dynstack_backend_name());

	size_t fixed_kib = p->count * (p->size / KIB), dyn_kib = resident * (p->page / KIB);
	printf("%zu stacks * %zu KiB fixed = %zu KiB; dynamic: %zu pages = %zu KiB (measured), "
	       "saving %.1f%%\n",
	       p->count, p->size / KIB, fixed_kib, resident, dyn_kib,
	       100.0 * (1.0 - (double)dyn_kib / (double)fixed_kib));

	uint64_t c = st.nr_dynamic_stacks_pages;
	printf("counted: nr_dynamic_stacks_pages %" PRIu64 " = %" PRIu64 " KiB, ", c,
	       c * (p->page / KIB));
	if (c == resident)
		printf("agree with mincore\n");
	else
		printf("differ by %" PRIu64 " pages from mincore\n",
		       c > resident ? c - resident : resident - c);
	/* The workload writes every page it commits, so the two should agree; when they do not,
	 * say which way and what that means. */
	if (c > resident)
		printf("  why: %" PRIu64
		       " pages are committed (accessible) but were never touched,\n"
		       "  so the kernel has not allocated them: committed is what the stacks may\n"
		       "  use without a fault, resident is what they use\n",
		       c - resident);
	else if (c < resident)
		printf("  why: %zu pages are resident but not counted; %zu of them lie below a\n"
		       "  committed edge, where nothing is accessible (a kernel whose mincore\n"
		       "  counts guard markers as resident shows this too)\n",
		       resident - (size_t)c, below_edge);
	if (committed != c) {
		printf("check failed: the stacks' dynstack_committed add up to %zu pages, "
		       "the counter says %" PRIu64 "\n",
		       committed, c);
		failed = 1;
	}

	print_histogram(hist, npages + 1);
	printf("plan: %zu green thread%s, THREAD_SIZE %zu KiB, seed %" PRIu64 "\n ", p->count,
	       p->count == 1 ? "" : "s", p->size / KIB, p->seed);
	for (int k = 0; k < JOB_KINDS; k++) {
		if (k == JOB_ALLOCA)
			printf(" %zu alloca of %g KiB = min(60 KiB, size - 8 KiB)\n", p->n[k],
			       kib(p->alloca_bytes));
		else
			printf(" %zu %s %g-%g KiB,", p->n[k], kind_name[k], kib(p->lo[k]),
			       kib(p->hi[k]));
	}
	printf("deepest point: %.2f KiB below the top, %.2f KiB above the end of the stack\n",
	       kib(deepest), kib(p->size - deepest));
out:
	free(hist);
	free(vec);
	return failed;
}

/* Resume every thread: it unwinds its frames, reads them back and leaves its checksum, which
 * must match the one computed here. Returns the number of threads that failed. */
static size_t finish_all(const struct plan *p, struct job *jobs)
{
	size_t bad = 0;
	int rc;

	for (size_t i = 0; i < p->count; i++) {
		struct job *j = &jobs[i];
		if ((rc = dynstack_coro_resume(j->co)) ||
		    dynstack_coro_status(j->co) != DYNSTACK_CORO_DEAD || !j->finished) {
			fprintf(stderr, "demo: coroutine %zu did not finish: %s\n", i,
				dynstack_strerror(rc));
			bad++;
		} else if (j->sum != expected_sum(j)) {
			fprintf(stderr,
				"demo: coroutine %zu (%s, %u levels): checksum %016" PRIx64
				" expected %016" PRIx64 "\n",
				i, kind_name[j->kind], j->levels, j->sum, expected_sum(j));
			bad++;
		}
		if ((rc = dynstack_coro_destroy(j->co))) {
			fprintf(stderr, "demo: destroy %zu: %s\n", i, dynstack_strerror(rc));
			bad++;
		}
	}
	return bad;
}

int main(int argc, char **argv)
{
	struct plan p = { .count = 320, .size = 16 * KIB, .seed = 1 };
	dynstack_config_t cfg;
	int rc;

	p.page = (size_t)sysconf(_SC_PAGESIZE);
	dynstack_config_init(&cfg);
	if ((rc = parse_args(argc, argv, &p, &cfg)) >= 0)
		return rc;
	if ((rc = dynstack_init(&cfg))) {
		fprintf(stderr, "demo: dynstack_init: %s\n", dynstack_strerror(rc));
		return 1;
	}
	plan_make(&p);
	struct job *jobs = calloc(p.count, sizeof(*jobs));
	if (!jobs) {
		fprintf(stderr, "demo: out of memory\n");
		return 1;
	}
	jobs_make(&p, jobs);
	if (start_all(&p, jobs))
		return 1;
	int failed = measure(&p, jobs);
	if (failed < 0)
		return 1;
	size_t bad = finish_all(&p, jobs);

	/* Every page goes back with its stack: the gauges must be at zero again. */
	dynstack_stats_t st = { .struct_size = sizeof(st) };
	dynstack_stats_get(&st);
	int freed = !st.nr_dynamic_stacks && !st.nr_dynamic_stacks_pages;
	printf("check: %zu of %zu checksums ok; after destroy: %" PRIu64 " stacks, %" PRIu64
	       " pages; %s\n",
	       p.count - bad, p.count, st.nr_dynamic_stacks, st.nr_dynamic_stacks_pages,
	       bad || failed || !freed ? "FAILED" : "ok");
	free(jobs);
	return bad || failed || !freed;
}
