// Boost.Fiber on libdynstack stacks (include/dynstack/boost.hpp). Part one: 5,000 fibers on one
// thread, each yielding a few times on a 128 KiB reservation, and one fiber that recurses
// 200 KiB deep in a 1 MiB reservation; all are checked while suspended, then joined. Part two:
// 300 fibers made on one thread run on two others (shared_work), so they grow on threads that
// never made a stack; libdynstack::with_sync_stack gives each of those its sync stack.
// Self-checking: prints a summary, exits 1 on any failed check (77, skipped, under TSan).
#include <dynstack.h>
#include <dynstack/boost.hpp>

#define EXAMPLE_NAME "boost_fiber"
#include "boost_common.hpp"

#include <boost/fiber/all.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using example::KiB;
using example::stats;
constexpr int small_yields = 8;
constexpr std::size_t small_size = 128 * KiB;
constexpr std::size_t deep_size = 1024 * KiB;
constexpr int deep_levels = 200; // 1 KiB frames: 200 KiB deep
constexpr int n_pool = 300;
constexpr int pool_workers = 2;

bool whole;  // stacks committed whole at creation (Valgrind)
int n_small; // 5,000, or 500 under Valgrind

// The allocator, remembering each stack it makes so that main can read the accessors. Boost
// calls allocate() in the fiber's constructor, so stacks[i] belongs to the i-th fiber made.
class recording_allocator : public libdynstack::boost_stack_allocator {
public:
	recording_allocator(std::size_t size, const char *name, std::vector<dynstack_t *> *stacks)
	    : boost_stack_allocator(size, name), stacks_(stacks)
	{
	}
	boost::context::stack_context allocate()
	{
		boost::context::stack_context sctx = boost_stack_allocator::allocate();
		stacks_->push_back(stack_of(sctx));
		return sctx;
	}

private:
	std::vector<dynstack_t *> *stacks_;
};

// 1 KiB of stack per level, written and read back so that every page is touched; yields at a
// few depths so that the deep stack is suspended while the others run.
__attribute__((noinline)) std::uint64_t dig(int level, int levels)
{
	volatile unsigned char frame[example::frame_bytes];
	for (unsigned i = 0; i < sizeof(frame); i++)
		frame[i] = static_cast<unsigned char>(level + i);
	if (level % 50 == 0)
		boost::this_fiber::yield();
	std::uint64_t below = level + 1 < levels ? dig(level + 1, levels) : 0;
	std::uint64_t sum = 0;
	for (unsigned i = 0; i < sizeof(frame); i++)
		sum += frame[i];
	return below + sum;
}

void one_thread()
{
	std::vector<dynstack_t *> small_stacks, deep_stack;
	std::vector<boost::fibers::fiber> fibers;
	int arrived = 0;      // fibers done with their work, now parked
	bool release = false; // main has read the stacks: finish
	std::uint64_t small_sum = 0, deep_result = 0;
	dynstack_stats_t before = stats();

	fibers.reserve(n_small + 1);
	recording_allocator small_alloc(small_size, "fiber", &small_stacks);
	for (int i = 0; i < n_small; i++)
		fibers.emplace_back(std::allocator_arg, small_alloc, [&, i] {
			for (int y = 0; y < small_yields; y++) {
				small_sum += static_cast<std::uint64_t>(i);
				boost::this_fiber::yield();
			}
			arrived++;
			while (!release)
				boost::this_fiber::yield();
		});
	recording_allocator deep_alloc(deep_size, "deep", &deep_stack);
	fibers.emplace_back(std::allocator_arg, deep_alloc, [&] {
		deep_result = dig(0, deep_levels);
		arrived++;
		while (!release)
			boost::this_fiber::yield();
	});

	while (arrived < n_small + 1)
		boost::this_fiber::yield();

	// Everything is suspended: read what each stack committed.
	dynstack_stats_t mid = stats();
	std::size_t small_max = 0, small_total = 0;
	for (dynstack_t *s : small_stacks) {
		std::size_t peak = dynstack_peak(s);
		small_max = peak > small_max ? peak : small_max;
		small_total += dynstack_committed(s);
	}
	std::size_t deep_peak = dynstack_peak(deep_stack.at(0));
	release = true;
	for (auto &f : fibers)
		f.join();
	dynstack_stats_t after = stats();

	std::uint64_t faults = mid.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults;
	std::printf("one thread: %d fibers x %zu KiB reserved = %zu MiB of address space\n",
		    n_small, small_size / KiB, n_small * small_size / (KiB * KiB));
	std::printf("  small fibers: %zu KiB committed in all (%.2f KiB each), largest peak %zu "
		    "KiB\n",
		    small_total / KiB, static_cast<double>(small_total) / KiB / n_small,
		    small_max / KiB);
	std::printf("  deep fiber: peak %zu KiB of %zu KiB; growth faults %llu; backend %s\n",
		    deep_peak / KiB, deep_size / KiB, static_cast<unsigned long long>(faults),
		    dynstack_backend_name());

	std::uint64_t want_small = 0;
	for (int i = 0; i < n_small; i++)
		want_small += static_cast<std::uint64_t>(i) * small_yields;
	CHECK(small_sum == want_small);
	CHECK(deep_result == example::dig_expected(deep_levels));
	CHECK(small_stacks.size() == static_cast<std::size_t>(n_small));
	CHECK(deep_peak >= deep_levels * example::frame_bytes);
	if (!whole) {
		CHECK(small_max <= 8 * KiB); // the fiber record and a few frames
		// The deep one grew by faults.
		CHECK(faults >= deep_levels * example::frame_bytes / 4096 / 2);
	}
	CHECK(mid.nr_dynamic_stacks_foreign == before.nr_dynamic_stacks_foreign);
	CHECK(after.nr_dynamic_stacks == before.nr_dynamic_stacks); // all given back
}

// Part two: one thread makes the fibers and their stacks, two worker threads run them from
// shared_work's common ready queue. The maker blocks the whole thread (not just a fiber) until
// they are done, so no fiber runs where its stack was made: every growth fault is taken on a
// worker, which has a sync stack only because with_sync_stack gave it one.
boost::fibers::mutex pool_mtx; // fiber-aware: a worker waiting on it still runs fibers
boost::fibers::condition_variable pool_cv;
bool pool_done;

void pool_worker()
{
	boost::fibers::use_scheduling_algorithm<
		libdynstack::with_sync_stack<boost::fibers::algo::shared_work>>();
	std::unique_lock<boost::fibers::mutex> lk(pool_mtx);
	pool_cv.wait(lk, [] { return pool_done; });
}

void pool()
{
	std::vector<std::uint64_t> results(n_pool);
	std::atomic<int> on_worker{ 0 };
	std::mutex finished_mtx;
	std::condition_variable finished_cv;
	int finished = 0;
	dynstack_stats_t before = stats();

	std::vector<std::thread> workers;
	for (int t = 0; t < pool_workers; t++)
		workers.emplace_back(pool_worker);
	std::thread maker([&] {
		boost::fibers::use_scheduling_algorithm<boost::fibers::algo::shared_work>();
		std::thread::id me = std::this_thread::get_id();
		libdynstack::boost_stack_allocator alloc(256 * KiB, "pool");
		std::vector<boost::fibers::fiber> fibers;
		for (int i = 0; i < n_pool; i++)
			fibers.emplace_back(std::allocator_arg, alloc, [&, i, me] {
				results[i] =
					dig(0, 32 + i % 64); // yields, and may move, on the way
				on_worker += std::this_thread::get_id() != me;
				std::lock_guard<std::mutex> lk(finished_mtx);
				if (++finished == n_pool)
					finished_cv.notify_one();
			});
		{
			std::unique_lock<std::mutex> lk(finished_mtx);
			finished_cv.wait(lk, [&] { return finished == n_pool; });
		}
		for (auto &f : fibers)
			f.join();
		{
			std::lock_guard<boost::fibers::mutex> lk(pool_mtx);
			pool_done = true;
		}
		pool_cv.notify_all();
	});
	maker.join();
	for (auto &t : workers)
		t.join();

	dynstack_stats_t after = stats();
	for (int i = 0; i < n_pool; i++)
		CHECK(results[i] == example::dig_expected(32 + i % 64));
	CHECK(on_worker == n_pool);
	CHECK(after.nr_dynamic_stacks == before.nr_dynamic_stacks);
	std::printf("pool: %d fibers (32..95 KiB deep) made on one thread, run by %d workers: %d "
		    "finished on a worker; growth faults %llu\n",
		    n_pool, pool_workers, on_worker.load(),
		    static_cast<unsigned long long>(after.nr_dynamic_stacks_faults -
						    before.nr_dynamic_stacks_faults));
}

} // namespace

int main()
{
	example::skip_under_tsan();
	int rc = dynstack_init(nullptr);
	if (rc) {
		std::fprintf(stderr, "dynstack_init: %s\n", dynstack_strerror(rc));
		return 1;
	}
	whole = example::committed_whole();
	n_small = whole ? 500 : 5000;
	if (whole)
		std::printf("stacks are committed whole at creation (Valgrind): 500 fibers, growth "
			    "not checked\n");
	try {
		one_thread();
		pool();
	} catch (const std::exception &e) {
		std::fprintf(stderr, "boost_fiber: %s\n", e.what());
		return 1;
	}
	return example::report();
}
