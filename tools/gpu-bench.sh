#!/usr/bin/env bash
# The full-scale FLUX.2 [klein] 4B benchmark on the GPU machine, in one command (issue #8):
# build bonsai-sd with CUDA, write the synthetic full-size models to a tmpfs, run `bonsai-sd bench`
# for every transformer type at 512x512 and 1024x1024 plus a lean-mode PQ2_0 run, run the diffusers
# BF16 baseline on the same weights, and leave JSON, logs and a Markdown report in $OUT (at most 8 files).
#
# Before the device call, in the repository root here (the GPU machine reaches no registry;
# .gitignore already ignores /.whl/ and /.device/, so name both in the call's `carry`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl gguf==0.19.0 diffusers==0.42.1 importlib_metadata==8.7.0
#   # gguf: a bonsai-sd dependency (and a build requirement). diffusers: the baseline; of its needs
#   # the GPU image lacks only importlib_metadata (filelock, huggingface-hub>=1.32, numpy, regex,
#   # requests, safetensors>=0.8, Pillow are there; so are torch, transformers, accelerate, tqdm,
#   # nvidia-ml-py, scikit-build-core, pybind11, cmake and ninja).
#   mkdir -p .device/sdist && python3 -m pip download --no-deps --no-binary :all: -d .device/sdist \
#       stable-diffusion-cpp-python==0.4.7
#
# On the GPU machine (the CUDA build takes about 4.5 minutes, the models about 1; every phase skips
# work already done on a warm machine: a CUDA build that imports, model files that exist):
#   BONSAI_SD_COMMIT=<commit> tools/gpu-bench.sh     # everything in one call, if it fits: the bench
#                                                    # gets what the deadline leaves after the build,
#                                                    # the models and a reserve for lean + diffusers
# or split over two calls (the second rebuilds only if the machine went cold):
#   BONSAI_SD_COMMIT=<commit> tools/gpu-bench.sh --phases build,models,bench,report
#   BONSAI_SD_COMMIT=<commit> tools/gpu-bench.sh --phases build,models,lean,diffusers,report --types pq2_0,f16
# then, here: bonsai-sd bench --report bench.json lean.json lean-nocap.json diffusers.json
# Options: --types a,b  --sizes 512,1024  --images N  --warmup N  --deadline SECONDS (default 570:
# the phases left are skipped past it, and the bench gets what remains less the later phases'
# reserve)  --models DIR  --tiny (the whole flow on tiny models, CPU unless CUDA is built: a test).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

phases="build,models,bench,lean,diffusers,report"
types="pq2_0,f16,ptq1_0,q1_0,q2_0,q8_0,q4_k"
sizes="512,1024"
warmup=1
images=2
deadline=570
tiny=0
models=""
while [ $# -gt 0 ]; do
    case "$1" in
        --phases) phases="$2"; shift 2 ;;
        --types) types="$2"; shift 2 ;;
        --sizes) sizes="$2"; shift 2 ;;
        --warmup) warmup="$2"; shift 2 ;;
        --images) images="$2"; shift 2 ;;
        --deadline) deadline="$2"; shift 2 ;;
        --models) models="$2"; shift 2 ;;
        --tiny) tiny=1; shift ;;
        *) echo "gpu-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-$PWD/gpu-bench-out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-bench.log") 2>&1
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export BONSAI_SD_COMMIT="${BONSAI_SD_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"

has() { case ",$phases," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
elapsed() { echo $(( $(date +%s) - start )); }
left() { echo $(( deadline - $(elapsed) )); }
say() { echo "gpu-bench [$(elapsed) s]: $*"; }
cuda_built() {
    "$PYTHON" -c "import sys, bonsai_sd._core as c; sys.exit(0 if any(d['name'].startswith('CUDA') for d in c.devices()) else 1)" 2>/dev/null
}

# Carried wheels (gguf, diffusers, importlib_metadata) go to a private site directory.
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "$tiny" = 1 ]; then
    models="${models:-$(mktemp -d /tmp/bonsai-bench-tiny.XXXXXX)}"
    sizes=64; warmup=0; images=1; steps=1; types="pq2_0,f16"
    phases="${phases/build,/}"  # the tiny flow uses the installed package
else
    steps=4
fi
if cuda_built; then device=cuda; else device=cpu; fi

if has build && [ "$tiny" = 0 ]; then
    if cuda_built; then
        say "bonsai-sd with CUDA is already installed: build skipped"
    else
        archive="$PWD/.device/sdist/stable_diffusion_cpp_python-0.4.7.tar.gz"
        [ -f "$archive" ] || { echo "gpu-bench: $archive is missing (see the header)" >&2; exit 1; }
        say "building bonsai-sd with CUDA (sm_90) ..."
        if ! CMAKE_ARGS="-DBONSAI_SD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90" BONSAI_SD_UPSTREAM_ARCHIVE="$archive" \
                CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
                "$PYTHON" -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
            tail -40 "$OUT/build.log"
            echo "gpu-bench: the build failed (build.log)" >&2
            exit 1
        fi
        tail -c 200000 "$OUT/build.log" > "$OUT/build.log.tail" && mv "$OUT/build.log.tail" "$OUT/build.log"
        cuda_built || { echo "gpu-bench: the installed bonsai-sd has no CUDA device" >&2; exit 1; }
        device=cuda
        say "built"
    fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>/dev/null || true

if [ -z "$models" ]; then
    models=/mnt/bonsai-bench
    if ! mountpoint -q "$models"; then
        mkdir -p "$models"
        # The disk is slow: the models (about 22 GB) live in memory.
        mount -t tmpfs -o size=40G tmpfs "$models" || { say "no tmpfs (not root?): using $models on disk"; }
    fi
fi
if has models; then
    say "writing the models to $models ..."
    gen_args=(--types "$types")
    [ "$tiny" = 1 ] && gen_args+=(--tiny)
    "$PYTHON" tools/make_full_size_model.py "$models" "${gen_args[@]}"
    say "models written"
fi

# What the phases after the bench need, so that the bench leaves them time.
diffusers_reserve=0
has diffusers && diffusers_reserve=90
reserve=$diffusers_reserve
has lean && reserve=$(( reserve + 40 ))
common=(--device "$device" --sizes "$sizes" --steps "$steps" --warmup "$warmup" --images "$images")
# One thread for the tiny flow: OpenMP threads spin at barriers on a small, busy CPU.
[ "$tiny" = 1 ] && common+=(--threads 1)

if has bench; then
    budget=$(( $(left) - reserve ))
    say "bench: every type, $sizes, $budget s budget"
    "$PYTHON" -m bonsai_sd bench "$models" "${common[@]}" --types "$types" --modes default \
        --time-budget "$budget" --case-timeout 150 -o "$OUT/bench.json" --log "$OUT/bench.log" || say "bench: some cases failed"
fi

if has lean; then
    if [ "$(left)" -gt 20 ]; then
        say "lean mode, PQ2_0"
        lean_sizes=$([ "$tiny" = 1 ] && echo "$sizes" || echo 1024)
        "$PYTHON" -m bonsai_sd bench "$models" "${common[@]}" --sizes "$lean_sizes" --types pq2_0 --modes lean \
            --time-budget "$(left)" --case-timeout 120 -o "$OUT/lean.json" --log "$OUT/bench.log" || say "lean: failed"
        # The same without the cap on a model's device memory: what the cap costs in time.
        if [ "$device" = cuda ] && [ "$(left)" -gt $(( diffusers_reserve + 20 )) ]; then
            "$PYTHON" -m bonsai_sd bench "$models" "${common[@]}" --sizes "$lean_sizes" --types pq2_0 --modes lean \
                --lean-max-vram 0 --case-timeout 60 -o "$OUT/lean-nocap.json" --log "$OUT/bench.log" || say "lean (no cap): failed"
        fi
    else
        say "lean: skipped (deadline)"
    fi
fi

if has diffusers; then
    if ! "$PYTHON" -c "import torch, diffusers, transformers, accelerate" 2>/dev/null; then
        say "diffusers: skipped (torch, diffusers, transformers or accelerate missing)"
    elif [ "$(left)" -gt 30 ]; then
        say "diffusers BF16 baseline"
        diffusers_device=$([ "$device" = cuda ] && echo cuda || echo cpu)
        timeout "$(left)" "$PYTHON" tools/bench_diffusers.py "$models" --device "$diffusers_device" --sizes "$sizes" \
            --steps "$steps" --warmup "$warmup" --images "$images" -o "$OUT/diffusers.json" || say "diffusers: failed"
    else
        say "diffusers: skipped (deadline)"
    fi
fi

if has report; then
    reports=$(ls "$OUT"/bench.json "$OUT"/lean.json "$OUT"/lean-nocap.json "$OUT"/diffusers.json 2>/dev/null || true)
    if [ -n "$reports" ]; then
        # shellcheck disable=SC2086
        "$PYTHON" -m bonsai_sd bench --report $reports > "$OUT/report.md"
        cat "$OUT/report.md"
    fi
fi
say "done"
