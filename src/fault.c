/* The SIGSEGV/SIGBUS handler: runs on the thread's sync stack (SA_ONSTACK),
 * never on a green stack. It finds the stack from the fault address alone,
 * commits, and returns; what is not ours goes to the handler that was there
 * before, delivered as the kernel would have. Async-signal-safe throughout:
 * no malloc, no stdio, no locks, errno preserved, bounded work. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include "internal.h"
#include "policy.h"

/* A fault that keeps coming back on a page we think is committed is not a
 * commit race but something else (a user mprotect, a pkey): after this many
 * in a row on one page it is passed on instead of retried forever. */
#define DS_SPURIOUS_LIMIT 64

static const int fault_signals[2] = { SIGSEGV, SIGBUS };

/* The handlers found at install time, double-buffered: a re-install writes
 * the idle copy and flips `prev_cur`, so the handler always reads a whole one. */
static struct sigaction prev_tab[2][2];
static _Atomic int prev_cur;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static DS_TLS uintptr_t spurious_page;
static DS_TLS unsigned spurious_count;

#if DS_HAVE_LIBSIGSEGV
/* What chain_sigsafe is passing on now (depth 0: nothing), for the
 * libsigsegv front end: libsigsegv may be the handler it passes to. */
static DS_TLS uintptr_t passing_addr;
static DS_TLS unsigned passing_depth;
#endif

static void on_fault(int sig, siginfo_t *si, void *uctx);

static int sig_index(int sig)
{
	return sig == SIGBUS;
}

static void describe_stack_sigsafe(struct ds_buf *b, const struct dynstack *s, uintptr_t addr)
{
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_relaxed);
	ds_buf_str_sigsafe(b, "stack ");
	ds_buf_dec_sigsafe(b, s->id);
	ds_buf_str_sigsafe(b, " \"");
	ds_buf_str_sigsafe(b, s->name);
	ds_buf_str_sigsafe(b, "\" (size ");
	ds_buf_dec_sigsafe(b, s->top - s->lo);
	ds_buf_str_sigsafe(b, ", committed ");
	ds_buf_dec_sigsafe(b, s->top - edge);
	if (s->reserve) {
		ds_buf_str_sigsafe(b, ", reserve ");
		ds_buf_dec_sigsafe(b, s->reserve);
	}
	if (s->flags & DS_SLOT_SEGMENT) {
		ds_buf_str_sigsafe(b, ", a dynstack_call segment called from ");
		if (s->caller_id) {
			ds_buf_str_sigsafe(b, "stack ");
			ds_buf_dec_sigsafe(b, s->caller_id);
		} else {
			ds_buf_str_sigsafe(b, "a thread's own stack");
		}
	}
	ds_shared_describe_sigsafe(b, s);
	ds_buf_str_sigsafe(b, ", policy ");
	ds_buf_str_sigsafe(b, s->policy->spec);
	ds_buf_str_sigsafe(b, ", range ");
	ds_buf_hex_sigsafe(b, s->lo);
	ds_buf_str_sigsafe(b, "-");
	ds_buf_hex_sigsafe(b, s->top);
	ds_buf_str_sigsafe(b, ", fault address ");
	ds_buf_hex_sigsafe(b, addr);
	ds_buf_str_sigsafe(b, ", depth ");
	ds_buf_dec_sigsafe(b, s->top - addr);
	if (addr < s->lo) {
		ds_buf_str_sigsafe(b, ", ");
		ds_buf_dec_sigsafe(b, s->lo - addr);
		ds_buf_str_sigsafe(b, " bytes below the stack");
	}
	ds_buf_str_sigsafe(b, ")");
}

static void report_sigsafe(const char *what, const struct dynstack *s, uintptr_t addr, int err)
{
	struct ds_buf b = { .len = 0 };
	ds_buf_str_sigsafe(&b, "libdynstack: ");
	ds_buf_str_sigsafe(&b, what);
	ds_buf_str_sigsafe(&b, " on ");
	describe_stack_sigsafe(&b, s, addr);
	if (err) {
		ds_buf_str_sigsafe(&b, ": ");
		ds_buf_str_sigsafe(&b, dynstack_strerror(err));
	}
	ds_buf_str_sigsafe(&b, "\n");
	ds_buf_write_sigsafe(&b, STDERR_FILENO);
}

/* Give sig the default action; for a fault the kernel raised, returning then
 * re-executes the access, which faults again and dies with a core that holds
 * the real faulting state. A signal somebody sent is sent again. */
static void die_by_default_sigsafe(int sig, const siginfo_t *si)
{
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	ds_os_sigaction(sig, &dfl, NULL);
	if (si->si_code <= 0)
		ds_os_raise_sigsafe(sig);
}

static void chain_sigsafe(int sig, siginfo_t *si, void *uctx)
{
	struct sigaction *p =
		&prev_tab[atomic_load_explicit(&prev_cur, memory_order_acquire)][sig_index(sig)];
	bool siginfo = p->sa_flags & SA_SIGINFO;

	DS_STAT_ADD(nr_dynamic_stacks_foreign, 1);
	if (!siginfo && p->sa_handler == SIG_DFL) {
		die_by_default_sigsafe(sig, si);
		return;
	}
	if (!siginfo && p->sa_handler == SIG_IGN) {
		/* The kernel does not let a fault it raised be ignored: it resets
		 * the action to default and delivers. A sent signal is ignored. */
		if (si->si_code > 0)
			die_by_default_sigsafe(sig, si);
		return;
	}
	/* Run it under the mask the kernel would have set for it. */
	const ucontext_t *uc = uctx;
	sigset_t mask = uc->uc_sigmask, saved;
	sigorset(&mask, &mask, &p->sa_mask);
	if (!(p->sa_flags & SA_NODEFER))
		sigaddset(&mask, sig);
	struct sigaction call = *p;
	if (p->sa_flags & SA_RESETHAND) {
		p->sa_flags &= ~(SA_SIGINFO | SA_RESETHAND);
		p->sa_handler = SIG_DFL;
	}
	ds_os_sigmask_sigsafe(SIG_SETMASK, &mask, &saved);
#if DS_HAVE_LIBSIGSEGV
	uintptr_t outer_addr = passing_addr;
	passing_addr = (uintptr_t)si->si_addr;
	passing_depth++;
#endif
	if (siginfo)
		call.sa_sigaction(sig, si, uctx);
	else
		call.sa_handler(sig);
#if DS_HAVE_LIBSIGSEGV
	passing_depth--;
	passing_addr = outer_addr;
#endif
	ds_os_sigmask_sigsafe(SIG_SETMASK, &saved, NULL);
}

static void sync_stack_exhausted_sigsafe(int sig, const siginfo_t *si, uintptr_t sp)
{
	struct ds_buf b = { .len = 0 };
	ds_buf_str_sigsafe(&b, "libdynstack: the sync stack is nearly exhausted (");
	ds_buf_dec_sigsafe(&b, sp - ds_sync_lo);
	ds_buf_str_sigsafe(&b, " of ");
	ds_buf_dec_sigsafe(&b, ds_sync_hi - ds_sync_lo);
	ds_buf_str_sigsafe(&b, " bytes left): nested signal handlers use too much of it; "
			       "raise dynstack_config_t.sync_stack_size\n");
	ds_buf_write_sigsafe(&b, STDERR_FILENO);
	die_by_default_sigsafe(sig, si);
}

static uintptr_t interrupted_sp(const void *uctx)
{
	const ucontext_t *uc = uctx;
#if defined(__x86_64__)
	return (uintptr_t)uc->uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
	return (uintptr_t)uc->uc_mcontext.sp;
#else
	(void)uc;
	return 0;
#endif
}

/* sig has a handler installed without SA_ONSTACK: it runs on whatever
 * stack is live, a green one included. sigaction(2) is async-signal-safe. */
static bool lacks_onstack_sigsafe(int sig)
{
	struct sigaction cur;
	if (sig == SIGKILL || sig == SIGSTOP || ds_os_sigaction(sig, NULL, &cur))
		return false;
	/* SIG_DFL and SIG_IGN whatever the flags: the kernel reads the one
	 * pointer both fields share (Valgrind shows its SIGRTMAX as SIG_IGN
	 * with SA_SIGINFO). */
	bool handler = cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN;
	return handler && !(cur.sa_flags & SA_ONSTACK);
}

/* The kernel could not write a signal frame below the stack pointer of a
 * green stack (a handler without SA_ONSTACK met an uncommitted page) and
 * sends SIGSEGV with SI_KERNEL instead: the signal it meant to deliver is
 * lost. Say so, name the handlers at fault, and die with a core. */
static bool frame_setup_failed_sigsafe(int sig, const siginfo_t *si, void *uctx)
{
	if (sig != SIGSEGV || si->si_code != SI_KERNEL)
		return false;
	uintptr_t isp = interrupted_sp(uctx);
	struct dynstack *g = isp ? ds_arena_lookup_sigsafe(isp) : NULL;
	if (!g || atomic_load_explicit(&g->state, memory_order_acquire) != DS_SLOT_LIVE ||
	    isp > g->top || isp < g->lo - g->reserve)
		return false;
	/* A signal frame is a few KiB (xsave state): only when that much was
	 * not committed below the stack pointer is this the likely cause. */
	uintptr_t edge = atomic_load_explicit(&g->edge, memory_order_relaxed);
	if (isp - edge >= ((uintptr_t)16 << 10))
		return false;
	struct ds_buf b = { .len = 0 };
	ds_buf_str_sigsafe(&b, "libdynstack: a signal could not be delivered on ");
	describe_stack_sigsafe(&b, g, isp);
	ds_buf_str_sigsafe(&b, ": its handler lacks SA_ONSTACK, so the kernel tried to write its "
			       "frame below the stack pointer of a green stack; install it with "
			       "dynstack_sigaction. Handlers without SA_ONSTACK:");
	for (int i = 1; i < NSIG; i++) {
		if (lacks_onstack_sigsafe(i)) {
			ds_buf_str_sigsafe(&b, " ");
			ds_buf_dec_sigsafe(&b, (uint64_t)i);
		}
	}
	ds_buf_str_sigsafe(&b, "\n");
	ds_buf_write_sigsafe(&b, STDERR_FILENO);
	/* Returning would resume the interrupted code with the signal lost:
	 * die by SIGSEGV instead, with a core. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	ds_os_sigaction(SIGSEGV, &dfl, NULL);
	ds_os_raise_sigsafe(SIGSEGV);
	return true;
}

/* All the handler does short of passing a fault on: true when the fault is
 * dealt with (committed, or reported and set to kill), false when it goes to
 * the previous handler. uctx is NULL when libsigsegv called us without our
 * entry in front of it (see the front end below): si then holds only the
 * fault address, and a context rewrite (overflow=fail) cannot be done. */
static bool handle_sigsafe(int sig, siginfo_t *si, void *uctx)
{
	uintptr_t addr = (uintptr_t)si->si_addr;
	uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
	struct dynstack *s;
	int err = 0;

	if (__builtin_expect(sp >= ds_sync_lo && sp < ds_sync_lo + DS_SYNC_HEADROOM, 0)) {
		sync_stack_exhausted_sigsafe(sig, si, sp);
		return true;
	}

	if (__builtin_expect(si->si_code == SI_KERNEL, 0) &&
	    frame_setup_failed_sigsafe(sig, si, uctx))
		return true;
	/* Only a fault the kernel raised carries a meaningful address; a
	 * protection-key fault is never a commit matter. */
	if (si->si_code <= 0 || si->si_code == SI_KERNEL
#ifdef SEGV_PKUERR
	    || (sig == SIGSEGV && si->si_code == SEGV_PKUERR)
#endif
	    || !(s = ds_arena_lookup_sigsafe(addr)))
		return false;

	switch (ds_stack_fault_sigsafe(s, addr, &err)) {
	case DS_FAULT_COMMITTED:
		spurious_count = 0;
		return true;
	case DS_FAULT_SPURIOUS: {
		uintptr_t page = addr & ~(uintptr_t)(ds_os_page_size() - 1);
		if (page != spurious_page) {
			spurious_page = page;
			spurious_count = 0;
		}
		if (++spurious_count <= DS_SPURIOUS_LIMIT)
			return true;
		spurious_count = 0;
		report_sigsafe("repeated fault on a committed page (passed on)", s, addr, 0);
		return false;
	}
	case DS_FAULT_WARNED:
		/* overflow=warn: past the nominal size, inside the reserve. The
		 * pages are committed; say so once for this stack and go on. */
		report_sigsafe("warning: stack grew past its nominal size into its reserve", s,
			       addr, 0);
		spurious_count = 0;
		return true;
	case DS_FAULT_OVERFLOW:
		if (s->policy->overflow == DYNSTACK_OVERFLOW_FAIL && uctx &&
		    ds_coro_fail_redirect_sigsafe(s, uctx)) {
			report_sigsafe("stack overflow (overflow=fail: the coroutine is ended)", s,
				       addr, 0);
			return true;
		}
		report_sigsafe(s->policy->overflow == DYNSTACK_OVERFLOW_FAIL && !uctx ?
				       "stack overflow (overflow=fail: libsigsegv passed no signal "
				       "context to end the coroutine with)" :
				       "stack overflow",
			       s, addr, 0);
		die_by_default_sigsafe(sig, si);
		return true;
	case DS_FAULT_COMMIT_FAILED:
		report_sigsafe("stack overflow: cannot commit", s, addr, err);
		die_by_default_sigsafe(sig, si);
		return true;
	case DS_FAULT_FOREIGN:
		break;
	}
	return false;
}

static void on_fault(int sig, siginfo_t *si, void *uctx)
{
	int saved_errno = errno;
	if (!handle_sigsafe(sig, si, uctx))
		chain_sigsafe(sig, si, uctx);
	errno = saved_errno;
}

#if DS_HAVE_LIBSIGSEGV
/* ---- the libsigsegv front end (-Dlibsigsegv; docs/signals.md)
 *
 * libsigsegv has one global handler per process, and calls it with the
 * fault address alone: first with serious = 0 (it may still be a stack
 * overflow for its stack-overflow handler), then, if declined and no
 * stack-overflow handler took it, with serious = 1; declined again, it resets
 * the signal to SIG_DFL and returns. We need more than the address: the
 * siginfo (sent or raised, SI_KERNEL) and the ucontext (overflow=fail, the
 * interrupted stack pointer, the mask and arguments for the previous
 * handler). And libsigsegv 2.14 installs its handler without SA_ONSTACK
 * unless a stack-overflow handler is installed, so a growth fault on a green
 * stack would have the kernel write the signal frame into the very page that
 * is not committed, and the process dies. So our entry, with SA_ONSTACK and
 * our mask, goes in front of libsigsegv's: it keeps the kernel's arguments in
 * a per-thread frame and calls libsigsegv's handler with them, which calls
 * ours with the address. */
struct fault_frame {
	int sig;
	siginfo_t *si;
	void *uctx;
	unsigned depth; /* passing_depth when the signal came */
	bool declined;
};
static DS_TLS struct fault_frame *fault_frame;

/* libsigsegv's handler for each fault signal it took (SIGSEGV alone on
 * Linux), learned once when we took its global handler; zero otherwise. */
static struct sigaction entry_tab[2];
static bool front_decided;

static void on_fault_libsigsegv(int sig, siginfo_t *si, void *uctx)
{
	int saved_errno = errno;
	const struct sigaction *e = &entry_tab[sig_index(sig)];
	struct fault_frame f = { .sig = sig, .si = si, .uctx = uctx, .depth = passing_depth };
	struct fault_frame *outer = fault_frame;

	fault_frame = &f;
	if (e->sa_flags & SA_SIGINFO)
		e->sa_sigaction(sig, si, uctx);
	else
		e->sa_handler(sig);
	fault_frame = outer;
	errno = saved_errno;
}

/* libsigsegv's global handler. A fault that is not ours is declined while
 * serious is 0, so that a stack-overflow handler of another libsigsegv user
 * sees it first, then passed on to the handler installed before ours, as
 * without libsigsegv; claiming it then keeps libsigsegv from resetting the
 * signal to SIG_DFL (which a sent SIGSEGV would otherwise do for good). */
static int libsigsegv_handler_sigsafe(void *fault_address, int serious)
{
	int saved_errno = errno;
	struct fault_frame *f = fault_frame;
	int handled = 1;

	if (f && f->depth == passing_depth) {
		if (!f->declined && !handle_sigsafe(f->sig, f->si, f->uctx))
			f->declined = true;
		if (f->declined && serious)
			chain_sigsafe(f->sig, f->si, f->uctx);
		else if (f->declined)
			handled = 0;
	} else if (serious || (passing_depth && (uintptr_t)fault_address == passing_addr)) {
		/* Declined with serious = 0 already (libsigsegv asks that way
		 * first wherever it catches stack overflow, Linux included), or
		 * this is the fault on_fault is passing on to libsigsegv. */
		handled = 0;
	} else {
		/* libsigsegv's handler is in front again, without our entry (a
		 * stack-overflow handler installed after us put it back): the
		 * address is all we have. */
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		si.si_signo = SIGSEGV;
		si.si_code = SEGV_MAPERR; /* a fault the kernel raised, as far as we know */
		si.si_addr = fault_address;
		handled = handle_sigsafe(SIGSEGV, &si, NULL);
		if (!handled)
			DS_STAT_ADD(nr_dynamic_stacks_foreign, 1);
	}
	errno = saved_errno;
	return handled;
}

/* Once, at the first install: take libsigsegv's global handler, unless
 * another libsigsegv user's handler is installed already. libsigsegv would
 * drop that one without a trace (sigsegv_install_handler replaces the global
 * handler), so we stay in front of it instead and pass it what is not ours,
 * as the build without libsigsegv does. Later installs never call libsigsegv
 * again: sigsegv_install_handler briefly installs its handler without
 * SA_ONSTACK, fatal to a growth fault on another thread meanwhile. */
static int front_decide(const struct sigaction cur[2])
{
	if (front_decided)
		return 0;
	for (int i = 0; i < 2; i++)
		if (ds_os_libsigsegv_entry(&cur[i])) {
			front_decided = true;
			return 0;
		}
	int rc = ds_os_libsigsegv_install(libsigsegv_handler_sigsafe);
	for (int i = 0; i < 2 && !rc; i++) {
		struct sigaction now;
		if (!(rc = ds_os_sigaction(fault_signals[i], NULL, &now)) &&
		    ds_os_libsigsegv_entry(&now))
			entry_tab[i] = now;
	}
	front_decided = !rc;
	return rc;
}
#endif

/* Our entry for signal index i, which has cur installed now. */
static void (*entry_for(int i, const struct sigaction *cur))(int, siginfo_t *, void *)
{
#if DS_HAVE_LIBSIGSEGV
	/* In front of libsigsegv's handler if we hold its global handler, but
	 * not when that handler itself is installed (a later libsigsegv user):
	 * then we pass it what is not ours. */
	if (entry_tab[i].sa_sigaction && !ds_os_libsigsegv_entry(cur))
		return on_fault_libsigsegv;
#else
	(void)i;
	(void)cur;
#endif
	return on_fault;
}

static bool is_ours(const struct sigaction *sa)
{
#if DS_HAVE_LIBSIGSEGV
	if ((sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_fault_libsigsegv)
		return true;
#endif
	return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_fault;
}

bool ds_fault_installed(void)
{
	struct sigaction cur;
	for (int i = 0; i < 2; i++)
		if (ds_os_sigaction(fault_signals[i], NULL, &cur) || !is_ours(&cur))
			return false;
	return true;
}

int ds_fault_install(void)
{
	struct sigaction act, cur[2];
	int rc = 0;

	memset(&act, 0, sizeof(act));
	act.sa_sigaction = on_fault;
	act.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
	/* Nothing else runs on the sync stack while we commit: an async handler
	 * waits the few microseconds this takes. */
	sigfillset(&act.sa_mask);

	pthread_mutex_lock(&install_lock);
	/* Fill the idle copy, publish it, and only then make ours the handler:
	 * the first fault it sees already has the right previous handler. */
	int next = !atomic_load_explicit(&prev_cur, memory_order_relaxed);
	bool replace[2] = { false, false };
	memcpy(prev_tab[next], prev_tab[!next], sizeof(prev_tab[next]));
	memset(cur, 0, sizeof(cur));
	for (int i = 0; i < 2 && !rc; i++) {
		if ((rc = ds_os_sigaction(fault_signals[i], NULL, &cur[i])) || is_ours(&cur[i]))
			continue;
		prev_tab[next][i] = cur[i];
		replace[i] = true;
	}
#if DS_HAVE_LIBSIGSEGV
	if (!rc)
		rc = front_decide(cur);
#endif
	if (!rc && (replace[0] || replace[1])) {
		atomic_store_explicit(&prev_cur, next, memory_order_release);
		for (int i = 0; i < 2 && !rc; i++) {
			if (!replace[i])
				continue;
			act.sa_sigaction = entry_for(i, &cur[i]);
			rc = ds_os_sigaction(fault_signals[i], &act, NULL);
		}
	}
	pthread_mutex_unlock(&install_lock);
	return rc;
}

void ds_fault_fork(enum ds_fork_phase ph)
{
	ds_fork_lock(&install_lock, ph);
}

/* ---- async signals off green stacks (the arm64 IRQ-stack analogue) */

/* Replace the handler that foreign SIGSEGV/SIGBUS faults go to, keeping ours
 * in front of it. */
static int set_chained(int sig, const struct sigaction *act, struct sigaction *old)
{
	pthread_mutex_lock(&install_lock);
	int cur = atomic_load_explicit(&prev_cur, memory_order_relaxed);
	int next = !cur;
	memcpy(prev_tab[next], prev_tab[cur], sizeof(prev_tab[next]));
	if (old)
		*old = prev_tab[cur][sig_index(sig)];
	if (act)
		prev_tab[next][sig_index(sig)] = *act;
	atomic_store_explicit(&prev_cur, next, memory_order_release);
	pthread_mutex_unlock(&install_lock);
	return 0;
}

DYNSTACK_API int dynstack_sigaction(int sig, const struct sigaction *act, struct sigaction *oldact)
{
	DS_KEEP_ERRNO();
	if (sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP)
		return -EINVAL;
	int rc = ds_init_once();
	if (rc)
		return rc;
	struct sigaction a;
	if (act) {
		a = *act;
		/* The one change: handlers run on the thread's sync stack, never on
		 * the green stack that happened to be running. */
		if (a.sa_handler != SIG_DFL && a.sa_handler != SIG_IGN)
			a.sa_flags |= SA_ONSTACK;
	}
	if (sig == SIGSEGV || sig == SIGBUS) {
		/* Ours stays installed; the new one receives the faults that are
		 * not ours, as if it had been installed before the library. */
		return set_chained(sig, act ? &a : NULL, oldact);
	}
	return ds_os_sigaction(sig, act ? &a : NULL, oldact);
}

DYNSTACK_API int dynstack_signals_check(int fd)
{
	DS_KEEP_ERRNO();
	int bad = 0;
	for (int sig = 1; sig < NSIG; sig++) {
		if (!lacks_onstack_sigsafe(sig))
			continue;
		bad++;
		if (fd >= 0) {
			struct ds_buf b = { .len = 0 };
			ds_buf_str_sigsafe(&b, "libdynstack: signal ");
			ds_buf_dec_sigsafe(&b, (uint64_t)sig);
			ds_buf_str_sigsafe(&b, " (");
			ds_buf_str_sigsafe(&b, sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
			ds_buf_str_sigsafe(
				&b, ") has a handler without SA_ONSTACK: it runs on whatever "
				    "green stack is live (use dynstack_sigaction)\n");
			ds_buf_write_sigsafe(&b, fd);
		}
	}
	return bad;
}
