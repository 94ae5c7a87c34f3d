"""Text encoder (Qwen3-4B): MLX affine 4-bit -> GGUF Q4_1 exactly, 16-bit -> GGUF as is.

An MLX 4-bit group of g elements (w = scale * q + bias, q in 0..15, codes LSB-first: byte b
holds elements 2b and 2b + 1) is g / 32 ggml Q4_1 blocks (w = d * q + m with d = scale,
m = bias; block byte i holds elements i and i + 16), provided scale and bias are exact in fp16.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGMLQuantizationType

from . import safetensors
from .errors import ConvertError
from .pipeline import ChunkEncoder, OutputTensor, Segment, dense_encoder, dense_type
from .tensors import DenseSource, SourceTensor, TensorRef, fp16_exact, to_float32

Q4_1 = int(GGMLQuantizationType.Q4_1)
Q4_1_BLOCK = 32

_REPO_LAYOUT = ("text_encoder-mlx-4bit/model.safetensors", "text_encoder-mlx-4bit/model.safetensors.index.json",
                "text_encoder/model.safetensors.index.json", "text_encoder/model.safetensors")
_UNSUPPORTED = {"text_encoder-hqq-4bit/qmodel.pt": "HQQ 4-bit (torch pickle of hqq modules)"}


class MlxAffineLinear:
    """An MLX affine-quantized linear or embedding: weight U32 [out, in * bits / 32],
    scales and biases [out, in / group]."""

    lowbit = False

    def __init__(self, name: str, weight: TensorRef, scales: TensorRef, biases: TensorRef, bits: int, group: int,
                 where: str):
        self.name, self.where = name, where
        self.weight, self.scales, self.biases = weight, scales, biases
        self.bits, self.group = bits, group
        self.shape = (weight.shape[0], weight.shape[1] * 32 // bits)
        self.chunk_rows = max(1, (4 << 20) // self.shape[1])

    def _codes(self, start: int, stop: int) -> np.ndarray:
        raw = np.ascontiguousarray(self.weight.read_rows(start, stop).astype("<u4", copy=False)).view(np.uint8)
        raw = raw.reshape(stop - start, -1)
        return np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(stop - start, -1)

    def _affine(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        return (to_float32(self.scales.read_rows(start, stop), self.scales.dtype, self.where),
                to_float32(self.biases.read_rows(start, stop), self.biases.dtype, self.where))

    def float_rows(self, start: int, stop: int) -> np.ndarray:
        scale, bias = self._affine(start, stop)
        q = self._codes(start, stop).reshape(stop - start, -1, self.group).astype(np.float32)
        return (q * scale[:, :, None] + bias[:, :, None]).reshape(stop - start, -1)

    def q4_1_rows(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        scale, bias = self._affine(start, stop)
        d = fp16_exact(scale, f"{self.where}: tensor {self.scales.name!r}")
        m = fp16_exact(bias, f"{self.where}: tensor {self.biases.name!r}", "bias")
        per_group = self.group // Q4_1_BLOCK
        d_bytes = np.repeat(d.astype("<f2"), per_group, axis=1).view(np.uint8).reshape(n, -1, 2)
        m_bytes = np.repeat(m.astype("<f2"), per_group, axis=1).view(np.uint8).reshape(n, -1, 2)
        codes = self._codes(start, stop).reshape(n, -1, Q4_1_BLOCK)
        qs = codes[:, :, :16] | (codes[:, :, 16:] << 4)
        return np.concatenate([d_bytes, m_bytes, qs], axis=2).reshape(n, -1)


@dataclass
class TextEncoderSource:
    description: str
    files: list[Path]
    tensors: dict[str, SourceTensor] = field(default_factory=dict)


def find_text_encoder(src: Path) -> Path:
    if src.is_file():
        return src
    for rel, what in _UNSUPPORTED.items():
        if (src / rel).exists():
            raise ConvertError(f"{src / rel}: the {what} text encoder is not supported; convert the MLX 4-bit one, "
                               f"or use the unpacked repository's or any Qwen3-4B safetensors/GGUF")
    for rel in _REPO_LAYOUT:
        if (src / rel).is_file():
            return src / rel
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (src / name).is_file():
            return src / name
    raise ConvertError(f"{src}: no text encoder found (looked for {', '.join(_REPO_LAYOUT)})")


def _quantization(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return config.get("quantization") or config.get("quantization_config") or {}


def open_text_encoder(path: Path) -> TextEncoderSource:
    where = str(path)
    if path.name.endswith(".index.json"):
        refs = dict(safetensors.read_index(path))
        files = [path, *sorted({r.path for r in refs.values()})]
    else:
        refs, _ = safetensors.read_header(path)
        files = [path]
    quant = _quantization(path.parent / "config.json")
    tensors: dict[str, SourceTensor] = {}
    used: set[str] = set()
    for scales_name in sorted(n for n in refs if n.endswith(".scales")):
        module = scales_name[: -len(".scales")]
        w, s, b = refs.get(f"{module}.weight"), refs[scales_name], refs.get(f"{module}.biases")
        if w is None or b is None:
            raise ConvertError(f"{where}: quantized module {module!r} lacks its "
                               f"{'weight' if w is None else 'biases'} tensor")
        override = quant.get(module) if isinstance(quant.get(module), dict) else {}
        bits = int(override.get("bits", quant.get("bits", 4)))
        if bits != 4 or w.dtype != "U32" or len(w.shape) != 2:
            raise ConvertError(f"{where}: tensor {w.name!r} is {bits}-bit {w.dtype}; only MLX 4-bit (U32) maps onto "
                               f"Q4_1 exactly")
        in_features = w.shape[1] * 8
        group, rem = divmod(in_features, s.shape[1]) if len(s.shape) == 2 and s.shape[1] else (0, 1)
        if rem or group % Q4_1_BLOCK or tuple(b.shape) != tuple(s.shape) or s.shape[0] != w.shape[0] \
                or group != int(override.get("group_size", quant.get("group_size", group))):
            raise ConvertError(f"{where}: module {module!r}: weight {list(w.shape)}, scales {list(s.shape)}, biases "
                               f"{list(b.shape)} are not a 4-bit quantization with a group size that is a multiple "
                               f"of {Q4_1_BLOCK}")
        tensors[f"{module}.weight"] = MlxAffineLinear(f"{module}.weight", w, s, b, bits, group, where)
        used.update((w.name, s.name, b.name))
    for name, ref in refs.items():
        if name not in used:
            tensors[name] = DenseSource(name, ref, where)
    if not any(re.match(r"(model\.)?(layers\.\d+|embed_tokens)\.", n) for n in tensors):
        raise ConvertError(f"{where}: unknown format: not a Qwen3 text encoder (no model.layers.* tensors)")
    kind = "MLX 4-bit" if used else "16-bit"
    return TextEncoderSource(f"{kind} Qwen3 text encoder", files, tensors)


def _q4_1_encoder() -> ChunkEncoder:
    return lambda src, start, stop: src.q4_1_rows(start, stop)  # type: ignore[attr-defined]


def plan_text_encoder(source: TextEncoderSource) -> list[OutputTensor]:
    outputs = []
    for name, t in source.tensors.items():
        segments = [Segment(t, 0, t.shape[0])]
        if isinstance(t, MlxAffineLinear):
            outputs.append(OutputTensor(name, t.shape, Q4_1, segments, True, _q4_1_encoder()))
        else:
            type_id, lossless = dense_type(segments, None, len(t.shape))
            outputs.append(OutputTensor(name, t.shape, type_id, segments, lossless, dense_encoder(type_id)))
    return outputs
