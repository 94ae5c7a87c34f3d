// bonsai-sd low-bit types on Metal: block layouts, per-type decoders, and the functions the
// kernels in lowbit-kernels.metal are made of:
//   bonsai_dequantize_<type>  16 weights into a 4x4 matrix (mul_mm, mul_mv_ext, get_rows, cpy)
//   bonsai_quantize_<type>    one block from floats (cpy f32 -> type)
//   bonsai_mul_mv_lane        one SIMD lane's share of a mat-vec row dot product (mul_mv)
//
// Written in the common subset of the Metal Shading Language and C++: ggml-metal.metal gets it
// through lowbit-kernels.metal, and tests/cpp/test_metal_shim.cpp compiles it as C++ through
// metal-shim.h and checks it against the scalar codec in cpp/lowbit/. To stay in that subset:
// every pointer and reference names its address space, only the built-ins the shim provides
// are used, and there are no program-scope arrays. This file includes nothing.
//
// Every element decodes to a code c and the value (c - 1) * d, as in cpp/lowbit/lowbit-impl.h:
//   Q1_0: c = 2 * bit;   Q2_0, PQ2_0: c = the 2-bit field;   PTQ1_0: c = the base-3 trit.

#ifndef BONSAI_LOWBIT_METAL_H
#define BONSAI_LOWBIT_METAL_H

// ---- blocks: the byte layouts of cpp/lowbit/lowbit.h (DESIGN §4) ---------------------------

#define QK1_0    128
#define QK2_0    64
#define QKPQ2_0  128
#define QKPTQ1_0 128

typedef struct {
    half    d;
    uint8_t qs[QK1_0 / 8];  // element j: bit (j % 8) of qs[j / 8]
} block_q1_0;

typedef struct {
    half    d;
    uint8_t qs[QK2_0 / 4];  // element j: bits 2*(j % 4) of qs[j / 4]
} block_q2_0;

typedef struct {
    half    d;
    uint8_t qs[QKPQ2_0 / 4];  // as Q2_0
} block_pq2_0;

typedef struct {
    uint8_t qs[24];  // trits of elements 0..119
    uint8_t qh[2];   // trits of elements 120..127
    half    d;
} block_ptq1_0;

static_assert(sizeof(block_q1_0)   == 18, "Q1_0 block is 18 bytes");
static_assert(sizeof(block_q2_0)   == 18, "Q2_0 block is 18 bytes");
static_assert(sizeof(block_pq2_0)  == 34, "PQ2_0 block is 34 bytes");
static_assert(sizeof(block_ptq1_0) == 28, "PTQ1_0 block is 28 bytes");

// ---- decoders: codes of elements 16*il .. 16*il + 15 of a block (il < block size / 16) -------

static inline void bonsai_codes16_q1_0(device const block_q1_0 * xb, short il, thread uchar * codes) {
    const ushort bits = (ushort) xb->qs[2*il] | (ushort) (xb->qs[2*il + 1] << 8);
    for (short i = 0; i < 16; i++) {
        codes[i] = (uchar) (((bits >> i) & 1) << 1);
    }
}

// Q2_0 and PQ2_0: 16 elements are the four whole bytes qs[4*il .. 4*il + 3].
static inline void bonsai_codes16_2bit(device const uint8_t * qs, short il, thread uchar * codes) {
    for (short i = 0; i < 16; i++) {
        codes[i] = (uchar) ((qs[4*il + i/4] >> (2*(i%4))) & 3);
    }
}

static inline void bonsai_codes16_q2_0(device const block_q2_0 * xb, short il, thread uchar * codes) {
    bonsai_codes16_2bit(xb->qs, il, codes);
}

static inline void bonsai_codes16_pq2_0(device const block_pq2_0 * xb, short il, thread uchar * codes) {
    bonsai_codes16_2bit(xb->qs, il, codes);
}

// Trit n (0 = most significant) of a byte holding up to five trits stored TQ1_0's way,
// ceil(v * 256 / 243): multiplying by 3^n modulo 256 drops the first n trits, and the top
// trit of what is left is (q * 3) >> 8.
static inline uchar bonsai_trit(uchar q, short n) {
    for (short k = 0; k < n; k++) {
        q = (uchar) (q * 3);
    }
    return (uchar) (((ushort) q * 3) >> 8);
}

// PTQ1_0 placement (DESIGN §4), in 16-element groups:
//   il 0..4: element 16*il + m is trit il of qs[m]                       (m < 16)
//   il 5, 6: element 80 + 8*n + m is trit n of qs[16 + m], n = 2*(il - 5) + i/8
//   il 7:    elements 112..119 are trit 4 of qs[16..23];
//            element 120 + 2*n + h is trit n of qh[h]                     (n < 4, h < 2)
static inline void bonsai_codes16_ptq1_0(device const block_ptq1_0 * xb, short il, thread uchar * codes) {
    if (il < 5) {
        for (short i = 0; i < 16; i++) {
            codes[i] = bonsai_trit(xb->qs[i], il);
        }
    } else if (il < 7) {
        for (short i = 0; i < 16; i++) {
            codes[i] = bonsai_trit(xb->qs[16 + i%8], 2*(il - 5) + i/8);
        }
    } else {
        for (short i = 0; i < 8; i++) {
            codes[i] = bonsai_trit(xb->qs[16 + i], 4);
        }
        for (short i = 0; i < 8; i++) {
            codes[8 + i] = bonsai_trit(xb->qh[i%2], i/2);
        }
    }
}

// ---- dequantize: ggml-metal's callback shape (16 weights per call, il = which 16) -----------

// (c - 1) * d is exact in float (d is a half, c - 1 in -1..2); converting to half4x4 rounds
// only where 2*d overflows half.
template <typename type4x4>
void bonsai_codes_to_4x4(thread const uchar * codes, float d, thread type4x4 & reg) {
    float4x4 values;
    for (short i = 0; i < 16; i++) {
        values[i/4][i%4] = ((float) codes[i] - 1.0f) * d;
    }
    reg = (type4x4) values;
}

template <typename type4x4>
void bonsai_dequantize_q1_0(device const block_q1_0 * xb, short il, thread type4x4 & reg) {
    uchar codes[16];
    bonsai_codes16_q1_0(xb, il, codes);
    bonsai_codes_to_4x4(codes, xb->d, reg);
}

template <typename type4x4>
void bonsai_dequantize_q2_0(device const block_q2_0 * xb, short il, thread type4x4 & reg) {
    uchar codes[16];
    bonsai_codes16_q2_0(xb, il, codes);
    bonsai_codes_to_4x4(codes, xb->d, reg);
}

template <typename type4x4>
void bonsai_dequantize_pq2_0(device const block_pq2_0 * xb, short il, thread type4x4 & reg) {
    uchar codes[16];
    bonsai_codes16_pq2_0(xb, il, codes);
    bonsai_codes_to_4x4(codes, xb->d, reg);
}

template <typename type4x4>
void bonsai_dequantize_ptq1_0(device const block_ptq1_0 * xb, short il, thread type4x4 & reg) {
    uchar codes[16];
    bonsai_codes16_ptq1_0(xb, il, codes);
    bonsai_codes_to_4x4(codes, xb->d, reg);
}

// ---- mat-vec ----------------------------------------------------------------------------

// Sum over elements 32*part .. 32*part + 31 of one block of weight * y, with those 32
// activations in yl and their sum in sumy: d * (sum c*y - sum y).
template <typename block_t, void (*codes16)(device const block_t *, short, thread uchar *)>
float bonsai_dot32(device const block_t * xb, short part, thread const float * yl, float sumy) {
    uchar codes[32];
    codes16(xb, 2*part, codes);
    codes16(xb, 2*part + 1, codes + 16);
    float acc = 0.0f;
    for (short i = 0; i < 32; i++) {
        acc += (float) codes[i] * yl[i];
    }
    return (float) xb->d * (acc - sumy);
}

// One SIMD lane's share of the dot products of nrows (<= NR0) weight rows, the first at x and
// the next ones nb01 bytes apart, with the ne00 activations at y. The row's 32-element chunks
// are dealt to the 32 lanes round robin: chunk c goes to lane c % 32 and is part c % (QK/32)
// of block c / (QK/32). sumf[r] accumulates the lane's partial sum of row r; the kernel adds
// the lanes up. Rows from nrows to NR0 are neither read nor touched.
template <typename block_t, short QK, short NR0, void (*codes16)(device const block_t *, short, thread uchar *)>
void bonsai_mul_mv_lane(device const char * x, uint64_t nb01, short nrows,
                        device const float * y, int ne00, ushort lane, thread float * sumf) {
    const short parts   = QK/32;
    const int   nchunks = ne00/32;

    float yl[32];
    for (int c = lane; c < nchunks; c += 32) {
        float sumy = 0.0f;
        for (short i = 0; i < 32; i++) {
            yl[i] = y[32*c + i];
            sumy += yl[i];
        }
        for (short r = 0; r < NR0; r++) {
            if (r < nrows) {
                device const block_t * xb = (device const block_t *) (x + r*nb01) + c/parts;
                sumf[r] += bonsai_dot32<block_t, codes16>(xb, c%parts, yl, sumy);
            }
        }
    }
}

// ---- quantize: cpy f32 -> type, bit for bit the reference quantizers of lowbit-codec.c ------
// Safe math keeps the IEEE operations and their order (sum in element order, one reciprocal,
// round halves away from zero as lroundf), which the reference's results depend on.

void bonsai_quantize_q1_0(device const float * src, device block_q1_0 & dst) {
#if defined(__METAL_VERSION__)
#pragma METAL fp math_mode(safe)
#endif
    float sum_abs = 0.0f;
    for (short j = 0; j < QK1_0; j++) {
        sum_abs += fabs(src[j]);
    }
    dst.d = sum_abs / QK1_0;  // mean |x|, rounded to half
    for (short k = 0; k < QK1_0/8; k++) {
        uchar byte = 0;
        for (short i = 0; i < 8; i++) {
            if (src[8*k + i] >= 0.0f) {
                byte |= (uchar) (1 << i);
            }
        }
        dst.qs[k] = byte;
    }
}

// max |x| over n elements, and the ternary code of each: clamp(round(x / max) + 1, 0, max_code).
static inline float bonsai_ternary_codes(device const float * src, short n, short max_code, thread uchar * codes) {
#if defined(__METAL_VERSION__)
#pragma METAL fp math_mode(safe)
#endif
    float amax = 0.0f;
    for (short j = 0; j < n; j++) {
        amax = fmax(amax, fabs(src[j]));
    }
    const float inverse_d = amax != 0.0f ? 1.0f/amax : 0.0f;
    for (short j = 0; j < n; j++) {
        const int code = (int) round(src[j]*inverse_d) + 1;
        codes[j] = (uchar) (code < 0 ? 0 : code > max_code ? max_code : code);
    }
    return amax;
}

static inline void bonsai_pack_2bit(thread const uchar * codes, short n, device uint8_t * qs) {
    for (short k = 0; k < n/4; k++) {
        qs[k] = (uint8_t) (codes[4*k] | (codes[4*k + 1] << 2) | (codes[4*k + 2] << 4) | (codes[4*k + 3] << 6));
    }
}

void bonsai_quantize_q2_0(device const float * src, device block_q2_0 & dst) {
    uchar codes[QK2_0];
    dst.d = bonsai_ternary_codes(src, QK2_0, 3, codes);
    bonsai_pack_2bit(codes, QK2_0, dst.qs);
}

void bonsai_quantize_pq2_0(device const float * src, device block_pq2_0 & dst) {
    uchar codes[QKPQ2_0];
    dst.d = bonsai_ternary_codes(src, QKPQ2_0, 3, codes);
    bonsai_pack_2bit(codes, QKPQ2_0, dst.qs);
}

// count (<= 5) trits, trits[first + n*stride] for n < count, most significant first, as
// ceil(v * 256 / 243); missing low trits are zero.
static inline uint8_t bonsai_pack_trits(thread const uchar * trits, short first, short stride, short count) {
    int value = 0;
    for (short n = 0; n < 5; n++) {
        value = value*3 + (n < count ? trits[first + n*stride] : 0);
    }
    return (uint8_t) ((value*256 + 242) / 243);
}

void bonsai_quantize_ptq1_0(device const float * src, device block_ptq1_0 & dst) {
    uchar trits[QKPTQ1_0];
    dst.d = bonsai_ternary_codes(src, QKPTQ1_0, 2, trits);
    for (short m = 0; m < 16; m++) {
        dst.qs[m] = bonsai_pack_trits(trits, m, 16, 5);        // elements m, 16 + m, .., 64 + m
    }
    for (short m = 0; m < 8; m++) {
        dst.qs[16 + m] = bonsai_pack_trits(trits, 80 + m, 8, 5);  // elements 80 + m, .., 112 + m
    }
    for (short h = 0; h < 2; h++) {
        dst.qh[h] = bonsai_pack_trits(trits, 120 + h, 2, 4);    // elements 120 + h, .., 126 + h
    }
}

#endif  // BONSAI_LOWBIT_METAL_H
