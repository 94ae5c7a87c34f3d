// Host memory for sd.cpp's per-image tensors (latents, text embeddings, the decoded image).
//
// Every sampling step and stage allocates fresh std::vectors of 2 MB (a 1024x1024 FLUX.2 latent)
// to 16 MB (the 7680 x 512 text embeddings). glibc serves blocks of that size with mmap and gives
// them back on free, so each one is zero-filled page by page again: ~1.1 ms per 2 MB on the
// 2-core development machine (a sandboxed kernel, where page faults are costly, as on the GPU
// machine), ~7 ms per decoded 1024x1024 image. Raising glibc's mmap threshold to its maximum
// (32 MiB on 64-bit) and keeping up to 256 MiB of freed heap lets those blocks be reused
// without faults.
#ifndef BONSAI_SDCPP_HOST_HEAP_H
#define BONSAI_SDCPP_HOST_HEAP_H

namespace bonsai {

// Applies the settings once per process (glibc only; a no-op elsewhere or with
// BONSAI_SD_MALLOC_DEFAULTS=1, which keeps glibc's defaults). Returns whether they are in effect.
bool keep_freed_host_memory();

}  // namespace bonsai

#endif  // BONSAI_SDCPP_HOST_HEAP_H
