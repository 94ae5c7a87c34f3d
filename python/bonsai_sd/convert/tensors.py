"""Source tensors as the converter sees them: dense 16/32-bit, or group-128 low-bit rows.

Every low-bit source (an MLX pack, a Gemlite pack, an exact BF16 master, or a 16-bit model
quantized on the fly) produces the same canonical rows: the 2-bit codes (ternary, LSB-first,
four per byte: exactly PQ2_0's code bytes) or sign bits (binary, eight per byte: exactly
Q1_0's), plus one fp16 scale d per 128 elements. Each source also gives its *own*
dequantization, which `--verify` compares against the output's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from .errors import ConvertError

GROUP = 128
Weights = Literal["ternary", "binary"]


class TensorRef(Protocol):
    """A stored tensor read on demand (safetensors or torch zip)."""

    name: str
    dtype: str  # safetensors dtype code: BF16, F16, F32, U32, U8, ...
    shape: tuple[int, ...]

    def read_rows(self, start: int, stop: int) -> np.ndarray: ...

    def read(self) -> np.ndarray: ...


def to_float32(data: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """Stored values -> float32, exactly (BF16 arrives as raw uint16 bits)."""
    if dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F32"):
        return data.astype(np.float32)
    raise ConvertError(f"{where}: dtype {dtype} is not a 16- or 32-bit float")


def fp16_exact(values: np.ndarray, where: str, what: str = "scale") -> np.ndarray:
    """float32 -> float16, refusing any value that fp16 cannot hold exactly."""
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16)
        bad = ~(half.astype(np.float32) == values) | ~np.isfinite(values)
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), values.shape)
        raise ConvertError(f"{where}: {what} {float(values[idx])!r} at {tuple(int(i) for i in idx)} is outside fp16 range "
                           f"(not exactly representable as fp16), so the conversion would not be lossless "
                           f"({int(bad.sum())} such values)")
    return half


@dataclass
class PackedRows:
    weights: Weights
    payload: np.ndarray  # uint8 [rows, K/4] (ternary codes) or [rows, K/8] (sign bits)
    d: np.ndarray  # float16 [rows, K/128]


class SourceTensor(Protocol):
    name: str  # the source's own (diffusers or BFL) name
    shape: tuple[int, ...]  # logical [out, in] (or [n] for vectors)
    lowbit: bool
    chunk_rows: int

    def float_rows(self, start: int, stop: int) -> np.ndarray:
        """The source's own dequantization of these rows, float32."""
        ...


def _chunk_rows(row_elements: int) -> int:
    return max(1, (4 << 20) // max(row_elements, 1))


# ---- bit helpers -----------------------------------------------------------------------------

def unpack_codes(payload: np.ndarray, weights: Weights) -> np.ndarray:
    """[rows, bytes] -> [rows, elements] codes (0..3) or bits (0/1), LSB-first."""
    if weights == "binary":
        return np.unpackbits(payload, axis=1, bitorder="little")
    shifts = np.array([0, 2, 4, 6], np.uint8)
    return ((payload[:, :, None] >> shifts) & 3).reshape(payload.shape[0], -1)


def pack_codes(codes: np.ndarray, weights: Weights) -> np.ndarray:
    if weights == "binary":
        return np.packbits(codes.astype(np.uint8), axis=1, bitorder="little")
    c = codes.astype(np.uint8).reshape(codes.shape[0], -1, 4)
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


def refuse_code_3(payload: np.ndarray, where: str, first_row: int) -> None:
    """A 2-bit field equal to 3 (both bits set) is not a ternary code."""
    hits = (payload & (payload >> 1) & 0x55) != 0
    if hits.any():
        row, byte = (int(i) for i in np.unravel_index(int(np.flatnonzero(hits)[0]), hits.shape))
        field = next(k for k in range(4) if (payload[row, byte] >> (2 * k)) & 3 == 3)
        raise ConvertError(f"{where}: row {first_row + row}, element {4 * byte + field} has code 3, which is not "
                           f"ternary (codes must be 0, 1, 2)")


def _dequant_affine(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """w = scale * q + bias per 128-group, float32."""
    rows = codes.shape[0]
    q = codes.reshape(rows, -1, GROUP).astype(np.float32)
    return (q * scale[:, :, None] + bias[:, :, None]).reshape(rows, -1)


# ---- dense ------------------------------------------------------------------------------------

class DenseSource:
    lowbit = False

    def __init__(self, name: str, ref: TensorRef, where: str):
        if ref.dtype not in ("BF16", "F16", "F32"):
            raise ConvertError(f"{where}: tensor {ref.name!r} has dtype {ref.dtype}, expected a 16- or 32-bit float")
        self.name, self.ref, self.where = name, ref, where
        self.shape = tuple(ref.shape) or (1,)  # a 0-d value is stored as one element
        self.dtype = ref.dtype
        self.chunk_rows = _chunk_rows(int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1)

    def float_rows(self, start: int, stop: int) -> np.ndarray:
        return to_float32(self.ref.read_rows(start, stop), self.dtype, f"{self.where}: {self.ref.name}")


# ---- affine packs (MLX, Gemlite): w = scale * q + bias per group of 128 ------------------------

class AffinePackSource:
    """One quantized linear of an MLX or Gemlite pack.

    `codes_rows(start, stop)` gives the packed code bytes [rows, K * bits / 8] (LSB-first), and
    `affine_rows` the float32 scales and biases [rows, K / 128]. Ternary packs need q <= 2 and
    bias == -scale (d = scale); binary packs need scale == -2 * bias (d = -bias).
    """

    lowbit = True
    exact = True

    def __init__(self, name: str, shape: tuple[int, int], weights: Weights, where: str, tensor_names: dict[str, str],
                 chunk_rows: int | None = None):
        self.name, self.shape, self.weights, self.where = name, shape, weights, where
        self.tensor_names = tensor_names  # role ('weight', 'scales', 'biases') -> stored tensor name
        self.chunk_rows = chunk_rows or _chunk_rows(shape[1])

    def codes_rows(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def affine_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def packed_rows(self, start: int, stop: int) -> PackedRows:
        payload = self.codes_rows(start, stop)
        scale, bias = self.affine_rows(start, stop)
        bias_name = f"{self.where}: tensor {self.tensor_names['biases']!r}"
        if self.weights == "ternary":
            refuse_code_3(payload, f"{self.where}: tensor {self.tensor_names['weight']!r}", start)
            bad = bias != -scale
            if bad.any():
                r, g = (int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape))
                raise ConvertError(f"{bias_name}: row {start + r}, group {g}: bias {float(bias[r, g])!r} != -scale "
                                   f"{float(-scale[r, g])!r}, so the weights are not ternary {{-s, 0, +s}}")
            d = fp16_exact(scale, f"{self.where}: tensor {self.tensor_names['scales']!r}")
        else:
            bad = scale != -2 * bias
            if bad.any():
                r, g = (int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape))
                raise ConvertError(f"{bias_name}: row {start + r}, group {g}: scale {float(scale[r, g])!r} != -2 * bias "
                                   f"({float(-2 * bias[r, g])!r}), so the weights are not binary {{-s, +s}}")
            d = fp16_exact(-bias, bias_name, "scale (-bias)")
        return PackedRows(self.weights, payload, d)

    def float_rows(self, start: int, stop: int) -> np.ndarray:
        scale, bias = self.affine_rows(start, stop)
        return _dequant_affine(unpack_codes(self.codes_rows(start, stop), self.weights), scale, bias)


class MlxLinear(AffinePackSource):
    """weight U32 [out, K * bits / 32] (LSB-first), scales and biases [out, K / 128]."""

    def __init__(self, name: str, weight: TensorRef, scales: TensorRef, biases: TensorRef, weights: Weights,
                 where: str):
        super().__init__(name, (weight.shape[0], scales.shape[1] * GROUP), weights, where,
                         {"weight": weight.name, "scales": scales.name, "biases": biases.name})
        self.weight, self.scales, self.biases = weight, scales, biases

    def codes_rows(self, start: int, stop: int) -> np.ndarray:
        words = self.weight.read_rows(start, stop)
        return np.ascontiguousarray(words.astype("<u4", copy=False)).view(np.uint8).reshape(stop - start, -1)

    def affine_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return (to_float32(self.scales.read_rows(start, stop), self.scales.dtype, self.where),
                to_float32(self.biases.read_rows(start, stop), self.biases.dtype, self.where))


class GemliteLinear(AffinePackSource):
    """W_q uint8 [K * bits / 8, out] (the transpose of LSB-first row packing); scales and zeros
    float32 [K / 128, out]; w = q * scale + zeros. Read a whole tensor at a time (it is small)."""

    def __init__(self, name: str, w_q: TensorRef, scales: TensorRef, zeros: TensorRef, shape: tuple[int, int],
                 weights: Weights, where: str):
        super().__init__(name, shape, weights, where, {"weight": w_q.name, "scales": scales.name, "biases": zeros.name},
                         chunk_rows=shape[0])
        self.w_q, self.scales, self.zeros = w_q, scales, zeros

    def codes_rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.w_q.read().T[start:stop])

    def affine_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        scale = to_float32(self.scales.read(), self.scales.dtype, self.where).T[start:stop]
        zeros = to_float32(self.zeros.read(), self.zeros.dtype, self.where).T[start:stop]
        return np.ascontiguousarray(scale), np.ascontiguousarray(zeros)


# ---- float masters: exact requantization, or lossy post-training quantization -----------------

def classify_groups(values: np.ndarray) -> Weights | None:
    """'binary' if every 128-group is {-s, +s}, 'ternary' if {-s, 0, +s}, else None."""
    a = np.abs(values.reshape(values.shape[0], -1, GROUP))
    s = a.max(axis=2, keepdims=True)
    if np.all(a == s):
        return "binary"
    if np.all((a == s) | (a == 0)):
        return "ternary"
    return None


class _DenseLowbitLinear:
    """A 16-bit linear of the source that is written as a low-bit type (packed_rows: the subclass's)."""

    lowbit = True

    def __init__(self, name: str, ref: TensorRef, weights: Weights, where: str):
        self.dense = DenseSource(name, ref, where)
        self.name, self.shape, self.weights, self.where = name, self.dense.shape, weights, where
        self.chunk_rows = self.dense.chunk_rows

    def float_rows(self, start: int, stop: int) -> np.ndarray:
        return self.dense.float_rows(start, stop)


class FloatMasterLinear(_DenseLowbitLinear):
    """A 16-bit linear whose values are exactly {-s, 0, +s} (ternary) or {-s, +s} (binary) per
    128-group: requantized exactly, refusing any group that is not."""

    exact = True

    def packed_rows(self, start: int, stop: int) -> PackedRows:
        x = self.float_rows(start, stop)
        groups = x.reshape(x.shape[0], -1, GROUP)
        a = np.abs(groups)
        s = a.max(axis=2)
        allowed = (a == s[:, :, None]) if self.weights == "binary" else ((a == s[:, :, None]) | (a == 0))
        if not allowed.all():
            r, g, k = (int(i) for i in np.unravel_index(int(np.flatnonzero(~allowed)[0]), allowed.shape))
            what = "{-s, +s}" if self.weights == "binary" else "{-s, 0, +s}"
            raise ConvertError(f"{self.where}: tensor {self.dense.ref.name!r}: row {start + r}, element "
                               f"{g * GROUP + k} is {float(groups[r, g, k])!r} but its 128-group's magnitude is "
                               f"{float(s[r, g])!r}: the weights are not exactly {self.weights} {what}")
        d = fp16_exact(s, f"{self.where}: tensor {self.dense.ref.name!r}", "group magnitude")
        codes = (x > 0).astype(np.uint8) if self.weights == "binary" else (np.sign(x) + 1).astype(np.uint8)
        return PackedRows(self.weights, pack_codes(codes, self.weights), d)


class LossyLinear(_DenseLowbitLinear):
    """Post-training quantization of a 16-bit linear, per 128-group along the input:
    binary d = mean |x|, bit = (x >= 0); ternary ("absmean", as BitNet b1.58)
    d = mean |x|, code = clamp(round(x / d), -1, 1) + 1. Lossy by construction."""

    exact = False

    def packed_rows(self, start: int, stop: int) -> PackedRows:
        x = self.float_rows(start, stop)
        groups = x.reshape(x.shape[0], -1, GROUP)
        mean_abs = np.abs(groups).mean(axis=2, dtype=np.float64)
        with np.errstate(over="ignore"):
            d = np.minimum(mean_abs, 65504).astype(np.float16)
        if self.weights == "binary":
            codes = (groups >= 0).astype(np.uint8)
        else:
            d32 = d.astype(np.float32)[:, :, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(d32 > 0, groups / np.where(d32 > 0, d32, 1), 0)
            codes = (np.clip(np.where(ratio >= 0.5, 1, np.where(ratio <= -0.5, -1, 0)), -1, 1) + 1).astype(np.uint8)
        return PackedRows(self.weights, pack_codes(codes.reshape(x.shape[0], -1), self.weights), d)
