/* Event traces, the reader: checks a whole trace held in memory, record by
 * record, for tools and tests. Its input is untrusted (it is fuzzed): every
 * length is checked against what is left before anything is read. Uses
 * nothing else of the library. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trace.h"

struct policy_ref {
	uint32_t id;
	uint32_t spec_len;
	const char *spec; /* inside the buffer, or NULL for an empty slot */
};

struct ds_trace_reader {
	const unsigned char *buf; /* 8-byte aligned */
	size_t len;
	size_t off;	   /* of the next record */
	void *owned;	   /* buf, when we allocated it */
	int failed;	   /* a -EPROTO was returned: every later call repeats it */
	bool default_seen; /* a POLICY record named header.default_policy */
	struct ds_trace_header hdr;
	struct policy_ref *pol; /* open addressing by id, pol_cap a power of two */
	size_t pol_cap, pol_n;
	char why[200];
};

static int fail(struct ds_trace_reader *r, char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Format the reason into err (and keep it in r for the next call). */
static int fail(struct ds_trace_reader *r, char *err, size_t errlen, const char *fmt, ...)
{
	char tmp[200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (r) {
		memcpy(r->why, tmp, sizeof(tmp));
		r->failed = 1;
	}
	if (err && errlen)
		snprintf(err, errlen, "%s", tmp);
	return -EPROTO;
}

static struct policy_ref *policy_find(struct ds_trace_reader *r, uint32_t id)
{
	if (!r->pol_cap)
		return NULL;
	size_t mask = r->pol_cap - 1;
	for (size_t i = (id * 2654435761u) & mask;; i = (i + 1) & mask) {
		if (!r->pol[i].spec || r->pol[i].id == id)
			return &r->pol[i];
	}
}

static int policy_grow(struct ds_trace_reader *r)
{
	size_t cap = r->pol_cap ? r->pol_cap * 2 : 16;
	struct policy_ref *old = r->pol;
	size_t old_cap = r->pol_cap;
	r->pol = calloc(cap, sizeof(*r->pol));
	if (!r->pol) {
		r->pol = old;
		return -ENOMEM;
	}
	r->pol_cap = cap;
	for (size_t i = 0; i < old_cap; i++)
		if (old[i].spec)
			*policy_find(r, old[i].id) = old[i];
	free(old);
	return 0;
}

static int check_text(struct ds_trace_reader *r, char *err, size_t errlen, const char *what,
		      const char *p, uint32_t n)
{
	if (memchr(p, 0, n))
		return fail(r, err, errlen, "offset %zu: %s contains a NUL byte", r->off, what);
	return 0;
}

static int check_policy(struct ds_trace_reader *r, const struct ds_ev_policy *p, char *err,
			size_t errlen)
{
	if (p->spec_len > p->h.len - sizeof(*p))
		return fail(r, err, errlen,
			    "offset %zu: POLICY spec_len %u does not fit in a %u-byte record",
			    r->off, p->spec_len, p->h.len);
	int rc = check_text(r, err, errlen, "POLICY spec", p->spec, p->spec_len);
	if (rc)
		return rc;
	if (r->pol_n + 1 > r->pol_cap / 2 && policy_grow(r))
		return -ENOMEM;
	struct policy_ref *ref = policy_find(r, p->id);
	if (ref->spec) {
		if (ref->spec_len != p->spec_len || memcmp(ref->spec, p->spec, p->spec_len))
			return fail(r, err, errlen,
				    "offset %zu: POLICY %u is redefined with a different spec",
				    r->off, p->id);
	} else {
		*ref = (struct policy_ref){ .id = p->id, .spec_len = p->spec_len, .spec = p->spec };
		r->pol_n++;
	}
	if (p->id == r->hdr.default_policy)
		r->default_seen = true;
	return 0;
}

static int check_default(struct ds_trace_reader *r, char *err, size_t errlen)
{
	if (r->default_seen)
		return 0;
	return fail(r, err, errlen,
		    "offset %zu: default policy %u has no POLICY record before this point", r->off,
		    r->hdr.default_policy);
}

static size_t min_len(uint16_t type)
{
	switch (type) {
	case DS_EV_POLICY:
		return sizeof(struct ds_ev_policy);
	case DS_EV_CREATE:
		return sizeof(struct ds_ev_create);
	case DS_EV_DESTROY:
		return sizeof(struct ds_ev_destroy);
	case DS_EV_FAULT:
	case DS_EV_SPURIOUS:
	case DS_EV_OVERFLOW:
	case DS_EV_WARN:
	case DS_EV_TRIM:
		return sizeof(struct ds_ev_fault);
	case DS_EV_LOST:
		return sizeof(struct ds_ev_lost);
	default:
		return sizeof(struct ds_ev_head);
	}
}

static const char *type_name(uint16_t type)
{
	static const char *const names[] = {
		[DS_EV_POLICY] = "POLICY",     [DS_EV_CREATE] = "CREATE",
		[DS_EV_DESTROY] = "DESTROY",   [DS_EV_FAULT] = "FAULT",
		[DS_EV_SPURIOUS] = "SPURIOUS", [DS_EV_OVERFLOW] = "OVERFLOW",
		[DS_EV_WARN] = "WARN",	       [DS_EV_LOST] = "LOST",
		[DS_EV_TRIM] = "TRIM",
	};
	return type < sizeof(names) / sizeof(names[0]) && names[type] ? names[type] : "unknown";
}

/* The checks of one record whose head and length are already known good. */
static int check_record(struct ds_trace_reader *r, const struct ds_ev_head *h, char *err,
			size_t errlen)
{
	if (h->type != DS_EV_POLICY) {
		int rc = check_default(r, err, errlen);
		if (rc)
			return rc;
	}
	switch (h->type) {
	case DS_EV_POLICY:
		return check_policy(r, (const struct ds_ev_policy *)h, err, errlen);
	case DS_EV_CREATE: {
		const struct ds_ev_create *c = (const void *)h;
		if (c->name_len > h->len - sizeof(*c))
			return fail(
				r, err, errlen,
				"offset %zu: CREATE name_len %u does not fit in a %u-byte record",
				r->off, c->name_len, h->len);
		const struct policy_ref *ref = policy_find(r, c->policy);
		if (!ref || !ref->spec)
			return fail(r, err, errlen,
				    "offset %zu: CREATE names policy %u, which no earlier POLICY "
				    "record defines",
				    r->off, c->policy);
		return check_text(r, err, errlen, "CREATE name", c->name, c->name_len);
	}
	case DS_EV_DESTROY: {
		const struct ds_ev_destroy *d = (const void *)h;
		if (d->committed > d->peak)
			return fail(r, err, errlen,
				    "offset %zu: DESTROY committed %llu is above peak %llu", r->off,
				    (unsigned long long)d->committed, (unsigned long long)d->peak);
		return 0;
	}
	case DS_EV_FAULT: {
		const struct ds_ev_fault *f = (const void *)h;
		if (f->committed < f->depth)
			return fail(r, err, errlen,
				    "offset %zu: FAULT committed %llu is below its depth %llu",
				    r->off, (unsigned long long)f->committed,
				    (unsigned long long)f->depth);
		return 0;
	}
	case DS_EV_TRIM: {
		/* depth: committed before the decommit; committed: what is left. */
		const struct ds_ev_fault *f = (const void *)h;
		if (f->committed > f->depth)
			return fail(
				r, err, errlen,
				"offset %zu: TRIM leaves %llu committed, above the %llu before it",
				r->off, (unsigned long long)f->committed,
				(unsigned long long)f->depth);
		return 0;
	}
	case DS_EV_LOST: {
		const struct ds_ev_lost *l = (const void *)h;
		if (!l->count)
			return fail(r, err, errlen, "offset %zu: LOST record with a count of 0",
				    r->off);
		return 0;
	}
	default:
		return 0;
	}
}

int ds_trace_next(struct ds_trace_reader *r, const struct ds_ev_head **rec, char *err,
		  size_t errlen)
{
	if (!r || !rec)
		return -EINVAL;
	*rec = NULL;
	if (r->failed) {
		if (err && errlen)
			snprintf(err, errlen, "%s", r->why);
		return -EPROTO;
	}
	size_t left = r->len - r->off;
	if (!left) {
		int rc = check_default(r, err, errlen);
		return rc ? rc : 0;
	}
	if (left < sizeof(struct ds_ev_head))
		return fail(r, err, errlen,
			    "offset %zu: %zu bytes left, less than a record head (%zu): truncated",
			    r->off, left, sizeof(struct ds_ev_head));
	const struct ds_ev_head *h = (const void *)(r->buf + r->off);
	if (h->len < sizeof(*h) || h->len % 8)
		return fail(r, err, errlen,
			    "offset %zu: record length %u is not a multiple of 8 of at least %zu",
			    r->off, h->len, sizeof(*h));
	if (h->len > left)
		return fail(r, err, errlen,
			    "offset %zu: %s record of %u bytes runs past the end (%zu bytes left): "
			    "truncated",
			    r->off, type_name(h->type), h->len, left);
	if (!h->type)
		return fail(r, err, errlen, "offset %zu: record type 0", r->off);
	if (h->len < min_len(h->type))
		return fail(r, err, errlen, "offset %zu: %s record of %u bytes, below its %zu",
			    r->off, type_name(h->type), h->len, min_len(h->type));
	if (((h->type >= DS_EV_CREATE && h->type <= DS_EV_WARN) || h->type == DS_EV_TRIM) &&
	    !h->stack)
		return fail(r, err, errlen, "offset %zu: %s record for stack id 0", r->off,
			    type_name(h->type));
	int rc = check_record(r, h, err, errlen);
	if (rc)
		return rc;
	r->off += h->len;
	*rec = h;
	return 1;
}

static int open_buf(const void *buf, size_t len, void *owned, struct ds_trace_reader **out,
		    char *err, size_t errlen)
{
	struct ds_trace_header hdr;
	*out = NULL;
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
	free(owned);
	return fail(NULL, err, errlen, "offset 0: traces are little-endian, this host is not");
#endif
	if (len < 8 || memcmp(buf, DS_TRACE_MAGIC, 8)) {
		free(owned);
		return fail(NULL, err, errlen, "offset 0: not a libdynstack trace (no %s magic)",
			    "DSTRACE");
	}
	if (len < sizeof(hdr)) {
		free(owned);
		return fail(NULL, err, errlen,
			    "offset 0: %zu bytes, less than the %zu-byte header: truncated", len,
			    sizeof(hdr));
	}
	memcpy(&hdr, buf, sizeof(hdr));
	int rc = 0;
	if (hdr.version != DS_TRACE_VERSION)
		rc = fail(NULL, err, errlen, "offset %zu: trace version %u, this reader knows %u",
			  offsetof(struct ds_trace_header, version), hdr.version, DS_TRACE_VERSION);
	else if (hdr.header_size < sizeof(hdr) || hdr.header_size % 8)
		rc = fail(NULL, err, errlen,
			  "offset %zu: header_size %u is not a multiple of 8 of at least %zu",
			  offsetof(struct ds_trace_header, header_size), hdr.header_size,
			  sizeof(hdr));
	else if (hdr.header_size > len)
		rc = fail(NULL, err, errlen,
			  "offset %zu: header_size %u is past the end (%zu bytes): truncated",
			  offsetof(struct ds_trace_header, header_size), hdr.header_size, len);
	else if (!hdr.page_size || (hdr.page_size & (hdr.page_size - 1)))
		rc = fail(NULL, err, errlen, "offset %zu: page_size %u is not a power of two",
			  offsetof(struct ds_trace_header, page_size), hdr.page_size);
	if (rc) {
		free(owned);
		return rc;
	}

	struct ds_trace_reader *r = calloc(1, sizeof(*r));
	if (!r) {
		free(owned);
		return -ENOMEM;
	}
	if ((uintptr_t)buf % 8) {
		/* Records are read in place: give them their alignment. */
		void *copy = malloc(len);
		if (!copy) {
			free(owned);
			free(r);
			return -ENOMEM;
		}
		memcpy(copy, buf, len);
		free(owned);
		owned = copy;
		buf = copy;
	}
	r->buf = buf;
	r->len = len;
	r->owned = owned;
	r->hdr = hdr;
	r->off = hdr.header_size;
	*out = r;
	return 0;
}

int ds_trace_open_mem(const void *buf, size_t len, struct ds_trace_reader **out, char *err,
		      size_t errlen)
{
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!buf && len)
		return -EINVAL;
	return open_buf(buf ? buf : "", len, NULL, out, err, errlen);
}

static int read_all(int fd, unsigned char **out, size_t *outlen)
{
	struct stat st;
	size_t cap = fstat(fd, &st) == 0 && st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
	size_t len = 0;
	unsigned char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (len == cap) {
			unsigned char *bigger = cap * 2 > cap ? realloc(buf, cap * 2) : NULL;
			if (!bigger) {
				free(buf);
				return -ENOMEM;
			}
			buf = bigger;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int rc = -errno;
			free(buf);
			return rc;
		}
		if (!n)
			break;
		len += (size_t)n;
	}
	*out = buf;
	*outlen = len;
	return 0;
}

int ds_trace_open(const char *path, struct ds_trace_reader **out, char *err, size_t errlen)
{
	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!path)
		return -EINVAL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;
		if (err && errlen)
			snprintf(err, errlen, "%s: %s", path, strerror(-rc));
		return rc;
	}
	unsigned char *buf = NULL;
	size_t len = 0;
	int rc = read_all(fd, &buf, &len);
	close(fd);
	if (rc) {
		if (err && errlen)
			snprintf(err, errlen, "%s: %s", path, strerror(-rc));
		return rc;
	}
	return open_buf(buf, len, buf, out, err, errlen);
}

const struct ds_trace_header *ds_trace_header(const struct ds_trace_reader *r)
{
	return r ? &r->hdr : NULL;
}

void ds_trace_close(struct ds_trace_reader *r)
{
	if (!r)
		return;
	free(r->owned);
	free(r->pol);
	free(r);
}
