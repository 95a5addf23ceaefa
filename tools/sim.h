/* The replay engine of dynstack-sim: load a trace, then replay its depth timeline under a policy
 * with the library's own decision functions (src/policy.h) and the bookkeeping of src/stack.c.
 * Compiled into the tool and into tests/test_sim.c; never part of the library. */
#ifndef DS_SIM_H
#define DS_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy.h"
#include "trace.h"

#define DS_SIM_NO_POLICY UINT32_MAX

/* A policy the trace defines (DS_EV_POLICY), parsed in this process. */
struct ds_sim_policy {
	uint32_t id;
	char spec[DS_SPEC_MAX];
	int parse_rc;		  /* 0: `parsed` is the policy; else the parser's error */
	struct ds_policy parsed;  /* grow=NAME parses only if NAME is registered here */
	struct ds_policy initial; /* the same without its grow rule: initial, reserve, overflow */
	char why[160];		  /* the parser's reason when parse_rc != 0 */
	size_t stacks;		  /* stacks created under it */
};

/* One stack as the trace tells it: its CREATE, and what the live run did. */
struct ds_sim_stack {
	uint64_t id;
	char name[DYNSTACK_NAME_MAX + 1];
	uint64_t slot;	   /* slot base address: learn's per-slot history */
	size_t size;	   /* nominal usable bytes */
	size_t reserve;	   /* the live overflow=warn reserve */
	size_t committed;  /* committed at creation */
	size_t learned;	   /* what learn knew at creation */
	uint32_t policy;   /* index into ds_sim_trace.policies, or DS_SIM_NO_POLICY */
	uint64_t faults;   /* live: FAULT and WARN records */
	uint64_t trims;	   /* live: TRIM records */
	size_t peak;	   /* live: DESTROY's peak, else the most committed any record shows */
	size_t deepest;	   /* deepest page any record names (0: none) */
	bool explicit_ini; /* created with attr.initial (committed differs from the policy's) */
	bool destroyed;
};

enum ds_sim_kind {
	DS_SIM_CREATE,
	DS_SIM_DESTROY,
	DS_SIM_TOUCH, /* FAULT, SPURIOUS, WARN, OVERFLOW: a page was touched */
	DS_SIM_TRIM,  /* TRIM: the live run gave back the pages below `committed` */
};

struct ds_sim_event {
	uint64_t time_ns;   /* since the trace started */
	uint64_t id;	    /* the stack's id */
	uint32_t stack;	    /* index into ds_sim_trace.stacks */
	uint16_t kind;	    /* enum ds_sim_kind */
	uint16_t type;	    /* enum ds_trace_type of the record */
	uint64_t depth;	    /* TOUCH: top down to the bottom of the page; DESTROY: live peak;
			     * TRIM: live committed before the trim */
	uint64_t committed; /* live committed after the record */
	uint64_t ns;	    /* FAULT: time in the handler, 0 if not measured */
};

struct ds_sim_trace {
	size_t page_size;
	uint32_t backend;	 /* dynstack_backend_t of the live run */
	uint32_t default_policy; /* index into policies, or DS_SIM_NO_POLICY */
	struct ds_sim_event *events;
	size_t nevents; /* sorted by time, stable */
	struct ds_sim_stack *stacks;
	size_t nstacks; /* in CREATE order */
	struct ds_sim_policy *policies;
	size_t npolicies;
	uint64_t lost;		  /* events the writer dropped (DS_EV_LOST) */
	uint64_t trims;		  /* TRIM records of the live run */
	uint64_t orphans;	  /* records of stacks created before the trace started */
	uint64_t unknown;	  /* records of types this reader does not know */
	uint64_t handler_ns;	  /* sum of the handler times FAULT records measured */
	uint64_t handler_samples; /* FAULT records with a handler time */
};

/* Read the whole trace at path. 0, -errno from open, -ENOMEM, or -EPROTO for a file that is
 * not a usable trace; the reason goes to err either way. */
int ds_sim_load(const char *path, struct ds_sim_trace **out, char *err, size_t errlen);
/* The same over a buffer (the trace reader's ds_trace_open_mem). */
int ds_sim_load_mem(const void *buf, size_t len, struct ds_sim_trace **out, char *err,
		    size_t errlen);
void ds_sim_free(struct ds_sim_trace *t);

/* Stacks recorded under something coarser than step=1 with a one-page initial commit: touches
 * inside pages committed ahead of use are not in the trace for them (docs/policies.md). */
size_t ds_sim_coarse_stacks(const struct ds_sim_trace *t);

struct ds_sim_stack_result {
	size_t initial;	  /* committed at creation */
	size_t peak;	  /* most ever committed */
	size_t committed; /* at destroy, or at the end of the trace */
	uint64_t faults;
	uint64_t trims; /* replayed trims that gave pages back */
	size_t learned; /* what learn knew at creation */
	bool overflowed;
	bool warned;
	bool inexact; /* ran with less committed than the live stack: touches may be missing */
};

struct ds_sim_result {
	size_t peak;	    /* most bytes committed at once, over all stacks */
	double mean;	    /* time-weighted mean of that total, first to last event */
	uint64_t faults;    /* faults that committed pages */
	uint64_t syscalls;  /* commit/decommit/populate calls */
	uint64_t trims;	    /* replayed trims that gave pages back (one decommit each) */
	uint64_t overflows; /* faults below size + reserve */
	uint64_t warnings;  /* stacks that crossed into their reserve (overflow=warn) */
	uint64_t failed;    /* stacks ended by overflow=fail */
	uint64_t populated; /* pages populated in faults (populate) */
	uint64_t allocated; /* pages the kernel allocates: touched, or populated */
	size_t inexact;	    /* stacks whose replay may miss faults */
	size_t mismatched; /* replay as recorded: stacks whose faults or peak differ from the trace */
	struct ds_sim_stack_result *stacks; /* one per trace stack */
	size_t *timeline;		    /* total committed after each event */
};

/* Replay t under policy p, or with p NULL under the policy each stack was recorded with. Trims
 * are not decided again: each TRIM record lowers the replayed commit to what the live stack kept
 * (when it is below what the replay has), under any p. 0,
 * -ENOMEM, or -EINVAL when a recorded policy cannot be replayed here (a grow=NAME that is not
 * registered in this process), with the reason in err. Free *r with ds_sim_result_fini. */
int ds_sim_replay(const struct ds_sim_trace *t, const struct ds_policy *p, struct ds_sim_result *r,
		  char *err, size_t errlen);
void ds_sim_result_fini(struct ds_sim_result *r);

#endif /* DS_SIM_H */
