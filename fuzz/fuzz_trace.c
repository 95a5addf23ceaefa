/* Fuzz target for the trace reader (src/trace-read.c): any input must end in
 * a clean end or -EPROTO, never a crash or a read outside the input. With
 * libFuzzer:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iinclude -Ibuild \
 *         fuzz/fuzz_trace.c src/trace-read.c -o fuzz_trace
 *   ./fuzz_trace -max_total_time=60 fuzz/corpus/trace
 * Without it (-DDS_FUZZ_STANDALONE), a driver that runs every file named on
 * the command line once, so that the corpus runs as a plain test:
 *   cc -DDS_FUZZ_STANDALONE -Isrc -Iinclude fuzz/fuzz_trace.c src/trace-read.c
 *   ./a.out fuzz/corpus/trace/FILE...
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	for (int i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (!f) {
			perror(argv[i]);
			return 1;
		}
		uint8_t *buf = NULL;
		size_t len = 0, cap = 0, n;
		do {
			if (len == cap) {
				cap = cap ? cap * 2 : 4096;
				uint8_t *bigger = realloc(buf, cap);
				if (!bigger) {
					fclose(f);
					free(buf);
					return 1;
				}
				buf = bigger;
			}
			n = fread(buf + len, 1, cap - len, f);
			len += n;
		} while (n);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, len);
		free(buf);
		printf("%s: %zu bytes, ok\n", argv[i], len);
	}
	return 0;
}
#endif
