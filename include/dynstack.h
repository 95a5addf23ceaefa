/* libdynstack — dynamic (grow-on-fault) stacks for user-space coroutines.
 *
 * The one public header. Every call that can fail returns 0 or a negative
 * errno value and never touches errno; constructors return their object
 * through an out-parameter that is set to NULL on failure.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef DYNSTACK_H
#define DYNSTACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define DYNSTACK_API __attribute__((visibility("default")))
#else
#define DYNSTACK_API
#endif

#define DYNSTACK_VERSION_MAJOR 0
#define DYNSTACK_VERSION_MINOR 2
#define DYNSTACK_VERSION_PATCH 0

/* Default reservation of a stack (the kernel's THREAD_SIZE on arm64). */
#define DYNSTACK_DEFAULT_SIZE (16u * 1024u)
/* Largest reservation a single stack may ask for. */
#define DYNSTACK_MAX_SIZE ((size_t)1 << 30)
/* Smallest per-thread sync (alternate signal) stack the library accepts. */
#define DYNSTACK_MIN_SYNC_STACK (64u * 1024u)
/* Longest stack name kept (longer names are truncated). */
#define DYNSTACK_NAME_MAX 31

/* ---------------------------------------------------------------------- */
/* Process-wide set-up                                                     */

typedef enum dynstack_backend {
	DYNSTACK_BACKEND_AUTO = 0, /* guard where the kernel has it, else mprotect */
	DYNSTACK_BACKEND_GUARD,	   /* MADV_GUARD_INSTALL/REMOVE, Linux >= 6.13 */
	DYNSTACK_BACKEND_MPROTECT, /* PROT_NONE + mprotect, any Linux; ~32k stacks */
} dynstack_backend_t;

typedef struct dynstack_config {
	size_t struct_size;	    /* sizeof(dynstack_config_t), set by _init */
	dynstack_backend_t backend; /* DYNSTACK_BACKEND=guard|mprotect overrides */
	size_t default_size;	    /* reservation when attr.size == 0 */
	size_t sync_stack_size;	    /* per-thread alternate stack, >= 64 KiB */
	int stats_at_exit;	    /* print counters to stderr at exit (DYNSTACK_STATS=1) */
	size_t cache_stacks;	    /* warm stacks kept per thread; 0 = no cache (DYNSTACK_CACHE) */
	size_t cache_pages;	    /* committed pages all caches may keep (DYNSTACK_CACHE_PAGES) */
	size_t trim_batch; /* pages a thread queues before decommitting (DYNSTACK_TRIM_BATCH) */
	int shared_poison; /* every group poisons, see DYNSTACK_GROUP_POISON (DYNSTACK_SHARED_POISON=1) */
	int check_handles; /* destroyed handles never reused; using one aborts (DYNSTACK_CHECK_HANDLES=1) */
} dynstack_config_t;

/* Fill *cfg with the defaults. Returns -EINVAL for NULL. */
DYNSTACK_API int dynstack_config_init(dynstack_config_t *cfg);

/* Set the library up for the whole process: choose the commit backend and
 * install the SIGSEGV/SIGBUS handler (SA_SIGINFO|SA_ONSTACK). cfg may be
 * NULL for the defaults; DYNSTACK_* environment variables are applied on top
 * of cfg either way (DYNSTACK_BACKEND, DYNSTACK_SIZE, DYNSTACK_STATS).
 *
 * Idempotent: a later call returns 0 and changes nothing, except that it
 * re-installs the handler if somebody replaced it since (the replacement
 * becomes the handler that foreign faults are passed to). A later call whose
 * cfg asks for a different backend than the active one returns -EBUSY.
 * -EOPNOTSUPP: the guard backend was asked for and the kernel lacks it.
 * Called implicitly by the first create. */
DYNSTACK_API int dynstack_init(const dynstack_config_t *cfg);

/* Name of the active backend ("guard", "mprotect"), or "none" before init. */
DYNSTACK_API const char *dynstack_backend_name(void);

/* The calling thread's sync stack: an alternate signal stack of at least
 * config.sync_stack_size bytes with a guard page below it, on which the
 * fault handler runs. Done lazily by the first create or resume on a
 * thread; a runtime that switches to our stacks with its own code must call
 * it on every thread that does. An existing alternate stack that is big
 * enough is kept. Returns 0, -ENOMEM, or -EBUSY if the thread is running on
 * its current alternate stack. */
DYNSTACK_API int dynstack_thread_init(void);
/* Remove and free the sync stack installed by dynstack_thread_init on this
 * thread (a kept, foreign alternate stack is left alone). Also run
 * automatically when the thread exits. */
DYNSTACK_API void dynstack_thread_fini(void);

/* ---------------------------------------------------------------------- */
/* Stacks                                                                  */

typedef struct dynstack dynstack_t;
typedef struct dynstack_group dynstack_group_t;

/* Where a coroutine's frames live (dynstack_coro_create). */
typedef enum dynstack_mode {
	DYNSTACK_MODE_PRIVATE = 0, /* a dynamic stack of its own (the default) */
	DYNSTACK_MODE_SHARED = 1,  /* a group's shared stack, copied in and out */
} dynstack_mode_t;

typedef struct dynstack_attr {
	size_t struct_size; /* sizeof(dynstack_attr_t), set by _init */
	size_t size;	    /* reservation (THREAD_SIZE); 0 = config default */
	size_t initial;	    /* bytes committed at creation; 0 = the policy's */
	const char *name;   /* copied (truncated to DYNSTACK_NAME_MAX); may be NULL */
	const char *policy; /* policy spec for this stack; NULL = the process default */
	/* Since 0.2: coroutines only. */
	dynstack_mode_t mode;	 /* private or shared stack */
	dynstack_group_t *group; /* shared mode: the group; NULL = the thread's own */
} dynstack_attr_t;

/* Fill *attr with the defaults. Returns -EINVAL for NULL. */
DYNSTACK_API int dynstack_attr_init(dynstack_attr_t *attr);

/* Reserve a stack of attr->size usable bytes (rounded up to pages), commit
 * the top attr->initial bytes, and place at least one never-committed guard
 * page below it. attr may be NULL for the defaults.
 * -EINVAL: out is NULL, size above DYNSTACK_MAX_SIZE, initial > size,
 * struct_size unknown. -ENOMEM: no address space, or the mprotect backend
 * reached vm.max_map_count. */
DYNSTACK_API int dynstack_create(dynstack_t **out, const dynstack_attr_t *attr);
/* Release a stack and all its pages. NULL is a no-op returning 0. -EINVAL
 * for a stack already destroyed (until a later create reuses its slot; with
 * check_handles never, and the call aborts), -EBUSY for a stack owned by a
 * coroutine (destroy the coroutine instead). */
DYNSTACK_API int dynstack_destroy(dynstack_t *stack);

/* Initial stack pointer (16-byte aligned, the top of the reservation). */
DYNSTACK_API void *dynstack_top(const dynstack_t *stack);
/* Usable reservation in bytes (the guard page is not included). */
DYNSTACK_API size_t dynstack_size(const dynstack_t *stack);
/* Bytes currently committed (accessible) at the top of the stack. */
DYNSTACK_API size_t dynstack_committed(const dynstack_t *stack);
/* Largest number of bytes ever committed on this stack. */
DYNSTACK_API size_t dynstack_peak(const dynstack_t *stack);
/* A trim point for runtimes with their own switch: call it when the code
 * running on stack has been switched out, with the stack pointer it was
 * suspended at. Pages wholly below sp minus the policy's margin are given
 * back now, if the policy's hysteresis says so (trim=yield:IDLE: only after
 * IDLE trim points without growth). Nothing may run on the stack meanwhile.
 * 0, -EINVAL (NULL, not live, sp outside the stack), or the -errno of a
 * decommit the kernel refused (the pages stay committed). */
DYNSTACK_API int dynstack_trim(dynstack_t *stack, const void *sp);
/* Decommit the calling thread's queued trims now (coroutine yields and exits
 * queue them, to decommit in batches). 0 or -errno of the first failure. */
DYNSTACK_API int dynstack_flush(void);

/* Name given at creation ("" when none), and a process-unique id. */
DYNSTACK_API const char *dynstack_name(const dynstack_t *stack);
DYNSTACK_API uint64_t dynstack_id(const dynstack_t *stack);
/* All of these return 0 / NULL / "" for a NULL stack. */

/* ---------------------------------------------------------------------- */
/* Cooperative stacks: remaining, ensure, and calls on a new segment       */

/* Bytes between the caller's stack pointer and the floor of the stack it
 * runs on: a dynamic stack (coroutine or segment), committed or not; on a
 * thread's own stack, what pthread_getattr_np reports below the stack
 * pointer (guard excluded; for the main thread, up to RLIMIT_STACK). */
DYNSTACK_API size_t dynstack_remaining(void);
/* Commit now, in one call, so that at least bytes below the caller's stack
 * pointer are committed: no fault while the caller uses them. A call that
 * needs no commit costs a thread-local load and a compare. 0, or -ENOSPC
 * when the stack cannot hold that many bytes (then use dynstack_call), or
 * -errno from the kernel. On a thread's own stack: 0 if they fit (the
 * kernel grows it), else -ENOSPC. */
DYNSTACK_API int dynstack_ensure(size_t bytes);
/* Run fn(arg) with at least need bytes of stack: directly when that many
 * remain, else on a segment (a stack from the cache of at least need plus a
 * margin) that is given back when fn returns or unwinds (C++ exceptions
 * propagate to the caller; C code compiled with -fexceptions runs its
 * cleanups). Returns fn's result. Works on any thread, on or off a
 * coroutine, and nests. If no segment can be had, a report is written to
 * stderr and the process aborts: running fn anyway would overflow. */
DYNSTACK_API void *dynstack_call(size_t need, void *(*fn)(void *), void *arg);

/* ---------------------------------------------------------------------- */
/* Asynchronous signals (docs/signals.md)                                   */

struct sigaction;
/* Like sigaction(2), but a handler always runs on the thread's sync stack
 * (SA_ONSTACK is added), never on a green stack: timer, profiler and other
 * asynchronous signals then cost green stacks nothing. (Without it, a signal
 * whose frame meets an uncommitted page cannot be delivered: the library
 * reports that and the process dies.) For SIGSEGV and SIGBUS
 * the library's handler stays first and act becomes the handler that faults
 * not ours are passed to (oldact: the one before). 0, -EINVAL (bad signal,
 * SIGKILL, SIGSTOP), or -errno from sigaction. */
DYNSTACK_API int dynstack_sigaction(int sig, const struct sigaction *act, struct sigaction *oldact);
/* Report every installed handler that lacks SA_ONSTACK (it would run on the
 * live green stack), one line each to fd (-1: no output). Returns how many. */
DYNSTACK_API int dynstack_signals_check(int fd);

/* ---------------------------------------------------------------------- */
/* Fault policies                                                          */
/*
 * A policy decides how much a stack commits at creation, how much each fault
 * commits, and what an overflow does. It is chosen by a spec string: a
 * comma-separated list of items (docs/policies.md has the grammar):
 *   step=N          commit the faulting page and N-1 more below it (default 1)
 *   double[=CAP]    commit as much again as is committed, at most CAP per fault
 *   learn           commit up to the high-water mark of this slot's or this
 *                   name's previous stacks in one fault
 *   grow=NAME       a registered user policy (NAME alone works too)
 *   initial=SIZE    bytes committed at creation (default one page)
 *   populate        also populate the committed pages in the same fault
 *   overflow=abort  report, then die by SIGSEGV with a core (default)
 *   overflow=warn:SIZE  keep SIZE bytes of reserve below the stack: crossing
 *                   into it commits, warns once, and goes on
 *   overflow=fail   end the coroutine; its resumer gets -EOVERFLOW
 *   trim=yield[:IDLE]  at a yield or exit, give back the pages below the
 *                   stack pointer (minus the margin) once IDLE trim points
 *                   passed without growth (default 4; doubles after a trim
 *                   that was wrong); trim=off keeps them
 *   margin=SIZE     bytes below the stack pointer that a trim keeps (4k)
 * SIZE takes a k/K/m/M suffix. Specs come from DYNSTACK_POLICY (at init),
 * dynstack_policy_set(), or dynstack_attr_t.policy per stack.
 */

typedef enum dynstack_overflow_action {
	DYNSTACK_OVERFLOW_ABORT = 0,
	DYNSTACK_OVERFLOW_WARN = 1,
	DYNSTACK_OVERFLOW_FAIL = 2,
} dynstack_overflow_action_t;

/* What a grow decision sees. All sizes are bytes counted down from the top. */
typedef struct dynstack_fault_info {
	size_t page_size;
	size_t size;	  /* nominal usable size (THREAD_SIZE) */
	size_t limit;	  /* the most that may be committed now (size, or size + reserve) */
	size_t committed; /* committed before this fault */
	size_t depth;	  /* top down to the bottom of the faulting page: the minimum */
	size_t peak;	  /* most ever committed by this stack */
	size_t learned;	  /* high-water of earlier stacks of this slot or name (0: none) */
	uint64_t faults;  /* faults this stack took before this one */
	uint64_t id;
	const char *name;
} dynstack_fault_info_t;

/* Returns the bytes that should be committed after this fault. The library
 * clamps the answer to [info->depth, info->limit], rounded up to pages.
 * DYNSTACK_SIGSAFE: it runs inside the SIGSEGV handler, on the sync stack:
 * async-signal-safe calls only, no locks, no allocation, bounded time. */
#define DYNSTACK_SIGSAFE
typedef size_t (*dynstack_grow_fn)(const dynstack_fault_info_t *info, void *data) DYNSTACK_SIGSAFE;

typedef struct dynstack_policy {
	size_t struct_size;    /* sizeof(dynstack_policy_t) */
	const char *name;      /* [a-z0-9_-], 1..31 characters; the spec refers to it */
	dynstack_grow_fn grow; /* DYNSTACK_SIGSAFE */
	void *data;	       /* passed to grow */
} dynstack_policy_t;

/* Register a grow policy under policy->name (copied; it stays registered for
 * the life of the process). -EINVAL: bad struct, name or NULL grow;
 * -EEXIST: the name is taken (built-in names included); -ENOSPC: table full. */
DYNSTACK_API int dynstack_policy_register(const dynstack_policy_t *policy);
/* Parse spec and make it the default for stacks created from now on.
 * -EINVAL for a bad spec (the reason is written to stderr). */
DYNSTACK_API int dynstack_policy_set(const char *spec);
/* Parse spec without using it; on -EINVAL, write the reason to err (may be
 * NULL). A spec names a registered policy only once it is registered. */
DYNSTACK_API int dynstack_policy_check(const char *spec, char *err, size_t errlen);
/* Copy the canonical form of the default policy's spec into buf.
 * Returns its length, or -EINVAL (NULL buf) / -ENOSPC (too small). */
DYNSTACK_API int dynstack_policy_get(char *buf, size_t len);
/* The canonical spec of the policy a stack runs under ("" for NULL). */
DYNSTACK_API const char *dynstack_policy_of(const dynstack_t *stack);

/* ---------------------------------------------------------------------- */
/* Event traces (docs/trace.md)                                            */

/* Start recording events (create, destroy, fault, spurious, overflow, warn)
 * into the file at path (truncated), also done at init by DYNSTACK_TRACE=path.
 * -EBUSY: already tracing; -errno from open. */
DYNSTACK_API int dynstack_trace_start(const char *path);
/* Flush every thread's buffered events and close the file. 0 if not tracing. */
DYNSTACK_API int dynstack_trace_stop(void);
/* Write the calling thread's buffered events to the file now. */
DYNSTACK_API int dynstack_trace_flush(void);

/* ---------------------------------------------------------------------- */
/* Coroutines (asymmetric)                                                 */

typedef struct dynstack_coro dynstack_coro_t;
typedef void (*dynstack_coro_fn)(void *arg);

typedef enum dynstack_coro_status {
	DYNSTACK_CORO_SUSPENDED = 1, /* created or yielded: may be resumed */
	DYNSTACK_CORO_RUNNING = 2,   /* running on some thread now */
	DYNSTACK_CORO_NORMAL = 3,    /* resumed another coroutine, waits for it */
	DYNSTACK_CORO_DEAD = 4,	     /* its function returned */
} dynstack_coro_status_t;

/* Create a suspended coroutine that will run fn(arg) on a new dynamic stack
 * (attr as for dynstack_create), or with attr->mode DYNSTACK_MODE_SHARED on
 * the shared stack of attr->group (NULL: the calling thread's own group,
 * made on first use, freed at thread exit). In shared mode attr->initial
 * and attr->policy must be 0 (the group's stack has them), attr->size, if
 * set, must fit in the group's stack, and the name is not kept.
 * -EINVAL: bad arguments, or a group of another thread. */
DYNSTACK_API int dynstack_coro_create(dynstack_coro_t **out, dynstack_coro_fn fn, void *arg,
				      const dynstack_attr_t *attr);
/* Run c until it yields or returns. It may be resumed from any OS thread,
 * never from two at once (a contract, not arbitrated); a shared-mode one
 * only on its group's thread. -EINVAL: NULL, dead or destroyed, or a shared-mode
 * coroutine resumed on a thread its group does not belong to (or whose
 * thread exited); -EBUSY: running, waiting for a coroutine it resumed,
 * resumed from inside itself, or another coroutine of its group runs; -ENOMEM: no sync stack for this thread; -EOVERFLOW: c
 * overflowed its stack under overflow=fail and was ended (it is DEAD). */
DYNSTACK_API int dynstack_coro_resume(dynstack_coro_t *c);
/* Suspend the running coroutine, back to whoever resumed it. -EPERM when
 * called outside a coroutine. */
DYNSTACK_API int dynstack_coro_yield(void);
/* A dynstack_coro_status_t value, or -EINVAL for NULL or a destroyed handle. */
DYNSTACK_API int dynstack_coro_status(const dynstack_coro_t *c);
/* Free a coroutine that is suspended or dead (its stack goes with it).
 * NULL is a no-op returning 0; -EBUSY while it is running or normal.
 * Using the handle afterwards is refused with -EINVAL (NULL from
 * dynstack_coro_stack) until a later create reuses the object; with
 * check_handles it is never reused and any use aborts (docs/api.md,
 * "Destroyed handles"). */
DYNSTACK_API int dynstack_coro_destroy(dynstack_coro_t *c);
/* The coroutine's stack (owned by the coroutine), NULL for NULL or a
 * destroyed handle. */
DYNSTACK_API dynstack_t *dynstack_coro_stack(const dynstack_coro_t *c);
/* The coroutine running on this thread, or NULL. */
DYNSTACK_API dynstack_coro_t *dynstack_coro_current(void);

/* ---------------------------------------------------------------------- */
/* Shared (copy) stacks (docs/shared.md)                                   */
/*
 * The coroutines of a group take turns on one execution stack, the group's
 * (itself a dynamic stack: it grows on fault, is overflow-checked and
 * trimmed by its policy). When a coroutine of the group is resumed and
 * another one's frames are on the shared stack, the live bytes of that one,
 * [its stack pointer, top), are copied into its save buffer, and the
 * resumed one's copied back. Resuming the coroutine whose bytes are still
 * there copies nothing (the owner cache). An idle coroutine costs its saved
 * bytes and some 64 bytes of metadata instead of at least a page.
 *
 * THE CONTRACT: a pointer into a shared-mode coroutine's stack (the address
 * of a local variable, an alloca) is valid only while that coroutine runs.
 * Once it yields, its frames may be copied away and the addresses reused by
 * another coroutine of the group: handing such a pointer to another
 * coroutine, or keeping it across a yield in a data structure others read,
 * reads or corrupts someone else's frames. DYNSTACK_GROUP_POISON (or
 * DYNSTACK_SHARED_POISON=1) makes every switch-out copy the frames away and
 * fill the shared stack with 0xdb bytes, so a stale pointer reads garbage
 * at once instead of sometimes.
 *
 * Only one coroutine of a group runs at a time: resuming one while another
 * of the group runs (or waits for a coroutine it resumed) is -EBUSY; resume
 * coroutines of a group from outside it (a scheduler on the thread's own
 * stack, a private coroutine, another group).
 */

/* The group's coroutines may be resumed from any thread, one thread at a
 * time (a second thread gets -EBUSY). Default: only the creating thread. */
#define DYNSTACK_GROUP_ANY_THREAD (1u << 0)
/* Copy out and poison on every switch-out (a debugging mode; slow). */
#define DYNSTACK_GROUP_POISON (1u << 1)

/* Create a group whose shared stack is made from attr (size, initial, name,
 * policy, as for dynstack_create; mode and group must be 0). flags:
 * DYNSTACK_GROUP_*. -EINVAL: bad attr or flags; -ENOMEM; -EOPNOTSUPP: no
 * way to find a suspended context's stack pointer on this CPU. */
DYNSTACK_API int dynstack_group_create(dynstack_group_t **out, const dynstack_attr_t *attr,
				       unsigned flags);
/* Free a group and its stack. NULL: 0. -EBUSY while it has coroutines;
 * -EINVAL for a thread's own group (the library frees it at thread exit) or
 * one already destroyed (docs/api.md, "Destroyed handles"). */
DYNSTACK_API int dynstack_group_destroy(dynstack_group_t *group);
/* The group's shared stack (owned by the group), NULL for NULL or a
 * destroyed group. */
DYNSTACK_API dynstack_t *dynstack_group_stack(const dynstack_group_t *group);
/* The group of a shared-mode coroutine; NULL for a private one or NULL. */
DYNSTACK_API dynstack_group_t *dynstack_coro_group(const dynstack_coro_t *c);
/* Bytes of c held in its save buffer now: 0 for a private coroutine, and
 * while its frames are on the shared stack. */
DYNSTACK_API size_t dynstack_coro_saved(const dynstack_coro_t *c);

/* ---------------------------------------------------------------------- */
/* Statistics, in /proc/vmstat style                                       */

/* X(name, kind, description): every counter is declared once here; the
 * struct, dynstack_stats_print and docs/api.md come from this list.
 * kind is "gauge" (current value) or "event" (count since init). */
#define DYNSTACK_STATS_COUNTERS(X)                                                                 \
	X(nr_dynamic_stacks, gauge, "live stacks")                                                 \
	X(nr_dynamic_stacks_pages, gauge, "pages committed on live stacks")                        \
	X(nr_dynamic_stacks_faults, event, "faults that committed pages")                          \
	X(nr_dynamic_stacks_spurious, event, "faults on pages already committed (retried)")        \
	X(nr_dynamic_stacks_overflows, event, "faults on a guard page (reported)")                 \
	X(nr_dynamic_stacks_commit_failed, event, "commits the kernel refused (reported)")         \
	X(nr_dynamic_stacks_foreign, event, "faults not ours, passed to the previous handler")     \
	X(nr_dynamic_stacks_created, event, "stacks created")                                      \
	X(nr_dynamic_stacks_destroyed, event, "stacks destroyed")                                  \
	X(nr_dynamic_stacks_arenas, gauge, "arenas in use")                                        \
	X(nr_dynamic_stacks_sync_stacks, gauge, "sync stacks installed by the library")            \
	X(nr_dynamic_stacks_coros, gauge, "live coroutines")                                       \
	X(nr_dynamic_stacks_warnings, event,                                                       \
	  "crossings into the overflow reserve (overflow=warn)")                                   \
	X(nr_dynamic_stacks_failed, event, "coroutines ended by overflow=fail")                    \
	X(nr_dynamic_stacks_populated, event, "pages populated in the fault (populate)")           \
	X(nr_dynamic_stacks_trace_events, event, "trace events recorded")                          \
	X(nr_dynamic_stacks_trace_dropped, event, "trace events lost to a full buffer")            \
	X(nr_dynamic_stacks_trimmed, event, "pages given back by trims")                           \
	X(nr_dynamic_stacks_trim_calls, event, "decommit calls made by trims")                     \
	X(nr_dynamic_stacks_mistrims, event, "faults on pages a trim had given back")              \
	X(nr_dynamic_stacks_cached, gauge, "destroyed stacks kept warm in caches")                 \
	X(nr_dynamic_stacks_cached_pages, gauge, "committed pages of cached stacks")               \
	X(nr_dynamic_stacks_cache_hits, event, "creates served by a cache")                        \
	X(nr_dynamic_stacks_ensured, event, "pages committed by dynstack_ensure")                  \
	X(nr_dynamic_stacks_segments, event, "dynstack_call runs on a new segment")                \
	X(nr_shared_groups, gauge, "groups of shared-stack coroutines")                            \
	X(nr_shared_saved_bytes, gauge, "bytes of suspended shared-mode coroutines saved")         \
	X(nr_shared_buffer_bytes, gauge, "capacity of the save buffers")                           \
	X(nr_shared_copies, event, "shared-stack copies (out or in)")                              \
	X(nr_shared_copied_bytes, event, "bytes copied by them")                                   \
	X(nr_shared_owner_hits, event, "resumes that found their frames on the shared stack")

typedef struct dynstack_stats {
	size_t struct_size; /* set by the caller to sizeof(dynstack_stats_t) */
	dynstack_backend_t backend;
	size_t page_size;
#define DYNSTACK_STATS_FIELD_(name, kind, desc) uint64_t name;
	DYNSTACK_STATS_COUNTERS(DYNSTACK_STATS_FIELD_)
#undef DYNSTACK_STATS_FIELD_
} dynstack_stats_t;

/* Snapshot the counters. st->struct_size must be set (or 0 = current size).
 * -EINVAL for NULL or a struct_size smaller than the first counter. */
DYNSTACK_API int dynstack_stats_get(dynstack_stats_t *st);
/* Write the counters to fd, one "name value" line each, then a
 * "dynamic_stacks_backend NAME" line. Returns 0 or -errno from write. */
DYNSTACK_API int dynstack_stats_print(int fd);

/* ---------------------------------------------------------------------- */
/* Errors and version                                                      */

/* A short message for 0 or any -errno value the library returns. */
DYNSTACK_API const char *dynstack_strerror(int err);
/* "MAJOR.MINOR.PATCH" */
DYNSTACK_API const char *dynstack_version(void);

#ifdef __cplusplus
}
#endif
#endif /* DYNSTACK_H */
