/* The standalone driver of the fuzz targets (driver.h): one loop over the inputs for all of
 * them, linked into each fuzz_<name>_standalone corpus test. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

static int run_file(const char *name, const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0;

	if (!f) {
		fprintf(stderr, "%s: %s: %s\n", name, path, strerror(errno));
		return -1;
	}
	for (;;) {
		if (len == cap) {
			uint8_t *more = realloc(buf, cap = cap ? 2 * cap : 4096);
			if (!more) {
				free(buf);
				fclose(f);
				return -1;
			}
			buf = more;
		}
		size_t got = fread(buf + len, 1, cap - len, f);
		len += got;
		if (!got)
			break;
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		fprintf(stderr, "%s: %s: read error\n", name, path);
		free(buf);
		return -1;
	}
	LLVMFuzzerTestOneInput(buf, len);
	free(buf);
	return 0;
}

int fuzz_driver_main(const char *name, int argc, char **argv)
{
	unsigned inputs = 0;

	for (int i = 1; i < argc; i++) {
		DIR *d = opendir(argv[i]);
		if (!d) {
			if (run_file(name, argv[i]))
				return 1;
			inputs++;
			continue;
		}
		struct dirent *e;
		while ((e = readdir(d))) {
			char path[4096];
			if (e->d_name[0] == '.')
				continue;
			if (snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name) >=
				    (int)sizeof(path) ||
			    run_file(name, path)) {
				closedir(d);
				return 1;
			}
			inputs++;
		}
		closedir(d);
	}
	printf("%s: %u inputs, no failure\n", name, inputs);
	return 0;
}
