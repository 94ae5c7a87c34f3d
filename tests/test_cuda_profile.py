"""tools/cuda_profile.py's accounting of the per-node CUDA times (the timing itself runs only on a
GPU: cpp/cuda/cuda-op-profile.cu, patch 0060). Graph lines as cuda-op-profile.cu writes them, with
sums worked out by hand."""

import cuda_profile as cp
import pytest

TE = {"nodes": 40, "gpu_ms": 3.0, "ops": {"MUL_MAT q4_K": [2.0, 5], "RMS_NORM": [0.5, 2], "CPY f32>f16": [0.5, 1]}}
DIT = {"nodes": 90, "gpu_ms": 10.0, "ops": {"TIMESTEP_EMBEDDING": [0.1, 1], "MUL_MAT pq2_0": [6.0, 10],
                                              "FLASH_ATTN_EXT": [2.0, 2], "ROPE": [0.9, 2], "GELU": [1.0, 1]}}
VAE = {"nodes": 30, "gpu_ms": 4.0, "ops": {"IM2COL": [1.0, 3], "MUL_MAT f16": [2.0, 3], "GROUP_NORM": [1.0, 2]}}


@pytest.mark.parametrize(("label", "category"), [
    ("MUL_MAT pq2_0", "GEMM low-bit"), ("MUL_MAT q1_0", "GEMM low-bit"), ("MUL_MAT f16", "GEMM other"),
    ("CPY f32>f16", "F32/F16 conversions"), ("CONT", "layout copies"), ("CPY", "layout copies"),
    ("FLASH_ATTN_EXT", "attention"), ("SWIGLU", "activations"), ("GELU", "activations"), ("ROPE", "RoPE"),
    ("MUL", "norms and modulation"), ("IM2COL", "convolution (im2col)"), ("ARGSORT", "other"),
])
def test_op_categories(label, category):
    assert cp.op_category(label) == category


def test_graphs_are_told_apart_by_what_they_compute():
    assert [cp.graph_stage(g["ops"]) for g in (TE, DIT, VAE)] == ["text_encoder", "diffusion", "vae"]


def test_stage_sums_and_the_diffusion_stage_per_step():
    stages = cp.summarize_graphs([TE, DIT, DIT, VAE], steps=2)
    assert stages["diffusion"]["graphs"] == 2
    assert stages["diffusion"]["gpu_ms"] == pytest.approx(10.0)  # two 10 ms graphs over two steps
    assert stages["diffusion"]["ops"]["MUL_MAT pq2_0"] == pytest.approx([6.0, 10])
    assert stages["diffusion"]["categories"] == pytest.approx(
        {"GEMM low-bit": 6.0, "attention": 2.0, "RoPE": 0.9, "activations": 1.0, "other": 0.1})
    assert stages["text_encoder"]["categories"] == pytest.approx(
        {"GEMM other": 2.0, "norms and modulation": 0.5, "F32/F16 conversions": 0.5})
    assert stages["vae"]["gpu_ms"] == pytest.approx(4.0)
    assert stages["vae"]["categories"] == pytest.approx(
        {"convolution (im2col)": 1.0, "GEMM other": 2.0, "norms and modulation": 1.0})


def test_the_report_table_shows_each_stage_and_the_largest_ops():
    report = {"date": "d", "commit": "c", "machine": {"gpu": "H100"},
              "cases": [{"type": "pq2_0", "size": 1024, "steps": 2, "wall_s_profiled": 1.0, "graphs": 4,
                         "stages": cp.summarize_graphs([TE, DIT, DIT, VAE], steps=2)},
                        {"type": "f16", "error": "exit status 1"}]}
    text = cp.markdown(report)
    assert "| GEMM low-bit | - | 6.0 (60%) | - |" in text
    assert "| GEMM other | 2.0 (67%) | - | 2.0 (50%) |" in text
    assert "| **total** | **3.0** | **10.0** | **4.0** |" in text
    assert "| MUL_MAT pq2_0 | 6.00 | 10 |" in text
    assert "**f16**: failed (exit status 1)" in text


def test_a_case_is_a_type_with_optional_environment_settings():
    assert cp.parse_case("pq2_0") == ("pq2_0", {})
    assert cp.parse_case("f16@A=1@B=x=y") == ("f16", {"A": "1", "B": "x=y"})
    with pytest.raises(ValueError, match="TYPE@NAME=VALUE"):
        cp.parse_case("f16@A")
