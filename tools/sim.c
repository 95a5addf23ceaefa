/* The replay engine: a trace read into memory and sorted by time, then replayed stack by stack
 * under a policy. Every decision goes through the library's own ds_policy_decide_sigsafe and
 * ds_policy_initial, fed a dynstack_fault_info_t built as ds_stack_fault_sigsafe builds it, and
 * learn's history is kept as ds_stack_create and ds_stack_release keep it, so that replaying a
 * trace under the policy it was recorded with gives back the live faults and peaks exactly.
 * Trims are the exception: TRIM records are applied as the live run made them (see
 * ds_sim_replay), so that the faults after a trim replay exactly too. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#define NO_INDEX UINT32_MAX

static int sim_error(int rc, char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* ---- a map from 64-bit keys (stack ids, slot addresses) to indexes, open addressing */

struct map {
	uint64_t *keys;
	uint32_t *vals; /* NO_INDEX: empty */
	size_t cap;	/* a power of two, or 0 */
	size_t n;
};

static size_t map_hash(uint64_t k, size_t cap)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return (size_t)k & (cap - 1);
}

static uint32_t map_get(const struct map *m, uint64_t key)
{
	if (!m->cap)
		return NO_INDEX;
	for (size_t i = map_hash(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
		if (m->vals[i] == NO_INDEX)
			return NO_INDEX;
		if (m->keys[i] == key)
			return m->vals[i];
	}
}

static int map_put(struct map *m, uint64_t key, uint32_t val)
{
	if (2 * (m->n + 1) > m->cap) {
		struct map g = { .cap = m->cap ? 2 * m->cap : 64 };
		g.keys = malloc(g.cap * sizeof(*g.keys));
		g.vals = malloc(g.cap * sizeof(*g.vals));
		if (!g.keys || !g.vals) {
			free(g.keys);
			free(g.vals);
			return -ENOMEM;
		}
		memset(g.vals, 0xff, g.cap * sizeof(*g.vals));
		for (size_t i = 0; i < m->cap; i++)
			if (m->vals[i] != NO_INDEX)
				map_put(&g, m->keys[i], m->vals[i]);
		free(m->keys);
		free(m->vals);
		*m = g;
	}
	size_t i = map_hash(key, m->cap);
	while (m->vals[i] != NO_INDEX && m->keys[i] != key)
		i = (i + 1) & (m->cap - 1);
	if (m->vals[i] == NO_INDEX)
		m->n++;
	m->keys[i] = key;
	m->vals[i] = val;
	return 0;
}

static void map_fini(struct map *m)
{
	free(m->keys);
	free(m->vals);
}

/* ---- loading */

/* arr (of n elements, room for *cap) with room for one more: arr itself, a bigger copy, or
 * NULL when out of memory (arr is then left as it was). */
static void *grow(void *arr, size_t *cap, size_t n, size_t elem)
{
	if (n < *cap)
		return arr;
	size_t c = *cap ? 2 * *cap : 256;
	void *p = realloc(arr, c * elem);
	if (p)
		*cap = c;
	return p;
}

struct loader {
	struct ds_sim_trace *t;
	struct map ids; /* stack id -> index */
	size_t ecap, scap, pcap;
	uint64_t seq; /* records read, for messages */
};

static size_t round_page(size_t v, size_t ps)
{
	return (v + ps - 1) & ~(ps - 1);
}

/* The spec of a user policy (grow=NAME,...) cannot be parsed where NAME is not registered; the
 * rest of it still says what the stack committed at creation and how it handles overflow. */
static void parse_policy(struct ds_sim_policy *p)
{
	char rest[DS_SPEC_MAX + 8];
	const char *comma = strchr(p->spec, ',');

	p->parse_rc = ds_policy_parse(p->spec, &p->parsed, p->why, sizeof(p->why));
	if (!p->parse_rc) {
		p->initial = p->parsed;
		return;
	}
	snprintf(rest, sizeof(rest), "step=1%s", comma ? comma : "");
	if (ds_policy_parse(rest, &p->initial, NULL, 0))
		ds_policy_parse("step=1", &p->initial, NULL, 0);
}

static int load_policy(struct loader *l, const struct ds_ev_policy *r, char *err, size_t errlen)
{
	struct ds_sim_trace *t = l->t;
	if (r->h.len < sizeof(*r) || r->spec_len > r->h.len - sizeof(*r))
		return sim_error(-EPROTO, err, errlen,
				 "record %llu: POLICY record too short for its spec",
				 (unsigned long long)l->seq);
	if (r->spec_len >= DS_SPEC_MAX)
		return sim_error(-EPROTO, err, errlen,
				 "record %llu: policy spec of %u bytes, at most %d",
				 (unsigned long long)l->seq, r->spec_len, DS_SPEC_MAX - 1);
	for (size_t i = 0; i < t->npolicies; i++) {
		if (t->policies[i].id != r->id)
			continue;
		if (strlen(t->policies[i].spec) != r->spec_len ||
		    memcmp(t->policies[i].spec, r->spec, r->spec_len))
			return sim_error(-EPROTO, err, errlen,
					 "record %llu: policy id %u redefined as \"%.*s\"",
					 (unsigned long long)l->seq, r->id, (int)r->spec_len,
					 r->spec);
		return 0;
	}
	struct ds_sim_policy *p = grow(t->policies, &l->pcap, t->npolicies, sizeof(*p));
	if (!p)
		return sim_error(-ENOMEM, err, errlen, "out of memory");
	t->policies = p;
	p = &t->policies[t->npolicies++];
	memset(p, 0, sizeof(*p));
	p->id = r->id;
	memcpy(p->spec, r->spec, r->spec_len);
	parse_policy(p);
	return 0;
}

static uint32_t policy_index(const struct ds_sim_trace *t, uint32_t id)
{
	for (size_t i = 0; i < t->npolicies; i++)
		if (t->policies[i].id == id)
			return (uint32_t)i;
	return DS_SIM_NO_POLICY;
}

static int add_event(struct loader *l, const struct ds_ev_head *h, uint32_t stack,
		     enum ds_sim_kind kind, uint64_t depth, uint64_t committed, uint64_t ns)
{
	struct ds_sim_trace *t = l->t;
	struct ds_sim_event *ev = grow(t->events, &l->ecap, t->nevents, sizeof(*ev));
	if (!ev)
		return -ENOMEM;
	t->events = ev;
	t->events[t->nevents++] = (struct ds_sim_event){
		.time_ns = h->time_ns,
		.id = h->stack,
		.stack = stack,
		.kind = (uint16_t)kind,
		.type = h->type,
		.depth = depth,
		.committed = committed,
		.ns = ns,
	};
	return 0;
}

static int load_create(struct loader *l, const struct ds_ev_create *r, char *err, size_t errlen)
{
	struct ds_sim_trace *t = l->t;
	size_t ps = t->page_size;
	unsigned long long seq = (unsigned long long)l->seq;

	if (r->h.len < sizeof(*r) || r->name_len > r->h.len - sizeof(*r))
		return sim_error(-EPROTO, err, errlen,
				 "record %llu: CREATE record too short for its name", seq);
	if (!r->h.stack)
		return sim_error(-EPROTO, err, errlen, "record %llu: CREATE of stack id 0", seq);
	/* A warm stack from the cache keeps what its last user committed, the
	 * reserve included (ds_stack_create): committed may pass size. */
	if (!r->size || r->size % ps || r->size > DYNSTACK_MAX_SIZE || r->reserve % ps ||
	    r->reserve > DYNSTACK_MAX_SIZE - r->size || r->committed > r->size + r->reserve)
		return sim_error(-EPROTO, err, errlen,
				 "record %llu: CREATE of stack %llu with size %llu, reserve %llu, "
				 "committed %llu: not page multiples within %zu, or committed "
				 "beyond size and reserve",
				 seq, (unsigned long long)r->h.stack, (unsigned long long)r->size,
				 (unsigned long long)r->reserve, (unsigned long long)r->committed,
				 (size_t)DYNSTACK_MAX_SIZE);
	if (map_get(&l->ids, r->h.stack) != NO_INDEX)
		return sim_error(-EPROTO, err, errlen, "record %llu: stack %llu created twice", seq,
				 (unsigned long long)r->h.stack);
	if (t->nstacks >= NO_INDEX - 1)
		return sim_error(-EPROTO, err, errlen, "record %llu: more than %u stacks", seq,
				 NO_INDEX - 1);
	struct ds_sim_stack *s = grow(t->stacks, &l->scap, t->nstacks, sizeof(*s));
	if (!s || map_put(&l->ids, r->h.stack, (uint32_t)t->nstacks))
		return sim_error(-ENOMEM, err, errlen, "out of memory");
	t->stacks = s;
	s = &t->stacks[t->nstacks];
	memset(s, 0, sizeof(*s));
	s->id = r->h.stack;
	memcpy(s->name, r->name, r->name_len < DYNSTACK_NAME_MAX ? r->name_len : DYNSTACK_NAME_MAX);
	s->slot = r->slot;
	s->size = r->size;
	s->reserve = r->reserve;
	s->committed = round_page(r->committed, ps);
	s->learned = r->learned;
	s->peak = s->committed;
	s->policy = r->policy; /* an id until load_finish: its POLICY record may come later */
	if (add_event(l, &r->h, (uint32_t)t->nstacks, DS_SIM_CREATE, 0, s->committed, 0))
		return sim_error(-ENOMEM, err, errlen, "out of memory");
	t->nstacks++;
	return 0;
}

/* A record about a stack: kept with the stack's id, which is resolved once the whole file is in
 * (the CREATE may sit in another thread's later batch; a TRIM is written by whichever thread
 * flushed the trim queue). */
static int load_stack_event(struct loader *l, const struct ds_ev_head *h, char *err, size_t errlen)
{
	size_t ps = l->t->page_size;
	int rc;

	if (h->type == DS_EV_DESTROY) {
		const struct ds_ev_destroy *r = (const void *)h;
		if (h->len < sizeof(*r))
			return sim_error(-EPROTO, err, errlen,
					 "record %llu: DESTROY record too short",
					 (unsigned long long)l->seq);
		rc = add_event(l, h, NO_INDEX, DS_SIM_DESTROY, r->peak, r->committed, 0);
	} else {
		const struct ds_ev_fault *r = (const void *)h;
		if (h->len < sizeof(*r))
			return sim_error(-EPROTO, err, errlen,
					 "record %llu: fault record too short",
					 (unsigned long long)l->seq);
		/* Anything past DYNSTACK_MAX_SIZE is an overflow under every policy: clamp
		 * there, so that a corrupt depth cannot wrap the arithmetic. */
		size_t most = (size_t)DYNSTACK_MAX_SIZE + ps;
		uint64_t depth = round_page(r->depth < most ? r->depth : most, ps);
		if (h->type == DS_EV_TRIM) {
			/* depth: committed before; committed: what the trim left. */
			uint64_t left = round_page(r->committed < most ? r->committed : most, ps);
			rc = add_event(l, h, NO_INDEX, DS_SIM_TRIM, depth, left, 0);
		} else {
			rc = add_event(l, h, NO_INDEX, DS_SIM_TOUCH, depth, r->committed, r->ns);
		}
	}
	return rc ? sim_error(rc, err, errlen, "out of memory") : 0;
}

static int load_record(struct loader *l, const struct ds_ev_head *h, char *err, size_t errlen)
{
	switch (h->type) {
	case DS_EV_POLICY:
		return load_policy(l, (const void *)h, err, errlen);
	case DS_EV_CREATE:
		return load_create(l, (const void *)h, err, errlen);
	case DS_EV_DESTROY:
	case DS_EV_FAULT:
	case DS_EV_SPURIOUS:
	case DS_EV_OVERFLOW:
	case DS_EV_WARN:
	case DS_EV_TRIM:
		return load_stack_event(l, h, err, errlen);
	case DS_EV_LOST:
		if (h->len < sizeof(struct ds_ev_lost))
			return sim_error(-EPROTO, err, errlen, "record %llu: LOST record too short",
					 (unsigned long long)l->seq);
		l->t->lost += ((const struct ds_ev_lost *)h)->count;
		return 0;
	default:
		l->t->unknown++;
		return 0;
	}
}

/* Records are written per thread and flushed in batches, so the file is not in time order: a
 * stable merge sort by time keeps a thread's records in the order it wrote them. */
static int sort_events(struct ds_sim_event *ev, size_t n)
{
	bool sorted = true;
	for (size_t i = 1; i < n && sorted; i++)
		sorted = ev[i - 1].time_ns <= ev[i].time_ns;
	if (sorted)
		return 0;
	struct ds_sim_event *tmp = malloc(n * sizeof(*tmp));
	if (!tmp)
		return -ENOMEM;
	for (size_t width = 1; width < n; width *= 2) {
		for (size_t lo = 0; lo < n; lo += 2 * width) {
			size_t mid = lo + width < n ? lo + width : n;
			size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
			size_t a = lo, b = mid, o = lo;
			while (a < mid && b < hi)
				tmp[o++] = ev[b].time_ns < ev[a].time_ns ? ev[b++] : ev[a++];
			while (a < mid)
				tmp[o++] = ev[a++];
			while (b < hi)
				tmp[o++] = ev[b++];
		}
		memcpy(ev, tmp, n * sizeof(*ev));
	}
	free(tmp);
	return 0;
}

/* Once the whole file is in: stack ids to indexes (records of stacks created before the trace
 * started are dropped), policy ids to indexes, time order, and what the live run did. */
static int load_finish(struct loader *l, char *err, size_t errlen)
{
	struct ds_sim_trace *t = l->t;
	size_t n = 0;
	int rc;

	for (size_t i = 0; i < t->nevents; i++) {
		struct ds_sim_event *e = &t->events[i];
		if (e->kind != DS_SIM_CREATE)
			e->stack = map_get(&l->ids, e->id);
		if (e->stack == NO_INDEX)
			t->orphans++;
		else
			t->events[n++] = *e;
	}
	t->nevents = n;
	for (size_t i = 0; i < t->nstacks; i++) {
		struct ds_sim_stack *s = &t->stacks[i];
		s->policy = policy_index(t, s->policy);
		if (s->policy == DS_SIM_NO_POLICY)
			continue;
		/* ds_stack_create: attr.initial rounded up, else the policy's initial. Equal values
		 * cannot be told apart and count as the policy's. */
		struct ds_sim_policy *p = &t->policies[s->policy];
		s->explicit_ini =
			s->committed != ds_policy_initial(&p->initial, s->size, t->page_size);
		p->stacks++;
	}
	t->default_policy = policy_index(t, t->default_policy);
	if ((rc = sort_events(t->events, t->nevents)))
		return sim_error(rc, err, errlen, "out of memory");

	for (size_t i = 0; i < t->nevents; i++) {
		const struct ds_sim_event *e = &t->events[i];
		struct ds_sim_stack *s = &t->stacks[e->stack];
		if (e->kind == DS_SIM_DESTROY) {
			if (s->destroyed)
				return sim_error(-EPROTO, err, errlen, "stack %llu destroyed twice",
						 (unsigned long long)s->id);
			s->destroyed = true;
			s->peak = e->depth;
		} else if (e->kind == DS_SIM_TOUCH) {
			if (e->depth > s->deepest)
				s->deepest = e->depth;
			if (e->type == DS_EV_FAULT || e->type == DS_EV_WARN) {
				s->faults++;
				if (!s->destroyed && e->committed > s->peak)
					s->peak = e->committed;
			}
			if (e->type == DS_EV_FAULT && e->ns) {
				t->handler_ns += e->ns;
				t->handler_samples++;
			}
		} else if (e->kind == DS_SIM_TRIM) {
			s->trims++;
			t->trims++;
		}
	}
	return 0;
}

static int load(struct ds_trace_reader *rd, struct ds_sim_trace **out, char *err, size_t errlen)
{
	struct loader l = { .t = calloc(1, sizeof(*l.t)) };
	const struct ds_trace_header *h = ds_trace_header(rd);
	const struct ds_ev_head *rec;
	int rc;

	if (err && errlen)
		*err = '\0';
	if (!l.t) {
		rc = sim_error(-ENOMEM, err, errlen, "out of memory");
		goto out;
	}
	if (h->page_size < 1024 || h->page_size > (1u << 24) ||
	    (h->page_size & (h->page_size - 1))) {
		rc = sim_error(
			-EPROTO, err, errlen,
			"page size %u in the header: not a power of two from 1 KiB to 16 MiB",
			h->page_size);
		goto out;
	}
	l.t->page_size = h->page_size;
	l.t->backend = h->backend;
	l.t->default_policy = h->default_policy;
	while ((rc = ds_trace_next(rd, &rec, err, errlen)) == 1) {
		if ((rc = load_record(&l, rec, err, errlen)))
			goto out;
		l.seq++;
	}
	if (rc < 0 && rc != -EPROTO && err && errlen && !*err)
		sim_error(rc, err, errlen, "%s", strerror(-rc));
	if (!rc)
		rc = load_finish(&l, err, errlen);
out:
	map_fini(&l.ids);
	ds_trace_close(rd);
	if (rc) {
		ds_sim_free(l.t);
		l.t = NULL;
	}
	*out = l.t;
	return rc;
}

int ds_sim_load(const char *path, struct ds_sim_trace **out, char *err, size_t errlen)
{
	struct ds_trace_reader *rd;
	int rc = ds_trace_open(path, &rd, err, errlen);
	*out = NULL;
	if (rc)
		return rc == -EPROTO ? rc : sim_error(rc, err, errlen, "%s", strerror(-rc));
	return load(rd, out, err, errlen);
}

int ds_sim_load_mem(const void *buf, size_t len, struct ds_sim_trace **out, char *err,
		    size_t errlen)
{
	struct ds_trace_reader *rd;
	int rc = ds_trace_open_mem(buf, len, &rd, err, errlen);
	*out = NULL;
	if (rc)
		return rc == -EPROTO ? rc : sim_error(rc, err, errlen, "%s", strerror(-rc));
	return load(rd, out, err, errlen);
}

void ds_sim_free(struct ds_sim_trace *t)
{
	if (!t)
		return;
	free(t->events);
	free(t->stacks);
	free(t->policies);
	free(t);
}

size_t ds_sim_coarse_stacks(const struct ds_sim_trace *t)
{
	size_t n = 0;
	for (size_t i = 0; i < t->nstacks; i++) {
		const struct ds_sim_stack *s = &t->stacks[i];
		const struct ds_sim_policy *p =
			s->policy == DS_SIM_NO_POLICY ? NULL : &t->policies[s->policy];
		bool fine = p && !p->parse_rc && p->parsed.grow == DS_GROW_STEP &&
			    p->parsed.step == 1 &&
			    s->committed <= (t->page_size < s->size ? t->page_size : s->size);
		n += !fine;
	}
	return n;
}

/* ---- replay */

/* learn's memory of one slot or one name site. `known` once a stack of it was destroyed
 * inside the trace: then `sim` is what the replay left there and `live` what the live run
 * did (DESTROY's peak). Before that it holds whatever the process left before tracing. */
struct hist {
	bool known;
	size_t sim, live;
};

/* ds_stack_create: learned = max(slot history, site history). A part the trace has not seen
 * written yet holds a value from before tracing; CREATE's learned is the live maximum, so when
 * it is above every known live part it is that unknown part's value, and otherwise the unknown
 * part is at most that and changes nothing for the policy it was recorded with. */
static size_t learned_at_create(const struct hist *slot, const struct hist *site, size_t recorded)
{
	const struct hist *parts[2] = { slot, site };
	size_t sim = 0, live = 0;
	bool unknown = false;
	for (int i = 0; i < 2; i++) {
		if (!parts[i])
			continue;
		if (!parts[i]->known) {
			unknown = true;
			continue;
		}
		sim = parts[i]->sim > sim ? parts[i]->sim : sim;
		live = parts[i]->live > live ? parts[i]->live : live;
	}
	if (unknown && recorded > live && recorded > sim)
		sim = recorded;
	return sim;
}

/* One stack during a replay. */
struct run {
	const struct ds_policy *pol;
	size_t reserve;	      /* the replayed policy's overflow=warn reserve */
	size_t committed;     /* replayed */
	size_t rec_committed; /* live */
	bool live;	      /* created and not yet destroyed */
	bool stopped;	      /* overflowed: its later touches are not replayed */
};

static const struct ds_policy *recorded_policy(const struct ds_sim_trace *t,
					       const struct ds_sim_stack *s, char *err,
					       size_t errlen)
{
	if (s->policy == DS_SIM_NO_POLICY) {
		sim_error(-EINVAL, err, errlen,
			  "stack %llu was created under a policy id the trace does not define",
			  (unsigned long long)s->id);
		return NULL;
	}
	const struct ds_sim_policy *p = &t->policies[s->policy];
	if (p->parse_rc) {
		sim_error(-EINVAL, err, errlen,
			  "stack %llu ran under \"%s\", which cannot be replayed here: %s",
			  (unsigned long long)s->id, p->spec, p->why);
		return NULL;
	}
	return &p->parsed;
}

static void replay_touch(const struct ds_sim_trace *t, const struct ds_sim_event *e, struct run *x,
			 struct ds_sim_result *r, size_t *total)
{
	const struct ds_sim_stack *s = &t->stacks[e->stack];
	struct ds_sim_stack_result *o = &r->stacks[e->stack];
	const struct ds_policy *pol = x->pol;
	size_t ps = t->page_size, depth = e->depth;

	if (depth > s->size + x->reserve) {
		/* The floor: the overflow action. abort (and warn, past its reserve) ends the
		 * process; fail ends the coroutine and gives back all but its top page. Either
		 * way this stack touches nothing more. */
		r->overflows++;
		o->overflowed = true;
		x->stopped = true;
		if (pol->overflow == DYNSTACK_OVERFLOW_FAIL) {
			r->failed++;
			if (x->committed > ps) {
				r->syscalls++;
				*total -= x->committed - ps;
				x->committed = ps;
			}
		}
		return;
	}
	if (depth <= x->committed)
		return;
	/* ds_stack_fault_sigsafe: the same info, the same decision. */
	bool in_reserve = depth > s->size;
	dynstack_fault_info_t info = {
		.page_size = ps,
		.size = s->size,
		.limit = in_reserve ? s->size + x->reserve : s->size,
		.committed = x->committed,
		.depth = depth,
		.peak = o->peak,
		.learned = o->learned,
		.faults = o->faults,
		.id = s->id,
		.name = s->name,
	};
	size_t target = ds_policy_decide_sigsafe(pol, &info);
	r->syscalls++;
	if (pol->populate) {
		r->syscalls++;
		r->populated += (target - x->committed) / ps;
	}
	r->faults++;
	o->faults++;
	*total += target - x->committed;
	x->committed = target;
	if (target > o->peak)
		o->peak = target;
	if (in_reserve && !o->warned) {
		o->warned = true;
		r->warnings++;
	}
}

struct slots {
	struct map map; /* slot address -> index into hist */
	struct hist *hist;
	size_t n, cap;
};

static struct hist *slot_hist(struct slots *sl, uint64_t slot)
{
	uint32_t i = map_get(&sl->map, slot);
	if (i != NO_INDEX)
		return &sl->hist[i];
	struct hist *h = grow(sl->hist, &sl->cap, sl->n, sizeof(*h));
	if (!h)
		return NULL;
	sl->hist = h;
	if (map_put(&sl->map, slot, (uint32_t)sl->n))
		return NULL;
	memset(&h[sl->n], 0, sizeof(*h));
	return &h[sl->n++];
}

int ds_sim_replay(const struct ds_sim_trace *t, const struct ds_policy *p, struct ds_sim_result *r,
		  char *err, size_t errlen)
{
	size_t ps = t->page_size, total = 0;
	struct hist sites[DS_SITES];
	struct slots slots = { 0 };
	struct run *runs;
	long double integral = 0;
	int rc = 0;

	memset(r, 0, sizeof(*r));
	memset(sites, 0, sizeof(sites));
	runs = calloc(t->nstacks ? t->nstacks : 1, sizeof(*runs));
	r->stacks = calloc(t->nstacks ? t->nstacks : 1, sizeof(*r->stacks));
	r->timeline = malloc((t->nevents ? t->nevents : 1) * sizeof(*r->timeline));
	if (!runs || !r->stacks || !r->timeline) {
		rc = sim_error(-ENOMEM, err, errlen, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < t->nstacks && !p; i++)
		if (!recorded_policy(t, &t->stacks[i], err, errlen)) {
			rc = -EINVAL;
			goto out;
		}

	for (size_t i = 0; i < t->nevents; i++) {
		const struct ds_sim_event *e = &t->events[i];
		const struct ds_sim_stack *s = &t->stacks[e->stack];
		struct ds_sim_stack_result *o = &r->stacks[e->stack];
		struct run *x = &runs[e->stack];

		if (i)
			integral += (long double)total * (long double)(e->time_ns - e[-1].time_ns);
		switch (e->kind) {
		case DS_SIM_CREATE: {
			const struct ds_policy *pol = p ? p : recorded_policy(t, s, NULL, 0);
			size_t reserve = pol->overflow == DYNSTACK_OVERFLOW_WARN ?
						 round_page(pol->reserve, ps) :
						 0;
			if (s->size + reserve > DYNSTACK_MAX_SIZE) {
				/* ds_stack_create refuses it: the stack never exists. */
				x->stopped = true;
				break;
			}
			struct hist *slot = slot_hist(&slots, s->slot);
			if (!slot) {
				rc = sim_error(-ENOMEM, err, errlen, "out of memory");
				goto out;
			}
			unsigned site = ds_policy_site(s->name);
			x->pol = pol;
			x->reserve = reserve;
			x->live = true;
			x->committed = !p || s->explicit_ini ? s->committed :
							       ds_policy_initial(pol, s->size, ps);
			x->rec_committed = s->committed;
			o->initial = o->peak = x->committed;
			o->learned = learned_at_create(
				slot, site == DS_NO_SITE ? NULL : &sites[site], s->learned);
			total += x->committed;
			r->syscalls++;
			break;
		}
		case DS_SIM_TOUCH:
			if (!x->live || x->stopped)
				break;
			replay_touch(t, e, x, r, &total);
			if (e->type == DS_EV_FAULT || e->type == DS_EV_WARN)
				x->rec_committed = e->committed;
			if (!x->stopped && x->committed < x->rec_committed)
				o->inexact = true;
			break;
		case DS_SIM_TRIM:
			/* The live trim decision, replayed rather than decided again (the
			 * hysteresis depends on stack pointers the trace does not hold): the
			 * stack keeps at most what the live one kept, with one decommit. */
			if (!x->live)
				break;
			x->rec_committed = e->committed;
			if (e->committed < x->committed) {
				total -= x->committed - e->committed;
				x->committed = e->committed;
				r->syscalls++;
				r->trims++;
				o->trims++;
			}
			break;
		case DS_SIM_DESTROY: {
			if (!x->live)
				break;
			/* ds_stack_release: the peak goes to the slot's and the name's history. */
			struct hist *slot = slot_hist(&slots, s->slot);
			unsigned site = ds_policy_site(s->name);
			if (!slot) {
				rc = sim_error(-ENOMEM, err, errlen, "out of memory");
				goto out;
			}
			*slot = (struct hist){ true, o->peak, s->peak };
			if (site != DS_NO_SITE)
				sites[site] = (struct hist){ true, o->peak, s->peak };
			total -= x->committed;
			o->committed = x->committed;
			x->live = false;
			r->syscalls++;
			break;
		}
		}
		r->timeline[i] = total;
		if (total > r->peak)
			r->peak = total;
	}

	uint64_t span = t->nevents ? t->events[t->nevents - 1].time_ns - t->events[0].time_ns : 0;
	r->mean = span ? (double)(integral / (long double)span) : (double)total;
	for (size_t i = 0; i < t->nstacks; i++) {
		const struct ds_sim_stack *s = &t->stacks[i];
		struct ds_sim_stack_result *o = &r->stacks[i];
		if (runs[i].live)
			o->committed = runs[i].committed;
		r->inexact += o->inexact;
		if (!p && (o->faults != s->faults || o->peak != s->peak))
			r->mismatched++;
		/* Pages the kernel allocates: those the stack touched (the deepest the trace
		 * shows, and at least the top page), or with populate all that faults committed. */
		size_t touched = s->deepest > ps ? s->deepest : ps;
		if (touched > o->peak)
			touched = o->peak;
		bool populate = runs[i].pol && runs[i].pol->populate && o->faults;
		r->allocated += (populate && o->peak > touched ? o->peak : touched) / ps;
	}
out:
	if (rc)
		ds_sim_result_fini(r);
	free(runs);
	free(slots.hist);
	map_fini(&slots.map);
	return rc;
}

void ds_sim_result_fini(struct ds_sim_result *r)
{
	free(r->stacks);
	free(r->timeline);
	r->stacks = NULL;
	r->timeline = NULL;
}
