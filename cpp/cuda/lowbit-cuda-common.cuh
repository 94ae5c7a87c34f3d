// Device-side codecs of the low-bit types, shared by the CUDA kernels of this folder.
//
// Every element of every type is (code - 1) * d with a small unsigned code (lowbit-impl.h):
//   Q1_0: code = 2 * bit; Q2_0, PQ2_0: the 2-bit field; PTQ1_0: the base-3 trit.
// These functions read blocks straight from the file layout (2-byte aligned blocks).

#ifndef BONSAI_LOWBIT_CUDA_COMMON_CUH
#define BONSAI_LOWBIT_CUDA_COMMON_CUH

#include "lowbit.h"

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace bonsai_cuda {

// ---- type traits ------------------------------------------------------------------------------

template <int TYPE> struct traits;
template <> struct traits<BONSAI_TYPE_Q1_0>   { static constexpr int qk = QK1_0,    bytes = sizeof(block_q1_0);   };
template <> struct traits<BONSAI_TYPE_Q2_0>   { static constexpr int qk = QK2_0,    bytes = sizeof(block_q2_0);   };
template <> struct traits<BONSAI_TYPE_PQ2_0>  { static constexpr int qk = QKPQ2_0,  bytes = sizeof(block_pq2_0);  };
template <> struct traits<BONSAI_TYPE_PTQ1_0> { static constexpr int qk = QKPTQ1_0, bytes = sizeof(block_ptq1_0); };

// Expands CASE(TYPE) for each of the four types inside a switch on a run-time type id.
#define BONSAI_CUDA_FOR_EACH_TYPE(CASE) \
    CASE(BONSAI_TYPE_Q1_0)              \
    CASE(BONSAI_TYPE_Q2_0)              \
    CASE(BONSAI_TYPE_PQ2_0)             \
    CASE(BONSAI_TYPE_PTQ1_0)

static inline int host_block_elems(int type) {
    switch (type) {
        case BONSAI_TYPE_Q1_0:   return QK1_0;
        case BONSAI_TYPE_Q2_0:   return QK2_0;
        case BONSAI_TYPE_PQ2_0:  return QKPQ2_0;
        case BONSAI_TYPE_PTQ1_0: return QKPTQ1_0;
        default:                 return 0;
    }
}

static inline int host_block_bytes(int type) {
    switch (type) {
        case BONSAI_TYPE_Q1_0:   return sizeof(block_q1_0);
        case BONSAI_TYPE_Q2_0:   return sizeof(block_q2_0);
        case BONSAI_TYPE_PQ2_0:  return sizeof(block_pq2_0);
        case BONSAI_TYPE_PTQ1_0: return sizeof(block_ptq1_0);
        default:                 return 0;
    }
}

// ---- loads from 2-byte aligned addresses --------------------------------------------------------

static __host__ __device__ __forceinline__ uint32_t load_u16(const uint8_t * p) {
    return *(const uint16_t *) p;
}

static __host__ __device__ __forceinline__ uint32_t load_u32_a2(const uint8_t * p) {
    return load_u16(p) | (load_u16(p + 2) << 16);
}

static __host__ __device__ __forceinline__ float load_half(const uint8_t * p) {
    return __half2float(__ushort_as_half((unsigned short) load_u16(p)));
}

// ---- base-3 bytes (TQ1_0's codec, lowbit-impl.h) ----------------------------------------------

// Trit n of each of the four bytes of x, one per byte, given pow3 = 3^n (two bytes per 16-bit
// lane, so the multiplications cannot carry from one byte into the next).
static __host__ __device__ __forceinline__ uint32_t trits_of_bytes_pow(uint32_t x, uint32_t pow3) {
    const uint32_t even = ((((x & 0x00ff00ffu) * pow3) & 0x00ff00ffu) * 3 >> 8) & 0x00030003u;
    const uint32_t odd  = ((((x >> 8) & 0x00ff00ffu) * pow3) & 0x00ff00ffu) * 3 & 0x03000300u;
    return even | odd;
}

static __host__ __device__ __forceinline__ uint32_t trits_of_bytes(uint32_t x, int n) {
    return trits_of_bytes_pow(x, n == 0 ? 1 : n == 1 ? 3 : n == 2 ? 9 : n == 3 ? 27 : 81);
}

// Four 2-bit codes, one in the low bits of each byte, packed into one byte (byte i -> bits 2i).
// The multiplier places byte i's field at bit 18 + 2i; no two partial products overlap.
static __host__ __device__ __forceinline__ uint32_t pack_codes4(uint32_t bytes) {
    return ((bytes * 0x00041041u) >> 18) & 0xffu;
}

// Bit i of the 16-bit value u moved to bit 2i.
static __host__ __device__ __forceinline__ uint32_t spread_bits16(uint32_t u) {
    u = (u | (u << 8)) & 0x00ff00ffu;
    u = (u | (u << 4)) & 0x0f0f0f0fu;
    u = (u | (u << 2)) & 0x33333333u;
    u = (u | (u << 1)) & 0x55555555u;
    return u;
}

// ---- 16 consecutive elements of a block as 2-bit codes ----------------------------------------
// Sub-block j holds elements 16j .. 16j+15 of the block; element 16j+i is code bits 2i..2i+1
// of the result. Returns through d the block's scale.

template <int TYPE> static __host__ __device__ __forceinline__ uint32_t codes16(const uint8_t * block, int j, float & d);

template <> __host__ __device__ __forceinline__ uint32_t codes16<BONSAI_TYPE_Q1_0>(const uint8_t * block, int j, float & d) {
    d = load_half(block);
    return spread_bits16(load_u16(block + 2 + 2 * j)) << 1;  // bit b -> code 2b
}

template <> __host__ __device__ __forceinline__ uint32_t codes16<BONSAI_TYPE_Q2_0>(const uint8_t * block, int j, float & d) {
    d = load_half(block);
    return load_u32_a2(block + 2 + 4 * j);
}

template <> __host__ __device__ __forceinline__ uint32_t codes16<BONSAI_TYPE_PQ2_0>(const uint8_t * block, int j, float & d) {
    d = load_half(block);
    return load_u32_a2(block + 2 + 4 * j);
}

// PTQ1_0 as 2-bit codes in PQ2_0's element order. Elements 16n+m (n < 5, m < 16) are trit n of
// qs[m], so words 0..4 take trit n of the four words q[0..3] of qs[0..15]; words 5..7 take the
// trits of qs[16..23] (g4, g5; element 80+8n+m) and qh (element 120+2n+h).
static __host__ __device__ __forceinline__ uint32_t ptq1_0_word_low(const uint32_t (&q)[4], int n) {
    uint32_t word = 0;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        word |= pack_codes4(trits_of_bytes(q[w], n)) << (8 * w);
    }
    return word;
}

static __host__ __device__ __forceinline__ void ptq1_0_words_high(uint32_t g4, uint32_t g5, uint32_t qh, uint32_t & w5,
                                                                  uint32_t & w6, uint32_t & w7) {
    qh &= 0xffffu;
    w5 = pack_codes4(trits_of_bytes(g4, 0))       | pack_codes4(trits_of_bytes(g5, 0)) << 8 |
         pack_codes4(trits_of_bytes(g4, 1)) << 16 | pack_codes4(trits_of_bytes(g5, 1)) << 24;
    w6 = pack_codes4(trits_of_bytes(g4, 2))       | pack_codes4(trits_of_bytes(g5, 2)) << 8 |
         pack_codes4(trits_of_bytes(g4, 3)) << 16 | pack_codes4(trits_of_bytes(g5, 3)) << 24;
    w7 = pack_codes4(trits_of_bytes(g4, 4))       | pack_codes4(trits_of_bytes(g5, 4)) << 8 |
         pack_codes4(trits_of_bytes(qh, 0) | trits_of_bytes(qh, 1) << 16) << 16 |
         pack_codes4(trits_of_bytes(qh, 2) | trits_of_bytes(qh, 3) << 16) << 24;
}

template <> __host__ __device__ __forceinline__ uint32_t codes16<BONSAI_TYPE_PTQ1_0>(const uint8_t * block, int j, float & d) {
    d = load_half(block + 26);
    if (j < 5) {
        const uint32_t q[4] = {load_u32_a2(block), load_u32_a2(block + 4), load_u32_a2(block + 8), load_u32_a2(block + 12)};
        return ptq1_0_word_low(q, j);
    }
    uint32_t w5, w6, w7;
    ptq1_0_words_high(load_u32_a2(block + 16), load_u32_a2(block + 20), load_u16(block + 24), w5, w6, w7);
    return j == 5 ? w5 : j == 6 ? w6 : w7;
}

}  // namespace bonsai_cuda

#endif  // BONSAI_LOWBIT_CUDA_COMMON_CUH
