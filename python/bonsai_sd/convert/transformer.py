"""Transformer conversion plan: any Bonsai/klein checkpoint -> sd.cpp's BFL-named tensors."""

from __future__ import annotations

from typing import Any

from .. import lowbit
from ..lowbit import PQ2_0, Q1_0, LowbitType
from . import klein
from .encode import F16, encode_dense, encode_lowbit
from .pipeline import ChunkEncoder, OutputTensor, Progress, Segment, dense_encoder, dense_type
from .sources import TransformerSource


def _segments(spec: klein.OutputSpec, source: TransformerSource) -> list[Segment]:
    if source.naming == "bfl":
        t = source.tensors[spec.name]
        return [Segment(t, 0, t.shape[0])]
    segments = []
    for part in spec.parts:
        t = source.tensors[part.source]
        rows = t.shape[0]
        if part.swap_halves:  # diffusers (scale, shift) -> BFL (shift, scale)
            segments += [Segment(t, rows // 2, rows), Segment(t, 0, rows // 2)]
        else:
            segments.append(Segment(t, 0, rows))
    return segments


def _lowbit_encoder(t: LowbitType) -> ChunkEncoder:
    return lambda src, start, stop: encode_lowbit(src.packed_rows(start, stop), t)  # type: ignore[attr-defined]


def _f16_encoder(src: object, start: int, stop: int) -> object:
    """The low-bit rows decoded to F16: exact, since every value is 0 or +-d with d an fp16."""
    rows = src.packed_rows(start, stop)  # type: ignore[attr-defined]
    t = Q1_0 if rows.weights == "binary" else PQ2_0
    return encode_dense(lowbit.dequantize(encode_lowbit(rows, t), t), F16)


def plan_transformer(source: TransformerSource, lowbit_type: LowbitType | None, skip_type: int | None,
                     progress: Progress | None = None) -> list[OutputTensor]:
    """The output tensors in file order (lowbit_type None: the low-bit linears as F16).
    Deciding each float tensor's type reads it once."""
    shapes = {n: t.shape for n, t in source.tensors.items()}
    where = str(source.files[0])
    dims = klein.dims_from_bfl(shapes, where) if source.naming == "bfl" else klein.dims_from_diffusers(shapes, where)
    outputs = []
    for spec in klein.bfl_layout(dims):
        segments = _segments(spec, source)
        if spec.lowbit and lowbit_type is None:
            outputs.append(OutputTensor(spec.name, spec.shape, F16, segments, source.exact, _f16_encoder))
        elif spec.lowbit:
            outputs.append(OutputTensor(spec.name, spec.shape, lowbit_type.type_id, segments, source.exact,
                                        _lowbit_encoder(lowbit_type)))
        else:
            type_id, lossless = dense_type(segments, skip_type, len(spec.shape))
            outputs.append(OutputTensor(spec.name, spec.shape, type_id, segments, lossless, dense_encoder(type_id)))
        if progress:
            progress(1)
    return outputs


def transformer_metadata(source: TransformerSource, outputs: list[OutputTensor],
                         lowbit_type: LowbitType | None) -> dict[str, Any]:
    lossy = [o.name for o in outputs if not o.lossless]
    meta: dict[str, Any] = {
        "bonsai_sd.weights": source.weights,
        "bonsai_sd.lowbit_type": lowbit_type.name if lowbit_type else "F16",
        "bonsai_sd.lossless": not lossy,
    }
    if lossy:
        meta["bonsai_sd.lossy_tensors"] = lossy
    if not source.exact:
        meta["bonsai_sd.lossy"] = ("post-training quantization of a 16-bit transformer: "
                                   f"{source.weights} absmean per 128-group along the input")
    return meta
