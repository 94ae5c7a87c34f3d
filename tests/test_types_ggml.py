"""Issue 3: the four low-bit types as registered in ggml (traits, quantize_chunk, to_float,
row validation, CPU MUL_MAT), and the GGUF checks sd.cpp applies to them."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
from ggufraw import RawTensor, write_gguf

from bonsai_sd import _core

ggml = _core.ggml

# (name, id, block elements, bytes per block) — shared DESIGN §4.
LOWBIT = [("q1_0", 41, 128, 18), ("q2_0", 42, 64, 18), ("pq2_0", 142, 128, 34), ("ptq1_0", 143, 128, 28)]
TERNARY = ["q2_0", "pq2_0", "ptq1_0"]


def test_type_table_has_the_four_types_and_nothing_in_between():
    table = {row["name"]: row for row in _core.type_table()}
    for name, type_id, block, size in LOWBIT:
        row = table[name]
        assert (row["id"], row["block_size"], row["type_size"], row["is_quantized"]) == (type_id, block, size, True)
    ids = {row["id"] for row in _core.type_table()}
    assert not ids & set(range(43, 142))
    assert _core.ggml_type_count == 144


def _fp16_exact_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    # Scales with an 8-bit mantissa over a wide exponent range: exact in fp16 (and bf16).
    mantissa = rng.integers(128, 256, n)
    exponent = rng.integers(-14, 4, n)
    return (mantissa * np.exp2(exponent - 7.0)).astype(np.float32)


def ternary_weights(rng: np.random.Generator, rows: int, k: int, group: int = 128) -> np.ndarray:
    codes = rng.integers(-1, 2, (rows, k // group, group)).astype(np.float32)
    scales = _fp16_exact_scales(rng, rows * (k // group)).reshape(rows, k // group, 1)
    return (codes * scales).reshape(rows, k)


def binary_weights(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), (rows, k // 128, 128))
    scales = _fp16_exact_scales(rng, rows * (k // 128)).reshape(rows, k // 128, 1)
    return (signs * scales).reshape(rows, k)


def exact_weights(name: str, rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return binary_weights(rng, rows, k) if name == "q1_0" else ternary_weights(rng, rows, k)


@pytest.mark.parametrize("name", [t[0] for t in LOWBIT])
def test_quantize_chunk_roundtrips_exact_weights(name):
    rng = np.random.default_rng(1)
    w = exact_weights(name, rng, 8, 512)
    data = ggml.quantize(name, w)
    assert len(data) == 8 * 512 // dict((t[0], t[2]) for t in LOWBIT)[name] * dict((t[0], t[3]) for t in LOWBIT)[name]
    np.testing.assert_array_equal(ggml.dequantize(name, data, 8, 512), w)
    assert ggml.validate_row(name, data)


def test_ternary_layouts_agree_on_values():
    rng = np.random.default_rng(2)
    w = ternary_weights(rng, 4, 256)
    for name in TERNARY:
        np.testing.assert_array_equal(ggml.dequantize(name, ggml.quantize(name, w), 4, 256), w)


def test_binary_reference_quantizer_uses_mean_abs():
    # Q1_0 of general input: d = mean |x| of the block, sign bit = x >= 0 (mainline semantics).
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    y = ggml.dequantize("q1_0", ggml.quantize("q1_0", x), 2, 256)
    d = np.abs(x.reshape(2, 2, 128)).mean(axis=2, keepdims=True)
    expected = np.where(x.reshape(2, 2, 128) >= 0, 1.0, -1.0) * d.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(y, expected.reshape(2, 256), rtol=0, atol=0)


@pytest.mark.parametrize("name", [t[0] for t in LOWBIT])
def test_validate_row_rejects_non_finite_scale(name):
    rng = np.random.default_rng(4)
    data = bytearray(ggml.quantize(name, exact_weights(name, rng, 1, 256)))
    d_offset = 26 if name == "ptq1_0" else 0  # PTQ1_0 keeps d last (24 qs + 2 qh), the others first
    for bits in (0x7E00, 0x7C00, 0xFC00):  # NaN, +Inf, -Inf
        bad = bytearray(data)
        bad[d_offset:d_offset + 2] = struct.pack("<H", bits)
        assert not ggml.validate_row(name, bytes(bad))


def _q8_0_activations(x: np.ndarray) -> np.ndarray:
    """The activations as the kernels see them: ggml's Q8_0 (int8 per 32, fp16 scale)."""
    flat = x.reshape(-1, x.shape[-1])
    return ggml.dequantize("q8_0", ggml.quantize("q8_0", flat), flat.shape[0], flat.shape[1]).reshape(x.shape)


def _check_mul_mat(name: str, w: np.ndarray, x: np.ndarray, n_threads: int) -> None:
    rows, k = w.shape
    y = ggml.mul_mat(name, ggml.quantize(name, w), rows, x, n_threads)
    w64 = w.astype(np.float64)

    # 1. Exact math: the kernels compute W . a_hat with a_hat the Q8_0 activations; only the
    #    float32 accumulation order differs from this float64 product.
    a_hat = _q8_0_activations(x).astype(np.float64)
    exact = a_hat @ w64.T
    magnitude = np.abs(a_hat) @ np.abs(w64).T
    np.testing.assert_array_less(np.abs(y - exact), 1e-5 * magnitude + 1e-30)

    # 2. Against the float activations: Q8_0 rounds each element by at most d/2 with
    #    d = amax(block)/127, plus the fp16 rounding of d (relative 2^-11, times |q| <= 127):
    #    |a - a_hat| <= (0.5 + 127 * 2^-11) * amax/127 per element; summed with |w| weights.
    blocks = np.abs(x.astype(np.float64)).reshape(*x.shape[:-1], k // 32, 32).max(axis=-1)
    per_elem = np.repeat((0.5 + 127 * 2.0**-11) * blocks / 127, 32, axis=-1)
    bound = per_elem @ np.abs(w64).T
    reference = x.astype(np.float64) @ w64.T
    np.testing.assert_array_less(np.abs(y - reference), bound * (1 + 1e-5) + 1e-5 * magnitude + 1e-30)


@pytest.mark.parametrize("name", [t[0] for t in LOWBIT])
@pytest.mark.parametrize("rows,k,n", [(1, 128, 1), (5, 256, 3), (37, 384, 17), (64, 1024, 64)])
def test_mul_mat_matches_float64_reference(name, rows, k, n):
    rng = np.random.default_rng(rows * 1000 + n)
    w = exact_weights(name, rng, rows, k)
    x = rng.standard_normal((n, k)).astype(np.float32)
    _check_mul_mat(name, w, x, n_threads=1)


@pytest.mark.parametrize("name", [t[0] for t in LOWBIT])
def test_mul_mat_threads_and_batches(name):
    rng = np.random.default_rng(7)
    w = exact_weights(name, rng, 48, 512)
    x = rng.standard_normal((3, 21, 512)).astype(np.float32)
    _check_mul_mat(name, w, x, n_threads=2)
    y1 = ggml.mul_mat(name, ggml.quantize(name, w), 48, x, 1)
    y2 = ggml.mul_mat(name, ggml.quantize(name, w), 48, x, 2)
    np.testing.assert_array_equal(y1, y2)  # threads split work, never a sum


# ---- GGUF checks in sd.cpp's loader ------------------------------------------------------------

def _load_error(path) -> str:
    with pytest.raises(_core.EngineError) as err:
        _core.Context(diffusion_model=str(path))
    return str(err.value)


@pytest.mark.parametrize("type_id", [43, 64, 99, 100, 141, 144])
def test_ids_between_and_after_the_types_are_refused(tmp_path, type_id):
    path = write_gguf(tmp_path / "gap.gguf", [RawTensor("img_in.weight", (128, 2), type_id, b"\0" * 256)])
    assert f"has unknown ggml type id {type_id}" in _load_error(path)


def test_legacy_prismml_q2_0_layout_is_refused(tmp_path):
    # PrismML's early "Q2_0": 128-element blocks of 34 bytes under id 42 (now 64 elements, 18 bytes).
    # A 128 x 64 tensor: 64 legacy blocks = 2176 bytes, where id 42 today needs 128 x 18 = 2304.
    legacy = b"\0" * (64 * 34)
    path = write_gguf(tmp_path / "legacy.gguf", [
        RawTensor("double_blocks.0.img_attn.qkv.weight", (128, 64), 42, legacy),
        RawTensor("img_in.weight", (32, 1), 0, b"\0" * 128),
    ])
    msg = _load_error(path)
    assert "double_blocks.0.img_attn.qkv.weight" in msg
    assert "legacy Q2_0 layout" in msg and "PQ2_0" in msg


def test_layout_contract_mismatch_is_refused(tmp_path):
    data = b"\0" * (2 * 34)
    path = write_gguf(tmp_path / "contract.gguf", [RawTensor("img_in.weight", (128, 2), 142, data)],
                      kv={"bonsai_sd.types": ["142:pq2_0:128:34:2"]})
    msg = _load_error(path)
    assert "layout contract" in msg and "142:pq2_0:128:34:2" in msg and "142:pq2_0:128:34:1" in msg


def test_layout_contract_must_declare_private_ids(tmp_path):
    path = write_gguf(tmp_path / "partial.gguf", [RawTensor("img_in.weight", (128, 2), 143, b"\0" * 56)],
                      kv={"bonsai_sd.types": ["142:pq2_0:128:34:1"]})
    assert "does not declare it" in _load_error(path)


@pytest.mark.parametrize("name,accepted", [("q1_0", True), ("q2_0", True), ("pq2_0", True), ("ptq1_0", True),
                                           ("pq1_0", False)])
def test_sd_cli_type_option_knows_the_new_names(sd_cli, tmp_path, name, accepted):
    # Argument parsing happens before the (missing) model is opened.
    proc = subprocess.run([sd_cli, "-M", "convert", "-m", str(tmp_path / "missing.safetensors"),
                           "--type", name, "-o", str(tmp_path / "out.gguf")],
                          capture_output=True, text=True, timeout=60)
    log = proc.stdout + proc.stderr
    assert (f"invalid weight format {name}" not in log) == accepted, log
    assert ("init model loader from file failed" in log) == accepted, log
    assert not (tmp_path / "out.gguf").exists()
