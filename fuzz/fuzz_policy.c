/* libFuzzer target for the policy spec parser (src/policy.c): any bytes, as a
 * NUL-terminated string, through dynstack_policy_check and ds_policy_parse.
 * Beyond not crashing: both agree; a rejected spec comes with a message; an
 * accepted one has every value in its documented range, a canonical text that
 * parses back to itself, and grow decisions within [depth, limit]. Any
 * violation aborts, which libFuzzer reports as a crash.
 * Built with -DDS_FUZZ_STANDALONE (and driver.c) it is a plain program that
 * runs every file (or every file of every directory) named on its command
 * line: the corpus as a regular test, with any compiler. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "dynstack.h"
#include "policy.h"

#define SIZE_LIMIT ((size_t)1 << 30) /* sizes are 1..1G (docs/policies.md) */
#define STEP_LIMIT 4096

#define FUZZ_CHECK(cond, spec)                                                                     \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz_policy: %s:%d: %s fails for spec \"%s\"\n",          \
				__FILE__, __LINE__, #cond, spec);                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* A user policy whose answers go anywhere, so that the clamping is fuzzed too;
 * registered under two names so that grow=NAME and NAME alone parse. */
static size_t wild_grow(const dynstack_fault_info_t *info, void *data)
{
	(void)data;
	return (info->learned ^ info->committed) * (info->faults + 1) + info->depth / 3;
}

static void register_users(void)
{
	static bool done;
	static const char *const names[] = { "fz", "worker-4" };

	if (done)
		return;
	done = true;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		dynstack_policy_t p = {
			.struct_size = sizeof(p),
			.name = names[i],
			.grow = wild_grow,
		};
		if (dynstack_policy_register(&p)) {
			fprintf(stderr, "fuzz_policy: cannot register \"%s\"\n", names[i]);
			abort();
		}
	}
}

static bool in_size_range(size_t v)
{
	return v >= 1 && v <= SIZE_LIMIT;
}

static void check_accepted(const char *spec, const struct ds_policy *p)
{
	struct ds_policy q;
	char err[160] = "";

	FUZZ_CHECK(p->spec[0] && strlen(p->spec) < DS_SPEC_MAX, spec);
	switch (p->grow) {
	case DS_GROW_STEP:
		FUZZ_CHECK(p->step >= 1 && p->step <= STEP_LIMIT, spec);
		break;
	case DS_GROW_DOUBLE:
		FUZZ_CHECK(in_size_range(p->cap), spec);
		break;
	case DS_GROW_LEARN:
		break;
	case DS_GROW_USER:
		FUZZ_CHECK(p->user && p->user->grow, spec);
		break;
	default:
		FUZZ_CHECK(!"a grow kind", spec);
	}
	FUZZ_CHECK((p->grow == DS_GROW_USER) == (p->user != NULL), spec);
	FUZZ_CHECK(p->initial == 0 || in_size_range(p->initial), spec);
	FUZZ_CHECK((p->overflow == DYNSTACK_OVERFLOW_WARN) == (p->reserve != 0), spec);
	FUZZ_CHECK(p->reserve == 0 || in_size_range(p->reserve), spec);

	/* The canonical text is a spec for the same policy, and its own canonical. */
	FUZZ_CHECK(ds_policy_parse(p->spec, &q, err, sizeof(err)) == 0, p->spec);
	FUZZ_CHECK(strcmp(q.spec, p->spec) == 0, spec);
	FUZZ_CHECK(q.grow == p->grow && q.step == p->step && q.cap == p->cap, spec);
	FUZZ_CHECK(q.user == p->user && q.initial == p->initial && q.populate == p->populate, spec);
	FUZZ_CHECK(q.overflow == p->overflow && q.reserve == p->reserve, spec);
}

/* Decisions on a few faults drawn from the input bytes: always a whole
 * number of pages, from the faulting page down to the limit at most. */
static void check_decisions(const char *spec, const struct ds_policy *p, const uint8_t *data,
			    size_t size)
{
	const size_t ps = 4096;
	uint64_t h = 1469598103934665603u;

	for (size_t round = 0; round < 4; round++) {
		for (size_t i = 0; i < size; i++)
			h = (h ^ data[i]) * 1099511628211u;
		h ^= round;
		size_t pages = 1 + (h % 1024);
		size_t reserve = p->overflow == DYNSTACK_OVERFLOW_WARN ? (h >> 10) % 64 : 0;
		size_t limit_pages = pages + reserve;
		size_t committed = 1 + (h >> 16) % limit_pages;
		if (committed == limit_pages)
			committed--;
		if (!committed)
			continue; /* a one-page stack never faults */
		size_t depth = committed + 1 + (h >> 26) % (limit_pages - committed);
		dynstack_fault_info_t info = {
			.page_size = ps,
			.size = pages * ps,
			.limit = limit_pages * ps,
			.committed = committed * ps,
			.depth = depth * ps,
			.peak = committed * ps,
			.learned = ((h >> 36) % 4096) * ps + ((h >> 52) & 1),
			.faults = (h >> 40) % 100,
			.id = 1,
			.name = "fuzz",
		};
		size_t t = ds_policy_decide_sigsafe(p, &info);
		FUZZ_CHECK(t % ps == 0, spec);
		FUZZ_CHECK(t >= info.depth && t <= info.limit, spec);
	}
	size_t init = ds_policy_initial(p, 64 * ps, ps);
	FUZZ_CHECK(init >= ps && init <= 64 * ps && init % ps == 0, spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *spec = malloc(size + 1);
	char err[160], err2[160], small[8];
	struct ds_policy p;

	if (!spec)
		return 0;
	register_users();
	memcpy(spec, data, size);
	spec[size] = '\0';

	memset(err, 0, sizeof(err));
	memset(err2, 0, sizeof(err2));
	int rc = dynstack_policy_check(spec, err, sizeof(err));
	int rc2 = ds_policy_parse(spec, &p, err2, sizeof(err2));
	FUZZ_CHECK(rc == 0 || rc == -EINVAL, spec);
	FUZZ_CHECK(rc == rc2, spec);
	FUZZ_CHECK(dynstack_policy_check(spec, NULL, 0) == rc, spec);
	if (rc) {
		/* A reason, whole in a big buffer, its start in a small one. */
		FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)), spec);
		FUZZ_CHECK(strcmp(err, err2) == 0, spec);
		memset(small, 'x', sizeof(small));
		size_t n = 1 + size % (sizeof(small) - 1);
		FUZZ_CHECK(dynstack_policy_check(spec, small, n) == rc, spec);
		FUZZ_CHECK(small[n - 1] == '\0' && strncmp(small, err, n - 1) == 0, spec);
		FUZZ_CHECK(n == sizeof(small) || small[n] == 'x', spec);
	} else {
		check_accepted(spec, &p);
		check_decisions(spec, &p, data, size);
	}
	free(spec);
	return 0;
}

#ifdef DS_FUZZ_STANDALONE
int main(int argc, char **argv)
{
	return fuzz_driver_main("fuzz_policy", argc, argv);
}
#endif
