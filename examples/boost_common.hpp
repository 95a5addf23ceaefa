// What boost_context.cpp and boost_fiber.cpp share that is not about Boost: the checks that
// make them self-checking programs, a stats snapshot, the Valgrind probe, the checksum of their
// recursion, and the skip under ThreadSanitizer. Each example is one file that defines
// EXAMPLE_NAME (the name its messages start with) before including this header.
#ifndef DYNSTACK_EXAMPLES_BOOST_COMMON_HPP
#define DYNSTACK_EXAMPLES_BOOST_COMMON_HPP

#ifndef EXAMPLE_NAME
#error "define EXAMPLE_NAME, the program's name for its messages, before including this header"
#endif

#include <dynstack.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__SANITIZE_THREAD__)
#define EXAMPLE_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EXAMPLE_UNDER_TSAN 1
#endif
#endif

#define CHECK(cond) example::check((cond), #cond, __LINE__)

namespace example {

constexpr std::size_t KiB = 1024;
constexpr unsigned frame_bytes = 1000; // of each level of the examples' recursion (dig)

static int failures;

inline void check(bool ok, const char *what, int line)
{
	if (!ok) {
		std::fprintf(stderr, EXAMPLE_NAME ": check failed: %s (line %d)\n", what, line);
		failures++;
	}
}

// Boost switches stacks with its own assembly, which does not tell ThreadSanitizer about the
// switch (__tsan_switch_to_fiber): TSan would lose track of every stack. Under TSan the
// examples do not run; 77 is Meson's exit status for a skipped test.
inline void skip_under_tsan()
{
#ifdef EXAMPLE_UNDER_TSAN
	std::fprintf(stderr, EXAMPLE_NAME ": skipped: Boost's context switch is not annotated for "
					  "ThreadSanitizer\n");
	std::exit(77);
#endif
}

inline dynstack_stats_t stats()
{
	dynstack_stats_t st;
	std::memset(&st, 0, sizeof(st));
	st.struct_size = sizeof(st);
	dynstack_stats_get(&st);
	return st;
}

// Under Valgrind the library commits every stack whole at creation (docs/design.md, Valgrind):
// nothing grows by faults, and the checks on growth are left out.
inline bool committed_whole()
{
	dynstack_t *probe;
	if (dynstack_create(&probe, nullptr))
		return false;
	bool whole = dynstack_committed(probe) == dynstack_size(probe);
	dynstack_destroy(probe);
	return whole;
}

// What dig(0, levels) returns: byte i of level l's frame holds (l + i) mod 256.
inline std::uint64_t dig_expected(int levels)
{
	std::uint64_t total = 0;
	for (int level = 0; level < levels; level++)
		for (unsigned i = 0; i < frame_bytes; i++)
			total += static_cast<unsigned char>(level + i);
	return total;
}

// main's exit status: 1 when a check failed, said on stderr; else 0, after "NAME: OK".
inline int report()
{
	if (failures) {
		std::fprintf(stderr, EXAMPLE_NAME ": %d checks failed\n", failures);
		return 1;
	}
	std::printf(EXAMPLE_NAME ": OK\n");
	return 0;
}

} // namespace example

#endif // DYNSTACK_EXAMPLES_BOOST_COMMON_HPP
