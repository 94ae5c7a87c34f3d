#!/usr/bin/env python3
"""Write FLUX.2 [klein]-shaped transformers in every released Bonsai Image format, from ONE set
of ternary (or binary) weights, for the converter's tests and measurements. NumPy only.

Formats, each in the directory layout of its release repository:
  mlx       transformer-packed-mflux/diffusion_pytorch_model.safetensors (+ quantization_config.json)
            U32 codes LSB-first, scales/biases BF16 (or F16); ternary bias = -scale,
            binary scale = 2s, bias = -s
  gemlite   transformer-gemlite-int{1,2}/state_dict.pt: a torch zip written here without torch:
            W_q uint8 [in * bits / 8, out], scales/zeros float32 [in / 128, out] (zeros = -scale,
            binary scale = 2s), metadata int32 (12), orig_shape int32 (2); 16-bit tensors BF16
  unpacked  transformer/diffusion_pytorch_model.safetensors: every tensor BF16, values exact
  bfl       one BF16 safetensors file with BFL/sd.cpp names (q/k/v concatenated, norm_out swapped)
plus text_encoder-mlx-4bit/ (an MLX affine 4-bit Qwen3, from float weights) when asked.

Weights come from tools/tiny_klein.py (`tiny_weights()`: the tiny DiT sd-cli runs), from any
diffusers-named arrays (`from_arrays()`), or from `random_klein()` (any dimensions, klein-4B's
included, generated lazily one tensor at a time).

    python tools/bonsai_packs.py OUTDIR --weights ternary --dims tiny|klein-4b [--formats mlx,gemlite,...]
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bonsai_sd.convert import klein
from bonsai_sd.convert.safetensors import TensorSpec, write_safetensors

GROUP = 128
FORMATS = ("mlx", "gemlite", "unpacked", "bfl")
KLEIN_4B = klein.KleinDims(hidden=3072, in_channels=128, context=7680, time_channels=256, mlp=9216, head_dim=128,
                           double_blocks=5, single_blocks=20)


# ---- numbers ----------------------------------------------------------------------------------

def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits; the values given here are already bf16, so this truncates exactly."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    if (bits & 0xFFFF).any():
        raise ValueError("a value is not exactly representable in bf16")
    return (bits >> 16).astype("<u2")


def bf16_round(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def pack_lsb_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """[rows, k] codes -> [rows, k * bits / 8] bytes, element j at bit offset (j * bits) % 8 of byte j * bits / 8."""
    per_byte = 8 // bits
    c = codes.astype(np.uint8).reshape(codes.shape[0], -1, per_byte)
    out = np.zeros(c.shape[:2], np.uint8)
    for k in range(per_byte):
        out |= c[:, :, k] << (k * bits)
    return out


# ---- the one set of weights ---------------------------------------------------------------------

@dataclass
class KleinWeights:
    """A klein transformer under diffusers names: float32 for the 16-bit tensors; codes
    (int8 {-1, 0, +1} or {-1, +1}) and positive group scales for the low-bit linears."""

    weights: str  # "ternary" or "binary"
    dims: klein.KleinDims
    dense: Callable[[str], np.ndarray]
    quantized: Callable[[str], tuple[np.ndarray, np.ndarray]]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return klein.diffusers_inventory(self.dims)

    @staticmethod
    def is_lowbit(name: str) -> bool:
        return klein.is_lowbit_linear(name)

    def float_value(self, name: str) -> np.ndarray:
        if not self.is_lowbit(name):
            return self.dense(name)
        codes, scales = self.quantized(name)
        out, inp = codes.shape
        return (codes.reshape(out, -1, GROUP).astype(np.float32) * scales[:, :, None]).reshape(out, inp)


def _cached(fn: Callable[[str], object]) -> Callable[[str], object]:
    """Keep the last result: pack writers ask for one tensor's parts several times in a row."""
    last: dict[str, object] = {}

    def get(name: str) -> object:
        if name not in last:
            last.clear()
            last[name] = fn(name)
        return last[name]

    return get


def random_klein(dims: klein.KleinDims, weights: str, seed: int = 0) -> KleinWeights:
    """Random klein-shaped weights, each tensor from its own stream (seed, name): scales have three
    significant bits (exact in bf16 and fp16), 16-bit values are bf16 and fp16 exact."""
    shapes = klein.diffusers_inventory(dims)

    def rng(name: str) -> np.random.Generator:
        return np.random.default_rng([seed, *name.encode()])

    def dense(name: str) -> np.ndarray:
        shape = shapes[name]
        if len(shape) == 1:
            x = 1.0 + 0.1 * rng(name).standard_normal(shape)
        else:
            x = rng(name).standard_normal(shape, np.float32) / np.sqrt(shape[1])
        x = bf16_round(np.asarray(x, np.float32))
        x[np.abs(x) < 2.0 ** -14] = 0.0  # keep every value a normal fp16 too
        return x

    def quantized(name: str) -> tuple[np.ndarray, np.ndarray]:
        out, inp = shapes[name]
        r = rng(name)
        if weights == "ternary":
            codes = r.integers(-1, 2, (out, inp), dtype=np.int8)
        else:
            codes = (r.integers(0, 2, (out, inp), dtype=np.int8) * 2 - 1).astype(np.int8)
        mantissa = r.integers(8, 16, (out, inp // GROUP))  # 3 significant bits: 8..15 / 8
        exponent = r.integers(-9, -5, (out, inp // GROUP))
        return codes, np.ldexp(mantissa / 8.0, exponent).astype(np.float32)

    return KleinWeights(weights, dims, dense, _cached(quantized))  # type: ignore[arg-type]


def split_group_values(x: np.ndarray, weights: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact ternary/binary float values -> (codes, positive scales)."""
    out, inp = x.shape
    groups = x.reshape(out, -1, GROUP)
    scales = np.abs(groups).max(axis=2)
    safe = np.where(scales == 0, 1, scales)[:, :, None]
    codes = groups / safe
    allowed = (-1.0, 1.0) if weights == "binary" else (-1.0, 0.0, 1.0)
    if not np.isin(codes, allowed).all():
        raise ValueError(f"{name}: values are not exactly {weights} per 128-group")
    return codes.reshape(out, inp).astype(np.int8), scales.astype(np.float32)


def from_arrays(tensors: Mapping[str, np.ndarray], weights: str) -> KleinWeights:
    """Diffusers-named float arrays (low-bit linears exactly ternary/binary per 128-group)."""
    shapes = {n: tuple(np.shape(v)) for n, v in tensors.items()}
    dims = klein.dims_from_diffusers(shapes, "from_arrays")
    klein.check_inventory(shapes, klein.diffusers_inventory(dims), "from_arrays")
    return KleinWeights(weights, dims, lambda n: np.asarray(tensors[n], np.float32),
                        lambda n: split_group_values(np.asarray(tensors[n], np.float32), weights, n))


def tiny_weights(weights: str, seed: int = 0, cfg: object | None = None) -> KleinWeights:
    """tools/tiny_klein.py's DiT (ternary or binary flavour) under diffusers names."""
    import tiny_klein

    cfg = cfg or tiny_klein.TinyKleinConfig()
    dit = tiny_klein.make_dit(cfg, weights, seed)
    return from_arrays(tiny_klein.bfl_to_diffusers(dit.tensors), weights)


# ---- transformer packs --------------------------------------------------------------------------

def transformer_config(dims: klein.KleinDims) -> dict[str, object]:
    return {"_class_name": "Flux2Transformer2DModel", "attention_head_dim": dims.head_dim,
            "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-6, "guidance_embeds": False,
            "in_channels": dims.in_channels, "joint_attention_dim": dims.context,
            "mlp_ratio": dims.mlp / dims.hidden, "num_attention_heads": dims.hidden // dims.head_dim,
            "num_layers": dims.double_blocks, "num_single_layers": dims.single_blocks, "out_channels": None,
            "patch_size": 1, "rope_theta": 2000, "timestep_guidance_channels": dims.time_channels}


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_unpacked(root: Path, kw: KleinWeights) -> Path:
    """The unpacked BF16 master: transformer/diffusion_pytorch_model.safetensors."""
    path = root / "transformer" / "diffusion_pytorch_model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path.parent / "config.json", transformer_config(kw.dims))
    specs = [TensorSpec(n, "BF16", s) for n, s in kw.shapes.items()]
    return write_safetensors(path, specs, lambda n: bf16_bits(kw.float_value(n)))


def write_bfl(path: Path, kw: KleinWeights) -> Path:
    """One BF16 file with BFL names (q/k/v row-concatenated, norm_out halves swapped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = klein.bfl_layout(kw.dims)

    def produce(name: str) -> np.ndarray:
        spec = next(s for s in layout if s.name == name)
        parts = []
        for part in spec.parts:
            x = kw.float_value(part.source)
            parts.append(np.concatenate([x[x.shape[0] // 2:], x[: x.shape[0] // 2]]) if part.swap_halves else x)
        return bf16_bits(np.concatenate(parts) if len(parts) > 1 else parts[0])

    return write_safetensors(path, [TensorSpec(s.name, "BF16", s.shape) for s in layout], produce)


def _mlx_parts(kw: KleinWeights, name: str, scale_dtype: str) -> dict[str, np.ndarray]:
    codes, s = kw.quantized(name)
    bits = 2 if kw.weights == "ternary" else 1
    q = codes + 1 if bits == 2 else (codes > 0)
    words = pack_lsb_first(q, bits).view("<u4")
    scale, bias = (s, -s) if bits == 2 else (2 * s, -s)
    store = bf16_bits if scale_dtype == "BF16" else (lambda v: v.astype("<f2"))
    return {"weight": words, "scales": store(scale), "biases": store(bias)}


def write_mlx(root: Path, kw: KleinWeights, scale_dtype: str = "BF16") -> Path:
    """transformer-packed-mflux/: the MLX pack (U32 codes, scales and biases)."""
    path = root / "transformer-packed-mflux" / "diffusion_pytorch_model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    bits = 2 if kw.weights == "ternary" else 1
    _write_json(path.parent / "config.json", transformer_config(kw.dims))
    _write_json(path.parent / "quantization_config.json", {"bits": bits, "group_size": GROUP, "mode": "affine"})
    specs = []
    for name, shape in kw.shapes.items():
        if kw.is_lowbit(name):
            out, inp = shape
            module = name[: -len(".weight")]
            specs += [TensorSpec(f"{module}.weight", "U32", (out, inp * bits // 32)),
                      TensorSpec(f"{module}.scales", scale_dtype, (out, inp // GROUP)),
                      TensorSpec(f"{module}.biases", scale_dtype, (out, inp // GROUP))]
        else:
            specs.append(TensorSpec(name, "BF16", shape))
    parts = _cached(lambda module: _mlx_parts(kw, f"{module}.weight", scale_dtype))

    def produce(name: str) -> np.ndarray:
        module, role = name.rsplit(".", 1)
        if role in ("scales", "biases") or kw.is_lowbit(name):
            return parts(module)[role]  # type: ignore[index]
        return bf16_bits(kw.dense(name))

    return write_safetensors(path, specs, produce)


# torch zip writer: the pickle (protocol 2) and the archive layout torch.load reads.

# Element type -> torch's storage class name ('<u2' holds bfloat16 bits).
_STORAGE_CLASS = {np.dtype("u1"): "ByteStorage", np.dtype("<i4"): "IntStorage", np.dtype("<f4"): "FloatStorage",
                  np.dtype("<u2"): "BFloat16Storage", np.dtype("<f2"): "HalfStorage"}


class _PickleWriter:
    def __init__(self) -> None:
        self.out = io.BytesIO()

    def op(self, code: bytes) -> None:
        self.out.write(code)

    def global_(self, module: str, name: str) -> None:
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def string(self, s: str) -> None:
        b = s.encode()
        self.op(b"X" + struct.pack("<I", len(b)) + b)

    def int_(self, n: int) -> None:
        if -(2 ** 31) <= n < 2 ** 31:
            self.op(b"J" + struct.pack("<i", n))
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            self.op(b"\x8a" + bytes([len(raw)]) + raw)

    def int_tuple(self, values: Iterable[int]) -> None:
        self.op(b"(")
        for v in values:
            self.int_(v)
        self.op(b"t")

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.op(b")R")


@dataclass(frozen=True)
class TorchSpec:
    name: str
    dtype: np.dtype  # little-endian element type ('<u2' for bfloat16 bits)
    shape: tuple[int, ...]


def _torch_pickle(specs: list[TorchSpec]) -> bytes:
    """torch.save's pickle of an OrderedDict of contiguous tensors, storage key = position."""
    p = _PickleWriter()
    p.op(b"\x80\x02")
    p.empty_ordered_dict()
    p.op(b"(")
    for key, spec in enumerate(specs):
        numel = int(np.prod(spec.shape, dtype=np.int64))
        p.string(spec.name)
        p.global_("torch._utils", "_rebuild_tensor_v2")
        p.op(b"((")
        p.string("storage")
        p.global_("torch", _STORAGE_CLASS[spec.dtype])
        p.string(str(key))
        p.string("cpu")
        p.int_(numel)
        p.op(b"tQ")  # the tuple is the persistent id of the storage
        p.int_(0)  # storage offset
        p.int_tuple(spec.shape)
        strides, acc = [], 1
        for n in reversed(spec.shape):
            strides.insert(0, acc)
            acc *= n
        p.int_tuple(strides)
        p.op(b"\x89")  # requires_grad = False
        p.empty_ordered_dict()  # backward hooks
        p.op(b"tR")
    p.op(b"u.")
    return p.out.getvalue()


def write_torch_zip(dest: Path | io.BytesIO, specs: list[TorchSpec], produce: Callable[[str], np.ndarray],
                    archive: str = "state_dict") -> None:
    """A torch.save-compatible zip, each storage streamed from `produce(name)` in turn."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr(f"{archive}/data.pkl", _torch_pickle(specs))
        zf.writestr(f"{archive}/byteorder", "little")
        for key, spec in enumerate(specs):
            array = np.ascontiguousarray(produce(spec.name))
            if (array.dtype.str[1:], array.shape) != (spec.dtype.str[1:], spec.shape):
                raise ValueError(f"{spec.name}: got {array.dtype} {array.shape}, declared {spec.dtype} {spec.shape}")
            with zf.open(f"{archive}/data/{key}", "w", force_zip64=True) as entry:
                entry.write(array.astype(spec.dtype, copy=False).tobytes())
        zf.writestr(f"{archive}/version", "3\n")


def torch_zip_bytes(tensors: Mapping[str, np.ndarray], archive: str = "state_dict") -> bytes:
    """An in-memory torch zip of these arrays (bf16 given as '<u2')."""
    arrays = {n: np.asarray(a) for n, a in tensors.items()}
    specs = [TorchSpec(n, a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype, a.shape)
             for n, a in arrays.items()]
    buf = io.BytesIO()
    write_torch_zip(buf, specs, arrays.__getitem__, archive)
    return buf.getvalue()


def _gemlite_specs(kw: KleinWeights) -> list[TorchSpec]:
    bits = 2 if kw.weights == "ternary" else 1
    specs = []
    for name, shape in kw.shapes.items():
        if not kw.is_lowbit(name):
            specs.append(TorchSpec(name, np.dtype("<u2"), shape))
            continue
        module, (out, inp) = name[: -len(".weight")], shape
        specs += [TorchSpec(f"{module}.W_q", np.dtype("u1"), (inp * bits // 8, out)),
                  TorchSpec(f"{module}.scales", np.dtype("<f4"), (inp // GROUP, out)),
                  TorchSpec(f"{module}.zeros", np.dtype("<f4"), (inp // GROUP, out)),
                  TorchSpec(f"{module}.metadata", np.dtype("<i4"), (12,)),
                  TorchSpec(f"{module}.orig_shape", np.dtype("<i4"), (2,))]
    return specs


def _gemlite_producer(kw: KleinWeights) -> Callable[[str], np.ndarray]:
    bits = 2 if kw.weights == "ternary" else 1

    def module_parts(module: str) -> dict[str, np.ndarray]:
        codes, s = kw.quantized(f"{module}.weight")
        q = codes + 1 if bits == 2 else (codes > 0)
        scale = s if bits == 2 else 2 * s
        # metadata: scaled_activations, W_nbits, group_size, unpack_mask, elements_per_sample,
        # input_dtype, output_dtype, acc_dtype, meta_dtype, channel_scale_mode, W_group_mode
        # (4: fma, w = q * scale + zeros), data_contiguous
        return {"W_q": np.ascontiguousarray(pack_lsb_first(q, bits).T),
                "scales": np.ascontiguousarray(scale.T.astype("<f4")),
                "zeros": np.ascontiguousarray((-s).T.astype("<f4")),
                "metadata": np.array([0, bits, GROUP, (1 << bits) - 1, 8 // bits, 1, 1, 2, 2, 0, 4, 1], "<i4"),
                "orig_shape": np.array(kw.shapes[f"{module}.weight"], "<i4")}

    parts = _cached(module_parts)

    def produce(name: str) -> np.ndarray:
        if name in kw.shapes:
            return bf16_bits(kw.dense(name))
        module, role = name.rsplit(".", 1)
        return parts(module)[role]  # type: ignore[index]

    return produce


def gemlite_tensors(kw: KleinWeights) -> dict[str, np.ndarray]:
    """All tensors of the Gemlite state dict, in memory (small models)."""
    produce = _gemlite_producer(kw)
    return {spec.name: produce(spec.name) for spec in _gemlite_specs(kw)}


def write_gemlite(root: Path, kw: KleinWeights) -> Path:
    """transformer-gemlite-int{1,2}/state_dict.pt, written one tensor at a time."""
    bits = 2 if kw.weights == "ternary" else 1
    path = root / f"transformer-gemlite-int{bits}" / "state_dict.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path.parent / "config.json", transformer_config(kw.dims))
    _write_json(path.parent / "quantization_config.json",
                {"format": f"gemlite-int{bits}-{kw.weights}-g{GROUP}", "bits": bits, "group_size": GROUP})
    write_torch_zip(path, _gemlite_specs(kw), _gemlite_producer(kw))
    return path


def write_packs(root: Path, kw: KleinWeights, formats: Iterable[str] = FORMATS,
                scale_dtype: str = "BF16") -> dict[str, Path]:
    """Each format in its own repository directory root/<format>/ (bfl: root/bfl/model.safetensors)."""
    writers: dict[str, Callable[[Path], Path]] = {
        "mlx": lambda r: write_mlx(r, kw, scale_dtype), "gemlite": lambda r: write_gemlite(r, kw),
        "unpacked": lambda r: write_unpacked(r, kw), "bfl": lambda r: write_bfl(r / "model.safetensors", kw)}
    return {fmt: writers[fmt](root / fmt) for fmt in formats}


# ---- MLX 4-bit text encoder ---------------------------------------------------------------------

def mlx_quantize_4bit(w: np.ndarray, group: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MLX affine 4-bit of float weights [out, in]: (U32 words, scales, biases) with scale and bias
    rounded to bf16 and the codes chosen for those rounded values."""
    out, inp = w.shape
    g = w.reshape(out, inp // group, group).astype(np.float32)
    lo, hi = g.min(axis=2), g.max(axis=2)
    scale = bf16_round((hi - lo) / 15)
    bias = bf16_round(lo)
    safe = np.where(scale == 0, 1, scale)[:, :, None]
    q = np.clip(np.round((g - bias[:, :, None]) / safe), 0, 15).astype(np.uint8).reshape(out, inp)
    return pack_lsb_first(q, 4).view("<u4"), scale, bias


def write_mlx_text_encoder(root: Path, tensors: Mapping[str, np.ndarray], group: int = 64,
                           config: Mapping[str, object] | None = None) -> Path:
    """text_encoder-mlx-4bit/model.safetensors: every 2-D weight 4-bit, the rest BF16."""
    path = root / "text_encoder-mlx-4bit" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path.parent / "config.json", {**(config or {}), "quantization": {"group_size": group, "bits": 4}})
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    for name, w in tensors.items():
        w = np.asarray(w, np.float32)
        if w.ndim == 2 and name.endswith(".weight"):
            words, scale, bias = mlx_quantize_4bit(w, group)
            module = name[: -len(".weight")]
            arrays[f"{module}.weight"] = ("U32", words)
            arrays[f"{module}.scales"] = ("BF16", bf16_bits(scale))
            arrays[f"{module}.biases"] = ("BF16", bf16_bits(bias))
        else:
            arrays[name] = ("BF16", bf16_bits(bf16_round(w)))
    specs = [TensorSpec(n, dt, tuple(a.shape)) for n, (dt, a) in arrays.items()]
    return write_safetensors(path, specs, lambda n: arrays[n][1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--weights", choices=("ternary", "binary"), default="ternary")
    parser.add_argument("--dims", choices=("tiny", "klein-4b"), default="tiny")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    parser.add_argument("--scale-dtype", choices=("BF16", "F16"), default="BF16", help="MLX scales/biases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        parser.error(f"unknown format {unknown[0]!r}")
    kw = tiny_weights(args.weights, args.seed) if args.dims == "tiny" else random_klein(KLEIN_4B, args.weights, args.seed)
    for fmt, path in write_packs(args.outdir, kw, formats, args.scale_dtype).items():
        print(f"{fmt}: {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
