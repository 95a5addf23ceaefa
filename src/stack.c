/* Stack objects: process set-up, create/destroy, queries, and the decision
 * the handler takes for a fault inside a slot. The commit edge only ever
 * moves down while a stack lives, by CAS, so two threads faulting on one
 * stack need no lock: both commits are idempotent, the CAS winner counts. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "policy.h"
#include "sanitize.h"
#include "trace.h"

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int initialized;
static _Atomic uint64_t next_id;
/* Ids come to each thread in blocks, so that a create touches no shared
 * line: unique in the process, increasing within a thread. */
#define DS_ID_BLOCK 1024
static DS_TLS uint64_t id_next, id_end;

static uint64_t new_id(void)
{
	if (id_next == id_end) {
		id_next =
			atomic_fetch_add_explicit(&next_id, DS_ID_BLOCK, memory_order_relaxed) + 1;
		id_end = id_next + DS_ID_BLOCK;
	}
	return id_next++;
}

static void print_stats_at_exit(void)
{
	dynstack_stats_print(STDERR_FILENO);
}

/* fork (internal.h): every lock, in the library's lock order. Without it a
 * child forked while another thread interned a policy, took a slot or
 * touched the depot waited for ever at its first create. */
static void fork_prepare(void)
{
	pthread_mutex_lock(&init_lock);
	ds_fault_fork(DS_FORK_PREPARE);
	ds_policy_fork(DS_FORK_PREPARE);
	ds_trace_fork(DS_FORK_PREPARE);
	ds_stats_fork(DS_FORK_PREPARE);
	ds_arena_fork(DS_FORK_PREPARE);
	ds_cache_fork(DS_FORK_PREPARE);
	ds_shared_fork(DS_FORK_PREPARE);
}

static void fork_release(enum ds_fork_phase ph)
{
	ds_shared_fork(ph);
	ds_cache_fork(ph);
	ds_arena_fork(ph);
	ds_stats_fork(ph);
	ds_trace_fork(ph);
	ds_policy_fork(ph);
	ds_fault_fork(ph);
	pthread_mutex_unlock(&init_lock);
}

static void fork_parent(void)
{
	fork_release(DS_FORK_PARENT);
}

static void fork_child(void)
{
	fork_release(DS_FORK_CHILD);
}

static void fork_once(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

void ds_fork_register(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, fork_once);
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

	ds_fork_register();
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
	const char *spec = getenv("DYNSTACK_POLICY");
	if (spec && *spec) {
		char err[160];
		const struct ds_policy *pol;
		if ((rc = ds_policy_from_spec(spec, &pol, err, sizeof(err)))) {
			fprintf(stderr, "libdynstack: DYNSTACK_POLICY=\"%s\" is not valid: %s\n",
				spec, err);
			goto out;
		}
		dynstack_policy_set_interned(pol);
	} else if (!ds_policy_default()) {
		rc = -ENOMEM;
		goto out;
	}
	ds_opt.backend = be;
	ds_opt.default_size = c.default_size;
	ds_opt.sync_stack_size = c.sync_stack_size;
	ds_opt.stats_at_exit = c.stats_at_exit;
	ds_opt.cache_stacks = c.cache_stacks;
	ds_opt.cache_pages = c.cache_pages;
	ds_opt.trim_batch = c.trim_batch;
	ds_opt.shared_poison = c.shared_poison != 0;
	ds_opt.check_handles = c.check_handles != 0;
	ds_os_page_size(); /* cache it before the handler can need it */
	if ((rc = ds_fault_install()))
		goto out;
	if (c.stats_at_exit)
		atexit(print_stats_at_exit);
	atomic_store_explicit(&initialized, 1, memory_order_release);
	pthread_mutex_unlock(&init_lock);
	/* Outside the lock: starting a trace may itself ask for init. */
	return ds_trace_init_from_env();
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

int ds_attr_load(dynstack_attr_t *a, const dynstack_attr_t *attr)
{
	dynstack_attr_init(a);
	if (!attr)
		return 0;
	/* Callers built against 0.1 pass the attr without mode and group. */
	size_t n = attr->struct_size;
	if (n != sizeof(*a) && n != offsetof(dynstack_attr_t, mode))
		return -EINVAL;
	memcpy(a, attr, n);
	a->struct_size = sizeof(*a);
	return 0;
}

static size_t page_round(size_t v)
{
	size_t ps = ds_os_page_size();
	return (v + ps - 1) & ~(ps - 1);
}

/* A create refused with -ENOMEM by vm.max_map_count: the mprotect backend
 * takes two mappings per stack (its committed top and the floor below), so
 * it stops near 32,000 stacks at the default of 65,530, and -ENOMEM alone
 * does not say why. Say it once per process, with the remedy. Costs a read
 * of /proc/self/maps per -ENOMEM until then: microseconds for a process
 * with few mappings, some 10-30 ms at 65,530, where it prints and stops. */
static int explain_enomem(int rc)
{
	static _Atomic bool told;
	long count, max;
	if (rc != -ENOMEM || atomic_load_explicit(&told, memory_order_relaxed) ||
	    !ds_os_map_count(&count, &max) || count + 8 < max ||
	    atomic_exchange_explicit(&told, true, memory_order_relaxed))
		return rc;
	struct ds_buf b = { .len = 0 };
	ds_buf_str_sigsafe(&b, "libdynstack: cannot create a stack: the process has reached "
			       "vm.max_map_count (");
	ds_buf_dec_sigsafe(&b, (uint64_t)max);
	ds_buf_str_sigsafe(&b, " mappings)");
	if (ds_opt.backend == DYNSTACK_BACKEND_MPROTECT)
		ds_buf_str_sigsafe(&b, ", and the mprotect backend needs two per stack. Raise it "
				       "(sysctl -w vm.max_map_count=1048576) or use the guard "
				       "backend (Linux >= 6.13, DYNSTACK_BACKEND=guard), which "
				       "needs none per stack.\n");
	else
		ds_buf_str_sigsafe(&b, ". Raise it (sysctl -w vm.max_map_count=1048576).\n");
	ds_buf_write_sigsafe(&b, STDERR_FILENO);
	return rc;
}

/* learn's per-name memory: the peak of the last stack destroyed under each
 * name bucket. Written at destroy, read at create, never in the handler. */
static _Atomic size_t site_hist[DS_SITES];

static void trace_create(const struct dynstack *s, size_t committed)
{
	/* The record and the name that follows it, in one aligned buffer. */
	union {
		struct ds_ev_create ev;
		char bytes[sizeof(struct ds_ev_create) + DYNSTACK_NAME_MAX + 8];
	} r;
	size_t nlen = strlen(s->name);
	memset(&r, 0, sizeof(r));
	r.ev.h.type = DS_EV_CREATE;
	r.ev.h.len = (uint16_t)((sizeof(r.ev) + nlen + 7) & ~(size_t)7);
	r.ev.h.time_ns = ds_trace_now_sigsafe();
	r.ev.h.stack = s->id;
	r.ev.size = s->top - s->lo;
	r.ev.committed = committed;
	r.ev.reserve = s->reserve;
	r.ev.slot = ds_slot_base(s);
	r.ev.learned = s->learned;
	r.ev.policy = s->policy->id;
	r.ev.name_len = (uint32_t)nlen;
	memcpy(r.bytes + sizeof(r.ev), s->name, nlen);
	ds_trace_emit_sigsafe(&r);
	ds_trace_flush_maybe();
}

int ds_stack_create(struct dynstack **out, const dynstack_attr_t *attr, uint32_t flags)
{
	dynstack_attr_t a;
	const struct ds_policy *pol;
	struct dynstack *s;
	char err[160];
	int rc;

	*out = NULL;
	if ((rc = ds_attr_load(&a, attr)))
		return rc;
	if (a.mode != DYNSTACK_MODE_PRIVATE || a.group)
		return -EINVAL; /* a stack of its own has no group */
	if ((rc = ds_thread_ensure()))
		return rc;

	size_t ps = ds_os_page_size();
	size_t size = a.size ? a.size : ds_opt.default_size;
	if (size > DYNSTACK_MAX_SIZE || a.initial > size)
		return -EINVAL;
	if (a.policy) {
		if ((rc = ds_policy_from_spec(a.policy, &pol, err, sizeof(err))))
			return rc;
	} else if (!(pol = ds_policy_default())) {
		return -ENOMEM;
	}
	size = page_round(size);
	size_t reserve = pol->overflow == DYNSTACK_OVERFLOW_WARN ? page_round(pol->reserve) : 0;
	if (size + reserve > DYNSTACK_MAX_SIZE)
		return -EINVAL;
	size_t initial = a.initial ? page_round(a.initial) : ds_policy_initial(pol, size, ps);
	/* Valgrind restarts a faulting push with a wrong stack pointer: under
	 * it, stacks are committed whole, an overflow=warn reserve included
	 * (which then never warns), and never fault. */
	if (DS_WHOLE_STACKS_BUILD || ds_os_on_valgrind())
		initial = size + reserve;

	/* A warm stack from the cache first: its pages are committed already,
	 * so most creates make no syscall and take no fault. */
	unsigned shift = ds_arena_class(size + reserve);
	uintptr_t top, edge;
	if (shift <= DS_ARENA_MAX_SHIFT && (s = ds_cache_get(shift))) {
		top = s->top;
		edge = atomic_load_explicit(&s->edge, memory_order_relaxed);
		/* A deeper stack of the same class may have left pages in what
		 * is this one's floor: they must fault again. */
		uintptr_t floor_hi = top - size - reserve;
		if (edge < floor_hi) {
			if ((rc = ds_os_decommit(ds_opt.backend, edge, floor_hi))) {
				ds_stack_discard(s, edge);
				return rc;
			}
			edge = floor_hi;
		}
	} else {
		if ((rc = ds_arena_slot_get(size + reserve, &s)))
			return explain_enomem(rc);
		top = ds_slot_base(s) + ((uintptr_t)1 << s->arena->shift);
		edge = top;
	}
	if (top - initial < edge) {
		if ((rc = ds_os_commit_sigsafe(ds_opt.backend, top - initial, edge))) {
			ds_stack_discard(s, edge);
			return explain_enomem(rc);
		}
		edge = top - initial;
	}
	s->lo = top - size;
	s->top = top;
	s->reserve = reserve;
	s->flags = flags;
	s->policy = pol;
	s->coro = NULL;
	s->caller_id = 0;
	s->caller_sp = 0;
	s->id = new_id();
	memset(s->name, 0, sizeof(s->name));
	if (a.name)
		strncpy(s->name, a.name, DYNSTACK_NAME_MAX);
	unsigned site = ds_policy_site(s->name);
	size_t learned = s->slot_hist;
	size_t from_site = site != DS_NO_SITE ? atomic_load(&site_hist[site]) : 0;
	if (from_site > learned)
		learned = from_site;
	s->learned = learned;
	atomic_store_explicit(&s->faults, 0, memory_order_relaxed);
	atomic_store_explicit(&s->warned, 0, memory_order_relaxed);
	atomic_store_explicit(&s->edge, edge, memory_order_relaxed);
	atomic_store_explicit(&s->peak_edge, edge, memory_order_relaxed);
	atomic_store_explicit(&s->trim_state, DS_TRIM_NONE, memory_order_relaxed);
	atomic_store_explicit(&s->faulted, 0, memory_order_relaxed);
	s->trim_cancelled = false;
	atomic_store_explicit(&s->idle_limit, pol->trim_idle ? pol->trim_idle : 1,
			      memory_order_relaxed);
	atomic_store_explicit(&s->trim_lo, 0, memory_order_relaxed);
	atomic_store_explicit(&s->trim_hi, 0, memory_order_relaxed);
	s->idle = 0;
	s->vg_id = ds_os_valgrind_stack_register(s->lo - s->reserve, s->top);
	/* Publish: from here the handler treats faults in the slot as ours. */
	atomic_store_explicit(&s->state, DS_SLOT_LIVE, memory_order_release);
	DS_TSTAT_ADD(nr_dynamic_stacks, 1);
	DS_TSTAT_ADD(nr_dynamic_stacks_pages, (top - edge) / ps);
	DS_TSTAT_ADD(nr_dynamic_stacks_created, 1);
	if (atomic_load_explicit(&ds_trace_on, memory_order_relaxed))
		trace_create(s, top - edge);
	*out = s;
	return 0;
}

/* Give a slot back to the arena with all its pages decommitted: from a
 * failed create (never published) or a release the cache did not take. */
void ds_stack_discard(struct dynstack *s, uintptr_t edge)
{
	atomic_store_explicit(&s->state, DS_SLOT_FREE, memory_order_release);
	if (edge < s->top && ds_os_decommit(ds_opt.backend, edge, s->top)) {
		/* Cannot happen by construction (see ds_os_decommit); if the
		 * kernel still refuses, the slot is never reused rather than
		 * handed out with stale pages in it. */
		return;
	}
	atomic_store_explicit(&s->edge, s->top, memory_order_relaxed);
	if (!(s->flags & DS_SLOT_RETIRE))
		ds_arena_slot_put(s);
}

void ds_stack_release(struct dynstack *s)
{
	size_t ps = ds_os_page_size();
	atomic_store_explicit(&s->state, DS_SLOT_FREE, memory_order_release);
	ds_os_valgrind_stack_deregister(s->vg_id);
	s->vg_id = 0;
	/* A trim queued on some thread must not act on it any more. */
	ds_trim_claim(s);
	/* check_handles: a slot whose handle the user held (a stack, a
	 * coroutine's, a group's) is never reused, so every later use of the
	 * handle is caught (docs/api.md, "Destroyed handles"). Segments are
	 * the library's own. */
	if (ds_opt.check_handles && !(s->flags & DS_SLOT_SEGMENT))
		s->flags |= DS_SLOT_RETIRE;
	/* ASan: frames abandoned on it (a destroyed suspended coroutine's)
	 * keep their redzones poisoned in shadow memory, which a decommit does
	 * not clear; the slot's next stack would hit them. */
	ds_san_unpoison((const void *)(s->lo - s->reserve), s->top - (s->lo - s->reserve));
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	size_t peak = s->top - atomic_load_explicit(&s->peak_edge, memory_order_relaxed);
	DS_TSTAT_SUB(nr_dynamic_stacks, 1);
	DS_TSTAT_SUB(nr_dynamic_stacks_pages, (s->top - edge) / ps);
	DS_TSTAT_ADD(nr_dynamic_stacks_destroyed, 1);
	/* learn: the next stack of this slot or name starts from this peak. */
	s->slot_hist = peak;
	unsigned site = ds_policy_site(s->name);
	if (site != DS_NO_SITE)
		atomic_store(&site_hist[site], peak);
	if (atomic_load_explicit(&ds_trace_on, memory_order_relaxed)) {
		struct ds_ev_destroy r;
		memset(&r, 0, sizeof(r));
		r.h.type = DS_EV_DESTROY;
		r.h.len = sizeof(r);
		r.h.time_ns = ds_trace_now_sigsafe();
		r.h.stack = s->id;
		r.peak = peak;
		r.committed = s->top - edge;
		ds_trace_emit_sigsafe(&r);
		ds_trace_flush_maybe();
	}
	if (!(s->flags & DS_SLOT_RETIRE) && ds_thread_ensure() == 0 && ds_cache_put(s))
		return;
	ds_stack_discard(s, atomic_load_explicit(&s->edge, memory_order_acquire));
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
		return ds_stale_handle(__func__, s, "stack");
	if (s->flags & (DS_SLOT_CORO | DS_SLOT_SEGMENT))
		return -EBUSY;
	ds_stack_release(s);
	return 0;
}

DYNSTACK_API void *dynstack_top(const dynstack_t *s)
{
	/* A runtime with its own switch asks for the top just before it
	 * switches to the stack on this thread: the thread's sync stack must
	 * exist by then (a failure shows at dynstack_thread_init). */
	DS_KEEP_ERRNO();
	(void)ds_thread_ensure();
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

int ds_stack_grow_sigsafe(struct dynstack *s, uintptr_t target, uintptr_t *edgep)
{
	size_t ps = ds_os_page_size();
	uintptr_t edge = *edgep;
	/* One call from the target up to the edge; then, for populate, one
	 * more so that the access being retried does not fault again. */
	int rc = ds_os_commit_sigsafe(ds_opt.backend, target, edge);
	if (rc)
		return rc;
	if (s->policy->populate && ds_os_populate_sigsafe(target, edge) == 0)
		DS_STAT_ADD(nr_dynamic_stacks_populated, (edge - target) / ps);
	bool lowered = false;
	while (edge > target && !lowered)
		lowered = atomic_compare_exchange_weak_explicit(
			&s->edge, &edge, target, memory_order_acq_rel, memory_order_acquire);
	*edgep = edge;
	if (!lowered)
		return 0;
	DS_STAT_ADD(nr_dynamic_stacks_pages, (edge - target) / ps);
	uintptr_t peak = atomic_load_explicit(&s->peak_edge, memory_order_relaxed);
	while (peak > target &&
	       !atomic_compare_exchange_weak_explicit(&s->peak_edge, &peak, target,
						      memory_order_relaxed, memory_order_relaxed))
		;
	return 1;
}

static void trace_fault_sigsafe(int type, const struct dynstack *s, size_t depth, size_t committed,
				uint64_t t0)
{
	struct ds_ev_fault r;
	memset(&r, 0, sizeof(r));
	r.h.type = (uint16_t)type;
	r.h.len = sizeof(r);
	r.h.time_ns = ds_trace_now_sigsafe();
	r.h.stack = s->id;
	r.depth = depth;
	r.committed = committed;
	r.ns = t0 ? r.h.time_ns - t0 : 0;
	ds_trace_emit_sigsafe(&r);
}

enum ds_fault_kind ds_stack_fault_sigsafe(struct dynstack *s, uintptr_t addr, int *err)
{
	bool tracing = atomic_load_explicit(&ds_trace_on, memory_order_relaxed);
	uint64_t t0 = tracing ? ds_trace_now_sigsafe() : 0;
	size_t ps = ds_os_page_size();

	if (atomic_load_explicit(&s->state, memory_order_acquire) != DS_SLOT_LIVE)
		return DS_FAULT_FOREIGN; /* a destroyed stack: a use after free */
	uintptr_t page = addr & ~(uintptr_t)(ps - 1);
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	if (addr < s->lo - s->reserve) {
		DS_STAT_ADD(nr_dynamic_stacks_overflows, 1);
		if (tracing)
			trace_fault_sigsafe(DS_EV_OVERFLOW, s, s->top - page, s->top - edge, t0);
		return DS_FAULT_OVERFLOW;
	}
	if (page >= edge) {
		DS_STAT_ADD(nr_dynamic_stacks_spurious, 1);
		if (tracing)
			trace_fault_sigsafe(DS_EV_SPURIOUS, s, s->top - page, s->top - edge, t0);
		return DS_FAULT_SPURIOUS;
	}

	/* Ask the policy how far to go: at least down to the faulting page
	 * (a big frame or alloca jumps pages without touching them), at most
	 * the nominal size, or the reserve once the fault is in it. */
	bool in_reserve = page < s->lo;
	dynstack_fault_info_t info = {
		.page_size = ps,
		.size = s->top - s->lo,
		.limit = s->top - (in_reserve ? s->lo - s->reserve : s->lo),
		.committed = s->top - edge,
		.depth = s->top - page,
		.peak = s->top - atomic_load_explicit(&s->peak_edge, memory_order_relaxed),
		.learned = s->learned,
		.faults = atomic_load_explicit(&s->faults, memory_order_relaxed),
		.id = s->id,
		.name = s->name,
	};
	uintptr_t target = s->top - ds_policy_decide_sigsafe(s->policy, &info);

	int rc = ds_stack_grow_sigsafe(s, target, &edge);
	if (rc < 0) {
		*err = rc;
		DS_STAT_ADD(nr_dynamic_stacks_commit_failed, 1);
		return DS_FAULT_COMMIT_FAILED;
	}
	if (rc == 0) {
		/* Another thread committed at least as far first: its fault counts. */
		DS_STAT_ADD(nr_dynamic_stacks_spurious, 1);
		if (tracing)
			trace_fault_sigsafe(DS_EV_SPURIOUS, s, s->top - page, s->top - edge, t0);
		return DS_FAULT_SPURIOUS;
	}
	uintptr_t new_edge = target;
	DS_STAT_ADD(nr_dynamic_stacks_faults, 1);
	atomic_fetch_add_explicit(&s->faults, 1, memory_order_relaxed);
	ds_trim_note_fault_sigsafe(s, page);
	if (tracing)
		trace_fault_sigsafe(in_reserve ? DS_EV_WARN : DS_EV_FAULT, s, s->top - page,
				    s->top - new_edge, t0);
	if (in_reserve && !atomic_exchange_explicit(&s->warned, 1, memory_order_relaxed)) {
		DS_STAT_ADD(nr_dynamic_stacks_warnings, 1);
		return DS_FAULT_WARNED;
	}
	return DS_FAULT_COMMITTED;
}
