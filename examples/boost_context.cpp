// Boost.Context's boost::context::fiber (the call/cc API) on libdynstack stacks, through
// include/dynstack/boost.hpp. A ping-pong of 10,000 resumes, then a fiber that recurses 200 KiB
// deep on the main thread, is resumed on another thread (which calls libdynstack::thread_init()
// first) and goes 400 KiB deep there, and is finally destroyed while suspended at the bottom:
// Boost unwinds it with an exception, running the destructor in each of its 400 frames (under
// AddressSanitizer it runs to its end instead, see destroy_suspended).
// Self-checking: prints a summary, exits 1 on any failed check (77, skipped, under TSan).
#include <dynstack.h>
#include <dynstack/boost.hpp>

#define EXAMPLE_NAME "boost_context"
#include "boost_common.hpp"

#include <boost/context/fiber.hpp>

#include <cstdint>
#include <cstdio>
#include <thread>
#include <utility>
#include <vector>

namespace ctx = boost::context;

namespace {

using example::KiB;
using example::stats;
constexpr int rounds = 10000;
constexpr int levels_main = 200;   // 1 KiB frames: 200 KiB deep
constexpr int levels_thread = 400; // 400 KiB deep
constexpr std::size_t deep_size = 1024 * KiB;

int unwound; // frames whose destructor ran
bool whole;  // stacks committed whole at creation (Valgrind)

// Debian's Boost is built without AddressSanitizer's fiber annotations, so an exception thrown on
// a fiber's stack (the forced unwind of a destroyed fiber) trips a false stack-buffer-underflow
// report under ASan, with Boost's own stack allocators too. Under ASan the deep fiber is run to
// its end instead of being destroyed while suspended.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool destroy_suspended = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool destroy_suspended = false;
#else
constexpr bool destroy_suspended = true;
#endif
#else
constexpr bool destroy_suspended = true;
#endif

// The allocator, remembering the stack it made last so that main can read the accessors.
class recording_allocator : public libdynstack::boost_stack_allocator {
public:
	recording_allocator(std::size_t size, const char *name, dynstack_t **last)
	    : boost_stack_allocator(size, name), last_(last)
	{
	}
	ctx::stack_context allocate()
	{
		ctx::stack_context sctx = boost_stack_allocator::allocate();
		*last_ = stack_of(sctx);
		return sctx;
	}

private:
	dynstack_t **last_;
};

struct frame_guard {
	~frame_guard()
	{
		unwound++;
	}
};

// 1 KiB of stack per level, every byte written and read back; at the bottom, suspend to
// whoever resumed the fiber.
__attribute__((noinline)) std::uint64_t dig(int level, int levels, ctx::fiber *sink)
{
	frame_guard guard;
	volatile unsigned char frame[example::frame_bytes];
	for (unsigned i = 0; i < sizeof(frame); i++)
		frame[i] = static_cast<unsigned char>(level + i);
	std::uint64_t below = 0;
	if (level + 1 < levels)
		below = dig(level + 1, levels, sink);
	else
		*sink = std::move(*sink).resume();
	std::uint64_t sum = 0;
	for (unsigned i = 0; i < sizeof(frame); i++)
		sum += frame[i];
	return below + sum;
}

void ping_pong()
{
	dynstack_t *stack = nullptr;
	int value = 0, seen = 0;
	ctx::fiber f{ std::allocator_arg, recording_allocator(64 * KiB, "ping-pong", &stack),
		      [&](ctx::fiber &&main) {
			      for (int i = 1; i <= rounds; i++) {
				      value = i;
				      main = std::move(main).resume();
				      seen += value == -i;
			      }
			      return std::move(main);
		      } };
	int answered = 0;
	for (int i = 1; i <= rounds; i++) {
		f = std::move(f).resume();
		answered += value == i;
		value = -i;
	}
	std::size_t peak = dynstack_peak(stack);
	f = std::move(f).resume(); // the fiber returns: f is empty, its stack given back
	CHECK(answered == rounds);
	CHECK(seen == rounds);
	CHECK(!f);
	CHECK(whole || peak <= 8 * KiB);
	std::printf("ping-pong: %d round trips on a 64 KiB reservation, peak %zu KiB\n", rounds,
		    peak / KiB);
}

void deep()
{
	dynstack_t *stack = nullptr;
	std::uint64_t first = 0, second = 0;
	dynstack_stats_t before = stats();
	ctx::fiber f{ std::allocator_arg, recording_allocator(deep_size, "deep", &stack),
		      [&](ctx::fiber &&main) {
			      first = dig(0, levels_main, &main);
			      second = dig(0, levels_thread, &main);
			      return std::move(main);
		      } };

	f = std::move(f).resume(); // to the bottom of the first dig, on this thread
	std::size_t at_main = dynstack_committed(stack);
	std::thread other([&] {
		// Boost switches with its own code: the library never sees this thread enter the
		// stack, so the thread gets its sync stack here, before its first resume.
		libdynstack::thread_init();
		f = std::move(f).resume(); // unwinds the first dig, and grows the second here
	});
	other.join();
	std::size_t at_thread = dynstack_committed(stack);
	std::size_t peak = dynstack_peak(stack);
	dynstack_stats_t mid = stats();

	unwound = 0;
	if (destroy_suspended)
		f = ctx::fiber(); // destroys the suspended fiber: forced_unwind through its frames
	else
		f = std::move(f).resume(); // runs to its end
	dynstack_stats_t after = stats();

	std::printf("deep: %zu KiB committed after %d KiB on the main thread, %zu KiB after %d KiB "
		    "on another thread (peak %zu KiB of %zu KiB); %llu growth faults; %d frames "
		    "unwound %s; backend %s\n",
		    at_main / KiB, levels_main, at_thread / KiB, levels_thread, peak / KiB,
		    deep_size / KiB,
		    static_cast<unsigned long long>(mid.nr_dynamic_stacks_faults -
						    before.nr_dynamic_stacks_faults),
		    unwound, destroy_suspended ? "on destruction" : "by returning",
		    dynstack_backend_name());
	CHECK(first == example::dig_expected(levels_main));
	// Destroyed at the bottom, the second dig never returned.
	CHECK(second == (destroy_suspended ? 0 : example::dig_expected(levels_thread)));
	CHECK(!f);
	CHECK(at_main >= levels_main * example::frame_bytes);
	CHECK(at_thread >= levels_thread * example::frame_bytes);
	CHECK(peak >= at_thread);
	CHECK(whole || mid.nr_dynamic_stacks_faults > before.nr_dynamic_stacks_faults);
	CHECK(unwound == levels_thread);
	CHECK(after.nr_dynamic_stacks == before.nr_dynamic_stacks);
	CHECK(after.nr_dynamic_stacks_foreign == before.nr_dynamic_stacks_foreign);
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
	if (whole)
		std::printf(
			"stacks are committed whole at creation (Valgrind): growth not checked\n");
	try {
		ping_pong();
		deep();
	} catch (const std::exception &e) {
		std::fprintf(stderr, "boost_context: %s\n", e.what());
		return 1;
	}
	return example::report();
}
