/* The standalone driver of the fuzz targets: built with -DDS_FUZZ_STANDALONE, a
 * target's main hands its command line to fuzz_driver_main, which feeds each input
 * to LLVMFuzzerTestOneInput once, so that the corpus runs as a plain test with any
 * compiler. The libFuzzer builds do without it: libFuzzer brings its own main. */
#ifndef DS_FUZZ_DRIVER_H
#define DS_FUZZ_DRIVER_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* As libFuzzer takes them: every file named in argv, or every file of every directory named
 * there. Returns 0 when every input ran, 1 when one could not be read; name (the target's)
 * starts every message. */
int fuzz_driver_main(const char *name, int argc, char **argv);

#endif /* DS_FUZZ_DRIVER_H */
