"""The CUDA int8 mat-vec's host-side arithmetic, built with nvcc where one is installed and run
without a GPU: tests/cuda/lowbit_matvec_decode_check.cu compares the kernel's per-unit products
(their host versions) with the scalar codec, and its branch-free amax / 127 with IEEE division for
every float of [1, 4). Its GPU half (the activation rounding byte for byte) runs on a machine with
a GPU, through tools/cuda-check.sh. Building also compiles cpp/cuda/lowbit-cuda-ops.cu, which no
other CPU test does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")
CC = shutil.which("cc") or shutil.which("gcc")


@pytest.mark.skipif(NVCC is None or CC is None, reason="needs nvcc and a C compiler")
def test_matvec_decode_check(tmp_path: Path) -> None:
    include = [f"-I{ROOT / 'cpp' / 'lowbit'}", f"-I{ROOT / 'cpp' / 'cuda'}"]
    nvcc = [NVCC, "-std=c++17", "-O2", "-arch=sm_80", *include, "-c"]
    jobs = [
        [CC, "-O2", *include, "-c", str(ROOT / "cpp/lowbit/lowbit-codec.c"), "-o", str(tmp_path / "codec.o")],
        [*nvcc, str(ROOT / "cpp/cuda/lowbit-cuda-gemm.cu"), "-o", str(tmp_path / "gemm.o")],
        [*nvcc, str(ROOT / "tests/cuda/lowbit_matvec_decode_check.cu"), "-o", str(tmp_path / "decode.o")],
    ]
    running = [subprocess.Popen(job, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for job in jobs]
    for job, process in zip(jobs, running):
        output, _ = process.communicate()
        assert process.returncode == 0, f"{' '.join(job)}\n{output}"
    program = tmp_path / "decode_check"
    link = subprocess.run([NVCC, "-arch=sm_80", *(str(tmp_path / o) for o in ("decode.o", "gemm.o", "codec.o")),
                           "-o", str(program)], capture_output=True, text=True)
    assert link.returncode == 0, link.stdout + link.stderr

    run = subprocess.run([str(program)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    for name in ("q1_0", "q2_0", "pq2_0", "ptq1_0"):
        assert any(line.split()[:1] == [name] and line.endswith(" ok") for line in lines), run.stdout
    assert any("amax / 127 without a division" in line and line.endswith(": exact") for line in lines), run.stdout
    assert lines[-1] == "PASS"
