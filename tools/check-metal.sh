#!/usr/bin/env bash
# Checks the Metal kernels of the low-bit types (Q1_0, Q2_0, PQ2_0, PTQ1_0) on a Mac with Apple
# silicon. The kernels were written and shim-tested on Linux only (README.md, "Metal"): this
# script is how they first meet a GPU. Run it from anywhere:
#
#   tools/check-metal.sh [WORKDIR]        # default WORKDIR: <repo>/build/check-metal
#
# 1. builds sd-cli and test-backend-ops with Metal (-DBONSAI_SD_METAL=ON), and sd-cli without
#    it (the CPU reference), in WORKDIR/metal and WORKDIR/cpu;
# 2. test-backend-ops, Metal against the CPU, for MUL_MAT, MUL_MAT_ID, GET_ROWS and CPY of the
#    four types (patch 0008's cases): with the default settings, with the Metal 4 tensor API
#    forced on (the mul_mm tensor path, where the OS has it) and forced off (the simdgroup path);
#    every case must run (none "not supported") and pass;
# 3. a tiny FLUX.2-klein-shaped model (tools/tiny_klein.py, f32 weights that are exactly
#    ternary / binary) converted with `sd-cli -M convert --type T` for each type, generating a
#    128x128 image on Metal and on the CPU. Per type it checks that
#      - the Metal image matches the Metal image of the unconverted f32 weights (same numbers,
#        so only rounding differs: PSNR > 40 dB, the bound the CPU end-to-end test uses),
#      - the Metal image matches the CPU image of the same file (different backends round
#        differently: PSNR > 30 dB; an untested guess, see the printed values);
# 4. prints a pass/fail summary. Exit status 0 when everything passed.
#
# Needs: Xcode command line tools, CMake >= 3.21, python3 with numpy and pillow
# (python3 -m pip install numpy pillow), network access once for the pinned upstream sdist
# (or BONSAI_SD_UPSTREAM_ARCHIVE, see README.md). Logs go to WORKDIR/logs/.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$repo/build/check-metal}
logs=$work/logs
types=(pq2_0 q1_0 q2_0 ptq1_0)
jobs=$(sysctl -n hw.ncpu 2>/dev/null || echo 4)

die() { echo "check-metal: $*" >&2; exit 2; }

[ "$(uname -s)" = Darwin ] || die "this script runs on macOS (it checks the Metal backend)"
[ "$(uname -m)" = arm64 ] || echo "check-metal: warning: not Apple silicon; ggml's mat-mat Metal path needs an Apple7+ GPU" >&2
command -v cmake >/dev/null || die "cmake not found (brew install cmake, or python3 -m pip install cmake)"
python3 -c "import numpy, PIL" 2>/dev/null || die "python3 needs numpy and pillow: python3 -m pip install numpy pillow"
mkdir -p "$logs"

results=()
failed=0
record() {  # record NAME STATUS DETAIL
    results+=("$(printf '%-52s %-4s %s' "$1" "$2" "$3")")
    [ "$2" = PASS ] || failed=$((failed + 1))
}

# ---- 1. builds ------------------------------------------------------------------------------

build() {  # build NAME METAL TARGETS...
    local name=$1 metal=$2; shift 2
    echo "check-metal: building $name (logs/build-$name.log)"
    if cmake -S "$repo" -B "$work/$name" -DCMAKE_BUILD_TYPE=Release -DBONSAI_SD_METAL="$metal" \
             -DBONSAI_SD_BUILD_TESTS=ON -DBONSAI_SD_PYTHON=OFF >"$logs/build-$name.log" 2>&1 &&
       cmake --build "$work/$name" --target "$@" -j "$jobs" >>"$logs/build-$name.log" 2>&1; then
        record "build ($name)" PASS ""
    else
        record "build ($name)" FAIL "see $logs/build-$name.log"
        return 1
    fi
}

build metal ON sd-cli test-backend-ops || true
build cpu OFF sd-cli || true
metal_cli=$work/metal/bin/sd-cli
cpu_cli=$work/cpu/bin/sd-cli
backend_ops=$work/metal/bin/test-backend-ops

# ---- 2. test-backend-ops ------------------------------------------------------------------------

# Cases whose type parameter is one of ours (vars such as "type_a=pq2_0,type_b=f32,...").
params="(^|,)(type|type_a|type_src|type_dst)=(q1_0|q2_0|pq2_0|ptq1_0),"

backend_ops_run() {  # backend_ops_run LABEL [NAME=VALUE]
    local label=$1 setting=${2:-}
    local log=$logs/test-backend-ops-$label.log
    if [ ! -x "$backend_ops" ]; then
        record "test-backend-ops ($label)" FAIL "not built"
        return
    fi
    echo "check-metal: test-backend-ops, $label (logs/test-backend-ops-$label.log)"
    local rc=0
    env ${setting:+"$setting"} "$backend_ops" test -b MTL0 -o MUL_MAT,MUL_MAT_ID,GET_ROWS,CPY -p "$params" >"$log" 2>&1 || rc=$?
    local summary unsupported failures tensor
    summary=$(grep -Eo '[0-9]+/[0-9]+ tests passed' "$log" | tail -1 || true)
    unsupported=$(grep -c 'not supported' "$log" || true)
    failures=$(grep -c 'FAIL' "$log" || true)
    tensor=$(grep -q 'has tensor *= true' "$log" && echo "tensor API" || echo "simdgroup")
    local passed=${summary%%/*} total=${summary#*/}
    total=${total%% *}
    if [ "$rc" -eq 0 ] && [ -n "$summary" ] && [ "$passed" = "$total" ] && [ "$total" -gt 0 ] &&
       [ "$unsupported" -eq 0 ] && [ "$failures" -eq 0 ]; then
        record "test-backend-ops ($label, mul_mm: $tensor)" PASS "$summary"
    else
        record "test-backend-ops ($label, mul_mm: $tensor)" FAIL \
            "${summary:-no summary}, $unsupported not supported, exit $rc; see $log"
        # a Metal compile error of the library shows here first
        grep -m 20 -E 'error:|program_source' "$log" >&2 || true
    fi
}

backend_ops_run default
backend_ops_run tensor-api GGML_METAL_TENSOR_ENABLE=1
backend_ops_run simdgroup GGML_METAL_TENSOR_DISABLE=1

# ---- 3. tiny model images -----------------------------------------------------------------------

models=$work/tiny
images=$work/images
mkdir -p "$images"

generate() {  # generate SD_CLI DIT MODEL_DIR OUT.png LOG
    "$1" --diffusion-model "$2" --vae "$3/vae.safetensors" --llm "$3/llm.safetensors" \
         -p "a red fox under paper lanterns" --cfg-scale 1 --steps 2 -W 128 -H 128 --seed 42 \
         -o "$4" >"$5" 2>&1
}

psnr() {  # psnr A.png B.png -> dB
    python3 - "$1" "$2" <<'EOF'
import sys
import numpy as np
from PIL import Image
a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sys.argv[1:3])
mse = np.mean((a - b) ** 2)
print("inf" if mse == 0 else f"{10 * np.log10(255.0 ** 2 / mse):.1f}")
EOF
}

above() {  # above VALUE THRESHOLD
    python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$1" "$2"
}

if [ -x "$metal_cli" ] && [ -x "$cpu_cli" ]; then
    for flavour in ternary binary; do
        python3 "$repo/tools/tiny_klein.py" "$models/$flavour" --dit "$flavour" --dtype f32 --seed 3 \
            >"$logs/tiny-$flavour.log" 2>&1 || die "tools/tiny_klein.py failed, see $logs/tiny-$flavour.log"
        if ! generate "$metal_cli" "$models/$flavour/dit.safetensors" "$models/$flavour" \
                      "$images/f32-$flavour-metal.png" "$logs/generate-f32-$flavour-metal.log"; then
            record "generate f32 $flavour (Metal)" FAIL "see $logs/generate-f32-$flavour-metal.log"
        fi
    done

    for type in "${types[@]}"; do
        flavour=ternary
        [ "$type" = q1_0 ] && flavour=binary
        model=$models/$flavour
        # conversion runs on the CPU in either build; one file feeds both generations
        if ! "$metal_cli" -M convert -m "$model/dit.safetensors" -o "$model/dit-$type.gguf" --type "$type" \
                --tensor-type-rules "modulation=f32" >"$logs/convert-$type.log" 2>&1; then
            record "convert $type" FAIL "see $logs/convert-$type.log"
            continue
        fi

        ok=1
        for build_name in cpu metal; do
            generate "$work/$build_name/bin/sd-cli" "$model/dit-$type.gguf" "$model" \
                "$images/$type-$build_name.png" "$logs/generate-$type-$build_name.log" ||
                { record "generate $type ($build_name)" FAIL "see $logs/generate-$type-$build_name.log"; ok=0; }
        done
        if [ "$ok" != 1 ] || [ ! -f "$images/f32-$flavour-metal.png" ]; then
            continue
        fi

        db=$(psnr "$images/$type-metal.png" "$images/f32-$flavour-metal.png")
        if above "$db" 40; then
            record "image $type on Metal vs f32 weights on Metal" PASS "$db dB"
        else
            record "image $type on Metal vs f32 weights on Metal" FAIL "$db dB (want > 40)"
        fi
        db=$(psnr "$images/$type-metal.png" "$images/$type-cpu.png")
        if above "$db" 30; then
            record "image $type on Metal vs on CPU" PASS "$db dB"
        else
            record "image $type on Metal vs on CPU" FAIL "$db dB (want > 30)"
        fi
    done
else
    record "tiny model images" FAIL "sd-cli not built"
fi

# ---- 4. summary ---------------------------------------------------------------------------------

echo
echo "check-metal summary ($(sysctl -n machdep.cpu.brand_string 2>/dev/null || uname -m), macOS $(sw_vers -productVersion 2>/dev/null || echo '?'))"
printf '%s\n' "${results[@]}"
echo "images: $images   logs: $logs"
if [ "$failed" -eq 0 ]; then
    echo "check-metal: PASS"
else
    echo "check-metal: FAIL ($failed failed)"
    exit 1
fi
