/* Tests of process and thread set-up (src/stack.c dynstack_init,
 * src/options.c, src/thread.c): idempotence, configuration checks, the
 * DYNSTACK_* variables, handler re-installation and sync stacks. Checks that
 * need a process where the library never ran re-execute this program.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static char child_err[16384];

static void expect_clean_exit(int rc, int status)
{
	assert_int_equal(rc, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; its stderr:\n%s", describe_status(status), child_err);
}

/* The kernel's answer, asked directly: does it have guard regions? */
static bool kernel_has_guard_regions(void)
{
	size_t ps = page_size();
	void *p = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	bool ok = p != MAP_FAILED && madvise(p, ps, 102 /* MADV_GUARD_INSTALL */) == 0;

	if (p != MAP_FAILED)
		munmap(p, 2 * ps);
	return ok;
}

static bool handler_is_installed(void)
{
	struct sigaction sa;

	return sigaction(SIGSEGV, NULL, &sa) == 0 && (sa.sa_flags & SA_SIGINFO) &&
	       (sa.sa_flags & SA_ONSTACK);
}

/* ---- configuration */

static void test_config_defaults(void **state)
{
	dynstack_config_t cfg;

	assert_int_equal(dynstack_config_init(NULL), -EINVAL);
	memset(&cfg, 0xa5, sizeof(cfg));
	assert_int_equal(dynstack_config_init(&cfg), 0);
	assert_int_equal(cfg.struct_size, sizeof(cfg));
	assert_int_equal(cfg.backend, DYNSTACK_BACKEND_AUTO);
	assert_int_equal(cfg.default_size, DYNSTACK_DEFAULT_SIZE);
	assert_int_equal(cfg.sync_stack_size, DYNSTACK_MIN_SYNC_STACK);
	assert_int_equal(cfg.stats_at_exit, 0);
}

static void test_config_refused(void **state)
{
	dynstack_config_t cfg;
	/* DYNSTACK_BACKEND is applied on top of cfg and would replace a bad
	 * backend field with a good one: out of the way for this test. */
	char *forced = getenv("DYNSTACK_BACKEND");
	char saved[32] = "";

	if (forced)
		snprintf(saved, sizeof(saved), "%s", forced);
	unsetenv("DYNSTACK_BACKEND");

	for (int i = 0; i < 9; i++) {
		assert_int_equal(dynstack_config_init(&cfg), 0);
		switch (i) {
		case 0:
			cfg.struct_size = sizeof(cfg) - 1;
			break;
		case 1:
			cfg.struct_size = 0;
			break;
		case 2:
			cfg.sync_stack_size = DYNSTACK_MIN_SYNC_STACK - 1;
			break;
		case 3:
			cfg.sync_stack_size = 0;
			break;
		case 4:
			cfg.sync_stack_size = ((size_t)1 << 30) + 1;
			break;
		case 5:
			cfg.default_size = 0;
			break;
		case 6:
			cfg.default_size = DYNSTACK_MAX_SIZE + 1;
			break;
		case 7:
			cfg.backend = (dynstack_backend_t)99;
			break;
		case 8:
			cfg.backend = (dynstack_backend_t)-1;
			break;
		}
		int rc = dynstack_init(&cfg);
		if (rc != -EINVAL) {
			if (forced)
				setenv("DYNSTACK_BACKEND", saved, 1);
			fail_msg("config case %d: %d", i, rc);
		}
	}
	if (forced)
		setenv("DYNSTACK_BACKEND", saved, 1);
}

static void test_init_idempotent(void **state)
{
	dynstack_config_t cfg;
	struct sigaction first, again;

	assert_int_equal(dynstack_init(NULL), 0);
	const char *backend = dynstack_backend_name();
	assert_int_equal(sigaction(SIGSEGV, NULL, &first), 0);
	assert_true(handler_is_installed());
	dynstack_stats_t st0 = stats_now();

	assert_int_equal(dynstack_init(NULL), 0);
	assert_int_equal(dynstack_config_init(&cfg), 0);
	cfg.default_size = 1 << 20; /* too late: changes nothing */
	assert_int_equal(dynstack_init(&cfg), 0);
	assert_string_equal(dynstack_backend_name(), backend);
	assert_int_equal(sigaction(SIGSEGV, NULL, &again), 0);
	assert_ptr_equal(again.sa_sigaction, first.sa_sigaction);
	dynstack_stats_t st1 = stats_now();
	assert_int_equal(st1.nr_dynamic_stacks_arenas, st0.nr_dynamic_stacks_arenas);

	dynstack_t *s;
	assert_int_equal(dynstack_create(&s, NULL), 0);
	assert_int_equal(dynstack_size(s), DYNSTACK_DEFAULT_SIZE);
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_backend_name(void **state)
{
	TAKE_SIGSEGV();
	const char *name = dynstack_backend_name();
	const char *env = getenv("DYNSTACK_BACKEND");

	assert_true(strcmp(name, "guard") == 0 || strcmp(name, "mprotect") == 0);
	if (env && *env && strcasecmp(env, "auto") != 0)
		assert_true(strcasecmp(env, name) == 0);
	else
		assert_string_equal(name, kernel_has_guard_regions() ? "guard" : "mprotect");
	dynstack_stats_t st = stats_now();
	assert_int_equal(st.backend, strcmp(name, "guard") == 0 ? DYNSTACK_BACKEND_GUARD :
								  DYNSTACK_BACKEND_MPROTECT);
}

/* A different backend after init is a conflict; the same one or AUTO is
 * not. The child drops DYNSTACK_BACKEND, which would override cfg. */
static int other_backend_child(void *arg)
{
	dynstack_config_t cfg;

	unsetenv("DYNSTACK_BACKEND");
	CHECK(dynstack_init(NULL) == 0);
	bool guard = strcmp(dynstack_backend_name(), "guard") == 0;
	dynstack_backend_t active = guard ? DYNSTACK_BACKEND_GUARD : DYNSTACK_BACKEND_MPROTECT;
	dynstack_backend_t other = guard ? DYNSTACK_BACKEND_MPROTECT : DYNSTACK_BACKEND_GUARD;

	CHECK(dynstack_config_init(&cfg) == 0);
	cfg.backend = other;
	CHECK(dynstack_init(&cfg) == -EBUSY);
	cfg.backend = active;
	CHECK(dynstack_init(&cfg) == 0);
	cfg.backend = DYNSTACK_BACKEND_AUTO;
	CHECK(dynstack_init(&cfg) == 0);
	/* The variable is applied on top of cfg: naming the active backend
	 * there wins over cfg. */
	CHECK(setenv("DYNSTACK_BACKEND", guard ? "GUARD" : "MProtect", 1) == 0);
	cfg.backend = other;
	CHECK(dynstack_init(&cfg) == 0);
	CHECK(strcmp(dynstack_backend_name(), guard ? "guard" : "mprotect") == 0);
	return 0;
}

static void test_other_backend_busy(void **state)
{
	int status;

	int rc = run_in_child(other_backend_child, NULL, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
}

/* ---- environment variables */

static int bad_env_child(void *arg)
{
	const char *const *kv = arg;

	CHECK(setenv(kv[0], kv[1], 1) == 0);
	int rc = dynstack_init(NULL);
	if (rc != -EINVAL) {
		fprintf(stderr, "%s=%s: dynstack_init returned %d\n", kv[0], kv[1], rc);
		return 1;
	}
	return 0;
}

static void test_env_invalid(void **state)
{
	static const char *const cases[][2] = {
		{ "DYNSTACK_BACKEND", "bogus" },    { "DYNSTACK_BACKEND", "guard2" },
		{ "DYNSTACK_SIZE", "16x" },	    { "DYNSTACK_SIZE", "0" },
		{ "DYNSTACK_SIZE", "-4096" },	    { "DYNSTACK_SIZE", "2g" },
		{ "DYNSTACK_SIZE", "k" },	    { "DYNSTACK_SIZE", "99999999999999999999" },
		{ "DYNSTACK_STATS", "yes" },	    { "DYNSTACK_STATS", "2" },
		{ "DYNSTACK_CHECK_HANDLES", "on" }, { "DYNSTACK_CHECK_HANDLES", "2" },
	};
	int status;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char quoted[64];
		int rc = run_in_child(bad_env_child, (void *)cases[i], &status, child_err,
				      sizeof(child_err));
		expect_clean_exit(rc, status);
		snprintf(quoted, sizeof(quoted), "%s=\"%s\"", cases[i][0], cases[i][1]);
		if (!contains(child_err, quoted))
			fail_msg("no message naming %s; stderr:\n%s", quoted, child_err);
	}
}

/* "never touches errno", also while parsing the variables. */
static int env_errno_child(void *arg)
{
	CHECK(setenv("DYNSTACK_SIZE", "64k", 1) == 0);
	errno = 777;
	CHECK(dynstack_init(NULL) == 0);
	CHECK(errno == 777);
	CHECK(setenv("DYNSTACK_SIZE", "99999999999999999999", 1) == 0);
	CHECK(dynstack_init(NULL) == -EINVAL);
	CHECK(errno == 777);
	return 0;
}

static void test_errno_untouched_by_env(void **state)
{
	int status;
	int rc = run_in_child(env_errno_child, NULL, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
}

/* Re-executed: a process that has not used the library yet. Prints what
 * it sees as "key value" lines on stderr for the parent to check. */
static int fresh_child(void)
{
	dynstack_stats_t st = stats_now();
	dynstack_t *s;

	fprintf(stderr, "before %s\n", dynstack_backend_name());
	fprintf(stderr, "stats_backend %d\n", (int)st.backend);
	fprintf(stderr, "init %d\n", dynstack_init(NULL));
	fprintf(stderr, "after %s\n", dynstack_backend_name());
	if (dynstack_create(&s, NULL) == 0) {
		fprintf(stderr, "size %zu\n", dynstack_size(s));
		dynstack_destroy(s);
	}
	return 0;
}

/* Re-executed: creates, grows and destroys a stack, then returns from main
 * so that exit handlers run. */
static int stats_child(void)
{
	dynstack_t *s;

	if (dynstack_create(&s, NULL))
		return 2;
	char *top = dynstack_top(s);
	*(volatile char *)(top - 2 * page_size()) = 1;
	fprintf(stderr, "---\n");
	return dynstack_destroy(s) ? 3 : 0;
}

/* Re-executed: the same with stats_at_exit from the config. */
static int stats_cfg_child(void)
{
	dynstack_config_t cfg;

	dynstack_config_init(&cfg);
	cfg.stats_at_exit = 1;
	if (dynstack_init(&cfg))
		return 4;
	return stats_child();
}

/* Re-executed: sync stacks of the configured size, and "big enough" is
 * measured against that size. */
#define SYNC_SIZE (256 * 1024)

static void *own_128k_thread(void *arg)
{
	stack_t mine = { .ss_sp = arg, .ss_size = 128 * 1024, .ss_flags = 0 };
	stack_t off = { .ss_flags = SS_DISABLE }, now;

	sigaltstack(&mine, NULL);
	int rc = dynstack_thread_init();
	sigaltstack(NULL, &now);
	fprintf(stderr, "thread_rc %d\nthread_replaced %d\nthread_size %zu\n", rc, now.ss_sp != arg,
		now.ss_size);
	dynstack_thread_fini();
	sigaltstack(&off, NULL);
	return NULL;
}

static int sync_size_child(void)
{
	dynstack_config_t cfg;
	stack_t ss;
	pthread_t th;
	void *mem = malloc(128 * 1024);

	dynstack_config_init(&cfg);
	cfg.sync_stack_size = SYNC_SIZE;
	if (!mem || dynstack_init(&cfg) || dynstack_thread_init())
		return 2;
	sigaltstack(NULL, &ss);
	fprintf(stderr, "main_size %zu\n", ss.ss_size);
	if (pthread_create(&th, NULL, own_128k_thread, mem) || pthread_join(th, NULL))
		return 3;
	free(mem);
	return 0;
}

/* The value after "key " on a line of text, or NULL. */
static const char *value_of(const char *text, const char *key, char *out, size_t outsize)
{
	size_t klen = strlen(key);

	for (const char *line = text; *line;) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ' ') {
			size_t n = strcspn(line + klen + 1, "\n");
			if (n >= outsize)
				n = outsize - 1;
			memcpy(out, line + klen + 1, n);
			out[n] = '\0';
			return out;
		}
		const char *next = strchr(line, '\n');
		if (!next)
			break;
		line = next + 1;
	}
	return NULL;
}

static void test_fresh_process(void **state)
{
	static const char *const env[] = { "DYNSTACK_SIZE=64k", NULL };
	const char *forced = getenv("DYNSTACK_BACKEND");
	char v[64];
	int status;

	int rc = run_self("--fresh", env, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
	assert_non_null(value_of(child_err, "before", v, sizeof(v)));
	assert_string_equal(v, "none");
	assert_non_null(value_of(child_err, "stats_backend", v, sizeof(v)));
	assert_int_equal(atoi(v), DYNSTACK_BACKEND_AUTO);
	assert_non_null(value_of(child_err, "init", v, sizeof(v)));
	assert_string_equal(v, "0");
	assert_non_null(value_of(child_err, "after", v, sizeof(v)));
	if (forced && *forced && strcasecmp(forced, "auto") != 0)
		assert_true(strcasecmp(v, forced) == 0);
	else
		assert_string_equal(v, kernel_has_guard_regions() ? "guard" : "mprotect");
	/* DYNSTACK_SIZE set the default reservation. */
	assert_non_null(value_of(child_err, "size", v, sizeof(v)));
	assert_string_equal(v, "65536");
}

static void test_sync_stack_size(void **state)
{
	char v[64];
	int status;

	int rc = run_self("--sync-size", NULL, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
	assert_non_null(value_of(child_err, "main_size", v, sizeof(v)));
	assert_int_equal(atol(v), SYNC_SIZE);
	assert_non_null(value_of(child_err, "thread_rc", v, sizeof(v)));
	assert_string_equal(v, "0");
	/* 128 KiB is above the minimum but below the configured size. */
	assert_non_null(value_of(child_err, "thread_replaced", v, sizeof(v)));
	assert_string_equal(v, "1");
	assert_non_null(value_of(child_err, "thread_size", v, sizeof(v)));
	assert_int_equal(atol(v), SYNC_SIZE);
}

/* Asking for guard regions gets them, or -EOPNOTSUPP on a kernel without. */
static void test_env_guard_needs_kernel(void **state)
{
	static const char *const env[] = { "DYNSTACK_BACKEND=guard", NULL };
	char v[64];
	int status;

	int rc = run_self("--fresh", env, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
	assert_non_null(value_of(child_err, "init", v, sizeof(v)));
	if (kernel_has_guard_regions()) {
		assert_string_equal(v, "0");
		assert_non_null(value_of(child_err, "after", v, sizeof(v)));
		assert_string_equal(v, "guard");
	} else {
		assert_int_equal(atoi(v), -EOPNOTSUPP);
	}
}

static void check_stats_at_exit(const char *mode, const char *const *env, bool want)
{
	int status;
	char want_line[96];

	int rc = run_self(mode, env, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
	const char *after = strstr(child_err, "---\n");
	assert_non_null(after);
	if (!want) {
		assert_string_equal(after, "---\n");
		return;
	}
#define EXPECT_LINE(name, kind, desc)                                                              \
	snprintf(want_line, sizeof(want_line), "\n%s ", #name);                                    \
	if (!contains(after, want_line))                                                           \
		fail_msg("no line for %s at exit; stderr:\n%s", #name, child_err);
	DYNSTACK_STATS_COUNTERS(EXPECT_LINE)
#undef EXPECT_LINE
	assert_true(contains(after, "\nnr_dynamic_stacks_created 1\n"));
	assert_true(contains(after, "\nnr_dynamic_stacks_destroyed 1\n"));
	/* The child grew its stack by one fault (none where stacks are
	 * committed whole). */
	assert_true(contains(after, stacks_whole() ? "\nnr_dynamic_stacks_faults 0\n" :
						     "\nnr_dynamic_stacks_faults 1\n"));
	assert_true(contains(after, "\nnr_dynamic_stacks 0\n"));
	assert_true(contains(after, "\ndynamic_stacks_backend guard\n") ||
		    contains(after, "\ndynamic_stacks_backend mprotect\n"));
}

static void test_env_stats_at_exit(void **state)
{
	static const char *const on[] = { "DYNSTACK_STATS=1", NULL };
	static const char *const off[] = { "DYNSTACK_STATS=0", NULL };
	static const char *const unset[] = { "DYNSTACK_STATS", NULL };
	static const char *const veto[] = { "DYNSTACK_STATS=0", NULL };

	check_stats_at_exit("--stats", on, true);
	check_stats_at_exit("--stats", off, false);
	check_stats_at_exit("--stats", unset, false);
	check_stats_at_exit("--stats-cfg", unset, true);
	check_stats_at_exit("--stats-cfg", veto, false); /* the variable wins */
}

/* ---- the handler, re-installed */

static int reinstall_child(void *arg)
{
	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s;
	CHECK(dynstack_create(&s, NULL) == 0);
	CHECK(signal(SIGSEGV, SIG_DFL) != SIG_ERR);
	CHECK(!handler_is_installed());
	CHECK(dynstack_init(NULL) == 0);
	CHECK(handler_is_installed());
	char *top = dynstack_top(s);
	size_t before = dynstack_committed(s);
	/* No growth to try where stacks are committed whole. */
	if (!stacks_whole()) {
		*(volatile char *)(top - before - 1) = 1; /* SIG_DFL would kill here */
		CHECK(dynstack_committed(s) == before + page_size());
	}
	CHECK(dynstack_destroy(s) == 0);
	return 0;
}

static void test_reinstall_after_replacement(void **state)
{
	int status;

	int rc = run_in_child(reinstall_child, NULL, &status, child_err, sizeof(child_err));
	expect_clean_exit(rc, status);
}

/* ---- sync stacks and the thread's own sigaltstack */

struct altstack_probe {
	size_t own_size;
	void *own;
	int init_rc;
	stack_t after_init, after_fini;
	uint64_t sync_during, sync_after;
	int grew;
};

static void *altstack_thread(void *arg)
{
	struct altstack_probe *p = arg;
	stack_t mine = { .ss_sp = p->own, .ss_size = p->own_size, .ss_flags = 0 };
	stack_t off = { .ss_flags = SS_DISABLE };

	if (sigaltstack(&mine, NULL))
		return NULL;
	p->init_rc = dynstack_thread_init();
	sigaltstack(NULL, &p->after_init);
	p->sync_during = stats_now().nr_dynamic_stacks_sync_stacks;
	/* Growth works on this thread, whichever stack the handler runs on
	 * (no growth to try where stacks are committed whole). */
	dynstack_t *s;
	p->grew = stacks_whole();
	if (!p->grew && dynstack_create(&s, NULL) == 0) {
		char *top = dynstack_top(s);
		*(volatile char *)(top - 3 * page_size()) = 1;
		p->grew = dynstack_committed(s) == 3 * page_size();
		dynstack_destroy(s);
	}
	dynstack_thread_fini();
	sigaltstack(NULL, &p->after_fini);
	p->sync_after = stats_now().nr_dynamic_stacks_sync_stacks;
	sigaltstack(&off, NULL);
	return NULL;
}

static void run_altstack_thread(struct altstack_probe *p)
{
	pthread_t th;

	p->own = malloc(p->own_size);
	assert_non_null(p->own);
	p->init_rc = -1;
	assert_int_equal(pthread_create(&th, NULL, altstack_thread, p), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	free(p->own);
}

static void test_big_sigaltstack_kept(void **state)
{
	TAKE_SIGSEGV();
	struct altstack_probe p = { .own_size = 2 * DYNSTACK_MIN_SYNC_STACK };
	uint64_t before = stats_now().nr_dynamic_stacks_sync_stacks;

	run_altstack_thread(&p);
	assert_int_equal(p.init_rc, 0);
	assert_ptr_equal(p.after_init.ss_sp, p.own);
	assert_int_equal(p.after_init.ss_size, p.own_size);
	assert_int_equal(p.sync_during, before); /* none of ours was made */
	assert_true(p.grew);
	/* fini leaves a foreign alternate stack alone. */
	assert_ptr_equal(p.after_fini.ss_sp, p.own);
	assert_false(p.after_fini.ss_flags & SS_DISABLE);
	assert_int_equal(p.sync_after, before);
}

static void test_small_sigaltstack_replaced(void **state)
{
	TAKE_SIGSEGV();
	struct altstack_probe p = { .own_size = 16 * 1024 };
	uint64_t before = stats_now().nr_dynamic_stacks_sync_stacks;

	run_altstack_thread(&p);
	assert_int_equal(p.init_rc, 0);
	assert_ptr_not_equal(p.after_init.ss_sp, p.own);
	assert_true(p.after_init.ss_size >= DYNSTACK_MIN_SYNC_STACK);
	assert_int_equal(p.sync_during, before + 1);
	assert_true(p.grew);
	/* fini puts the thread's own back, exactly. */
	assert_ptr_equal(p.after_fini.ss_sp, p.own);
	assert_int_equal(p.after_fini.ss_size, p.own_size);
	assert_false(p.after_fini.ss_flags & SS_DISABLE);
	assert_int_equal(p.sync_after, before);
	/* Ours is unmapped, its guard page too. */
	char *ours = p.after_init.ss_sp;
	assert_int_equal(count_accessible(ours - page_size(), ours + p.after_init.ss_size), 0);
}

/* Inside a handler running on the alternate stack, the stack cannot be
 * swapped: -EBUSY. */
static volatile int busy_rc;

static void on_usr1(int sig)
{
	busy_rc = dynstack_thread_init();
}

static void *busy_thread(void *arg)
{
	stack_t mine = { .ss_sp = arg, .ss_size = 16 * 1024, .ss_flags = 0 };
	stack_t off = { .ss_flags = SS_DISABLE };
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	sigaltstack(&mine, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	pthread_kill(pthread_self(), SIGUSR1);
	sigaltstack(&off, NULL);
	return NULL;
}

static void test_thread_init_busy_on_altstack(void **state)
{
	TAKE_SIGSEGV();
	void *mem = malloc(16 * 1024);
	pthread_t th;

	assert_non_null(mem);
	busy_rc = 1;
	assert_int_equal(pthread_create(&th, NULL, busy_thread, mem), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	signal(SIGUSR1, SIG_DFL);
	free(mem);
	assert_int_equal(busy_rc, -EBUSY);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "--fresh") == 0)
			return fresh_child();
		if (strcmp(argv[1], "--stats") == 0)
			return stats_child();
		if (strcmp(argv[1], "--stats-cfg") == 0)
			return stats_cfg_child();
		if (strcmp(argv[1], "--sync-size") == 0)
			return sync_size_child();
		return 64;
	}

	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_config_defaults),
		cmocka_unit_test(test_config_refused),
		cmocka_unit_test(test_init_idempotent),
		cmocka_unit_test(test_backend_name),
		cmocka_unit_test(test_other_backend_busy),
		cmocka_unit_test(test_env_invalid),
		cmocka_unit_test(test_errno_untouched_by_env),
		cmocka_unit_test(test_fresh_process),
		cmocka_unit_test(test_env_guard_needs_kernel),
		cmocka_unit_test(test_sync_stack_size),
		cmocka_unit_test(test_env_stats_at_exit),
		cmocka_unit_test(test_reinstall_after_replacement),
		cmocka_unit_test(test_big_sigaltstack_kept),
		cmocka_unit_test(test_small_sigaltstack_replaced),
		cmocka_unit_test(test_thread_init_busy_on_altstack),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
