"""Canonical low-bit rows and float rows -> GGUF tensor bytes."""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize, quantize as gguf_quantize

from .. import lowbit
from ..lowbit import PQ2_0, PTQ1_0, Q1_0, Q2_0, LowbitType
from .errors import ConvertError
from .tensors import GROUP, PackedRows

F32, F16, BF16, Q8_0 = (int(GGMLQuantizationType[n]) for n in ("F32", "F16", "BF16", "Q8_0"))
DENSE_TYPE_NAMES = {"f32": F32, "f16": F16, "bf16": BF16, "q8_0": Q8_0}


def encode_lowbit(rows: PackedRows, t: LowbitType) -> np.ndarray:
    """[rows, row_bytes] of type t. A Bonsai ternary group of 128 is one PQ2_0 block (d, 32 code
    bytes), two Q2_0 blocks (same d twice) or one PTQ1_0 block; a binary group is one Q1_0 block."""
    n, groups = rows.d.shape
    d_bytes = np.ascontiguousarray(rows.d.astype("<f2")).view(np.uint8).reshape(n, groups, 2)
    if rows.weights == "binary":
        if t != Q1_0:
            raise ConvertError(f"binary weights convert to q1_0, not {t.name.lower()}")
        return np.concatenate([d_bytes, rows.payload.reshape(n, groups, GROUP // 8)], axis=2).reshape(n, -1)
    if t == Q1_0:
        raise ConvertError("ternary weights cannot be stored as q1_0 (binary); use pq2_0, ptq1_0 or q2_0")
    codes = rows.payload.reshape(n, groups, GROUP // 4)
    pq2 = np.concatenate([d_bytes, codes], axis=2)
    if t == PQ2_0:
        return pq2.reshape(n, -1)
    if t == Q2_0:
        return lowbit.pq2_0_to_q2_0(pq2).reshape(n, -1)
    if t == PTQ1_0:
        return lowbit.pq2_0_to_ptq1_0(pq2).reshape(n, -1)
    raise ConvertError(f"unknown low-bit type {t.name}")


def exact_in(values: np.ndarray) -> dict[int, bool]:
    """Whether F16 and BF16 hold every one of these float32 values exactly."""
    with np.errstate(over="ignore", invalid="ignore"):
        f16 = np.array_equal(values.astype(np.float16).astype(np.float32), values, equal_nan=True)
    bf16 = not (np.ascontiguousarray(values, np.float32).view(np.uint32) & 0xFFFF).any()
    return {F16: f16, BF16: bf16, F32: True}


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (exact when the low 16 bits are zero)."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    rounded = np.where(np.isnan(values), bits | 0x00400000, rounded)  # keep NaN a NaN
    return (rounded >> 16).astype("<u2")


def encode_dense(values: np.ndarray, type_id: int) -> np.ndarray:
    """float32 rows -> bytes of F32, F16, BF16 or Q8_0."""
    if type_id == F32:
        return values.astype("<f4")
    if type_id == F16:
        with np.errstate(over="ignore"):
            return values.astype("<f2")
    if type_id == BF16:
        return _bf16_bits(values)
    if type_id == Q8_0:
        return gguf_quantize(values.astype(np.float32), GGMLQuantizationType.Q8_0)
    raise ConvertError(f"unsupported dense output type id {type_id}")


def decode(data: np.ndarray, type_id: int, rows: int) -> np.ndarray:
    """Output bytes of `rows` rows -> float32 [rows, row_elements] (for --verify)."""
    data = data.reshape(rows, -1)
    for t in lowbit.LOWBIT_TYPES:
        if t.type_id == type_id:
            return lowbit.dequantize(data, t)
    if type_id == F32:
        return data.view("<f4")
    if type_id == F16:
        return data.view("<f2").astype(np.float32)
    if type_id == BF16:
        return (data.view("<u2").astype(np.uint32) << 16).view(np.float32)
    return gguf_dequantize(data, GGMLQuantizationType(type_id)).reshape(rows, -1)
