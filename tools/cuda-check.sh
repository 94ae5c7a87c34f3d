#!/usr/bin/env bash
# The one-command GPU check of the low-bit types' CUDA kernels. Run from the repository root on a
# machine with an NVIDIA GPU (sm_80 or newer), the CUDA toolkit (nvcc, cuBLAS), cmake, ninja and
# python3 with numpy and Pillow:
#
#   tools/cuda-check.sh [--kernels] [OUTDIR]
#
# OUTDIR defaults to $OUT, else ./cuda-check-out. The pinned upstream sdist comes from
# $BONSAI_SD_UPSTREAM_ARCHIVE when set (machines without network), else pip downloads it.
# BONSAI_CHECK_STEPS picks steps (default "kernels build eval perf tiny"; the build directory in
# $BONSAI_SD_CUDA_WORK, default /tmp/bonsai-cuda-check, is reused); BONSAI_CHECK_PERF_N the token
# counts of step 4's GEMM timings (default "512|4096|4608"; mat-vec runs at 1).
#
#  1. kernels: tests/cuda/lowbit_matvec_decode_check.cu (the int8 mat-vec's arithmetic on the
#     CPU) and tests/cuda/lowbit_cuda_check.cu built with nvcc against cpp/cuda and cuBLAS:
#     bit-exact codec checks, GEMM and mat-vec correctness, accuracy and timings against cuBLAS
#     (kernels.log, kernels.json). --kernels stops here.
#  2. build: sd-cli and test-backend-ops with BONSAI_SD_CUDA=ON (build.log, the tail), ggml's CUDA
#     graphs compiled in but switched off (GGML_CUDA_DISABLE_GRAPHS=1) for every step but one perf
#     run, so that the rest runs node by node as the product does (its build leaves them out).
#  3. test-backend-ops, CUDA against CPU: MUL_MAT, GET_ROWS and CPY for the four types, DiT
#     shapes included (backend-ops.log).
#  4. test-backend-ops perf: the DiT linears for F16, BF16, Q8_0, Q4_0 (ggml's MMQ) and the four
#     types (perf.log); the mat-vec (N = 1) again from ggml's CUDA graphs, without the CPU's launch
#     per call (perf-graph.log).
#  5. a tiny FLUX.2-shaped model (tools/tiny_klein.py) converted to each type with sd-cli and
#     generated on CUDA and on the CPU (the same binary without a visible GPU) (tiny.log).
# tools/cuda_check_report.py then writes results.json and prints the tables. The exit status is
# non-zero when a check failed.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
steps=${BONSAI_CHECK_STEPS:-kernels build eval perf tiny}
if [ "${1:-}" = "--kernels" ]; then steps=kernels; shift; fi
want() { [[ " $steps " == *" $1 "* ]]; }
out=${1:-${OUT:-$PWD/cuda-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=${BONSAI_SD_CUDA_WORK:-/tmp/bonsai-cuda-check}
mkdir -p "$work"
arch=${BONSAI_SD_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}
arch=${arch:-90}
jobs=${BONSAI_SD_JOBS:-$(nproc)}
status=0
export GGML_CUDA_DISABLE_GRAPHS=1  # node by node, as in the product (step 2)

# ---- 1. the kernels on their own -------------------------------------------------------------
if want kernels; then
{
    echo "== GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    echo "== kernels: build (sm_$arch)"
} | tee "$out/kernels.log"
inc="-I$here/cpp/lowbit -I$here/cpp/cuda"
flags="-std=c++17 -O3 -arch=sm_$arch -use_fast_math"
objs=("$work/check.o" "$work/gemm.o" "$work/ops.o" "$work/codec.o")
sm90=""
pids=()
cc -O2 -c $inc "$here/cpp/lowbit/lowbit-codec.c" -o "$work/codec.o" & pids+=($!)
nvcc $flags $inc -c "$here/cpp/cuda/lowbit-cuda-gemm.cu" -o "$work/gemm.o" & pids+=($!)
if [ "$arch" = 90 ]; then
    # the Hopper GEMM (wgmma) needs the arch-specific target
    sm90=-DBONSAI_CUDA_SM90
    nvcc -std=c++17 -O3 -use_fast_math -gencode=arch=compute_90a,code=sm_90a $inc \
        -c "$here/cpp/cuda/lowbit-cuda-gemm-sm90.cu" -o "$work/sm90.o" & pids+=($!)
    objs+=("$work/sm90.o")
fi
nvcc $flags $inc $sm90 -c "$here/cpp/cuda/lowbit-cuda-ops.cu" -o "$work/ops.o" & pids+=($!)
nvcc -std=c++17 -O3 -arch=sm_$arch $inc $sm90 -DBONSAI_HAVE_CUBLAS -c "$here/tests/cuda/lowbit_cuda_check.cu" \
    -o "$work/check.o" & pids+=($!)
nvcc -std=c++17 -O2 -arch=sm_$arch $inc -c "$here/tests/cuda/lowbit_matvec_decode_check.cu" -o "$work/decode.o" & pids+=($!)
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "kernel build failed" | tee -a "$out/kernels.log"; exit 1; }
done
nvcc -arch=sm_$arch "${objs[@]}" -lcublas -o "$work/lowbit_cuda_check" || { echo "kernel link failed"; exit 1; }
nvcc -arch=sm_$arch "$work/decode.o" "$work/gemm.o" "$work/codec.o" -o "$work/lowbit_matvec_decode_check" ||
    { echo "kernel link failed"; exit 1; }

echo "== kernels: the int8 mat-vec's unit arithmetic on the CPU" | tee -a "$out/kernels.log"
"$work/lowbit_matvec_decode_check" 2>&1 | tee -a "$out/kernels.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== kernels: check and time" | tee -a "$out/kernels.log"
"$work/lowbit_cuda_check" --json "$out/kernels.json" ${BONSAI_CHECK_ARGS:-} 2>&1 | tee -a "$out/kernels.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
if [ "$steps" = kernels ]; then
    exit $status
fi

# ---- 2. sd-cli and test-backend-ops ----------------------------------------------------------
build="$work/build"
if want build || [ ! -d "$build" ]; then
echo "== build (BONSAI_SD_CUDA=ON, sm_$arch, $jobs jobs)"
{
    cmake -S "$here" -B "$build" -G Ninja -DBONSAI_SD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
        -DBONSAI_SD_PYTHON=OFF -DBONSAI_SD_BUILD_TESTS=ON -DGGML_CUDA_GRAPHS=ON &&
        cmake --build "$build" --target sd-cli test-backend-ops -j "$jobs"
} > "$work/build.log" 2>&1
build_status=$?
tail -n 60 "$work/build.log" > "$out/build.log"
if [ $build_status -ne 0 ]; then
    echo "build failed (build.log)"
    exit 1
fi
fi
sdcli=$(find "$build" -name sd-cli -type f -perm -u+x | head -1)
tbo=$(find "$build" -name test-backend-ops -type f -perm -u+x | head -1)

# ---- 3. test-backend-ops: CUDA against CPU ------------------------------------------------------
if want eval; then
echo "== test-backend-ops (CUDA0 vs CPU): MUL_MAT, GET_ROWS, CPY of the low-bit types"
lowbit='(type_a|type|type_src|type_dst)=(q1_0|q2_0|pq2_0|ptq1_0),'
"$tbo" test -b CUDA0 -o MUL_MAT,GET_ROWS,CPY -p "$lowbit" > "$out/backend-ops.log" 2>&1
tbo_status=$?
grep -E "tests passed|Backend CUDA0:" "$out/backend-ops.log"
[ $tbo_status -eq 0 ] || status=1
fi

# ---- 4. test-backend-ops perf -------------------------------------------------------------------
if want perf; then
echo "== test-backend-ops perf (CUDA0): DiT linears"
shape='m=(3072|9216|18432|27648|9728|2560),n=NS,k=(3072|9216|12288|2560|9728),bs=\[1,1\],nr=\[1,1\],per=\[0,1,2,3\],k_v=0,o=1'
gemm="type_a=(f16|bf16|q8_0|q4_0|q1_0|q2_0|pq2_0|ptq1_0),type_b=f32,${shape/NS/(${BONSAI_CHECK_PERF_N:-512|4096|4608})}"
matvec="type_a=(f16|bf16|q1_0|q2_0|pq2_0|ptq1_0),type_b=f32,${shape/NS/1}"
{
    # Q8_0 and Q4_0 through ggml's MMQ, the baseline the issue names (by default bonsai-sd sends
    # them at >= 256 tokens on Hopper through bf16 cuBLAS: cpp/cuda/cuda-quantized-gemm.cu)
    BONSAI_SD_CUDA_MMQ=1 "$tbo" perf -b CUDA0 -o MUL_MAT -p "$gemm" &&
        "$tbo" perf -b CUDA0 -o MUL_MAT -p "$matvec"
} > "$out/perf.log" 2>&1 || status=1
env -u GGML_CUDA_DISABLE_GRAPHS "$tbo" perf -b CUDA0 -o MUL_MAT -p "$matvec" > "$out/perf-graph.log" 2>&1 || status=1
fi

# ---- 5. tiny model: CUDA against CPU ------------------------------------------------------------
tiny="$work/tiny"
if want tiny; then
echo "== tiny FLUX.2-shaped model: CUDA vs CPU"
rm -rf "$tiny"
mkdir -p "$tiny"
{
    python3 "$here/tools/tiny_klein.py" "$tiny/ternary" --dit ternary --dtype f16 --seed 3 &&
        python3 "$here/tools/tiny_klein.py" "$tiny/binary" --dit binary --dtype f16 --seed 3
} > "$out/tiny.log" 2>&1 || { echo "tiny model failed (tiny.log)"; exit 1; }
generate() {  # DIT OUT.png [env...]
    local dit=$1 png=$2
    shift 2
    env "$@" "$sdcli" --diffusion-model "$dit" --vae "$tiny/ternary/vae.safetensors" --llm "$tiny/ternary/llm.safetensors" \
        -p "a red fox under paper lanterns" --cfg-scale 1 --steps 2 -W 128 -H 128 --seed 42 -t 8 -o "$png" \
        >> "$out/tiny.log" 2>&1
}
for pair in pq2_0:ternary ptq1_0:ternary q2_0:ternary q1_0:binary; do
    type=${pair%%:*} flavour=${pair##*:}
    gguf="$tiny/dit-$type.gguf"
    "$sdcli" -M convert -m "$tiny/$flavour/dit.safetensors" -o "$gguf" --type "$type" \
        --tensor-type-rules modulation=f32 >> "$out/tiny.log" 2>&1 || status=1
    generate "$gguf" "$tiny/$type-cuda.png" || status=1
    generate "$gguf" "$tiny/$type-cpu.png" CUDA_VISIBLE_DEVICES= || status=1
done
for flavour in ternary binary; do
    generate "$tiny/$flavour/dit.safetensors" "$tiny/f16-$flavour-cuda.png" || status=1
done
fi

tiny_arg=()
if want tiny; then
    tiny_arg=(--tiny "$tiny")
fi
python3 "$here/tools/cuda_check_report.py" --out "$out" "${tiny_arg[@]}" || status=1
exit $status
