"""NumPy reference codecs of the four low-bit tensor types (DESIGN §4).

Written from the layout specification, independently of the C codecs in cpp/lowbit, so the
two can be checked against each other. Every function works on whole blocks and is
vectorised over them.

    Q1_0   id  41  128 elements  18 B  fp16 d, 16 B of sign bits (1 -> +d, 0 -> -d)
    Q2_0   id  42   64 elements  18 B  fp16 d, 16 B of 2-bit codes (c -> (c - 1) d)
    PQ2_0  id 142  128 elements  34 B  fp16 d, 32 B of 2-bit codes
    PTQ1_0 id 143  128 elements  28 B  24 B qs + 2 B qh of base-3 trits, then fp16 d

All multi-byte fields are little-endian. Blocks run along a row (ggml ne[0]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUT_VERSION = 1


@dataclass(frozen=True)
class LowbitType:
    name: str
    type_id: int
    block_elements: int
    block_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.block_bytes / self.block_elements

    @property
    def contract_entry(self) -> str:
        """This type's entry in the GGUF layout contract (key `bonsai_sd.types`), with ggml's
        own (lower-case) type name, as the engine writes and checks it."""
        return f"{self.type_id}:{self.name.lower()}:{self.block_elements}:{self.block_bytes}:{LAYOUT_VERSION}"

    def row_bytes(self, n_elements: int) -> int:
        if n_elements % self.block_elements:
            raise ValueError(f"{self.name}: a row of {n_elements} elements is not a whole number of "
                             f"{self.block_elements}-element blocks")
        return n_elements // self.block_elements * self.block_bytes


Q1_0 = LowbitType("Q1_0", 41, 128, 18)
Q2_0 = LowbitType("Q2_0", 42, 64, 18)
PQ2_0 = LowbitType("PQ2_0", 142, 128, 34)
PTQ1_0 = LowbitType("PTQ1_0", 143, 128, 28)

LOWBIT_TYPES: tuple[LowbitType, ...] = (Q1_0, Q2_0, PQ2_0, PTQ1_0)
TERNARY_TYPES: tuple[LowbitType, ...] = (PQ2_0, PTQ1_0, Q2_0)


def lowbit_type(key: str | int) -> LowbitType:
    """Look a type up by name (any case) or ggml id."""
    for t in LOWBIT_TYPES:
        if key == t.type_id or (isinstance(key, str) and key.upper() == t.name):
            return t
    raise KeyError(f"not a low-bit type: {key!r} (known: {', '.join(t.name.lower() for t in LOWBIT_TYPES)})")


# ---- block views ---------------------------------------------------------------------------

def _blocks(data: np.ndarray, t: LowbitType) -> np.ndarray:
    """View raw bytes as [n_blocks, block_bytes]."""
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if raw.size % t.block_bytes:
        raise ValueError(f"{t.name}: {raw.size} bytes is not a whole number of {t.block_bytes}-byte blocks")
    return raw.reshape(-1, t.block_bytes)


def _scale_offset(t: LowbitType) -> int:
    return t.block_bytes - 2 if t == PTQ1_0 else 0


def block_scales(data: np.ndarray, t: LowbitType) -> np.ndarray:
    """The fp16 scale d of every block."""
    blocks = _blocks(data, t)
    off = _scale_offset(t)
    return np.ascontiguousarray(blocks[:, off:off + 2]).view("<f2").reshape(-1)


# ---- bit and code packing ------------------------------------------------------------------

def _pack_2bit(codes: np.ndarray) -> np.ndarray:
    """[n, k] codes 0..3 -> [n, k/4] bytes; element j at bits 2*(j % 4) of byte j / 4."""
    c = codes.astype(np.uint8, copy=False).reshape(codes.shape[0], -1, 4)
    return c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)


def _unpack_2bit(qs: np.ndarray) -> np.ndarray:
    shifts = np.array([0, 2, 4, 6], np.uint8)
    return ((qs[..., None] >> shifts) & 3).reshape(qs.shape[0], -1)


# PTQ1_0 trit placement: which element each trit of each byte holds. A byte carries five
# trits, most significant first; qh bytes carry four and a zero in the fifth place.
#   qs[m],      m < 16: trit n is element 16n + m       (elements   0..79)
#   qs[16 + m], m < 8:  trit n is element 80 + 8n + m   (elements  80..119)
#   qh[h],      h < 2:  trit n is element 120 + 2n + h  (elements 120..127)
def _ptq1_0_trit_elements() -> np.ndarray:
    table = np.full((26, 5), -1, np.int64)
    for m in range(16):
        table[m] = [16 * n + m for n in range(5)]
    for m in range(8):
        table[16 + m] = [80 + 8 * n + m for n in range(5)]
    for h in range(2):
        table[24 + h, :4] = [120 + 2 * n + h for n in range(4)]
    return table


_TRIT_ELEMENTS = _ptq1_0_trit_elements()
_POW3_MSB_FIRST = np.array([81, 27, 9, 3, 1], np.uint16)
_POW3 = np.array([1, 3, 9, 27, 81], np.uint16)


def _pack_trits(codes: np.ndarray) -> np.ndarray:
    """[n, 128] trits -> [n, 26] bytes (qs then qh)."""
    padded = np.concatenate([codes.astype(np.uint16, copy=False), np.zeros((codes.shape[0], 1), np.uint16)], axis=1)
    trits = padded[:, _TRIT_ELEMENTS]  # [n, 26, 5]; index -1 picks the zero pad
    value = (trits * _POW3_MSB_FIRST).sum(axis=-1, dtype=np.uint16)  # 0..242
    # Store ceil(value * 256 / 243): trit n then reads back as ((byte * 3^n) mod 256) * 3 >> 8.
    return ((value * 256 + 242) // 243).astype(np.uint8)


def _unpack_trits(packed: np.ndarray) -> np.ndarray:
    """[n, 26] bytes -> [n, 128] trits."""
    shifted = (packed[..., None].astype(np.uint16) * _POW3) & 0xFF  # [n, 26, 5]
    trits = ((shifted * 3) >> 8).astype(np.uint8)
    out = np.empty((packed.shape[0], 129), np.uint8)
    out[:, _TRIT_ELEMENTS] = trits  # qh's fifth (zero) trits all land in the spare column 128
    return out[:, :128]


# ---- encode / decode: codes + fp16 scales <-> blocks ------------------------------------------

def encode(t: LowbitType, codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Build blocks from per-element codes and per-block fp16 scales.

    codes: [n_blocks, block_elements] (Q1_0: bits 0/1; Q2_0/PQ2_0: 0..3; PTQ1_0: 0..2).
    d:     [n_blocks], converted to fp16 (exact when it already is fp16).
    Returns [n_blocks, block_bytes] uint8.
    """
    codes = np.asarray(codes).reshape(-1, t.block_elements)
    d16 = np.asarray(d).astype("<f2").reshape(-1, 1)
    if d16.shape[0] != codes.shape[0]:
        raise ValueError(f"{t.name}: {codes.shape[0]} blocks of codes but {d16.shape[0]} scales")
    if t == Q1_0:
        payload = np.packbits(codes.astype(np.uint8, copy=False) & 1, axis=1, bitorder="little")
    elif t == PTQ1_0:
        if codes.size and codes.max() > 2:
            raise ValueError("PTQ1_0 holds trits 0..2 only: a code 3 cannot be stored")
        payload = _pack_trits(codes)
    else:
        payload = _pack_2bit(codes)
    scale = d16.view(np.uint8)
    parts = [payload, scale] if t == PTQ1_0 else [scale, payload]
    return np.concatenate(parts, axis=1)


def decode(data: np.ndarray, t: LowbitType) -> tuple[np.ndarray, np.ndarray]:
    """Blocks -> (codes [n_blocks, block_elements] uint8, d [n_blocks] fp16)."""
    blocks = _blocks(data, t)
    d = block_scales(blocks, t)
    if t == Q1_0:
        codes = np.unpackbits(blocks[:, 2:], axis=1, bitorder="little")
    elif t == PTQ1_0:
        codes = _unpack_trits(blocks[:, :26])
    else:
        codes = _unpack_2bit(blocks[:, 2:])
    return codes, d


# ---- quantize / dequantize -------------------------------------------------------------------

def _f32_blocks(x: np.ndarray, t: LowbitType) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape and x.shape[-1] % t.block_elements:
        raise ValueError(f"{t.name}: row length {x.shape[-1]} is not a multiple of {t.block_elements}")
    return x.reshape(-1, t.block_elements)


def quantize(x: np.ndarray, t: LowbitType) -> np.ndarray:
    """Reference quantizer (ggml's semantics); rows [..., k] -> bytes [..., k / block * block_bytes].

    Q1_0: d = mean |x| over the block (float32, summed in element order), bit = (x >= 0).
    Q2_0, PQ2_0, PTQ1_0: d = max |x|, code = clamp(round(x / d) + 1) with round half away
    from zero (x / d lies in [-1, 1], so codes are 0..2). Exact for inputs that are
    {-s, +s} (binary) or {-s, 0, +s} (ternary) per block with s representable in fp16.
    """
    x = np.asarray(x, dtype=np.float32)
    blocks = _f32_blocks(x, t)
    if t == Q1_0:
        # cumsum accumulates in element order, as the scalar reference does.
        total = np.cumsum(np.abs(blocks), axis=1, dtype=np.float32)[:, -1]
        d = total / np.float32(t.block_elements)
        codes = (blocks >= 0).astype(np.uint8)
    else:
        d = np.abs(blocks).max(axis=1)
        safe = np.where(d == 0, np.float32(1), d)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = blocks / safe
        rounded = np.where(ratio >= 0.5, 1, np.where(ratio <= -0.5, -1, 0))
        codes = np.where(d[:, None] == 0, 1, rounded + 1).astype(np.uint8)
    with np.errstate(over="ignore"):
        out = encode(t, codes, d.astype(np.float16))
    return out.reshape(*x.shape[:-1], -1) if x.ndim > 1 else out.reshape(-1)


def dequantize(data: np.ndarray, t: LowbitType) -> np.ndarray:
    """Bytes [..., row_bytes] -> float32 [..., row_elements]."""
    data = np.asarray(data)
    codes, d = decode(data, t)
    d32 = d.astype(np.float32)[:, None]
    if t == Q1_0:
        values = np.where(codes == 1, d32, -d32)
    else:
        values = (codes.astype(np.float32) - 1) * d32
    if data.ndim > 1:
        return values.reshape(*data.shape[:-1], -1)
    return values.reshape(-1)


# ---- lossless transcodes between the ternary layouts -------------------------------------------

def _check_ternary(codes: np.ndarray, what: str) -> None:
    bad = np.flatnonzero((codes > 2).any(axis=1))
    if bad.size:
        raise ValueError(f"{what}: block {int(bad[0])} has a code 3, which is not ternary "
                         f"({bad.size} such blocks)")


def pq2_0_to_ptq1_0(data: np.ndarray) -> np.ndarray:
    codes, d = decode(data, PQ2_0)
    _check_ternary(codes, "PQ2_0 -> PTQ1_0")
    return encode(PTQ1_0, codes, d)


def ptq1_0_to_pq2_0(data: np.ndarray) -> np.ndarray:
    codes, d = decode(data, PTQ1_0)
    return encode(PQ2_0, codes, d)


def pq2_0_to_q2_0(data: np.ndarray) -> np.ndarray:
    """One 128-block -> two 64-blocks with the same d: a byte shuffle."""
    blocks = _blocks(data, PQ2_0)
    out = np.empty((blocks.shape[0], 2, Q2_0.block_bytes), np.uint8)
    out[:, :, :2] = blocks[:, None, :2]
    out[:, 0, 2:] = blocks[:, 2:18]
    out[:, 1, 2:] = blocks[:, 18:34]
    return out.reshape(-1, Q2_0.block_bytes)


def q2_0_to_pq2_0(data: np.ndarray) -> np.ndarray:
    """Two 64-blocks with the same d -> one 128-block; refuses halves whose d differ."""
    blocks = _blocks(data, Q2_0)
    if blocks.shape[0] % 2:
        raise ValueError(f"Q2_0 -> PQ2_0: {blocks.shape[0]} blocks is an odd number (128-element rows needed)")
    pairs = blocks.reshape(-1, 2, Q2_0.block_bytes)
    differ = np.flatnonzero((pairs[:, 0, :2] != pairs[:, 1, :2]).any(axis=1))
    if differ.size:
        raise ValueError(f"Q2_0 -> PQ2_0: blocks {2 * int(differ[0])} and {2 * int(differ[0]) + 1} have "
                         f"different scales, so they are not one 128-element group")
    out = np.empty((pairs.shape[0], PQ2_0.block_bytes), np.uint8)
    out[:, :2] = pairs[:, 0, :2]
    out[:, 2:18] = pairs[:, 0, 2:]
    out[:, 18:] = pairs[:, 1, 2:]
    return out


def transcode(data: np.ndarray, src: LowbitType, dst: LowbitType) -> np.ndarray:
    """Lossless conversion between PQ2_0, PTQ1_0 and Q2_0 (through PQ2_0); [n_blocks, bytes] out."""
    if src == dst:
        return _blocks(data, src).copy()
    if {src, dst} - set(TERNARY_TYPES):
        raise ValueError(f"no lossless transcode from {src.name} to {dst.name}")
    to_pq = {PQ2_0: lambda b: _blocks(b, PQ2_0), PTQ1_0: ptq1_0_to_pq2_0, Q2_0: q2_0_to_pq2_0}
    from_pq = {PQ2_0: lambda b: b, PTQ1_0: pq2_0_to_ptq1_0, Q2_0: pq2_0_to_q2_0}
    return from_pq[dst](to_pq[src](data))
