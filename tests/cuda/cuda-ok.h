// CUDA_OK(call): the GPU check programs' guard on a CUDA runtime call; on an error it prints the
// call and where it stood, and exits with 2 (the checks' "could not run" status, not a failure).
#ifndef BONSAI_TESTS_CUDA_OK_H
#define BONSAI_TESTS_CUDA_OK_H

#include <cstdio>
#include <cstdlib>

#include <cuda_runtime.h>

#define CUDA_OK(call)                                                                                             \
    do {                                                                                                          \
        const cudaError_t err_ = (call);                                                                          \
        if (err_ != cudaSuccess) {                                                                                \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(err_), __FILE__, __LINE__, #call); \
            exit(2);                                                                                              \
        }                                                                                                         \
    } while (0)

#endif  // BONSAI_TESTS_CUDA_OK_H
