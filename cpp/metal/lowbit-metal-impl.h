// bonsai-sd low-bit types on Metal: mat-vec launch parameters shared by the kernels
// (lowbit-kernels.metal) and the host code that launches them (ggml-metal-device.cpp, patch
// 0007). Plain preprocessor definitions, valid in C, C++ and Metal.
//
// N_R0: weight rows per simdgroup; N_SG: simdgroups per threadgroup (ggml-metal-impl.h's
// meaning). Not tuned on Apple hardware yet.

#ifndef BONSAI_LOWBIT_METAL_IMPL_H
#define BONSAI_LOWBIT_METAL_IMPL_H

#define BONSAI_N_R0_Q1_0   4
#define BONSAI_N_SG_Q1_0   2

#define BONSAI_N_R0_Q2_0   4
#define BONSAI_N_SG_Q2_0   2

#define BONSAI_N_R0_PQ2_0  4
#define BONSAI_N_SG_PQ2_0  2

#define BONSAI_N_R0_PTQ1_0 4
#define BONSAI_N_SG_PTQ1_0 2

#endif  // BONSAI_LOWBIT_METAL_IMPL_H
