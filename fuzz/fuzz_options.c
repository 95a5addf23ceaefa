/* libFuzzer target for the DYNSTACK_* environment parser (src/options.c): the
 * input, cut into lines, is the whole environment ("NAME=VALUE" or anything
 * else, as environ may hold), and ds_options_from_env applies it on top of
 * the defaults. An independent model of the documented syntax (docs/api.md,
 * "Environment variables") says what each variable must do; beyond not
 * crashing: the parser and the model agree on the result and on every field,
 * also on failure (the variables before the bad one are applied: the parser
 * is not transactional, which dynstack_init does not mind, as it parses into
 * a copy and drops it); every field is in its documented range; an accepted
 * environment passes ds_options_validate (so dynstack_init cannot fail later
 * without naming the variable); and a rejected one is named on stderr.
 * stderr is captured around the call: the messages are checked, not
 * printed (sanitizer reports still go to the real stderr).
 * Built with -DDS_FUZZ_STANDALONE (and driver.c) it is a plain program that
 * runs every file (or every file of every directory) named on its command
 * line: the corpus as a regular test, with any compiler. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dynstack.h"
#include "driver.h"
#include "internal.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_SANITIZER 1
#endif
#ifdef FUZZ_SANITIZER
void __sanitizer_set_report_fd(void *fd);
#endif

#define MAX_LINES 64
/* Longer inputs are cut: the message that quotes a value must fit in the pipe. */
#define FUZZ_MAX_INPUT (16 * 1024)
#define SIZE_MAX_ALLOWED ((uint64_t)DYNSTACK_MAX_SIZE)

extern char **environ;

static const char *fuzz_input = "";

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_options: %s:%d: %s fails for environment:\n%s\n",    \
				__FILE__, __LINE__, #cond, fuzz_input);                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* ---- the model: what docs/api.md says, written without strtoull */

/* getenv over env: the first entry that is exactly NAME=... */
static const char *model_getenv(char *const *env, const char *name)
{
	size_t n = strlen(name);
	for (; *env; env++)
		if (!strncmp(*env, name, n) && (*env)[n] == '=')
			return *env + n + 1;
	return NULL;
}

/* Decimal digits, then (sizes only) one of kKmMgG; nothing else. */
static bool model_number(const char *s, bool suffix, uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;
	if (*p < '0' || *p > '9')
		return false;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	unsigned shift = 0;
	if (suffix && *p) {
		switch (*p++) {
		case 'k':
		case 'K':
			shift = 10;
			break;
		case 'm':
		case 'M':
			shift = 20;
			break;
		case 'g':
		case 'G':
			shift = 30;
			break;
		default:
			return false;
		}
	}
	if (*p || (shift && v > (UINT64_MAX >> shift)))
		return false;
	*out = v << shift;
	return true;
}

/* Apply env to *cfg in the parser's order; the name of the first bad variable, or NULL. */
static const char *model_apply(char *const *env, dynstack_config_t *cfg)
{
	const char *v;
	uint64_t n;

	if ((v = model_getenv(env, "DYNSTACK_BACKEND")) && *v) {
		if (!strcasecmp(v, "guard"))
			cfg->backend = DYNSTACK_BACKEND_GUARD;
		else if (!strcasecmp(v, "mprotect"))
			cfg->backend = DYNSTACK_BACKEND_MPROTECT;
		else if (!strcasecmp(v, "auto"))
			cfg->backend = DYNSTACK_BACKEND_AUTO;
		else
			return "DYNSTACK_BACKEND";
	}
	if ((v = model_getenv(env, "DYNSTACK_SIZE")) && *v) {
		if (!model_number(v, true, &n) || n < 1 || n > SIZE_MAX_ALLOWED)
			return "DYNSTACK_SIZE";
		cfg->default_size = (size_t)n;
	}
	static const struct {
		const char *name;
		size_t offset;
		uint64_t min, max;
	} counts[] = {
		{ "DYNSTACK_CACHE", offsetof(dynstack_config_t, cache_stacks), 0, 4096 },
		{ "DYNSTACK_CACHE_PAGES", offsetof(dynstack_config_t, cache_pages), 0,
		  (uint64_t)1 << 30 },
		{ "DYNSTACK_TRIM_BATCH", offsetof(dynstack_config_t, trim_batch), 1,
		  (uint64_t)1 << 20 },
	};
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		if ((v = model_getenv(env, counts[i].name)) && *v) {
			if (!model_number(v, false, &n) || n < counts[i].min || n > counts[i].max)
				return counts[i].name;
			*(size_t *)((char *)cfg + counts[i].offset) = (size_t)n;
		}
	}
	static const struct {
		const char *name;
		size_t offset;
	} flags[] = {
		{ "DYNSTACK_STATS", offsetof(dynstack_config_t, stats_at_exit) },
		{ "DYNSTACK_SHARED_POISON", offsetof(dynstack_config_t, shared_poison) },
	};
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		if ((v = model_getenv(env, flags[i].name)) && *v) {
			if (strcmp(v, "0") && strcmp(v, "1"))
				return flags[i].name;
			*(int *)((char *)cfg + flags[i].offset) = *v == '1';
		}
	}
	return NULL;
}

/* ---- stderr, captured around the call */

static int err_pipe[2] = { -1, -1 };
static int real_stderr = -1;

static void capture_init(void)
{
	if (real_stderr >= 0)
		return;
	if ((real_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3)) < 0 ||
	    pipe2(err_pipe, O_CLOEXEC | O_NONBLOCK)) {
		perror("fuzz_options: set-up");
		abort();
	}
#ifdef FUZZ_SANITIZER
	/* A sanitizer report from inside the parser must not go into the pipe. */
	__sanitizer_set_report_fd((void *)(intptr_t)real_stderr);
#endif
}

static void capture_begin(void)
{
	dup2(err_pipe[1], STDERR_FILENO);
}

/* Restore stderr; what was written meanwhile goes to buf (NUL-terminated). */
static void capture_end(char *buf, size_t len)
{
	size_t n = 0;
	ssize_t got;
	dup2(real_stderr, STDERR_FILENO);
	while (n < len - 1 && (got = read(err_pipe[0], buf + n, len - 1 - n)) > 0)
		n += (size_t)got;
	buf[n] = '\0';
}

/* ---- the target */

static bool same_config(const dynstack_config_t *a, const dynstack_config_t *b)
{
	return a->struct_size == b->struct_size && a->backend == b->backend &&
	       a->default_size == b->default_size && a->sync_stack_size == b->sync_stack_size &&
	       a->stats_at_exit == b->stats_at_exit && a->cache_stacks == b->cache_stacks &&
	       a->cache_pages == b->cache_pages && a->trim_batch == b->trim_batch &&
	       a->shared_poison == b->shared_poison;
}

static void check_ranges(const dynstack_config_t *c, const dynstack_config_t *init)
{
	FUZZ_CHECK(c->struct_size == sizeof(*c));
	FUZZ_CHECK(c->backend == DYNSTACK_BACKEND_AUTO || c->backend == DYNSTACK_BACKEND_GUARD ||
		   c->backend == DYNSTACK_BACKEND_MPROTECT);
	FUZZ_CHECK(c->default_size >= 1 && c->default_size <= DYNSTACK_MAX_SIZE);
	FUZZ_CHECK(c->sync_stack_size == init->sync_stack_size); /* no variable for it */
	FUZZ_CHECK(c->stats_at_exit == 0 || c->stats_at_exit == 1);
	FUZZ_CHECK(c->shared_poison == 0 || c->shared_poison == 1);
	FUZZ_CHECK(c->cache_stacks <= 4096);
	FUZZ_CHECK(c->cache_pages <= ((size_t)1 << 30));
	FUZZ_CHECK(c->trim_batch >= 1 && c->trim_batch <= ((size_t)1 << 20));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char msg[FUZZ_MAX_INPUT + 1024];
	char *lines[MAX_LINES + 1];
	size_t n = 0;

	if (size > FUZZ_MAX_INPUT)
		size = FUZZ_MAX_INPUT;
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0'; /* an embedded NUL ends the input, as it would end a variable */
	fuzz_input = text;
	/* A copy to cut into lines, so that a failure can print the input whole;
	 * one more NUL after it, as glibc's getenv reads the first two bytes of
	 * every entry, also of an empty one (the kernel's environment block is
	 * contiguous, so this never matters outside the fuzzer). */
	char *env_text = malloc(size + 2);
	if (!env_text) {
		free(text);
		return 0;
	}
	memcpy(env_text, text, size + 1);
	env_text[size + 1] = '\0';
	for (char *p = env_text; n < MAX_LINES;) {
		char *nl = strchr(p, '\n');
		lines[n++] = p;
		if (!nl)
			break;
		*nl = '\0';
		p = nl + 1;
	}
	lines[n] = NULL;

	dynstack_config_t init, cfg, want;
	FUZZ_CHECK(dynstack_config_init(&init) == 0);
	cfg = want = init;
	const char *bad = model_apply(lines, &want);

	capture_init();
	char **saved = environ;
	environ = lines;
	capture_begin();
	int rc = ds_options_from_env(&cfg);
	capture_end(msg, sizeof(msg));
	environ = saved;

	FUZZ_CHECK(rc == 0 || rc == -EINVAL);
	FUZZ_CHECK((rc == 0) == (bad == NULL));
	FUZZ_CHECK(same_config(&cfg, &want));
	check_ranges(&cfg, &init);
	if (rc == 0) {
		FUZZ_CHECK(msg[0] == '\0');
		FUZZ_CHECK(ds_options_validate(&cfg) == 0);
	} else {
		/* One line: "libdynstack: NAME="VALUE" is not valid (expected ...)". */
		char head[64];
		snprintf(head, sizeof(head), "libdynstack: %s=\"", bad);
		FUZZ_CHECK(strncmp(msg, head, strlen(head)) == 0);
		FUZZ_CHECK(strstr(msg, "\" is not valid (expected ") != NULL);
	}
	free(env_text);
	free(text);
	fuzz_input = "";
	return 0;
}

#ifdef DS_FUZZ_STANDALONE
int main(int argc, char **argv)
{
	return fuzz_driver_main("fuzz_options", argc, argv);
}
#endif
