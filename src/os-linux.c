/* The port layer: every mmap, mprotect, madvise, sigaction and sigaltstack
 * of the library is here, and with -Dlibsigsegv every libsigsegv call. Calls
 * marked _sigsafe are plain syscalls the fault handler may make. */
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if DS_HAVE_VALGRIND_H
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>
#endif
#if DS_HAVE_LIBSIGSEGV
#include <dlfcn.h>
#include <sigsegv.h>
#endif

#include "inject.h"
#include "internal.h"

/* Guard regions (Linux 6.13): markers in the page tables that fault like
 * PROT_NONE without splitting the VMA. glibc 2.36 does not name them. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif

size_t ds_page_size;

size_t ds_os_page_size(void)
{
	if (!ds_page_size)
		ds_page_size = (size_t)sysconf(_SC_PAGESIZE);
	return ds_page_size;
}

int ds_os_reserve(size_t size, size_t align, void **out)
{
	DS_INJECT(DS_INJ_RESERVE);
	/* Over-reserve by align and trim both ends: mmap has no alignment flag. */
	size_t len = size + align;
	if (len < size)
		return -ENOMEM;
	void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	uintptr_t start = (uintptr_t)p;
	uintptr_t aligned = (start + align - 1) & ~(uintptr_t)(align - 1);
	if (aligned > start)
		munmap(p, aligned - start);
	uintptr_t tail = aligned + size;
	if (start + len > tail)
		munmap((void *)tail, start + len - tail);
	*out = (void *)aligned;
	return 0;
}

/* ds_os_map_rw without its injection point: map_guarded and the guard
 * probe have their own (or none). */
static int map_rw(size_t size, void **out)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

int ds_os_map_rw(size_t size, void **out)
{
	DS_INJECT(DS_INJ_MAP);
	return map_rw(size, out);
}

void ds_os_unmap(void *p, size_t size)
{
	munmap(p, size);
}

int ds_os_map_guarded(size_t size, void **out)
{
	size_t ps = ds_os_page_size();
	void *p = NULL;
	DS_INJECT(DS_INJ_SYNC_MAP);
	int rc = map_rw(size + ps, &p);
	if (rc)
		return rc;
	if (mprotect(p, ps, PROT_NONE)) {
		rc = -errno;
		munmap(p, size + ps);
		return rc;
	}
	*out = (char *)p + ps;
	return 0;
}

void ds_os_unmap_guarded(void *p, size_t size)
{
	size_t ps = ds_os_page_size();
	munmap((char *)p - ps, size + ps);
}

bool ds_os_guard_supported(void)
{
	size_t ps = ds_os_page_size();
	void *p = NULL;
	if (map_rw(2 * ps, &p))
		return false;
	bool ok = madvise(p, ps, MADV_GUARD_INSTALL) == 0;
	if (ok) {
		/* An emulator may accept the advice and do nothing (qemu-user
		 * does): ask the kernel whether the page is really fenced off. A
		 * write(2) from a guard page fails with EFAULT. */
		int fds[2];
		if (pipe2(fds, O_CLOEXEC) == 0) {
			if (write(fds[1], p, 1) == 1)
				ok = false;
			close(fds[0]);
			close(fds[1]);
		}
	}
	munmap(p, 2 * ps);
	return ok;
}

/* Lines of a /proc file (count) or its leading number (!count); -1 if
 * unreadable. open/read only: no stdio, no allocation. */
static long proc_read(const char *path, bool count)
{
	char buf[4096];
	long n = 0;
	ssize_t got;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while ((got = read(fd, buf, sizeof(buf))) != 0) {
		if (got < 0) {
			if (errno == EINTR)
				continue;
			n = -1;
			break;
		}
		for (ssize_t i = 0; i < got; i++) {
			if (count)
				n += buf[i] == '\n';
			else if (buf[i] >= '0' && buf[i] <= '9')
				n = n * 10 + (buf[i] - '0');
			else
				goto out;
		}
	}
out:
	close(fd);
	return n;
}

bool ds_os_map_count(long *count, long *max)
{
	/* Reading the maps of a process near the default limit takes 10-30 ms:
	 * callers do it on a failure path only. */
	*max = proc_read("/proc/sys/vm/max_map_count", false);
	*count = proc_read("/proc/self/maps", true);
	return *max > 0 && *count >= 0;
}

/* Memcheck cannot see guard markers: to it, a prepared slot is plain
 * read-write memory, which its leak check scans and faults on page by page
 * (262,144 faults for a 1 GiB arena, minutes per test program). Tell it
 * which pages are fenced off: the scan skips them, and a touch there is
 * reported as the invalid access it is. It follows mprotect by itself.
 * Committed pages read as zeros, hence defined. */
static inline void valgrind_fence(uintptr_t lo, uintptr_t hi, bool fenced)
{
#if DS_HAVE_VALGRIND_H
	if (fenced)
		VALGRIND_MAKE_MEM_NOACCESS(lo, hi - lo);
	else
		VALGRIND_MAKE_MEM_DEFINED(lo, hi - lo);
#endif
	(void)lo;
	(void)hi;
	(void)fenced;
}

int ds_os_prepare(dynstack_backend_t be, uintptr_t lo, uintptr_t hi)
{
	DS_INJECT(DS_INJ_PREPARE);
	if (be != DYNSTACK_BACKEND_GUARD)
		return 0; /* mprotect: the reservation is already PROT_NONE */
	/* RW first (merges with the prepared prefix: one VMA), then markers on
	 * every page, so nothing in a prepared slot is accessible until commit. */
	if (mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE))
		return -errno;
	if (madvise((void *)lo, hi - lo, MADV_GUARD_INSTALL)) {
		int err = -errno;
		mprotect((void *)lo, hi - lo, PROT_NONE);
		return err;
	}
	valgrind_fence(lo, hi, true);
	return 0;
}

int ds_os_commit_sigsafe(dynstack_backend_t be, uintptr_t lo, uintptr_t hi)
{
	int rc;
	DS_INJECT(DS_INJ_COMMIT);
	if (be == DYNSTACK_BACKEND_GUARD)
		rc = madvise((void *)lo, hi - lo, MADV_GUARD_REMOVE);
	else
		rc = mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE);
	if (rc)
		return -errno;
	valgrind_fence(lo, hi, false);
	return 0;
}

int ds_os_populate_sigsafe(uintptr_t lo, uintptr_t hi)
{
	DS_INJECT(DS_INJ_POPULATE);
	return madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) ? -errno : 0;
}

/* On failure the range is left accessible, as committed as before: every
 * caller keeps its edge when this fails, and a page below the edge that
 * faults would be retried as spurious until the handler gives up. Its
 * contents may be gone: callers only decommit what no frame uses. The
 * injected failure comes after the call, so that the undo is what a test
 * exercises. */
int ds_os_decommit(dynstack_backend_t be, uintptr_t lo, uintptr_t hi)
{
	int rc;
	if (be == DYNSTACK_BACKEND_GUARD) {
		/* Installing a marker zaps the page under it: one call frees the
		 * memory and makes the range fault again. It works page by page,
		 * so a failure may leave some pages marked. */
		rc = madvise((void *)lo, hi - lo, MADV_GUARD_INSTALL) ? -errno : 0;
		if (!rc)
			rc = DS_INJECTED(DS_INJ_DECOMMIT);
		if (rc)
			madvise((void *)lo, hi - lo, MADV_GUARD_REMOVE);
		else
			valgrind_fence(lo, hi, true);
		return rc;
	}
	/* PROT_NONE first: [lo, hi) is exactly one RW VMA between PROT_NONE
	 * neighbours (a floor page always separates stacks), so this merges and
	 * can never fail on vm.max_map_count; then free the pages. MADV_DONTNEED
	 * refuses locked memory (mlockall(MCL_FUTURE)): back to RW then, which
	 * splits the VMAs again as they were before this call. */
	if (mprotect((void *)lo, hi - lo, PROT_NONE))
		return -errno;
	rc = madvise((void *)lo, hi - lo, MADV_DONTNEED) ? -errno : 0;
	if (!rc)
		rc = DS_INJECTED(DS_INJ_DECOMMIT);
	if (rc)
		mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE);
	return rc;
}

int ds_os_sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	return sigaction(sig, act, old) ? -errno : 0;
}

int ds_os_sigmask_sigsafe(int how, const sigset_t *set, sigset_t *old)
{
	return -pthread_sigmask(how, set, old);
}

int ds_os_sigaltstack(const stack_t *ss, stack_t *old)
{
	if (ss) /* a query cannot fail: inject where one is installed */
		DS_INJECT(DS_INJ_SIGALTSTACK);
	return sigaltstack(ss, old) ? -errno : 0;
}

int ds_os_raise_sigsafe(int sig)
{
	/* To this thread, like a synchronous fault would be. */
	return syscall(SYS_tgkill, getpid(), (pid_t)syscall(SYS_gettid), sig) ? -errno : 0;
}

#if DS_HAVE_LIBSIGSEGV
int ds_os_libsigsegv_install(int (*handler)(void *fault_address, int serious))
{
	/* -1 only where libsigsegv cannot catch SIGSEGV at all. */
	return sigsegv_install_handler(handler) ? -ENOTSUP : 0;
}

bool ds_os_libsigsegv_entry(const struct sigaction *sa)
{
	/* libsigsegv's handler is a static function: no name to compare, but
	 * it lies in the object that defines sigsegv_install_handler. */
	void *fn = (sa->sa_flags & SA_SIGINFO) ? (void *)sa->sa_sigaction : (void *)sa->sa_handler;
	Dl_info in, lib;
	if (fn == (void *)SIG_DFL || fn == (void *)SIG_IGN)
		return false;
	return dladdr(fn, &in) && dladdr((void *)sigsegv_install_handler, &lib) &&
	       in.dli_fbase == lib.dli_fbase;
}
#endif

bool ds_os_on_valgrind(void)
{
#if DS_HAVE_VALGRIND_H
	return RUNNING_ON_VALGRIND != 0;
#else
	return false;
#endif
}

unsigned ds_os_valgrind_stack_register(uintptr_t lo, uintptr_t hi)
{
#if DS_HAVE_VALGRIND_H
	/* Valgrind tells a stack switch from a big frame by the distance the
	 * stack pointer moves; a registered stack makes it sure. [lo, hi):
	 * Valgrind's end is the highest byte, included. */
	if (RUNNING_ON_VALGRIND)
		return VALGRIND_STACK_REGISTER(lo, hi - 1) + 1; /* its ids start at 0 */
#endif
	(void)lo;
	(void)hi;
	return 0;
}

void ds_os_valgrind_stack_deregister(unsigned id)
{
#if DS_HAVE_VALGRIND_H
	if (id)
		VALGRIND_STACK_DEREGISTER(id - 1);
#endif
	(void)id;
}

void ds_os_valgrind_make_writable(uintptr_t lo, size_t n)
{
#if DS_HAVE_VALGRIND_H
	VALGRIND_MAKE_MEM_UNDEFINED(lo, n);
#endif
	(void)lo;
	(void)n;
}
