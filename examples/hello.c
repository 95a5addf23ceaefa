/* The smallest libdynstack program: one coroutine that goes deep, yields,
 * and shows how many bytes of its 64 KiB reservation were committed. */
#include <dynstack.h>
#include <stdio.h>
#include <string.h>

static int depth_sum(int n)
{
	volatile char frame[512]; /* each level uses a little stack */
	memset((char *)frame, n, sizeof(frame));
	return n == 0 ? 0 : frame[0] + depth_sum(n - 1);
}

static void work(void *arg)
{
	int *result = arg;
	*result = depth_sum(40); /* ~24 KiB deep: faults in a few pages */
	dynstack_coro_yield();
	*result += 1;
}

int main(void)
{
	dynstack_attr_t attr;
	dynstack_coro_t *co;
	int result = 0;
	int rc;

	dynstack_attr_init(&attr);
	attr.size = 64 * 1024;
	attr.name = "hello";
	if ((rc = dynstack_coro_create(&co, work, &result, &attr)) < 0) {
		fprintf(stderr, "dynstack_coro_create: %s\n", dynstack_strerror(rc));
		return 1;
	}
	dynstack_coro_resume(co); /* runs until the yield */
	dynstack_t *st = dynstack_coro_stack(co);
	size_t grown = dynstack_committed(st);
	printf("after the deep call: %zu of %zu bytes committed (backend %s)\n", grown,
	       dynstack_size(st), dynstack_backend_name());
	dynstack_coro_resume(co); /* runs to the end */
	int dead = dynstack_coro_status(co) == DYNSTACK_CORO_DEAD;
	printf("result %d, status %s\n", result, dead ? "dead" : "alive");
	dynstack_coro_destroy(co);
	/* 1 + 2 + ... + 40 from the frames, + 1 after the yield */
	if (result != 821 || !dead || grown <= 4096) {
		fprintf(stderr, "hello: unexpected result\n");
		return 1;
	}
	fflush(stdout);
	dynstack_stats_print(1);
	return 0;
}
