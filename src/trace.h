/* Event traces: the on-disk format (docs/trace.md), the writer's hooks that
 * the rest of the library calls, and the reader that tools and tests use.
 * All integers are little-endian (the writer's native order on x86-64 and
 * aarch64; the reader rejects a big-endian host). */
#ifndef DS_TRACE_H
#define DS_TRACE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DS_TRACE_MAGIC "DSTRACE\n" /* 8 bytes, no NUL */
#define DS_TRACE_VERSION 1

/* File header, once, at offset 0. */
struct ds_trace_header {
	char magic[8];	  /* DS_TRACE_MAGIC */
	uint32_t version; /* DS_TRACE_VERSION */
	uint32_t
		header_size; /* sizeof(struct ds_trace_header): readers skip what they do not know */
	uint32_t page_size;
	uint32_t backend;  /* dynstack_backend_t */
	uint64_t start_ns; /* CLOCK_MONOTONIC when tracing started; record times are relative */
	uint32_t default_policy; /* id of the default policy (a DS_EV_POLICY record names it) */
	uint32_t reserved;
};

enum ds_trace_type {
	DS_EV_POLICY = 1,   /* a policy id and its canonical spec */
	DS_EV_CREATE = 2,   /* a stack was created */
	DS_EV_DESTROY = 3,  /* a stack was destroyed */
	DS_EV_FAULT = 4,    /* a fault committed pages */
	DS_EV_SPURIOUS = 5, /* a fault on a committed page */
	DS_EV_OVERFLOW = 6, /* a fault below the limit (action follows the policy) */
	DS_EV_WARN = 7,	    /* a fault in the overflow reserve (overflow=warn) */
	DS_EV_LOST = 8,	    /* events dropped because a thread's buffer was full */
	DS_EV_TRIM = 9,	    /* pages below a suspended stack were given back */
};

/* Every record starts with this; len covers the whole record, is a multiple
 * of 8, and at least sizeof(struct ds_ev_head). Unknown types are skipped by
 * len, so new record types do not break old readers. */
struct ds_ev_head {
	uint16_t type;
	uint16_t len;
	uint32_t tid;	  /* kernel thread id of the thread that recorded it */
	uint64_t time_ns; /* since header.start_ns */
	uint64_t stack;	  /* stack id (dynstack_id), 0 when none */
};

/* len of a record of `fixed` bytes followed by `tail` bytes of text. */
#define DS_EV_LEN(fixed, tail) (((size_t)(fixed) + (size_t)(tail) + 7) & ~(size_t)7)

struct ds_ev_policy { /* DS_EV_POLICY */
	struct ds_ev_head h;
	uint32_t id;
	uint32_t spec_len; /* bytes of spec that follow, no NUL; len = 8-aligned total */
	char spec[];
};

struct ds_ev_create { /* DS_EV_CREATE */
	struct ds_ev_head h;
	uint64_t size;	    /* nominal usable bytes */
	uint64_t committed; /* bytes committed at creation */
	uint64_t reserve;   /* overflow=warn reserve bytes */
	uint64_t slot;	    /* slot base address: identifies slot reuse (learn) */
	uint64_t learned;   /* what learn knew for this stack at creation */
	uint32_t policy;    /* policy id */
	uint32_t name_len;  /* bytes of name that follow, no NUL */
	char name[];
};

struct ds_ev_destroy { /* DS_EV_DESTROY */
	struct ds_ev_head h;
	uint64_t peak;	    /* most bytes ever committed */
	uint64_t committed; /* bytes committed at destroy */
};

struct ds_ev_fault { /* DS_EV_FAULT, DS_EV_SPURIOUS, DS_EV_OVERFLOW, DS_EV_WARN, DS_EV_TRIM */
	struct ds_ev_head h;
	uint64_t depth;	    /* top down to the bottom of the faulting page */
	uint64_t committed; /* bytes committed after the fault */
	uint64_t ns;	    /* time spent in the handler for this fault (0 if not measured) */
};

struct ds_ev_lost { /* DS_EV_LOST */
	struct ds_ev_head h;
	uint64_t count;
};

/* ---- writer hooks (src/trace.c), called by the library */

/* Non-zero while tracing; the only cost of tracing being off is a load and a
 * predictable branch on this. */
extern _Atomic int ds_trace_on __attribute__((visibility("hidden")));

/* Copy a record into the calling thread's buffer; drop it (and count it) if
 * the buffer is full or the thread has none. Never blocks, never allocates.
 * It fills in h.tid, and h.time_ns when the caller left it 0. Safe to call
 * from a handler that interrupted an emit of the same thread. */
void ds_trace_emit_sigsafe(const void *rec) __attribute__((visibility("hidden")));
/* Monotonic ns since tracing started (vDSO clock_gettime: signal-safe). */
uint64_t ds_trace_now_sigsafe(void) __attribute__((visibility("hidden")));
/* Write the calling thread's buffer out if it is past half full. Called at
 * create and destroy (not on the switch path). */
void ds_trace_flush_maybe(void) __attribute__((visibility("hidden")));
/* Per-thread buffer set-up and teardown, from thread.c (outside handlers). */
int ds_trace_thread_init(void) __attribute__((visibility("hidden")));
void ds_trace_thread_fini(void) __attribute__((visibility("hidden")));
/* A policy was interned: record it (while tracing) so that CREATE can name it. */
void ds_trace_policy(uint32_t id, const char *spec) __attribute__((visibility("hidden")));
/* DYNSTACK_TRACE at init. */
int ds_trace_init_from_env(void) __attribute__((visibility("hidden")));

/* ---- reader (src/trace-read.c): for tools and tests, never in the handler */

struct ds_trace_reader;
/* Open and validate the header. 0 or -errno; -EPROTO for a file that is not
 * a trace or a version this reader does not know, with a reason in err. */
int ds_trace_open(const char *path, struct ds_trace_reader **out, char *err, size_t errlen)
	__attribute__((visibility("hidden")));
/* Same, over a memory buffer (the fuzzer uses it); the buffer must outlive r. */
int ds_trace_open_mem(const void *buf, size_t len, struct ds_trace_reader **out, char *err,
		      size_t errlen) __attribute__((visibility("hidden")));
const struct ds_trace_header *ds_trace_header(const struct ds_trace_reader *r)
	__attribute__((visibility("hidden")));
/* Next record: 1 and *rec pointing at a validated record (valid until the
 * next call), 0 at a clean end, -EPROTO for a truncated or corrupt record
 * (reason in err, with its offset). */
int ds_trace_next(struct ds_trace_reader *r, const struct ds_ev_head **rec, char *err,
		  size_t errlen) __attribute__((visibility("hidden")));
void ds_trace_close(struct ds_trace_reader *r) __attribute__((visibility("hidden")));

#endif /* DS_TRACE_H */
