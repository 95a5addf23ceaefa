/* Cross-file internals: one section per layer of docs/design.md, lowest
 * first. Everything here has hidden visibility. Functions that the signal
 * handler may call end in _sigsafe. */
#ifndef DS_INTERNAL_H
#define DS_INTERNAL_H

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "types.h"

#define DS_HIDDEN __attribute__((visibility("hidden")))
/* TLS read by the signal handler must not go through __tls_get_addr, which
 * may allocate on first use in a dlopen'ed library. */
#define DS_TLS __thread __attribute__((tls_model("initial-exec")))

/* Public calls never change errno (they return -errno instead): the first
 * statement of every entry point that may make a syscall keeps it. */
static inline void ds_errno_restore(const int *saved)
{
	errno = *saved;
}
#define DS_KEEP_ERRNO()                                                                            \
	int ds_saved_errno_ __attribute__((cleanup(ds_errno_restore), unused)) = errno

#define DS_CHUNK_SHIFT 30 /* arenas are aligned to, and a multiple of, 1 GiB */
#define DS_CHUNK_SIZE ((uintptr_t)1 << DS_CHUNK_SHIFT)
#define DS_VA_BITS 48 /* user address bits on x86-64 (4-level) and aarch64 */

/* ---- options.c: process-wide settings, read once at init */
struct ds_options {
	dynstack_backend_t backend; /* never AUTO once init has run */
	size_t default_size;
	size_t sync_stack_size;
	int stats_at_exit;
	size_t cache_stacks;
	size_t cache_pages;
	size_t trim_batch;
	bool shared_poison; /* DYNSTACK_SHARED_POISON=1: every group poisons */
	bool check_handles; /* DYNSTACK_CHECK_HANDLES=1: destroyed handles never reused */
};
DS_HIDDEN extern struct ds_options ds_opt;
/* Apply DYNSTACK_* environment variables on top of *cfg. Returns 0 or
 * -EINVAL (with a message on stderr naming the variable). */
DS_HIDDEN int ds_options_from_env(dynstack_config_t *cfg);
DS_HIDDEN int ds_options_validate(const dynstack_config_t *cfg);

/* ---- stats.c: counters.
 * Two kinds of storage, summed on read: one process-wide array of relaxed
 * atomics, which the signal handler (and any code that may run in it) uses;
 * and a block per thread for the create/destroy/cache paths, written only by
 * its thread with plain load+store (no locked instruction: a shared counter
 * line bouncing between CPUs cost ~37 ns per add with two threads). A
 * handler never writes a thread block, so it cannot interrupt an update. */
enum ds_counter_index {
#define DS_COUNTER_INDEX_(name, kind, desc) DS_C_##name,
	DYNSTACK_STATS_COUNTERS(DS_COUNTER_INDEX_)
#undef DS_COUNTER_INDEX_
	DS_NCOUNTERS
};
DS_HIDDEN extern _Atomic uint64_t ds_counters[DS_NCOUNTERS];
#define DS_STAT_ADD(name, n)                                                                       \
	atomic_fetch_add_explicit(&ds_counters[DS_C_##name], (uint64_t)(n), memory_order_relaxed)
#define DS_STAT_SUB(name, n)                                                                       \
	atomic_fetch_sub_explicit(&ds_counters[DS_C_##name], (uint64_t)(n), memory_order_relaxed)

struct ds_tstats {
	_Atomic uint64_t v[DS_NCOUNTERS];
	struct ds_tstats *next;
};
DS_HIDDEN extern DS_TLS struct ds_tstats *ds_tstats;
/* Not from a signal handler. Falls back to the shared array on a thread
 * without a block. */
static inline void ds_tstat_add(unsigned i, uint64_t n)
{
	struct ds_tstats *t = ds_tstats;
	if (t)
		atomic_store_explicit(&t->v[i],
				      atomic_load_explicit(&t->v[i], memory_order_relaxed) + n,
				      memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&ds_counters[i], n, memory_order_relaxed);
}
#define DS_TSTAT_ADD(name, n) ds_tstat_add(DS_C_##name, (uint64_t)(n))
#define DS_TSTAT_SUB(name, n) ds_tstat_add(DS_C_##name, -(uint64_t)(n))
/* The calling thread's block: made at thread set-up, folded into the shared
 * array at thread exit. */
DS_HIDDEN int ds_tstats_init(void);
DS_HIDDEN void ds_tstats_fini(void);

/* ---- error.c / fmt: async-signal-safe text output */
struct ds_buf {
	char data[512];
	size_t len;
};
DS_HIDDEN void ds_buf_str_sigsafe(struct ds_buf *b, const char *s);
DS_HIDDEN void ds_buf_dec_sigsafe(struct ds_buf *b, uint64_t v);
DS_HIDDEN void ds_buf_hex_sigsafe(struct ds_buf *b, uint64_t v);
/* Write all of b to fd; returns 0 or -errno. */
DS_HIDDEN int ds_buf_write_sigsafe(const struct ds_buf *b, int fd);
/* The handle p of a destroyed `what` ("stack", "coroutine", "group") was
 * passed to fn: -EINVAL, or with check_handles a message and abort(). */
DS_HIDDEN int ds_stale_handle(const char *fn, const void *p, const char *what);

/* ---- os-linux.c: the only syscalls */
DS_HIDDEN size_t ds_os_page_size(void);
/* The page size, for hot paths; set by the first ds_os_page_size() (init). */
DS_HIDDEN extern size_t ds_page_size;
/* Reserve size bytes aligned to align, PROT_NONE, MAP_NORESERVE. */
DS_HIDDEN int ds_os_reserve(size_t size, size_t align, void **out);
DS_HIDDEN int ds_os_map_rw(size_t size, void **out);
DS_HIDDEN void ds_os_unmap(void *p, size_t size);
/* size RW bytes with one PROT_NONE guard page below them; *out is the RW
 * part, ds_os_unmap_guarded frees both. */
DS_HIDDEN int ds_os_map_guarded(size_t size, void **out);
DS_HIDDEN void ds_os_unmap_guarded(void *p, size_t size);
/* Probe MADV_GUARD_INSTALL once; true when the kernel has guard regions. */
DS_HIDDEN bool ds_os_guard_supported(void);
/* The process's mappings (lines of /proc/self/maps) and vm.max_map_count;
 * false when /proc cannot tell. Not for the handler. */
DS_HIDDEN bool ds_os_map_count(long *count, long *max);
/* Make a fresh PROT_NONE range of an arena ready for the backend: the guard
 * backend maps it RW and covers it with guard markers. */
DS_HIDDEN int ds_os_prepare(dynstack_backend_t be, uintptr_t lo, uintptr_t hi);
/* Commit [lo, hi): accessible, pages allocated by the kernel on touch. */
DS_HIDDEN int ds_os_commit_sigsafe(dynstack_backend_t be, uintptr_t lo, uintptr_t hi);
/* Allocate the pages of committed [lo, hi) now (MADV_POPULATE_WRITE, Linux
 * 5.14) so the access that faulted does not fault again. */
DS_HIDDEN int ds_os_populate_sigsafe(uintptr_t lo, uintptr_t hi);
/* Decommit [lo, hi): pages freed and inaccessible again. */
DS_HIDDEN int ds_os_decommit(dynstack_backend_t be, uintptr_t lo, uintptr_t hi);
DS_HIDDEN int ds_os_sigaction(int sig, const struct sigaction *act, struct sigaction *old);
DS_HIDDEN int ds_os_sigmask_sigsafe(int how, const sigset_t *set, sigset_t *old);
DS_HIDDEN int ds_os_sigaltstack(const stack_t *ss, stack_t *old);
DS_HIDDEN int ds_os_raise_sigsafe(int sig);
#if DS_HAVE_LIBSIGSEGV
/* -Dlibsigsegv: make handler libsigsegv's global SIGSEGV handler
 * (sigsegv_install_handler); 0 or -ENOTSUP. */
DS_HIDDEN int ds_os_libsigsegv_install(int (*handler)(void *fault_address, int serious));
/* sa's handler is libsigsegv's own, installed by any of its install calls. */
DS_HIDDEN bool ds_os_libsigsegv_entry(const struct sigaction *sa);
#endif
DS_HIDDEN bool ds_os_on_valgrind(void);
/* Valgrind's stack registry: a handle (its id + 1), or 0 when not running
 * under it. */
DS_HIDDEN unsigned ds_os_valgrind_stack_register(uintptr_t lo, uintptr_t hi);
DS_HIDDEN void ds_os_valgrind_stack_deregister(unsigned id);
/* Tell memcheck that [lo, lo + n) may be written (its old bytes are dead). */
DS_HIDDEN void ds_os_valgrind_make_writable(uintptr_t lo, size_t n);

/* ---- arena.c: slots and the address -> slot map */
/* The stack whose slot contains addr, or NULL. Lock-free, O(1). */
DS_HIDDEN struct dynstack *ds_arena_lookup_sigsafe(uintptr_t addr);
/* Take a slot of at least size usable bytes; it is prepared for the backend
 * and fully decommitted. Returns 0, -ENOMEM. */
DS_HIDDEN int ds_arena_slot_get(size_t size, struct dynstack **out);
DS_HIDDEN void ds_arena_slot_put(struct dynstack *s);
DS_HIDDEN uintptr_t ds_slot_base(const struct dynstack *s);
/* The coroutine object of s's slot: type-stable like the slot itself, so a
 * destroyed coroutine's handle stays readable (see coro.c). */
DS_HIDDEN struct dynstack_coro *ds_arena_coro(const struct dynstack *s);
/* log2 of the slot stride for size usable bytes (floor page included). */
DS_HIDDEN unsigned ds_arena_class(size_t size);
#define DS_ARENA_MAX_SHIFT 31

/* ---- fault.c: the SIGSEGV/SIGBUS handler */
DS_HIDDEN int ds_fault_install(void);
DS_HIDDEN bool ds_fault_installed(void);

/* ---- thread.c: per-thread sync stack */
DS_HIDDEN extern DS_TLS int ds_thread_ready;
/* The calling thread's sync stack, [lo, hi), 0 when it has none from us. */
DS_HIDDEN extern DS_TLS uintptr_t ds_sync_lo, ds_sync_hi;
/* Below this much room left on the sync stack the handler refuses to go on
 * (nested signals ate it): a report now beats a silent death later, when
 * the kernel finds no room for a signal frame. */
#define DS_SYNC_HEADROOM ((uintptr_t)8 << 10)
DS_HIDDEN int ds_thread_init_slow(void);
static inline int ds_thread_ensure(void)
{
	return __builtin_expect(ds_thread_ready, 1) ? 0 : ds_thread_init_slow();
}

/* ---- stack.c: stack objects and the fault decision */
enum ds_fault_kind {
	DS_FAULT_FOREIGN = 0,  /* not ours: chain */
	DS_FAULT_COMMITTED,    /* pages committed: retry the access */
	DS_FAULT_SPURIOUS,     /* already committed: retry the access */
	DS_FAULT_WARNED,       /* committed in the reserve, first time: warn, retry */
	DS_FAULT_OVERFLOW,     /* floor hit: the policy's overflow action */
	DS_FAULT_COMMIT_FAILED /* the kernel refused the commit: report and die */
};
DS_HIDDEN enum ds_fault_kind ds_stack_fault_sigsafe(struct dynstack *s, uintptr_t addr, int *err);
/* Commit [target, *edgep) and lower the edge to target (CAS, with peak and
 * page counters). 1: lowered (*edgep is the old edge); 0: another thread got
 * there first (*edgep is the current edge); -errno: the kernel refused. */
DS_HIDDEN int ds_stack_grow_sigsafe(struct dynstack *s, uintptr_t target, uintptr_t *edgep);
/* Copy a caller's attr (any struct_size we know; NULL: defaults) into *a,
 * filling what it lacks with defaults. 0 or -EINVAL. */
DS_HIDDEN int ds_attr_load(dynstack_attr_t *a, const dynstack_attr_t *attr);
DS_HIDDEN int ds_stack_create(struct dynstack **out, const dynstack_attr_t *attr, uint32_t flags);
/* Stacks are committed whole at creation and never trimmed: under Valgrind
 * (it restarts a faulting push with a wrong stack pointer) and under TSan
 * (its runtime runs on green stacks holding its own locks, and a commit
 * fault there deadlocks in the handler's atomics). */
#if defined(__SANITIZE_THREAD__)
#define DS_WHOLE_STACKS_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define DS_WHOLE_STACKS_BUILD 1
#endif
#endif
#ifndef DS_WHOLE_STACKS_BUILD
#define DS_WHOLE_STACKS_BUILD 0
#endif
static inline bool ds_stack_whole(const struct dynstack *s)
{
	return DS_WHOLE_STACKS_BUILD || s->vg_id != 0;
}
DS_HIDDEN void ds_stack_release(struct dynstack *s);
DS_HIDDEN void ds_stack_discard(struct dynstack *s, uintptr_t edge);

/* ---- cache.c: trims and the stack cache */
/* Per-thread state (trim queue, cache), made by ds_thread_init_slow. */
DS_HIDDEN int ds_tl_init(void);
DS_HIDDEN void ds_tl_fini(void);
/* shared.c: at thread exit, orphan the thread's groups (their coroutines
 * can then only be destroyed, from any thread) and free its own group if it
 * is empty. */
DS_HIDDEN void ds_shared_thread_fini(void);
/* segment.c: release the segment this thread keeps for its next crossing. */
DS_HIDDEN void ds_segment_thread_fini(void);
/* A trim point on the thread running s, at stack pointer sp, before it
 * switches away: may queue a decommit (and flush the queue first). */
DS_HIDDEN void ds_trim_point_slow(struct dynstack *s, uintptr_t sp);
/* (The caller filters the common case first: nothing committed below
 * sp minus the policy's margin; see leave() in coro.c.) */
/* s is about to run, or be destroyed: cancel its queued trim, or wait for a
 * flush in progress on another thread. */
DS_HIDDEN void ds_trim_claim(struct dynstack *s);
static inline void ds_trim_before_run(struct dynstack *s)
{
	if (__builtin_expect(atomic_load_explicit(&s->trim_state, memory_order_acquire) != 0, 0))
		ds_trim_claim(s);
}
/* The fault handler saw a commit fault at page on s. */
DS_HIDDEN void ds_trim_note_fault_sigsafe(struct dynstack *s, uintptr_t page);
/* A warm stack of class shift from the caches, or NULL (state CACHED). */
DS_HIDDEN struct dynstack *ds_cache_get(unsigned shift);
/* Keep a released stack warm; false: the caller frees it to the arena. */
DS_HIDDEN bool ds_cache_put(struct dynstack *s);

/* ---- coro.c: overflow=fail. If the fault interrupted code running on s
 * (its owning coroutine), rewrite the interrupted context so that it ends
 * the coroutine instead; returns false when that cannot be done. */
DS_HIDDEN bool ds_coro_fail_redirect_sigsafe(struct dynstack *s, void *uctx);
/* A dynstack_call segment starts or stops being used by the running
 * coroutine (if any): destroying a coroutine suspended on segments releases
 * them. */
DS_HIDDEN void ds_coro_segment_push(struct dynstack *seg);
DS_HIDDEN void ds_coro_segment_pop(struct dynstack *seg);

/* ---- shared.c: for overflow reports on a group's shared stack */
DS_HIDDEN void ds_shared_describe_sigsafe(struct ds_buf *b, const struct dynstack *s);

/* ---- policy.c */
struct ds_policy;
DS_HIDDEN int ds_policy_from_spec(const char *spec, const struct ds_policy **out, char *err,
				  size_t errlen);
DS_HIDDEN void dynstack_policy_set_interned(const struct ds_policy *p);

/* ---- init (stack.c): implicit dynstack_init(NULL) */
DS_HIDDEN int ds_init_once(void);

/* ---- fork (stack.c): one pthread_atfork handler, registered at init, takes
 * every lock of the library before fork and releases them after, in parent
 * and child: the child has only the forking thread, and a lock some other
 * thread held would stay held in it for ever. One handler, so that the locks
 * are taken in the library's order: init, install (fault.c), policy, trace,
 * stats, arena, cache. Each module with a lock has its ds_<module>_fork. */
enum ds_fork_phase {
	DS_FORK_PREPARE,
	DS_FORK_PARENT,
	DS_FORK_CHILD,
};
static inline void ds_fork_lock(pthread_mutex_t *m, enum ds_fork_phase ph)
{
	if (ph == DS_FORK_PREPARE)
		pthread_mutex_lock(m);
	else
		pthread_mutex_unlock(m);
}
DS_HIDDEN void ds_fork_register(void);
DS_HIDDEN void ds_fault_fork(enum ds_fork_phase ph);
DS_HIDDEN void ds_policy_fork(enum ds_fork_phase ph);
DS_HIDDEN void ds_trace_fork(enum ds_fork_phase ph); /* trace.c */
DS_HIDDEN void ds_stats_fork(enum ds_fork_phase ph);
DS_HIDDEN void ds_arena_fork(enum ds_fork_phase ph);
DS_HIDDEN void ds_shared_fork(enum ds_fork_phase ph);
DS_HIDDEN void ds_cache_fork(enum ds_fork_phase ph);

#endif /* DS_INTERNAL_H */
