/* Fault policies, parsed: what the handler consults on every fault, and what
 * the simulator (tools/dynstack-sim.c) replays. Parsed policies are interned
 * in a table that is never freed, so a stack can point at its policy and the
 * handler can read it with no lock. */
#ifndef DS_POLICY_H
#define DS_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dynstack.h"

#define DS_SPEC_MAX 160	   /* canonical spec text, with its NUL */
#define DS_POLICIES_MAX 64 /* distinct interned specs in one process */
#define DS_USER_POLICIES_MAX 16
#define DS_SITES 256 /* learn: high-water table indexed by name hash */
#define DS_TRIM_IDLE_DEFAULT 4
#define DS_TRIM_IDLE_MAX 1024  /* also the cap of the back-off after mis-trims */
#define DS_MARGIN_DEFAULT 4096 /* kept below the stack pointer when trimming */

enum ds_grow_kind {
	DS_GROW_STEP = 0, /* faulting page + (step - 1) pages below it */
	DS_GROW_DOUBLE,	  /* max(depth, committed + min(committed, cap)) */
	DS_GROW_LEARN,	  /* max(depth, learned) */
	DS_GROW_USER,	  /* a registered dynstack_policy_t */
};

struct ds_policy {
	uint32_t id; /* index in the intern table; trace records use it */
	enum ds_grow_kind grow;
	uint32_t step;		       /* pages, DS_GROW_STEP */
	size_t cap;		       /* bytes per fault at most, DS_GROW_DOUBLE */
	const dynstack_policy_t *user; /* DS_GROW_USER: the registered copy */
	size_t initial;		       /* bytes committed at creation; 0 = one page */
	bool populate;
	dynstack_overflow_action_t overflow;
	size_t reserve;		/* bytes below the nominal size, overflow=warn */
	uint32_t trim_idle;	/* trim=yield:IDLE (0 = trim=off): idle trim points first */
	size_t margin;		/* bytes kept below the stack pointer when trimming */
	char spec[DS_SPEC_MAX]; /* canonical form */
};

/* Parse spec into *out (not interned). Returns 0 or -EINVAL with a reason in
 * err. Pure apart from reading the registered-policy table. */
int ds_policy_parse(const char *spec, struct ds_policy *out, char *err, size_t errlen)
	__attribute__((visibility("hidden")));
/* The interned copy of p (an existing equal one, or a new entry).
 * -ENOSPC when the table is full. */
int ds_policy_intern(const struct ds_policy *p, const struct ds_policy **out)
	__attribute__((visibility("hidden")));
/* The process default (step=1 until set). Never NULL once init has run. */
const struct ds_policy *ds_policy_default(void) __attribute__((visibility("hidden")));
/* Interned policy by id, NULL past the end (for trace writers). */
const struct ds_policy *ds_policy_by_id(uint32_t id) __attribute__((visibility("hidden")));
uint32_t ds_policy_count(void) __attribute__((visibility("hidden")));

/* The grow decision: bytes to have committed after the fault described by
 * info, clamped to [depth, limit] and rounded up to pages. Pure. */
size_t ds_policy_decide_sigsafe(const struct ds_policy *p, const dynstack_fault_info_t *info)
	__attribute__((visibility("hidden")));
/* Bytes committed at creation for a stack of size usable bytes. Pure. */
size_t ds_policy_initial(const struct ds_policy *p, size_t size, size_t page_size)
	__attribute__((visibility("hidden")));

/* learn's memory. Both the library and the simulator keep one of these and
 * update it the same way, so that a replay reproduces the live decisions:
 * a new stack learns max(slot history, site history of its name); a
 * destroyed stack leaves its peak in both. Sites are indexed by
 * ds_policy_site(name) (FNV-1a, DS_SITES buckets; "" has no site). */
unsigned ds_policy_site(const char *name) __attribute__((visibility("hidden")));
#define DS_NO_SITE ((unsigned)-1)

#endif /* DS_POLICY_H */
