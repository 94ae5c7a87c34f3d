"""The NumPy reference codecs (bonsai_sd.lowbit) against the C codecs inside ggml
(bonsai_sd._core.ggml), two implementations written independently from the layout spec: they
must agree byte for byte on quantization and bit for bit on dequantization."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from bonsai_sd import lowbit
from bonsai_sd.lowbit import LOWBIT_TYPES, PTQ1_0, Q1_0


def _ggml():
    from bonsai_sd import _core

    ggml = getattr(_core, "ggml", None)
    names = {row["name"].lower() for row in _core.type_table()}
    if ggml is None or not {t.name.lower() for t in LOWBIT_TYPES} <= names:
        pytest.skip("this build's ggml does not have the low-bit types")
    return ggml


ROWS, K = 16, 512


def _inputs(t: lowbit.LowbitType, kind: str, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS, K)).astype(np.float32)
    if kind == "ties":  # x / d lands exactly on +-0.5 (d = 1 in every block)
        x = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 0.25, -0.75], (ROWS, K)).astype(np.float32)
        x[:, :: t.block_elements] = 1.0
    elif kind == "zero blocks":
        x[:, : 2 * t.block_elements] = 0.0
    elif kind == "subnormal scales":
        x *= 1e-6
    elif kind == "overflowing scales":
        x *= 1e5
    elif kind == "exact":
        scales = rng.integers(1, 0x7BFF, (ROWS, K // t.block_elements), dtype=np.uint16).view(np.float16)
        codes = rng.choice([-1.0, 1.0] if t == Q1_0 else [-1.0, 0.0, 1.0], (ROWS, K)).astype(np.float32)
        x = (codes.reshape(ROWS, -1, t.block_elements) * scales.astype(np.float32)[..., None]).reshape(ROWS, K)
    return x


@pytest.mark.parametrize("kind", ["normal", "ties", "zero blocks", "subnormal scales", "overflowing scales", "exact"])
@pytest.mark.parametrize("t", LOWBIT_TYPES, ids=lambda t: t.name)
def test_quantize_agrees_with_ggml(t, kind):
    ggml = _ggml()
    x = _inputs(t, kind, np.random.default_rng(zlib.crc32(f"{t.name} {kind}".encode())))
    with np.errstate(over="ignore"):
        ours = lowbit.quantize(x, t).tobytes()
    assert ours == ggml.quantize(t.name.lower(), x)


@pytest.mark.parametrize("t", LOWBIT_TYPES, ids=lambda t: t.name)
def test_dequantize_agrees_with_ggml_on_arbitrary_bytes(t):
    ggml = _ggml()
    rng = np.random.default_rng(t.type_id)
    raw = rng.integers(0, 256, (ROWS, t.row_bytes(K)), dtype=np.uint8)
    blocks = raw.reshape(-1, t.block_bytes)
    d = rng.standard_normal(blocks.shape[0]).astype("<f2").view(np.uint8).reshape(-1, 2)
    offset = t.block_bytes - 2 if t == PTQ1_0 else 0
    blocks[:, offset:offset + 2] = d  # finite scales; every code and trit byte left random
    assert np.array_equal(lowbit.dequantize(raw, t), ggml.dequantize(t.name.lower(), raw.tobytes(), ROWS, K))
