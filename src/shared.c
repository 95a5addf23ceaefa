/* Shared (copy) stacks: groups of coroutines that take turns on one dynamic
 * stack. A resume copies the frames of the group's previous runner out to
 * its save buffer and the resumed coroutine's in, unless they are still
 * there (the owner cache: Zephyr's "domain already applied" check). All of
 * it runs on the resumer's stack, never on the shared one.
 *
 * Concurrency: a group belongs to one thread (its owner), or with
 * DYNSTACK_GROUP_ANY_THREAD to whichever thread holds `busy`. Everything
 * below (the pool, on_stack, the buffers) is touched only by that thread,
 * so there is no lock: `busy` is the claim, released by the switch once the
 * leaving coroutine is off the shared stack. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "coro.h"

#define POOL_MAX 512	      /* larger blocks come from malloc */
#define POOL_SLAB (64u << 10) /* slabs come from malloc too */
#define FRESH_BYTES (2 * sizeof(void *))
/* A new coroutine's save buffer: enough for a shallow coroutine's first
 * save (the library's own frames are some 120 bytes), so that the common
 * case never reallocates, and allocated right after the coroutine object:
 * the two are adjacent in memory, which a resume walking many coroutines
 * in creation order streams through. */
#define FIRST_BUFFER 128
#define POISON_BYTE 0xdb

/* The calling thread's own group (attr.group == NULL), and all the groups
 * it owns (its own included). */
static DS_TLS struct dynstack_group *own_group;
static DS_TLS struct dynstack_group *owned;
static DS_TLS char token_anchor;

const void *ds_thread_token(void)
{
	return &token_anchor;
}

/* ---- the pool: save buffers and coroutine objects without a malloc
 * header each (16 bytes of 184 for an idle coroutine). Blocks are multiples
 * of 8 bytes; a freed block goes on its size's list. */

static size_t block_size(size_t n)
{
	if (n <= POOL_MAX)
		return n ? (n + 7) & ~(size_t)7 : 8;
	return (n + 255) & ~(size_t)255; /* byte-granular enough for malloc */
}

/* n bytes (a multiple of 8, at most POOL_SLAB - 16) from the newest slab. */
static void *pool_bump(struct ds_pool *p, size_t n)
{
	if ((size_t)(p->end - p->bump) < n) {
		char *slab = malloc(POOL_SLAB);
		if (!slab)
			return NULL;
		/* What is left of the old slab is a block of its own size. */
		size_t rest = (size_t)(p->end - p->bump) & ~(size_t)7;
		if (rest >= 8 && rest <= POOL_MAX) {
			*(void **)p->bump = p->free[rest / 8 - 1];
			p->free[rest / 8 - 1] = p->bump;
		}
		*(void **)slab = p->slabs;
		p->slabs = slab;
		p->bump = slab + 16;
		p->end = slab + POOL_SLAB;
	}
	void *b = p->bump;
	p->bump += n;
	return b;
}

static void *pool_alloc(struct ds_pool *p, size_t n)
{
	if (n > POOL_MAX)
		return malloc(n);
	void **list = &p->free[n / 8 - 1];
	if (*list) {
		void *b = *list;
		*list = *(void **)b;
		return b;
	}
	return pool_bump(p, n);
}

/* Coroutine objects always come from the slabs, on their own list, even
 * where they are bigger than POOL_MAX (the ucontext switch's): a destroyed
 * one stays a coroutine object, with status 0, for as long as the group
 * lives (docs/api.md, "Destroyed handles"). The list link is the first
 * word, in ctx, never status. */
#define CORO_BLOCK ((sizeof(struct dynstack_coro) + 7) & ~(size_t)7)
static struct dynstack_coro *pool_coro_alloc(struct ds_pool *p)
{
	void *b = p->coro_free;
	if (b) {
		p->coro_free = *(void **)b;
		return b;
	}
	return pool_bump(p, CORO_BLOCK);
}

static void pool_coro_free(struct ds_pool *p, struct dynstack_coro *c)
{
	*(void **)c = p->coro_free;
	p->coro_free = c;
}

static void pool_free(struct ds_pool *p, void *b, size_t n)
{
	if (!b)
		return;
	if (n > POOL_MAX) {
		free(b);
		return;
	}
	*(void **)b = p->free[n / 8 - 1];
	p->free[n / 8 - 1] = b;
}

static void pool_fini(struct ds_pool *p)
{
	while (p->slabs) {
		void *next = *(void **)p->slabs;
		free(p->slabs);
		p->slabs = next;
	}
}

/* ---- claiming a group */

/* 0 and *claimed when this thread may touch g now; -EINVAL: another
 * thread's group (or, unless gone_ok, one whose thread exited); -EBUSY: a
 * coroutine of g runs (on another thread, or here when !inside_ok). */
static inline __attribute__((always_inline)) int claim(struct dynstack_group *g, bool inside_ok,
						       bool gone_ok, bool *claimed)
{
	const void *me = ds_thread_token();
	*claimed = false;
	if (g->owner == me) {
		if (atomic_load_explicit(&g->busy, memory_order_relaxed))
			return inside_ok ? 0 : -EBUSY;
		atomic_store_explicit(&g->busy, 1, memory_order_relaxed);
		*claimed = true;
		return 0;
	}
	if (g->owner && !(g->owner == DS_OWNER_GONE && gone_ok))
		return -EINVAL;
	/* Any thread (or an orphan): the claim is a CAS. Only this thread
	 * writes its own token, and clears it before it releases busy, so
	 * seeing it means holding the claim. */
	if (inside_ok && atomic_load_explicit(&g->claimer, memory_order_relaxed) == me)
		return 0;
	int idle = 0;
	if (!atomic_compare_exchange_strong_explicit(&g->busy, &idle, 1, memory_order_acquire,
						     memory_order_relaxed))
		return -EBUSY;
	ds_san_acquire(&g->busy); /* released by a switch, in assembly */
	atomic_store_explicit(&g->claimer, me, memory_order_relaxed);
	*claimed = true;
	return 0;
}

static inline __attribute__((always_inline)) void release(struct dynstack_group *g)
{
	atomic_store_explicit(&g->claimer, NULL, memory_order_relaxed);
	atomic_store_explicit(&g->busy, 0, memory_order_release);
}

/* ---- groups */

/* Group objects are never given back to malloc: a destroyed one is marked
 * dead (stack NULL) and waits on a free list for the next group, so that a
 * handle used after destroy reads a dead group, not freed memory; with
 * check_handles it is never reused at all (docs/api.md, "Destroyed
 * handles"). */
static pthread_mutex_t groups_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dynstack_group *groups_free;

static struct dynstack_group *group_alloc(void)
{
	pthread_mutex_lock(&groups_lock);
	struct dynstack_group *g = groups_free;
	if (g)
		groups_free = g->owned_next;
	pthread_mutex_unlock(&groups_lock);
	if (!g)
		return calloc(1, sizeof(*g));
	memset(g, 0, sizeof(*g));
	return g;
}

static void group_dealloc(struct dynstack_group *g)
{
	g->stack = NULL;
	if (ds_opt.check_handles)
		return;
	pthread_mutex_lock(&groups_lock);
	g->owned_next = groups_free;
	groups_free = g;
	pthread_mutex_unlock(&groups_lock);
}

void ds_shared_fork(enum ds_fork_phase ph)
{
	ds_fork_lock(&groups_lock, ph);
}

static inline bool group_dead(const struct dynstack_group *g)
{
	return !g->stack;
}

static int group_make(struct dynstack_group **out, const dynstack_attr_t *attr, unsigned flags,
		      bool thread_own)
{
	dynstack_attr_t a;
	*out = NULL;
	if (flags & ~(DYNSTACK_GROUP_ANY_THREAD | DYNSTACK_GROUP_POISON))
		return -EINVAL;
	int rc = ds_attr_load(&a, attr);
	if (rc)
		return rc;
	if (a.mode != DYNSTACK_MODE_PRIVATE || a.group)
		return -EINVAL;
#if defined(DS_SWITCH_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
	return -EOPNOTSUPP; /* ds_ctx_sp cannot find a suspended stack pointer */
#endif
	struct dynstack_group *g = group_alloc();
	if (!g)
		return -ENOMEM;
	if (!a.name)
		a.name = "shared";
	struct dynstack *s;
	rc = ds_stack_create(&s, &a, DS_SLOT_CORO);
	if (rc) {
		group_dealloc(g);
		return rc;
	}
	g->stack = s;
	if (ds_opt.shared_poison)
		flags |= DYNSTACK_GROUP_POISON;
	g->flags = flags;
	g->thread_own = thread_own;
	if (!(flags & DYNSTACK_GROUP_ANY_THREAD)) {
		g->owner = ds_thread_token();
		g->owned_next = owned;
		g->owned_pprev = &owned;
		if (owned)
			owned->owned_pprev = &g->owned_next;
		owned = g;
	}
	DS_TSTAT_ADD(nr_shared_groups, 1);
	*out = g;
	return 0;
}

static void group_free(struct dynstack_group *g)
{
	if (g->owned_pprev) { /* still on its (living) owner's list */
		*g->owned_pprev = g->owned_next;
		if (g->owned_next)
			g->owned_next->owned_pprev = g->owned_pprev;
	}
	g->stack->coro = NULL;
	ds_stack_release(g->stack);
	if (!ds_opt.check_handles)
		pool_fini(&g->pool);
	group_dealloc(g);
	DS_TSTAT_SUB(nr_shared_groups, 1);
}

DYNSTACK_API int dynstack_group_create(dynstack_group_t **out, const dynstack_attr_t *attr,
				       unsigned flags)
{
	DS_KEEP_ERRNO();
	if (!out)
		return -EINVAL;
	return group_make(out, attr, flags, false);
}

DYNSTACK_API int dynstack_group_destroy(dynstack_group_t *g)
{
	DS_KEEP_ERRNO();
	bool claimed;
	if (!g)
		return 0;
	if (group_dead(g))
		return ds_stale_handle(__func__, g, "group");
	if (g->thread_own)
		return -EINVAL;
	int rc = claim(g, false, true, &claimed);
	if (rc)
		return rc;
	if (g->ncoros) {
		release(g);
		return -EBUSY;
	}
	group_free(g);
	return 0;
}

DYNSTACK_API dynstack_t *dynstack_group_stack(const dynstack_group_t *g)
{
	if (!g)
		return NULL;
	if (group_dead(g)) {
		ds_stale_handle(__func__, g, "group");
		return NULL;
	}
	return g->stack;
}

void ds_shared_thread_fini(void)
{
	/* The thread's token (a thread-local address) is handed to a later
	 * thread: its groups must not look like that thread's. */
	struct dynstack_group *g = owned;
	owned = NULL;
	own_group = NULL;
	while (g) {
		struct dynstack_group *next = g->owned_next;
		g->owned_next = NULL;
		g->owned_pprev = NULL;
		if (g->thread_own && g->ncoros == 0) {
			group_free(g);
		} else {
			/* Release: a thread that claims the orphan sees all that
			 * the owner did to it. */
			g->owner = DS_OWNER_GONE;
			atomic_store_explicit(&g->busy, 0, memory_order_release);
		}
		g = next;
	}
}

/* ---- coroutines */

/* Frames abandoned on the shared stack (a dead or destroyed coroutine's):
 * ASan still marks their redzones, which the next coroutine would hit. */
static void forget_frames(struct dynstack *s)
{
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	ds_san_unpoison((const void *)edge, s->top - edge);
}

/* Under Valgrind, the bytes a copy-in writes: memcheck takes the shared stack
 * below the last stack pointer it saw there for unaddressable. */
static inline void copy_target_valgrind(const struct dynstack *s, uintptr_t lo, size_t n)
{
	if (__builtin_expect(s->vg_id != 0, 0))
		ds_os_valgrind_make_writable(lo, n);
}

static void stat_buffer(long delta)
{
	DS_TSTAT_ADD(nr_shared_buffer_bytes, (uint64_t)delta);
}

static void note_saved(struct dynstack_group *g, long delta)
{
	g->saved_total += (size_t)delta;
	DS_TSTAT_ADD(nr_shared_saved_bytes, (uint64_t)delta);
}

int ds_shared_coro_create(struct dynstack_coro **out, const dynstack_attr_t *attr,
			  dynstack_coro_fn fn, void *arg)
{
	struct dynstack_group *g = attr->group;
	bool claimed;
	int rc;

	*out = NULL;
	if (attr->initial || attr->policy)
		return -EINVAL; /* they belong to the group's stack */
	if (!g) {
		if ((rc = ds_thread_ensure()))
			return rc;
		if (!own_group && (rc = group_make(&own_group, NULL, 0, true)))
			return rc;
		g = own_group;
	} else if (group_dead(g)) {
		return ds_stale_handle("dynstack_coro_create", g, "group");
	}
	if (attr->size > g->stack->top - g->stack->lo)
		return -EINVAL;
	if ((rc = claim(g, true, false, &claimed)))
		return rc;
	struct dynstack_coro *c = pool_coro_alloc(&g->pool);
	void **image = pool_alloc(&g->pool, FIRST_BUFFER);
	if (!c || !image) {
		pool_coro_free(&g->pool, c);
		pool_free(&g->pool, image, FIRST_BUFFER);
		if (claimed)
			release(g);
		return -ENOMEM;
	}
	g->ncoros++;
	note_saved(g, FRESH_BYTES); /* while the group is claimed */
	if (claimed)
		release(g);
	memset(c, 0, sizeof(*c));
	/* Until its first run, its "saved frames" are fn and arg, which the
	 * first copy-in puts in the top 16 bytes of the shared stack. */
	image[0] = (void *)fn;
	image[1] = arg;
	c->sh.buf = image;
	c->sh.cap = FIRST_BUFFER;
	c->sh.flags = DS_CORO_FRESH;
	c->saved = FRESH_BYTES;
	c->stack = g->stack;
	c->group = g;
	c->link = &g->link;
	stat_buffer(FIRST_BUFFER);
	*out = c;
	return 0;
}

int ds_shared_coro_destroy(struct dynstack_coro *c)
{
	struct dynstack_group *g = c->group;
	bool claimed;
	int rc = claim(g, true, true, &claimed);
	if (rc)
		return rc;
	ds_coro_drop_segments(c);
	atomic_store_explicit(&c->status, 0, memory_order_relaxed);
	if (g->on_stack == c) {
		g->on_stack = NULL; /* its frames there are abandoned */
		g->stack->coro = NULL;
		forget_frames(g->stack);
	}
	note_saved(g, -(long)c->saved);
	stat_buffer(-(long)c->sh.cap);
	pool_free(&g->pool, c->sh.buf, c->sh.cap);
	/* check_handles: the object is never handed out again (status 0 for
	 * good), and its slab outlives the group (group_free). */
	if (!ds_opt.check_handles)
		pool_coro_free(&g->pool, c);
	bool last = --g->ncoros == 0;
	if (claimed)
		release(g);
	if (last && g->thread_own && g->owner == DS_OWNER_GONE)
		group_free(g);
	return 0;
}

DYNSTACK_API dynstack_group_t *dynstack_coro_group(const dynstack_coro_t *c)
{
	if (!c)
		return NULL;
	if (ds_coro_stale(c, __func__))
		return NULL;
	return c->group;
}

DYNSTACK_API size_t dynstack_coro_saved(const dynstack_coro_t *c)
{
	if (!c)
		return 0;
	if (ds_coro_stale(c, __func__))
		return 0;
	return c->group ? c->saved : 0;
}

/* ---- copies */

/* The lowest address of suspended c's frames on the shared stack: its saved
 * stack pointer, or, suspended inside dynstack_call, where it crossed to
 * its outermost segment. */
static inline __attribute__((always_inline)) uintptr_t frames_low(const struct dynstack_coro *c)
{
	const struct dynstack *seg = c->segments;
	if (!seg)
		return ds_ctx_sp(&c->ctx);
	while (seg->next_free)
		seg = seg->next_free;
	return seg->caller_sp;
}

/* Commit the shared stack down to lo before a copy-in writes there: one call
 * instead of a fault per page, and a growth the trim hysteresis sees. */
static inline __attribute__((always_inline)) int commit_down_to(struct dynstack *s, uintptr_t lo)
{
	lo &= ~(uintptr_t)(ds_page_size - 1);
	uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
	if (lo >= edge)
		return 0;
	int rc = ds_stack_grow_sigsafe(s, lo, &edge);
	if (rc < 0)
		return rc;
	ds_trim_note_fault_sigsafe(s, lo);
	return 0;
}

/* Save buffers follow the saved size both ways: grown when too small,
 * shrunk when a deep excursion left one more than twice too big. */
static inline __attribute__((always_inline)) int fit_buffer(struct dynstack_group *g,
							    struct dynstack_coro *c, size_t n)
{
	size_t want = block_size(n);
	if (n <= c->sh.cap && want >= c->sh.cap / 2)
		return 0;
	void *b = pool_alloc(&g->pool, want);
	if (!b)
		return -ENOMEM;
	pool_free(&g->pool, c->sh.buf, c->sh.cap);
	stat_buffer((long)want - (long)c->sh.cap);
	c->sh.buf = b;
	c->sh.cap = (uint32_t)want;
	return 0;
}

/* Copy suspended (or dead) o's frames out; *n: bytes copied. */
static inline __attribute__((always_inline)) int copy_out(struct dynstack_group *g,
							  struct dynstack_coro *o, size_t *n)
{
	*n = 0;
	if (atomic_load_explicit(&o->status, memory_order_relaxed) == DYNSTACK_CORO_DEAD) {
		g->on_stack = NULL; /* nothing to keep; its buffer goes too */
		g->stack->coro = NULL;
		forget_frames(g->stack);
		stat_buffer(-(long)o->sh.cap);
		pool_free(&g->pool, o->sh.buf, o->sh.cap);
		o->sh.buf = NULL;
		o->sh.cap = 0;
		return 0;
	}
	uintptr_t lo = frames_low(o);
	size_t len = g->stack->top - lo;
	int rc = fit_buffer(g, o, len);
	if (rc)
		return rc;
	ds_san_unpoison((const void *)lo, len);
	memcpy(o->sh.buf, (const void *)lo, len);
	o->saved = (uint32_t)len;
	g->saved_total += len;
	g->on_stack = NULL;
	g->stack->coro = NULL;
	*n = len;
	return 0;
}

/* Put c's frames on the shared stack; *n: bytes copied. */
static inline __attribute__((always_inline)) int copy_in(struct dynstack_group *g,
							 struct dynstack_coro *c, size_t *n)
{
	struct dynstack *s = g->stack;
	int rc;
	*n = 0;
	if (c->sh.flags & DS_CORO_FRESH) {
		/* The entry frame that ds_ctx_make lays is a few hundred bytes
		 * at most (a ucontext trampoline's). */
		if ((rc = commit_down_to(s, s->top - 1024)))
			return rc;
		copy_target_valgrind(s, s->top - 1024, 1024);
		void **top = (void **)s->top, **image = c->sh.buf;
		top[-2] = image[0];
		top[-1] = image[1];
		ds_ctx_make(&c->ctx, (void *)s->lo, s->top - FRESH_BYTES - s->lo, ds_coro_main, c);
		c->sh.flags &= ~(uint32_t)DS_CORO_FRESH;
	} else {
		uintptr_t lo = s->top - c->saved;
		if ((rc = commit_down_to(s, lo)))
			return rc;
		ds_san_unpoison((const void *)lo, c->saved);
		copy_target_valgrind(s, lo, c->saved);
		memcpy((void *)lo, c->sh.buf, c->saved);
		*n = c->saved;
	}
	g->saved_total -= c->saved;
	c->saved = 0;
	g->on_stack = c;
	s->coro = c;
	return 0;
}

/* One update per switch for all the copy counters (each is a thread-local
 * load and store). */
static inline __attribute__((always_inline)) void note_copies(size_t out, size_t in, size_t fresh)
{
	DS_TSTAT_ADD(nr_shared_copies, (out != 0) + (in != 0));
	DS_TSTAT_ADD(nr_shared_copied_bytes, out + in);
	DS_TSTAT_ADD(nr_shared_saved_bytes, out - in - fresh);
}

int ds_shared_enter(struct dynstack_coro *c)
{
	struct dynstack_group *g = c->group;
	bool claimed;
	int rc = claim(g, false, false, &claimed);
	if (rc)
		return rc;
	/* A trim queued for the shared stack must not decommit what the
	 * copy-in is about to write. */
	ds_trim_before_run(g->stack);
	struct dynstack_coro *o = g->on_stack;
	if (o == c) {
		DS_TSTAT_ADD(nr_shared_owner_hits, 1);
		return 0;
	}
	size_t out = 0, in = 0, fresh = c->sh.flags & DS_CORO_FRESH ? c->saved : 0;
	if ((o && (rc = copy_out(g, o, &out))) || (rc = copy_in(g, c, &in))) {
		note_copies(out, 0, 0);
		release(g);
		return rc;
	}
	note_copies(out, in, fresh);
	return 0;
}

void ds_shared_after(struct dynstack_coro *c)
{
	struct dynstack_group *g = c->group;
	struct dynstack *s = g->stack;
	bool claimed;
	size_t out;
	if (claim(g, false, false, &claimed))
		return; /* another thread took the group: it copies c out itself */
	if (g->on_stack == c && copy_out(g, c, &out) == 0) {
		note_copies(out, 0, 0);
		uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_acquire);
		ds_san_unpoison((const void *)edge, s->top - edge);
		copy_target_valgrind(s, edge, s->top - edge);
		memset((void *)edge, POISON_BYTE, s->top - edge);
	}
	release(g);
}

void ds_shared_describe_sigsafe(struct ds_buf *b, const struct dynstack *s)
{
	const struct dynstack_coro *c = s->coro;
	if (!c || !c->group || c->group->stack != s)
		return;
	ds_buf_str_sigsafe(b, ", the shared stack of a group of ");
	ds_buf_dec_sigsafe(b, c->group->ncoros);
	ds_buf_str_sigsafe(b, " coroutines (the running one's save buffer: ");
	ds_buf_dec_sigsafe(b, c->sh.cap);
	ds_buf_str_sigsafe(b, " bytes; the others have ");
	ds_buf_dec_sigsafe(b, c->group->saved_total);
	ds_buf_str_sigsafe(b, " bytes saved)");
}
