/* A Memcheck bug, shown without libdynstack: why test_stress runs without
 * its timer storm under Valgrind (docs/tools.md, "Memcheck and signals on
 * an alternate stack").
 *
 * Memcheck follows the stack pointer to tell live stack from dead, and keeps
 * one "current stack" for the whole process: a stack pointer update it cannot
 * size at translation time (sub %reg,%rsp, or an immediate it has no fast
 * path for) that lands in another registered stack is taken for a stack
 * switch, and marks nothing. A thread that gets Valgrind's lock back
 * resynchronises that current stack from its own stack pointer; when that
 * pointer is on an alternate signal stack, which is not registered, nothing
 * changes and the previous thread's stack stays current. The handler then
 * returns by sigreturn, which moves the stack pointer without that check, and
 * the thread's next such update on its own stack is taken for a switch: the
 * frame it makes stays unaddressable, and correct code writing there is
 * reported as "Invalid write ... in frame #0".
 *
 * In the stress test the hand-off comes from Valgrind's time slices (1 run in
 * 12, a 10 kHz storm on 4 threads). Here it is forced: thread B spins on its
 * own stack with an alternate stack installed; the main thread signals it, and
 * the handler blocks in read() until the main thread, on its own stack, writes.
 * Back from the handler, B makes a frame with `sub %rdi,%rsp` and asks
 * Memcheck whether the frame is addressable (VALGRIND_GET_VBITS: a question,
 * not an error report). Before the signal, the same frame is checked as a
 * control.
 *
 * Exit status: 0 when Memcheck has the bug (the storm stays off under it);
 * 1 when the frame is addressable, that is, this Valgrind no longer has the
 * bug and tests/test_stress.c can run the storm under it again
 * (storm_default); 77 (skip) outside Memcheck or off x86-64. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if DS_HAVE_VALGRIND_H && defined(__x86_64__)
#include <valgrind/memcheck.h>
#include <valgrind/valgrind.h>

#define FRAME 2048	     /* the frame made by the variable adjustment */
#define DEAD (16u << 10)     /* left below the stack pointer, dead, first */
#define ALT_SIZE (64u << 10) /* the alternate signal stack */

/* probe_frame(n): lowers %rsp by n with one sub %rdi,%rsp, the adjustment
 * under test, and hands that frame to frame_state(frame, n - 128), whose
 * result it returns. Memcheck keeps the 128 bytes below the stack pointer
 * (the red zone) live, so the adjustment makes [frame - 128, frame + n - 128)
 * addressable; the call itself is made 256 bytes lower, so that its return
 * address lands below that range, in memory the second adjustment made
 * live, whatever happened to the first. The store between the two keeps
 * VEX from folding them into one update. n is a multiple of 16. */
int probe_frame(size_t n);
int frame_state(unsigned char *frame, size_t n);
__asm__(".text\n"
	".globl probe_frame\n"
	".type probe_frame, @function\n"
	"probe_frame:\n"
	"	push %rbp\n"
	"	mov %rsp, %rbp\n"
	"	sub %rdi, %rsp\n"
	"	mov %rsp, probe_sp(%rip)\n"
	"	lea -128(%rdi), %rsi\n"
	"	mov %rsp, %rdi\n"
	"	sub $256, %rsp\n"
	"	call frame_state\n"
	"	leave\n"
	"	ret\n"
	".size probe_frame, .-probe_frame\n");

unsigned char *probe_sp; /* written by probe_frame */
static unsigned char vbits[FRAME];

/* 1: addressable; 3: some byte is not (VALGRIND_GET_VBITS's codes). */
int frame_state(unsigned char *frame, size_t n)
{
	return (int)VALGRIND_GET_VBITS(frame, vbits, n);
}

static int to_main[2], to_handler[2];
static atomic_int spinning, handled;
static int control, after_handler;

/* Leave DEAD bytes below the caller's stack pointer dead, as returning from
 * any deeper call does. */
__attribute__((noinline)) static void go_deep(void)
{
	volatile unsigned char frame[DEAD];
	memset((unsigned char *)frame, 1, sizeof(frame));
}

static void on_signal(int sig)
{
	char c = (char)sig;
	if (write(to_main[1], &c, 1) != 1 || read(to_handler[0], &c, 1) != 1)
		abort();
	atomic_store(&handled, 1);
}

static void *thread_b(void *arg)
{
	(void)arg;
	stack_t ss = { .ss_size = ALT_SIZE };
	ss.ss_sp = mmap(NULL, ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ss.ss_sp == MAP_FAILED || sigaltstack(&ss, NULL))
		abort();
	go_deep();
	control = probe_frame(FRAME);
	go_deep();
	atomic_store(&spinning, 1);
	while (!atomic_load_explicit(&handled, memory_order_relaxed))
		;
	after_handler = probe_frame(FRAME);
	ss.ss_flags = SS_DISABLE;
	if (sigaltstack(&ss, NULL) || munmap(ss.ss_sp, ALT_SIZE))
		abort();
	return NULL;
}

int main(void)
{
	if (!RUNNING_ON_VALGRIND || VALGRIND_GET_VBITS(vbits, vbits, 1) == 0) {
		printf("skipped: not under Valgrind's Memcheck\n");
		return 77;
	}
	if (pipe(to_main) || pipe(to_handler))
		return 2;
	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_ONSTACK };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR1, &sa, NULL))
		return 2;
	pthread_t b;
	if (pthread_create(&b, NULL, thread_b, NULL))
		return 2;
	while (!atomic_load(&spinning)) {
		struct timespec ms = { 0, 1000 * 1000 };
		nanosleep(&ms, NULL);
	}
	char c = 0;
	/* The signal; the handler says it runs; this thread, on its own stack,
	 * then lets it finish: B gets the lock back on its alternate stack. */
	if (pthread_kill(b, SIGUSR1) || read(to_main[0], &c, 1) != 1 ||
	    write(to_handler[1], &c, 1) != 1 || pthread_join(b, NULL))
		return 2;

	printf("control frame, no signal: %s\n", control == 1 ? "addressable" : "NOT addressable");
	printf("frame after the handler: %s\n",
	       after_handler == 1 ? "addressable" : "NOT addressable");
	if (control != 1) {
		printf("the probe is broken: a frame made with no signal around is not addressable\n");
		return 2;
	}
	if (after_handler == 1) {
		printf("this Valgrind no longer loses a thread's stack after a handler on an "
		       "alternate stack: run test_stress's timer storm under it again "
		       "(storm_default in tests/test_stress.c) and retire this check\n");
		return 1;
	}
	printf("Memcheck has the bug: test_stress keeps its timer storm off under it\n");
	return 0;
}
#else
int main(void)
{
	printf("skipped: needs valgrind/memcheck.h and x86-64\n");
	return 77;
}
#endif
