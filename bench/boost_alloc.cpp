// Boost.Context's stack allocators next to libdynstack::boost_stack_allocator, for the table in
// docs/integration.md and the summary in docs/benchmarks.md: allocate + deallocate of one
// 128 KiB stack in a loop (warm: what a fiber per request pays), and 5,000 live
// boost::context::fibers, each suspended after writing 2 KB of its stack: VMAs added (lines of
// /proc/self/maps) and RSS added (smaps_rollup). Every case runs in a forked child; children of
// all cases take turns for ROUNDS rounds and the figures are medians. Not a benchmark() target:
// bench/plots.sh builds it (C++14, Boost.Context, libdynstack) and runs it. Output:
// "name value unit" lines.
#include <dynstack.h>
#include <dynstack/boost.hpp>

#include <boost/context/fiber.hpp>
#include <boost/context/fixedsize_stack.hpp>
#include <boost/context/pooled_fixedsize_stack.hpp>
#include <boost/context/protected_fixedsize_stack.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace ctx = boost::context;

namespace {

constexpr std::size_t stack_size = 128 * 1024; // Boost's default on Linux
constexpr int live = 5000;
constexpr int rounds = 5;

enum kind {
	FIXED,
	PROTECTED,
	POOLED,
	OURS_GUARD,
	OURS_MPROTECT,
	KINDS
};
const char *const kind_name[KINDS] = { "fixedsize_stack", "protected_fixedsize_stack",
				       "pooled_fixedsize_stack", "dynstack_guard",
				       "dynstack_mprotect" };

struct report {
	int ok;
	double alloc_ns;
	long vmas, rss_kib;
};

double now_ns()
{
	timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

long count_vmas()
{
	FILE *f = std::fopen("/proc/self/maps", "r");
	long n = 0;
	int c;
	if (!f)
		return -1;
	while ((c = std::fgetc(f)) != EOF)
		n += c == '\n';
	std::fclose(f);
	return n;
}

long rss_kib()
{
	FILE *f = std::fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	long kib = -1;
	if (!f)
		return -1;
	while (std::fgets(line, sizeof(line), f))
		if (std::sscanf(line, "Rss: %ld kB", &kib) == 1)
			break;
	std::fclose(f);
	return kib;
}

// allocate + deallocate, warm: median of 7 batches.
template <class Alloc> double alloc_dealloc_ns(Alloc &a, int n)
{
	double ns[7];
	for (int w = 0; w < n / 10; w++) { // warm-up: caches and pools filled
		ctx::stack_context s = a.allocate();
		a.deallocate(s);
	}
	for (double &x : ns) {
		double t0 = now_ns();
		for (int i = 0; i < n; i++) {
			ctx::stack_context s = a.allocate();
			a.deallocate(s);
		}
		x = (now_ns() - t0) / n;
	}
	std::sort(ns, ns + 7);
	return ns[3];
}

// `live` fibers, each suspended after writing 2 KB of its own stack.
template <class Alloc> void live_fibers(Alloc &a, report &r)
{
	std::vector<ctx::fiber> v;
	v.reserve(live);
	long vmas0 = count_vmas(), rss0 = rss_kib();
	for (int i = 0; i < live; i++) {
		ctx::fiber f{ std::allocator_arg, a, [](ctx::fiber &&main) {
				     volatile char buf[2048];
				     std::memset(const_cast<char *>(buf), 1, sizeof(buf));
				     main = std::move(main).resume();
				     return std::move(main);
			     } };
		v.push_back(std::move(f).resume());
	}
	r.vmas = count_vmas() - vmas0;
	r.rss_kib = rss_kib() - rss0;
	for (auto &f : v) // run each to its end: no forced unwind needed
		f = std::move(f).resume();
}

template <class Alloc> void measure(Alloc a, int n, report &r)
{
	r.alloc_ns = alloc_dealloc_ns(a, n);
	live_fibers(a, r);
	r.ok = 1;
}

void child(kind k, report &r)
{
	switch (k) {
	case FIXED: {
		ctx::fixedsize_stack a(stack_size);
		return measure(a, 100000, r);
	}
	case PROTECTED: {
		ctx::protected_fixedsize_stack a(stack_size);
		return measure(a, 5000, r);
	}
	case POOLED: {
		ctx::pooled_fixedsize_stack a(stack_size);
		return measure(a, 100000, r);
	}
	default: {
		dynstack_config_t cfg;
		dynstack_config_init(&cfg);
		cfg.backend = k == OURS_GUARD ? DYNSTACK_BACKEND_GUARD : DYNSTACK_BACKEND_MPROTECT;
		if (dynstack_init(&cfg))
			return;
		libdynstack::thread_init();
		libdynstack::boost_stack_allocator a(stack_size);
		return measure(a, 100000, r);
	}
	}
}

bool run_child(kind k, report &r)
{
	int fd[2];
	if (pipe(fd))
		return false;
	std::fflush(nullptr);
	pid_t pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		close(fd[0]);
		report out{};
		child(k, out);
		_exit(write(fd[1], &out, sizeof(out)) == sizeof(out) ? 0 : 1);
	}
	close(fd[1]);
	r = report{};
	bool got = read(fd[0], &r, sizeof(r)) == sizeof(r);
	close(fd[0]);
	int st;
	waitpid(pid, &st, 0);
	return got && r.ok && WIFEXITED(st) && !WEXITSTATUS(st);
}

double med(std::vector<double> v)
{
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

} // namespace

int main()
{
	unsetenv("DYNSTACK_BACKEND");
	unsetenv("DYNSTACK_CACHE");
	unsetenv("DYNSTACK_POLICY");
	unsetenv("DYNSTACK_STATS");
	std::vector<double> ns[KINDS], vmas[KINDS], rss[KINDS];
	bool ok[KINDS];
	std::fill(ok, ok + KINDS, true);
	for (int round = 0; round < rounds; round++)
		for (int k = 0; k < KINDS; k++) {
			report r;
			if (!ok[k])
				continue;
			if (!run_child(kind(k), r)) {
				std::printf("# boost_%s: FAILED or skipped\n", kind_name[k]);
				ok[k] = false;
				continue;
			}
			ns[k].push_back(r.alloc_ns);
			vmas[k].push_back(double(r.vmas));
			rss[k].push_back(double(r.rss_kib));
		}
	std::printf("# Boost %d.%d, %zu KiB stacks; alloc+dealloc warm, in a loop; %d live fibers"
		    " each suspended after writing 2 KB; %d children per case, medians\n",
		    BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000, stack_size / 1024, live,
		    rounds);
	for (int k = 0; k < KINDS; k++) {
		if (!ok[k])
			continue;
		std::printf("boost_%s_alloc_dealloc %.1f ns\n", kind_name[k], med(ns[k]));
		std::printf("boost_%s_live_%d_vmas %.0f VMAs\n", kind_name[k], live, med(vmas[k]));
		std::printf("boost_%s_live_%d_rss %.0f KiB\n", kind_name[k], live, med(rss[k]));
	}
	for (int k = 0; k < OURS_GUARD; k++)
		if (ok[k] && ok[OURS_GUARD])
			std::printf("boost_%s_vs_dynstack_guard_alloc_dealloc %.2f x\n",
				    kind_name[k], med(ns[k]) / med(ns[OURS_GUARD]));
	return 0;
}
