/* libdynstack for Boost.Context and Boost.Fiber: a StackAllocator whose stacks are dynamic
 * stacks, so a fiber costs the pages it uses, not its reservation. Header-only; link with
 * libdynstack and Boost.Context (and Boost.Fiber for fibers). docs/integration.md shows its use.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef DYNSTACK_BOOST_HPP
#define DYNSTACK_BOOST_HPP

#include <dynstack.h>

#include <boost/context/stack_context.hpp>
#include <boost/context/stack_traits.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <system_error>
#include <utility>

#if defined(BOOST_USE_SEGMENTED_STACKS)
#error "dynstack/boost.hpp: a dynamic stack is not a gcc split-stack segment list; build Boost without segmented stacks"
#endif
#if defined(BOOST_USE_VALGRIND)
#include <valgrind/valgrind.h>
#endif

/* Not namespace dynstack: <dynstack.h> declares struct dynstack at global scope, and C++ allows
 * no namespace of the same name there. */
namespace libdynstack {

/* A negative errno from the library as a C++ exception: -ENOMEM is std::bad_alloc, as Boost's
 * own allocators throw; anything else a std::system_error naming the call. */
inline void throw_on_error(int rc, const char *what)
{
	if (rc == -ENOMEM)
		throw std::bad_alloc();
	if (rc < 0)
		throw std::system_error(-rc, std::generic_category(), what);
}

/* Give the calling thread its sync stack (dynstack_thread_init). Boost switches stacks with its
 * own code, so the library never sees a fiber being resumed: every OS thread that runs code on
 * these stacks needs it before the first switch. allocate() does it for the thread that creates
 * a fiber (where Boost.Fiber runs it unless a scheduler migrates it); call this on any other
 * thread that resumes a boost::context::fiber, or use with_sync_stack for Boost.Fiber. */
inline void thread_init()
{
	throw_on_error(dynstack_thread_init(), "dynstack_thread_init");
}

namespace detail {
struct sync_stack_first {
	sync_stack_first()
	{
		thread_init();
	}
};
} // namespace detail

/* A Boost.Fiber scheduling algorithm that first gives its thread a sync stack. Every thread that
 * runs fibers calls use_scheduling_algorithm on itself, so this is where a pool that migrates
 * fibers (shared_work, work_stealing) cannot forget a thread:
 *   boost::fibers::use_scheduling_algorithm<
 *           libdynstack::with_sync_stack<boost::fibers::algo::shared_work>>(true);
 * use_scheduling_algorithm is noexcept: a thread that gets no sync stack terminates. */
template <class Algorithm>
class with_sync_stack : private detail::sync_stack_first, public Algorithm {
public:
	/* Bases are built in order: the sync stack exists before the algorithm does. */
	template <class... Args>
	explicit with_sync_stack(Args &&...args) : Algorithm(std::forward<Args>(args)...)
	{
	}
};

/* Boost's StackAllocator concept over dynstack_create(). Copies share nothing: each allocate()
 * makes its own stack, and any copy may deallocate it.
 *
 * Layout: Boost keeps only the stack_context {sp, size} and hands it back to deallocate(), so
 * the dynstack_t * is kept in a 16-byte header at the very top of the stack, where nothing can
 * be trimmed or left uncommitted (the top page is committed from creation to destruction, and a
 * trim keeps everything above the stack pointer). Boost gets sp = top - 16, still 16-byte
 * aligned, and size = sp - bottom; it places its own control block (the fiber record) just
 * below sp, in the same page. */
class boost_stack_allocator {
public:
	/* size: the reservation (address space only; pages are committed as the fiber uses them).
	 * Boost's own default (stack_traits::default_size(), 128 KiB on Linux) unless given; 0
	 * means the library's default_size (DYNSTACK_SIZE). name (shown in overflow reports, used
	 * by the learn policy) and policy (a spec, docs/policies.md; NULL: the process default)
	 * are not copied here: they must stay valid as long as this allocator and its copies, as
	 * string literals do. */
	explicit boost_stack_allocator(
		std::size_t size = boost::context::stack_traits::default_size(),
		const char *name = nullptr, const char *policy = nullptr) noexcept
	    : size_(size), name_(name), policy_(policy)
	{
	}

	/* A new dynamic stack. Throws std::bad_alloc (-ENOMEM: no address space, or the mprotect
	 * backend at vm.max_map_count) or std::system_error (-EINVAL: size above
	 * DYNSTACK_MAX_SIZE, or a bad policy spec). */
	boost::context::stack_context allocate()
	{
		dynstack_attr_t attr;
		dynstack_attr_init(&attr);
		attr.size = size_;
		attr.name = name_;
		attr.policy = policy_;
		dynstack_t *stack;
		throw_on_error(dynstack_create(&stack, &attr), "dynstack_create");

		char *top = static_cast<char *>(dynstack_top(stack));
		header *h = reinterpret_cast<header *>(top - sizeof(header));
		h->stack = stack;
		h->check = reinterpret_cast<std::uintptr_t>(stack) ^ header_magic;

		boost::context::stack_context sctx;
		sctx.sp = h;
		sctx.size = dynstack_size(stack) - sizeof(header);
#if defined(BOOST_USE_VALGRIND)
		sctx.valgrind_stack_id =
			VALGRIND_STACK_REGISTER(sctx.sp, top - dynstack_size(stack));
#endif
		return sctx;
	}

	/* Give a stack from allocate() back. Boost calls it on another stack, from any thread. The
	 * stack goes to the calling thread's cache with its committed pages (dynstack_destroy). */
	void deallocate(boost::context::stack_context &sctx) noexcept
	{
#if defined(BOOST_USE_VALGRIND)
		VALGRIND_STACK_DEREGISTER(sctx.valgrind_stack_id);
#endif
		dynstack_destroy(stack_of(sctx));
	}

	/* The dynstack_t of a stack this allocator type made, for dynstack_committed(),
	 * dynstack_peak() and the other accessors. Aborts with a message if the header at the top
	 * of the stack was overwritten: nothing else can be trusted about that stack then. */
	static dynstack_t *stack_of(const boost::context::stack_context &sctx) noexcept
	{
		const header *h = static_cast<const header *>(sctx.sp);
		if ((reinterpret_cast<std::uintptr_t>(h->stack) ^ header_magic) != h->check ||
		    dynstack_top(h->stack) != static_cast<const void *>(h + 1)) {
			std::fputs("libdynstack::boost_stack_allocator: the header at the top of a "
				   "stack was overwritten\n",
				   stderr);
			std::abort();
		}
		return h->stack;
	}

private:
	struct alignas(16) header {
		dynstack_t *stack;
		std::uintptr_t check; /* stack ^ header_magic */
	};
	static_assert(sizeof(header) == 16, "Boost gets sp = top - 16, 16-byte aligned");
	static constexpr std::uintptr_t header_magic =
		static_cast<std::uintptr_t>(0x64796e737461636bULL);

	std::size_t size_;
	const char *name_;
	const char *policy_;
};

} // namespace libdynstack

#endif /* DYNSTACK_BOOST_HPP */
