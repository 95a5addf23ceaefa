/* Misuse of every public function: NULL, zero and huge arguments, wrong
 * struct sizes, dead and owned objects. Each must be refused with the
 * documented code, leave out-parameters NULL, and never touch errno.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

/* A value no constructor would return, to see out-parameters reset. */
#define POISON ((void *)0x5a5a5a5a5a5a5a5aull)

static void noop_fn(void *arg)
{
}

/* ---- set-up */

static void test_config_and_init(void **state)
{
	dynstack_config_t cfg;

	assert_int_equal(dynstack_config_init(NULL), -EINVAL);
	assert_int_equal(dynstack_config_init(&cfg), 0);
	const size_t bad_sizes[] = { 0, 1, sizeof(cfg) - 1, sizeof(cfg) + 1, SIZE_MAX };
	for (size_t i = 0; i < sizeof(bad_sizes) / sizeof(bad_sizes[0]); i++) {
		assert_int_equal(dynstack_config_init(&cfg), 0);
		cfg.struct_size = bad_sizes[i];
		assert_int_equal(dynstack_init(&cfg), -EINVAL);
	}
	assert_int_equal(dynstack_init(NULL), 0);
	assert_non_null(dynstack_backend_name());
}

static void *thread_init_twice(void *arg)
{
	int *rc = arg;

	rc[0] = dynstack_thread_init();
	rc[1] = dynstack_thread_init();
	dynstack_thread_fini();
	dynstack_thread_fini(); /* nothing left to remove: harmless */
	rc[2] = dynstack_thread_init();
	stack_t ss;
	sigaltstack(NULL, &ss);
	rc[3] = !(ss.ss_flags & SS_DISABLE);
	return NULL;
}

static void test_thread_init_fini_repeated(void **state)
{
	TAKE_SIGSEGV();
	int rc[4] = { -1, -1, -1, -1 };
	pthread_t th;

	assert_int_equal(pthread_create(&th, NULL, thread_init_twice, rc), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(rc[0], 0);
	assert_int_equal(rc[1], 0);
	assert_int_equal(rc[2], 0);
	assert_int_equal(rc[3], 1);
}

/* ---- stacks */

static void test_attr_init_null(void **state)
{
	assert_int_equal(dynstack_attr_init(NULL), -EINVAL);
}

static void expect_create_einval(const dynstack_attr_t *attr)
{
	dynstack_t *s = POISON;

	assert_int_equal(dynstack_create(&s, attr), -EINVAL);
	assert_null(s);
}

static void test_create_refusals(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;

	assert_int_equal(dynstack_attr_init(&attr), 0);
	assert_int_equal(dynstack_create(NULL, NULL), -EINVAL);
	assert_int_equal(dynstack_create(NULL, &attr), -EINVAL);

	const size_t bad_struct[] = { 0, 1, sizeof(attr) - 1, sizeof(attr) + 8, SIZE_MAX };
	for (size_t i = 0; i < sizeof(bad_struct) / sizeof(bad_struct[0]); i++) {
		assert_int_equal(dynstack_attr_init(&attr), 0);
		attr.struct_size = bad_struct[i];
		expect_create_einval(&attr);
	}

	const size_t bad_size[] = { DYNSTACK_MAX_SIZE + 1, DYNSTACK_MAX_SIZE * 2, SIZE_MAX / 2,
				    SIZE_MAX - page_size() + 1, SIZE_MAX };
	for (size_t i = 0; i < sizeof(bad_size) / sizeof(bad_size[0]); i++) {
		assert_int_equal(dynstack_attr_init(&attr), 0);
		attr.size = bad_size[i];
		expect_create_einval(&attr);
	}

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = 64 * 1024;
	attr.initial = 64 * 1024 + 1;
	expect_create_einval(&attr);
	attr.initial = SIZE_MAX;
	expect_create_einval(&attr);
	/* size 0 means the default size: initial is checked against that. */
	attr.size = 0;
	attr.initial = DYNSTACK_DEFAULT_SIZE + 1;
	expect_create_einval(&attr);
}

/* The documented non-errors: zeros mean defaults, the largest size works,
 * and a name too long is truncated. */
static void test_create_edges_accepted(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_t *s;
	char long_name[200];

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = DYNSTACK_MAX_SIZE;
	attr.initial = 0;
	memset(long_name, 'x', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	attr.name = long_name;
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_int_equal(dynstack_size(s), DYNSTACK_MAX_SIZE);
	assert_int_equal(dynstack_committed(s), created_committed(DYNSTACK_MAX_SIZE, 0));
	assert_int_equal(strlen(dynstack_name(s)), DYNSTACK_NAME_MAX);
	assert_int_equal(dynstack_destroy(s), 0);

	attr.size = 0;
	attr.initial = DYNSTACK_DEFAULT_SIZE; /* exactly the default size */
	attr.name = "";
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_int_equal(dynstack_committed(s), DYNSTACK_DEFAULT_SIZE);
	assert_string_equal(dynstack_name(s), "");
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_destroy_refusals(void **state)
{
	TAKE_SIGSEGV();
	dynstack_t *s;
	dynstack_coro_t *c;

	assert_int_equal(dynstack_destroy(NULL), 0);
	assert_int_equal(dynstack_create(&s, NULL), 0);
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(dynstack_destroy(s), -EINVAL);
	assert_int_equal(dynstack_destroy(s), -EINVAL);

	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, NULL), 0);
	dynstack_t *owned = dynstack_coro_stack(c);
	assert_non_null(owned);
	assert_int_equal(dynstack_destroy(owned), -EBUSY);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_destroy(owned), -EBUSY); /* dead, still owned */
	assert_int_equal(dynstack_committed(owned), created_committed(DYNSTACK_DEFAULT_SIZE, 0));
	assert_int_equal(dynstack_coro_destroy(c), 0);
	assert_int_equal(dynstack_destroy(owned), -EINVAL); /* gone with its coroutine */
}

static void test_accessors_null(void **state)
{
	assert_null(dynstack_top(NULL));
	assert_int_equal(dynstack_size(NULL), 0);
	assert_int_equal(dynstack_committed(NULL), 0);
	assert_int_equal(dynstack_peak(NULL), 0);
	assert_non_null(dynstack_name(NULL));
	assert_string_equal(dynstack_name(NULL), "");
	assert_int_equal(dynstack_id(NULL), 0);
}

/* ---- coroutines */

static void test_coro_refusals(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_coro_t *c = POISON;

	assert_int_equal(dynstack_coro_create(NULL, noop_fn, NULL, NULL), -EINVAL);
	assert_int_equal(dynstack_coro_create(&c, NULL, NULL, NULL), -EINVAL);
	assert_null(c);

	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.struct_size = 3;
	c = POISON;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c);
	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.size = SIZE_MAX;
	c = POISON;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c);
	attr.size = 16384;
	attr.initial = 16385;
	c = POISON;
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c);

	assert_int_equal(dynstack_coro_resume(NULL), -EINVAL);
	assert_int_equal(dynstack_coro_yield(), -EPERM);
	assert_int_equal(dynstack_coro_status(NULL), -EINVAL);
	assert_int_equal(dynstack_coro_destroy(NULL), 0);
	assert_null(dynstack_coro_stack(NULL));
	assert_null(dynstack_coro_current());

	/* Dead: resume refused, status stays, destroy fine. */
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, NULL), 0);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_resume(c), -EINVAL);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_DEAD);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* ---- statistics, errors, version */

static void test_stats_refusals(void **state)
{
	dynstack_stats_t st;

	assert_int_equal(dynstack_stats_get(NULL), -EINVAL);
	memset(&st, 0, sizeof(st));
	st.struct_size = 1;
	assert_int_equal(dynstack_stats_get(&st), -EINVAL);
	assert_int_equal(dynstack_stats_print(-1), -EBADF);
	assert_int_equal(dynstack_stats_print(INT_MIN), -EBADF);
}

static void test_strerror(void **state)
{
	const int codes[] = { 0,      -EINVAL, -ENOMEM, -EBUSY,	    -EPERM,  -EOPNOTSUPP,
			      -EBADF, -EAGAIN, -EFAULT, -EOVERFLOW, -ENOSPC, -EEXIST };
	const int unknown[] = { 1, EINVAL, -ENOENT, 12345, -99999, INT_MIN, INT_MAX };

	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		const char *msg = dynstack_strerror(codes[i]);
		assert_non_null(msg);
		assert_true(strlen(msg) > 0);
		if (strcmp(msg, "unknown error") == 0)
			fail_msg("code %d, which the library returns, has no message", codes[i]);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(msg, dynstack_strerror(codes[j]));
	}
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
		assert_string_equal(dynstack_strerror(unknown[i]), "unknown error");
}

/* dynstack_stats_print returns -errno of write(2): those are codes the
 * library returns too, and dynstack_strerror must name them. */
static void test_strerror_names_write_errors(void **state)
{
	int fds[2];
	void (*old)(int) = signal(SIGPIPE, SIG_IGN);

	assert_int_equal(pipe(fds), 0);
	close(fds[0]);
	int rc = dynstack_stats_print(fds[1]);
	close(fds[1]);
	signal(SIGPIPE, old);
	assert_int_equal(rc, -EPIPE);
	assert_string_not_equal(dynstack_strerror(rc), "unknown error");
}

static void test_version(void **state)
{
	char want[32];

	snprintf(want, sizeof(want), "%d.%d.%d", DYNSTACK_VERSION_MAJOR, DYNSTACK_VERSION_MINOR,
		 DYNSTACK_VERSION_PATCH);
	assert_non_null(dynstack_version());
	assert_string_equal(dynstack_version(), want);
}

/* ---- errno: "never touches errno", also when a system call fails inside */

static void test_errno_untouched_by_refusals(void **state)
{
	TAKE_SIGSEGV();
	dynstack_attr_t attr;
	dynstack_t *s;
	dynstack_coro_t *c;

	dynstack_attr_init(&attr);
	attr.size = SIZE_MAX;
	errno = 777;
	assert_int_equal(dynstack_create(&s, &attr), -EINVAL);
	assert_int_equal(dynstack_coro_create(&c, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(dynstack_coro_yield(), -EPERM);
	assert_int_equal(dynstack_stats_get(NULL), -EINVAL);
	assert_int_equal(dynstack_create(&s, NULL), 0);
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(dynstack_destroy(s), -EINVAL);
	assert_int_equal(errno, 777);
}

static void test_errno_untouched_by_failed_write(void **state)
{
	int fds[2];

	assert_int_equal(pipe(fds), 0);
	close(fds[0]);
	close(fds[1]);
	errno = 777;
	assert_int_equal(dynstack_stats_print(fds[1]), -EBADF);
	assert_int_equal(errno, 777);
}

/* In a child: the address space is capped so that the next arena cannot be
 * reserved. create must fail with -ENOMEM, reset *out and keep errno. */
static int enomem_child(void *arg)
{
	int check_errno = *(int *)arg;
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	if (dynstack_init(NULL) || dynstack_create(&s, NULL) || dynstack_destroy(s))
		return 2;
	struct rlimit rl = { 256u << 20, 256u << 20 }; /* far below one 1 GiB arena */
	if (setrlimit(RLIMIT_AS, &rl))
		return 3;
	dynstack_attr_init(&attr);
	attr.size = 100 << 20; /* a class this process has no arena for */
	s = POISON;
	errno = 777;
	int rc = dynstack_create(&s, &attr);
	int err = errno;
	if (rc != -ENOMEM || s != NULL) {
		fprintf(stderr, "create: %d (%s), out %p\n", rc, dynstack_strerror(rc), (void *)s);
		return 4;
	}
	if (check_errno && err != 777) {
		fprintf(stderr, "errno %d after a failed create\n", err);
		return 5;
	}
	/* Still usable: a class that has an arena. */
	if (dynstack_create(&s, NULL) || dynstack_destroy(s))
		return 6;
	return 0;
}

static void run_enomem(int check_errno)
{
	char err[1024];
	int status;

	SKIP_UNDER(valgrind, "RLIMIT_AS would limit Valgrind's own mappings, which share the "
			     "process with the test's");
	assert_int_equal(run_in_child(enomem_child, &check_errno, &status, err, sizeof(err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; stderr:\n%s", describe_status(status), err);
}

static void test_create_enomem(void **state)
{
	run_enomem(0);
}

static void test_errno_untouched_by_enomem(void **state)
{
	run_enomem(1);
}

/* ---- destroyed coroutine handles
 *
 * A private coroutine's object lives in its stack slot's arena metadata and is
 * never freed: a handle used after destroy reads a destroyed object (-EINVAL),
 * not freed memory, until a later create takes the slot. With
 * DYNSTACK_CHECK_HANDLES=1 the slot is never taken again and every such use
 * aborts with a message naming the call. */

static void yield_once(void *arg)
{
	dynstack_coro_yield();
}

static void check_destroyed(dynstack_coro_t *c)
{
	assert_int_equal(dynstack_coro_resume(c), -EINVAL);
	assert_int_equal(dynstack_coro_destroy(c), -EINVAL);
	assert_int_equal(dynstack_coro_status(c), -EINVAL);
	assert_null(dynstack_coro_stack(c));
}

static void test_destroyed_handle(void **state)
{
	TAKE_SIGSEGV();
	dynstack_coro_t *c;

	/* Never run, suspended in the middle, and dead. */
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, NULL), 0);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	check_destroyed(c);

	assert_int_equal(dynstack_coro_create(&c, yield_once, NULL, NULL), 0);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_status(c), DYNSTACK_CORO_SUSPENDED);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	check_destroyed(c);

	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, NULL), 0);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	check_destroyed(c);

	/* Shared mode, while its group lives. */
	dynstack_group_t *g;
	dynstack_attr_t attr;
	assert_int_equal(dynstack_group_create(&g, NULL, 0), 0);
	assert_int_equal(dynstack_attr_init(&attr), 0);
	attr.mode = DYNSTACK_MODE_SHARED;
	attr.group = g;
	assert_int_equal(dynstack_coro_create(&c, yield_once, NULL, &attr), 0);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	check_destroyed(c);
	assert_null(dynstack_coro_group(c));
	assert_int_equal(dynstack_coro_saved(c), 0);
	assert_int_equal(dynstack_group_destroy(g), 0);

	/* A destroyed group: refused, and no coroutine can be made in it. */
	assert_int_equal(dynstack_group_destroy(g), -EINVAL);
	assert_null(dynstack_group_stack(g));
	dynstack_coro_t *c2 = POISON;
	assert_int_equal(dynstack_coro_create(&c2, noop_fn, NULL, &attr), -EINVAL);
	assert_null(c2);

	/* The slot taken by a plain stack: the handle still reads destroyed. */
	assert_int_equal(dynstack_coro_create(&c, noop_fn, NULL, NULL), 0);
	assert_int_equal(dynstack_coro_destroy(c), 0);
	dynstack_t *s;
	assert_int_equal(dynstack_create(&s, NULL), 0);
	check_destroyed(c);
	errno = 1234;
	check_destroyed(c);
	assert_int_equal(errno, 1234);
	assert_int_equal(dynstack_destroy(s), 0);
}

static const char *const check_env[] = { "DYNSTACK_CHECK_HANDLES=1", NULL };

/* Child modes, each in a fresh process with DYNSTACK_CHECK_HANDLES=1. */
static dynstack_coro_t *destroyed_coro(void)
{
	dynstack_coro_t *c;
	if (dynstack_coro_create(&c, yield_once, NULL, NULL) || dynstack_coro_resume(c) ||
	    dynstack_coro_destroy(c))
		exit(2);
	return c;
}

#define REUSE_N 512

static bool all_distinct(void *const *v, int n)
{
	for (int i = 0; i < n; i++)
		for (int j = 0; j < i; j++)
			if (v[j] == v[i])
				return false;
	return true;
}

static int stale_mode(const char *op)
{
	if (!strcmp(op, "--stale-stack-destroy")) {
		dynstack_t *s;
		if (dynstack_create(&s, NULL) || dynstack_destroy(s))
			return 2;
		dynstack_destroy(s);
		return 5;
	}
	if (!strcmp(op, "--stale-group")) {
		dynstack_group_t *g;
		if (dynstack_group_create(&g, NULL, 0) || dynstack_group_destroy(g))
			return 2;
		dynstack_group_destroy(g);
		return 5;
	}
	if (!strcmp(op, "--stale-stack-reuse")) {
		static void *seen[REUSE_N];
		for (int i = 0; i < REUSE_N; i++) {
			dynstack_t *s;
			if (dynstack_create(&s, NULL) || dynstack_destroy(s))
				return 2;
			seen[i] = s;
		}
		return all_distinct(seen, REUSE_N) ? 0 : 3;
	}
	if (!strcmp(op, "--stale-reuse")) {
		/* No object is handed out twice: every handle stays checkable. */
		static void *seen[REUSE_N];
		for (int i = 0; i < REUSE_N; i++)
			seen[i] = destroyed_coro();
		return all_distinct(seen, REUSE_N) ? 0 : 3;
	}
	dynstack_coro_t *c = destroyed_coro();
	if (!strcmp(op, "--stale-resume"))
		dynstack_coro_resume(c);
	else if (!strcmp(op, "--stale-destroy"))
		dynstack_coro_destroy(c);
	else if (!strcmp(op, "--stale-status"))
		dynstack_coro_status(c);
	else if (!strcmp(op, "--stale-stack"))
		dynstack_coro_stack(c);
	else if (!strcmp(op, "--stale-shared")) {
		/* A shared-mode one, used after its group is gone too. */
		dynstack_group_t *g;
		dynstack_attr_t attr;
		dynstack_attr_init(&attr);
		if (dynstack_group_create(&g, NULL, 0))
			return 2;
		attr.mode = DYNSTACK_MODE_SHARED;
		attr.group = g;
		if (dynstack_coro_create(&c, yield_once, NULL, &attr) || dynstack_coro_resume(c) ||
		    dynstack_coro_destroy(c) || dynstack_group_destroy(g))
			return 2;
		dynstack_coro_resume(c);
	}
	return 5; /* the call returned: not caught */
}

static void test_destroyed_handle_checked(void **state)
{
	static const struct {
		const char *mode, *call;
	} cases[] = {
		{ "--stale-resume", "dynstack_coro_resume(" },
		{ "--stale-destroy", "dynstack_coro_destroy(" },
		{ "--stale-status", "dynstack_coro_status(" },
		{ "--stale-stack", "dynstack_coro_stack(" },
		{ "--stale-shared", "dynstack_coro_resume(" },
		{ "--stale-stack-destroy", "dynstack_destroy(" },
		{ "--stale-group", "dynstack_group_destroy(" },
	};
	char err[4096];
	int status;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(run_self(cases[i].mode, check_env, &status, err, sizeof(err)), 0);
		if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT ||
		    !contains(err, cases[i].call) || !contains(err, "was destroyed"))
			fail_msg("%s: child %s; stderr:\n%s", cases[i].mode,
				 describe_status(status), err);
	}
	static const char *const reuse[] = { "--stale-reuse", "--stale-stack-reuse" };
	for (size_t i = 0; i < sizeof(reuse) / sizeof(reuse[0]); i++) {
		assert_int_equal(run_self(reuse[i], check_env, &status, err, sizeof(err)), 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			fail_msg("%s: child %s; stderr:\n%s", reuse[i], describe_status(status),
				 err);
	}
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strncmp(argv[1], "--stale-", 8))
		return stale_mode(argv[1]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_and_init),
		cmocka_unit_test(test_thread_init_fini_repeated),
		cmocka_unit_test(test_attr_init_null),
		cmocka_unit_test(test_create_refusals),
		cmocka_unit_test(test_create_edges_accepted),
		cmocka_unit_test(test_destroy_refusals),
		cmocka_unit_test(test_accessors_null),
		cmocka_unit_test(test_coro_refusals),
		cmocka_unit_test(test_stats_refusals),
		cmocka_unit_test(test_strerror),
		cmocka_unit_test(test_strerror_names_write_errors),
		cmocka_unit_test(test_version),
		cmocka_unit_test(test_errno_untouched_by_refusals),
		cmocka_unit_test(test_errno_untouched_by_failed_write),
		cmocka_unit_test(test_create_enomem),
		cmocka_unit_test(test_errno_untouched_by_enomem),
		cmocka_unit_test(test_destroyed_handle),
		cmocka_unit_test(test_destroyed_handle_checked),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
