/* Per-thread sync stacks: the sigaltstack the fault handler runs on, the
 * user-space twin of arm64's per-CPU sync stack. Without one, the kernel
 * cannot push a signal frame below an exhausted green stack and kills the
 * process with a bare SIGSEGV, so every entry point that may put a thread on
 * one of our stacks calls ds_thread_ensure() first. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "internal.h"
#include "trace.h"

DS_TLS int ds_thread_ready;
DS_TLS uintptr_t ds_sync_lo, ds_sync_hi;
static DS_TLS void *sync_base; /* ours, or NULL when a foreign one is kept */
static DS_TLS size_t sync_size;
static DS_TLS stack_t sync_prev; /* what we replaced, restored by fini */

static pthread_key_t exit_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void on_thread_exit(void *unused)
{
	ds_tl_fini();
	dynstack_thread_fini();
	ds_tstats_fini(); /* last: the two above still count */
}

static void key_init(void)
{
	pthread_key_create(&exit_key, on_thread_exit);
}

int ds_thread_init_slow(void)
{
	DS_KEEP_ERRNO();
	int rc = ds_init_once();
	if (rc)
		return rc;
	if (ds_thread_ready)
		return 0;

	stack_t cur;
	if ((rc = ds_os_sigaltstack(NULL, &cur)))
		return rc;
	if (cur.ss_flags & SS_ONSTACK)
		return -EBUSY; /* cannot swap the stack we are running on */
	/* The thread's trace buffer, so that its faults can be recorded; a
	 * failure only loses this thread's events (counted as dropped). */
	ds_trace_thread_init();
	/* Its trim queue and stack cache; and, whatever the alternate stack,
	 * an exit hook that flushes the one and hands the other to the depot. */
	if ((rc = ds_tstats_init()))
		return rc;
	if ((rc = ds_tl_init())) {
		ds_tstats_fini(); /* no exit hook yet to free it */
		return rc;
	}
	pthread_once(&key_once, key_init);
	pthread_setspecific(exit_key, &sync_base);
	if (!(cur.ss_flags & SS_DISABLE) && cur.ss_size >= ds_opt.sync_stack_size) {
		ds_sync_lo = (uintptr_t)cur.ss_sp;
		ds_sync_hi = ds_sync_lo + cur.ss_size;
		ds_thread_ready = 1; /* the thread's own is big enough: keep it */
		return 0;
	}

	void *base;
	if ((rc = ds_os_map_guarded(ds_opt.sync_stack_size, &base)))
		return rc;
	stack_t ss = { .ss_sp = base, .ss_size = ds_opt.sync_stack_size, .ss_flags = 0 };
	if ((rc = ds_os_sigaltstack(&ss, NULL))) {
		ds_os_unmap_guarded(base, ds_opt.sync_stack_size);
		return rc;
	}
	sync_prev = cur;
	sync_base = base;
	sync_size = ds_opt.sync_stack_size;
	ds_sync_lo = (uintptr_t)base;
	ds_sync_hi = ds_sync_lo + sync_size;
	ds_thread_ready = 1;
	DS_STAT_ADD(nr_dynamic_stacks_sync_stacks, 1);
	return 0;
}

DYNSTACK_API int dynstack_thread_init(void)
{
	return ds_thread_ensure();
}

DYNSTACK_API void dynstack_thread_fini(void)
{
	DS_KEEP_ERRNO();
	if (!sync_base) {
		ds_thread_ready = 0;
		return;
	}
	stack_t cur;
	if (ds_os_sigaltstack(NULL, &cur) || (cur.ss_flags & SS_ONSTACK))
		return; /* called from a handler running on it: leave it */
	if (cur.ss_sp == sync_base) {
		stack_t restore = sync_prev;
		if (restore.ss_flags & SS_DISABLE) {
			memset(&restore, 0, sizeof(restore));
			restore.ss_flags = SS_DISABLE;
		}
		/* Refused (the old one is too small for this kernel's signal
		 * frames, say): ours stays installed and mapped, and the thread
		 * ready. Unmapping a stack the kernel still delivers on would make
		 * the next signal a silent death. */
		if (ds_os_sigaltstack(&restore, NULL))
			return;
	}
	ds_os_unmap_guarded(sync_base, sync_size);
	sync_base = NULL;
	ds_thread_ready = 0;
	DS_STAT_SUB(nr_dynamic_stacks_sync_stacks, 1);
}
