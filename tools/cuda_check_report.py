#!/usr/bin/env python3
"""Summarise a tools/cuda-check.sh run: results.json in OUTDIR, tables on stdout.

    python3 tools/cuda_check_report.py --out OUTDIR [--tiny TINYDIR]

Reads OUTDIR/kernels.json (tests/cuda/lowbit_cuda_check), backend-ops.log, perf.log and
perf-graph.log (test-backend-ops, console output; perf-graph.log: the mat-vec from ggml's CUDA
graphs) and, with --tiny, the images tools/cuda-check.sh generated.
Exit status 1 when a check failed: a kernel check, a test-backend-ops case, or a tiny-model image
under the PSNR bound.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

LOWBIT = ["q1_0", "q2_0", "pq2_0", "ptq1_0"]
BASELINES = ["bf16", "f16", "q8_0", "q4_0"]
# A tiny-model image from the low-bit CUDA path must match the CPU's (and the CUDA image with the
# same weights stored densely in f16) to this PSNR. The activations round differently on each
# path (f16 or int8 per 128 on CUDA, int8 per 32 on the CPU) and the two backends order their
# sums differently; tests/test_types_e2e.py measured 59.6 dB for CPU int8-per-32 against f32.
# A wrong weight, layout or mapping lands far below (another seed: 14.7 dB).
MIN_PSNR_DB = 40.0

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A case and its timing; ggml's own log lines may come between them (with CUDA graphs: "... CUDA
# graph warmup complete" and a line break).
PERF_CASE = re.compile(
    r"MUL_MAT\(type_a=(\w+),type_b=f32,m=(\d+),n=(\d+),k=(\d+),[^)]*\):(?:(?!MUL_MAT\().)*?"
    r"(\d+) runs -\s+([\d.]+) us/run", re.DOTALL)
TEST_LINE = re.compile(r"^\s+(MUL_MAT|GET_ROWS|CPY)\((.*)\): (OK|FAIL|not supported)")


@dataclass
class PerfRow:
    type: str
    m: int
    n: int
    k: int
    us: float
    tflops: float


def parse_perf(path: Path) -> list[PerfRow]:
    rows = []
    for match in PERF_CASE.finditer(ANSI.sub("", path.read_text(errors="replace"))):
        t, m, n, k, _runs, us = match.groups()
        m, n, k, us = int(m), int(n), int(k), float(us)
        rows.append(PerfRow(t, m, n, k, us, 2.0 * m * n * k / us / 1e6))
    return rows


def parse_backend_ops(path: Path) -> dict:
    counts = {"OK": 0, "FAIL": 0, "not supported": 0}
    failures, unsupported = [], []
    for line in ANSI.sub("", path.read_text(errors="replace")).splitlines():
        match = TEST_LINE.match(line)
        if match:
            counts[match.group(3)] += 1
            if match.group(3) == "FAIL":
                failures.append(line.strip())
            elif match.group(3) == "not supported":
                unsupported.append(line.strip())
    return {"passed": counts["OK"], "failed": counts["FAIL"], "not_supported": counts["not supported"],
            "failures": failures, "not_supported_cases": unsupported}


def psnr(a: Path, b: Path) -> float:
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def tiny_results(tiny: Path) -> list[dict]:
    results = []
    for t, flavour in (("pq2_0", "ternary"), ("ptq1_0", "ternary"), ("q2_0", "ternary"), ("q1_0", "binary")):
        cuda, cpu, dense = tiny / f"{t}-cuda.png", tiny / f"{t}-cpu.png", tiny / f"f16-{flavour}-cuda.png"
        row = {"type": t, "flavour": flavour}
        if cuda.exists() and cpu.exists():
            row["psnr_cuda_vs_cpu_db"] = psnr(cuda, cpu)
        if cuda.exists() and dense.exists():
            row["psnr_cuda_vs_f16_weights_cuda_db"] = psnr(cuda, dense)
        row["ok"] = all(row.get(key, 0.0) >= MIN_PSNR_DB
                        for key in ("psnr_cuda_vs_cpu_db", "psnr_cuda_vs_f16_weights_cuda_db"))
        results.append(row)
    return results


def perf_tables(rows: list[PerfRow]) -> tuple[list[dict], list[str]]:
    """One record per shape with every type's TFLOPS and the low-bit types' ratios to bf16."""
    by_shape: dict[tuple[int, int, int], dict[str, PerfRow]] = {}
    for row in rows:
        by_shape.setdefault((row.m, row.n, row.k), {})[row.type] = row
    records, lines = [], []
    types = BASELINES + LOWBIT
    lines.append("| M | N | K | " + " | ".join(types) + " | " + " | ".join(f"{t}/bf16" for t in LOWBIT) + " |")
    lines.append("|" + "---|" * (3 + len(types) + len(LOWBIT)))
    for (m, n, k), entry in sorted(by_shape.items(), key=lambda item: (item[0][1] == 1, item[0])):
        unit = "us" if n == 1 else "TFLOPS"
        value = (lambda r: r.us) if n == 1 else (lambda r: r.tflops)
        record = {"M": m, "N": n, "K": k, "unit": unit,
                  "values": {t: value(entry[t]) for t in types if t in entry}}
        bf16 = entry.get("bf16")
        ratios = {}
        for t in LOWBIT:
            if t in entry and bf16:
                ratios[t] = bf16.us / entry[t].us  # speed-up over bf16 (time ratio)
        record["speedup_vs_bf16"] = ratios
        if "f16" in entry:
            record["speedup_vs_f16"] = {t: entry["f16"].us / entry[t].us for t in LOWBIT if t in entry}
        records.append(record)
        cells = [f"{record['values'][t]:.1f}" if t in record["values"] else "-" for t in types]
        cells += [f"{ratios[t]:.2f}x" if t in ratios else "-" for t in LOWBIT]
        lines.append(f"| {m} | {n} | {k} | " + " | ".join(cells) + " |")
    return records, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", type=Path)
    args = parser.parse_args()
    if not args.out.is_dir():
        parser.error(f"--out {args.out}: no such directory")

    ok = True
    summary: dict = {}
    kernels = args.out / "kernels.json"
    if kernels.exists():
        data = json.loads(kernels.read_text())
        summary["gpu"] = data["device"]
        summary["kernel_check_failures"] = data["failures"]
        summary["accuracy"] = [r for r in data["records"] if r["kind"] == "accuracy"]
        ok &= data["failures"] == 0
    backend_ops = args.out / "backend-ops.log"
    if backend_ops.exists():
        summary["test_backend_ops"] = parse_backend_ops(backend_ops)
        ok &= summary["test_backend_ops"]["failed"] == 0 and summary["test_backend_ops"]["passed"] > 0
    for log, key, title in (("perf.log", "perf", "test-backend-ops perf, MUL_MAT on CUDA0 (TFLOPS for N > 1, us for N = 1):"),
                            ("perf-graph.log", "perf_graph", "the same from ggml's CUDA graphs (no CPU launch per call):")):
        if (args.out / log).exists():
            summary[key], lines = perf_tables(parse_perf(args.out / log))
            print(title)
            print("\n".join(lines))
    if args.tiny:
        summary["tiny_model"] = tiny_results(args.tiny)
        summary["tiny_model_min_psnr_db"] = MIN_PSNR_DB
        for row in summary["tiny_model"]:
            print(f"tiny model {row['type']:7}: CUDA vs CPU {row.get('psnr_cuda_vs_cpu_db', float('nan')):.1f} dB, "
                  f"vs f16 weights on CUDA {row.get('psnr_cuda_vs_f16_weights_cuda_db', float('nan')):.1f} dB"
                  f" {'ok' if row['ok'] else 'FAIL'}")
            ok &= row["ok"]
    if "test_backend_ops" in summary:
        t = summary["test_backend_ops"]
        print(f"test-backend-ops: {t['passed']} passed, {t['failed']} failed, {t['not_supported']} not supported")
    summary["ok"] = bool(ok)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
