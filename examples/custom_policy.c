/* A user-defined fault policy. When a coroutine's stack needs one more page,
 * the library asks a policy how far to grow. Here stacks named "worker..."
 * get 4 pages per fault (they are known to go deep), every other stack 1
 * page. The same mix of coroutines runs twice, under the built-in step=1 and
 * under this policy, and the program prints what each group cost. It exits
 * non-zero if the workers did not fault less, or the others not the same. */
#include <dynstack.h>
#include <stdio.h>
#include <string.h>

#define STACK_SIZE (64 * 1024)
#define PER_GROUP 4

/* The policy. It runs inside the SIGSEGV handler, on a small signal stack:
 * no locks, no malloc, no stdio, just arithmetic on what the library passes
 * in. The answer is how many bytes from the top should be committed after
 * this fault; the library keeps it between info->depth (the faulting page)
 * and the end of the stack. */
static size_t grow_workers(const dynstack_fault_info_t *info, void *data)
{
	static const char prefix[] = "worker";
	size_t pages = 4;

	(void)data;
	for (size_t i = 0; i < sizeof(prefix) - 1; i++)
		if (info->name[i] != prefix[i])
			pages = 1;
	return info->depth + (pages - 1) * info->page_size;
}

/* Some work that uses stack: each level of the recursion takes ~0.5 KiB. */
static int depth_sum(int n)
{
	volatile char frame[512];
	memset((char *)frame, n, sizeof(frame));
	return n == 0 ? 0 : frame[0] + depth_sum(n - 1);
}

static void work(void *arg)
{
	int *levels = arg;
	*levels = depth_sum(*levels);
}

struct cost {
	unsigned long long faults;
	size_t pages; /* committed, summed over the group's stacks */
};

/* Run PER_GROUP coroutines named <group>-0.. that recurse to different
 * depths, under `policy` (NULL: the process default). */
static int run_group(const char *group, const char *policy, struct cost *out)
{
	static const int levels[PER_GROUP] = { 12, 24, 36, 48 }; /* ~6 to ~25 KiB */
	dynstack_coro_t *co[PER_GROUP];
	int arg[PER_GROUP];
	char name[PER_GROUP][32];
	dynstack_stats_t before = { .struct_size = sizeof(before) };
	dynstack_stats_t after = { .struct_size = sizeof(after) };
	int rc;

	dynstack_stats_get(&before);
	out->pages = 0;
	for (int i = 0; i < PER_GROUP; i++) {
		dynstack_attr_t attr;
		dynstack_attr_init(&attr);
		snprintf(name[i], sizeof(name[i]), "%s-%d", group, i);
		attr.size = STACK_SIZE;
		attr.name = name[i];
		attr.policy = policy;
		arg[i] = levels[i];
		if ((rc = dynstack_coro_create(&co[i], work, &arg[i], &attr))) {
			fprintf(stderr, "dynstack_coro_create(%s): %s\n", name[i],
				dynstack_strerror(rc));
			return rc;
		}
		dynstack_coro_resume(co[i]); /* runs to the end */
		out->pages += dynstack_committed(dynstack_coro_stack(co[i])) / before.page_size;
	}
	/* The fault counter is process-wide: the difference is this group's. */
	dynstack_stats_get(&after);
	out->faults = after.nr_dynamic_stacks_faults - before.nr_dynamic_stacks_faults;
	for (int i = 0; i < PER_GROUP; i++)
		dynstack_coro_destroy(co[i]);
	return 0;
}

int main(void)
{
	dynstack_policy_t policy = {
		.struct_size = sizeof(policy),
		.name = "workers-4",
		.grow = grow_workers,
	};
	struct cost dw, dot, uw, uot; /* default/user x workers/others */
	char spec[64];
	int rc;

	/* 0. No warm-stack cache here: every stack starts from its initial page,
	 * so the faults below show the growth policy alone. */
	dynstack_config_t cfg;
	dynstack_config_init(&cfg);
	cfg.cache_stacks = 0;
	if ((rc = dynstack_init(&cfg))) {
		fprintf(stderr, "dynstack_init: %s\n", dynstack_strerror(rc));
		return 1;
	}

	/* 1. Register the policy: from now on a spec can name it. */
	if ((rc = dynstack_policy_register(&policy))) {
		fprintf(stderr, "dynstack_policy_register: %s\n", dynstack_strerror(rc));
		return 1;
	}

	/* 2. The built-in step=1, named per stack so that a DYNSTACK_POLICY in
	 * the environment cannot change the comparison. */
	if (run_group("worker", "step=1", &dw) || run_group("other", "step=1", &dot))
		return 1;

	/* 3. The user policy as the process default: stacks created with no
	 * policy of their own (attr.policy == NULL) get it. */
	if ((rc = dynstack_policy_set("workers-4"))) {
		fprintf(stderr, "dynstack_policy_set: %s\n", dynstack_strerror(rc));
		return 1;
	}
	dynstack_policy_get(spec, sizeof(spec));
	if (run_group("worker", NULL, &uw) || run_group("other", NULL, &uot))
		return 1;

	printf("%d coroutines per group, %d KiB stacks, recursing ~6 to ~25 KiB deep\n\n",
	       PER_GROUP, STACK_SIZE / 1024);
	printf("%-28s %-9s %7s %16s\n", "policy", "group", "faults", "committed pages");
	printf("%-28s %-9s %7llu %16zu\n", "step=1 (built-in)", "worker-*", dw.faults, dw.pages);
	printf("%-28s %-9s %7llu %16zu\n", "step=1 (built-in)", "other-*", dot.faults, dot.pages);
	printf("%-28s %-9s %7llu %16zu\n", spec, "worker-*", uw.faults, uw.pages);
	printf("%-28s %-9s %7llu %16zu\n\n", spec, "other-*", uot.faults, uot.pages);
	printf("worker-* stacks: %llu faults instead of %llu, for %lld more committed pages\n",
	       uw.faults, dw.faults, (long long)uw.pages - (long long)dw.pages);
	printf("other-* stacks: %llu faults instead of %llu (unchanged)\n", uot.faults, dot.faults);

	if (!(uw.faults < dw.faults && uot.faults == dot.faults && uw.pages >= dw.pages)) {
		fprintf(stderr,
			"custom_policy: the user policy did not have the expected effect\n");
		return 1;
	}
	return 0;
}
