// bonsai-sd low-bit types (Q1_0, Q2_0, PQ2_0, PTQ1_0): the Metal kernels.
//
// ggml-metal.metal includes this file at its end (patch 0007; the embedded-library build
// inlines it and the two headers below the way it inlines ggml-metal-impl.h), so ggml's kernel
// templates and function constants are in scope here:
//   - mul_mv and mul_mv_id: our implementation, bonsai_mul_mv_f32_impl, on top of
//     bonsai_mul_mv_lane (lowbit-metal.h);
//   - mul_mv_ext, mul_mm, mul_mm_id (simdgroup and, where the device has it, tensor-API path),
//     get_rows and cpy: ggml's templates, instantiated with our dequantize / quantize functions.
// Kernel names follow ggml's scheme (kernel_<op>_<type name>...), which is how
// ggml-metal-device.cpp finds them. Only f32 activations: supports_op claims nothing else.

#include "lowbit-metal-impl.h"
#include "lowbit-metal.h"

// Rows of one mat-vec: simdgroup sgitg of threadgroup tgpig.x owns the NR0 weight rows from
// r0 (the launch in ggml-metal-ops.cpp covers ne01 with NR0*NSG rows per threadgroup), its 32
// lanes split each row's blocks (bonsai_mul_mv_lane), and simd_sum adds the lanes up.
template <typename block_t, short QK, short NR0, void (*codes16)(device const block_t *, short, thread uchar *), typename args_t>
void bonsai_mul_mv_f32_impl(
        args_t args,
        device const char * src0,
        device const char * src1,
        device       char * dst,
        threadgroup  char * shmem,
        uint3  tgpig,
        ushort tiisg,
        ushort sgitg) {
    const short NSG = FC_mul_mv_nsg;

    const int r0 = (tgpig.x*NSG + sgitg)*NR0;
    const int r1 = tgpig.y;
    const int im = tgpig.z;

    const uint i12 = im%args.ne12;
    const uint i13 = im/args.ne12;

    const uint64_t offset0 = (uint64_t) r0*args.nb01 + (i12/args.r2)*args.nb02 + (i13/args.r3)*args.nb03;
    const uint64_t offset1 = (uint64_t) r1*args.nb11 + i12*args.nb12 + i13*args.nb13;

    // rows past ne01 (the last simdgroups of the grid) are not read
    const short nrows = r0 < args.ne01 ? (short) min((int) NR0, args.ne01 - r0) : 0;

    float sumf[NR0] = { 0.f };
    bonsai_mul_mv_lane<block_t, QK, NR0, codes16>(src0 + offset0, args.nb01, nrows,
            (device const float *) (src1 + offset1), args.ne00, tiisg, sumf);

    device float * dst_f32 = (device float *) dst + (uint64_t) im*args.ne0*args.ne1 + (uint64_t) r1*args.ne0;

    for (short row = 0; row < NR0; ++row) {
        const float tot = simd_sum(sumf[row]);
        if (tiisg == 0 && row < nrows) {
            dst_f32[r0 + row] = tot;
        }
    }
}

template <typename block_t, short QK, short NR0, void (*codes16)(device const block_t *, short, thread uchar *)>
kernel void kernel_bonsai_mul_mv_f32(
        constant ggml_metal_kargs_mul_mv & args,
        device const char * src0,
        device const char * src1,
        device       char * dst,
        threadgroup  char * shmem [[threadgroup(0)]],
        uint3  tgpig[[threadgroup_position_in_grid]],
        ushort tiisg[[thread_index_in_simdgroup]],
        ushort sgitg[[simdgroup_index_in_threadgroup]]) {
    bonsai_mul_mv_f32_impl<block_t, QK, NR0, codes16, constant ggml_metal_kargs_mul_mv &>(args, src0, src1, dst, shmem, tgpig, tiisg, sgitg);
}

typedef decltype(kernel_bonsai_mul_mv_f32<block_q1_0, QK1_0, BONSAI_N_R0_Q1_0, bonsai_codes16_q1_0>) bonsai_mul_mv_t;

// ---- mul_mv, mul_mv_id ------------------------------------------------------------------

template [[host_name("kernel_mul_mv_q1_0_f32")]]   kernel bonsai_mul_mv_t kernel_bonsai_mul_mv_f32<block_q1_0,   QK1_0,    BONSAI_N_R0_Q1_0,   bonsai_codes16_q1_0>;
template [[host_name("kernel_mul_mv_q2_0_f32")]]   kernel bonsai_mul_mv_t kernel_bonsai_mul_mv_f32<block_q2_0,   QK2_0,    BONSAI_N_R0_Q2_0,   bonsai_codes16_q2_0>;
template [[host_name("kernel_mul_mv_pq2_0_f32")]]  kernel bonsai_mul_mv_t kernel_bonsai_mul_mv_f32<block_pq2_0,  QKPQ2_0,  BONSAI_N_R0_PQ2_0,  bonsai_codes16_pq2_0>;
template [[host_name("kernel_mul_mv_ptq1_0_f32")]] kernel bonsai_mul_mv_t kernel_bonsai_mul_mv_f32<block_ptq1_0, QKPTQ1_0, BONSAI_N_R0_PTQ1_0, bonsai_codes16_ptq1_0>;

template [[host_name("kernel_mul_mv_id_q1_0_f32")]]   kernel kernel_mul_mv_id_t kernel_mul_mv_id<mmv_fn<bonsai_mul_mv_f32_impl<block_q1_0,   QK1_0,    BONSAI_N_R0_Q1_0,   bonsai_codes16_q1_0>>>;
template [[host_name("kernel_mul_mv_id_q2_0_f32")]]   kernel kernel_mul_mv_id_t kernel_mul_mv_id<mmv_fn<bonsai_mul_mv_f32_impl<block_q2_0,   QK2_0,    BONSAI_N_R0_Q2_0,   bonsai_codes16_q2_0>>>;
template [[host_name("kernel_mul_mv_id_pq2_0_f32")]]  kernel kernel_mul_mv_id_t kernel_mul_mv_id<mmv_fn<bonsai_mul_mv_f32_impl<block_pq2_0,  QKPQ2_0,  BONSAI_N_R0_PQ2_0,  bonsai_codes16_pq2_0>>>;
template [[host_name("kernel_mul_mv_id_ptq1_0_f32")]] kernel kernel_mul_mv_id_t kernel_mul_mv_id<mmv_fn<bonsai_mul_mv_f32_impl<block_ptq1_0, QKPTQ1_0, BONSAI_N_R0_PTQ1_0, bonsai_codes16_ptq1_0>>>;

// ---- mul_mv_ext: 2..8 activation columns, 16 weights per dequantize call ------------------

template [[host_name("kernel_mul_mv_ext_q1_0_f32_r1_2")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<2, block_q1_0,   QK1_0,    bonsai_dequantize_q1_0>;
template [[host_name("kernel_mul_mv_ext_q1_0_f32_r1_3")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<3, block_q1_0,   QK1_0,    bonsai_dequantize_q1_0>;
template [[host_name("kernel_mul_mv_ext_q1_0_f32_r1_4")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<4, block_q1_0,   QK1_0,    bonsai_dequantize_q1_0>;
template [[host_name("kernel_mul_mv_ext_q1_0_f32_r1_5")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<5, block_q1_0,   QK1_0,    bonsai_dequantize_q1_0>;

template [[host_name("kernel_mul_mv_ext_q2_0_f32_r1_2")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<2, block_q2_0,   QK2_0,    bonsai_dequantize_q2_0>;
template [[host_name("kernel_mul_mv_ext_q2_0_f32_r1_3")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<3, block_q2_0,   QK2_0,    bonsai_dequantize_q2_0>;
template [[host_name("kernel_mul_mv_ext_q2_0_f32_r1_4")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<4, block_q2_0,   QK2_0,    bonsai_dequantize_q2_0>;
template [[host_name("kernel_mul_mv_ext_q2_0_f32_r1_5")]]   kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<5, block_q2_0,   QK2_0,    bonsai_dequantize_q2_0>;

template [[host_name("kernel_mul_mv_ext_pq2_0_f32_r1_2")]]  kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<2, block_pq2_0,  QKPQ2_0,  bonsai_dequantize_pq2_0>;
template [[host_name("kernel_mul_mv_ext_pq2_0_f32_r1_3")]]  kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<3, block_pq2_0,  QKPQ2_0,  bonsai_dequantize_pq2_0>;
template [[host_name("kernel_mul_mv_ext_pq2_0_f32_r1_4")]]  kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<4, block_pq2_0,  QKPQ2_0,  bonsai_dequantize_pq2_0>;
template [[host_name("kernel_mul_mv_ext_pq2_0_f32_r1_5")]]  kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<5, block_pq2_0,  QKPQ2_0,  bonsai_dequantize_pq2_0>;

template [[host_name("kernel_mul_mv_ext_ptq1_0_f32_r1_2")]] kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<2, block_ptq1_0, QKPTQ1_0, bonsai_dequantize_ptq1_0>;
template [[host_name("kernel_mul_mv_ext_ptq1_0_f32_r1_3")]] kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<3, block_ptq1_0, QKPTQ1_0, bonsai_dequantize_ptq1_0>;
template [[host_name("kernel_mul_mv_ext_ptq1_0_f32_r1_4")]] kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<4, block_ptq1_0, QKPTQ1_0, bonsai_dequantize_ptq1_0>;
template [[host_name("kernel_mul_mv_ext_ptq1_0_f32_r1_5")]] kernel mul_mv_ext_q4x4_f32_t kernel_mul_mv_ext_q4x4_f32_disp<5, block_ptq1_0, QKPTQ1_0, bonsai_dequantize_ptq1_0>;

// ---- mul_mm, mul_mm_id: weights dequantized to half tiles (nl = 16-weight groups per block) --

template [[host_name("kernel_mul_mm_q1_0_f32")]]   kernel mul_mm_t kernel_mul_mm<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_q1_0,   QK1_0/16,    bonsai_dequantize_q1_0,   float, float4x4, float, float2x4>;
template [[host_name("kernel_mul_mm_q2_0_f32")]]   kernel mul_mm_t kernel_mul_mm<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_q2_0,   QK2_0/16,    bonsai_dequantize_q2_0,   float, float4x4, float, float2x4>;
template [[host_name("kernel_mul_mm_pq2_0_f32")]]  kernel mul_mm_t kernel_mul_mm<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_pq2_0,  QKPQ2_0/16,  bonsai_dequantize_pq2_0,  float, float4x4, float, float2x4>;
template [[host_name("kernel_mul_mm_ptq1_0_f32")]] kernel mul_mm_t kernel_mul_mm<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_ptq1_0, QKPTQ1_0/16, bonsai_dequantize_ptq1_0, float, float4x4, float, float2x4>;

template [[host_name("kernel_mul_mm_id_q1_0_f32")]]   kernel mul_mm_id kernel_mul_mm_id<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_q1_0,   QK1_0/16,    bonsai_dequantize_q1_0,   float, float4x4, float, float2x4>;
template [[host_name("kernel_mul_mm_id_q2_0_f32")]]   kernel mul_mm_id kernel_mul_mm_id<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_q2_0,   QK2_0/16,    bonsai_dequantize_q2_0,   float, float4x4, float, float2x4>;
template [[host_name("kernel_mul_mm_id_pq2_0_f32")]]  kernel mul_mm_id kernel_mul_mm_id<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_pq2_0,  QKPQ2_0/16,  bonsai_dequantize_pq2_0,  float, float4x4, float, float2x4>;
template [[host_name("kernel_mul_mm_id_ptq1_0_f32")]] kernel mul_mm_id kernel_mul_mm_id<half, half4x4, simdgroup_half8x8, half, half2x4, simdgroup_half8x8, block_ptq1_0, QKPTQ1_0/16, bonsai_dequantize_ptq1_0, float, float4x4, float, float2x4>;

// ---- get_rows -------------------------------------------------------------------------------

template [[host_name("kernel_get_rows_q1_0")]]   kernel get_rows_q_t kernel_get_rows_q<block_q1_0,   QK1_0/16,    bonsai_dequantize_q1_0>;
template [[host_name("kernel_get_rows_q2_0")]]   kernel get_rows_q_t kernel_get_rows_q<block_q2_0,   QK2_0/16,    bonsai_dequantize_q2_0>;
template [[host_name("kernel_get_rows_pq2_0")]]  kernel get_rows_q_t kernel_get_rows_q<block_pq2_0,  QKPQ2_0/16,  bonsai_dequantize_pq2_0>;
template [[host_name("kernel_get_rows_ptq1_0")]] kernel get_rows_q_t kernel_get_rows_q<block_ptq1_0, QKPTQ1_0/16, bonsai_dequantize_ptq1_0>;

// ---- cpy: f32 -> type, type -> f32 / f16 ----------------------------------------------------

template [[host_name("kernel_cpy_f32_q1_0")]]   kernel cpy_f_q_t kernel_cpy_f32_q<QK1_0,    block_q1_0,   bonsai_quantize_q1_0>;
template [[host_name("kernel_cpy_f32_q2_0")]]   kernel cpy_f_q_t kernel_cpy_f32_q<QK2_0,    block_q2_0,   bonsai_quantize_q2_0>;
template [[host_name("kernel_cpy_f32_pq2_0")]]  kernel cpy_f_q_t kernel_cpy_f32_q<QKPQ2_0,  block_pq2_0,  bonsai_quantize_pq2_0>;
template [[host_name("kernel_cpy_f32_ptq1_0")]] kernel cpy_f_q_t kernel_cpy_f32_q<QKPTQ1_0, block_ptq1_0, bonsai_quantize_ptq1_0>;

template [[host_name("kernel_cpy_q1_0_f32")]]   kernel cpy_q_f_t kernel_cpy_q_f32<float4x4, block_q1_0,   QK1_0/16,    bonsai_dequantize_q1_0>;
template [[host_name("kernel_cpy_q2_0_f32")]]   kernel cpy_q_f_t kernel_cpy_q_f32<float4x4, block_q2_0,   QK2_0/16,    bonsai_dequantize_q2_0>;
template [[host_name("kernel_cpy_pq2_0_f32")]]  kernel cpy_q_f_t kernel_cpy_q_f32<float4x4, block_pq2_0,  QKPQ2_0/16,  bonsai_dequantize_pq2_0>;
template [[host_name("kernel_cpy_ptq1_0_f32")]] kernel cpy_q_f_t kernel_cpy_q_f32<float4x4, block_ptq1_0, QKPTQ1_0/16, bonsai_dequantize_ptq1_0>;

template [[host_name("kernel_cpy_q1_0_f16")]]   kernel cpy_q_f_t kernel_cpy_q_f32<half4x4,  block_q1_0,   QK1_0/16,    bonsai_dequantize_q1_0>;
template [[host_name("kernel_cpy_q2_0_f16")]]   kernel cpy_q_f_t kernel_cpy_q_f32<half4x4,  block_q2_0,   QK2_0/16,    bonsai_dequantize_q2_0>;
template [[host_name("kernel_cpy_pq2_0_f16")]]  kernel cpy_q_f_t kernel_cpy_q_f32<half4x4,  block_pq2_0,  QKPQ2_0/16,  bonsai_dequantize_pq2_0>;
template [[host_name("kernel_cpy_ptq1_0_f16")]] kernel cpy_q_f_t kernel_cpy_q_f32<half4x4,  block_ptq1_0, QKPTQ1_0/16, bonsai_dequantize_ptq1_0>;
