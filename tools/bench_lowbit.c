// Single-thread throughput of the low-bit gemm tile kernels: one 64 weight rows x 64 activation
// rows tile (the chunk shape ggml hands a thread), K = 3072 and 12288: the scalar gemm, the
// dispatched SIMD gemm, and the same tile as 64 x 64 SIMD vec_dot calls (what ggml's generic
// mul_mat loop would do). Prints GFLOPS per core (2 * rows * cols * K per tile, best of a few
// runs, CPU time of this thread).
//
//   gcc -O2 -mavx2 -mfma -mf16c -Icpp/lowbit cpp/lowbit/lowbit-*.c tools/bench_lowbit.c -lm -o bench_lowbit
//   ./bench_lowbit [min_seconds_per_measurement]

#include "lowbit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*gemm_fn)(int n, int nr, int nc, float * dst, size_t ldd, const void * vx, size_t bx, const void * vy,
                        size_t by);
typedef void (*vec_dot_fn)(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by,
                           int nrc);

struct bench_type {
    const char * name;
    int          block_elems;
    size_t       block_bytes;
    size_t       d_offset;
    gemm_fn      scalar, simd;
    vec_dot_fn   vec_dot;
};

static const struct bench_type types[] = {
    {"q1_0",   QK1_0,    sizeof(block_q1_0),   0,  bonsai_gemm_q1_0_q8_0_scalar,   bonsai_gemm_q1_0_q8_0, bonsai_vec_dot_q1_0_q8_0},
    {"q2_0",   QK2_0,    sizeof(block_q2_0),   0,  bonsai_gemm_q2_0_q8_0_scalar,   bonsai_gemm_q2_0_q8_0, bonsai_vec_dot_q2_0_q8_0},
    {"pq2_0",  QKPQ2_0,  sizeof(block_pq2_0),  0,  bonsai_gemm_pq2_0_q8_0_scalar,  bonsai_gemm_pq2_0_q8_0, bonsai_vec_dot_pq2_0_q8_0},
    {"ptq1_0", QKPTQ1_0, sizeof(block_ptq1_0), 26, bonsai_gemm_ptq1_0_q8_0_scalar, bonsai_gemm_ptq1_0_q8_0, bonsai_vec_dot_ptq1_0_q8_0},
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);  // CPU time: robust to other processes sharing the cores
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

// The tile as one vec_dot per output, as ggml's generic mul_mat loop calls it.
static vec_dot_fn g_vec_dot;

static void gemm_by_vec_dot(int n, int nr, int nc, float * dst, size_t ldd, const void * vx, size_t bx,
                            const void * vy, size_t by) {
    for (int j = 0; j < nc; j++) {
        for (int i = 0; i < nr; i++) {
            g_vec_dot(n, dst + (size_t) j * ldd + i, 0, (const char *) vx + i * bx, 0, (const char *) vy + j * by, 0, 1);
        }
    }
}

// Best-of-5 GFLOPS, each measurement repeating the call for at least min_seconds.
static double measure(gemm_fn gemm, int k, int rows, int cols, float * dst, const void * w, size_t w_row,
                      const void * a, size_t a_row, double min_seconds) {
    double best = 0;
    for (int run = 0; run < 5; run++) {
        int calls = 0;
        const double start = now_seconds();
        double elapsed;
        do {
            gemm(k, rows, cols, dst, (size_t) rows, w, w_row, a, a_row);
            calls++;
            elapsed = now_seconds() - start;
        } while (elapsed < min_seconds);
        const double gflops = 2.0 * rows * cols * (double) k * calls / elapsed * 1e-9;
        if (gflops > best) best = gflops;
    }
    return best;
}

int main(int argc, char ** argv) {
    const double min_seconds = argc > 1 ? atof(argv[1]) : 0.2;
    const int rows = 64, cols = 64;
    const int ks[] = {3072, 12288};
    srand(1);
    printf("simd variant: %s; tile %d x %d; single thread\n", bonsai_lowbit_simd(), rows, cols);
    printf("%-7s %6s %14s %14s %8s %16s\n", "type", "K", "scalar gemm", "simd gemm", "speedup", "simd vec_dot");
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
            const int k = ks[ki];
            const size_t w_row = (size_t) (k / types[t].block_elems) * types[t].block_bytes;
            const size_t a_row = (size_t) (k / QK8_0_ACT) * sizeof(block_q8_0_act);
            uint8_t * w = malloc(w_row * rows);
            block_q8_0_act * a = malloc(a_row * cols);
            float * dst = malloc(sizeof(float) * rows * cols);
            for (size_t i = 0; i < w_row * rows; i++) w[i] = (uint8_t) rand();
            for (size_t i = 0; i < w_row * rows; i += types[t].block_bytes) {
                const bonsai_half d = bonsai_float_to_half(0.01f);
                memcpy(w + i + types[t].d_offset, &d, sizeof(d));
            }
            for (size_t i = 0; i < (size_t) cols * (k / QK8_0_ACT); i++) {
                a[i].d = bonsai_float_to_half(0.02f);
                for (int l = 0; l < QK8_0_ACT; l++) a[i].qs[l] = (int8_t) (rand() % 255 - 127);
            }
            const double scalar = measure(types[t].scalar, k, rows, cols, dst, w, w_row, a, a_row, min_seconds);
            const double simd   = measure(types[t].simd, k, rows, cols, dst, w, w_row, a, a_row, min_seconds);
            g_vec_dot = types[t].vec_dot;
            const double dots   = measure(gemm_by_vec_dot, k, rows, cols, dst, w, w_row, a, a_row, min_seconds);
            printf("%-7s %6d %14.2f %14.2f %7.1fx %16.2f\n", types[t].name, k, scalar, simd, simd / scalar, dots);
            fflush(stdout);
            free(w);
            free(a);
            free(dst);
        }
    }
    return 0;
}
