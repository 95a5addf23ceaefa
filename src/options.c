/* Process-wide options: defaults, the caller's config, then DYNSTACK_*
 * environment variables on top. Read once, at init; the handler only ever
 * reads the resulting ds_opt. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

struct ds_options ds_opt;

DYNSTACK_API int dynstack_config_init(dynstack_config_t *cfg)
{
	if (!cfg)
		return -EINVAL;
	memset(cfg, 0, sizeof(*cfg));
	cfg->struct_size = sizeof(*cfg);
	cfg->backend = DYNSTACK_BACKEND_AUTO;
	cfg->default_size = DYNSTACK_DEFAULT_SIZE;
	cfg->sync_stack_size = DYNSTACK_MIN_SYNC_STACK;
	cfg->stats_at_exit = 0;
	cfg->cache_stacks = 16;
	cfg->cache_pages = 4096;
	cfg->trim_batch = 256;
	return 0;
}

/* Parse a byte count with an optional k/K/m/M/g/G suffix. The whole string
 * must be consumed: "16x" is an error, not 16. It starts with a digit:
 * strtoull would also take leading blanks, a sign, or "-1" as 2^64 - 1. */
static int parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	if (*s < '0' || *s > '9')
		return -EINVAL;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	default:
		break;
	}
	if (*end || (shift && v > (~0ull >> shift)))
		return -EINVAL;
	*out = (size_t)(v << shift);
	return 0;
}

static int env_error(const char *name, const char *value, const char *expect)
{
	fprintf(stderr, "libdynstack: %s=\"%s\" is not valid (expected %s)\n", name, value, expect);
	return -EINVAL;
}

int ds_options_from_env(dynstack_config_t *cfg)
{
	const char *v;
	if ((v = getenv("DYNSTACK_BACKEND")) && *v) {
		if (!strcasecmp(v, "guard"))
			cfg->backend = DYNSTACK_BACKEND_GUARD;
		else if (!strcasecmp(v, "mprotect"))
			cfg->backend = DYNSTACK_BACKEND_MPROTECT;
		else if (!strcasecmp(v, "auto"))
			cfg->backend = DYNSTACK_BACKEND_AUTO;
		else
			return env_error("DYNSTACK_BACKEND", v, "guard, mprotect or auto");
	}
	if ((v = getenv("DYNSTACK_SIZE")) && *v) {
		size_t sz;
		if (parse_size(v, &sz) || !sz || sz > DYNSTACK_MAX_SIZE)
			return env_error("DYNSTACK_SIZE", v,
					 "a byte count like 16384 or 64k, <= 1G");
		cfg->default_size = sz;
	}
	/* The ranges are ds_options_validate's: a value accepted here must not
	 * make dynstack_init fail without saying which variable was wrong. */
	static const struct {
		const char *name;
		size_t offset, min, max;
		const char *expect;
	} counts[] = {
		{ "DYNSTACK_CACHE", offsetof(dynstack_config_t, cache_stacks), 0, 4096,
		  "a count, 0 to 4096" },
		{ "DYNSTACK_CACHE_PAGES", offsetof(dynstack_config_t, cache_pages), 0,
		  (size_t)1 << 30, "a count of pages, 0 to 1073741824" },
		{ "DYNSTACK_TRIM_BATCH", offsetof(dynstack_config_t, trim_batch), 1,
		  (size_t)1 << 20, "a count of pages, 1 to 1048576" },
	};
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		if ((v = getenv(counts[i].name)) && *v) {
			char *end;
			errno = 0;
			unsigned long long n = strtoull(v, &end, 10);
			if (*v < '0' || *v > '9' || errno || *end || n < counts[i].min ||
			    n > counts[i].max)
				return env_error(counts[i].name, v, counts[i].expect);
			*(size_t *)((char *)cfg + counts[i].offset) = (size_t)n;
		}
	}
	static const struct {
		const char *name;
		size_t offset;
	} flags[] = {
		{ "DYNSTACK_STATS", offsetof(dynstack_config_t, stats_at_exit) },
		{ "DYNSTACK_SHARED_POISON", offsetof(dynstack_config_t, shared_poison) },
		{ "DYNSTACK_CHECK_HANDLES", offsetof(dynstack_config_t, check_handles) },
	};
	for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
		if ((v = getenv(flags[i].name)) && *v) {
			if (strcmp(v, "0") && strcmp(v, "1"))
				return env_error(flags[i].name, v, "0 or 1");
			*(int *)((char *)cfg + flags[i].offset) = *v == '1';
		}
	}
	return 0;
}

int ds_options_validate(const dynstack_config_t *cfg)
{
	if (cfg->struct_size != sizeof(*cfg))
		return -EINVAL;
	if (cfg->backend < DYNSTACK_BACKEND_AUTO || cfg->backend > DYNSTACK_BACKEND_MPROTECT)
		return -EINVAL;
	if (!cfg->default_size || cfg->default_size > DYNSTACK_MAX_SIZE)
		return -EINVAL;
	if (cfg->cache_stacks > 4096 || !cfg->trim_batch)
		return -EINVAL;
	if (cfg->sync_stack_size < DYNSTACK_MIN_SYNC_STACK ||
	    cfg->sync_stack_size > ((size_t)1 << 30))
		return -EINVAL;
	return 0;
}
