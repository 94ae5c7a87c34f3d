// Per-node GPU timing of ggml's CUDA backend, for finding where a generation's time goes
// (tools/cuda_profile.py). Off unless the environment variable BONSAI_SD_CUDA_PROFILE names a
// file; then ggml-cuda.cu (patch 0060) runs every graph without CUDA graphs, marks each node it
// computes with an event, and at the end of the graph appends one JSON line to that file:
//
//   {"nodes": N, "gpu_ms": T, "ops": {"MUL_MAT pq2_0": [ms, count], "CPY f32>f16": [ms, count], ...}}
//
// A node's time runs from its mark to the next one, so the nodes ggml fuses into it are counted
// with it, and any time the GPU waits for the host to launch it is counted too.

#ifndef BONSAI_CUDA_OP_PROFILE_H
#define BONSAI_CUDA_OP_PROFILE_H

#include <cuda_runtime.h>

struct ggml_tensor;
struct ggml_cgraph;

bool bonsai_cuda_profile_active();
void bonsai_cuda_profile_node(cudaStream_t stream, const ggml_tensor * node);
void bonsai_cuda_profile_graph_end(cudaStream_t stream, const ggml_cgraph * graph);

#endif  // BONSAI_CUDA_OP_PROFILE_H
