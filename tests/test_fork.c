/* fork() in a process with live dynamic stacks: the child keeps using them
 * (suspended frames intact, growth by fault on its forking thread's sync
 * stack, new coroutines, an overflow report in a grandchild) and exec from
 * it is clean (no descriptor of ours, default SIGSEGV, no alternate signal
 * stack); the parent goes on unchanged; and a fork from a thread other than
 * main, while other threads create, grow and destroy coroutines, leaves the
 * child no lock of ours held. Each case runs in a fresh process (run_self),
 * so that it can choose the cache and start a trace of its own.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* A sanitizer's runtime sets up its own SIGSEGV handler (and perhaps an alternate stack) in
 * every new image, before main: the exec'ed probe cannot see the kernel's reset there. And its
 * allocator is not fork-safe while other threads allocate (libasan of GCC 12 has no atfork
 * handler; LLVM added one in 18, llvm-project#75290): a child that allocates can hang in it. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZER_RUNTIME 1
#else
#define SANITIZER_RUNTIME 0
#endif

#define NCORO 6
#define DIG_SIZE (256 * 1024)
#define DIG_FIRST (48 * 1024) /* below the top at the first yield */
#define DIG_MORE (96 * 1024)  /* and how much deeper the second resume goes */
#define LEVEL_BYTES 512
#define CACHED 4

static char child_err[32768];

/* ---- a coroutine with deep frames: every level fills its frame with a pattern of its own
 * and checks it on the way back up. It yields at the bottom (suspended with DIG_FIRST of
 * committed frames), goes DIG_MORE deeper when resumed (new faults), yields again, and
 * unwinds on the third resume. */
struct dig {
	unsigned id;
	uintptr_t top;
	size_t first, more;
	int stage;
	int ok;
};

static unsigned char pattern(unsigned id, unsigned level, size_t i)
{
	return (unsigned char)(id * 131u + level * 31u + i * 7u + 1u);
}

static bool dig_down(struct dig *d, uintptr_t target, unsigned level);

static __attribute__((noinline)) bool dig_bottom(struct dig *d)
{
	d->stage++;
	dynstack_coro_yield();
	if (d->stage == 1 && d->more)
		return dig_down(d, d->top - d->first - d->more, 1u << 16);
	return true;
}

static __attribute__((noinline)) bool dig_down(struct dig *d, uintptr_t target, unsigned level)
{
	volatile unsigned char buf[LEVEL_BYTES];
	bool ok;

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = pattern(d->id, level, i);
	if ((uintptr_t)buf > target)
		ok = dig_down(d, target, level + 1);
	else
		ok = dig_bottom(d);
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != pattern(d->id, level, i))
			ok = false;
	return ok;
}

static void dig_fn(void *arg)
{
	struct dig *d = arg;

	d->ok = dig_down(d, d->top - d->first, 0);
}

static int dig_create(dynstack_coro_t **c, struct dig *d, unsigned id, size_t more)
{
	dynstack_attr_t attr;

	dynstack_attr_init(&attr);
	attr.size = DIG_SIZE;
	attr.name = "dig";
	*d = (struct dig){ .id = id, .first = DIG_FIRST + (id % 8) * 4096, .more = more };
	int rc = dynstack_coro_create(c, dig_fn, d, &attr);
	if (!rc)
		d->top = (uintptr_t)dynstack_top(dynstack_coro_stack(*c));
	return rc;
}

/* FNV-1a over the committed part of a stack: the frames, as the kernel has them (redzones
 * of ASan's frames included, and the dead frames below the stack pointer that Memcheck
 * marks inaccessible: not accesses a tool should check). */
__attribute__((no_sanitize_address)) static uint64_t stack_hash(const dynstack_t *s)
{
	const unsigned char *top = dynstack_top(s);
	uint64_t h = 1469598103934665603u;

	valgrind_errors_off();
	for (const unsigned char *p = top - dynstack_committed(s); p < top; p++)
		h = (h ^ *p) * 1099511628211u;
	valgrind_errors_on();
	valgrind_make_defined(&h, sizeof(h));
	return h;
}

/* ---- helpers for the children */

static void temp_path(char *buf, size_t len, pid_t pid, const char *what)
{
	const char *dir = getenv("TMPDIR");

	snprintf(buf, len, "%s/ds-fork-%ld-%s", dir && *dir ? dir : "/tmp", (long)pid, what);
}

/* Descriptors >= 3 that would survive an exec (no FD_CLOEXEC): the caller's, inherited. */
static void inheritable_fds(char *buf, size_t len)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int fd = 3; fd < 1024; fd++) {
		int fl = fcntl(fd, F_GETFD);
		if (fl >= 0 && !(fl & FD_CLOEXEC))
			n += (size_t)snprintf(buf + n, len - n, "%d,", fd);
		if (n >= len)
			break;
	}
}

/* Wait for pid at most seconds; kill it if it is still there. */
static int wait_for(pid_t pid, int seconds, int *status)
{
	struct timespec ms = { 0, 1000000 };

	for (int i = 0; i < seconds * 1000; i++) {
		pid_t r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
		nanosleep(&ms, NULL);
	}
	kill(pid, SIGKILL);
	waitpid(pid, status, 0);
	return 1;
}

static void overflow_fn(void *arg)
{
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	(void)arg;
	touch_down(dynstack_top(self), 4 * DYNSTACK_DEFAULT_SIZE);
}

/* In a grandchild: overflow a new coroutine; the report must come and the process die by
 * SIGSEGV. */
static int overflow_in_grandchild(void)
{
	int fds[2], status;
	char out[4096];
	ssize_t n = 0, got;

	CHECK(pipe2(fds, O_CLOEXEC) == 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		dynstack_coro_t *c;
		alarm(10);
		dup2(fds[1], STDERR_FILENO);
		if (dynstack_coro_create(&c, overflow_fn, NULL, NULL))
			_exit(2);
		dynstack_coro_resume(c);
		_exit(3);
	}
	close(fds[1]);
	while ((got = read(fds[0], out + n, sizeof(out) - 1 - (size_t)n)) > 0 ||
	       (got < 0 && errno == EINTR))
		n += got > 0 ? got : 0;
	out[n] = '\0';
	close(fds[0]);
	CHECK(wait_for(pid, 10, &status) == 0);
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGSEGV ||
	    !contains(out, "libdynstack: stack overflow on stack ")) {
		fprintf(stderr, "grandchild %s, stderr: %s\n", describe_status(status), out);
		return 1;
	}
	return 0;
}

/* ---- live stacks across fork and exec */

static int live_child(dynstack_coro_t **c, struct dig *d, const size_t *committed,
		      const uint64_t *hash, const char *fds)
{
	char path[256];

	/* The frames are there, byte for byte, before anything runs. */
	for (int i = 0; i < NCORO; i++) {
		dynstack_t *s = dynstack_coro_stack(c[i]);
		CHECK(dynstack_committed(s) == committed[i]);
		CHECK(stack_hash(s) == hash[i]);
	}
	/* The parent's trace stopped here without a flush; this process may start its own. */
	CHECK(dynstack_trace_stop() == 0);
	temp_path(path, sizeof(path), getpid(), "child.trace");
	CHECK(dynstack_trace_start(path) == 0);

	/* Grow them: new faults, handled on this thread's inherited sync stack. */
	dynstack_stats_t s0 = stats_now();
	for (int i = 0; i < NCORO; i++) {
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(d[i].stage == 2);
		CHECK(dynstack_committed(dynstack_coro_stack(c[i])) >= d[i].first + d[i].more);
	}
	dynstack_stats_t s1 = stats_now();
	CHECK(s1.nr_dynamic_stacks_faults > s0.nr_dynamic_stacks_faults || stacks_whole());
	for (int i = 0; i < NCORO; i++) {
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(dynstack_coro_status(c[i]) == DYNSTACK_CORO_DEAD);
		CHECK(d[i].ok == 1);
		CHECK(dynstack_coro_destroy(c[i]) == 0);
	}

	/* New coroutines, the first ones from the stacks the parent left in its cache. */
	for (int round = 0; round < 20; round++) {
		dynstack_coro_t *n;
		struct dig nd;
		CHECK(dig_create(&n, &nd, 100 + (unsigned)round, round % 2 ? 16 * 1024 : 0) == 0);
		while (dynstack_coro_status(n) != DYNSTACK_CORO_DEAD)
			CHECK(dynstack_coro_resume(n) == 0);
		CHECK(nd.ok == 1);
		CHECK(dynstack_coro_destroy(n) == 0);
	}
	dynstack_stats_t s2 = stats_now();
	CHECK(s2.nr_dynamic_stacks_cache_hits >= s1.nr_dynamic_stacks_cache_hits + CACHED);
	CHECK(overflow_in_grandchild() == 0);
	CHECK(dynstack_trace_flush() == 0);

	/* Before exec: our handler and our sync stack are this thread's, the trace is open. */
	struct sigaction sa;
	stack_t ss;
	CHECK(sigaction(SIGSEGV, NULL, &sa) == 0 && (sa.sa_flags & SA_SIGINFO));
	CHECK(sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE));
	fprintf(stderr, "child ok\n");
	fflush(stderr);
	char *const argv[] = { (char *)program_path(), "--exec-probe", path, (char *)fds, NULL };
	execv(argv[0], argv);
	fprintf(stderr, "execv: %s\n", strerror(errno));
	return 1;
}

static int live_main(void)
{
	dynstack_coro_t *c[NCORO];
	struct dig d[NCORO];
	size_t committed[NCORO];
	uint64_t hash[NCORO];
	char path[256], fds[256];
	int status;

	inheritable_fds(fds, sizeof(fds));
	temp_path(path, sizeof(path), getpid(), "parent.trace");
	CHECK(dynstack_trace_start(path) == 0);
	for (int i = 0; i < NCORO; i++) {
		CHECK(dig_create(&c[i], &d[i], (unsigned)i, DIG_MORE) == 0);
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(d[i].stage == 1);
		committed[i] = dynstack_committed(dynstack_coro_stack(c[i]));
		CHECK(committed[i] >= d[i].first);
		hash[i] = stack_hash(dynstack_coro_stack(c[i]));
	}
	/* Warm stacks in this thread's cache, grown before they were destroyed. */
	dynstack_t *warm[CACHED];
	dynstack_attr_t attr;
	dynstack_attr_init(&attr);
	attr.size = DIG_SIZE;
	for (int i = 0; i < CACHED; i++) {
		CHECK(dynstack_create(&warm[i], &attr) == 0);
		char *top = dynstack_top(warm[i]);
		touch_pages_down(top - 32 * 1024, top);
	}
	for (int i = 0; i < CACHED; i++)
		CHECK(dynstack_destroy(warm[i]) == 0);
	CHECK(stats_now().nr_dynamic_stacks_cached >= CACHED);

	fflush(NULL);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		alarm(20);
		_exit(live_child(c, d, committed, hash, fds));
	}

	/* The parent's stacks are as they were, and go on as if nothing happened. */
	for (int i = 0; i < NCORO; i++) {
		dynstack_t *s = dynstack_coro_stack(c[i]);
		CHECK(dynstack_committed(s) == committed[i]);
		CHECK(stack_hash(s) == hash[i]);
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(d[i].stage == 2);
		CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(d[i].ok == 1);
		CHECK(dynstack_coro_destroy(c[i]) == 0);
	}
	CHECK(dynstack_trace_stop() == 0);
	struct stat st;
	CHECK(stat(path, &st) == 0 && st.st_size > 0);
	unlink(path);
	CHECK(wait_for(pid, 20, &status) == 0);
	temp_path(path, sizeof(path), pid, "child.trace");
	unlink(path);
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "fork child %s\n", describe_status(status));
		return 1;
	}
	fprintf(stderr, "parent ok\n");
	return 0;
}

/* The program exec'ed by the fork child: a new image in which the library is loaded but was
 * never initialised. argv: the child's trace file, the descriptors allowed to survive. */
static int exec_probe(int argc, char **argv)
{
	struct sigaction sa;
	stack_t ss;
	char link[512], want[512], allowed[300];

	CHECK(argc == 4);
	CHECK(strcmp(dynstack_backend_name(), "none") == 0);
#if !SANITIZER_RUNTIME
	for (int i = 0; i < 2; i++) {
		CHECK(sigaction(i ? SIGBUS : SIGSEGV, NULL, &sa) == 0);
		CHECK(!(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL);
	}
	CHECK(sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_DISABLE));
#else
	(void)sa;
	(void)ss;
#endif

	/* No descriptor but the inherited ones; certainly not the trace. Those at or above
	 * RLIMIT_NOFILE are not the program's: Valgrind keeps its own there. */
	struct rlimit nofile;
	CHECK(getrlimit(RLIMIT_NOFILE, &nofile) == 0);
	CHECK(realpath(argv[2], want) != NULL);
	snprintf(allowed, sizeof(allowed), ",%s", argv[3]);
	DIR *dir = opendir("/proc/self/fd");
	CHECK(dir != NULL);
	int bad = 0;
	struct dirent *e;
	while ((e = readdir(dir))) {
		int fd = atoi(e->d_name);
		char key[16], path[64];
		if (e->d_name[0] == '.' || fd < 3 || fd == dirfd(dir) ||
		    (rlim_t)fd >= nofile.rlim_cur)
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = '\0';
		snprintf(key, sizeof(key), ",%d,", fd);
		if (!strcmp(link, want) || !strstr(allowed, key)) {
			fprintf(stderr, "descriptor %d (%s) survived exec\n", fd, link);
			bad = 1;
		}
	}
	closedir(dir);
	CHECK(!bad);

	/* It runs normally: 1 MiB of its own stack, checked level by level. */
	char here;
	CHECK(touch_down(&here, 1 << 20) > 0);
	fprintf(stderr, "probe ok\n");
	return 0;
}

static void test_fork_live_stacks(void **state)
{
	static const char *const env[] = { "DYNSTACK_CACHE=16", NULL };
	int status;

	SKIP_UNDER(tsan,
		   "in a forked child TSan (GCC 12) loses the happens-before of a switch to a "
		   "fiber made before the fork: the parent's coroutines resumed there report "
		   "false races");
	assert_int_equal(run_self("--fork-live", env, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("process %s; stderr:\n%s", describe_status(status), child_err);
	if (!contains(child_err, "child ok\n") || !contains(child_err, "probe ok\n") ||
	    !contains(child_err, "parent ok\n"))
		fail_msg("a step is missing; stderr:\n%s", child_err);
}

/* ---- fork from a thread other than main while other threads run coroutines */

#define WORKERS 2
#define FORKS 60

static atomic_int stop, forker_done;

static void churn_fn(void *arg)
{
	char *top = dynstack_top(dynstack_coro_stack(dynstack_coro_current()));

	(void)arg;
	touch_pages_down(top - 24 * 1024, top - 4096);
	dynstack_coro_yield();
}

/* One coroutine's life: create (every other one with a policy of its own), grow, destroy. */
static int churn_once(unsigned i)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c;

	dynstack_attr_init(&attr);
	attr.size = 64 * 1024;
	attr.policy = i % 2 ? "step=2" : NULL;
	if (dynstack_coro_create(&c, churn_fn, NULL, &attr) || dynstack_coro_resume(c) ||
	    dynstack_coro_resume(c) || dynstack_coro_destroy(c))
		return 1;
	return 0;
}

static void *short_thread(void *arg)
{
	(void)arg;
	return (void *)(intptr_t)churn_once(0);
}

static void *worker(void *arg)
{
	intptr_t errors = 0;

	(void)arg;
	for (unsigned i = 0; !atomic_load(&stop); i++) {
		errors += churn_once(i);
		if (i % 16 == 0)
			stats_now();
		if (i % 64 == 0) {
			/* Threads come and go: their counter blocks and caches too. */
			pthread_t t;
			void *rv;
			if (pthread_create(&t, NULL, short_thread, NULL) == 0) {
				pthread_join(t, &rv);
				errors += (intptr_t)rv;
			}
		}
	}
	return (void *)errors;
}

struct forker {
	int forks, hung, failed;
	char why[256];
};

static int forked_child(dynstack_coro_t **c, struct dig *d)
{
	for (int i = 0; i < 2; i++) {
		while (dynstack_coro_status(c[i]) != DYNSTACK_CORO_DEAD)
			CHECK(dynstack_coro_resume(c[i]) == 0);
		CHECK(d[i].ok == 1);
		CHECK(dynstack_coro_destroy(c[i]) == 0);
	}
	for (unsigned i = 0; i < 48; i++)
		CHECK(churn_once(i) == 0);
	stats_now();
	CHECK(dynstack_policy_set("step=3") == 0);
	CHECK(churn_once(0) == 0);
	return 0;
}

static void *forker_rounds(struct forker *f)
{
	dynstack_coro_t *c[2];
	struct dig d[2];

	for (int round = 0; round < FORKS; round++) {
		int status;
		for (int i = 0; i < 2; i++)
			if (dig_create(&c[i], &d[i], (unsigned)i, 8192) ||
			    dynstack_coro_resume(c[i]))
				return NULL;
		pid_t pid = fork();
		if (pid < 0)
			break;
		if (pid == 0) {
			alarm(10);
			_exit(forked_child(c, d));
		}
		f->forks++;
		int rc = wait_for(pid, 10, &status);
		if (rc || (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)) {
			f->hung++;
		} else if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			f->failed++;
			snprintf(f->why, sizeof(f->why), "%s", describe_status(status));
		}
		/* The parent's own copies go on. */
		for (int i = 0; i < 2; i++) {
			while (dynstack_coro_status(c[i]) != DYNSTACK_CORO_DEAD)
				if (dynstack_coro_resume(c[i]))
					return NULL;
			if (!d[i].ok || dynstack_coro_destroy(c[i]))
				return NULL;
		}
	}
	return f;
}

static void *forker_main(void *arg)
{
	void *rv = forker_rounds(arg);

	atomic_store(&forker_done, 1);
	return rv;
}

static int thread_main(void)
{
	pthread_t w[WORKERS], ft;
	struct forker f = { 0 };
	void *rv;
	intptr_t errors = 0;
	char path[256];

	/* A trace running, too: its own fork handling is part of the picture. */
	temp_path(path, sizeof(path), getpid(), "threads.trace");
	CHECK(dynstack_trace_start(path) == 0);
	for (int i = 0; i < WORKERS; i++)
		CHECK(pthread_create(&w[i], NULL, worker, NULL) == 0);
	CHECK(pthread_create(&ft, NULL, forker_main, &f) == 0);
	/* main runs coroutines as well, until the forker is done. */
	for (unsigned i = 0; !atomic_load(&forker_done); i++) {
		errors += churn_once(i);
		if (errors)
			break;
	}
	CHECK(pthread_join(ft, &rv) == 0);
	atomic_store(&stop, 1);
	for (int i = 0; i < WORKERS; i++) {
		CHECK(pthread_join(w[i], &rv) == 0);
		errors += (intptr_t)rv;
	}
	CHECK(dynstack_trace_stop() == 0);
	unlink(path);
	fprintf(stderr, "forks %d hung %d failed %d (%s) churn errors %ld\n", f.forks, f.hung,
		f.failed, f.why, (long)errors);
	CHECK(f.forks == FORKS);
	CHECK(f.hung == 0 && f.failed == 0 && errors == 0);
	return 0;
}

static void test_fork_from_thread(void **state)
{
	if (SANITIZER_RUNTIME) {
		print_message("under a sanitizer, whose allocator can hang a child forked while"
			      " other threads allocate: skipped\n");
		skip();
	}
	SKIP_UNDER(valgrind, "a child forked while other threads run keeps their objects, which "
			     "only those threads' stacks pointed to: Memcheck reports them "
			     "definitely lost when each child exits");
	static const char *const cache_on[] = { "DYNSTACK_CACHE=16", NULL };
	static const char *const cache_off[] = { "DYNSTACK_CACHE=0", NULL };
	const char *const *env[] = { cache_off, cache_on };
	int status;

	for (int i = 0; i < 2; i++) {
		assert_int_equal(
			run_self("--fork-thread", env[i], &status, child_err, sizeof(child_err)),
			0);
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			fail_msg("process (%s) %s; stderr:\n%s", env[i][0], describe_status(status),
				 child_err);
		print_message("%s: %s", env[i][0], child_err);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "--fork-live") == 0)
			return live_main();
		if (strcmp(argv[1], "--fork-thread") == 0)
			return thread_main();
		if (strcmp(argv[1], "--exec-probe") == 0)
			return exec_probe(argc, argv);
		return 64;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_live_stacks),
		cmocka_unit_test(test_fork_from_thread),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
