/* Green threads preempted by a timer. A profiler-style SIGALRM handler,
 * installed with dynstack_sigaction so that it runs on the thread's sync
 * stack and never on a green one, samples a backtrace and raises a flag;
 * the coroutines check the flag at safe points and yield to a round-robin
 * scheduler. Build: meson compile -C build; run: build/examples/preempt. */
#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <dynstack.h>

#define NCORO 64
#define STACK_SIZE (256 << 10)
#define SAMPLE_DEPTH 32

static volatile sig_atomic_t preempt;	/* set by the timer, cleared by the yield */
static volatile sig_atomic_t samples;	/* handler runs that took a sample */
static volatile sig_atomic_t off_stack; /* handler runs not on the sync stack */
static void *sample_buf[SAMPLE_DEPTH];	/* the last sample (a profiler would hash it) */
static volatile sig_atomic_t sample_len;
static volatile uintptr_t sync_lo, sync_hi; /* this thread's sigaltstack */

static void on_tick(int sig)
{
	int saved_errno = errno;
	volatile char probe;
	uintptr_t sp = (uintptr_t)&probe;

	(void)sig;
	if (sp < sync_lo || sp >= sync_hi)
		off_stack++;
	sample_len = backtrace(sample_buf, SAMPLE_DEPTH);
	samples++;
	preempt = 1;
	errno = saved_errno;
}

struct task {
	dynstack_coro_t *c;
	unsigned id;
	unsigned long work;   /* iterations left */
	unsigned long yields; /* yields caused by preemption */
	uint64_t result;
};

/* A safe point: give the CPU away if the timer asked for it. */
static void safe_point(struct task *t)
{
	if (preempt) {
		preempt = 0;
		t->yields++;
		dynstack_coro_yield();
	}
}

/* Recursive compute with a frame of varying size: the depth, and so the
 * stack the task needs, changes from call to call. */
static uint64_t compute(struct task *t, unsigned depth, uint64_t x)
{
	volatile uint64_t frame[64];

	for (unsigned i = 0; i < 64; i++)
		frame[i] = x * 6364136223846793005ULL + i;
	if (depth > 0)
		x ^= compute(t, depth - 1, frame[depth % 64]);
	safe_point(t);
	uint64_t sum = 0;
	for (unsigned i = 0; i < 64; i++)
		sum += frame[i];
	return x + sum;
}

static void task_fn(void *arg)
{
	struct task *t = arg;
	uint64_t x = t->id;

	while (t->work > 0) {
		/* 0..~200 levels of ~600 bytes: up to ~120 KiB of stack. */
		unsigned depth = (unsigned)((x >> 7) % (20 + t->id * 3));
		x = compute(t, depth, x);
		t->work--;
	}
	t->result = x;
}

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
		"usage: %s [--hz N] [--help]\n"
		"Runs %d green threads preempted by an N Hz timer (1000..10000, default 2000)\n"
		"whose handler runs on the sync stack, installed with dynstack_sigaction.\n",
		prog, NCORO);
}

int main(int argc, char **argv)
{
	long hz = 2000;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout, argv[0]);
			return 0;
		} else if (!strcmp(argv[i], "--hz") && i + 1 < argc) {
			char *end;
			hz = strtol(argv[++i], &end, 10);
			if (*end || hz < 1000 || hz > 10000) {
				usage(stderr, argv[0]);
				return 2;
			}
		} else {
			usage(stderr, argv[0]);
			return 2;
		}
	}

	int rc = dynstack_init(NULL);
	if (!rc)
		rc = dynstack_thread_init();
	if (rc) {
		fprintf(stderr, "dynstack_init: %s\n", dynstack_strerror(rc));
		return 1;
	}
	stack_t ss;
	if (sigaltstack(NULL, &ss) || (ss.ss_flags & SS_DISABLE)) {
		fprintf(stderr, "no sync stack installed\n");
		return 1;
	}
	sync_lo = (uintptr_t)ss.ss_sp;
	sync_hi = sync_lo + ss.ss_size;
	/* backtrace() loads its unwinder (and allocates) on first use: do that
	 * here, not in the handler. */
	sample_len = backtrace(sample_buf, SAMPLE_DEPTH);

	static struct task tasks[NCORO];
	dynstack_attr_t attr;
	dynstack_attr_init(&attr);
	attr.size = STACK_SIZE;
	for (unsigned i = 0; i < NCORO; i++) {
		tasks[i].id = i;
		tasks[i].work = 4000;
		if ((rc = dynstack_coro_create(&tasks[i].c, task_fn, &tasks[i], &attr))) {
			fprintf(stderr, "dynstack_coro_create: %s\n", dynstack_strerror(rc));
			return 1;
		}
	}

	struct sigaction act;
	memset(&act, 0, sizeof(act));
	act.sa_handler = on_tick;
	act.sa_flags = SA_RESTART;
	sigemptyset(&act.sa_mask);
	if ((rc = dynstack_sigaction(SIGALRM, &act, NULL))) {
		fprintf(stderr, "dynstack_sigaction: %s\n", dynstack_strerror(rc));
		return 1;
	}
	long usec = 1000000 / hz;
	struct itimerval it = { .it_interval = { 0, usec }, .it_value = { 0, usec } };
	setitimer(ITIMER_REAL, &it, NULL);

	/* Round robin until every task has finished its work. */
	unsigned live = NCORO;
	while (live > 0) {
		live = 0;
		for (unsigned i = 0; i < NCORO; i++) {
			if (dynstack_coro_status(tasks[i].c) == DYNSTACK_CORO_DEAD)
				continue;
			if ((rc = dynstack_coro_resume(tasks[i].c))) {
				fprintf(stderr, "resume: %s\n", dynstack_strerror(rc));
				return 1;
			}
			live += dynstack_coro_status(tasks[i].c) != DYNSTACK_CORO_DEAD;
		}
	}
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	setitimer(ITIMER_REAL, &off, NULL);

	unsigned long yields = 0;
	size_t peak_max = 0, peak_sum = 0, committed = 0;
	for (unsigned i = 0; i < NCORO; i++) {
		dynstack_t *s = dynstack_coro_stack(tasks[i].c);
		size_t peak = dynstack_peak(s);
		yields += tasks[i].yields;
		peak_sum += peak;
		peak_max = peak > peak_max ? peak : peak_max;
		committed += dynstack_committed(s);
	}
	int unsafe = dynstack_signals_check(STDERR_FILENO);
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);

	printf("timer: %ld Hz; samples taken: %d (last %d frames deep)\n", hz, (int)samples,
	       (int)sample_len);
	printf("yields caused by preemption: %lu\n", yields);
	printf("handlers without SA_ONSTACK (dynstack_signals_check): %d\n", unsafe);
	printf("handler runs off the sync stack: %d\n", (int)off_stack);
	printf("peak stack use over %d coroutines: max %zu KiB, mean %zu KiB (of %d KiB)\n", NCORO,
	       peak_max >> 10, (peak_sum / NCORO) >> 10, STACK_SIZE >> 10);
	printf("pages committed at the end: %zu\n", committed / ps);

	int failed = unsafe != 0 || off_stack != 0 || samples == 0 || yields == 0;
	for (unsigned i = 0; i < NCORO; i++)
		dynstack_coro_destroy(tasks[i].c);
	if (failed)
		fprintf(stderr, "preempt: a check failed\n");
	return failed;
}
