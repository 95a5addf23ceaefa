/* The coroutine object, shared by coro.c (switching) and shared.c (shared
 * stacks: groups, save buffers, copies). Not a public layout. */
#ifndef DS_CORO_H
#define DS_CORO_H

#include "ctx.h"
#include "internal.h"
#include "sanitize.h"

/* Who resumed a running coroutine and where to go back to. A private
 * coroutine has its own; the coroutines of a group share the group's, since
 * only one of them runs at a time. */
struct ds_coro_link {
	ds_ctx_t caller;	      /* the resumer's saved state, valid while it runs */
	struct dynstack_coro *parent; /* coroutine that resumed it, or NULL */
#if DS_SANITIZE
	struct ds_san_ctx san; /* the resumer's stack and fiber */
#endif
};

enum ds_coro_flags {
	DS_CORO_FRESH = 1u << 0, /* shared: never ran; buf holds fn and arg */
};

/* 64 bytes with the assembly switch: a shared-mode coroutine is this plus
 * its saved bytes. fn and arg are not here: they are stored in the top 16
 * bytes of the stack (of the save image for a fresh shared one), where the
 * entry reads them once. */
struct dynstack_coro {
	ds_ctx_t ctx;		      /* the coroutine's saved state */
	_Atomic int status;	      /* dynstack_coro_status_t */
	uint32_t saved;		      /* shared: bytes of its frames in buf now */
	struct dynstack *stack;	      /* its own stack, or its group's */
	struct ds_coro_link *link;    /* &own, or &group->link */
	struct dynstack_group *group; /* NULL: private */
	struct dynstack *segments;    /* dynstack_call segments it runs on, innermost first */
	union {
		struct ds_coro_link own; /* private */
		struct {
			void *buf;	/* shared: save buffer */
			uint32_t cap;	/* its capacity */
			uint32_t flags; /* enum ds_coro_flags */
		} sh;
	};
#if DS_SANITIZE
	struct ds_san_ctx san; /* its fake stack and fiber */
#endif
};

struct ds_pool {
	void *free[64];	  /* free lists of 8, 16, ... 512-byte blocks */
	void *coro_free;  /* free coroutine objects, whatever their size */
	char *bump, *end; /* the rest of the newest slab */
	void *slabs;	  /* all slabs, linked through their first word */
};

struct dynstack_group {
	struct dynstack *stack;
	struct dynstack_coro *on_stack; /* whose frames are on the stack (owner cache) */
	struct ds_coro_link link;	/* of the one running now */
	const void *owner;		/* thread token; NULL: any thread */
	_Atomic int busy;		/* a coroutine of the group runs */
	unsigned flags;			/* DYNSTACK_GROUP_* */
	bool thread_own;		/* a thread's own group */
	const void *_Atomic claimer;	/* any-thread group: the thread holding busy */
	size_t saved_total;		/* bytes its coroutines hold in buffers (reports) */
	size_t ncoros;			/* pool and ncoros: only under busy or on the owner */
	struct ds_pool pool;
	/* The owner thread's list of its groups, marked orphans at its exit. */
	struct dynstack_group *owned_next, **owned_pprev;
};

/* The running thread, for group ownership: the address of one of its
 * thread-local variables. A thread whose owner left is marked with this. */
#define DS_OWNER_GONE ((const void *)1)
DS_HIDDEN const void *ds_thread_token(void);

/* True for a destroyed coroutine (status 0), after ds_stale_handle has had
 * its say (with check_handles it aborts): for accessors that return NULL
 * or 0 for one. */
static inline bool ds_coro_stale(const struct dynstack_coro *c, const char *fn)
{
	if (atomic_load_explicit(&c->status, memory_order_acquire))
		return false;
	ds_stale_handle(fn, c, "coroutine");
	return true;
}

/* coro.c: the first code of every coroutine; reads fn and arg from the top
 * 16 bytes of its stack. */
DS_HIDDEN void ds_coro_main(void *arg);
/* Release the dynstack_call segments c was suspended on. */
DS_HIDDEN void ds_coro_drop_segments(struct dynstack_coro *c);

/* shared.c */
DS_HIDDEN int ds_shared_coro_create(struct dynstack_coro **out, const dynstack_attr_t *attr,
				    dynstack_coro_fn fn, void *arg);
DS_HIDDEN int ds_shared_coro_destroy(struct dynstack_coro *c);
/* Before resuming c, on the resumer's stack: claim the group and put c's
 * frames on the shared stack. 0, -EINVAL (wrong thread), -EBUSY (the group
 * runs another coroutine), -ENOMEM (save buffer), -errno (commit). */
DS_HIDDEN int ds_shared_enter(struct dynstack_coro *c);
/* Poison mode, after c switched out: copy its frames away and poison. */
DS_HIDDEN void ds_shared_after(struct dynstack_coro *c);

#endif /* DS_CORO_H */
