// C++ exceptions across dynstack_call segments (src/segment.c; ds_call_on_stack in src/arch/
// describes the caller's frame from its frame pointer, and the library is compiled with
// -fexceptions so that its cleanups run on unwind). An exception thrown by fn on a segment
// reaches the caller of dynstack_call, on a coroutine, through nested segments, on the main
// thread and on another thread; destructors of the objects on the segment run; the segment is
// given back (the next crossing reuses it and no live stack is left over).
//
// Public API only. A plain program: it prints each failed check and exits with 1.
#include <dynstack.h>

#include <pthread.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

namespace {

int failures;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,      \
				     #cond);                                                       \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

constexpr size_t KiB = 1024;

dynstack_stats_t stats()
{
	dynstack_stats_t st;
	std::memset(&st, 0, sizeof(st));
	st.struct_size = sizeof(st);
	if (dynstack_stats_get(&st) != 0)
		std::abort();
	return st;
}

// Destructors that ran, and where the last object lived.
int dtors;
uintptr_t last_object;

struct Guard {
	Guard()
	{
		last_object = reinterpret_cast<uintptr_t>(this);
	}
	~Guard()
	{
		dtors++;
	}
	Guard(const Guard &) = delete;
	Guard &operator=(const Guard &) = delete;
};

bool on_stack(const dynstack_t *s, uintptr_t addr)
{
	uintptr_t top = reinterpret_cast<uintptr_t>(dynstack_top(s));
	return addr < top && addr >= top - dynstack_size(s);
}

void *nop(void *arg)
{
	return arg;
}

[[noreturn]] void *thrower(void *arg)
{
	Guard g;
	throw std::runtime_error(static_cast<const char *>(arg));
}

// A frame with an object of its own between the switch and the throw.
void *middle(void *arg)
{
	Guard g;
	void *r = thrower(arg);
	return r;
}

// Nested segments: each level needs more than what remains on the one before.
int levels;

void *nest(void *arg)
{
	Guard g;
	if (++levels == 3)
		throw std::runtime_error(static_cast<const char *>(arg));
	void *r = dynstack_call(dynstack_remaining() + 4 * KiB, nest, arg);
	return r;
}

// What happened inside the coroutine, checked once it has returned.
struct CoroResult {
	std::string what;
	int dtors_before_catch = -1;
	bool object_on_caller_stack = true;
	bool caller_object_unwound = false;
	dynstack_stats_t before_throw, after_throw, after_next;
	int caught_inside = 0;
};

void *catches_inside(void *arg)
{
	try {
		thrower(arg);
	} catch (const std::runtime_error &) {
		return arg;
	}
	return nullptr;
}

void coro_body(void *arg)
{
	auto *r = static_cast<CoroResult *>(arg);
	const dynstack_t *self = dynstack_coro_stack(dynstack_coro_current());
	int caller_object = 0;

	// A first crossing: the thread keeps that segment afterwards.
	dynstack_call(256 * KiB, nop, nullptr);
	r->before_throw = stats();
	try {
		// An object of the caller's frame: the unwind destroys it before the handler runs.
		struct Flag {
			int *flag;
			~Flag()
			{
				*flag = 2;
			}
		} flag{ &caller_object };
		caller_object = 1;
		dynstack_call(256 * KiB, middle, const_cast<char *>("thrown on a segment"));
	} catch (const std::runtime_error &e) {
		r->what = e.what();
		r->dtors_before_catch = dtors;
		r->object_on_caller_stack = on_stack(self, last_object);
		r->caller_object_unwound = caller_object == 2;
	}
	r->after_throw = stats();
	// The segment went back: this crossing reuses it.
	dynstack_call(256 * KiB, nop, nullptr);
	r->after_next = stats();
	// An exception that stays on the segment.
	if (dynstack_call(256 * KiB, catches_inside, r) == r)
		r->caught_inside = 1;
}

void test_coroutine()
{
	CoroResult r;
	dynstack_attr_t attr;
	dynstack_coro_t *c = nullptr;

	dtors = 0;
	dynstack_attr_init(&attr);
	attr.size = 16 * KiB;
	CHECK(dynstack_coro_create(&c, coro_body, &r, &attr) == 0);
	if (!c)
		return;
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(dynstack_coro_status(c) == DYNSTACK_CORO_DEAD);
	CHECK(dynstack_coro_destroy(c) == 0);

	CHECK(r.what == "thrown on a segment");
	CHECK(r.dtors_before_catch == 2); // thrower's and middle's objects, on the segment
	CHECK(!r.object_on_caller_stack);
	CHECK(r.caller_object_unwound);
	CHECK(r.caught_inside == 1);
	// The throwing crossing used the kept segment and gave it back: no stack was created, the
	// live count is what it was, and the next crossing created nothing either.
	const dynstack_stats_t &a = r.before_throw, &b = r.after_throw, &n = r.after_next;
	CHECK(b.nr_dynamic_stacks_segments - a.nr_dynamic_stacks_segments == 1);
	CHECK(b.nr_dynamic_stacks_created == a.nr_dynamic_stacks_created);
	CHECK(b.nr_dynamic_stacks == a.nr_dynamic_stacks);
	CHECK(n.nr_dynamic_stacks_segments - b.nr_dynamic_stacks_segments == 1);
	CHECK(n.nr_dynamic_stacks_created == b.nr_dynamic_stacks_created);
	CHECK(n.nr_dynamic_stacks == b.nr_dynamic_stacks);
}

struct NestResult {
	std::string what;
	dynstack_stats_t before, after;
};

void nest_body(void *arg)
{
	auto *r = static_cast<NestResult *>(arg);
	r->before = stats();
	try {
		dynstack_call(64 * KiB, nest, const_cast<char *>("three segments down"));
	} catch (const std::exception &e) {
		r->what = e.what();
	}
	r->after = stats();
}

// Thrown three segments down, caught on the coroutine: every object on the way was destroyed,
// and of the three segments at most one is still live (the one the thread keeps).
void test_nested()
{
	NestResult r;
	dynstack_attr_t attr;
	dynstack_coro_t *c = nullptr;

	dtors = 0;
	levels = 0;
	dynstack_attr_init(&attr);
	attr.size = 16 * KiB;
	CHECK(dynstack_coro_create(&c, nest_body, &r, &attr) == 0);
	if (!c)
		return;
	CHECK(dynstack_coro_resume(c) == 0);
	CHECK(dynstack_coro_destroy(c) == 0);
	CHECK(r.what == "three segments down");
	CHECK(levels == 3);
	CHECK(dtors == 3);
	CHECK(r.after.nr_dynamic_stacks_segments - r.before.nr_dynamic_stacks_segments == 3);
	CHECK(r.after.nr_dynamic_stacks <= r.before.nr_dynamic_stacks + 1);
}

// From the main thread, with a need larger than its whole stack.
void test_main_thread()
{
	std::string what;
	dtors = 0;
	dynstack_stats_t before = stats();
	try {
		dynstack_call(dynstack_remaining() + 1024 * KiB, middle,
			      const_cast<char *>("from the main thread"));
	} catch (const std::runtime_error &e) {
		what = e.what();
	}
	dynstack_stats_t after = stats();
	CHECK(what == "from the main thread");
	CHECK(dtors == 2);
	CHECK(after.nr_dynamic_stacks_segments - before.nr_dynamic_stacks_segments == 1);
	CHECK(after.nr_dynamic_stacks <= before.nr_dynamic_stacks + 1);
}

void *thread_main(void *arg)
{
	auto *what = static_cast<std::string *>(arg);
	try {
		dynstack_call(dynstack_remaining() + 64 * KiB, thrower,
			      const_cast<char *>("from another thread"));
	} catch (const std::runtime_error &e) {
		*what = e.what();
	}
	return nullptr;
}

// From another thread; when it exits, its kept segment goes too.
void test_thread()
{
	std::string what;
	pthread_t th;
	dynstack_stats_t before = stats();
	CHECK(pthread_create(&th, nullptr, thread_main, &what) == 0);
	CHECK(pthread_join(th, nullptr) == 0);
	dynstack_stats_t after = stats();
	CHECK(what == "from another thread");
	CHECK(after.nr_dynamic_stacks == before.nr_dynamic_stacks);
}

} // namespace

int main()
{
	test_coroutine();
	test_nested();
	test_main_thread();
	test_thread();
	if (failures) {
		std::fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	std::printf("all checks passed\n");
	return 0;
}
