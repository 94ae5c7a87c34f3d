"""The converter's streaming core: planned output tensors, each made of row segments of
source tensors, written chunk by chunk and verified against the source's own dequantization."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ggufio import GGUFStreamWriter, read_gguf, type_nbytes
from .encode import BF16, F16, F32, Q8_0, decode, encode_dense, exact_in
from .errors import ConvertError
from .tensors import SourceTensor

Progress = Callable[[int], None]
# Encodes rows [start, stop) of a source tensor into output bytes.
ChunkEncoder = Callable[[SourceTensor, int, int], np.ndarray]


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one source tensor."""

    source: SourceTensor
    start: int
    stop: int


@dataclass
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    type_id: int
    segments: list[Segment]
    lossless: bool
    encode: ChunkEncoder

    @property
    def n_bytes(self) -> int:
        return type_nbytes(self.type_id, int(np.prod(self.shape, dtype=np.int64)))


@dataclass
class TensorCheck:
    name: str
    max_abs_diff: float
    lossless: bool


@dataclass
class VerifyReport:
    checks: list[TensorCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.max_abs_diff == 0 for c in self.checks if c.lossless)


def chunks(seg: Segment) -> Iterator[tuple[int, int]]:
    step = max(1, seg.source.chunk_rows)
    for start in range(seg.start, seg.stop, step):
        yield start, min(start + step, seg.stop)


def dense_encoder(type_id: int) -> ChunkEncoder:
    return lambda src, start, stop: encode_dense(src.float_rows(start, stop), type_id)


def dense_type(segments: list[Segment], skip_type: int | None, ndim: int) -> tuple[int, bool]:
    """(output type, lossless) of a float tensor: the narrowest exact of F16/BF16/F32, or the
    --skip-type choice (every float tensor takes it, except q8_0, which only 2-D weights take)."""
    exact = {F16: True, BF16: True, F32: True}
    for seg in segments:
        for start, stop in chunks(seg):
            found = exact_in(seg.source.float_rows(start, stop))
            exact = {t: ok and found[t] for t, ok in exact.items()}
    if skip_type is None or (skip_type == Q8_0 and ndim != 2):
        return next(t for t in (F16, BF16, F32) if exact[t]), True
    return skip_type, exact.get(skip_type, False)


def write_outputs(writer: GGUFStreamWriter, outputs: list[OutputTensor], progress: Progress | None = None) -> None:
    for out in outputs:
        for seg in out.segments:
            for start, stop in chunks(seg):
                data = out.encode(seg.source, start, stop)
                writer.write(out.name, data)
                if progress:
                    progress(data.nbytes)


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want|; a NaN on one side only counts as infinitely far."""
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return float("inf")
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return float(np.nanmax(diff)) if diff.size and not np.isnan(diff).all() else 0.0


def verify_outputs(path: Path, outputs: list[OutputTensor], progress: Progress | None = None) -> VerifyReport:
    """Dequantize every output tensor and compare it with the source's own dequantization."""
    contents = read_gguf(path)
    report = VerifyReport()
    for out in outputs:
        entry = contents.tensor(out.name)
        if entry.type_id != out.type_id or entry.shape != tuple(out.shape):
            raise ConvertError(f"{path}: tensor {out.name!r} is {entry.type_name} {list(entry.shape)}, planned "
                               f"type id {out.type_id} {list(out.shape)}")
        rows = out.shape[0] if len(out.shape) > 1 else 1
        row_bytes = entry.n_bytes // rows
        worst = 0.0
        row = 0
        for seg in out.segments:
            for start, stop in chunks(seg):
                n = stop - start if len(out.shape) > 1 else 1
                got = decode(contents.read_range(entry, row * row_bytes, n * row_bytes), out.type_id, n)
                want = seg.source.float_rows(start, stop).reshape(n, -1)
                worst = max(worst, _max_abs_diff(got, want))
                row += n
        report.checks.append(TensorCheck(out.name, worst, out.lossless))
        if progress:
            progress(entry.n_bytes)
    return report


