// The start of the GPU check programs' main(): their command line, [--no-perf], and the device
// line they print first.
#ifndef BONSAI_TESTS_CHECK_MAIN_H
#define BONSAI_TESTS_CHECK_MAIN_H

#include "cuda-ok.h"

#include <cstdio>
#include <cstring>

// Sets *perf (true unless --no-perf); false, after printing the usage, on any other argument.
static bool parse_check_args(int argc, char ** argv, bool * perf) {
    *perf = true;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--no-perf")) {
            *perf = false;
        } else {
            fprintf(stderr, "usage: %s [--no-perf]\n", argv[0]);
            return false;
        }
    }
    return true;
}

static cudaDeviceProp print_check_device() {
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    return prop;
}

#endif  // BONSAI_TESTS_CHECK_MAIN_H
