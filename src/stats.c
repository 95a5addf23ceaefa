/* Counters, declared once by the X-macro in dynstack.h: a shared array of
 * relaxed atomics plus a block per thread (see internal.h), summed on read.
 * Relaxed is enough: each counter is exact on its own, and a snapshot is
 * documented as not atomic across counters. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

_Atomic uint64_t ds_counters[DS_NCOUNTERS];
DS_TLS struct ds_tstats *ds_tstats;
static struct ds_tstats *blocks; /* every live thread's block */
static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER;

int ds_tstats_init(void)
{
	if (ds_tstats)
		return 0;
	struct ds_tstats *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	pthread_mutex_lock(&blocks_lock);
	t->next = blocks;
	blocks = t;
	pthread_mutex_unlock(&blocks_lock);
	ds_tstats = t;
	return 0;
}

void ds_tstats_fini(void)
{
	struct ds_tstats *t = ds_tstats;
	if (!t)
		return;
	pthread_mutex_lock(&blocks_lock);
	for (struct ds_tstats **pp = &blocks; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	}
	/* Folded in under the lock, so a reader sees it in one place or the
	 * other, never twice or nowhere. */
	for (unsigned i = 0; i < DS_NCOUNTERS; i++)
		atomic_fetch_add_explicit(&ds_counters[i], atomic_load(&t->v[i]),
					  memory_order_relaxed);
	pthread_mutex_unlock(&blocks_lock);
	ds_tstats = NULL;
	free(t);
}

void ds_stats_fork(enum ds_fork_phase ph)
{
	/* The child keeps the blocks of the threads it does not have: what they
	 * counted stays counted. */
	ds_fork_lock(&blocks_lock, ph);
}

static void snapshot(uint64_t v[DS_NCOUNTERS])
{
	pthread_mutex_lock(&blocks_lock);
	for (unsigned i = 0; i < DS_NCOUNTERS; i++)
		v[i] = atomic_load_explicit(&ds_counters[i], memory_order_relaxed);
	for (struct ds_tstats *t = blocks; t; t = t->next)
		for (unsigned i = 0; i < DS_NCOUNTERS; i++)
			v[i] += atomic_load_explicit(&t->v[i], memory_order_relaxed);
	pthread_mutex_unlock(&blocks_lock);
}

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
	uint64_t v[DS_NCOUNTERS];
	snapshot(v);
#define DS_SNAP_(name, kind, desc) full.name = v[DS_C_##name];
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
	uint64_t v[DS_NCOUNTERS];
	int rc = 0;
	snapshot(v);
#define DS_PRINT_(name, kind, desc)                                                                \
	ds_buf_str_sigsafe(&b, #name " ");                                                         \
	ds_buf_dec_sigsafe(&b, v[DS_C_##name]);                                                    \
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
