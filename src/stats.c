/* Counters: one relaxed atomic each, declared once by the X-macro in
 * dynstack.h. Relaxed is enough: each counter is exact on its own, and a
 * snapshot is documented as not atomic across counters. */
#include <errno.h>
#include <string.h>

#include "internal.h"

struct ds_counters ds_counters;

DYNSTACK_API int dynstack_stats_get(dynstack_stats_t *st)
{
	if (!st)
		return -EINVAL;
	size_t want = st->struct_size ? st->struct_size : sizeof(*st);
	/* An older caller may pass a shorter struct: fill what it has room for. */
	if (want < offsetof(dynstack_stats_t, nr_dynamic_stacks) + sizeof(uint64_t))
		return -EINVAL;
	dynstack_stats_t full;
	memset(&full, 0, sizeof(full));
	full.struct_size = sizeof(full);
	full.backend = ds_opt.backend;
	full.page_size = ds_os_page_size();
#define DS_SNAP_(name, kind, desc)                                                                 \
	full.name = atomic_load_explicit(&ds_counters.name, memory_order_relaxed);
	DYNSTACK_STATS_COUNTERS(DS_SNAP_)
#undef DS_SNAP_
	if (want > sizeof(full))
		want = sizeof(full);
	memcpy(st, &full, want);
	st->struct_size = want;
	return 0;
}

DYNSTACK_API int dynstack_stats_print(int fd)
{
	DS_KEEP_ERRNO();
	if (fd < 0)
		return -EBADF;
	struct ds_buf b = { .len = 0 };
	int rc = 0;
#define DS_PRINT_(name, kind, desc)                                                                \
	ds_buf_str_sigsafe(&b, #name " ");                                                         \
	ds_buf_dec_sigsafe(&b, atomic_load_explicit(&ds_counters.name, memory_order_relaxed));     \
	ds_buf_str_sigsafe(&b, "\n");                                                              \
	if (b.len > sizeof(b.data) - 96) {                                                         \
		if ((rc = ds_buf_write_sigsafe(&b, fd)) < 0)                                       \
			return rc;                                                                 \
		b.len = 0;                                                                         \
	}
	DYNSTACK_STATS_COUNTERS(DS_PRINT_)
#undef DS_PRINT_
	ds_buf_str_sigsafe(&b, "dynamic_stacks_backend ");
	ds_buf_str_sigsafe(&b, dynstack_backend_name());
	ds_buf_str_sigsafe(&b, "\n");
	return ds_buf_write_sigsafe(&b, fd);
}
