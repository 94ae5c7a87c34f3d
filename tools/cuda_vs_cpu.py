#!/usr/bin/env python3
"""The built-in demo model's image on CUDA against the same image on the CPU, and against CUDA with
bonsai-sd's replacement kernels switched off (the VAE's convolutions through ggml's im2col and
matrix product instead of bonsai-sd's implicit-GEMM kernel, ggml's own im2col and group norm, the
unfused modulation and gated residual): an end-to-end check of the CUDA kernels, flash attention with the
per-head RoPE layout (cpp/sdcpp/rope-positions.h) and the VAE decoder included. Each image is made
in its own process (the kernel switches are read once per process). Needs a CUDA build.

    python tools/cuda_vs_cpu.py --size 256 --min-psnr 40 --min-psnr-kernels 50

The bounds. CUDA and the CPU round activations differently (f16 and int8 on the GPU, Q8_0 on the
CPU, sums in other orders): 40 dB is the bound of the CPU's own end-to-end test against F32
(tests/test_types_e2e.py). The replacement kernels compute ggml's values with f32 sums in another
order (im2col only moves values; the implicit-GEMM convolution multiplies the same f16-rounded
inputs), so against ggml's kernels the images differ by rounding alone,
which this random-weight model amplifies over 4 steps (56.8 dB measured, H100, 2026-11-24); a wrong
kernel (a missed row, a swapped operand) moves them far more, so 50 dB separates the two. bonsai-sd's
ROPE kernel is left on in both: it is more accurate than ggml's fast-math one (test-backend-ops
checks it against the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

UPSTREAM_KERNELS = {"BONSAI_SD_CUDA_IM2COL_CONV": "1", "BONSAI_SD_CUDA_UPSTREAM_IM2COL": "1",
                    "BONSAI_SD_CUDA_UPSTREAM_GROUP_NORM": "1", "BONSAI_SD_CUDA_UNFUSED": "1"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def make_image(device: str, size: int, out: Path, env: dict[str, str]) -> np.ndarray:
    code = ("import bonsai_sd, sys, numpy as np; "
            "p = bonsai_sd.Pipeline.demo(device=sys.argv[1], flash_attention=True); "
            "np.save(sys.argv[3], np.asarray(p('a red fox under paper lanterns', width=int(sys.argv[2]), "
            "height=int(sys.argv[2]), steps=4, seed=42)))")
    subprocess.run([sys.executable, "-c", code, device, str(size), str(out)], check=True, env={**os.environ, **env})
    return np.load(out)


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--min-psnr", type=float, default=40.0, help="CUDA against the CPU")
    p.add_argument("--min-psnr-kernels", type=float, default=50.0, help="against ggml's kernels on CUDA")
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cuda = make_image("cuda", args.size, Path(tmp) / "cuda.npy", {})
        cpu = make_image("cpu", args.size, Path(tmp) / "cpu.npy", {})
        ggml_kernels = make_image("cuda", args.size, Path(tmp) / "ggml.npy", UPSTREAM_KERNELS)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": os.environ.get("BONSAI_SD_COMMIT", "unknown"), "command": " ".join(sys.argv),
              "gpu": gpu_name(), "size": args.size,
              "psnr_cuda_vs_cpu": psnr(cuda, cpu), "psnr_vs_ggml_kernels": psnr(cuda, ggml_kernels)}
    ok = result["psnr_cuda_vs_cpu"] >= args.min_psnr and result["psnr_vs_ggml_kernels"] >= args.min_psnr_kernels
    result["pass"] = bool(ok)
    print(json.dumps(result))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
