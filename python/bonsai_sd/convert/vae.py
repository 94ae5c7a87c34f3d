"""VAE: sd.cpp reads the released safetensors as they are; on request the same tensors go
into a GGUF, each kept exactly (F16 where exact, else BF16, else F32)."""

from __future__ import annotations

import logging
from pathlib import Path

from . import safetensors
from .errors import ConvertError
from .pipeline import OutputTensor, Segment, dense_encoder, dense_type
from .tensors import DenseSource

log = logging.getLogger(__name__)

_REPO_LAYOUT = ("vae/diffusion_pytorch_model.safetensors",)


def find_vae(src: Path) -> Path:
    if src.is_file():
        return src
    for rel in _REPO_LAYOUT:
        if (src / rel).is_file():
            return src / rel
    if (src / "diffusion_pytorch_model.safetensors").is_file():
        return src / "diffusion_pytorch_model.safetensors"
    raise ConvertError(f"{src}: no VAE found (looked for {', '.join(_REPO_LAYOUT)})")


def plan_vae(path: Path) -> list[OutputTensor]:
    refs, _ = safetensors.read_header(path)
    if not any(n.startswith(("decoder.", "encoder.", "first_stage_model.")) for n in refs):
        raise ConvertError(f"{path}: unknown format: not a VAE (no encoder./decoder. tensors)")
    outputs = []
    for name, ref in refs.items():
        if ref.dtype not in ("F32", "F16", "BF16"):
            log.info("VAE tensor %s (%s) is not a float tensor (a BatchNorm counter); left out", name, ref.dtype)
            continue
        source = DenseSource(name, ref, str(path))
        segments = [Segment(source, 0, source.shape[0])]
        type_id, lossless = dense_type(segments, None, len(source.shape))
        outputs.append(OutputTensor(name, source.shape, type_id, segments, lossless, dense_encoder(type_id)))
    return outputs
