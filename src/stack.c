/* Stack objects: process set-up, create/destroy, queries, and the decision
 * the handler takes for a fault inside a slot. The commit edge only ever
 * moves down while a stack lives, by CAS, so two threads faulting on one
 * stack need no lock: both commits are idempotent, the CAS winner counts. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int initialized;
static _Atomic uint64_t next_id;

static void print_stats_at_exit(void)
{
	dynstack_stats_print(STDERR_FILENO);
}

static int resolve_backend(dynstack_backend_t want, dynstack_backend_t *out)
{
	bool guard = ds_os_guard_supported();
	if (want == DYNSTACK_BACKEND_GUARD && !guard)
		return -EOPNOTSUPP;
	if (want == DYNSTACK_BACKEND_AUTO)
		want = guard ? DYNSTACK_BACKEND_GUARD : DYNSTACK_BACKEND_MPROTECT;
	*out = want;
	return 0;
}

DYNSTACK_API int dynstack_init(const dynstack_config_t *cfg)
{
	DS_KEEP_ERRNO();
	dynstack_config_t c;
	dynstack_backend_t be;
	int rc;

	if (cfg) {
		if (cfg->struct_size != sizeof(c))
			return -EINVAL;
		c = *cfg;
	} else {
		dynstack_config_init(&c);
	}
	if ((rc = ds_options_from_env(&c)) || (rc = ds_options_validate(&c)))
		return rc;

	pthread_mutex_lock(&init_lock);
	if (atomic_load_explicit(&initialized, memory_order_relaxed)) {
		/* Already set up: only an explicit, different backend conflicts. */
		if (cfg && c.backend != DYNSTACK_BACKEND_AUTO && c.backend != ds_opt.backend)
			rc = -EBUSY;
		else if (!ds_fault_installed())
			rc = ds_fault_install(); /* somebody replaced our handler */
		goto out;
	}
	if ((rc = resolve_backend(c.backend, &be)))
		goto out;
	ds_opt.backend = be;
	ds_opt.default_size = c.default_size;
	ds_opt.sync_stack_size = c.sync_stack_size;
	ds_opt.stats_at_exit = c.stats_at_exit;
	ds_os_page_size(); /* cache it before the handler can need it */
	if ((rc = ds_fault_install()))
		goto out;
	if (c.stats_at_exit)
		atexit(print_stats_at_exit);
	atomic_store_explicit(&initialized, 1, memory_order_release);
out:
	pthread_mutex_unlock(&init_lock);
	return rc;
}

int ds_init_once(void)
{
	if (atomic_load_explicit(&initialized, memory_order_acquire))
		return 0;
	return dynstack_init(NULL);
}

DYNSTACK_API const char *dynstack_backend_name(void)
{
	if (!atomic_load_explicit(&initialized, memory_order_acquire))
		return "none";
	return ds_opt.backend == DYNSTACK_BACKEND_GUARD ? "guard" : "mprotect";
}

DYNSTACK_API int dynstack_attr_init(dynstack_attr_t *attr)
{
	if (!attr)
		return -EINVAL;
	memset(attr, 0, sizeof(*attr));
	attr->struct_size = sizeof(*attr);
	return 0;
}

static size_t page_round(size_t v)
{
	size_t ps = ds_os_page_size();
	return (v + ps - 1) & ~(ps - 1);
}

int ds_stack_create(struct dynstack **out, const dynstack_attr_t *attr, uint32_t flags)
{
	dynstack_attr_t a;
	struct dynstack *s;
	int rc;

	*out = NULL;
	if (attr && attr->struct_size != sizeof(a))
		return -EINVAL;
	if ((rc = ds_thread_ensure()))
		return rc;
	if (attr)
		a = *attr;
	else
		dynstack_attr_init(&a);

	size_t ps = ds_os_page_size();
	size_t size = a.size ? a.size : ds_opt.default_size;
	if (size > DYNSTACK_MAX_SIZE || a.initial > size)
		return -EINVAL;
	size = page_round(size);
	size_t initial = a.initial ? page_round(a.initial) : ps;
	/* Valgrind restarts a faulting push with a wrong stack pointer: under
	 * it, stacks are committed whole and never fault. */
	if (ds_os_on_valgrind())
		initial = size;

	if ((rc = ds_arena_slot_get(size, &s)))
		return rc;
	uintptr_t top = ds_slot_base(s) + ((uintptr_t)1 << s->arena->shift);
	if ((rc = ds_os_commit_sigsafe(ds_opt.backend, top - initial, top))) {
		ds_arena_slot_put(s);
		return rc;
	}
	s->lo = top - size;
	s->top = top;
	s->flags = flags;
	s->id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed) + 1;
	memset(s->name, 0, sizeof(s->name));
	if (a.name)
		strncpy(s->name, a.name, DYNSTACK_NAME_MAX);
	atomic_store_explicit(&s->edge, top - initial, memory_order_relaxed);
	atomic_store_explicit(&s->peak_edge, top - initial, memory_order_relaxed);
	/* Publish: from here the handler treats faults in the slot as ours. */
	atomic_store_explicit(&s->state, DS_SLOT_LIVE, memory_order_release);
	DS_STAT_ADD(nr_dynamic_stacks, 1);
	DS_STAT_ADD(nr_dynamic_stacks_pages, initial / ps);
	DS_STAT_ADD(nr_dynamic_stacks_created, 1);
	*out = s;
	return 0;
}

void ds_stack_release(struct dynstack *s)
{
	size_t ps = ds_os_page_size();
	atomic_store_explicit(&s->state, DS_SLOT_FREE, memory_order_release);
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	DS_STAT_SUB(nr_dynamic_stacks, 1);
	DS_STAT_SUB(nr_dynamic_stacks_pages, (s->top - edge) / ps);
	DS_STAT_ADD(nr_dynamic_stacks_destroyed, 1);
	if (ds_os_decommit(ds_opt.backend, edge, s->top)) {
		/* Cannot happen by construction (see ds_os_decommit); if the
		 * kernel still refuses, the slot is never reused rather than
		 * handed out with stale pages in it. */
		return;
	}
	atomic_store_explicit(&s->edge, s->top, memory_order_relaxed);
	ds_arena_slot_put(s);
}

DYNSTACK_API int dynstack_create(dynstack_t **out, const dynstack_attr_t *attr)
{
	DS_KEEP_ERRNO();
	if (!out)
		return -EINVAL;
	return ds_stack_create(out, attr, 0);
}

DYNSTACK_API int dynstack_destroy(dynstack_t *s)
{
	DS_KEEP_ERRNO();
	if (!s)
		return 0;
	if (atomic_load_explicit(&s->state, memory_order_acquire) != DS_SLOT_LIVE)
		return -EINVAL;
	if (s->flags & DS_SLOT_CORO)
		return -EBUSY;
	ds_stack_release(s);
	return 0;
}

DYNSTACK_API void *dynstack_top(const dynstack_t *s)
{
	return s ? (void *)s->top : NULL;
}

DYNSTACK_API size_t dynstack_size(const dynstack_t *s)
{
	return s ? s->top - s->lo : 0;
}

DYNSTACK_API size_t dynstack_committed(const dynstack_t *s)
{
	return s ? s->top - atomic_load_explicit(&s->edge, memory_order_relaxed) : 0;
}

DYNSTACK_API size_t dynstack_peak(const dynstack_t *s)
{
	return s ? s->top - atomic_load_explicit(&s->peak_edge, memory_order_relaxed) : 0;
}

DYNSTACK_API const char *dynstack_name(const dynstack_t *s)
{
	return s ? s->name : "";
}

DYNSTACK_API uint64_t dynstack_id(const dynstack_t *s)
{
	return s ? s->id : 0;
}

enum ds_fault_kind ds_stack_fault_sigsafe(struct dynstack *s, uintptr_t addr, int *err)
{
	if (atomic_load_explicit(&s->state, memory_order_acquire) != DS_SLOT_LIVE)
		return DS_FAULT_FOREIGN; /* a destroyed stack: a use after free */
	if (addr < s->lo) {
		DS_STAT_ADD(nr_dynamic_stacks_overflows, 1);
		return DS_FAULT_OVERFLOW;
	}
	uintptr_t page = addr & ~(uintptr_t)(ds_os_page_size() - 1);
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	if (page >= edge) {
		DS_STAT_ADD(nr_dynamic_stacks_spurious, 1);
		return DS_FAULT_SPURIOUS;
	}
	/* Everything from the fault page up to the edge, in one call: a big
	 * frame or alloca jumps pages without touching them. */
	int rc = ds_os_commit_sigsafe(ds_opt.backend, page, edge);
	if (rc) {
		*err = rc;
		DS_STAT_ADD(nr_dynamic_stacks_commit_failed, 1);
		return DS_FAULT_COMMIT_FAILED;
	}
	while (edge > page &&
	       !atomic_compare_exchange_weak_explicit(&s->edge, &edge, page, memory_order_acq_rel,
						      memory_order_acquire))
		;
	if (edge <= page) {
		/* Another thread committed the range first: its fault counts. */
		DS_STAT_ADD(nr_dynamic_stacks_spurious, 1);
		return DS_FAULT_SPURIOUS;
	}
	DS_STAT_ADD(nr_dynamic_stacks_pages, (edge - page) / ds_os_page_size());
	DS_STAT_ADD(nr_dynamic_stacks_faults, 1);
	uintptr_t peak = atomic_load_explicit(&s->peak_edge, memory_order_relaxed);
	while (peak > page &&
	       !atomic_compare_exchange_weak_explicit(&s->peak_edge, &peak, page,
						      memory_order_relaxed, memory_order_relaxed))
		;
	return DS_FAULT_COMMITTED;
}
