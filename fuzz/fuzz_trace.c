/* Fuzz target for the trace reader (src/trace-read.c): any input must end in
 * a clean end or -EPROTO, never a crash or a read outside the input. With
 * libFuzzer:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iinclude -Ibuild \
 *         fuzz/fuzz_trace.c src/trace-read.c -o fuzz_trace
 *   ./fuzz_trace -max_total_time=60 fuzz/corpus/trace
 * Without it (-DDS_FUZZ_STANDALONE, with driver.c), a program that runs every
 * file (or every file of every directory) named on the command line once, so
 * that the corpus runs as a plain test:
 *   cc -DDS_FUZZ_STANDALONE -Isrc -Iinclude fuzz/fuzz_trace.c fuzz/driver.c src/trace-read.c
 *   ./a.out fuzz/corpus/trace
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "driver.h"
#include "trace.h"

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ds_trace_reader *r;
	const struct ds_ev_head *h;
	char err[256];
	int rc;

	if (ds_trace_open_mem(data, size, &r, err, sizeof(err)))
		return 0;
	/* Touch every byte of every record the reader vouches for, so that the
	 * sanitizer sees a record that claims more than it has. */
	while ((rc = ds_trace_next(r, &h, err, sizeof(err))) == 1) {
		for (size_t i = 0; i < h->len; i++)
			sink ^= ((const uint8_t *)h)[i];
	}
	if (rc != 0 && rc != -EPROTO)
		abort();
	if (ds_trace_next(r, &h, err, sizeof(err)) != rc)
		abort(); /* the end, or the error, is where the reader stays */
	ds_trace_close(r);
	return 0;
}

#ifdef DS_FUZZ_STANDALONE
int main(int argc, char **argv)
{
	return fuzz_driver_main("fuzz_trace", argc, argv);
}
#endif
