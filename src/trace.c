/* Event traces, the writer. Each thread appends records to its own ring
 * without a lock or an allocation, from ordinary code and from the fault
 * handler alike; rings are drained into the trace file under one mutex,
 * outside any handler. docs/trace.md has the format and the guarantees. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "policy.h"
#include "trace.h"

/* Per thread, mapped only while a trace has been started: 64 KiB holds about
 * 1,300 fault records, which is what a thread that creates or destroys no
 * stack between two flushes can take before it drops. A power of two. */
#define RING_SIZE ((uint64_t)64 << 10)

_Static_assert(sizeof(struct ds_trace_header) == 40, "header layout");
_Static_assert(sizeof(struct ds_ev_head) == 24, "record head layout");
_Static_assert(sizeof(struct ds_ev_policy) == 32, "policy record layout");
_Static_assert(sizeof(struct ds_ev_create) == 72, "create record layout");
_Static_assert(sizeof(struct ds_ev_destroy) == 40, "destroy record layout");
_Static_assert(sizeof(struct ds_ev_fault) == 48, "fault record layout");
_Static_assert(sizeof(struct ds_ev_lost) == 32, "lost record layout");
_Static_assert(DS_POLICIES_MAX <= 64, "policies_written has a bit per policy id");

/* One thread's ring. Byte counters only grow; a counter modulo RING_SIZE is
 * the offset in data. [tail, head) holds whole records waiting for the file,
 * [head, reserve) records being copied in.
 *
 * Producers are the owning thread and the signal handlers that interrupt it,
 * so an emit may start while another emit of the same thread is half done.
 * Space is therefore claimed by CAS on `reserve` (an interrupted claim just
 * retries), and only the outermost emit (depth back to 0) publishes `head`,
 * by a CAS that never moves it back: an inner emit's record is published
 * together with the outer one it interrupted, and nothing is dropped for
 * nesting. The consumer is whoever holds trace_lock. */
struct ring {
	_Atomic uint64_t reserve; /* producer: bytes claimed */
	_Atomic uint64_t head;	  /* producer: bytes published (release) */
	volatile unsigned depth;  /* producer: emits in progress on this thread */
	_Atomic uint64_t lost;	  /* records dropped and not yet in a LOST record */
	_Atomic uint64_t tail;	  /* consumer: bytes written out (release) */
	char *_Atomic data;	  /* RING_SIZE bytes, NULL until a trace starts */
	uint32_t tid;
	struct ring *next; /* the registry, under trace_lock */
};

_Atomic int ds_trace_on;

static DS_TLS struct ring *my_ring;

/* trace_lock orders the file and the registry. Lock order: policy.c's lock,
 * then this one (ds_trace_policy runs under the former); nothing here calls
 * into policy.c with trace_lock held except the lock-free count and lookup. */
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ring *rings;
static int trace_fd = -1;
static int trace_err;		  /* first write error of this trace, sticky */
static uint64_t policies_written; /* policy ids already in this trace */
static _Atomic uint64_t start_ns;
static _Atomic uint64_t lost_noring; /* dropped on threads without a ring */

static pthread_once_t proc_once = PTHREAD_ONCE_INIT;
static pthread_key_t ring_key;

static uint32_t gettid_now(void)
{
	return (uint32_t)syscall(SYS_gettid);
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ds_trace_now_sigsafe(void)
{
	return mono_ns() - atomic_load_explicit(&start_ns, memory_order_relaxed);
}

/* ---- producer side: async-signal-safe */

static void drop_sigsafe(struct ring *r)
{
	atomic_fetch_add_explicit(r ? &r->lost : &lost_noring, 1, memory_order_relaxed);
	DS_STAT_ADD(nr_dynamic_stacks_trace_dropped, 1);
}

static bool claim_sigsafe(struct ring *r, uint64_t len, uint64_t *pos)
{
	uint64_t res = atomic_load_explicit(&r->reserve, memory_order_relaxed);
	do {
		/* acquire: the consumer has finished reading what it gave back */
		uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
		if (res + len - tail > RING_SIZE)
			return false;
	} while (!atomic_compare_exchange_weak_explicit(
		&r->reserve, &res, res + len, memory_order_relaxed, memory_order_relaxed));
	*pos = res;
	return true;
}

static void put_sigsafe(char *data, uint64_t pos, const void *src, size_t len)
{
	size_t off = (size_t)(pos & (RING_SIZE - 1));
	size_t first = len < RING_SIZE - off ? len : (size_t)(RING_SIZE - off);
	memcpy(data + off, src, first);
	memcpy(data, (const char *)src + first, len - first);
}

static void publish_sigsafe(struct ring *r)
{
	uint64_t res = atomic_load_explicit(&r->reserve, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	while (head < res &&
	       !atomic_compare_exchange_weak_explicit(&r->head, &head, res, memory_order_release,
						      memory_order_relaxed))
		;
}

void ds_trace_emit_sigsafe(const void *rec)
{
	const struct ds_ev_head *h = rec;
	struct ring *r = my_ring;
	char *data = r ? atomic_load_explicit(&r->data, memory_order_acquire) : NULL;
	size_t len = h->len;

	if (!data || len < sizeof(*h) || len % 8) {
		drop_sigsafe(r);
		return;
	}
	r->depth++;
	atomic_signal_fence(memory_order_seq_cst);

	struct ds_ev_head head = *h;
	head.tid = r->tid;
	if (!head.time_ns)
		head.time_ns = ds_trace_now_sigsafe();
	/* Drops since this thread's last record go in front of it, so that the
	 * LOST record stands where the gap is. */
	uint64_t lost = atomic_exchange_explicit(&r->lost, 0, memory_order_relaxed);
	struct ds_ev_lost ev = {
		.h = { .type = DS_EV_LOST,
		       .len = sizeof(ev),
		       .tid = r->tid,
		       .time_ns = head.time_ns },
		.count = lost,
	};
	size_t extra = lost ? sizeof(ev) : 0;
	uint64_t pos;
	if (claim_sigsafe(r, len + extra, &pos)) {
		put_sigsafe(data, pos, &ev, extra);
		put_sigsafe(data, pos + extra, &head, sizeof(head));
		put_sigsafe(data, pos + extra + sizeof(head), (const char *)rec + sizeof(head),
			    len - sizeof(head));
		DS_STAT_ADD(nr_dynamic_stacks_trace_events, 1);
	} else {
		atomic_fetch_add_explicit(&r->lost, lost, memory_order_relaxed);
		drop_sigsafe(r);
	}

	atomic_signal_fence(memory_order_seq_cst);
	r->depth--;
	atomic_signal_fence(memory_order_seq_cst);
	if (!r->depth)
		publish_sigsafe(r);
}

/* ---- consumer side: trace_lock held, never in a handler */

static void file_write_locked(const void *buf, size_t len)
{
	const char *p = buf;
	while (len && !trace_err) {
		ssize_t n = write(trace_fd, p, len);
		if (n < 0) {
			if (errno != EINTR)
				trace_err = -errno;
			continue;
		}
		p += n;
		len -= (size_t)n;
	}
}

static void write_lost_locked(uint32_t tid, _Atomic uint64_t *counter)
{
	uint64_t n = atomic_exchange_explicit(counter, 0, memory_order_relaxed);
	if (!n)
		return;
	struct ds_ev_lost ev = {
		.h = { .type = DS_EV_LOST,
		       .len = sizeof(ev),
		       .tid = tid,
		       .time_ns = ds_trace_now_sigsafe() },
		.count = n,
	};
	file_write_locked(&ev, sizeof(ev));
}

/* Write r's published records, then a LOST record for drops that no later
 * record of the thread has reported. The producer may append meanwhile: it
 * never writes below head, and the bytes we read are not given back (tail)
 * before write() has copied them. */
static void drain_locked(struct ring *r)
{
	char *data = atomic_load_explicit(&r->data, memory_order_relaxed);
	if (data) {
		uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
		uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
		size_t off = (size_t)(tail & (RING_SIZE - 1));
		size_t n = (size_t)(head - tail);
		size_t first = n < RING_SIZE - off ? n : (size_t)(RING_SIZE - off);
		file_write_locked(data + off, first);
		file_write_locked(data, n - first);
		atomic_store_explicit(&r->tail, head, memory_order_release);
	}
	write_lost_locked(r->tid, &r->lost);
}

/* Forget what r holds (a trace start, a fork child). Producers may still
 * append: giving bytes back is the consumer's right. */
static void discard_locked(struct ring *r)
{
	atomic_store_explicit(&r->tail, atomic_load_explicit(&r->head, memory_order_acquire),
			      memory_order_release);
	atomic_store_explicit(&r->lost, 0, memory_order_relaxed);
}

static void ring_map_locked(struct ring *r)
{
	void *p;
	if (!atomic_load_explicit(&r->data, memory_order_relaxed) && !ds_os_map_rw(RING_SIZE, &p))
		atomic_store_explicit(&r->data, p, memory_order_release);
}

static void ring_free(struct ring *r)
{
	char *data = atomic_load_explicit(&r->data, memory_order_relaxed);
	if (data)
		ds_os_unmap(data, RING_SIZE);
	free(r);
}

static void ring_unlink_locked(struct ring *r)
{
	for (struct ring **pp = &rings; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			return;
		}
	}
}

static void write_policy_locked(uint32_t id, const char *spec)
{
	if (id < 64) {
		if (policies_written & ((uint64_t)1 << id))
			return;
		policies_written |= (uint64_t)1 << id;
	}
	char buf[sizeof(struct ds_ev_policy) + DS_SPEC_MAX + 8];
	size_t n = strnlen(spec, DS_SPEC_MAX);
	struct ds_ev_policy ev = {
		.h = { .type = DS_EV_POLICY,
		       .len = (uint16_t)DS_EV_LEN(sizeof(ev), n),
		       .tid = gettid_now(),
		       .time_ns = ds_trace_now_sigsafe() },
		.id = id,
		.spec_len = (uint32_t)n,
	};
	memset(buf, 0, sizeof(buf));
	memcpy(buf, &ev, sizeof(ev));
	memcpy(buf + sizeof(ev), spec, n);
	file_write_locked(buf, ev.h.len);
}

/* ---- process-wide hooks: exit, fork, thread exit */

static void trace_at_exit(void)
{
	dynstack_trace_stop();
}

/* From the library's fork handler (stack.c), in its lock order. The child
 * has the parent's descriptor and copies of every ring, whose records the
 * parent will write itself: tracing stops there, without a flush, and only
 * the calling thread's ring survives (the other threads do not exist in the
 * child). */
void ds_trace_fork(enum ds_fork_phase ph)
{
	if (ph != DS_FORK_CHILD) {
		ds_fork_lock(&trace_lock, ph);
		return;
	}
	if (trace_fd >= 0)
		close(trace_fd);
	trace_fd = -1;
	trace_err = 0;
	atomic_store(&ds_trace_on, 0);
	atomic_store_explicit(&lost_noring, 0, memory_order_relaxed);
	struct ring **pp = &rings;
	while (*pp) {
		struct ring *r = *pp;
		if (r == my_ring) {
			discard_locked(r);
			r->tid = gettid_now();
			pp = &r->next;
		} else {
			*pp = r->next;
			ring_free(r);
		}
	}
	pthread_mutex_unlock(&trace_lock);
}

static void ring_key_dtor(void *arg)
{
	/* The thread's queued trims are decommitted (and recorded) before its
	 * ring goes: this key's destructor may run before thread.c's. */
	ds_tl_fini();
	if (arg == my_ring)
		ds_trace_thread_fini();
}

static void proc_init(void)
{
	pthread_key_create(&ring_key, ring_key_dtor);
	ds_fork_register();
	atexit(trace_at_exit);
}

/* ---- per-thread set-up */

int ds_trace_thread_init(void)
{
	if (my_ring)
		return 0;
	pthread_once(&proc_once, proc_init);
	struct ring *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->tid = gettid_now();
	pthread_mutex_lock(&trace_lock);
	r->next = rings;
	rings = r;
	if (trace_fd >= 0)
		ring_map_locked(r);
	pthread_mutex_unlock(&trace_lock);
	/* A thread that keeps a foreign sigaltstack gets no exit hook from
	 * thread.c: this key flushes and frees its ring at exit all the same. */
	pthread_setspecific(ring_key, r);
	atomic_signal_fence(memory_order_seq_cst);
	my_ring = r;
	return 0;
}

void ds_trace_thread_fini(void)
{
	struct ring *r = my_ring;
	if (!r)
		return;
	/* From here a handler on this thread drops instead of using r. */
	my_ring = NULL;
	atomic_signal_fence(memory_order_seq_cst);
	pthread_mutex_lock(&trace_lock);
	if (trace_fd >= 0)
		drain_locked(r);
	ring_unlink_locked(r);
	pthread_mutex_unlock(&trace_lock);
	ring_free(r);
	pthread_setspecific(ring_key, NULL);
}

/* ---- start, stop, flush */

static int trace_start(const char *path)
{
	/* Before trace_lock: the first call may intern the default policy,
	 * which takes policy.c's lock, which is taken before ours. */
	const struct ds_policy *def = ds_policy_default();
	if (!def)
		return -ENOMEM;
	pthread_once(&proc_once, proc_init);

	pthread_mutex_lock(&trace_lock);
	if (trace_fd >= 0) {
		pthread_mutex_unlock(&trace_lock);
		return -EBUSY;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
	if (fd < 0) {
		int rc = -errno;
		pthread_mutex_unlock(&trace_lock);
		return rc;
	}
	trace_fd = fd;
	trace_err = 0;
	policies_written = 0;
	atomic_store_explicit(&start_ns, mono_ns(), memory_order_relaxed);
	struct ds_trace_header hdr = {
		.magic = DS_TRACE_MAGIC,
		.version = DS_TRACE_VERSION,
		.header_size = sizeof(hdr),
		.page_size = (uint32_t)ds_os_page_size(),
		.backend = ds_opt.backend,
		.start_ns = atomic_load_explicit(&start_ns, memory_order_relaxed),
		.default_policy = def->id,
	};
	file_write_locked(&hdr, sizeof(hdr));
	for (struct ring *r = rings; r; r = r->next) {
		discard_locked(r);
		ring_map_locked(r);
	}
	atomic_store_explicit(&lost_noring, 0, memory_order_relaxed);
	/* On before the policies are listed, with a full fence: a policy
	 * interned concurrently is either listed here or sees tracing on and
	 * comes to ds_trace_policy, which waits for this lock (policy.c must
	 * order its count store before its ds_trace_on load the same way). */
	atomic_store(&ds_trace_on, 1);
	atomic_thread_fence(memory_order_seq_cst);
	uint32_t n = ds_policy_count();
	for (uint32_t id = 0; id < n; id++) {
		const struct ds_policy *p = ds_policy_by_id(id);
		if (p)
			write_policy_locked(p->id, p->spec);
	}
	int rc = trace_err;
	if (rc) {
		atomic_store(&ds_trace_on, 0);
		close(trace_fd);
		trace_fd = -1;
	}
	pthread_mutex_unlock(&trace_lock);
	return rc;
}

DYNSTACK_API int dynstack_trace_start(const char *path)
{
	DS_KEEP_ERRNO();
	if (!path)
		return -EINVAL;
	int rc = ds_init_once();
	return rc ? rc : trace_start(path);
}

DYNSTACK_API int dynstack_trace_stop(void)
{
	DS_KEEP_ERRNO();
	pthread_mutex_lock(&trace_lock);
	if (trace_fd < 0) {
		pthread_mutex_unlock(&trace_lock);
		return 0;
	}
	/* Emits already past their check of ds_trace_on may still land in a
	 * ring after its drain; the next start discards them. */
	atomic_store(&ds_trace_on, 0);
	for (struct ring *r = rings; r; r = r->next)
		drain_locked(r);
	write_lost_locked(0, &lost_noring);
	int rc = trace_err;
	if (close(trace_fd) && !rc && errno != EINTR)
		rc = -errno;
	trace_fd = -1;
	trace_err = 0;
	pthread_mutex_unlock(&trace_lock);
	return rc;
}

DYNSTACK_API int dynstack_trace_flush(void)
{
	DS_KEEP_ERRNO();
	struct ring *r = my_ring;
	pthread_mutex_lock(&trace_lock);
	int rc = 0;
	if (trace_fd >= 0) {
		if (r)
			drain_locked(r);
		write_lost_locked(0, &lost_noring);
		rc = trace_err;
	}
	pthread_mutex_unlock(&trace_lock);
	return rc;
}

void ds_trace_flush_maybe(void)
{
	struct ring *r = my_ring;
	if (!r || !atomic_load_explicit(&ds_trace_on, memory_order_relaxed))
		return;
	/* tail first: a drain in between can then only make this larger. */
	uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (head - tail < RING_SIZE / 2)
		return;
	pthread_mutex_lock(&trace_lock);
	if (trace_fd >= 0)
		drain_locked(r);
	pthread_mutex_unlock(&trace_lock);
}

void ds_trace_policy(uint32_t id, const char *spec)
{
	if (!atomic_load(&ds_trace_on))
		return;
	pthread_mutex_lock(&trace_lock);
	if (trace_fd >= 0)
		write_policy_locked(id, spec);
	pthread_mutex_unlock(&trace_lock);
}

int ds_trace_init_from_env(void)
{
	/* Not for a set-uid program: the file is created and truncated with
	 * its privileges. */
	const char *path = secure_getenv("DYNSTACK_TRACE");
	if (!path || !*path)
		return 0;
	int rc = trace_start(path);
	if (rc)
		fprintf(stderr, "libdynstack: DYNSTACK_TRACE=\"%s\": cannot trace there: %s\n",
			path, strerror(-rc));
	return rc;
}
