/* Tests of fault policies (src/policy.c, and their use in stack.c, fault.c and
 * coro.c): the spec parser and its canonical form, the bad-spec corpus that
 * the fuzzer starts from, the grow decision of every built-in on real stacks,
 * overflow=warn and overflow=fail, user policies and DYNSTACK_POLICY.
 * White-box: it calls the parser and the decision directly, and reads a
 * stack's learn history to check a test's premise. Anything that may die or
 * must show its stderr runs in a child.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "policy.h"
#include "types.h"

static size_t ps; /* the page size */
static char child_err[16384];

/* ---- helpers */

static void expect_in_err(const char *needle)
{
	if (!contains(child_err, needle))
		fail_msg("child's stderr lacks '%s'; it is:\n%s", needle, child_err);
}

static unsigned occurrences(const char *text, const char *needle)
{
	unsigned n = 0;

	for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* A stack of `pages` pages; NULL on failure (usable in children too). */
static dynstack_t *try_stack(size_t pages, const char *name, const char *policy)
{
	dynstack_attr_t attr;
	dynstack_t *s = NULL;

	dynstack_attr_init(&attr);
	attr.size = pages * ps;
	attr.name = name;
	attr.policy = policy;
	if (dynstack_create(&s, &attr))
		return NULL;
	return s;
}

static dynstack_t *new_stack(size_t pages, const char *name, const char *policy)
{
	dynstack_t *s = try_stack(pages, name, policy);

	assert_non_null(s);
	return s;
}

static dynstack_coro_t *try_coro(dynstack_coro_fn fn, void *arg, size_t pages, const char *name,
				 const char *policy)
{
	dynstack_attr_t attr;
	dynstack_coro_t *c = NULL;

	dynstack_attr_init(&attr);
	attr.size = pages * ps;
	attr.name = name;
	attr.policy = policy;
	if (dynstack_coro_create(&c, fn, arg, &attr))
		return NULL;
	return c;
}

/* The lowest byte of the i-th page from the top (page 1 is committed at
 * creation), and the lowest usable byte. */
static char *page_of(dynstack_t *s, size_t i)
{
	return (char *)dynstack_top(s) - i * ps;
}

static char *lo_of(dynstack_t *s)
{
	return (char *)dynstack_top(s) - dynstack_size(s);
}

/* Volatile: the write must happen here, where the test expects the fault. */
static void poke(char *p)
{
	*(volatile char *)p = 1;
}

static size_t committed_pages(dynstack_t *s)
{
	return dynstack_committed(s) / ps;
}

static uint64_t faults_now(void)
{
	return stats_now().nr_dynamic_stacks_faults;
}

/* "name=value" lines a child wrote to stderr. */
static const char *value_of(const char *text, const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (!strncmp(p, key, klen) && p[klen] == '=') {
			size_t n = strcspn(p + klen + 1, "\n");
			if (n >= outlen)
				n = outlen - 1;
			memcpy(out, p + klen + 1, n);
			out[n] = '\0';
			return out;
		}
	}
	return NULL;
}

/* Tests that change the process default put step=1 back, pass or fail. */
static int restore_default(void **state)
{
	return dynstack_policy_set("step=1");
}

/* A coroutine that recurses `bytes` below its top and reports the levels. */
struct deep {
	size_t bytes;
	unsigned levels;
};

static void deep_fn(void *arg)
{
	struct deep *d = arg;
	dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());

	d->levels = touch_down(dynstack_top(self), d->bytes);
}

/* ---- the parser: accepted forms and their canonical text */

static const struct {
	const char *spec, *canonical;
} good_specs[] = {
	{ "step=1", "step=1" },
	{ "step=4", "step=4" },
	{ "step=4096", "step=4096" },
	{ "step=007", "step=7" },
	{ "double", "double=256k" },
	{ "double=64k", "double=64k" },
	{ "double=64K", "double=64k" },
	{ "double=2m", "double=2M" },
	{ "double=1048576", "double=1M" },
	{ "double=5000", "double=5000" },
	{ "double=1G", "double=1024M" },
	{ "learn", "learn" },
	{ "initial=32k", "step=1,initial=32k" },
	{ "initial=12288", "step=1,initial=12k" },
	{ "initial=100", "step=1,initial=100" },
	{ "populate", "step=1,populate" },
	{ "overflow=abort", "step=1" },
	{ "overflow=fail", "step=1,overflow=fail" },
	{ "overflow=warn:8k", "step=1,overflow=warn:8k" },
	{ "overflow=warn:1M", "step=1,overflow=warn:1M" },
	{ "step=1,overflow=abort", "step=1" },
	{ "populate,step=4", "step=4,populate" },
	{ "overflow=fail,initial=8192,populate,double=1m",
	  "double=1M,initial=8k,populate,overflow=fail" },
	{ "learn,populate,initial=64k,overflow=warn:16k",
	  "learn,initial=64k,populate,overflow=warn:16k" },
};

static void test_parse_accepts_documented_forms(void **state)
{
	for (size_t i = 0; i < sizeof(good_specs) / sizeof(good_specs[0]); i++) {
		const char *spec = good_specs[i].spec;
		struct ds_policy p, q;
		char err[160] = "untouched";

		if (ds_policy_parse(spec, &p, err, sizeof(err)))
			fail_msg("\"%s\" rejected: %s", spec, err);
		assert_string_equal(err, "untouched");
		if (strcmp(p.spec, good_specs[i].canonical))
			fail_msg("\"%s\": canonical \"%s\", expected \"%s\"", spec, p.spec,
				 good_specs[i].canonical);
		/* The canonical text means the same policy and is its own canonical. */
		if (ds_policy_parse(p.spec, &q, err, sizeof(err)))
			fail_msg("canonical \"%s\" rejected: %s", p.spec, err);
		assert_string_equal(q.spec, p.spec);
		assert_int_equal(q.grow, p.grow);
		assert_int_equal(q.step, p.step);
		assert_int_equal(q.cap, p.cap);
		assert_int_equal(q.initial, p.initial);
		assert_int_equal(q.populate, p.populate);
		assert_int_equal(q.overflow, p.overflow);
		assert_int_equal(q.reserve, p.reserve);
		assert_int_equal(dynstack_policy_check(spec, NULL, 0), 0);
	}
}

static void test_parse_fields(void **state)
{
	struct ds_policy p;

	assert_int_equal(ds_policy_parse("step=4", &p, NULL, 0), 0);
	assert_int_equal(p.grow, DS_GROW_STEP);
	assert_int_equal(p.step, 4);
	assert_int_equal(p.initial, 0);
	assert_false(p.populate);
	assert_int_equal(p.overflow, DYNSTACK_OVERFLOW_ABORT);

	assert_int_equal(ds_policy_parse("double", &p, NULL, 0), 0);
	assert_int_equal(p.grow, DS_GROW_DOUBLE);
	assert_int_equal(p.cap, 256 * 1024);
	assert_int_equal(ds_policy_parse("double=64k", &p, NULL, 0), 0);
	assert_int_equal(p.cap, 64 * 1024);

	assert_int_equal(ds_policy_parse("learn,initial=32k,populate", &p, NULL, 0), 0);
	assert_int_equal(p.grow, DS_GROW_LEARN);
	assert_int_equal(p.initial, 32 * 1024);
	assert_true(p.populate);

	assert_int_equal(ds_policy_parse("overflow=warn:8k", &p, NULL, 0), 0);
	assert_int_equal(p.overflow, DYNSTACK_OVERFLOW_WARN);
	assert_int_equal(p.reserve, 8192);
	assert_int_equal(ds_policy_parse("overflow=fail", &p, NULL, 0), 0);
	assert_int_equal(p.overflow, DYNSTACK_OVERFLOW_FAIL);
	assert_int_equal(p.reserve, 0);
}

/* get/set/of: the canonical text is what the process default and each stack
 * report, whatever the spelling they were given. */
static void test_get_set_of(void **state)
{
	char buf[DS_SPEC_MAX];

	TAKE_SIGSEGV();
	for (size_t i = 0; i < sizeof(good_specs) / sizeof(good_specs[0]); i++) {
		assert_int_equal(dynstack_policy_set(good_specs[i].spec), 0);
		int n = dynstack_policy_get(buf, sizeof(buf));
		assert_int_equal(n, strlen(good_specs[i].canonical));
		assert_string_equal(buf, good_specs[i].canonical);
		dynstack_t *s = new_stack(4, "of-default", NULL);
		assert_string_equal(dynstack_policy_of(s), good_specs[i].canonical);
		assert_int_equal(dynstack_destroy(s), 0);
		s = new_stack(4, "of-attr", good_specs[i].spec);
		assert_string_equal(dynstack_policy_of(s), good_specs[i].canonical);
		assert_int_equal(dynstack_destroy(s), 0);
	}
	assert_int_equal(dynstack_policy_set("step=1"), 0);
	assert_int_equal(dynstack_policy_get(buf, sizeof(buf)), 6);
	assert_string_equal(buf, "step=1");
}

static void test_get_check_misuse(void **state)
{
	char buf[8], err[160];

	TAKE_SIGSEGV();
	assert_int_equal(dynstack_policy_get(NULL, 16), -EINVAL);
	assert_int_equal(dynstack_policy_get(buf, 6), -ENOSPC); /* "step=1" needs 7 */
	assert_int_equal(dynstack_policy_get(buf, 7), 6);
	assert_string_equal(buf, "step=1");
	assert_string_equal(dynstack_policy_of(NULL), "");

	assert_int_equal(dynstack_policy_check(NULL, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "no spec");
	assert_int_equal(dynstack_policy_check("bogus", NULL, 0), -EINVAL);
	/* A short buffer gets the start of the message, NUL-terminated. */
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(dynstack_policy_check("bogus", buf, 5), -EINVAL);
	assert_string_equal(buf, "unkn");
	assert_int_equal(buf[5], 'x');
	/* errlen 0: nothing written. */
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(dynstack_policy_check("bogus", buf, 0), -EINVAL);
	assert_int_equal(buf[0], 'x');
}

/* ---- the parser: the bad-spec corpus, also in fuzz/corpus/policy/ */

struct bad_spec {
	const char *file; /* its name in fuzz/corpus/policy/; content: spec exactly */
	const char *spec;
	const char *why; /* the message must contain this */
};

static const struct bad_spec bad_specs[] = {
	{ "bad-empty", "", "empty spec" },
	{ "bad-unknown-key", "stride=4", "unknown item \"stride=4\"" },
	{ "bad-unknown-flag", "fast", "unknown item \"fast\"" },
	{ "bad-key-case", "Step=4", "unknown item \"Step=4\"" },
	{ "bad-leading-space", " step=4", "unknown item \" step=4\"" },
	{ "bad-semicolon", "step=4;populate", "step=N needs N pages, 1..4096" },
	{ "bad-equals-only", "=4", "unknown item \"=4\"" },
	{ "bad-step-no-value", "step", "step=N needs N pages, 1..4096: \"step\"" },
	{ "bad-step-empty-value", "step=", "step=N needs N pages, 1..4096: \"step=\"" },
	{ "bad-step-not-number", "step=four", "step=N needs N pages, 1..4096: \"step=four\"" },
	{ "bad-step-trailing-junk", "step=4x", "step=N needs N pages, 1..4096: \"step=4x\"" },
	{ "bad-step-trailing-space", "step=4 ", "step=N needs N pages, 1..4096: \"step=4 \"" },
	{ "bad-step-newline", "step=4\n", "step=N needs N pages, 1..4096" },
	{ "bad-step-plus", "step=+4", "step=N needs N pages, 1..4096: \"step=+4\"" },
	{ "bad-step-negative", "step=-1", "step=N needs N pages, 1..4096: \"step=-1\"" },
	{ "bad-step-hex", "step=0x10", "step=N needs N pages, 1..4096: \"step=0x10\"" },
	{ "bad-step-zero", "step=0", "step=N needs N pages, 1..4096: \"step=0\"" },
	{ "bad-step-too-big", "step=4097", "step=N needs N pages, 1..4096: \"step=4097\"" },
	{ "bad-step-overflow", "step=18446744073709551617", "step=N needs N pages, 1..4096" },
	{ "bad-step-size-suffix", "step=4k", "step=N needs N pages, 1..4096: \"step=4k\"" },
	{ "bad-double-empty-value", "double=", "double=CAP needs a size, 1..1G" },
	{ "bad-double-zero", "double=0",
	  "double=CAP needs a size, 1..1G (k/M/G suffix): \"double=0\"" },
	{ "bad-double-suffix-only", "double=k",
	  "double=CAP needs a size, 1..1G (k/M/G suffix): \"double=k\"" },
	{ "bad-double-bad-suffix", "double=4q",
	  "double=CAP needs a size, 1..1G (k/M/G suffix): \"double=4q\"" },
	{ "bad-double-two-suffixes", "double=4kk", "double=CAP needs a size, 1..1G" },
	{ "bad-double-too-big", "double=1025M",
	  "double=CAP needs a size, 1..1G (k/M/G suffix): \"double=1025M\"" },
	{ "bad-double-too-big-bytes", "double=1073741825", "double=CAP needs a size, 1..1G" },
	{ "bad-double-2g", "double=2G",
	  "double=CAP needs a size, 1..1G (k/M/G suffix): \"double=2G\"" },
	{ "bad-initial-no-value", "initial", "initial=SIZE needs a size, 1..1G" },
	{ "bad-initial-zero", "initial=0",
	  "initial=SIZE needs a size, 1..1G (k/M/G suffix): \"initial=0\"" },
	{ "bad-initial-too-big", "initial=1048577k", "initial=SIZE needs a size, 1..1G" },
	{ "bad-initial-wraps", "initial=17179869184G", "initial=SIZE needs a size, 1..1G" },
	{ "bad-overflow-no-value", "overflow", "overflow= takes abort, fail or warn:SIZE" },
	{ "bad-overflow-unknown", "overflow=explode",
	  "overflow= takes abort, fail or warn:SIZE: \"overflow=explode\"" },
	{ "bad-overflow-case", "overflow=FAIL", "overflow= takes abort, fail or warn:SIZE" },
	{ "bad-overflow-warn-no-size", "overflow=warn",
	  "overflow= takes abort, fail or warn:SIZE" },
	{ "bad-overflow-warn-empty", "overflow=warn:", "overflow= takes abort, fail or warn:SIZE" },
	{ "bad-overflow-warn-zero", "overflow=warn:0",
	  "overflow=warn:SIZE needs a reserve size, 1..1G: \"overflow=warn:0\"" },
	{ "bad-overflow-warn-too-big", "overflow=warn:2048M",
	  "overflow=warn:SIZE needs a reserve size, 1..1G" },
	{ "bad-overflow-warn-equals", "overflow=warn=8k",
	  "overflow= takes abort, fail or warn:SIZE" },
	{ "bad-learn-value", "learn=1", "learn takes no value: \"learn=1\"" },
	{ "bad-learn-empty-value", "learn=", "learn takes no value" },
	{ "bad-populate-value", "populate=yes", "populate takes no value: \"populate=yes\"" },
	{ "bad-empty-item", "step=4,,populate", "empty item" },
	{ "bad-leading-comma", ",step=4", "empty item" },
	{ "bad-trailing-comma", "step=4,", "empty item" },
	{ "bad-only-comma", ",", "empty item" },
	{ "bad-two-grow-rules", "step=4,double", "two grow rules" },
	{ "bad-two-grow-rules-learn", "learn,step=1", "two grow rules" },
	{ "bad-duplicate-step", "step=2,step=4", "two grow rules" },
	{ "bad-duplicate-learn", "learn,learn", "two grow rules" },
	{ "bad-duplicate-initial", "initial=8k,initial=16k", "initial given twice" },
	{ "bad-duplicate-populate", "populate,populate", "populate given twice" },
	{ "bad-duplicate-overflow", "overflow=fail,overflow=abort", "overflow given twice" },
	{ "bad-grow-unregistered", "grow=nosuch", "unknown item \"grow=nosuch\"" },
	{ "bad-grow-empty", "grow=", "unknown item \"grow=\"" },
	{ "bad-grow-no-value", "grow", "unknown item \"grow\"" },
	{ "bad-grow-builtin", "grow=step", "unknown item \"grow=step\"" },
	{ "bad-unregistered-name", "nosuch-policy", "unknown item \"nosuch-policy\"" },
	{ "bad-late-item", "step=4,populate,initial=8k,overflow=fail,extra",
	  "unknown item \"extra\"" },
};

#define NBAD (sizeof(bad_specs) / sizeof(bad_specs[0]))

/* fuzz/corpus/policy in the source tree. Meson compiles from the build root
 * with source paths relative to it, so __FILE__ is absolute or relative to
 * the build root, which is two levels above <build>/tests/test_policy. */
static const char *corpus_dir(void)
{
	static char dir[PATH_MAX];
	char base[PATH_MAX];

	if (__FILE__[0] == '/') {
		if (snprintf(base, sizeof(base), "%s", __FILE__) >= (int)sizeof(base))
			return NULL;
	} else {
		char exe[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		if (n <= 0)
			return NULL;
		exe[n] = '\0';
		for (int up = 0; up < 2; up++) {
			char *slash = strrchr(exe, '/');
			if (!slash)
				return NULL;
			*slash = '\0';
		}
		if (snprintf(base, sizeof(base), "%s/%s", exe, __FILE__) >= (int)sizeof(base))
			return NULL;
	}
	for (int up = 0; up < 2; up++) { /* drop "tests/test_policy.c" */
		char *slash = strrchr(base, '/');
		if (!slash)
			return NULL;
		*slash = '\0';
	}
	if (snprintf(dir, sizeof(dir), "%s/fuzz/corpus/policy", base) >= (int)sizeof(dir))
		return NULL;
	return dir;
}

/* The whole file, NUL-terminated (no spec holds a NUL). */
static char *read_corpus_file(const char *dir, const char *name, size_t *len)
{
	char path[PATH_MAX];
	static char buf[4096];

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		return NULL;
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	*len = fread(buf, 1, sizeof(buf) - 1, f);
	buf[*len] = '\0';
	fclose(f);
	return buf;
}

static void test_corpus_files_match_table(void **state)
{
	const char *dir = corpus_dir();
	assert_non_null(dir);

	for (size_t i = 0; i < NBAD; i++) {
		size_t len;
		const char *text = read_corpus_file(dir, bad_specs[i].file, &len);
		if (!text)
			fail_msg("%s/%s: cannot read it", dir, bad_specs[i].file);
		if (len != strlen(bad_specs[i].spec) || memcmp(text, bad_specs[i].spec, len))
			fail_msg("%s/%s holds \"%s\", the table says \"%s\"", dir,
				 bad_specs[i].file, text, bad_specs[i].spec);
	}
	/* And nothing in the directory that the table does not check. */
	DIR *d = opendir(dir);
	if (!d)
		fail_msg("%s: cannot open it", dir);
	struct dirent *e;
	size_t files = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		bool known = false;
		for (size_t i = 0; i < NBAD && !known; i++)
			known = !strcmp(e->d_name, bad_specs[i].file);
		if (!known) {
			closedir(d);
			fail_msg("%s/%s is not in bad_specs[] of tests/test_policy.c", dir,
				 e->d_name);
		}
		files++;
	}
	closedir(d);
	assert_int_equal(files, NBAD);
}

static void test_corpus_rejected(void **state)
{
	const char *dir = corpus_dir();

	TAKE_SIGSEGV();
	assert_non_null(dir);
	for (size_t i = 0; i < NBAD; i++) {
		size_t len;
		const char *spec = read_corpus_file(dir, bad_specs[i].file, &len);
		char err[160] = "", err2[160] = "";
		struct ds_policy p, untouched;

		if (!spec)
			fail_msg("%s/%s: cannot read it", dir, bad_specs[i].file);
		memset(&p, 0xa5, sizeof(p));
		untouched = p;
		int rc = ds_policy_parse(spec, &p, err, sizeof(err));
		if (rc != -EINVAL)
			fail_msg("%s \"%s\": ds_policy_parse returned %d (canonical \"%s\")",
				 bad_specs[i].file, spec, rc, rc ? "" : p.spec);
		if (!contains(err, bad_specs[i].why))
			fail_msg("%s \"%s\": message \"%s\" lacks \"%s\"", bad_specs[i].file, spec,
				 err, bad_specs[i].why);
		if (memcmp(&p, &untouched, sizeof(p)))
			fail_msg("%s: a rejected spec changed *out", bad_specs[i].file);
		/* The public check says the same; a stack cannot be made with it. */
		assert_int_equal(dynstack_policy_check(spec, err2, sizeof(err2)), -EINVAL);
		assert_string_equal(err2, err);
		static char sentinel;
		dynstack_attr_t attr;
		dynstack_t *s = (dynstack_t *)&sentinel;
		dynstack_attr_init(&attr);
		attr.policy = spec;
		assert_int_equal(dynstack_create(&s, &attr), -EINVAL);
		assert_null(s);
	}
}

static int set_bad_spec_child(void *arg)
{
	char buf[DS_SPEC_MAX];

	CHECK(dynstack_init(NULL) == 0);
	CHECK(dynstack_policy_set("step=4") == 0);
	CHECK(dynstack_policy_set("step=0") == -EINVAL);
	CHECK(dynstack_policy_set("populate,bogus") == -EINVAL);
	CHECK(dynstack_policy_set(NULL) == -EINVAL);
	/* The default is left as it was. */
	CHECK(dynstack_policy_get(buf, sizeof(buf)) > 0);
	CHECK(strcmp(buf, "step=4") == 0);
	return 0;
}

static void test_set_bad_spec_reports(void **state)
{
	expect_child_ok(set_bad_spec_child, NULL);
	expect_in_err("libdynstack: policy \"step=0\": step=N needs N pages, 1..4096");
	expect_in_err("libdynstack: policy \"populate,bogus\": unknown item \"bogus\"");
	expect_in_err("libdynstack: policy \"(null)\": no spec");
}

/* ---- the decision, as a pure function */

static size_t answer_grow(const dynstack_fault_info_t *info, void *data)
{
	return *(const size_t *)data;
}

static void test_decide_pure(void **state)
{
	const size_t p = 16384; /* any page size: the decision only uses info's */
	dynstack_fault_info_t info = {
		.page_size = p,
		.size = 64 * p,
		.limit = 64 * p,
		.committed = 4 * p,
		.depth = 5 * p,
	};
	struct ds_policy pol;

	assert_int_equal(ds_policy_parse("step=1", &pol, NULL, 0), 0);
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 5 * p);
	assert_int_equal(ds_policy_parse("step=4", &pol, NULL, 0), 0);
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 8 * p);
	info.depth = 62 * p; /* near the bottom: clamped to the limit */
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 64 * p);
	assert_int_equal(ds_policy_parse("step=4096", &pol, NULL, 0), 0);
	info.depth = 5 * p;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 64 * p);

	assert_int_equal(ds_policy_parse("double", &pol, NULL, 0), 0);
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 8 * p);
	info.committed = 40 * p;
	info.depth = 41 * p;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 56 * p); /* cap 256k = 16 p */
	info.committed = 60 * p;
	info.depth = 61 * p;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 64 * p);
	assert_int_equal(ds_policy_parse("double=16385", &pol, NULL, 0), 0);
	info.committed = 4 * p;
	info.depth = 5 * p;
	/* 4 p + (p + 1) bytes, rounded up to pages */
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 6 * p);

	assert_int_equal(ds_policy_parse("learn", &pol, NULL, 0), 0);
	info.learned = 0;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 5 * p);
	info.learned = 20 * p;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 20 * p);
	info.learned = 20 * p - 1;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 20 * p);
	info.learned = 100 * p;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 64 * p);

	/* A user answer is clamped to [depth, limit] and rounded up, and a huge
	 * one must not wrap around in the rounding. */
	size_t answer = 0;
	dynstack_policy_t user = {
		.struct_size = sizeof(user),
		.name = "pure",
		.grow = answer_grow,
		.data = &answer,
	};
	memset(&pol, 0, sizeof(pol));
	pol.grow = DS_GROW_USER;
	pol.user = &user;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 5 * p);
	answer = 7 * p + 1;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 8 * p);
	answer = SIZE_MAX;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 64 * p);
	answer = SIZE_MAX - p / 2;
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 64 * p);
	info.limit = 66 * p; /* in an overflow=warn reserve */
	assert_int_equal(ds_policy_decide_sigsafe(&pol, &info), 66 * p);

	/* The creation commit: one page by default, rounded up, at most the size. */
	assert_int_equal(ds_policy_parse("step=1", &pol, NULL, 0), 0);
	assert_int_equal(ds_policy_initial(&pol, 64 * p, p), p);
	assert_int_equal(ds_policy_parse("initial=20000", &pol, NULL, 0), 0);
	assert_int_equal(ds_policy_initial(&pol, 64 * p, p), 2 * p);
	assert_int_equal(ds_policy_parse("initial=1M", &pol, NULL, 0), 0);
	assert_int_equal(ds_policy_initial(&pol, 16 * p, p), 16 * p);
}

/* ---- decisions on real stacks, touched top-down from the main thread */

static void test_step1_one_fault_per_page(void **state)
{
	SKIP_IF_WHOLE();
	TAKE_SIGSEGV();
	dynstack_t *s = new_stack(32, "step1", "step=1");
	assert_string_equal(dynstack_policy_of(s), "step=1");
	assert_int_equal(committed_pages(s), 1);
	uint64_t f0 = faults_now();
	for (size_t i = 2; i <= 32; i++) {
		poke(page_of(s, i));
		assert_int_equal(committed_pages(s), i);
		assert_int_equal(faults_now() - f0, i - 1);
	}
	/* Committed pages do not fault again. */
	touch_pages_down(lo_of(s), dynstack_top(s));
	assert_int_equal(faults_now() - f0, 31);
	assert_int_equal(count_accessible(lo_of(s), dynstack_top(s)), 32);
	assert_int_equal(dynstack_destroy(s), 0);

	/* A frame that skips pages: one fault commits down to the page touched. */
	s = new_stack(32, "step1-jump", "step=1");
	f0 = faults_now();
	poke(page_of(s, 10));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(s), 10);
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_step4_one_fault_per_four_pages(void **state)
{
	SKIP_IF_WHOLE();
	TAKE_SIGSEGV();
	dynstack_t *s = new_stack(32, "step4", "step=4");
	uint64_t f0 = faults_now();
	size_t want = 1, faults = 0;
	for (size_t i = 2; i <= 32; i++) {
		poke(page_of(s, i));
		if (i > want) { /* the faulting page and 3 below it, within the size */
			want = i + 3 < 32 ? i + 3 : 32;
			faults++;
		}
		assert_int_equal(committed_pages(s), want);
		assert_int_equal(faults_now() - f0, faults);
	}
	assert_int_equal(faults, 8); /* 31 pages: faults at 2, 6, ..., 30 */
	assert_int_equal(count_accessible(lo_of(s), dynstack_top(s)), 32);
	assert_int_equal(dynstack_destroy(s), 0);

	s = new_stack(32, "step4-jump", "step=4");
	f0 = faults_now();
	poke(page_of(s, 10));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(s), 13);
	assert_int_equal(count_accessible(lo_of(s), dynstack_top(s)), 13);
	assert_int_equal(dynstack_destroy(s), 0);
}

/* Touch pages 2..pages one by one; record the committed size (in pages)
 * each time a fault changes it. */
static size_t growth_sequence(dynstack_t *s, size_t pages, size_t *seq, size_t max,
			      uint64_t *faults)
{
	uint64_t f0 = faults_now();
	size_t n = 0, last = committed_pages(s);

	for (size_t i = 2; i <= pages; i++) {
		poke(page_of(s, i));
		size_t c = committed_pages(s);
		if (c != last && n < max)
			seq[n++] = c;
		last = c;
	}
	*faults = faults_now() - f0;
	return n;
}

static void check_double(size_t pages, size_t cap_pages, const char *spec)
{
	size_t want[64], got[64], nwant = 0;
	uint64_t faults;

	/* The rule: each fault commits as much again as is committed, at most
	 * cap, within the size. */
	for (size_t c = 1; c < pages;) {
		c += c < cap_pages ? c : cap_pages;
		if (c > pages)
			c = pages;
		want[nwant++] = c;
	}
	dynstack_t *s = new_stack(pages, "double", spec);
	size_t ngot = growth_sequence(s, pages, got, 64, &faults);
	assert_int_equal(dynstack_destroy(s), 0);
	assert_int_equal(faults, nwant);
	assert_int_equal(ngot, nwant);
	for (size_t i = 0; i < nwant; i++)
		if (got[i] != want[i])
			fail_msg("%s: fault %zu committed %zu pages, expected %zu", spec, i + 1,
				 got[i], want[i]);
}

static void test_double(void **state)
{
	SKIP_IF_WHOLE();
	char spec[64];

	TAKE_SIGSEGV();
	check_double(256, (256 * 1024) / ps, "double");
	if (ps == 4096) { /* the same, spelled out */
		static const size_t want[] = { 2, 4, 8, 16, 32, 64, 128, 192, 256 };
		size_t got[64];
		uint64_t faults;
		dynstack_t *s = new_stack(256, "double-4k", "double");
		size_t n = growth_sequence(s, 256, got, 64, &faults);
		assert_int_equal(dynstack_destroy(s), 0);
		assert_int_equal(n, sizeof(want) / sizeof(want[0]));
		assert_memory_equal(got, want, sizeof(want));
	}
	snprintf(spec, sizeof(spec), "double=%zu", 4 * ps);
	check_double(32, 4, spec);
}

static void test_learn_recycled_coroutine(void **state)
{
	SKIP_IF_WHOLE();
	struct deep d = { .bytes = 40 * ps };

	TAKE_SIGSEGV();
	dynstack_coro_t *c = try_coro(deep_fn, &d, 64, "learn-coro", "learn");
	assert_non_null(c);
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_true(d.levels > 0);
	size_t peak = dynstack_peak(dynstack_coro_stack(c));
	assert_true(peak >= 40 * ps);
	assert_int_equal(dynstack_coro_destroy(c), 0);

	/* Its successor of the same name runs the same code: one fault. */
	d.levels = 0;
	c = try_coro(deep_fn, &d, 64, "learn-coro", "learn");
	assert_non_null(c);
	uint64_t f0 = faults_now();
	assert_int_equal(dynstack_coro_resume(c), 0);
	assert_true(d.levels > 0);
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(dynstack_committed(dynstack_coro_stack(c)), peak);
	assert_int_equal(dynstack_coro_destroy(c), 0);
}

/* An unnamed stack has no per-name history: it learns from its slot. */
static void test_learn_by_slot(void **state)
{
	SKIP_IF_WHOLE();
	TAKE_SIGSEGV();
	dynstack_t *s = new_stack(40, NULL, "step=1");
	void *top = dynstack_top(s);
	touch_pages_down(page_of(s, 30), dynstack_top(s));
	assert_int_equal(dynstack_peak(s), 30 * ps);
	assert_int_equal(dynstack_destroy(s), 0);

	s = new_stack(40, NULL, "learn,populate");
	assert_ptr_equal(dynstack_top(s), top); /* premise: the slot is reused */
	assert_int_equal(s->learned, 30 * ps);
	uint64_t f0 = faults_now();
	uint64_t p0 = stats_now().nr_dynamic_stacks_populated;
	poke(page_of(s, 2));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(s), 30);
	/* populate: pages 3..30 are there though nothing touched them yet. */
	assert_int_equal(stats_now().nr_dynamic_stacks_populated - p0, 29);
	assert_int_equal(count_resident(page_of(s, 30), page_of(s, 2)), 28);
	touch_pages_down(page_of(s, 30), dynstack_top(s));
	assert_int_equal(faults_now() - f0, 1);
	/* Past what it learned it grows page by page, like step=1. */
	poke(page_of(s, 31));
	assert_int_equal(faults_now() - f0, 2);
	assert_int_equal(committed_pages(s), 31);
	assert_int_equal(dynstack_destroy(s), 0);
}

/* A named stack learns from earlier stacks of that name, whatever their size. */
static void test_learn_by_name(void **state)
{
	SKIP_IF_WHOLE();
	TAKE_SIGSEGV();
	dynstack_t *s = new_stack(20, "learn-by-name", "step=1");
	touch_pages_down(page_of(s, 12), dynstack_top(s));
	assert_int_equal(dynstack_peak(s), 12 * ps);
	assert_int_equal(dynstack_destroy(s), 0);

	/* 600 pages: a size class no other test uses, so a slot with no past. */
	s = new_stack(600, "learn-by-name", "learn");
	assert_int_equal(s->slot_hist, 0); /* premise */
	uint64_t f0 = faults_now();
	poke(page_of(s, 2));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(s), 12);

	/* Another name, in another fresh slot, has nothing to learn. */
	dynstack_t *other = new_stack(600, "learn-other-name", "learn");
	assert_int_equal(other->slot_hist, 0); /* premise */
	f0 = faults_now();
	poke(page_of(other, 2));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(other), 2);
	assert_int_equal(dynstack_destroy(other), 0);
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_initial(void **state)
{
	SKIP_IF_WHOLE();
	dynstack_attr_t attr;
	dynstack_t *s;
	size_t want = (32 * 1024 + ps - 1) / ps;

	TAKE_SIGSEGV();
	if (want > 16)
		want = 16;
	s = new_stack(16, "initial", "initial=32k");
	assert_int_equal(committed_pages(s), want);
	assert_int_equal(count_accessible(lo_of(s), dynstack_top(s)), want);
	uint64_t f0 = faults_now();
	touch_pages_down(page_of(s, want), dynstack_top(s));
	assert_int_equal(faults_now() - f0, 0);
	assert_int_equal(dynstack_destroy(s), 0);

	/* attr.initial wins over the policy's. */
	dynstack_attr_init(&attr);
	attr.size = 16 * ps;
	attr.initial = 2 * ps;
	attr.policy = "initial=32k";
	assert_int_equal(dynstack_create(&s, &attr), 0);
	assert_int_equal(committed_pages(s), 2);
	assert_int_equal(dynstack_destroy(s), 0);

	/* More than the size: the whole stack. */
	s = new_stack(16, "initial-big", "initial=1M");
	assert_int_equal(committed_pages(s), 16);
	assert_int_equal(dynstack_destroy(s), 0);

	/* Through the process default. */
	assert_int_equal(dynstack_policy_set("initial=32k"), 0);
	s = new_stack(16, "initial-default", NULL);
	assert_int_equal(committed_pages(s), want);
	assert_int_equal(dynstack_destroy(s), 0);
}

static void test_attr_policy_overrides_default(void **state)
{
	SKIP_IF_WHOLE();
	char buf[DS_SPEC_MAX];

	TAKE_SIGSEGV();
	assert_int_equal(dynstack_policy_set("step=4"), 0);
	assert_int_equal(dynstack_policy_get(buf, sizeof(buf)), 6);
	assert_string_equal(buf, "step=4");
	dynstack_t *a = new_stack(16, "by-default", NULL);
	dynstack_t *b = new_stack(16, "by-attr", "step=1");
	assert_string_equal(dynstack_policy_of(a), "step=4");
	assert_string_equal(dynstack_policy_of(b), "step=1");

	uint64_t f0 = faults_now();
	touch_pages_down(page_of(a, 9), dynstack_top(a));
	assert_int_equal(faults_now() - f0, 2); /* at pages 2 and 6 */
	f0 = faults_now();
	touch_pages_down(page_of(b, 9), dynstack_top(b));
	assert_int_equal(faults_now() - f0, 8);

	/* A new default applies to stacks created from now on only. */
	assert_int_equal(dynstack_policy_set("step=1"), 0);
	assert_string_equal(dynstack_policy_of(a), "step=4");
	f0 = faults_now();
	poke(page_of(a, 10));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(a), 13);
	assert_int_equal(dynstack_destroy(a), 0);
	assert_int_equal(dynstack_destroy(b), 0);
}

static void test_populate(void **state)
{
	SKIP_IF_WHOLE();
	TAKE_SIGSEGV();
	dynstack_t *s = new_stack(16, "populate", "step=4,populate");
	uint64_t p0 = stats_now().nr_dynamic_stacks_populated;
	uint64_t f0 = faults_now();
	poke(page_of(s, 2));
	assert_int_equal(faults_now() - f0, 1);
	assert_int_equal(committed_pages(s), 5);
	/* Pages 3, 4 and 5 are resident though nothing touched them. */
	assert_int_equal(count_resident(page_of(s, 5), page_of(s, 2)), 3);
	assert_int_equal(stats_now().nr_dynamic_stacks_populated - p0, 4);
	assert_int_equal(dynstack_destroy(s), 0);

	/* The control: without populate they are not. */
	s = new_stack(16, "no-populate", "step=4");
	p0 = stats_now().nr_dynamic_stacks_populated;
	poke(page_of(s, 2));
	assert_int_equal(committed_pages(s), 5);
	assert_int_equal(count_resident(page_of(s, 5), page_of(s, 2)), 0);
	assert_int_equal(stats_now().nr_dynamic_stacks_populated - p0, 0);
	assert_int_equal(dynstack_destroy(s), 0);
}

/* ---- overflow=warn */

static int warn_direct_child(void *arg)
{
	char spec[64];

	snprintf(spec, sizeof(spec), "overflow=warn:%zu", 2 * ps);
	CHECK(dynstack_init(NULL) == 0);
	uint64_t w0 = stats_now().nr_dynamic_stacks_warnings;
	dynstack_t *s = try_stack(16, "warn-direct", spec);
	CHECK(s != NULL);
	touch_pages_down(lo_of(s), dynstack_top(s));
	CHECK(stats_now().nr_dynamic_stacks_warnings == w0);
	fprintf(stderr, "--- into the reserve\n");
	poke(lo_of(s) - 1);
	CHECK(stats_now().nr_dynamic_stacks_warnings == w0 + 1);
	CHECK(committed_pages(s) == 17);
	/* Deeper in the reserve: commits, no second warning. */
	poke(lo_of(s) - ps - 1);
	CHECK(stats_now().nr_dynamic_stacks_warnings == w0 + 1);
	CHECK(committed_pages(s) == 18);
	CHECK(count_accessible(lo_of(s) - 2 * ps, dynstack_top(s)) == 18);
	CHECK(dynstack_size(s) == 16 * ps); /* the nominal size stays */
	CHECK(dynstack_destroy(s) == 0);

	/* The next stack warns once too. */
	s = try_stack(16, "warn-again", spec);
	CHECK(s != NULL);
	poke(lo_of(s) - 1);
	CHECK(stats_now().nr_dynamic_stacks_warnings == w0 + 2);
	CHECK(dynstack_destroy(s) == 0);
	return 0;
}

static void test_warn_direct(void **state)
{
	SKIP_IF_WHOLE();
	expect_child_ok(warn_direct_child, NULL);
	const char *after = strstr(child_err, "--- into the reserve\n");
	assert_non_null(after);
	assert_int_equal(occurrences(child_err, "warning"), 2);
	assert_int_equal(occurrences(after,
				     "libdynstack: warning: stack grew past its nominal size "
				     "into its reserve on stack "),
			 2);
	assert_int_equal(occurrences(child_err, "\"warn-direct\""), 1);
	assert_int_equal(occurrences(child_err, "\"warn-again\""), 1);
	/* How deep: the size, the reserve and how far below the stack. */
	char want[128];
	snprintf(want, sizeof(want), "\"warn-direct\" (size %zu, committed %zu, reserve %zu,",
		 16 * ps, 17 * ps, 2 * ps);
	expect_in_err(want);
	snprintf(want, sizeof(want), ", depth %zu, 1 bytes below the stack)", 16 * ps + 1);
	expect_in_err(want);
}

static int warn_coro_child(void *arg)
{
	char spec[64];
	struct deep d = { .bytes = 16 * ps + 2 * ps };

	snprintf(spec, sizeof(spec), "overflow=warn:%zu", 4 * ps);
	CHECK(dynstack_init(NULL) == 0);
	uint64_t w0 = stats_now().nr_dynamic_stacks_warnings;
	dynstack_coro_t *c = try_coro(deep_fn, &d, 16, "warn-coro", spec);
	CHECK(c != NULL);
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(d.levels > 0); /* every frame intact across the reserve faults */
	CHECK(dynstack_coro_status(c) == DYNSTACK_CORO_DEAD);
	CHECK(stats_now().nr_dynamic_stacks_warnings == w0 + 1);
	CHECK(dynstack_committed(dynstack_coro_stack(c)) >= 18 * ps);
	CHECK(dynstack_coro_destroy(c) == 0);
	return 0;
}

static void test_warn_coroutine(void **state)
{
	SKIP_IF_WHOLE();
	expect_child_ok(warn_coro_child, NULL);
	assert_int_equal(occurrences(child_err, "warning"), 1);
	expect_in_err("libdynstack: warning: stack grew past its nominal size into its reserve "
		      "on stack ");
	expect_in_err("\"warn-coro\"");
}

static int warn_past_reserve_child(void *arg)
{
	char spec[64];
	struct deep d = { .bytes = (size_t)1 << 30 };

	snprintf(spec, sizeof(spec), "overflow=warn:%zu", 2 * ps);
	CHECK(dynstack_init(NULL) == 0);
	dynstack_coro_t *c = try_coro(deep_fn, &d, 16, "warn-deep", spec);
	CHECK(c != NULL);
	dynstack_coro_resume(c);
	return 100; /* survived */
}

static void test_warn_past_reserve_dies(void **state)
{
	char want[128];

	expect_child_sigsegv(warn_past_reserve_child, NULL);
	/* The reserve is committed at creation where stacks are committed
	 * whole: no growth into it to warn about. */
	assert_int_equal(occurrences(child_err, "warning"), stacks_whole() ? 0 : 1);
	snprintf(want, sizeof(want), "libdynstack: stack overflow on stack ");
	expect_in_err(want);
	snprintf(want, sizeof(want), "\"warn-deep\" (size %zu, committed %zu, reserve %zu,",
		 16 * ps, 18 * ps, 2 * ps);
	expect_in_err(want);
	expect_in_err("bytes below the stack)");
}

static int abort_child(void *arg)
{
	struct deep d = { .bytes = (size_t)1 << 30 };

	CHECK(dynstack_init(NULL) == 0);
	dynstack_coro_t *c = try_coro(deep_fn, &d, 16, "abort-deep", "overflow=abort");
	CHECK(c != NULL);
	dynstack_coro_resume(c);
	return 100;
}

static void test_abort_explicit(void **state)
{
	expect_child_sigsegv(abort_child, NULL);
	expect_in_err("libdynstack: stack overflow on stack ");
	expect_in_err("\"abort-deep\"");
	expect_in_err(", policy step=1, ");
}

/* ---- overflow=fail */

struct keeper {
	int yielded;
	int intact;
};

/* Holds data on its stack across a yield; checks it afterwards. */
static void keeper_fn(void *arg)
{
	struct keeper *k = arg;
	volatile unsigned char buf[2048];

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)(i * 13 + 5);
	k->yielded = 1;
	dynstack_coro_yield();
	k->intact = 1;
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i] != (unsigned char)(i * 13 + 5))
			k->intact = 0;
}

static int fail_coro_child(void *arg)
{
	struct keeper k = { 0 };
	struct deep d = { .bytes = (size_t)1 << 30 };

	CHECK(dynstack_init(NULL) == 0);
	dynstack_stats_t s0 = stats_now();
	dynstack_coro_t *b = try_coro(keeper_fn, &k, 16, "keeper", NULL);
	CHECK(b != NULL);
	CHECK(dynstack_coro_resume(b) == 0 && k.yielded);

	dynstack_coro_t *a = try_coro(deep_fn, &d, 16, "fail-victim", "overflow=fail");
	CHECK(a != NULL);
	dynstack_t *as = dynstack_coro_stack(a);
	dynstack_stats_t s1 = stats_now();
	CHECK(dynstack_coro_resume(a) == -EOVERFLOW);
	dynstack_stats_t s2 = stats_now();
	CHECK(d.levels == 0); /* it never returned */
	CHECK(dynstack_coro_status(a) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_current() == NULL);
	CHECK(s2.nr_dynamic_stacks_failed == s1.nr_dynamic_stacks_failed + 1);
	CHECK(s2.nr_dynamic_stacks_overflows == s1.nr_dynamic_stacks_overflows + 1);
	/* Its stack is given back but for the top page (kept whole where it was
	 * committed whole). */
	size_t kept = stacks_whole() ? 16 * ps : ps;
	CHECK(dynstack_committed(as) == kept);
	CHECK(count_accessible(lo_of(as), dynstack_top(as)) == kept / ps);
	CHECK(s2.nr_dynamic_stacks_pages == s1.nr_dynamic_stacks_pages);
	CHECK(dynstack_coro_resume(a) == -EINVAL);

	/* The other coroutine is unaffected. */
	CHECK(dynstack_coro_resume(b) == 0);
	CHECK(k.intact);
	CHECK(dynstack_coro_status(b) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_destroy(a) == 0);
	CHECK(dynstack_coro_destroy(b) == 0);
	dynstack_stats_t s3 = stats_now();
	CHECK(s3.nr_dynamic_stacks == s0.nr_dynamic_stacks);
	CHECK(s3.nr_dynamic_stacks_pages == s0.nr_dynamic_stacks_pages);
	CHECK(s3.nr_dynamic_stacks_coros == s0.nr_dynamic_stacks_coros);

	/* The slot comes back sound: a normal run on it, then a second failure. */
	struct deep ok = { .bytes = 8 * ps };
	dynstack_coro_t *c = try_coro(deep_fn, &ok, 16, "fail-again", "overflow=fail");
	CHECK(c != NULL);
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(ok.levels > 0);
	CHECK(dynstack_coro_destroy(c) == 0);
	d.levels = 0;
	c = try_coro(deep_fn, &d, 16, "fail-again", "overflow=fail");
	CHECK(c != NULL);
	CHECK(dynstack_coro_resume(c) == -EOVERFLOW);
	CHECK(stats_now().nr_dynamic_stacks_failed == s1.nr_dynamic_stacks_failed + 2);
	CHECK(dynstack_coro_destroy(c) == 0);
	fprintf(stderr, "fail-child-done\n");
	return 0;
}

static void test_fail_coroutine(void **state)
{
	expect_child_ok(fail_coro_child, NULL);
	expect_in_err("fail-child-done");
	expect_in_err("libdynstack: stack overflow (overflow=fail: the coroutine is ended) on "
		      "stack ");
	expect_in_err("\"fail-victim\"");
	expect_in_err(", policy step=1,overflow=fail, ");
	assert_int_equal(occurrences(child_err, "overflow=fail: the coroutine is ended"), 2);
}

struct nest {
	dynstack_coro_t *self, *child;
	int rc, child_status, self_current;
	unsigned after;
};

static void nest_parent_fn(void *arg)
{
	struct nest *n = arg;

	n->rc = dynstack_coro_resume(n->child);
	n->child_status = dynstack_coro_status(n->child);
	n->self_current = dynstack_coro_current() == n->self;
	/* And the parent's own stack still grows. */
	n->after = touch_down(dynstack_top(dynstack_coro_stack(n->self)), 6 * ps);
}

static int fail_nested_child(void *arg)
{
	struct nest n = { 0 };
	struct deep d = { .bytes = (size_t)1 << 30 };

	CHECK(dynstack_init(NULL) == 0);
	n.child = try_coro(deep_fn, &d, 16, "fail-nested", "overflow=fail");
	n.self = try_coro(nest_parent_fn, &n, 16, "parent", NULL);
	CHECK(n.child && n.self);
	CHECK(dynstack_coro_resume(n.self) == 0);
	CHECK(n.rc == -EOVERFLOW);
	CHECK(n.child_status == DYNSTACK_CORO_DEAD);
	CHECK(n.self_current);
	CHECK(n.after > 0);
	CHECK(dynstack_coro_status(n.self) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_current() == NULL);
	CHECK(dynstack_coro_destroy(n.child) == 0);
	CHECK(dynstack_coro_destroy(n.self) == 0);
	return 0;
}

static void test_fail_nested(void **state)
{
	expect_child_ok(fail_nested_child, NULL);
	expect_in_err("\"fail-nested\"");
}

/* fail ends a coroutine running on the stack; a stack touched from outside
 * has no coroutine to end, so it aborts. */
static int fail_plain_child(void *arg)
{
	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = try_stack(16, "fail-plain", "overflow=fail");
	CHECK(s != NULL);
	touch_pages_down(lo_of(s), dynstack_top(s));
	poke(lo_of(s) - 1);
	return 100;
}

static void test_fail_plain_stack_aborts(void **state)
{
	expect_child_sigsegv(fail_plain_child, NULL);
	expect_in_err("libdynstack: stack overflow on stack ");
	expect_in_err("\"fail-plain\"");
	expect_in_err(", policy step=1,overflow=fail, ");
	assert_false(contains(child_err, "the coroutine is ended"));
}

static void yield_fn(void *arg)
{
	dynstack_coro_yield();
}

static int fail_suspended_child(void *arg)
{
	CHECK(dynstack_init(NULL) == 0);
	dynstack_coro_t *c = try_coro(yield_fn, NULL, 16, "fail-suspended", "overflow=fail");
	CHECK(c != NULL);
	CHECK(dynstack_coro_resume(c) == 0);
	poke(lo_of(dynstack_coro_stack(c)) - 1); /* from the main thread's stack */
	return 100;
}

static void test_fail_suspended_touched_aborts(void **state)
{
	expect_child_sigsegv(fail_suspended_child, NULL);
	expect_in_err("libdynstack: stack overflow on stack ");
	expect_in_err("\"fail-suspended\"");
	assert_false(contains(child_err, "the coroutine is ended"));
}

/* The coroutine is running, but on another thread: the fault is not its. */
static atomic_int spin_state;

static void spin_fn(void *arg)
{
	atomic_store(&spin_state, 1);
	while (atomic_load(&spin_state) != 2)
		;
}

static void *resume_thread(void *arg)
{
	dynstack_coro_resume(arg);
	return NULL;
}

static int fail_other_thread_child(void *arg)
{
	pthread_t t;

	CHECK(dynstack_init(NULL) == 0);
	dynstack_coro_t *c = try_coro(spin_fn, NULL, 16, "fail-running", "overflow=fail");
	CHECK(c != NULL);
	CHECK(pthread_create(&t, NULL, resume_thread, c) == 0);
	while (atomic_load(&spin_state) != 1)
		;
	CHECK(dynstack_coro_status(c) == DYNSTACK_CORO_RUNNING);
	poke(lo_of(dynstack_coro_stack(c)) - 1);
	return 100;
}

static void test_fail_other_thread_aborts(void **state)
{
	expect_child_sigsegv(fail_other_thread_child, NULL);
	expect_in_err("libdynstack: stack overflow on stack ");
	expect_in_err("\"fail-running\"");
	assert_false(contains(child_err, "the coroutine is ended"));
}

/* ---- user policies */

/* What the grow function saw last; it answers rec.answer. */
static struct rec {
	unsigned calls;
	dynstack_fault_info_t info;
	char name[DYNSTACK_NAME_MAX + 1];
	size_t answer;
} rec;

static size_t rec_grow(const dynstack_fault_info_t *info, void *data)
{
	struct rec *r = data;
	size_t i = 0;

	r->calls++;
	r->info = *info;
	for (; info->name && info->name[i] && i < DYNSTACK_NAME_MAX; i++)
		r->name[i] = info->name[i];
	r->name[i] = '\0';
	return r->answer;
}

static void register_rec(void)
{
	static bool done;
	dynstack_policy_t p = {
		.struct_size = sizeof(p),
		.name = "rec-policy",
		.grow = rec_grow,
		.data = &rec,
	};

	if (!done)
		assert_int_equal(dynstack_policy_register(&p), 0);
	done = true;
}

static void test_register_validation(void **state)
{
	static const char *const bad_names[] = {
		"",
		"Upper",
		"with space",
		"a=b",
		"a,b",
		"a:b",
		"dot.ted",
		"tab\t",
		"\xc3\xa9t\xc3\xa9",
		"abcdefghijklmnopqrstuvwxyz012345", /* 32 */
	};
	static const char *const builtins[] = { "step",	   "double",   "learn",	  "grow",
						"initial", "populate", "overflow" };
	char buf[32];
	dynstack_policy_t p = {
		.struct_size = sizeof(p),
		.name = "valid-name",
		.grow = rec_grow,
		.data = &rec,
	};

	assert_int_equal(dynstack_policy_register(NULL), -EINVAL);
	p.struct_size = 0;
	assert_int_equal(dynstack_policy_register(&p), -EINVAL);
	p.struct_size = sizeof(p) - 1;
	assert_int_equal(dynstack_policy_register(&p), -EINVAL);
	p.struct_size = sizeof(p);
	p.grow = NULL;
	assert_int_equal(dynstack_policy_register(&p), -EINVAL);
	p.grow = rec_grow;
	p.name = NULL;
	assert_int_equal(dynstack_policy_register(&p), -EINVAL);
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		p.name = bad_names[i];
		if (dynstack_policy_register(&p) != -EINVAL)
			fail_msg("name \"%s\" not refused with -EINVAL", bad_names[i]);
	}
	for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
		p.name = builtins[i];
		if (dynstack_policy_register(&p) != -EEXIST)
			fail_msg("built-in \"%s\" not refused with -EEXIST", builtins[i]);
	}
	/* A spec names a policy only once it is registered. */
	assert_int_equal(dynstack_policy_check("grow=late-name", NULL, 0), -EINVAL);
	assert_int_equal(dynstack_policy_check("late-name", NULL, 0), -EINVAL);
	/* The name is copied. */
	snprintf(buf, sizeof(buf), "late-name");
	p.name = buf;
	assert_int_equal(dynstack_policy_register(&p), 0);
	memset(buf, 'x', sizeof(buf) - 1);
	assert_int_equal(dynstack_policy_check("grow=late-name", NULL, 0), 0);
	assert_int_equal(dynstack_policy_check("late-name", NULL, 0), 0);
	struct ds_policy parsed;
	assert_int_equal(ds_policy_parse("populate,late-name", &parsed, NULL, 0), 0);
	assert_string_equal(parsed.spec, "grow=late-name,populate");
	assert_int_equal(ds_policy_parse("late-name=1", &parsed, NULL, 0), -EINVAL);
	assert_int_equal(ds_policy_parse("late-name,step=2", &parsed, NULL, 0), -EINVAL);
	/* Taken. */
	p.name = "late-name";
	assert_int_equal(dynstack_policy_register(&p), -EEXIST);
	/* 31 characters is the longest name. */
	p.name = "abcdefghijklmnopqrstuvwxyz01234";
	assert_int_equal(dynstack_policy_register(&p), 0);
}

static void test_strerror_eexist(void **state)
{
	assert_string_not_equal(dynstack_strerror(-EEXIST), "unknown error");
}

static int register_full_child(void *arg)
{
	char name[32];
	dynstack_policy_t p = {
		.struct_size = sizeof(p),
		.name = name,
		.grow = rec_grow,
		.data = &rec,
	};
	int rc = 0, n = 0;

	for (int i = 0; i < 2 * DS_USER_POLICIES_MAX && !rc; i++) {
		snprintf(name, sizeof(name), "fill-%d", i);
		if (!(rc = dynstack_policy_register(&p)))
			n++;
	}
	CHECK(rc == -ENOSPC);
	CHECK(n >= 1 && n <= DS_USER_POLICIES_MAX);
	snprintf(name, sizeof(name), "one-more");
	CHECK(dynstack_policy_register(&p) == -ENOSPC);
	snprintf(name, sizeof(name), "fill-0");
	CHECK(dynstack_policy_register(&p) == -EEXIST);
	/* What is registered still works. */
	CHECK(dynstack_policy_check("fill-0", NULL, 0) == 0);
	snprintf(name, sizeof(name), "fill-%d", n - 1);
	CHECK(dynstack_policy_check(name, NULL, 0) == 0);
	CHECK(dynstack_policy_check("one-more", NULL, 0) == -EINVAL);
	return 0;
}

static void test_register_full(void **state)
{
	expect_child_ok(register_full_child, NULL);
}

static void test_user_policy_info(void **state)
{
	SKIP_IF_WHOLE();
	char buf[DS_SPEC_MAX];

	TAKE_SIGSEGV();
	register_rec();
	dynstack_t *s = new_stack(16, "user-a", "rec-policy");
	assert_string_equal(dynstack_policy_of(s), "grow=rec-policy");

	rec.calls = 0;
	rec.answer = 0; /* below depth: clamped to the faulting page */
	poke(page_of(s, 3));
	assert_int_equal(rec.calls, 1);
	assert_int_equal(rec.info.page_size, ps);
	assert_int_equal(rec.info.size, 16 * ps);
	assert_int_equal(rec.info.limit, 16 * ps);
	assert_int_equal(rec.info.committed, ps);
	assert_int_equal(rec.info.depth, 3 * ps);
	assert_int_equal(rec.info.peak, ps);
	assert_int_equal(rec.info.faults, 0);
	assert_int_equal(rec.info.id, dynstack_id(s));
	assert_string_equal(rec.name, "user-a");
	assert_int_equal(committed_pages(s), 3);

	rec.answer = 5 * ps + 1; /* rounded up */
	poke(page_of(s, 4));
	assert_int_equal(rec.calls, 2);
	assert_int_equal(rec.info.committed, 3 * ps);
	assert_int_equal(rec.info.depth, 4 * ps);
	assert_int_equal(rec.info.peak, 3 * ps);
	assert_int_equal(rec.info.faults, 1);
	assert_int_equal(committed_pages(s), 6);

	rec.answer = SIZE_MAX; /* clamped to the limit */
	poke(page_of(s, 7));
	assert_int_equal(rec.calls, 3);
	assert_int_equal(rec.info.faults, 2);
	assert_int_equal(committed_pages(s), 16);
	touch_pages_down(lo_of(s), dynstack_top(s));
	assert_int_equal(rec.calls, 3);
	assert_int_equal(dynstack_destroy(s), 0);

	/* With a modifier, and as the process default. */
	s = new_stack(16, "user-b", "grow=rec-policy,populate");
	assert_string_equal(dynstack_policy_of(s), "grow=rec-policy,populate");
	rec.answer = 4 * ps;
	uint64_t p0 = stats_now().nr_dynamic_stacks_populated;
	poke(page_of(s, 2));
	assert_int_equal(committed_pages(s), 4);
	assert_int_equal(stats_now().nr_dynamic_stacks_populated - p0, 3);
	assert_int_equal(dynstack_destroy(s), 0);

	assert_int_equal(dynstack_policy_set("rec-policy"), 0);
	assert_int_equal(dynstack_policy_get(buf, sizeof(buf)), strlen("grow=rec-policy"));
	assert_string_equal(buf, "grow=rec-policy");
	s = new_stack(16, "user-default", NULL);
	rec.calls = 0;
	rec.answer = 0;
	poke(page_of(s, 2));
	assert_int_equal(rec.calls, 1);
	assert_string_equal(rec.name, "user-default");
	assert_int_equal(dynstack_destroy(s), 0);
}

static int user_reserve_child(void *arg)
{
	char spec[64];

	snprintf(spec, sizeof(spec), "grow=rec-policy,overflow=warn:%zu", 2 * ps);
	CHECK(dynstack_init(NULL) == 0);
	dynstack_t *s = try_stack(16, "user-reserve", spec);
	CHECK(s != NULL);
	rec.answer = SIZE_MAX; /* all it may: the nominal size, not the reserve */
	poke(page_of(s, 2));
	CHECK(rec.info.limit == 16 * ps);
	CHECK(committed_pages(s) == 16);
	poke(lo_of(s) - 1); /* in the reserve: now the limit includes it */
	CHECK(rec.info.size == 16 * ps);
	CHECK(rec.info.limit == 18 * ps);
	CHECK(rec.info.depth == 17 * ps);
	CHECK(committed_pages(s) == 18);
	CHECK(stats_now().nr_dynamic_stacks_warnings == 1);
	CHECK(dynstack_destroy(s) == 0);
	return 0;
}

static void test_user_policy_limit_in_reserve(void **state)
{
	SKIP_IF_WHOLE();
	register_rec();
	expect_child_ok(user_reserve_child, NULL);
	assert_int_equal(occurrences(child_err, "warning"), 1);
	expect_in_err("\"user-reserve\"");
}

/* ---- DYNSTACK_POLICY, in a fresh process */

/* Runs as `test_policy --env-policy`: reports what init made of the
 * environment, then how a stack under the default grows. */
static int env_policy_main(void)
{
	char buf[DS_SPEC_MAX];
	int rc = dynstack_init(NULL);

	ps = page_size();
	fprintf(stderr, "init=%d\n", rc);
	if (rc)
		return 0;
	dynstack_policy_get(buf, sizeof(buf));
	fprintf(stderr, "default=%s\n", buf);
	dynstack_t *s = try_stack(16, "env", NULL);
	if (!s)
		return 1;
	fprintf(stderr, "of=%s\n", dynstack_policy_of(s));
	uint64_t f0 = faults_now();
	touch_pages_down(page_of(s, 9), dynstack_top(s));
	fprintf(stderr, "faults=%llu\n", (unsigned long long)(faults_now() - f0));
	dynstack_destroy(s);
	return 0;
}

/* `test_policy --get-first`: the default as seen before anything else. */
static int get_first_main(void)
{
	char buf[DS_SPEC_MAX];

	if (dynstack_policy_get(buf, sizeof(buf)) < 0)
		return 1;
	fprintf(stderr, "default=%s\n", buf);
	return 0;
}

static void run_env(const char *mode, const char *policy_env)
{
	const char *env[] = { policy_env, NULL };
	int status;

	assert_int_equal(run_self(mode, env, &status, child_err, sizeof(child_err)), 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("child %s; its stderr:\n%s", describe_status(status), child_err);
}

static void test_env_policy_valid(void **state)
{
	char v[DS_SPEC_MAX];

	run_env("--env-policy", "DYNSTACK_POLICY=populate,step=4");
	assert_non_null(value_of(child_err, "init", v, sizeof(v)));
	assert_string_equal(v, "0");
	assert_non_null(value_of(child_err, "default", v, sizeof(v)));
	assert_string_equal(v, "step=4,populate");
	assert_non_null(value_of(child_err, "of", v, sizeof(v)));
	assert_string_equal(v, "step=4,populate");
	assert_non_null(value_of(child_err, "faults", v, sizeof(v)));
	assert_string_equal(v, stacks_whole() ? "0" : "2");

	/* Empty or unset: the built-in default. */
	run_env("--env-policy", "DYNSTACK_POLICY=");
	assert_non_null(value_of(child_err, "default", v, sizeof(v)));
	assert_string_equal(v, "step=1");
	assert_non_null(value_of(child_err, "faults", v, sizeof(v)));
	assert_string_equal(v, stacks_whole() ? "0" : "8");
	run_env("--env-policy", "DYNSTACK_POLICY");
	assert_non_null(value_of(child_err, "default", v, sizeof(v)));
	assert_string_equal(v, "step=1");
}

static void test_env_policy_invalid(void **state)
{
	char v[64];

	run_env("--env-policy", "DYNSTACK_POLICY=step=0");
	assert_non_null(value_of(child_err, "init", v, sizeof(v)));
	assert_int_equal(atoi(v), -EINVAL);
	expect_in_err("libdynstack: DYNSTACK_POLICY=\"step=0\" is not valid: step=N needs N pages");
	run_env("--env-policy", "DYNSTACK_POLICY=learn,bogus");
	assert_non_null(value_of(child_err, "init", v, sizeof(v)));
	assert_int_equal(atoi(v), -EINVAL);
	expect_in_err("DYNSTACK_POLICY=\"learn,bogus\" is not valid: unknown item \"bogus\"");
}

static void test_get_before_init_sees_env(void **state)
{
	char v[DS_SPEC_MAX];
	run_env("--get-first", "DYNSTACK_POLICY=step=4");
	assert_non_null(value_of(child_err, "default", v, sizeof(v)));
	assert_string_equal(v, "step=4");
}

int main(int argc, char **argv)
{
	ps = page_size();
	if (argc > 1) {
		if (strcmp(argv[1], "--env-policy") == 0)
			return env_policy_main();
		if (strcmp(argv[1], "--get-first") == 0)
			return get_first_main();
		return 64;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_accepts_documented_forms),
		cmocka_unit_test(test_parse_fields),
		cmocka_unit_test_teardown(test_get_set_of, restore_default),
		cmocka_unit_test(test_get_check_misuse),
		cmocka_unit_test(test_corpus_files_match_table),
		cmocka_unit_test(test_corpus_rejected),

		cmocka_unit_test(test_set_bad_spec_reports),
		cmocka_unit_test(test_decide_pure),
		cmocka_unit_test(test_step1_one_fault_per_page),
		cmocka_unit_test(test_step4_one_fault_per_four_pages),
		cmocka_unit_test(test_double),
		cmocka_unit_test(test_learn_recycled_coroutine),
		cmocka_unit_test(test_learn_by_slot),
		cmocka_unit_test(test_learn_by_name),
		cmocka_unit_test_teardown(test_initial, restore_default),
		cmocka_unit_test_teardown(test_attr_policy_overrides_default, restore_default),
		cmocka_unit_test(test_populate),
		cmocka_unit_test(test_warn_direct),
		cmocka_unit_test(test_warn_coroutine),
		cmocka_unit_test(test_warn_past_reserve_dies),
		cmocka_unit_test(test_abort_explicit),
		cmocka_unit_test(test_fail_coroutine),
		cmocka_unit_test(test_fail_nested),
		cmocka_unit_test(test_fail_plain_stack_aborts),
		cmocka_unit_test(test_fail_suspended_touched_aborts),
		cmocka_unit_test(test_fail_other_thread_aborts),
		cmocka_unit_test(test_register_validation),
		cmocka_unit_test(test_strerror_eexist),
		cmocka_unit_test(test_register_full),
		cmocka_unit_test_teardown(test_user_policy_info, restore_default),
		cmocka_unit_test(test_user_policy_limit_in_reserve),
		cmocka_unit_test(test_env_policy_valid),
		cmocka_unit_test(test_env_policy_invalid),
		cmocka_unit_test(test_get_before_init_sees_env),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
