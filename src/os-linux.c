/* The port layer: every mmap, mprotect, madvise, sigaction and sigaltstack
 * of the library is here. Calls marked _sigsafe are plain syscalls the
 * fault handler may make. */
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if DS_HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

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

int ds_os_map_rw(size_t size, void **out)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

void ds_os_unmap(void *p, size_t size)
{
	munmap(p, size);
}

int ds_os_map_guarded(size_t size, void **out)
{
	size_t ps = ds_os_page_size();
	void *p = NULL;
	int rc = ds_os_map_rw(size + ps, &p);
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
	if (ds_os_map_rw(2 * ps, &p))
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

int ds_os_prepare(dynstack_backend_t be, uintptr_t lo, uintptr_t hi)
{
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
	return 0;
}

int ds_os_commit_sigsafe(dynstack_backend_t be, uintptr_t lo, uintptr_t hi)
{
	int rc;
	if (be == DYNSTACK_BACKEND_GUARD)
		rc = madvise((void *)lo, hi - lo, MADV_GUARD_REMOVE);
	else
		rc = mprotect((void *)lo, hi - lo, PROT_READ | PROT_WRITE);
	return rc ? -errno : 0;
}

int ds_os_populate_sigsafe(uintptr_t lo, uintptr_t hi)
{
	return madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) ? -errno : 0;
}

int ds_os_decommit(dynstack_backend_t be, uintptr_t lo, uintptr_t hi)
{
	if (be == DYNSTACK_BACKEND_GUARD) {
		/* Installing a marker zaps the page under it: one call frees the
		 * memory and makes the range fault again. */
		return madvise((void *)lo, hi - lo, MADV_GUARD_INSTALL) ? -errno : 0;
	}
	/* PROT_NONE first: [lo, hi) is exactly one RW VMA between PROT_NONE
	 * neighbours (a floor page always separates stacks), so this merges and
	 * can never fail on vm.max_map_count; then free the pages. */
	if (mprotect((void *)lo, hi - lo, PROT_NONE))
		return -errno;
	return madvise((void *)lo, hi - lo, MADV_DONTNEED) ? -errno : 0;
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
	return sigaltstack(ss, old) ? -errno : 0;
}

int ds_os_raise_sigsafe(int sig)
{
	/* To this thread, like a synchronous fault would be. */
	return syscall(SYS_tgkill, getpid(), (pid_t)syscall(SYS_gettid), sig) ? -errno : 0;
}

bool ds_os_on_valgrind(void)
{
#if DS_HAVE_VALGRIND_H
	return RUNNING_ON_VALGRIND != 0;
#else
	return false;
#endif
}
