#!/usr/bin/env python3
"""CPU MUL_MAT throughput at FLUX.2 klein DiT shapes, low-bit types against F16/Q8_0/Q4_0/Q2_K.

One set of weights per shape (ternary, per-128 fp16 scales, as Bonsai's), quantized to every
type by ggml itself; each type timed in the same process through the CPU backend's MUL_MAT
(ggml converts the activations to the type's vec_dot type inside the timed region, as in a
real graph). Prints GFLOPS and the ratios to F16 and Q4_0; writes one JSON file per run.

    python tools/bench_cpu_matmul.py                 # the full grid (~30 min on 2 cores)
    python tools/bench_cpu_matmul.py --quick         # 4096x512x3072 and 9216x4096x3072 only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from bonsai_sd import _core

BASELINES = ["f16", "q8_0", "q4_0", "q2_K"]
LOWBIT = ["pq2_0", "ptq1_0", "q2_0", "q1_0"]
TOKENS = [512, 4096]
ROWS = [3072, 9216]         # M: output features
DEPTHS = [3072, 9216, 12288]  # K: input features


def ternary_weights(rows: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, 2, (rows, k // 128, 128), dtype=np.int8).astype(np.float32)
    scales = (rng.integers(128, 256, (rows, k // 128, 1)) * 2.0**-14).astype(np.float32)
    return (codes * scales).reshape(rows, k)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--types", default=",".join(LOWBIT + BASELINES))
    parser.add_argument("--quick", action="store_true", help="two shapes instead of the full grid")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/cpu-matmul-<time>.json)")
    args = parser.parse_args()

    types = args.types.split(",")
    shapes = [(m, k, n) for m in ROWS for k in DEPTHS for n in TOKENS]
    if args.quick:
        shapes = [(3072, 3072, 512), (9216, 3072, 4096)]

    results = []
    print(f"{'M':>6} {'K':>6} {'N':>5}  " + "".join(f"{t:>9}" for t in types) + "   GFLOPS")
    for m, k, n in shapes:
        w = ternary_weights(m, k, seed=m * 7 + k)
        row = {"m": m, "k": k, "n": n, "gflops": {}}
        for t in types:
            data = _core.ggml.quantize(t, w)
            seconds = _core.ggml.time_mul_mat(t, data, m, k, n, args.threads, args.repeats)
            row["gflops"][t] = 2.0 * m * k * n / statistics.median(seconds) / 1e9
            row.setdefault("seconds", {})[t] = seconds
        results.append(row)
        print(f"{m:>6} {k:>6} {n:>5}  " + "".join(f"{row['gflops'][t]:>9.1f}" for t in types), flush=True)

    print("\nratios (median over shapes):")
    for t in types:
        for base in ("f16", "q4_0"):
            if base in types and t != base:
                r = [row["gflops"][t] / row["gflops"][base] for row in results]
                print(f"  {t:>7} / {base:<5} min {min(r):5.2f}  median {statistics.median(r):5.2f}  max {max(r):5.2f}")

    record = {
        "benchmark": "cpu-matmul",
        "machine": {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "platform": platform.platform()},
        "threads": args.threads,
        "lowbit_simd": _core.ggml.lowbit_simd(),
        "bonsai_sd": _core.__version__,
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    out = args.out or Path(__file__).resolve().parent.parent / "benchmarks" / (
        "cpu-matmul-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out.write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
