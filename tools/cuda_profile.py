#!/usr/bin/env python3
"""Where a generation's GPU time goes: per-op times of the text encoder, one DiT step and the VAE
decode on CUDA (issue 10).

Runs one warm-up and one profiled generation per transformer type, each type in its own process,
with BONSAI_SD_CUDA_PROFILE set (cpp/cuda/cuda-op-profile.cu: every computed node of every graph
timed with CUDA events, CUDA graphs off), then sums the nodes by stage and by category and prints a
Markdown table; `-o` writes the JSON. Needs a CUDA build and the full-size models of
tools/make_full_size_model.py.

    python tools/cuda_profile.py /mnt/bonsai-bench --types pq2_0,f16 --size 1024 -o profile.json
    python tools/cuda_profile.py /mnt/bonsai-bench --types pq2_0,pq2_0@BONSAI_SD_CUDA_UPSTREAM_IM2COL=1
    python tools/cuda_profile.py --report profile.json

A graph is the text encoder's, the transformer's or the VAE's by what it contains: the DiT embeds
its timestep (TIMESTEP_EMBEDDING), the VAE decoder convolves (IM2COL / CONV_2D), the text encoder
does neither. Node times include what ggml fuses into a node and any wait for the host's launch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

STAGES = ("text_encoder", "diffusion", "vae")
STAGE_TITLES = {"text_encoder": "text encoder", "diffusion": "one DiT step", "vae": "VAE decode"}

# Category of an op label ("OP" or "OP detail", as cuda-op-profile.cu writes them).
CATEGORY_OF_OP = {
    "FLASH_ATTN_EXT": "attention", "SOFT_MAX": "attention",
    "RMS_NORM": "norms and modulation", "NORM": "norms and modulation", "GROUP_NORM": "norms and modulation",
    "L2_NORM": "norms and modulation", "MUL": "norms and modulation", "ADD": "norms and modulation",
    "ADD1": "norms and modulation", "SUB": "norms and modulation", "DIV": "norms and modulation",
    "SCALE": "norms and modulation",
    "ROPE": "RoPE",
    "CONT": "layout copies", "CPY": "layout copies", "DUP": "layout copies", "CONCAT": "layout copies",
    "GET_ROWS": "layout copies", "SET_ROWS": "layout copies", "PAD": "layout copies", "REPEAT": "layout copies",
    "IM2COL": "convolution (im2col)", "CONV_2D": "convolution", "CONV_2D_DW": "convolution",
    "CONV_TRANSPOSE_2D": "convolution", "UPSCALE": "upsampling",
    "TIMESTEP_EMBEDDING": "other",
}
# ggml_op_desc names a UNARY or GLU node by its function.
ACTIVATIONS = {"GELU", "GELU_QUICK", "GELU_ERF", "SILU", "TANH", "SIGMOID", "RELU", "EXP", "REGLU", "GEGLU",
               "SWIGLU", "SWIGLU_OAI", "GEGLU_ERF", "GEGLU_QUICK"}
LOWBIT_TYPES = ("pq2_0", "ptq1_0", "q2_0", "q1_0")


def op_category(label: str) -> str:
    op, _, detail = label.partition(" ")
    if op in ("MUL_MAT", "MUL_MAT_ID"):
        return "GEMM low-bit" if detail in LOWBIT_TYPES else "GEMM other"
    if op in ("CPY", "CONT", "DUP") and ">" in detail:
        return "F32/F16 conversions"
    if op in ACTIVATIONS:
        return "activations"
    return CATEGORY_OF_OP.get(op, "other")


def graph_stage(ops: dict[str, Any]) -> str:
    names = {label.partition(" ")[0] for label in ops}
    if "TIMESTEP_EMBEDDING" in names:
        return "diffusion"
    if names & {"IM2COL", "CONV_2D", "CONV_2D_DW", "CONV_TRANSPOSE_2D"}:
        return "vae"
    return "text_encoder"


def summarize_graphs(graphs: Iterable[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Per stage: graphs, GPU ms, ms per op label and per category; the diffusion stage per step."""
    stages: dict[str, dict[str, Any]] = {s: {"graphs": 0, "gpu_ms": 0.0, "ops": {}, "categories": {}} for s in STAGES}
    for g in graphs:
        stage = stages[graph_stage(g["ops"])]
        stage["graphs"] += 1
        stage["gpu_ms"] += g["gpu_ms"]
        for label, (ms, count) in g["ops"].items():
            entry = stage["ops"].setdefault(label, [0.0, 0])
            entry[0] += ms
            entry[1] += count
    for name, stage in stages.items():
        per = steps if name == "diffusion" and steps > 0 else 1
        stage["per"] = "step" if name == "diffusion" else "image"
        stage["gpu_ms"] /= per
        stage["ops"] = {label: [ms / per, count / per] for label, (ms, count) in stage["ops"].items()}
        for label, (ms, _) in stage["ops"].items():
            cat = op_category(label)
            stage["categories"][cat] = stage["categories"].get(cat, 0.0) + ms
    return stages


# ---- the profiled run, in its own process --------------------------------------------------------

def profile_one(models: Path, type_name: str, size: int, steps: int, profile_file: Path) -> dict[str, Any]:
    os.environ["BONSAI_SD_CUDA_PROFILE"] = str(profile_file)
    from bonsai_sd import Pipeline
    from bonsai_sd.bench import PROMPT, model_files

    files = model_files(models, type_name)
    pipe = Pipeline(files["transformer"], text_encoder=files["text_encoder"], vae=files["vae"], device="cuda",
                    flash_attention=True)
    try:
        pipe(PROMPT, width=size, height=size, steps=steps, seed=1)  # warm-up
        warm_lines = len(profile_file.read_text().splitlines()) if profile_file.exists() else 0
        t0 = time.perf_counter()
        pipe(PROMPT, width=size, height=size, steps=steps, seed=2)
        wall_s = time.perf_counter() - t0
    finally:
        pipe.close()
    graphs = [json.loads(line) for line in profile_file.read_text().splitlines()[warm_lines:]]
    if not graphs:
        raise RuntimeError("no profile was written: is this a CUDA build with patch 0060?")
    return {"type": type_name, "size": size, "steps": steps, "wall_s_profiled": wall_s, "graphs": len(graphs),
            "stages": summarize_graphs(graphs, steps)}


def parse_case(case: str) -> tuple[str, dict[str, str]]:
    """"pq2_0" or "pq2_0@NAME=VALUE@..." (a before/after variant: the type with those environment
    variables set, e.g. BONSAI_SD_CUDA_UPSTREAM_IM2COL=1) -> (type, environment)."""
    type_name, *settings = case.split("@")
    env = {}
    for setting in settings:
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise ValueError(f"{case!r}: expected TYPE@NAME=VALUE")
        env[name] = value
    return type_name, env


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bonsai_sd.bench import git_commit

    cases = []
    for case_name in args.types:
        type_name, env = parse_case(case_name)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "case.json"
            cmd = [sys.executable, __file__, str(args.models), "--one", type_name, "--size", str(args.size),
                   "--steps", str(args.steps), "-o", str(out)]
            proc = subprocess.run(cmd, timeout=args.case_timeout, env={**os.environ, **env})
            if proc.returncode != 0 or not out.exists():
                cases.append({"type": case_name, "error": f"exit status {proc.returncode}"})
                continue
            cases.append({**json.loads(out.read_text()), "type": case_name, "env": env})
    gpu = None
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"schema": 1, "tool": "tools/cuda_profile.py", "commit": git_commit(), "command": ["python", *sys.argv],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {"gpu": gpu}, "cases": cases}


# ---- the report ----------------------------------------------------------------------------------

def markdown(report: dict[str, Any], top: int = 12) -> str:
    lines = [f"{report['date']}, commit {report['commit']}, {report['machine'].get('gpu')}", ""]
    for case in report["cases"]:
        if "error" in case:
            lines += [f"**{case['type']}**: failed ({case['error']})", ""]
            continue
        stages = case["stages"]
        lines += [f"**{case['type']}, {case['size']}x{case['size']}, {case['steps']} steps** "
                  f"(GPU ms; profiled image {case['wall_s_profiled']:.2f} s with per-node events)", ""]
        cats = sorted({c for s in stages.values() for c in s["categories"]},
                      key=lambda c: -sum(s["categories"].get(c, 0.0) for s in stages.values()))
        lines.append("| category | " + " | ".join(STAGE_TITLES[s] for s in STAGES) + " |")
        lines.append("|---|" + "---|" * len(STAGES))
        for c in cats:
            cells = []
            for s in STAGES:
                ms = stages[s]["categories"].get(c)
                total = stages[s]["gpu_ms"]
                cells.append(f"{ms:.1f} ({100 * ms / total:.0f}%)" if ms and total else "-")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("| **total** | " + " | ".join(f"**{stages[s]['gpu_ms']:.1f}**" for s in STAGES) + " |")
        lines.append("")
        dit = stages["diffusion"]["ops"]
        lines += [f"Largest ops of one DiT step ({case['type']}):", "", "| op | ms | nodes |", "|---|---|---|"]
        for label, (ms, count) in sorted(dit.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"| {label} | {ms:.2f} | {count:g} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="?", type=Path, help="directory of tools/make_full_size_model.py's files")
    p.add_argument("--types", type=lambda s: s.split(","), default=["pq2_0", "f16"])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--case-timeout", type=float, default=300)
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--report", type=Path, help="print the Markdown of a JSON written before")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one type
    args = p.parse_args(argv)

    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    if args.models is None:
        p.error("the models directory is required")
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            case = profile_one(args.models, args.one, args.size, args.steps, Path(tmp) / "profile.jsonl")
        args.output.write_text(json.dumps(case))
        return 0
    report = run(args)
    text = json.dumps(report, indent=1)
    if args.output:
        args.output.write_text(text)
    print(markdown(report))
    return 0 if all("error" not in c for c in report["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
