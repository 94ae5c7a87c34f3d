"""Finding and opening a transformer checkpoint in any released Bonsai format.

Formats (DESIGN §6):
  mlx       transformer-packed-mflux/diffusion_pytorch_model.safetensors: U32 codes + scales/biases
  gemlite   transformer-gemlite-int{1,2}/state_dict.pt: torch zip, W_q/scales/zeros/metadata/orig_shape
  unpacked  transformer/diffusion_pytorch_model.safetensors: BF16 values exactly ternary or binary
  bfl       the same values under BFL/sd.cpp names (q/k/v already concatenated)
  lossy     any 16-bit FLUX.2 [klein] transformer (diffusers or BFL names), quantized post-training
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import klein, safetensors, torchzip
from .errors import ConvertError
from .tensors import (GROUP, DenseSource, FloatMasterLinear, GemliteLinear, LossyLinear, MlxLinear, SourceTensor,
                      TensorRef, Weights, classify_groups, to_float32)

log = logging.getLogger(__name__)

FORMATS = ("mlx", "gemlite", "unpacked", "bfl", "lossy")

# Where each format's transformer lives inside a released repository.
_REPO_LAYOUT = (
    ("transformer-packed-mflux/diffusion_pytorch_model.safetensors", "mlx"),
    ("transformer-gemlite-int2/state_dict.pt", "gemlite"),
    ("transformer-gemlite-int1/state_dict.pt", "gemlite"),
    ("transformer/diffusion_pytorch_model.safetensors", None),
    ("transformer/diffusion_pytorch_model.safetensors.index.json", None),
)
_DIR_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json", "state_dict.pt")


@dataclass
class TransformerSource:
    format: str
    description: str
    files: list[Path]
    naming: str  # "diffusers" or "bfl"
    weights: Weights
    exact: bool
    tensors: dict[str, SourceTensor] = field(default_factory=dict)


def find_transformer_file(src: Path) -> Path:
    """The transformer checkpoint inside a repository or transformer directory (or src itself)."""
    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if src.is_file():
        return src
    for rel, _ in _REPO_LAYOUT:
        if (src / rel).is_file():
            return src / rel
    for name in _DIR_FILES:
        if (src / name).is_file():
            return src / name
    single = list(src.glob("*.safetensors"))
    if len(single) == 1:
        return single[0]
    looked = ", ".join(rel for rel, _ in _REPO_LAYOUT)
    raise ConvertError(f"{src}: unknown format: no transformer checkpoint found (looked for {looked})")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _float_refs(refs: dict[str, TensorRef], where: str) -> None:
    for name, ref in refs.items():
        if ref.dtype not in ("BF16", "F16", "F32"):
            raise ConvertError(f"{where}: tensor {name!r} has dtype {ref.dtype}; a 16-bit checkpoint was expected")


def _check_diffusers(shapes: dict[str, tuple[int, ...]], where: str) -> klein.KleinDims:
    dims = klein.dims_from_diffusers(shapes, where)
    klein.check_inventory(shapes, klein.diffusers_inventory(dims), where)
    return dims


def _check_bfl(shapes: dict[str, tuple[int, ...]], where: str) -> klein.KleinDims:
    dims = klein.dims_from_bfl(shapes, where)
    klein.check_inventory(shapes, {s.name: s.shape for s in klein.bfl_layout(dims)}, where)
    return dims


def _bfl_lowbit_names(dims: klein.KleinDims) -> set[str]:
    return {s.name for s in klein.bfl_layout(dims) if s.lowbit}


# ---- MLX --------------------------------------------------------------------------------------

def open_mlx(path: Path) -> TransformerSource:
    refs, _ = safetensors.read_header(path)
    where = str(path)
    modules = sorted(n[: -len(".scales")] for n in refs if n.endswith(".scales"))
    bits_seen: set[int] = set()
    tensors: dict[str, SourceTensor] = {}
    used: set[str] = set()
    for m in modules:
        parts = {role: refs.get(f"{m}.{role}") for role in ("weight", "scales", "biases")}
        missing = [role for role, ref in parts.items() if ref is None]
        if missing:
            raise ConvertError(f"{where}: tensor {m + '.' + missing[0]!r} is missing (quantized module {m!r})")
        w, s, b = parts["weight"], parts["scales"], parts["biases"]
        if w.dtype != "U32" or len(w.shape) != 2:
            raise ConvertError(f"{where}: tensor {w.name!r} has dtype {w.dtype} {list(w.shape)}, expected U32 [out, in*bits/32]")
        for ref in (s, b):
            if ref.dtype not in ("BF16", "F16", "F32") or tuple(ref.shape) != tuple(s.shape) or len(ref.shape) != 2 \
                    or ref.shape[0] != w.shape[0]:
                raise ConvertError(f"{where}: tensor {ref.name!r} has dtype {ref.dtype} {list(ref.shape)}, expected "
                                   f"16-bit [{w.shape[0]}, in/128] like the module's scales")
        in_features = s.shape[1] * GROUP
        bits, rem = divmod(w.shape[1] * 32, in_features)
        if rem or bits not in (1, 2):
            raise ConvertError(f"{where}: module {m!r}: weight {list(w.shape)} and scales {list(s.shape)} do not make "
                               f"a 1- or 2-bit group-128 quantization")
        if not klein.is_lowbit_linear(f"{m}.weight"):
            raise ConvertError(f"{where}: unexpected quantized tensor {w.name!r}: Bonsai keeps this layer 16-bit")
        bits_seen.add(bits)
        tensors[f"{m}.weight"] = MlxLinear(f"{m}.weight", w, s, b, "ternary" if bits == 2 else "binary", where)
        used.update(ref.name for ref in parts.values())
    if len(bits_seen) != 1:
        raise ConvertError(f"{where}: unknown format: {'mixed bit widths' if bits_seen else 'no quantized modules'}")
    (bits,) = bits_seen
    config = _read_json(path.parent / "quantization_config.json")
    if config.get("bits") not in (None, bits) or config.get("group_size") not in (None, GROUP):
        raise ConvertError(f"{path.parent / 'quantization_config.json'}: says bits={config.get('bits')}, "
                           f"group_size={config.get('group_size')}, but the tensors are {bits}-bit, group {GROUP}")
    for name, ref in refs.items():
        if name not in used:
            if klein.is_lowbit_linear(name):
                raise ConvertError(f"{where}: tensor {name!r} should be quantized in an MLX pack but is {ref.dtype}")
            tensors[name] = DenseSource(name, ref, where)
    _check_diffusers({n: t.shape for n, t in tensors.items()}, where)
    weights: Weights = "ternary" if bits == 2 else "binary"
    return TransformerSource("mlx", f"MLX {bits}-bit {weights} pack", [path], "diffusers", weights, True, tensors)


# ---- Gemlite ----------------------------------------------------------------------------------

_GEMLITE_ROLES = ("W_q", "scales", "zeros", "metadata", "orig_shape")


def open_gemlite(path: Path) -> TransformerSource:
    state = torchzip.load_state_dict(path)
    where = str(path)
    tensors: dict[str, SourceTensor] = {}
    modules = sorted(k[: -len(".W_q")] for k in state if k.endswith(".W_q"))
    used: set[str] = set()
    bits_seen: set[int] = set()
    for m in modules:
        parts = {role: state.get(f"{m}.{role}") for role in _GEMLITE_ROLES}
        missing = [role for role, v in parts.items() if not isinstance(v, torchzip.TorchTensor)]
        if missing:
            raise ConvertError(f"{where}: tensor {m + '.' + missing[0]!r} is missing (quantized module {m!r})")
        used.update(f"{m}.{role}" for role in _GEMLITE_ROLES)
        if f"{m}.bias" in state and state[f"{m}.bias"] is not None:
            raise ConvertError(f"{where}: unexpected tensor {m}.bias: FLUX.2 [klein] linears have no bias")
        used.add(f"{m}.bias")
        meta = parts["metadata"].read().astype(np.int64)
        out_features, in_features = (int(v) for v in parts["orig_shape"].read())
        if meta.size < 3:
            raise ConvertError(f"{where}: tensor {m}.metadata has {meta.size} values, expected 12")
        bits, group = int(meta[1]), int(meta[2])
        if bits not in (1, 2) or group != GROUP:
            raise ConvertError(f"{where}: module {m!r} is W_nbits={bits}, group_size={group}; only 1- or 2-bit "
                               f"group-{GROUP} packs are Bonsai formats")
        w_q, scales, zeros = parts["W_q"], parts["scales"], parts["zeros"]
        expected = {w_q.name: (("U8",), (in_features * bits // 8, out_features)),
                    scales.name: (("F32", "F16", "BF16"), (in_features // GROUP, out_features)),
                    zeros.name: (("F32", "F16", "BF16"), (in_features // GROUP, out_features))}
        for ref in (w_q, scales, zeros):
            dtypes, shape = expected[ref.name]
            if ref.dtype not in dtypes or tuple(ref.shape) != shape:
                raise ConvertError(f"{where}: tensor {ref.name!r} has dtype {ref.dtype} {list(ref.shape)}, expected "
                                   f"{dtypes[0]} {list(shape)}")
        if not klein.is_lowbit_linear(f"{m}.weight"):
            raise ConvertError(f"{where}: unexpected quantized tensor {w_q.name!r}: Bonsai keeps this layer 16-bit")
        bits_seen.add(bits)
        tensors[f"{m}.weight"] = GemliteLinear(f"{m}.weight", w_q, scales, zeros, (out_features, in_features),
                                               "ternary" if bits == 2 else "binary", where)
    if len(bits_seen) != 1:
        raise ConvertError(f"{where}: unknown format: {'mixed bit widths' if bits_seen else 'no W_q tensors'}")
    for name, value in state.items():
        if name in used:
            continue
        if not isinstance(value, torchzip.TorchTensor):
            raise ConvertError(f"{where}: unexpected entry {name!r} ({type(value).__name__}) in the state dict")
        if klein.is_lowbit_linear(name):
            raise ConvertError(f"{where}: tensor {name!r} should be quantized in a Gemlite pack but is {value.dtype}")
        tensors[name] = DenseSource(name, value, where)
    _check_diffusers({n: t.shape for n, t in tensors.items()}, where)
    (bits,) = bits_seen
    weights: Weights = "ternary" if bits == 2 else "binary"
    return TransformerSource("gemlite", f"Gemlite int{bits} {weights} pack", [path], "diffusers", weights, True,
                             tensors)


# ---- float checkpoints: exact masters or lossy ---------------------------------------------------

def _float_checkpoint(path: Path) -> tuple[dict[str, TensorRef], list[Path]]:
    if path.name.endswith(".index.json"):
        refs = safetensors.read_index(path)
        files = sorted({ref.path for ref in refs.values()})
        return dict(refs), [path, *files]
    refs, _ = safetensors.read_header(path)
    return dict(refs), [path]


def open_float(path: Path, mode: str | None, weights_hint: Weights | None) -> TransformerSource:
    """A 16-bit diffusers- or BFL-named checkpoint. mode: 'unpacked'/'bfl' (exact), 'lossy', or
    None (exact if its first low-bit linear is exactly ternary or binary, else lossy)."""
    refs, files = _float_checkpoint(path)
    where = str(path)
    _float_refs(refs, where)
    if klein.looks_like_bfl(refs):
        naming = "bfl"
        refs = {klein.strip_bfl_prefix(n): r for n, r in refs.items()}
        dims = _check_bfl({n: tuple(r.shape) for n, r in refs.items()}, where)
        lowbit_names = _bfl_lowbit_names(dims)
    elif klein.looks_like_diffusers(refs):
        naming = "diffusers"
        _check_diffusers({n: tuple(r.shape) for n, r in refs.items()}, where)
        lowbit_names = {n for n in refs if klein.is_lowbit_linear(n)}
    else:
        raise ConvertError(f"{where}: unknown format: neither diffusers nor BFL FLUX.2 [klein] tensor names")
    if mode in ("unpacked", "bfl") and mode != ("bfl" if naming == "bfl" else "unpacked"):
        raise ConvertError(f"{where}: --from {mode} given, but the tensors have {naming} names")

    # Whether this is an exact master is decided on the first rows of its first low-bit linear
    # (a float model fails at once); every later group is still checked while converting.
    probe_name = next(n for n in refs if n in lowbit_names)
    probe = refs[probe_name]
    probe_rows = min(probe.shape[0], max(1, (4 << 20) // probe.shape[1]))
    found = classify_groups(to_float32(probe.read_rows(0, probe_rows), probe.dtype, where))
    exact = mode != "lossy" and found is not None
    if mode in ("unpacked", "bfl") and found is None:
        raise ConvertError(f"{where}: tensor {probe_name!r} is not exactly ternary or binary per 128-group; "
                           f"convert it with --from lossy")
    if exact:
        weights = found
        fmt = "bfl" if naming == "bfl" else "unpacked"
        description = f"{'BFL-named' if naming == 'bfl' else 'diffusers'} 16-bit {weights} master"
    else:
        weights = weights_hint or "ternary"
        fmt = "lossy"
        description = f"16-bit FLUX.2 [klein] transformer ({naming} names), lossy {weights} post-training quantization"
    tensors: dict[str, SourceTensor] = {}
    for name, ref in refs.items():
        if name in lowbit_names:
            tensors[name] = (FloatMasterLinear if exact else LossyLinear)(name, ref, weights, where)
        else:
            tensors[name] = DenseSource(name, ref, where)
    return TransformerSource(fmt, description, files, naming, weights, exact, tensors)


def open_transformer(src: Path, from_format: str | None = None, weights_hint: Weights | None = None) -> TransformerSource:
    """Detect the format of `src` (a repository, a transformer directory or a file) and open it."""
    path = find_transformer_file(src)
    if from_format is not None and from_format not in FORMATS:
        raise ConvertError(f"unknown --from {from_format!r} (choose from {', '.join(FORMATS)})")
    if path.suffix == ".gguf":
        raise ConvertError(f"{path}: already a GGUF; nothing to convert (bonsai-sd info shows what it holds)")
    torch_file = torchzip.is_torch_zip(path) or path.suffix in (".pt", ".pth", ".bin")
    if from_format == "gemlite" or (from_format is None and torch_file):
        return open_gemlite(path)
    if path.name.endswith(".index.json"):
        return open_float(path, from_format, weights_hint)
    refs, _ = safetensors.read_header(path)
    is_mlx = any(n.endswith(".scales") for n in refs) and any(r.dtype == "U32" for r in refs.values())
    if from_format == "mlx" or (from_format is None and is_mlx):
        return open_mlx(path)
    if any(re.match(r"(model\.)?layers\.\d+\.|model\.embed_tokens", n) for n in refs):
        raise ConvertError(f"{path}: this is a text encoder, not a transformer (use --component text-encoder)")
    return open_float(path, from_format, weights_hint)
