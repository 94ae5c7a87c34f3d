#!/usr/bin/env bash
# The one-command GPU check of the low-bit CUDA kernels (run on a machine with an NVIDIA GPU,
# sm_80 or newer, CUDA toolkit with cuBLAS, cmake and ninja):
#
#   tools/cuda-check.sh [OUTDIR]            # everything below; OUTDIR defaults to $OUT or ./cuda-check-out
#   tools/cuda-check.sh --kernels [OUTDIR]  # only step 1 (seconds to build)
#
# 1. kernels: builds tests/cuda/lowbit_cuda_check.cu with nvcc against cpp/cuda and cuBLAS and
#    runs it: bit-exact codec checks, GEMM/mat-vec correctness, accuracy and timings at the
#    FLUX.2 klein DiT shapes (kernels.log, kernels.json).
# Logs and JSON land in OUTDIR; the exit status is non-zero when any check failed.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=all
if [ "${1:-}" = "--kernels" ]; then mode=kernels; shift; fi
out=${1:-${OUT:-$PWD/cuda-check-out}}
mkdir -p "$out"
work=${BONSAI_SD_CUDA_WORK:-/tmp/bonsai-cuda-check}
mkdir -p "$work"
arch=${BONSAI_SD_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}
arch=${arch:-90}
status=0

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"

# ---- 1. the kernels on their own -------------------------------------------------------------
echo "== kernels: build (sm_$arch)"
inc="-I$here/cpp/lowbit -I$here/cpp/cuda"
flags="-std=c++17 -O3 -arch=sm_$arch -use_fast_math"
pids=()
cc -O2 -c $inc "$here/cpp/lowbit/lowbit-codec.c" -o "$work/codec.o" & pids+=($!)
nvcc $flags $inc -Xptxas -v -c "$here/cpp/cuda/lowbit-cuda-gemm.cu" -o "$work/gemm.o" 2> "$work/ptxas-gemm.txt" & pids+=($!)
objs=("$work/check.o" "$work/gemm.o" "$work/ops.o" "$work/codec.o")
sm90=""
if [ "$arch" = 90 ]; then
    # the Hopper GEMM (wgmma) needs the arch-specific target
    sm90=-DBONSAI_CUDA_SM90
    nvcc -std=c++17 -O3 -use_fast_math -gencode=arch=compute_90a,code=sm_90a $inc -Xptxas -v \
        -c "$here/cpp/cuda/lowbit-cuda-gemm-sm90.cu" -o "$work/sm90.o" 2> "$work/ptxas-sm90.txt" & pids+=($!)
    objs+=("$work/sm90.o")
fi
nvcc $flags $inc $sm90 -c "$here/cpp/cuda/lowbit-cuda-ops.cu" -o "$work/ops.o" & pids+=($!)
nvcc -std=c++17 -O3 -arch=sm_$arch $inc $sm90 -DBONSAI_HAVE_CUBLAS -c "$here/tests/cuda/lowbit_cuda_check.cu" \
    -o "$work/check.o" & pids+=($!)
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "kernel build failed"; cat "$work"/ptxas-*.txt; exit 1; }
done
nvcc -arch=sm_$arch "${objs[@]}" -lcublas -o "$work/lowbit_cuda_check" || { echo "kernel link failed"; exit 1; }

echo "== kernels: check and time"
"$work/lowbit_cuda_check" --json "$out/kernels.json" ${BONSAI_CHECK_ARGS:-} 2>&1 | tee "$out/kernels.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
[ "$mode" = kernels ] && exit $status
exit $status
