/* dynstack-sim: replay a trace's depth timeline under one or more policy specs, without running
 * the program again, and print what each would have cost: memory (peak and mean committed),
 * faults, syscalls, overflows, and a time estimate from bench_fault's per-page figures. The
 * replay engine is tools/sim.c; this file is its command line, its tables and its plot. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sim.h"

#define RECORDED "recorded"

/* Per-operation costs in ns; negative: not known. */
struct costs {
	double fault;	/* one fault beyond its page: signal, handler, commit call */
	double page;	/* the kernel allocating and zeroing one page */
	double syscall; /* one commit, decommit or populate call outside a fault's own commit */
	char source[512];
};

struct opts {
	const char *trace;
	const char **specs;
	int nspecs;
	const char *costs_file;
	const char *backend; /* NULL: the trace's */
	double fault_ns, page_ns, syscall_ns;
	const char *csv, *timeline, *stacks, *plot;
};

/* One column of the table. */
struct policy_run {
	const char *spec; /* as given, or RECORDED */
	char canon[DS_SPEC_MAX];
	struct ds_policy pol;
	bool recorded;
	struct ds_sim_result res;
	double est_ns; /* negative: no costs */
};

static void usage(FILE *f, int full)
{
	fprintf(f, "usage: dynstack-sim [options] TRACE [SPEC...]\n%s",
		full ? "" : "(--help explains them)\n");
	if (!full)
		return;
	fprintf(f,
		"\n"
		"Replays the depth timeline of TRACE (written by a program run with\n"
		"DYNSTACK_TRACE=FILE, or between dynstack_trace_start and _stop) under each\n"
		"policy SPEC, with the library's own grow decisions, and prints per policy:\n"
		"the most memory committed at once over all stacks (peak), its time-weighted\n"
		"mean, faults, syscalls, overflows, warnings, and an estimated time.\n"
		"\n"
		"  SPEC               a policy spec (docs/policies.md: step=N, double[=CAP],\n"
		"                     learn, initial=SIZE, populate, overflow=...), or\n"
		"                     \"recorded\": every stack under the policy it ran with,\n"
		"                     which reproduces the live run. Default: recorded.\n"
		"  --costs FILE       per-operation costs from bench_fault's output\n"
		"                     (\"name value unit\" lines): fault_baseline_kernel and\n"
		"                     fault_<backend>_ours\n"
		"  --backend B        guard or mprotect: whose fault figure to use (default:\n"
		"                     the backend the trace was recorded with)\n"
		"  --fault-ns N       cost of one fault beyond its page (default:\n"
		"                     fault_<backend>_ours - fault_baseline_kernel)\n"
		"  --page-ns N        cost of the kernel allocating one page (default:\n"
		"                     fault_baseline_kernel)\n"
		"  --syscall-ns N     cost of one commit/decommit/populate call outside a\n"
		"                     fault's own commit (default 0: bench_fault does not\n"
		"                     measure it)\n"
		"  --csv FILE         the table as CSV (bytes and ns)\n"
		"  --timeline FILE    committed bytes over time as CSV, one column per policy\n"
		"  --stacks FILE      faults and peak of every stack under every policy, CSV\n"
		"  --plot FILE        committed memory over time, one line per policy, as\n"
		"                     FILE.png or FILE.svg (needs gnuplot)\n"
		"  --help             this text\n"
		"\n"
		"est. us = faults x fault-ns + pages allocated x page-ns + other syscalls x\n"
		"syscall-ns, where pages allocated are the pages the stacks touch (populate:\n"
		"all that faults commit). Without costs the column shows '-'.\n"
		"\n"
		"Fidelity: the trace holds the depth of every page that faulted. Recorded under\n"
		"step=1 with a one-page initial commit (the default), every first touch of a\n"
		"page is in it and any policy replays exactly. Recorded under a coarser policy,\n"
		"touches inside pages it committed early are not, and a finer policy's replay\n"
		"is a lower bound: the 'inexact' column counts the stacks that ran with less\n"
		"committed than the live stack at some point.\n"
		"\n"
		"Trims: the trace holds every trim the live run made (TRIM records), not the\n"
		"stack pointers its decisions depended on, so trims are replayed as made, under\n"
		"every SPEC: a trim lowers a stack's replayed commit to what the live stack kept\n"
		"(one decommit call, counted in syscalls); the trim= and margin= items of a SPEC\n"
		"change nothing in a replay.\n"
		"\n"
		"Exit status: 0; 1 when an output file or the plot could not be written; 2 for\n"
		"a usage error, a bad spec or a bad trace.\n");
}

static int parse_ns(const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0) || v > 1e12)
		return -1;
	*out = v;
	return 0;
}

/* Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, struct opts *o)
{
	enum {
		OPT_COSTS = 256,
		OPT_BACKEND,
		OPT_FAULT,
		OPT_PAGE,
		OPT_SYSCALL,
		OPT_CSV,
		OPT_TIMELINE,
		OPT_STACKS,
		OPT_PLOT,
	};
	static const struct option longopts[] = {
		{ "costs", required_argument, NULL, OPT_COSTS },
		{ "backend", required_argument, NULL, OPT_BACKEND },
		{ "fault-ns", required_argument, NULL, OPT_FAULT },
		{ "page-ns", required_argument, NULL, OPT_PAGE },
		{ "syscall-ns", required_argument, NULL, OPT_SYSCALL },
		{ "csv", required_argument, NULL, OPT_CSV },
		{ "timeline", required_argument, NULL, OPT_TIMELINE },
		{ "stacks", required_argument, NULL, OPT_STACKS },
		{ "plot", required_argument, NULL, OPT_PLOT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case OPT_COSTS:
			o->costs_file = optarg;
			break;
		case OPT_BACKEND:
			if (strcmp(optarg, "guard") && strcmp(optarg, "mprotect")) {
				fprintf(stderr,
					"dynstack-sim: --backend takes guard or mprotect\n");
				return 2;
			}
			o->backend = optarg;
			break;
		case OPT_FAULT:
		case OPT_PAGE:
		case OPT_SYSCALL: {
			double *v = opt == OPT_FAULT ? &o->fault_ns :
				    opt == OPT_PAGE  ? &o->page_ns :
						       &o->syscall_ns;
			if (parse_ns(optarg, v)) {
				fprintf(stderr,
					"dynstack-sim: invalid value '%s' for --%s-ns: a number of "
					"ns, 0 or more\n",
					optarg,
					opt == OPT_FAULT ? "fault" :
					opt == OPT_PAGE	 ? "page" :
							   "syscall");
				return 2;
			}
			break;
		}
		case OPT_CSV:
			o->csv = optarg;
			break;
		case OPT_TIMELINE:
			o->timeline = optarg;
			break;
		case OPT_STACKS:
			o->stacks = optarg;
			break;
		case OPT_PLOT: {
			size_t n = strlen(optarg);
			if (n < 5 ||
			    (strcmp(optarg + n - 4, ".png") && strcmp(optarg + n - 4, ".svg"))) {
				fprintf(stderr,
					"dynstack-sim: --plot FILE must end in .png or .svg\n");
				return 2;
			}
			o->plot = optarg;
			break;
		}
		case 'h':
			usage(stdout, 1);
			return 0;
		default:
			usage(stderr, 0);
			return 2;
		}
	}
	if (optind == argc) {
		fprintf(stderr, "dynstack-sim: no trace file\n");
		usage(stderr, 0);
		return 2;
	}
	o->trace = argv[optind++];
	o->specs = (const char **)&argv[optind];
	o->nspecs = argc - optind;
	return -1;
}

/* ---- costs */

/* The value of a "name value unit" line of bench_fault's output; negative when absent. */
static double bench_figure(const char *text, const char *name)
{
	size_t n = strlen(name);
	for (const char *line = text; line && *line;) {
		const char *next = strchr(line, '\n');
		if (!strncmp(line, name, n) && (line[n] == ' ' || line[n] == '\t')) {
			char *end;
			double v = strtod(line + n, &end);
			if (end != line + n && v >= 0)
				return v;
		}
		line = next ? next + 1 : NULL;
	}
	return -1;
}

static int read_file(const char *path, char **out)
{
	size_t len = 0, cap = 4096;
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	char *buf = malloc(cap);
	if (!buf) {
		fclose(f);
		return -ENOMEM;
	}
	size_t got;
	while ((got = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += got;
		if (cap - len - 1 == 0) {
			char *b = realloc(buf, cap * 2);
			if (!b) {
				fclose(f);
				free(buf);
				return -ENOMEM;
			}
			buf = b;
			cap *= 2;
		}
	}
	int e = ferror(f) ? EIO : 0;
	fclose(f);
	if (e) {
		free(buf);
		return -e;
	}
	buf[len] = '\0';
	*out = buf;
	return 0;
}

static void append(char *buf, size_t size, size_t *pos, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t size, size_t *pos, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf + *pos, size - *pos, fmt, ap);
	va_end(ap);
	if (n > 0)
		*pos += (size_t)n < size - *pos ? (size_t)n : size - 1 - *pos;
}

/* Costs from the flags, filling what they leave open from the bench file. Returns 0 or 2. */
static int load_costs(const struct opts *o, const char *backend, struct costs *c)
{
	double base = -1, ours = -1;
	char ours_name[64];
	size_t pos = 0;

	snprintf(ours_name, sizeof(ours_name), "fault_%s_ours", backend);
	if (o->costs_file) {
		char *text = NULL;
		int rc = read_file(o->costs_file, &text);
		if (rc) {
			fprintf(stderr, "dynstack-sim: %s: %s\n", o->costs_file, strerror(-rc));
			return 2;
		}
		base = bench_figure(text, "fault_baseline_kernel");
		ours = bench_figure(text, ours_name);
		free(text);
		if (base < 0 || ours < 0)
			fprintf(stderr,
				"dynstack-sim: warning: %s has no %s line (did bench_fault skip "
				"it?)\n",
				o->costs_file, base < 0 ? "fault_baseline_kernel" : ours_name);
	}
	/* bench_fault touches one fresh page per fault: its "ours" figure is the fault plus the
	 * kernel allocating the page, which the baseline measures alone. */
	c->page = o->page_ns >= 0 ? o->page_ns : base;
	c->fault = o->fault_ns;
	if (c->fault < 0 && ours >= 0 && c->page >= 0)
		c->fault = ours > c->page ? ours - c->page : 0;
	c->syscall = o->syscall_ns >= 0 ? o->syscall_ns : 0;
	if (c->fault < 0 || c->page < 0) {
		snprintf(
			c->source, sizeof(c->source),
			"est. us: no costs; give --costs FILE (bench_fault's output), or --fault-ns "
			"and --page-ns\n");
		return 0;
	}
	const char *file = o->costs_file ? o->costs_file : "";
	append(c->source, sizeof(c->source), &pos,
	       "est. us = faults x %.0f ns + pages allocated x %.0f ns + other syscalls x %.0f ns\n",
	       c->fault, c->page, c->syscall);
	if (o->fault_ns >= 0)
		append(c->source, sizeof(c->source), &pos, "  fault: --fault-ns");
	else if (o->page_ns >= 0)
		append(c->source, sizeof(c->source), &pos, "  fault: %s %.0f in %s - --page-ns",
		       ours_name, ours, file);
	else
		append(c->source, sizeof(c->source), &pos,
		       "  fault: %s %.0f - fault_baseline_kernel %.0f in %s", ours_name, ours, base,
		       file);
	append(c->source, sizeof(c->source), &pos, "\n  page: %s; syscall: %s\n",
	       o->page_ns >= 0 ? "--page-ns" : "fault_baseline_kernel",
	       o->syscall_ns >= 0 ? "--syscall-ns" : "not measured (--syscall-ns)");
	return 0;
}

/* ---- output */

static const char *backend_name(uint32_t b)
{
	return b == DYNSTACK_BACKEND_GUARD    ? "guard" :
	       b == DYNSTACK_BACKEND_MPROTECT ? "mprotect" :
						"?";
}

static double kib(double bytes)
{
	return bytes / 1024.0;
}

/* The most bytes the trace's stacks reserve at once: what fixed, fully committed stacks of the
 * same sizes would use. */
static size_t fixed_peak(const struct ds_sim_trace *t)
{
	size_t total = 0, peak = 0;
	for (size_t i = 0; i < t->nevents; i++) {
		const struct ds_sim_event *e = &t->events[i];
		if (e->kind == DS_SIM_CREATE)
			total += t->stacks[e->stack].size;
		else if (e->kind == DS_SIM_DESTROY)
			total -= t->stacks[e->stack].size;
		peak = total > peak ? total : peak;
	}
	return peak;
}

static void print_summary(const char *path, const struct ds_sim_trace *t)
{
	uint64_t span = t->nevents ? t->events[t->nevents - 1].time_ns - t->events[0].time_ns : 0;
	uint64_t faults = 0;
	for (size_t i = 0; i < t->nstacks; i++)
		faults += t->stacks[i].faults;
	printf("trace %s: %zu stacks, %zu records over %.3f ms, %zu-byte pages, backend %s\n", path,
	       t->nstacks, t->nevents, (double)span / 1e6, t->page_size, backend_name(t->backend));
	printf("recorded under:");
	size_t shown = 0;
	for (size_t i = 0; i < t->npolicies; i++) {
		if (!t->policies[i].stacks)
			continue;
		printf("%s %s (%zu stack%s)", shown++ ? "," : "", t->policies[i].spec,
		       t->policies[i].stacks, t->policies[i].stacks == 1 ? "" : "s");
	}
	printf("%s\n", shown ? "" : " -");
	printf("live run: %" PRIu64 " faults", faults);
	if (t->handler_samples)
		printf(", %.0f ns each in the handler",
		       (double)t->handler_ns / (double)t->handler_samples);
	if (t->trims)
		printf(", %" PRIu64 " trim%s", t->trims, t->trims == 1 ? "" : "s");
	printf("; fixed stacks of the same sizes: %.0f KiB\n", kib((double)fixed_peak(t)));
}

static void print_table(const struct policy_run *runs, int n)
{
	int w = 6;
	for (int i = 0; i < n; i++) {
		int l = (int)strlen(runs[i].canon);
		w = l > w ? l : w;
	}
	printf("\n%-*s %9s %9s %7s %8s %9s %8s %9s %7s\n", w, "policy", "peak KiB", "mean KiB",
	       "faults", "syscalls", "overflows", "warnings", "est. us", "inexact");
	for (int i = 0; i < n; i++) {
		const struct ds_sim_result *r = &runs[i].res;
		char est[32];
		if (runs[i].est_ns >= 0)
			snprintf(est, sizeof(est), "%.1f", runs[i].est_ns / 1e3);
		else
			snprintf(est, sizeof(est), "-");
		printf("%-*s %9.0f %9.1f %7" PRIu64 " %8" PRIu64 " %9" PRIu64 " %8" PRIu64
		       " %9s %7zu\n",
		       w, runs[i].canon, kib((double)r->peak), kib(r->mean), r->faults, r->syscalls,
		       r->overflows, r->warnings, est, r->inexact);
	}
}

static void print_notes(const struct ds_sim_trace *t, const struct policy_run *runs, int n,
			const struct costs *c)
{
	size_t coarse = ds_sim_coarse_stacks(t);
	printf("\n%s", c->source);
	if (coarse)
		printf("warning: %zu of %zu stacks were recorded under a policy coarser than step=1 "
		       "with a one-page\n  initial commit: depths reached inside pages it committed "
		       "early are not in the trace,\n  so a finer policy's faults and peak are a "
		       "lower bound (see 'inexact')\n",
		       coarse, t->nstacks);
	for (int i = 0; i < n; i++) {
		if (runs[i].res.inexact)
			printf("lower bound: %s ran %zu stack%s with less committed than the live "
			       "run; touches there are not in the trace\n",
			       runs[i].canon, runs[i].res.inexact,
			       runs[i].res.inexact == 1 ? "" : "s");
		if (runs[i].recorded && runs[i].res.mismatched)
			printf("warning: the replay as recorded differs from the trace on %zu "
			       "stack%s%s\n",
			       runs[i].res.mismatched, runs[i].res.mismatched == 1 ? "" : "s",
			       t->lost ? " (events were lost)" :
					 ": unless threads faulted on one stack at once, the "
					 "simulator and the library disagree: please report it");
	}
	if (t->lost)
		printf("warning: the trace lost %" PRIu64 " events to full buffers: the replay "
		       "misses their touches\n",
		       t->lost);
	if (t->orphans)
		printf("note: %" PRIu64 " records belong to stacks created before tracing started "
		       "and are not replayed\n",
		       t->orphans);
	if (t->unknown)
		printf("note: %" PRIu64 " records of unknown types were skipped\n", t->unknown);
}

/* A CSV field: quoted, with its quotes doubled. */
static void csv_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static int close_out(FILE *f, const char *path)
{
	int bad = ferror(f);
	if (fclose(f) || bad) {
		fprintf(stderr, "dynstack-sim: %s: write failed\n", path);
		return 1;
	}
	return 0;
}

static FILE *open_out(const char *path)
{
	FILE *f = fopen(path, "w");
	if (!f)
		fprintf(stderr, "dynstack-sim: %s: %s\n", path, strerror(errno));
	return f;
}

static int write_csv(const char *path, const struct policy_run *runs, int n)
{
	FILE *f = open_out(path);
	if (!f)
		return 1;
	fprintf(f, "policy,peak_bytes,mean_bytes,faults,syscalls,overflows,warnings,failed,"
		   "populated_pages,allocated_pages,est_ns,inexact_stacks\n");
	for (int i = 0; i < n; i++) {
		const struct ds_sim_result *r = &runs[i].res;
		csv_str(f, runs[i].canon);
		fprintf(f,
			",%zu,%.0f,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
			",%" PRIu64 ",%" PRIu64 ",",
			r->peak, r->mean, r->faults, r->syscalls, r->overflows, r->warnings,
			r->failed, r->populated, r->allocated);
		if (runs[i].est_ns >= 0)
			fprintf(f, "%.0f", runs[i].est_ns);
		fprintf(f, ",%zu\n", r->inexact);
	}
	return close_out(f, path);
}

/* One row per distinct time: the totals after the last event at that time. sep is the column
 * separator, scale divides times (ns) and div the bytes. */
static void write_rows(FILE *f, const struct ds_sim_trace *t, const struct policy_run *runs, int n,
		       char sep, double tdiv, double bdiv)
{
	uint64_t t0 = t->nevents ? t->events[0].time_ns : 0;
	for (size_t i = 0; i < t->nevents; i++) {
		if (i + 1 < t->nevents && t->events[i + 1].time_ns == t->events[i].time_ns)
			continue;
		if (tdiv == 1)
			fprintf(f, "%" PRIu64, t->events[i].time_ns - t0);
		else
			fprintf(f, "%.6f", (double)(t->events[i].time_ns - t0) / tdiv);
		for (int j = 0; j < n; j++) {
			if (bdiv == 1)
				fprintf(f, "%c%zu", sep, runs[j].res.timeline[i]);
			else
				fprintf(f, "%c%.3f", sep, (double)runs[j].res.timeline[i] / bdiv);
		}
		fputc('\n', f);
	}
}

static int write_timeline(const char *path, const struct ds_sim_trace *t,
			  const struct policy_run *runs, int n)
{
	FILE *f = open_out(path);
	if (!f)
		return 1;
	fprintf(f, "time_ns");
	for (int i = 0; i < n; i++) {
		fputc(',', f);
		csv_str(f, runs[i].canon);
	}
	fputc('\n', f);
	write_rows(f, t, runs, n, ',', 1, 1);
	return close_out(f, path);
}

static int write_stacks(const char *path, const struct ds_sim_trace *t,
			const struct policy_run *runs, int n)
{
	FILE *f = open_out(path);
	if (!f)
		return 1;
	fprintf(f, "id,name,size,policy,live_faults,live_peak");
	for (int i = 0; i < n; i++) {
		char col[DS_SPEC_MAX + 16];
		snprintf(col, sizeof(col), "faults %s", runs[i].canon);
		fputc(',', f);
		csv_str(f, col);
		snprintf(col, sizeof(col), "peak %s", runs[i].canon);
		fputc(',', f);
		csv_str(f, col);
	}
	fputc('\n', f);
	for (size_t s = 0; s < t->nstacks; s++) {
		const struct ds_sim_stack *st = &t->stacks[s];
		fprintf(f, "%" PRIu64 ",", st->id);
		csv_str(f, st->name);
		fprintf(f, ",%zu,", st->size);
		csv_str(f, st->policy == DS_SIM_NO_POLICY ? "" : t->policies[st->policy].spec);
		fprintf(f, ",%" PRIu64 ",%zu", st->faults, st->peak);
		for (int i = 0; i < n; i++)
			fprintf(f, ",%" PRIu64 ",%zu", runs[i].res.stacks[s].faults,
				runs[i].res.stacks[s].peak);
		fputc('\n', f);
	}
	return close_out(f, path);
}

/* gnuplot is optional: found by searching PATH as the shell would. */
static bool have_gnuplot(void)
{
	const char *path = getenv("PATH");
	char buf[4096];
	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (const char *p = path; p;) {
		const char *colon = strchr(p, ':');
		size_t len = colon ? (size_t)(colon - p) : strlen(p);
		if (snprintf(buf, sizeof(buf), "%.*s/gnuplot", (int)len, len ? p : ".") <
			    (int)sizeof(buf) &&
		    access(buf, X_OK) == 0)
			return true;
		p = colon ? colon + 1 : NULL;
	}
	return false;
}

/* A gnuplot single-quoted string: quotes are doubled. */
static void gp_str(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputc('\'', f);
		if (*s != '\n')
			fputc(*s, f);
	}
	fputc('\'', f);
}

static int write_plot(const char *path, const char *trace, const struct ds_sim_trace *t,
		      const struct policy_run *runs, int n)
{
	char data[] = "/tmp/dynstack-sim-XXXXXX";
	int fd = mkstemp(data);
	if (fd < 0) {
		fprintf(stderr, "dynstack-sim: --plot: temporary file: %s\n", strerror(errno));
		return 1;
	}
	FILE *f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		unlink(data);
		fprintf(stderr, "dynstack-sim: --plot: %s\n", strerror(errno));
		return 1;
	}
	write_rows(f, t, runs, n, ' ', 1e6, 1024);
	if (close_out(f, data)) {
		unlink(data);
		return 1;
	}

	FILE *gp = popen("gnuplot", "w");
	if (!gp) {
		fprintf(stderr, "dynstack-sim: --plot: cannot run gnuplot: %s\n", strerror(errno));
		unlink(data);
		return 1;
	}
	size_t len = strlen(path);
	fprintf(gp, "set terminal %s size 1000,600\n",
		!strcmp(path + len - 4, ".svg") ? "svg dynamic" : "png");
	fprintf(gp, "set output ");
	gp_str(gp, path);
	fprintf(gp, "\nset title ");
	gp_str(gp, trace);
	fprintf(gp, " noenhanced\nset xlabel 'time (ms)'\nset ylabel 'committed (KiB)'\n"
		    "set yrange [0:*]\nset key outside right top noenhanced\nset grid\nplot ");
	for (int i = 0; i < n; i++) {
		fprintf(gp, "%s", i ? ", " : "");
		gp_str(gp, data);
		fprintf(gp, " using 1:%d with steps lw 2 title ", i + 2);
		gp_str(gp, runs[i].canon);
	}
	fprintf(gp, "\n");
	int st = pclose(gp);
	unlink(data);
	if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "dynstack-sim: --plot: gnuplot failed; %s not written\n", path);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .fault_ns = -1, .page_ns = -1, .syscall_ns = -1 };
	static const char *const recorded_only[] = { RECORDED };
	struct ds_sim_trace *t = NULL;
	struct policy_run *runs = NULL;
	struct costs c;
	char err[256];
	int rc, status = 0;

	if ((rc = parse_args(argc, argv, &o)) >= 0)
		return rc;
	if (!o.nspecs) {
		o.specs = (const char **)recorded_only;
		o.nspecs = 1;
	}
	runs = calloc((size_t)o.nspecs, sizeof(*runs));
	if (!runs) {
		fprintf(stderr, "dynstack-sim: out of memory\n");
		return 2;
	}
	/* Every spec before the trace: a typo should not wait for a big file to load. */
	for (int i = 0; i < o.nspecs; i++) {
		runs[i].spec = o.specs[i];
		if (!strcmp(o.specs[i], RECORDED)) {
			runs[i].recorded = true;
			snprintf(runs[i].canon, sizeof(runs[i].canon), "%s", RECORDED);
			continue;
		}
		if (ds_policy_parse(o.specs[i], &runs[i].pol, err, sizeof(err))) {
			fprintf(stderr, "dynstack-sim: policy \"%s\": %s\n", o.specs[i], err);
			status = 2;
			goto out;
		}
		snprintf(runs[i].canon, sizeof(runs[i].canon), "%s", runs[i].pol.spec);
	}
	if (o.plot && !have_gnuplot()) {
		fprintf(stderr,
			"dynstack-sim: --plot needs gnuplot, which is not installed (not "
			"found in PATH): install it (Debian: apt-get install gnuplot-nox), or "
			"plot the --timeline CSV with another tool; the table is still "
			"printed\n");
		status = 1;
		o.plot = NULL;
	}

	if ((rc = ds_sim_load(o.trace, &t, err, sizeof(err)))) {
		fprintf(stderr, "dynstack-sim: %s: %s\n", o.trace, err);
		status = 2;
		goto out;
	}
	const char *backend = o.backend ? o.backend : backend_name(t->backend);
	if (!strcmp(backend, "?"))
		backend = "guard";
	if ((rc = load_costs(&o, backend, &c))) {
		status = rc;
		goto out;
	}
	for (int i = 0; i < o.nspecs; i++) {
		struct ds_sim_result *r = &runs[i].res;
		if (ds_sim_replay(t, runs[i].recorded ? NULL : &runs[i].pol, r, err, sizeof(err))) {
			fprintf(stderr, "dynstack-sim: %s: %s\n", runs[i].canon, err);
			status = 2;
			goto out;
		}
		runs[i].est_ns = c.fault >= 0 && c.page >= 0 ?
					 (double)r->faults * c.fault +
						 (double)r->allocated * c.page +
						 (double)(r->syscalls - r->faults) * c.syscall :
					 -1;
	}

	print_summary(o.trace, t);
	print_table(runs, o.nspecs);
	print_notes(t, runs, o.nspecs, &c);
	fflush(stdout);
	if (o.csv && write_csv(o.csv, runs, o.nspecs))
		status = 1;
	if (o.timeline && write_timeline(o.timeline, t, runs, o.nspecs))
		status = 1;
	if (o.stacks && write_stacks(o.stacks, t, runs, o.nspecs))
		status = 1;
	if (o.plot && write_plot(o.plot, o.trace, t, runs, o.nspecs))
		status = 1;
out:
	for (int i = 0; runs && i < o.nspecs; i++)
		ds_sim_result_fini(&runs[i].res);
	free(runs);
	ds_sim_free(t);
	return status;
}
