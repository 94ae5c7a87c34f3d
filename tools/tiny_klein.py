#!/usr/bin/env python3
"""Tiny FLUX.2 [klein]-shaped model sets that the pinned stable-diffusion.cpp runs on CPU in seconds.

NumPy only. The test suite builds on it: type tests, the converter's fixtures in every Bonsai
format, the Python API tests and an offline demo model. Import it from tests with
``sys.path.insert(0, "<repo>/tools")``; run it as a CLI to write a model set:

    python tools/tiny_klein.py OUTDIR --dit ternary|binary|float [--dtype f32|f16|bf16]
                                      [--seed N] [--layout bfl|diffusers] [--llm-hidden N]

Files written
-------------
``--layout bfl`` (what sd-cli loads; ``sd-cli --diffusion-model dit.safetensors --vae
vae.safetensors --llm llm.safetensors``):

- ``OUTDIR/dit.safetensors``  the DiT with BFL/sd.cpp names (``double_blocks.0.img_attn.qkv.weight``)
- ``OUTDIR/vae.safetensors``  the VAE decoder with BFL/ldm names (``decoder.up.3.block.0.conv1.weight``)
- ``OUTDIR/llm.safetensors``  the Qwen3-shaped text encoder with Hugging Face names
  (``model.layers.0.self_attn.q_proj.weight``)

``--layout diffusers`` (the layout of the Bonsai Image releases):

- ``OUTDIR/transformer/diffusion_pytorch_model.safetensors`` + ``config.json``
  (``Flux2Transformer2DModel`` names: q/k/v split, ``norm_out.linear`` halves swapped)
- ``OUTDIR/vae/diffusion_pytorch_model.safetensors`` + ``config.json`` (``AutoencoderKLFlux2``
  decoder names; no encoder, see below)
- ``OUTDIR/text_encoder/model.safetensors`` + ``config.json`` (``Qwen3ForCausalLM``, tied embeddings)

Shapes (sd.cpp hard-codes or infers them; see DESIGN.md §8)
-----------------------------------------------------------
- DiT: hidden 256 = 2 heads x 128, 1 double + 1 single block, in/out channels 128, mlp ratio 3
  with a SiLU-gated mlp, no biases, context dim 3 x the LLM hidden size.
- Qwen3: 28 layers (exactly 28 makes sd.cpp use 16 query heads; its outputs after layers 9, 18
  and 27 are concatenated), head dim 128, 16 q / 8 kv heads, vocab 151,936 rows, tiny hidden.
- VAE: decoder only (sd.cpp's encoder is fixed at 128 base channels, so these sets are
  text-to-image only), z 32, channel multipliers 1,2,4,4, 2 res blocks, base channels 32.
  ``bn.running_mean``/``bn.running_var`` hold sd.cpp's hard-coded FLUX.2 latent statistics
  (sd.cpp ignores the tensors; a diffusers reference reads them) and are always stored as F32.

Values
------
Every float tensor holds values exactly representable in bf16 *and* fp16, so F32, F16 and BF16
files of one seed hold identical numbers (except the F32-only ``bn.*``). The DiT's block linears
(the analogue of Bonsai's 100 quantized linears: img/txt qkv, proj, mlp.0, mlp.2 and single
linear1/linear2) come in three flavours: ``float``; ``ternary``, where each row's 128-element
group along the input dimension is exactly {-s, 0, +s}; and ``binary``, exactly {-s, +s}. Each
group scale s has three significant bits, so it is exact in fp16 and bf16 and so are 2s and -s.
Every tensor is drawn from its own stream keyed by (seed, name[, flavour]), so the float tensors
are the same in every flavour and reordering the generator changes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("tiny_klein")

GROUP = 128  # Bonsai's quantization group along the input dimension
HEAD_DIM = 128  # sd.cpp: RoPE axes 4 x 32 must cover a head
DIT_CHANNELS = 128  # FLUX.2 latent channels seen by the DiT (32 VAE channels, 2x2 patches)
TIME_EMBED_DIM = 256  # sinusoidal timestep features fed to time_in
VAE_Z_CHANNELS = 32
VAE_CH_MULT = (1, 2, 4, 4)
VAE_RES_BLOCKS = 2
VAE_BN_EPS = 1e-4  # diffusers AutoencoderKLFlux2 default batch_norm_eps
QWEN_VOCAB = 151_936
QWEN_Q_HEADS_AT_28_LAYERS = 16
QWEN_KV_HEADS = 8
QWEN_ROPE_THETA = 1_000_000.0

FLAVOURS = ("float", "ternary", "binary")
DTYPES = ("f32", "f16", "bf16")
LAYOUTS = ("bfl", "diffusers")

# sd.cpp AutoEncoderKL::get_latents_mean_std (pinned 60477fd5): the FLUX.2 latent statistics
# per patchified channel (128 = 32 VAE channels x 2x2), used instead of the file's bn.* tensors.
FLUX2_LATENT_MEAN = (
    -0.0676, -0.0715, -0.0753, -0.0745, 0.0223, 0.0180, 0.0142, 0.0184,
    -0.0001, -0.0063, -0.0002, -0.0031, -0.0272, -0.0281, -0.0276, -0.0290,
    -0.0769, -0.0672, -0.0902, -0.0892, 0.0168, 0.0152, 0.0079, 0.0086,
    0.0083, 0.0015, 0.0003, -0.0043, -0.0439, -0.0419, -0.0438, -0.0431,
    -0.0102, -0.0132, -0.0066, -0.0048, -0.0311, -0.0306, -0.0279, -0.0180,
    0.0030, 0.0015, 0.0126, 0.0145, 0.0347, 0.0338, 0.0337, 0.0283,
    0.0020, 0.0047, 0.0047, 0.0050, 0.0123, 0.0081, 0.0081, 0.0146,
    0.0681, 0.0679, 0.0767, 0.0732, -0.0462, -0.0474, -0.0392, -0.0511,
    -0.0528, -0.0477, -0.0470, -0.0517, -0.0317, -0.0316, -0.0345, -0.0283,
    0.0510, 0.0445, 0.0578, 0.0458, -0.0412, -0.0458, -0.0487, -0.0467,
    -0.0088, -0.0106, -0.0088, -0.0046, -0.0376, -0.0432, -0.0436, -0.0499,
    0.0118, 0.0166, 0.0203, 0.0279, 0.0113, 0.0129, 0.0016, 0.0072,
    -0.0118, -0.0018, -0.0141, -0.0054, -0.0091, -0.0138, -0.0145, -0.0187,
    0.0323, 0.0305, 0.0259, 0.0300, 0.0540, 0.0614, 0.0495, 0.0590,
    -0.0511, -0.0603, -0.0478, -0.0524, -0.0227, -0.0274, -0.0154, -0.0255,
    -0.0572, -0.0565, -0.0518, -0.0496, 0.0116, 0.0054, 0.0163, 0.0104,
)  # fmt: skip
FLUX2_LATENT_STD = (
    1.8029, 1.7786, 1.7868, 1.7837, 1.7717, 1.7590, 1.7610, 1.7479,
    1.7336, 1.7373, 1.7340, 1.7343, 1.8626, 1.8527, 1.8629, 1.8589,
    1.7593, 1.7526, 1.7556, 1.7583, 1.7363, 1.7400, 1.7355, 1.7394,
    1.7342, 1.7246, 1.7392, 1.7304, 1.7551, 1.7513, 1.7559, 1.7488,
    1.8449, 1.8454, 1.8550, 1.8535, 1.8240, 1.7813, 1.7854, 1.7945,
    1.8047, 1.7876, 1.7695, 1.7676, 1.7782, 1.7667, 1.7925, 1.7848,
    1.7579, 1.7407, 1.7483, 1.7368, 1.7961, 1.7998, 1.7920, 1.7925,
    1.7780, 1.7747, 1.7727, 1.7749, 1.7526, 1.7447, 1.7657, 1.7495,
    1.7775, 1.7720, 1.7813, 1.7813, 1.8162, 1.8013, 1.8023, 1.8033,
    1.7527, 1.7331, 1.7563, 1.7482, 1.7610, 1.7507, 1.7681, 1.7613,
    1.7665, 1.7545, 1.7828, 1.7726, 1.7896, 1.7999, 1.7864, 1.7760,
    1.7613, 1.7625, 1.7560, 1.7577, 1.7783, 1.7671, 1.7810, 1.7799,
    1.7201, 1.7068, 1.7265, 1.7091, 1.7793, 1.7578, 1.7502, 1.7455,
    1.7587, 1.7500, 1.7525, 1.7362, 1.7616, 1.7572, 1.7444, 1.7430,
    1.7509, 1.7610, 1.7634, 1.7612, 1.7254, 1.7135, 1.7321, 1.7226,
    1.7664, 1.7624, 1.7718, 1.7664, 1.7457, 1.7441, 1.7569, 1.7530,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TinyKleinConfig:
    """Sizes of a tiny set (DESIGN.md §8).

    The Qwen3 hidden size is free in sd.cpp (8 runs too); 32 keeps every text-encoder linear a
    whole number of 32-element ggml blocks (q8_0, q4_0, ...). MLX 4-bit fixtures need 64.
    """

    dit_heads: int = 2
    double_blocks: int = 1
    single_blocks: int = 1
    llm_hidden: int = 32
    llm_intermediate: int = 64
    llm_layers: int = 28
    vae_ch: int = 32

    def __post_init__(self) -> None:
        if self.dit_heads < 1 or self.double_blocks < 1 or self.single_blocks < 1:
            raise ValueError(f"dit_heads, double_blocks and single_blocks must be >= 1: {self}")
        if self.llm_layers != 28:
            # Any other count >= 27 makes sd.cpp use 32 query heads; this module writes 16.
            raise ValueError(f"llm_layers must be 28 (sd.cpp switches to 16 query heads only then): {self.llm_layers}")
        if self.llm_hidden < 1 or self.llm_intermediate < 1:
            raise ValueError(f"llm_hidden and llm_intermediate must be >= 1: {self}")
        if self.vae_ch < 32 or self.vae_ch % 32:
            raise ValueError(f"vae_ch must be a positive multiple of 32 (GroupNorm with 32 groups): {self.vae_ch}")

    @property
    def dit_hidden(self) -> int:
        return self.dit_heads * HEAD_DIM

    @property
    def dit_mlp_hidden(self) -> int:
        return 3 * self.dit_hidden  # FLUX.2 mlp ratio 3

    @property
    def context_dim(self) -> int:
        return 3 * self.llm_hidden  # Qwen3 hidden states after layers 9, 18, 27, concatenated


# --------------------------------------------------------------------------------------------
# Numbers: bf16/fp16-exact values and group-quantized weights

FP16_MIN_NORMAL = 2.0**-14


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bf16 (ties to even), returned as float32."""
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) of float32 values, rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    rounded = ((bits.astype(np.uint64) + rounding) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def half_exact(x: np.ndarray) -> np.ndarray:
    """Round to bf16, then flush magnitudes below fp16's smallest normal to zero.

    The result is exact in bf16 (8 significant bits), in fp16 (11 significant bits, normal range
    2^-14..65504) and in float32.
    """
    y = round_to_bf16(np.asarray(x, dtype=np.float32))
    y[np.abs(y) < FP16_MIN_NORMAL] = 0.0
    if np.abs(y).max(initial=0.0) > 65504.0:
        raise ValueError("value beyond fp16 range")
    return y


def short_mantissa(x: np.ndarray, bits: int = 3) -> np.ndarray:
    """Round positive values to `bits` significant bits (exact in fp16 and bf16 in normal range)."""
    mantissa, exponent = np.frexp(np.asarray(x, dtype=np.float64))
    step = 2.0**bits
    return np.ldexp(np.round(mantissa * step) / step, exponent).astype(np.float32)


@dataclass(frozen=True)
class GroupQuantized:
    """A linear weight [out, in] whose 128-groups along `in` are codes x one scale.

    codes: int8 [out, in], values in {-1, 0, 1} (ternary) or {-1, 1} (binary).
    scales: float32 [out, in // 128], positive, three significant bits.
    """

    codes: np.ndarray
    scales: np.ndarray

    def dense(self) -> np.ndarray:
        out, inp = self.codes.shape
        grouped = self.codes.reshape(out, inp // GROUP, GROUP).astype(np.float32)
        return (grouped * self.scales[:, :, None]).reshape(out, inp)


def group_quantized(rng: np.random.Generator, shape: tuple[int, ...], flavour: str) -> GroupQuantized:
    """Random ternary or binary group-128 weights [out, in] whose scales keep activations at scale."""
    if len(shape) != 2:
        raise ValueError(f"a group-quantized weight is 2-D, got shape {shape}")
    out, inp = shape
    if inp % GROUP:
        raise ValueError(f"input dimension {inp} is not a multiple of the group size {GROUP}")
    if flavour == "ternary":
        codes = rng.integers(-1, 2, size=shape, dtype=np.int8)
        spread = np.sqrt(3.0 / 2.0)  # two thirds of the codes are non-zero
    elif flavour == "binary":
        codes = (rng.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1).astype(np.int8)
        spread = 1.0
    else:
        raise ValueError(f"unknown quantized flavour {flavour!r}; expected ternary or binary")
    # Per-group scale near spread/sqrt(fan_in) (so the weight std is ~1/sqrt(fan_in)), jittered
    # within half an octave so groups differ, then shortened to three significant bits.
    jitter = 2.0 ** rng.uniform(-0.5, 0.5, size=(out, inp // GROUP))
    scales = short_mantissa(spread / np.sqrt(inp) * jitter)
    return GroupQuantized(codes=codes, scales=scales)


def _rng(seed: int, *key: str) -> np.random.Generator:
    """An independent stream per (seed, tensor name, ...), stable across generation order."""
    if seed < 0 or seed >= 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64): {seed}")
    words = [seed & 0xFFFFFFFF, seed >> 32] + [zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(np.random.SeedSequence(words))


def _normal(seed: int, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    values = _rng(seed, name).normal(mean, std, size=shape).astype(np.float32)
    return half_exact(values)


def _linear(seed: int, name: str, shape: tuple[int, ...], gain: float = 1.0) -> np.ndarray:
    fan_in = int(np.prod(shape[1:]))
    return _normal(seed, name, shape, gain / np.sqrt(fan_in))


def _norm_weight(seed: int, name: str, size: int) -> np.ndarray:
    return _normal(seed, name, (size,), 0.1, mean=1.0)


# --------------------------------------------------------------------------------------------
# DiT (BFL / sd.cpp names)


def dit_shapes(cfg: TinyKleinConfig) -> dict[str, tuple[int, ...]]:
    """Every DiT tensor with its (torch-order) shape, BFL names, in a stable order."""
    h, mlp = cfg.dit_hidden, cfg.dit_mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {
        "img_in.weight": (h, DIT_CHANNELS),
        "txt_in.weight": (h, cfg.context_dim),
        "time_in.in_layer.weight": (h, TIME_EMBED_DIM),
        "time_in.out_layer.weight": (h, h),
        "double_stream_modulation_img.lin.weight": (6 * h, h),
        "double_stream_modulation_txt.lin.weight": (6 * h, h),
        "single_stream_modulation.lin.weight": (3 * h, h),
    }
    for i in range(cfg.double_blocks):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            shapes[p + "attn.qkv.weight"] = (3 * h, h)
            shapes[p + "attn.norm.query_norm.scale"] = (HEAD_DIM,)
            shapes[p + "attn.norm.key_norm.scale"] = (HEAD_DIM,)
            shapes[p + "attn.proj.weight"] = (h, h)
            shapes[p + "mlp.0.weight"] = (2 * mlp, h)  # gate and up, fused
            shapes[p + "mlp.2.weight"] = (h, mlp)
    for i in range(cfg.single_blocks):
        p = f"single_blocks.{i}."
        shapes[p + "linear1.weight"] = (3 * h + 2 * mlp, h)  # q, k, v, gate, up
        shapes[p + "linear2.weight"] = (h, h + mlp)
        shapes[p + "norm.query_norm.scale"] = (HEAD_DIM,)
        shapes[p + "norm.key_norm.scale"] = (HEAD_DIM,)
    shapes["final_layer.linear.weight"] = (DIT_CHANNELS, h)
    shapes["final_layer.adaLN_modulation.1.weight"] = (2 * h, h)
    return shapes


_BLOCK_LINEAR = re.compile(
    r"(double_blocks\.\d+\.(img|txt)_(attn\.qkv|attn\.proj|mlp\.0|mlp\.2)|single_blocks\.\d+\.linear[12])\.weight"
)


def is_block_linear(name: str) -> bool:
    """True for the DiT linears that Bonsai quantizes (BFL names)."""
    return _BLOCK_LINEAR.fullmatch(name) is not None


@dataclass(frozen=True)
class DitWeights:
    """A tiny DiT with BFL names.

    tensors: every tensor, float32 (dense; the block linears decoded from codes x scales).
    codes, scales: the block linears' group-128 codes and scales (empty for the float flavour).
    Both are row-aligned with the weight, so the name mappings below apply to them too.
    """

    flavour: str
    tensors: dict[str, np.ndarray]
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    scales: dict[str, np.ndarray] = field(default_factory=dict)


def make_dit(cfg: TinyKleinConfig = TinyKleinConfig(), flavour: str = "ternary", seed: int = 0) -> DitWeights:
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown DiT flavour {flavour!r}; expected one of {FLAVOURS}")
    tensors: dict[str, np.ndarray] = {}
    codes: dict[str, np.ndarray] = {}
    scales: dict[str, np.ndarray] = {}
    for name, shape in dit_shapes(cfg).items():
        if name.endswith(".scale"):
            tensors[name] = _norm_weight(seed, name, shape[0])
        elif is_block_linear(name) and flavour != "float":
            q = group_quantized(_rng(seed, name, flavour), shape, flavour)
            codes[name], scales[name] = q.codes, q.scales
            tensors[name] = q.dense()
        else:
            tensors[name] = _linear(seed, name, shape)
    return DitWeights(flavour=flavour, tensors=tensors, codes=codes, scales=scales)


# --------------------------------------------------------------------------------------------
# DiT names: BFL <-> diffusers Flux2Transformer2DModel
#
# From diffusers' convert_flux2_transformer_checkpoint_to_diffusers (single_file_utils) and the
# module names of Flux2Transformer2DModel; BFL names from sd.cpp's flux.hpp. Norm `.scale`
# becomes `.weight`; fused qkv splits into three equal row blocks; final_layer.adaLN_modulation.1
# is (shift, scale) by rows while norm_out.linear is (scale, shift). The functions only slice,
# concatenate and swap rows, so they apply equally to weights, codes and group scales.

_TOP_BFL_TO_DIFFUSERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
}
_SWAPPED_BFL, _SWAPPED_DIFFUSERS = "final_layer.adaLN_modulation.1", "norm_out.linear"

_DOUBLE_BFL_TO_DIFFUSERS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "img_attn.proj": "attn.to_out.0",
    "img_mlp.0": "ff.linear_in",
    "img_mlp.2": "ff.linear_out",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "txt_attn.proj": "attn.to_add_out",
    "txt_mlp.0": "ff_context.linear_in",
    "txt_mlp.2": "ff_context.linear_out",
}
_QKV_SPLIT = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_BFL_TO_DIFFUSERS = {
    "linear1": "attn.to_qkv_mlp_proj",
    "linear2": "attn.to_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}

_BFL_NAME = re.compile(r"(?:(double_blocks|single_blocks)\.(\d+)\.)?(.+)\.(weight|scale)")
_DIFFUSERS_NAME = re.compile(r"(?:(transformer_blocks|single_transformer_blocks)\.(\d+)\.)?(.+)\.weight")


def _swap_halves(x: np.ndarray, name: str) -> np.ndarray:
    if x.shape[0] % 2:
        raise ValueError(f"{name}: {x.shape[0]} rows cannot be split into (shift, scale) halves")
    half = x.shape[0] // 2
    return np.concatenate([x[half:], x[:half]], axis=0)


def bfl_to_diffusers(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a BFL-named FLUX.2 DiT (or its codes/scales) to diffusers names."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        m = _BFL_NAME.fullmatch(name)
        if m is None:
            raise ValueError(f"{name}: not a FLUX.2 klein DiT tensor name")
        block, index, inner, kind = m.groups()
        if block is None and inner == _SWAPPED_BFL and kind == "weight":
            out[f"{_SWAPPED_DIFFUSERS}.weight"] = _swap_halves(value, name)
        elif block is None and inner in _TOP_BFL_TO_DIFFUSERS and kind == "weight":
            out[f"{_TOP_BFL_TO_DIFFUSERS[inner]}.weight"] = value
        elif block == "double_blocks" and inner in _QKV_SPLIT and kind == "weight":
            if value.shape[0] % 3:
                raise ValueError(f"{name}: {value.shape[0]} rows cannot be split into q, k, v")
            for part, chunk in zip(_QKV_SPLIT[inner], np.split(value, 3, axis=0)):
                out[f"transformer_blocks.{index}.{part}.weight"] = chunk
        elif block == "double_blocks" and inner in _DOUBLE_BFL_TO_DIFFUSERS:
            out[f"transformer_blocks.{index}.{_DOUBLE_BFL_TO_DIFFUSERS[inner]}.weight"] = value
        elif block == "single_blocks" and inner in _SINGLE_BFL_TO_DIFFUSERS:
            out[f"single_transformer_blocks.{index}.{_SINGLE_BFL_TO_DIFFUSERS[inner]}.weight"] = value
        else:
            raise ValueError(f"{name}: not a FLUX.2 klein DiT tensor name")
    return out


def diffusers_to_bfl(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a diffusers Flux2Transformer2DModel state dict (or its codes/scales) to BFL names.

    q/k/v are concatenated by rows in that order; every part must be present.
    """
    top = {d: b for b, d in _TOP_BFL_TO_DIFFUSERS.items()}
    double = {d: b for b, d in _DOUBLE_BFL_TO_DIFFUSERS.items()}
    single = {d: b for b, d in _SINGLE_BFL_TO_DIFFUSERS.items()}
    qkv_part = {part: (fused, slot) for fused, parts in _QKV_SPLIT.items() for slot, part in enumerate(parts)}

    out: dict[str, np.ndarray] = {}
    pending_qkv: dict[str, list[np.ndarray | None]] = {}
    for name, value in tensors.items():
        m = _DIFFUSERS_NAME.fullmatch(name)
        if m is None:
            raise ValueError(f"{name}: not a Flux2Transformer2DModel tensor name")
        block, index, inner = m.groups()
        if block is None and inner == _SWAPPED_DIFFUSERS:
            out[f"{_SWAPPED_BFL}.weight"] = _swap_halves(value, name)
        elif block is None and inner in top:
            out[f"{top[inner]}.weight"] = value
        elif block == "transformer_blocks" and inner in qkv_part:
            fused, slot = qkv_part[inner]
            pending_qkv.setdefault(f"double_blocks.{index}.{fused}.weight", [None, None, None])[slot] = value
        elif block == "transformer_blocks" and inner in double:
            kind = "scale" if "norm" in inner else "weight"
            out[f"double_blocks.{index}.{double[inner]}.{kind}"] = value
        elif block == "single_transformer_blocks" and inner in single:
            kind = "scale" if "norm" in inner else "weight"
            out[f"single_blocks.{index}.{single[inner]}.{kind}"] = value
        else:
            raise ValueError(f"{name}: not a Flux2Transformer2DModel tensor name (klein has no guidance embedder)")
    for fused, parts in pending_qkv.items():
        missing = [p for p, v in zip(("q", "k", "v"), parts) if v is None]
        if missing:
            raise ValueError(f"{fused}: the {'/'.join(missing)} part(s) are missing from the diffusers tensors")
        shapes = {v.shape for v in parts if v is not None}
        if len(shapes) != 1:
            raise ValueError(f"{fused}: q, k and v have different shapes {sorted(shapes)}")
        out[fused] = np.concatenate(parts, axis=0)  # type: ignore[arg-type]
    return out


def diffusers_transformer_config(cfg: TinyKleinConfig) -> dict[str, object]:
    """config.json of a Flux2Transformer2DModel with this set's shapes (klein: no guidance)."""
    return {
        "_class_name": "Flux2Transformer2DModel",
        "_diffusers_version": "0.37.0",
        "attention_head_dim": HEAD_DIM,
        "axes_dims_rope": [32, 32, 32, 32],
        "eps": 1e-6,
        "guidance_embeds": False,
        "in_channels": DIT_CHANNELS,
        "joint_attention_dim": cfg.context_dim,
        "mlp_ratio": 3.0,
        "num_attention_heads": cfg.dit_heads,
        "num_layers": cfg.double_blocks,
        "num_single_layers": cfg.single_blocks,
        "out_channels": None,
        "patch_size": 1,
        "rope_theta": 2000,
        "timestep_guidance_channels": TIME_EMBED_DIM,
    }


# --------------------------------------------------------------------------------------------
# VAE decoder (BFL / ldm names) and its diffusers names


def _conv(seed: int, t: dict[str, np.ndarray], name: str, cin: int, cout: int, k: int, gain: float = 1.0) -> None:
    t[name + ".weight"] = _linear(seed, name + ".weight", (cout, cin, k, k), gain)
    t[name + ".bias"] = _normal(seed, name + ".bias", (cout,), 0.02)


def _group_norm(seed: int, t: dict[str, np.ndarray], name: str, channels: int) -> None:
    t[name + ".weight"] = _norm_weight(seed, name + ".weight", channels)
    t[name + ".bias"] = _normal(seed, name + ".bias", (channels,), 0.02)


def _resnet(seed: int, t: dict[str, np.ndarray], name: str, cin: int, cout: int) -> None:
    _group_norm(seed, t, name + ".norm1", cin)
    _conv(seed, t, name + ".conv1", cin, cout, 3)
    _group_norm(seed, t, name + ".norm2", cout)
    _conv(seed, t, name + ".conv2", cout, cout, 3)
    if cin != cout:
        _conv(seed, t, name + ".nin_shortcut", cin, cout, 1)


def make_vae(cfg: TinyKleinConfig = TinyKleinConfig(), seed: int = 0) -> dict[str, np.ndarray]:
    """The VAE decoder, post-quant conv and latent BatchNorm statistics, BFL/ldm names."""
    t: dict[str, np.ndarray] = {}
    block_in = cfg.vae_ch * VAE_CH_MULT[-1]
    _conv(seed, t, "decoder.post_quant_conv", VAE_Z_CHANNELS, VAE_Z_CHANNELS, 1)
    _conv(seed, t, "decoder.conv_in", VAE_Z_CHANNELS, block_in, 3)
    _resnet(seed, t, "decoder.mid.block_1", block_in, block_in)
    _group_norm(seed, t, "decoder.mid.attn_1.norm", block_in)
    for proj in ("q", "k", "v", "proj_out"):
        _conv(seed, t, f"decoder.mid.attn_1.{proj}", block_in, block_in, 1)
    _resnet(seed, t, "decoder.mid.block_2", block_in, block_in)
    for level in reversed(range(len(VAE_CH_MULT))):
        block_out = cfg.vae_ch * VAE_CH_MULT[level]
        for j in range(VAE_RES_BLOCKS + 1):
            _resnet(seed, t, f"decoder.up.{level}.block.{j}", block_in, block_out)
            block_in = block_out
        if level != 0:
            _conv(seed, t, f"decoder.up.{level}.upsample.conv", block_in, block_in, 3)
    _group_norm(seed, t, "decoder.norm_out", block_in)
    _conv(seed, t, "decoder.conv_out", block_in, 3, 3, gain=0.5)  # keep most pixels off the clip
    mean, std = latent_bn_statistics()
    t["bn.running_mean"] = mean
    t["bn.running_var"] = std * std - np.float32(VAE_BN_EPS)
    return t


def latent_bn_statistics() -> tuple[np.ndarray, np.ndarray]:
    """sd.cpp's FLUX.2 latent mean and std (128 channels each), float32."""
    return np.array(FLUX2_LATENT_MEAN, dtype=np.float32), np.array(FLUX2_LATENT_STD, dtype=np.float32)


VAE_F32_ONLY = frozenset({"bn.running_mean", "bn.running_var"})


_VAE_ATTN_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _vae_name_to_diffusers(name: str) -> str:
    top = len(VAE_CH_MULT) - 1  # diffusers numbers the decoder's up blocks from the bottom
    if m := re.fullmatch(r"decoder\.mid\.attn_1\.(\w+)\.(weight|bias)", name):
        return f"decoder.mid_block.attentions.0.{_VAE_ATTN_TO_DIFFUSERS[m[1]]}.{m[2]}"
    if m := re.fullmatch(r"decoder\.mid\.block_(\d)\.(.+)", name):
        name = f"decoder.mid_block.resnets.{int(m[1]) - 1}.{m[2]}"
    elif m := re.fullmatch(r"decoder\.up\.(\d)\.block\.(\d)\.(.+)", name):
        name = f"decoder.up_blocks.{top - int(m[1])}.resnets.{m[2]}.{m[3]}"
    elif m := re.fullmatch(r"decoder\.up\.(\d)\.upsample\.(.+)", name):
        name = f"decoder.up_blocks.{top - int(m[1])}.upsamplers.0.{m[2]}"
    elif name.startswith("decoder.post_quant_conv."):
        name = name.removeprefix("decoder.")
    elif name.startswith("decoder.norm_out."):
        name = name.replace("norm_out", "conv_norm_out")
    return name.replace(".nin_shortcut.", ".conv_shortcut.")


def vae_ldm_to_diffusers(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename make_vae()'s tensors to AutoencoderKLFlux2 names; the 1x1-conv attention becomes 2-D."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.startswith("decoder.mid.attn_1.") and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        out[_vae_name_to_diffusers(name)] = value
    return out


def diffusers_vae_config(cfg: TinyKleinConfig) -> dict[str, object]:
    """config.json of an AutoencoderKLFlux2 whose decoder matches make_vae() (no encoder written)."""
    return {
        "_class_name": "AutoencoderKLFlux2",
        "_diffusers_version": "0.37.0",
        "act_fn": "silu",
        "batch_norm_eps": VAE_BN_EPS,
        "batch_norm_momentum": 0.1,
        "block_out_channels": [cfg.vae_ch * m for m in VAE_CH_MULT],
        "down_block_types": ["DownEncoderBlock2D"] * len(VAE_CH_MULT),
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": VAE_Z_CHANNELS,
        "layers_per_block": VAE_RES_BLOCKS,
        "mid_block_add_attention": True,
        "norm_num_groups": 32,
        "out_channels": 3,
        "patch_size": [2, 2],
        "sample_size": 1024,
        "up_block_types": ["UpDecoderBlock2D"] * len(VAE_CH_MULT),
        "use_post_quant_conv": True,
        "use_quant_conv": True,
    }


# --------------------------------------------------------------------------------------------
# Qwen3-shaped text encoder (Hugging Face names)


def make_llm(cfg: TinyKleinConfig = TinyKleinConfig(), seed: int = 0) -> dict[str, np.ndarray]:
    h, inter = cfg.llm_hidden, cfg.llm_intermediate
    q_dim, kv_dim = QWEN_Q_HEADS_AT_28_LAYERS * HEAD_DIM, QWEN_KV_HEADS * HEAD_DIM
    embed = "model.embed_tokens.weight"
    t: dict[str, np.ndarray] = {embed: _normal(seed, embed, (QWEN_VOCAB, h), 1.0)}
    for i in range(cfg.llm_layers):
        p = f"model.layers.{i}."
        for name, shape in (
            ("self_attn.q_proj.weight", (q_dim, h)),
            ("self_attn.k_proj.weight", (kv_dim, h)),
            ("self_attn.v_proj.weight", (kv_dim, h)),
            ("self_attn.o_proj.weight", (h, q_dim)),
            ("mlp.gate_proj.weight", (inter, h)),
            ("mlp.up_proj.weight", (inter, h)),
            ("mlp.down_proj.weight", (h, inter)),
        ):
            t[p + name] = _linear(seed, p + name, shape)
        t[p + "self_attn.q_norm.weight"] = _norm_weight(seed, p + "self_attn.q_norm.weight", HEAD_DIM)
        t[p + "self_attn.k_norm.weight"] = _norm_weight(seed, p + "self_attn.k_norm.weight", HEAD_DIM)
        t[p + "input_layernorm.weight"] = _norm_weight(seed, p + "input_layernorm.weight", h)
        t[p + "post_attention_layernorm.weight"] = _norm_weight(seed, p + "post_attention_layernorm.weight", h)
    t["model.norm.weight"] = _norm_weight(seed, "model.norm.weight", h)
    return t


def qwen3_config(cfg: TinyKleinConfig) -> dict[str, object]:
    """config.json of a Qwen3ForCausalLM matching make_llm() (embeddings tied to the LM head)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": cfg.llm_hidden,
        "intermediate_size": cfg.llm_intermediate,
        "max_position_embeddings": 40960,
        "num_attention_heads": QWEN_Q_HEADS_AT_28_LAYERS,
        "num_hidden_layers": cfg.llm_layers,
        "num_key_value_heads": QWEN_KV_HEADS,
        "rms_norm_eps": 1e-6,
        "rope_theta": QWEN_ROPE_THETA,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "vocab_size": QWEN_VOCAB,
    }


# --------------------------------------------------------------------------------------------
# safetensors (written and read here; the format is an 8-byte little-endian header length, a
# JSON header of {name: {dtype, shape, data_offsets}} plus "__metadata__", then the raw data)

_ST_DTYPE = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def _encode(value: np.ndarray, dtype: str) -> bytes:
    if dtype == "f32":
        return np.ascontiguousarray(value, dtype="<f4").tobytes()
    if dtype == "f16":
        if np.abs(value).max(initial=0.0) > 65504.0:
            raise ValueError("value beyond fp16 range")
        return np.ascontiguousarray(value, dtype=np.float32).astype("<f2").tobytes()
    if dtype == "bf16":
        return f32_to_bf16_bits(value).astype("<u2").tobytes()
    raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {DTYPES}")


def write_safetensors(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    dtype: str = "f32",
    metadata: Mapping[str, str] | None = None,
    keep_f32: Iterable[str] = (),
) -> None:
    """Write float tensors as F32, F16 or BF16 (round to nearest even); `keep_f32` stay F32.

    Written to a temporary file in the same folder and renamed, so no partial file is left.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {DTYPES}")
    keep = set(keep_f32)
    header: dict[str, object] = {"__metadata__": dict(metadata or {})}
    blobs: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        if not np.issubdtype(np.asarray(value).dtype, np.floating):
            raise ValueError(f"{name}: only float tensors are written, got {np.asarray(value).dtype}")
        stored = "f32" if name in keep else dtype
        try:
            blob = _encode(np.asarray(value), stored)
        except ValueError as err:
            raise ValueError(f"{path}: tensor {name}: {err}") from None
        header[name] = {
            "dtype": _ST_DTYPE[stored],
            "shape": list(np.shape(value)),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    _atomic_write(path, [struct.pack("<Q", len(head)), head, *blobs])


@dataclass(frozen=True)
class SafetensorsFile:
    tensors: dict[str, np.ndarray]  # decoded to float32
    dtypes: dict[str, str]  # "F32" | "F16" | "BF16"
    metadata: dict[str, str]


def read_safetensors(path: Path) -> SafetensorsFile:
    """Read an F32/F16/BF16 safetensors file (float32 arrays), checking its offsets."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (head_len,) = struct.unpack("<Q", data[:8])
    if 8 + head_len > len(data):
        raise ValueError(f"{path}: header length {head_len} runs past the end of the file")
    header = json.loads(data[8 : 8 + head_len])
    body = memoryview(data)[8 + head_len :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        width = {"F32": 4, "F16": 2, "BF16": 2}.get(info["dtype"])
        if width is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        if not 0 <= begin <= end <= len(body) or end - begin != count * width:
            raise ValueError(f"{path}: tensor {name} has bad data offsets {begin}..{end}")
        raw = body[begin:end]
        if info["dtype"] == "F32":
            array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif info["dtype"] == "F16":
            array = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        else:
            array = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2"))
        tensors[name] = array.reshape(shape)
        dtypes[name] = info["dtype"]
    return SafetensorsFile(tensors=tensors, dtypes=dtypes, metadata=metadata)


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Mapping[str, object]) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic_write(path, [text.encode()])


# --------------------------------------------------------------------------------------------
# Model sets


@dataclass(frozen=True)
class ModelSet:
    """Paths of a written set's weight files (config.json files sit beside them in diffusers layout)."""

    dit: Path
    vae: Path
    llm: Path

    def sizes(self) -> dict[str, int]:
        return {"dit": self.dit.stat().st_size, "vae": self.vae.stat().st_size, "llm": self.llm.stat().st_size}


def write_model_set(
    outdir: Path,
    flavour: str = "ternary",
    dtype: str = "f16",
    seed: int = 0,
    layout: str = "bfl",
    cfg: TinyKleinConfig = TinyKleinConfig(),
) -> ModelSet:
    """Generate and write a tiny set (file names in the module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown storage dtype {dtype!r}; expected one of {DTYPES}")
    outdir = Path(outdir)
    meta = {
        "generator": "bonsai-sd tools/tiny_klein.py",
        "flavour": flavour,
        "seed": str(seed),
        "config": json.dumps(asdict(cfg)),
    }
    dit = make_dit(cfg, flavour, seed).tensors
    vae = make_vae(cfg, seed)
    llm = make_llm(cfg, seed)
    if layout == "bfl":
        files = ModelSet(dit=outdir / "dit.safetensors", vae=outdir / "vae.safetensors", llm=outdir / "llm.safetensors")
    else:
        files = ModelSet(
            dit=outdir / "transformer" / "diffusion_pytorch_model.safetensors",
            vae=outdir / "vae" / "diffusion_pytorch_model.safetensors",
            llm=outdir / "text_encoder" / "model.safetensors",
        )
        dit = bfl_to_diffusers(dit)
        vae = vae_ldm_to_diffusers(vae)
        _write_json(files.dit.parent / "config.json", diffusers_transformer_config(cfg))
        _write_json(files.vae.parent / "config.json", diffusers_vae_config(cfg))
        _write_json(files.llm.parent / "config.json", qwen3_config(cfg))
    write_safetensors(files.dit, dit, dtype, {**meta, "component": "dit"})
    write_safetensors(files.vae, vae, dtype, {**meta, "component": "vae"}, keep_f32=VAE_F32_ONLY)
    write_safetensors(files.llm, llm, dtype, {**meta, "component": "llm"})
    log.info("wrote %s", files)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--dit", choices=FLAVOURS, default="ternary", help="DiT block linear values (default ternary)")
    parser.add_argument("--dtype", choices=DTYPES, default="f16", help="storage of the float tensors (default f16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="bfl", help="bfl: sd.cpp names (default)")
    parser.add_argument("--llm-hidden", type=int, default=TinyKleinConfig.llm_hidden, help="Qwen3 hidden size")
    args = parser.parse_args(argv)
    try:
        cfg = TinyKleinConfig(llm_hidden=args.llm_hidden, llm_intermediate=2 * args.llm_hidden)
        files = write_model_set(args.outdir, args.dit, args.dtype, args.seed, args.layout, cfg)
    except (ValueError, OSError) as err:
        print(f"tiny_klein: {err}", file=sys.stderr)
        return 1
    for component, size in files.sizes().items():
        print(f"{component}: {getattr(files, component)} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
