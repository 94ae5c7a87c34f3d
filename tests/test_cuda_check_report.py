"""tools/cuda_check_report.py, the summary step of tools/cuda-check.sh (the GPU check), on
synthetic test-backend-ops logs: it must read the timings, compute the ratios to BF16 and fail
the run on a failed case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "tools" / "cuda_check_report.py"
SHAPE = "type_b=f32,m={m},n={n},k={k},bs=[1,1],nr=[1,1],per=[0,1,2,3],k_v=0,o=1"


def perf_line(t: str, m: int, n: int, k: int, us: float) -> str:
    # the console format of test-backend-ops perf, colour codes included
    return (f"  MUL_MAT(type_a={t},{SHAPE.format(m=m, n=n, k=k)}):   \x1b[1;34m 100 runs - {us:8.2f} us/run - "
            f"  9.66 GFLOP/run - 500.00 TFLOPS\x1b[0m\n")


def run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), "--out", str(out)], capture_output=True, text=True)


def test_ratios_and_pass(tmp_path):
    (tmp_path / "perf.log").write_text(perf_line("bf16", 3072, 512, 3072, 20.0) + perf_line("pq2_0", 3072, 512, 3072, 16.0)
                                       + perf_line("f16", 3072, 1, 3072, 9.0) + perf_line("q1_0", 3072, 1, 3072, 3.0))
    (tmp_path / "backend-ops.log").write_text(
        f"  MUL_MAT(type_a=pq2_0,{SHAPE.format(m=67, n=1, k=128)}): \x1b[1;32mOK\x1b[0m\n"
        f"  MUL_MAT(type_a=q2_0,{SHAPE.format(m=67, n=1, k=64)}): not supported [CUDA0]\n")
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    gemm = next(r for r in results["perf"] if r["N"] == 512)
    assert abs(gemm["values"]["bf16"] - 2 * 3072 * 512 * 3072 / 20.0 / 1e6) < 1e-6  # TFLOPS from us/run
    assert abs(gemm["speedup_vs_bf16"]["pq2_0"] - 1.25) < 1e-9
    matvec = next(r for r in results["perf"] if r["N"] == 1)
    assert matvec["unit"] == "us" and abs(matvec["speedup_vs_f16"]["q1_0"] - 3.0) < 1e-9
    assert results["test_backend_ops"]["passed"] == 1 and results["test_backend_ops"]["not_supported"] == 1
    assert results["ok"] is True


def test_graph_log_with_ggml_lines_between(tmp_path):
    # with CUDA graphs ggml logs its warm-up between a case and its timing
    line = perf_line("f16", 3072, 1, 3072, 8.0).replace(
        ":   ", ": ggml_backend_cuda_graph_compute: CUDA graph warmup complete\n            ", 1)
    (tmp_path / "perf-graph.log").write_text("ggml_backend_cuda_graph_compute: CUDA graph warmup complete\n" + line
                                             + perf_line("ptq1_0", 3072, 1, 3072, 2.0))
    (tmp_path / "backend-ops.log").write_text(f"  MUL_MAT(type_a=pq2_0,{SHAPE.format(m=67, n=1, k=128)}): OK\n")
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    matvec = json.loads((tmp_path / "results.json").read_text())["perf_graph"]
    assert len(matvec) == 1 and matvec[0]["values"] == {"f16": 8.0, "ptq1_0": 2.0}
    assert abs(matvec[0]["speedup_vs_f16"]["ptq1_0"] - 4.0) < 1e-9


def test_a_failed_case_fails_the_run(tmp_path):
    (tmp_path / "backend-ops.log").write_text(
        f"  MUL_MAT(type_a=pq2_0,{SHAPE.format(m=67, n=1, k=128)}): \x1b[1;32mOK\x1b[0m\n"
        f"  GET_ROWS(type=ptq1_0,n=256,m=5,r=4,be1=1,be2=1,v=0): \x1b[1;31mFAIL\x1b[0m\n")
    proc = run(tmp_path)
    assert proc.returncode == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_backend_ops"]["failed"] == 1 and results["ok"] is False
    assert results["test_backend_ops"]["failures"][0].startswith("GET_ROWS(type=ptq1_0")


def test_no_case_run_is_no_pass(tmp_path):
    (tmp_path / "backend-ops.log").write_text("Backend CUDA0: not supported\n")
    assert run(tmp_path).returncode == 1
