/* Giving memory back, and taking it again without syscalls: trims queued at
 * yield and exit and decommitted in batches, and per-thread caches of warm
 * destroyed stacks over a global depot (seed 002: free the excess pages on
 * return to user space; the kernel's per-CPU NR_CACHED_STACKS).
 *
 * Decommit is the expensive direction (1.4 us per page alone, ~17 us with a
 * sibling thread running: a TLB shootdown), so it never happens page by
 * page on the switch path: a yield only decides and queues; the queue is
 * flushed when it holds trim_batch pages, at dynstack_flush, or at thread
 * exit. A queued stack that runs again before the flush cancels its entry
 * (ds_trim_claim), so a flush only ever decommits below a suspended stack. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "policy.h"
#include "trace.h"

#define DS_TRIMQ_MAX 64

struct trim_entry {
	struct dynstack *s;
	uint64_t tag; /* unique per queueing: a cancelled entry never claims a later one */
	uintptr_t lo, hi;
};

/* Tags of queued trims. A stack's id is not enough: a stack that is resumed
 * (cancelling its entry) and queued again by a later trim point must not let
 * the first entry, with its older and higher cut, claim the second. */
static _Atomic uint64_t trim_seq;

/* One per thread that runs our stacks, made outside any handler. */
struct ds_tl {
	struct trim_entry q[DS_TRIMQ_MAX];
	unsigned nq;
	size_t q_pages;
	size_t ncache;
	struct dynstack **cache; /* ds_opt.cache_stacks entries, newest last */
	size_t credit;		 /* budget pages this thread may fill without asking */
};

static DS_TLS struct ds_tl *tl;

/* The depot: per size class, a list of warm stacks linked by next_free. */
struct depot_class {
	pthread_mutex_t lock;
	struct dynstack *head;
	size_t n;
};
static struct depot_class depot[DS_ARENA_MAX_SHIFT + 1];
static pthread_once_t depot_once = PTHREAD_ONCE_INIT;
/* The page budget (cache_pages) is exact but rarely touched: a thread takes
 * it in chunks into its own credit and gives surplus back, so that a warm
 * create/destroy pair does not bounce a shared line between CPUs (~37 ns
 * per locked add with two threads here). budget_used = pages in all caches
 * and the depot + every thread's unspent credit <= cache_pages. */
#define DS_CREDIT_CHUNK 64
static _Atomic size_t budget_used;

static void depot_init(void)
{
	for (size_t i = 0; i <= DS_ARENA_MAX_SHIFT; i++)
		pthread_mutex_init(&depot[i].lock, NULL);
}

static inline size_t page_size(void)
{
	return ds_page_size; /* set at init; read on every trim point */
}

static size_t committed_pages(const struct dynstack *s)
{
	return (s->top - atomic_load_explicit(&s->edge, memory_order_relaxed)) / page_size();
}

int ds_tl_init(void)
{
	if (tl)
		return 0;
	pthread_once(&depot_once, depot_init);
	struct ds_tl *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	if (ds_opt.cache_stacks && !(t->cache = calloc(ds_opt.cache_stacks, sizeof(*t->cache)))) {
		free(t);
		return -ENOMEM;
	}
	tl = t;
	return 0;
}

/* ---- trims */

/* Decommit [lo, hi) of s, which nobody runs on: s is claimed FLUSHING, or
 * the caller holds it (dynstack_trim). */
static int decommit_below(struct dynstack *s, uintptr_t hi)
{
	size_t ps = page_size();
	uintptr_t lo = atomic_load_explicit(&s->edge, memory_order_acquire);
	if (lo >= hi)
		return 0;
	int rc = ds_os_decommit(ds_opt.backend, lo, hi);
	if (rc)
		return rc;
	atomic_store_explicit(&s->edge, hi, memory_order_release);
	atomic_store_explicit(&s->trim_lo, lo, memory_order_relaxed);
	atomic_store_explicit(&s->trim_hi, hi, memory_order_relaxed);
	DS_TSTAT_SUB(nr_dynamic_stacks_pages, (hi - lo) / ps);
	DS_TSTAT_ADD(nr_dynamic_stacks_trimmed, (hi - lo) / ps);
	DS_TSTAT_ADD(nr_dynamic_stacks_trim_calls, 1);
	if (atomic_load_explicit(&ds_trace_on, memory_order_relaxed)) {
		struct ds_ev_fault r;
		memset(&r, 0, sizeof(r));
		r.h.type = DS_EV_TRIM;
		r.h.len = sizeof(r);
		r.h.stack = s->id;
		r.depth = s->top - lo;	   /* what was committed */
		r.committed = s->top - hi; /* what is left */
		ds_trace_emit_sigsafe(&r);
	}
	return 0;
}

static int flush_queue(struct ds_tl *t)
{
	int first = 0;
	for (unsigned i = 0; i < t->nq; i++) {
		struct trim_entry *e = &t->q[i];
		uint64_t want = DS_TRIM_TAG(e->tag, DS_TRIM_PENDING);
		/* Claim it: fails if it ran again (cancelled) or was destroyed. */
		if (!atomic_compare_exchange_strong_explicit(
			    &e->s->trim_state, &want, DS_TRIM_TAG(e->tag, DS_TRIM_FLUSHING),
			    memory_order_acq_rel, memory_order_relaxed))
			continue;
		int rc = decommit_below(e->s, e->hi);
		if (rc && !first)
			first = rc;
		atomic_store_explicit(&e->s->trim_state, DS_TRIM_NONE, memory_order_release);
	}
	t->nq = 0;
	t->q_pages = 0;
	return first;
}

void ds_trim_claim(struct dynstack *s)
{
	for (;;) {
		uint64_t st = atomic_load_explicit(&s->trim_state, memory_order_acquire);
		if (st == DS_TRIM_NONE)
			return;
		if ((st & 3) == DS_TRIM_PENDING) {
			if (atomic_compare_exchange_weak_explicit(&s->trim_state, &st, DS_TRIM_NONE,
								  memory_order_acq_rel,
								  memory_order_acquire)) {
				/* Cancelled: its pages stay committed, and its next
				 * trim is done at once (see ds_trim_point_slow). */
				s->trim_cancelled = true;
				return;
			}
			continue;
		}
		/* Another thread is decommitting below the saved stack pointer:
		 * a few microseconds. */
		sched_yield();
	}
}

void ds_trim_note_fault_sigsafe(struct dynstack *s, uintptr_t page)
{
	uintptr_t lo = atomic_load_explicit(&s->trim_lo, memory_order_relaxed);
	uintptr_t hi = atomic_load_explicit(&s->trim_hi, memory_order_relaxed);
	if (page >= lo && page < hi) {
		/* The last trim gave back pages this stack needed again: wait
		 * twice as long before the next one (Go's and Rust's segmented
		 * stacks died of this hot split; a back-off makes it rare). */
		uint32_t l = atomic_load_explicit(&s->idle_limit, memory_order_relaxed) * 2;
		atomic_store_explicit(&s->idle_limit, l < DS_TRIM_IDLE_MAX ? l : DS_TRIM_IDLE_MAX,
				      memory_order_relaxed);
		atomic_store_explicit(&s->trim_hi, 0, memory_order_relaxed);
		DS_STAT_ADD(nr_dynamic_stacks_mistrims, 1);
	}
	atomic_store_explicit(&s->faulted, 1, memory_order_relaxed);
}

/* The hysteresis: the lowest address to keep, or 0 to keep everything. */
static uintptr_t trim_target(struct dynstack *s, uintptr_t sp)
{
	const struct ds_policy *p = s->policy;
	/* Under Valgrind stacks are committed whole and must never fault
	 * (stack.c): nothing is trimmed either. */
	if (__builtin_expect(ds_stack_whole(s), 0))
		return 0;
	if (!p->trim_idle || sp > s->top || sp < s->lo - s->reserve + p->margin)
		return 0; /* trim off; running elsewhere (a dynstack_call segment); or so
			   * deep that nothing lies below the margin */
	uintptr_t keep = (sp - p->margin) & ~(uintptr_t)(page_size() - 1);
	if (atomic_load_explicit(&s->edge, memory_order_relaxed) >= keep)
		return 0; /* nothing committed below the margin: the common case */
	if (atomic_exchange_explicit(&s->faulted, 0, memory_order_relaxed)) {
		s->idle = 0; /* it grew since the last trim point: it is hot */
		return 0;
	}
	if (++s->idle < atomic_load_explicit(&s->idle_limit, memory_order_relaxed))
		return 0;
	s->idle = 0;
	return keep;
}

void ds_trim_point_slow(struct dynstack *s, uintptr_t sp)
{
	struct ds_tl *t = tl;
	uintptr_t keep = trim_target(s, sp);
	if (!keep || !t)
		return;
	if (s->trim_cancelled) {
		/* The last queued trim of s was cancelled because s ran again
		 * before any flush: a lone coroutine would never be trimmed.
		 * Decommit now, in one call, two pages further down so that this
		 * call's own frames stay clear of the range. This happens at most
		 * once per IDLE quiet trim points. */
		s->trim_cancelled = false;
		uintptr_t below = keep - 2 * page_size();
		if (below > atomic_load_explicit(&s->edge, memory_order_relaxed))
			decommit_below(s, below);
		return;
	}
	/* Flush before queueing s: the flush runs on s's own stack, below sp,
	 * and must not decommit pages it is using. */
	if (t->nq == DS_TRIMQ_MAX || t->q_pages >= ds_opt.trim_batch)
		flush_queue(t);
	uintptr_t lo = atomic_load_explicit(&s->edge, memory_order_relaxed);
	uint64_t tag = atomic_fetch_add_explicit(&trim_seq, 1, memory_order_relaxed) + 1;
	t->q[t->nq++] = (struct trim_entry){ .s = s, .tag = tag, .lo = lo, .hi = keep };
	t->q_pages += (keep - lo) / page_size();
	atomic_store_explicit(&s->trim_state, DS_TRIM_TAG(tag, DS_TRIM_PENDING),
			      memory_order_release);
}

DYNSTACK_API int dynstack_flush(void)
{
	DS_KEEP_ERRNO();
	return tl ? flush_queue(tl) : 0;
}

DYNSTACK_API int dynstack_trim(dynstack_t *s, const void *sp)
{
	DS_KEEP_ERRNO();
	uintptr_t p = (uintptr_t)sp;
	if (!s || atomic_load_explicit(&s->state, memory_order_acquire) != DS_SLOT_LIVE)
		return -EINVAL;
	if (p < s->lo - s->reserve || p > s->top)
		return -EINVAL;
	ds_trim_claim(s);
	uintptr_t keep = trim_target(s, p);
	return keep ? decommit_below(s, keep) : 0;
}

/* ---- the cache */

static void move_to_depot(struct dynstack **v, size_t n)
{
	/* One lock trip per run of stacks of the same class. */
	struct depot_class *held = NULL;
	for (size_t i = 0; i < n; i++) {
		struct depot_class *d = &depot[v[i]->arena->shift];
		if (d != held) {
			if (held)
				pthread_mutex_unlock(&held->lock);
			pthread_mutex_lock(&d->lock);
			held = d;
		}
		v[i]->next_free = d->head;
		d->head = v[i];
		d->n++;
	}
	if (held)
		pthread_mutex_unlock(&held->lock);
}

struct dynstack *ds_cache_get(unsigned shift)
{
	struct ds_tl *t = tl;
	if (!t || !ds_opt.cache_stacks)
		return NULL;
	struct dynstack *s = NULL;
	/* Newest first: its pages are the most likely to be in the TLB. */
	for (size_t i = t->ncache; i-- > 0;) {
		if (t->cache[i]->arena->shift != shift)
			continue;
		s = t->cache[i];
		t->cache[i] = t->cache[--t->ncache];
		goto hit;
	}
	struct depot_class *d = &depot[shift];
	pthread_mutex_lock(&d->lock);
	if ((s = d->head)) {
		d->head = s->next_free;
		d->n--;
		/* Take up to half a cache more in the same trip. */
		while (d->head && t->ncache < ds_opt.cache_stacks / 2) {
			struct dynstack *x = d->head;
			d->head = x->next_free;
			d->n--;
			t->cache[t->ncache++] = x;
		}
	}
	pthread_mutex_unlock(&d->lock);
	if (!s)
		return NULL;
hit:
	s->next_free = NULL;
	size_t pages = committed_pages(s);
	/* Its pages leave the cache: their budget becomes this thread's credit,
	 * and what is over two chunks goes back. */
	t->credit += pages;
	if (t->credit > 2 * DS_CREDIT_CHUNK) {
		atomic_fetch_sub_explicit(&budget_used, t->credit - DS_CREDIT_CHUNK,
					  memory_order_relaxed);
		t->credit = DS_CREDIT_CHUNK;
	}
	DS_TSTAT_SUB(nr_dynamic_stacks_cached, 1);
	DS_TSTAT_SUB(nr_dynamic_stacks_cached_pages, pages);
	DS_TSTAT_ADD(nr_dynamic_stacks_cache_hits, 1);
	return s;
}

/* Spend pages of t's credit, topping it up from the budget when short. */
static bool take_credit(struct ds_tl *t, size_t pages)
{
	if (t->credit < pages) {
		size_t want = pages - t->credit;
		if (want < DS_CREDIT_CHUNK)
			want = DS_CREDIT_CHUNK;
		size_t used = atomic_load_explicit(&budget_used, memory_order_relaxed);
		do {
			if (used + want > ds_opt.cache_pages) {
				/* A whole chunk does not fit: ask for just enough. */
				want = pages - t->credit;
				if (used + want > ds_opt.cache_pages)
					return false;
			}
		} while (!atomic_compare_exchange_weak_explicit(&budget_used, &used, used + want,
								memory_order_relaxed,
								memory_order_relaxed));
		t->credit += want;
	}
	t->credit -= pages;
	return true;
}

bool ds_cache_put(struct dynstack *s)
{
	struct ds_tl *t = tl;
	size_t ps = page_size();
	if (!t || !ds_opt.cache_stacks)
		return false;
	size_t pages = committed_pages(s);
	if (!take_credit(t, pages)) {
		/* Over the page budget: keep the slot, give back all but the top
		 * page (its initial size under the default policy), if even
		 * that one page fits. */
		if (!take_credit(t, 1))
			return false;
		t->credit += 1;
		uintptr_t edge = atomic_load_explicit(&s->edge, memory_order_relaxed);
		if (pages > 1) {
			if (ds_os_decommit(ds_opt.backend, edge, s->top - ps))
				return false;
			atomic_store_explicit(&s->edge, s->top - ps, memory_order_relaxed);
		}
		pages = committed_pages(s);
		if (!take_credit(t, pages))
			return false;
	}
	if (t->ncache == ds_opt.cache_stacks) {
		/* Full: the older half goes to the depot in one trip. */
		size_t half = t->ncache / 2 ? t->ncache / 2 : 1;
		move_to_depot(t->cache, half);
		memmove(t->cache, t->cache + half, (t->ncache - half) * sizeof(*t->cache));
		t->ncache -= half;
	}
	atomic_store_explicit(&s->state, DS_SLOT_CACHED, memory_order_release);
	t->cache[t->ncache++] = s;
	DS_TSTAT_ADD(nr_dynamic_stacks_cached, 1);
	DS_TSTAT_ADD(nr_dynamic_stacks_cached_pages, pages);
	return true;
}

void ds_tl_fini(void)
{
	struct ds_tl *t = tl;
	ds_shared_thread_fini(); /* first: freeing a group puts its stack in the cache */
	ds_segment_thread_fini();
	if (!t)
		return;
	flush_queue(t);
	move_to_depot(t->cache, t->ncache);
	atomic_fetch_sub_explicit(&budget_used, t->credit, memory_order_relaxed);
	tl = NULL;
	free(t->cache);
	free(t);
}

void ds_cache_fork(enum ds_fork_phase ph)
{
	pthread_once(&depot_once, depot_init);
	for (size_t i = 0; i <= DS_ARENA_MAX_SHIFT; i++)
		ds_fork_lock(&depot[i].lock, ph);
}
