/* Error names and async-signal-safe text formatting: the fault handler's
 * reports are built here, so nothing in this file may call stdio or malloc. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

DYNSTACK_API const char *dynstack_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case -EINVAL:
		return "invalid argument (NULL, zero or out-of-range size, wrong struct_size, "
		       "destroyed or dead object)";
	case -ENOMEM:
		return "out of memory, address space or mappings (see vm.max_map_count)";
	case -EBUSY:
		return "busy: object is running or owned, or a conflicting setting is active";
	case -EPERM:
		return "not allowed here (for example: yield outside a coroutine)";
	case -EOPNOTSUPP:
		return "not supported by this kernel (guard regions need Linux >= 6.13)";
	case -EAGAIN:
		return "temporarily unavailable, try again";
	case -EBADF:
		return "bad file descriptor";
	case -EPIPE:
		return "broken pipe (the reader of the output is gone)";
	case -EIO:
		return "input/output error";
	case -EDQUOT:
		return "disk quota exceeded";
	case -EFBIG:
		return "file too large";
	case -EFAULT:
		return "bad address";
	case -EOVERFLOW:
		return "stack overflow";
	case -ENOSPC:
		return "no room: a table or buffer is full, or the stack reservation cannot hold the "
		       "request";
	case -EEXIST:
		return "already exists (a policy of that name is registered, or it is a built-in "
		       "keyword)";
	default:
		return "unknown error";
	}
}

DYNSTACK_API const char *dynstack_version(void)
{
	return DS_VERSION;
}

void ds_buf_str_sigsafe(struct ds_buf *b, const char *s)
{
	while (*s && b->len < sizeof(b->data))
		b->data[b->len++] = *s++;
}

void ds_buf_dec_sigsafe(struct ds_buf *b, uint64_t v)
{
	char tmp[24];
	size_t n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n && b->len < sizeof(b->data))
		b->data[b->len++] = tmp[--n];
}

void ds_buf_hex_sigsafe(struct ds_buf *b, uint64_t v)
{
	static const char digits[] = "0123456789abcdef";
	char tmp[16];
	size_t n = 0;
	do {
		tmp[n++] = digits[v & 15];
		v >>= 4;
	} while (v);
	ds_buf_str_sigsafe(b, "0x");
	while (n && b->len < sizeof(b->data))
		b->data[b->len++] = tmp[--n];
}

int ds_buf_write_sigsafe(const struct ds_buf *b, int fd)
{
	size_t off = 0;
	while (off < b->len) {
		ssize_t n = write(fd, b->data + off, b->len - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (size_t)n;
	}
	return 0;
}

/* A handle whose object was destroyed: the object is still there
 * (type-stable), marked dead. -EINVAL, or with check_handles a message and
 * abort(): the object was never reused, so this is certain. */
__attribute__((cold, noinline)) int ds_stale_handle(const char *fn, const void *p, const char *what)
{
	if (ds_opt.check_handles) {
		struct ds_buf b = { .len = 0 };
		ds_buf_str_sigsafe(&b, "libdynstack: ");
		ds_buf_str_sigsafe(&b, fn);
		ds_buf_str_sigsafe(&b, "(");
		ds_buf_hex_sigsafe(&b, (uintptr_t)p);
		ds_buf_str_sigsafe(&b, "): the ");
		ds_buf_str_sigsafe(&b, what);
		ds_buf_str_sigsafe(&b, " was destroyed (DYNSTACK_CHECK_HANDLES); aborting\n");
		ds_buf_write_sigsafe(&b, 2);
		abort();
	}
	return -EINVAL;
}
