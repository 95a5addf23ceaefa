/* Fault policies: the spec parser, the registry of user policies, the intern
 * table, and the grow decision. The decision runs in the SIGSEGV handler and
 * is a pure function of the policy and the fault; everything else runs at
 * set-up time under a mutex the handler never takes. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "policy.h"
#include "trace.h"

#define DS_DOUBLE_CAP_DEFAULT ((size_t)256 << 10)
#define DS_STEP_MAX 4096
#define DS_SIZE_MAX ((size_t)1 << 30)

static pthread_mutex_t policy_lock = PTHREAD_MUTEX_INITIALIZER;

/* Registered user policies: appended under the lock, never changed after. */
struct user_policy {
	dynstack_policy_t pub;
	char name[32];
};
static struct user_policy users[DS_USER_POLICIES_MAX];
static _Atomic unsigned nusers;

/* Interned parsed policies: appended under the lock, never changed after,
 * so stacks and the handler hold plain pointers into it. */
static struct ds_policy interned[DS_POLICIES_MAX];
static _Atomic uint32_t ninterned;
static const struct ds_policy *_Atomic default_policy;

static const char *const builtin_names[] = { "step",	"double",   "learn",   "grow",
					     "initial", "populate", "overflow" };

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* A decimal count, whole string, in [lo, hi]. */
static int parse_count(const char *s, size_t len, unsigned long lo, unsigned long hi,
		       unsigned long *out)
{
	unsigned long v = 0;
	if (!len)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		unsigned long d = (unsigned long)(s[i] - '0');
		if (v > hi / 10 || (v == hi / 10 && d > hi % 10))
			return -EINVAL; /* past hi (and so never about to wrap) */
		v = v * 10 + d;
	}
	if (v < lo)
		return -EINVAL;
	*out = v;
	return 0;
}

/* A byte size: decimal with an optional k/K/m/M/g/G suffix, in [1, 1 GiB]. */
static int parse_bytes(const char *s, size_t len, size_t *out)
{
	unsigned shift = 0;
	if (len) {
		switch (s[len - 1]) {
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
			break;
		}
	}
	unsigned long v;
	if (parse_count(s, len - (shift ? 1 : 0), 1, DS_SIZE_MAX >> shift, &v))
		return -EINVAL;
	*out = (size_t)v << shift;
	return 0;
}

static const struct user_policy *user_find(const char *name, size_t len)
{
	unsigned n = atomic_load_explicit(&nusers, memory_order_acquire);
	for (unsigned i = 0; i < n; i++)
		if (strlen(users[i].name) == len && !memcmp(users[i].name, name, len))
			return &users[i];
	return NULL;
}

static void append(char *buf, size_t *pos, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf + *pos, DS_SPEC_MAX - *pos, fmt, ap);
	va_end(ap);
	if (n > 0)
		*pos += (size_t)n < DS_SPEC_MAX - *pos ? (size_t)n : DS_SPEC_MAX - 1 - *pos;
}

static void format_bytes(char *buf, size_t *pos, size_t v)
{
	if (v % (1u << 20) == 0)
		append(buf, pos, "%zuM", v >> 20);
	else if (v % 1024 == 0)
		append(buf, pos, "%zuk", v >> 10);
	else
		append(buf, pos, "%zu", v);
}

/* The canonical text: grow rule, then the other items in a fixed order,
 * defaults left out, so that equal policies intern to one entry. */
static void canonicalize(struct ds_policy *p)
{
	size_t pos = 0;
	switch (p->grow) {
	case DS_GROW_STEP:
		append(p->spec, &pos, "step=%u", p->step);
		break;
	case DS_GROW_DOUBLE:
		append(p->spec, &pos, "double=");
		format_bytes(p->spec, &pos, p->cap);
		break;
	case DS_GROW_LEARN:
		append(p->spec, &pos, "learn");
		break;
	case DS_GROW_USER:
		append(p->spec, &pos, "grow=%s", p->user->name);
		break;
	}
	if (p->initial) {
		append(p->spec, &pos, ",initial=");
		format_bytes(p->spec, &pos, p->initial);
	}
	if (p->populate)
		append(p->spec, &pos, ",populate");
	if (p->overflow == DYNSTACK_OVERFLOW_WARN) {
		append(p->spec, &pos, ",overflow=warn:");
		format_bytes(p->spec, &pos, p->reserve);
	} else if (p->overflow == DYNSTACK_OVERFLOW_FAIL) {
		append(p->spec, &pos, ",overflow=fail");
	}
	if (p->trim_idle == 0)
		append(p->spec, &pos, ",trim=off");
	else if (p->trim_idle != DS_TRIM_IDLE_DEFAULT)
		append(p->spec, &pos, ",trim=yield:%u", p->trim_idle);
	if (p->margin != DS_MARGIN_DEFAULT) {
		append(p->spec, &pos, ",margin=");
		format_bytes(p->spec, &pos, p->margin);
	}
}

int ds_policy_parse(const char *spec, struct ds_policy *out, char *err, size_t errlen)
{
	struct ds_policy p;
	bool have_grow = false, have_initial = false, have_overflow = false;

	memset(&p, 0, sizeof(p));
	p.grow = DS_GROW_STEP;
	p.step = 1;
	p.trim_idle = DS_TRIM_IDLE_DEFAULT;
	p.margin = DS_MARGIN_DEFAULT;
	bool have_trim = false, have_margin = false;
	if (!spec)
		return fail(err, errlen, "no spec");
	if (!*spec)
		return fail(err, errlen, "empty spec");
	for (const char *item = spec;;) {
		const char *end = strchr(item, ',');
		size_t len = end ? (size_t)(end - item) : strlen(item);
		const char *eq = memchr(item, '=', len);
		size_t klen = eq ? (size_t)(eq - item) : len;
		const char *val = eq ? eq + 1 : NULL;
		size_t vlen = eq ? len - klen - 1 : 0;
		bool grow_item = false;

		if (!len)
			return fail(err, errlen, "empty item in \"%s\"", spec);
#define KEY(k) (klen == sizeof(k) - 1 && !memcmp(item, k, klen))
		if (KEY("step")) {
			unsigned long n;
			if (!val || parse_count(val, vlen, 1, DS_STEP_MAX, &n))
				return fail(err, errlen, "step=N needs N pages, 1..%d: \"%.*s\"",
					    DS_STEP_MAX, (int)len, item);
			p.grow = DS_GROW_STEP;
			p.step = (uint32_t)n;
			grow_item = true;
		} else if (KEY("double")) {
			p.grow = DS_GROW_DOUBLE;
			p.cap = DS_DOUBLE_CAP_DEFAULT;
			if (val && parse_bytes(val, vlen, &p.cap))
				return fail(
					err, errlen,
					"double=CAP needs a size, 1..1G (k/M/G suffix): \"%.*s\"",
					(int)len, item);
			grow_item = true;
		} else if (KEY("learn")) {
			if (val)
				return fail(err, errlen, "learn takes no value: \"%.*s\"", (int)len,
					    item);
			p.grow = DS_GROW_LEARN;
			grow_item = true;
		} else if (KEY("initial")) {
			if (have_initial)
				return fail(err, errlen, "initial given twice");
			if (!val || parse_bytes(val, vlen, &p.initial))
				return fail(
					err, errlen,
					"initial=SIZE needs a size, 1..1G (k/M/G suffix): \"%.*s\"",
					(int)len, item);
			have_initial = true;
		} else if (KEY("populate")) {
			if (val)
				return fail(err, errlen, "populate takes no value: \"%.*s\"",
					    (int)len, item);
			if (p.populate)
				return fail(err, errlen, "populate given twice");
			p.populate = true;
		} else if (KEY("trim")) {
			unsigned long n = DS_TRIM_IDLE_DEFAULT;
			if (have_trim)
				return fail(err, errlen, "trim given twice");
			have_trim = true;
			if (val && vlen == 3 && !memcmp(val, "off", 3)) {
				n = 0;
			} else if (!val || vlen < 5 || memcmp(val, "yield", 5) ||
				   (vlen > 5 &&
				    (val[5] != ':' ||
				     parse_count(val + 6, vlen - 6, 1, DS_TRIM_IDLE_MAX, &n)))) {
				return fail(err, errlen,
					    "trim= takes off, yield or yield:IDLE (IDLE 1..%d): "
					    "\"%.*s\"",
					    DS_TRIM_IDLE_MAX, (int)len, item);
			}
			p.trim_idle = (uint32_t)n;
		} else if (KEY("margin")) {
			if (have_margin)
				return fail(err, errlen, "margin given twice");
			have_margin = true;
			if (!val || parse_bytes(val, vlen, &p.margin))
				return fail(
					err, errlen,
					"margin=SIZE needs a size, 1..1G (k/M/G suffix): \"%.*s\"",
					(int)len, item);
		} else if (KEY("overflow")) {
			if (have_overflow)
				return fail(err, errlen, "overflow given twice");
			have_overflow = true;
			if (val && vlen == 5 && !memcmp(val, "abort", 5)) {
				p.overflow = DYNSTACK_OVERFLOW_ABORT;
			} else if (val && vlen == 4 && !memcmp(val, "fail", 4)) {
				p.overflow = DYNSTACK_OVERFLOW_FAIL;
			} else if (val && vlen > 5 && !memcmp(val, "warn:", 5)) {
				p.overflow = DYNSTACK_OVERFLOW_WARN;
				if (parse_bytes(val + 5, vlen - 5, &p.reserve))
					return fail(
						err, errlen,
						"overflow=warn:SIZE needs a reserve size, 1..1G: "
						"\"%.*s\"",
						(int)len, item);
			} else {
				return fail(err, errlen,
					    "overflow= takes abort, fail or warn:SIZE: \"%.*s\"",
					    (int)len, item);
			}
		} else {
			/* grow=NAME, or a registered NAME alone */
			const char *name = KEY("grow") ? val : item;
			size_t nlen = KEY("grow") ? vlen : len;
			const struct user_policy *u =
				name && (KEY("grow") || !eq) ? user_find(name, nlen) : NULL;
			if (!u)
				return fail(
					err, errlen,
					"unknown item \"%.*s\" (expected step=N, double[=CAP], "
					"learn, grow=NAME, initial=SIZE, populate, overflow=...)",
					(int)len, item);
			p.grow = DS_GROW_USER;
			p.user = &u->pub;
			grow_item = true;
		}
#undef KEY
		if (grow_item) {
			if (have_grow)
				return fail(err, errlen,
					    "two grow rules in \"%s\" (step, double, learn and "
					    "grow= exclude each other)",
					    spec);
			have_grow = true;
		}
		if (!end)
			break;
		item = end + 1;
	}
	canonicalize(&p);
	*out = p;
	return 0;
}

int ds_policy_intern(const struct ds_policy *p, const struct ds_policy **out)
{
	int rc = 0;
	pthread_mutex_lock(&policy_lock);
	uint32_t n = atomic_load_explicit(&ninterned, memory_order_relaxed);
	for (uint32_t i = 0; i < n; i++) {
		if (!strcmp(interned[i].spec, p->spec)) {
			*out = &interned[i];
			goto out;
		}
	}
	if (n == DS_POLICIES_MAX) {
		rc = -ENOSPC;
		goto out;
	}
	interned[n] = *p;
	interned[n].id = n;
	atomic_store_explicit(&ninterned, n + 1, memory_order_release);
	*out = &interned[n];
	/* Pairs with the fence in trace start: either it sees this policy in
	 * the table, or we see tracing on and write the record ourselves. */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&ds_trace_on, memory_order_relaxed))
		ds_trace_policy(n, interned[n].spec);
out:
	pthread_mutex_unlock(&policy_lock);
	return rc;
}

const struct ds_policy *ds_policy_default(void)
{
	const struct ds_policy *p = atomic_load_explicit(&default_policy, memory_order_acquire);
	if (p)
		return p;
	/* First use: intern the built-in default, step=1 (the seed's policy). */
	struct ds_policy d;
	ds_policy_parse("step=1", &d, NULL, 0);
	if (ds_policy_intern(&d, &p))
		return NULL;
	const struct ds_policy *expected = NULL;
	if (!atomic_compare_exchange_strong(&default_policy, &expected, p))
		p = expected;
	return p;
}

const struct ds_policy *ds_policy_by_id(uint32_t id)
{
	return id < atomic_load_explicit(&ninterned, memory_order_acquire) ? &interned[id] : NULL;
}

uint32_t ds_policy_count(void)
{
	return atomic_load_explicit(&ninterned, memory_order_acquire);
}

static size_t round_up(size_t v, size_t ps)
{
	return (v + ps - 1) & ~(ps - 1);
}

size_t ds_policy_decide_sigsafe(const struct ds_policy *p, const dynstack_fault_info_t *info)
{
	size_t ps = info->page_size, t;
	switch (p->grow) {
	case DS_GROW_DOUBLE:
		t = info->committed + (info->committed < p->cap ? info->committed : p->cap);
		break;
	case DS_GROW_LEARN:
		t = info->learned;
		break;
	case DS_GROW_USER:
		t = p->user->grow(info, p->user->data);
		break;
	case DS_GROW_STEP:
	default:
		t = info->depth + (size_t)(p->step - 1) * ps;
		break;
	}
	if (t > info->limit) /* before rounding: a huge answer must not wrap */
		t = info->limit;
	t = round_up(t, ps);
	if (t < info->depth)
		t = info->depth;
	if (t > info->limit)
		t = info->limit;
	return t;
}

size_t ds_policy_initial(const struct ds_policy *p, size_t size, size_t page_size)
{
	size_t v = p->initial ? round_up(p->initial, page_size) : page_size;
	return v < size ? v : size;
}

unsigned ds_policy_site(const char *name)
{
	if (!name || !*name)
		return DS_NO_SITE;
	uint32_t h = 2166136261u;
	for (; *name; name++)
		h = (h ^ (uint8_t)*name) * 16777619u;
	return h % DS_SITES;
}

/* ---- public */

static bool name_ok(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n < 1 || n > 31)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
			return false;
	}
	for (size_t i = 0; i < sizeof(builtin_names) / sizeof(builtin_names[0]); i++)
		if (!strcmp(name, builtin_names[i]))
			return false;
	return true;
}

void ds_policy_fork(enum ds_fork_phase ph)
{
	ds_fork_lock(&policy_lock, ph);
}

DYNSTACK_API int dynstack_policy_register(const dynstack_policy_t *policy)
{
	if (!policy || policy->struct_size != sizeof(*policy) || !policy->grow)
		return -EINVAL;
	if (!name_ok(policy->name)) {
		/* A built-in keyword cannot be taken over: say so precisely. */
		for (size_t i = 0;
		     policy->name && i < sizeof(builtin_names) / sizeof(*builtin_names); i++)
			if (!strcmp(policy->name, builtin_names[i]))
				return -EEXIST;
		return -EINVAL;
	}
	int rc = 0;
	pthread_mutex_lock(&policy_lock);
	unsigned n = atomic_load_explicit(&nusers, memory_order_relaxed);
	if (user_find(policy->name, strlen(policy->name))) {
		rc = -EEXIST;
	} else if (n == DS_USER_POLICIES_MAX) {
		rc = -ENOSPC;
	} else {
		struct user_policy *u = &users[n];
		strcpy(u->name, policy->name);
		u->pub = *policy;
		u->pub.name = u->name;
		atomic_store_explicit(&nusers, n + 1, memory_order_release);
	}
	pthread_mutex_unlock(&policy_lock);
	return rc;
}

int ds_policy_from_spec(const char *spec, const struct ds_policy **out, char *err, size_t errlen)
{
	struct ds_policy p;
	int rc = ds_policy_parse(spec, &p, err, errlen);
	if (rc)
		return rc;
	rc = ds_policy_intern(&p, out);
	if (rc == -ENOSPC && err && errlen)
		snprintf(err, errlen, "more than %d distinct policies in one process",
			 DS_POLICIES_MAX);
	return rc;
}

void dynstack_policy_set_interned(const struct ds_policy *p)
{
	atomic_store_explicit(&default_policy, p, memory_order_release);
}

DYNSTACK_API int dynstack_policy_set(const char *spec)
{
	DS_KEEP_ERRNO();
	char err[160];
	const struct ds_policy *p;
	int rc = ds_init_once();
	if (rc)
		return rc;
	if ((rc = ds_policy_from_spec(spec, &p, err, sizeof(err)))) {
		fprintf(stderr, "libdynstack: policy \"%s\": %s\n", spec ? spec : "(null)", err);
		return rc;
	}
	dynstack_policy_set_interned(p);
	return 0;
}

DYNSTACK_API int dynstack_policy_check(const char *spec, char *err, size_t errlen)
{
	DS_KEEP_ERRNO();
	struct ds_policy p;
	return ds_policy_parse(spec, &p, err, errlen);
}

DYNSTACK_API int dynstack_policy_get(char *buf, size_t len)
{
	DS_KEEP_ERRNO();
	if (!buf)
		return -EINVAL;
	/* Init first: DYNSTACK_POLICY decides what the default is. */
	int rc = ds_init_once();
	if (rc)
		return rc;
	const struct ds_policy *p = ds_policy_default();
	if (!p)
		return -ENOMEM;
	size_t n = strlen(p->spec);
	if (n + 1 > len)
		return -ENOSPC;
	memcpy(buf, p->spec, n + 1);
	return (int)n;
}

DYNSTACK_API const char *dynstack_policy_of(const dynstack_t *s)
{
	return s && s->policy ? s->policy->spec : "";
}
