"""The FLUX.2 [klein] transformer's tensors: the diffusers inventory and its BFL/sd.cpp names.

Dimensions come from the checkpoint itself (hidden size, channels, MLP width, head size,
block counts), so the same code serves the real 4B model and tiny test models.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ConvertError

BFL_PREFIX = "model.diffusion_model."

# Linears that Bonsai keeps low-bit (the attention and MLP projections of every block).
_DOUBLE_LOWBIT = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                  "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
                  "ff_context.linear_out")
_SINGLE_LOWBIT = ("attn.to_qkv_mlp_proj", "attn.to_out")


def is_lowbit_linear(diffusers_name: str) -> bool:
    m = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.\d+\.(.+)\.weight", diffusers_name)
    if not m:
        return False
    return m.group(2) in (_DOUBLE_LOWBIT if m.group(1) == "transformer_blocks" else _SINGLE_LOWBIT)


@dataclass(frozen=True)
class KleinDims:
    hidden: int
    in_channels: int
    context: int  # joint_attention_dim
    time_channels: int
    mlp: int  # MLP hidden width (mlp_ratio * hidden)
    head_dim: int
    double_blocks: int
    single_blocks: int


@dataclass(frozen=True)
class Part:
    """Rows of one source tensor, in the order they appear in an output tensor."""

    source: str
    swap_halves: bool = False  # norm_out: diffusers (scale, shift) -> BFL (shift, scale)


@dataclass(frozen=True)
class OutputSpec:
    name: str  # BFL name, without the model.diffusion_model. prefix
    shape: tuple[int, ...]  # numpy order
    lowbit: bool
    parts: tuple[Part, ...]  # diffusers sources, row-concatenated


def diffusers_inventory(d: KleinDims) -> dict[str, tuple[int, ...]]:
    """Every tensor a diffusers Flux2Transformer2DModel checkpoint of these dimensions holds."""
    h, m = d.hidden, d.mlp
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (h, d.in_channels),
        "context_embedder.weight": (h, d.context),
        "time_guidance_embed.timestep_embedder.linear_1.weight": (h, d.time_channels),
        "time_guidance_embed.timestep_embedder.linear_2.weight": (h, h),
        "double_stream_modulation_img.linear.weight": (6 * h, h),
        "double_stream_modulation_txt.linear.weight": (6 * h, h),
        "single_stream_modulation.linear.weight": (3 * h, h),
    }
    for i in range(d.double_blocks):
        p = f"transformer_blocks.{i}."
        for lin in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            shapes[f"{p}attn.{lin}.weight"] = (h, h)
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            shapes[f"{p}attn.{norm}.weight"] = (d.head_dim,)
        for ff in ("ff", "ff_context"):
            shapes[f"{p}{ff}.linear_in.weight"] = (2 * m, h)
            shapes[f"{p}{ff}.linear_out.weight"] = (h, m)
    for i in range(d.single_blocks):
        p = f"single_transformer_blocks.{i}.attn."
        shapes[f"{p}to_qkv_mlp_proj.weight"] = (3 * h + 2 * m, h)
        shapes[f"{p}to_out.weight"] = (h, h + m)
        shapes[f"{p}norm_q.weight"] = (d.head_dim,)
        shapes[f"{p}norm_k.weight"] = (d.head_dim,)
    shapes["norm_out.linear.weight"] = (2 * h, h)
    shapes["proj_out.weight"] = (d.in_channels, h)
    return shapes


def bfl_layout(d: KleinDims) -> list[OutputSpec]:
    """The sd.cpp (BFL-named) tensors, in file order, each with its diffusers sources."""
    inv = diffusers_inventory(d)

    def spec(name: str, *sources: str, swap: bool = False) -> OutputSpec:
        rows = sum(inv[s][0] for s in sources)
        shape = (rows, *inv[sources[0]][1:])
        return OutputSpec(name, shape, is_lowbit_linear(sources[0]), tuple(Part(s, swap) for s in sources))

    out = [
        spec("img_in.weight", "x_embedder.weight"),
        spec("txt_in.weight", "context_embedder.weight"),
        spec("time_in.in_layer.weight", "time_guidance_embed.timestep_embedder.linear_1.weight"),
        spec("time_in.out_layer.weight", "time_guidance_embed.timestep_embedder.linear_2.weight"),
        spec("double_stream_modulation_img.lin.weight", "double_stream_modulation_img.linear.weight"),
        spec("double_stream_modulation_txt.lin.weight", "double_stream_modulation_txt.linear.weight"),
        spec("single_stream_modulation.lin.weight", "single_stream_modulation.linear.weight"),
    ]
    for i in range(d.double_blocks):
        p, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        out += [
            spec(f"{b}img_attn.qkv.weight", *(f"{p}attn.{x}.weight" for x in ("to_q", "to_k", "to_v"))),
            spec(f"{b}img_attn.proj.weight", f"{p}attn.to_out.0.weight"),
            spec(f"{b}img_attn.norm.query_norm.scale", f"{p}attn.norm_q.weight"),
            spec(f"{b}img_attn.norm.key_norm.scale", f"{p}attn.norm_k.weight"),
            spec(f"{b}img_mlp.0.weight", f"{p}ff.linear_in.weight"),
            spec(f"{b}img_mlp.2.weight", f"{p}ff.linear_out.weight"),
            spec(f"{b}txt_attn.qkv.weight", *(f"{p}attn.{x}.weight" for x in ("add_q_proj", "add_k_proj", "add_v_proj"))),
            spec(f"{b}txt_attn.proj.weight", f"{p}attn.to_add_out.weight"),
            spec(f"{b}txt_attn.norm.query_norm.scale", f"{p}attn.norm_added_q.weight"),
            spec(f"{b}txt_attn.norm.key_norm.scale", f"{p}attn.norm_added_k.weight"),
            spec(f"{b}txt_mlp.0.weight", f"{p}ff_context.linear_in.weight"),
            spec(f"{b}txt_mlp.2.weight", f"{p}ff_context.linear_out.weight"),
        ]
    for i in range(d.single_blocks):
        p, b = f"single_transformer_blocks.{i}.attn.", f"single_blocks.{i}."
        out += [
            spec(f"{b}linear1.weight", f"{p}to_qkv_mlp_proj.weight"),
            spec(f"{b}linear2.weight", f"{p}to_out.weight"),
            spec(f"{b}norm.query_norm.scale", f"{p}norm_q.weight"),
            spec(f"{b}norm.key_norm.scale", f"{p}norm_k.weight"),
        ]
    out += [
        spec("final_layer.linear.weight", "proj_out.weight"),
        spec("final_layer.adaLN_modulation.1.weight", "norm_out.linear.weight", swap=True),
    ]
    return out


def _block_count(names: Iterable[str], prefix: str) -> int:
    indices = {int(m.group(1)) for n in names if (m := re.match(re.escape(prefix) + r"(\d+)\.", n))}
    return max(indices) + 1 if indices else 0


def _shape(shapes: Mapping[str, tuple[int, ...]], name: str, where: str) -> tuple[int, ...]:
    if name not in shapes:
        raise ConvertError(f"{where}: tensor {name!r} is missing")
    return shapes[name]


def dims_from_diffusers(shapes: Mapping[str, tuple[int, ...]], where: str) -> KleinDims:
    """Dimensions from a diffusers checkpoint's (logical, unpacked) tensor shapes."""
    hidden, in_channels = _shape(shapes, "x_embedder.weight", where)
    return KleinDims(
        hidden=hidden, in_channels=in_channels,
        context=_shape(shapes, "context_embedder.weight", where)[1],
        time_channels=_shape(shapes, "time_guidance_embed.timestep_embedder.linear_1.weight", where)[1],
        mlp=_shape(shapes, "transformer_blocks.0.ff.linear_out.weight", where)[1] if "transformer_blocks.0.ff.linear_out.weight" in shapes
        else _shape(shapes, "single_transformer_blocks.0.attn.to_out.weight", where)[1] - hidden,
        head_dim=_shape(shapes, "single_transformer_blocks.0.attn.norm_q.weight", where)[0]
        if "single_transformer_blocks.0.attn.norm_q.weight" in shapes
        else _shape(shapes, "transformer_blocks.0.attn.norm_q.weight", where)[0],
        double_blocks=_block_count(shapes, "transformer_blocks."),
        single_blocks=_block_count(shapes, "single_transformer_blocks."),
    )


def dims_from_bfl(shapes: Mapping[str, tuple[int, ...]], where: str) -> KleinDims:
    hidden, in_channels = _shape(shapes, "img_in.weight", where)
    return KleinDims(
        hidden=hidden, in_channels=in_channels,
        context=_shape(shapes, "txt_in.weight", where)[1],
        time_channels=_shape(shapes, "time_in.in_layer.weight", where)[1],
        mlp=_shape(shapes, "single_blocks.0.linear2.weight", where)[1] - hidden if "single_blocks.0.linear2.weight" in shapes
        else _shape(shapes, "double_blocks.0.img_mlp.2.weight", where)[1],
        head_dim=_shape(shapes, "single_blocks.0.norm.query_norm.scale", where)[0]
        if "single_blocks.0.norm.query_norm.scale" in shapes
        else _shape(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", where)[0],
        double_blocks=_block_count(shapes, "double_blocks."),
        single_blocks=_block_count(shapes, "single_blocks."),
    )


def check_inventory(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Refuse missing tensors, unexpected tensors and wrong shapes, naming the first of each."""
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise ConvertError(f"{where}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    extra = [n for n in shapes if n not in expected]
    if extra:
        raise ConvertError(f"{where}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all); "
                           f"not a FLUX.2 [klein] transformer of the inferred dimensions")
    for name, shape in expected.items():
        if tuple(shapes[name]) != tuple(shape):
            raise ConvertError(f"{where}: tensor {name!r} has shape {list(shapes[name])}, expected {list(shape)}")


def strip_bfl_prefix(name: str) -> str:
    return name[len(BFL_PREFIX):] if name.startswith(BFL_PREFIX) else name


def looks_like_bfl(names: Iterable[str]) -> bool:
    return any(strip_bfl_prefix(n).startswith(("double_blocks.", "single_blocks.", "img_in.")) for n in names)


def looks_like_diffusers(names: Iterable[str]) -> bool:
    return any(n.startswith(("transformer_blocks.", "single_transformer_blocks.", "x_embedder.")) for n in names)
