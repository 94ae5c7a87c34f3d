"""Model files: what a weight file holds (read from its header only), which component of a
FLUX.2 [klein] pipeline it is, and the checks that turn a wrong file into a clear error before
anything reaches the engine."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

WEIGHT_SUFFIXES = (".gguf", ".safetensors")

# Prefixes sd.cpp and other tools put in front of a component's own names.
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "first_stage_model.", "vae.", "text_encoders.llm.")

KLEIN_CHANNELS = 128  # latent channels the FLUX.2 DiT sees (32 VAE channels x 2x2 patches)
HEAD_DIM = 128  # sd.cpp: FLUX.2 RoPE axes 4 x 32
FLUX2_VAE_LATENT_CHANNELS = 32
QWEN_VOCAB = 151_936
QWEN_MIN_LAYERS = 27  # sd.cpp reads the hidden states after layers 9, 18 and 27

HOW_TO_CONVERT = "convert it first: bonsai-sd convert SOURCE OUT.gguf"


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or not the component it was given as."""


@dataclass(frozen=True)
class WeightFile:
    """A weight file's tensor table, read from its header.

    `shapes` is keyed by the component's own tensor names (sd.cpp's prefixes such as
    ``model.diffusion_model.`` removed); shapes are outermost-first (PyTorch order) in both formats.
    """

    path: Path
    format: str  # "gguf" | "safetensors"
    shapes: dict[str, tuple[int, ...]]
    gguf_types: dict[str, int] = field(default_factory=dict)  # ggml type id per tensor (GGUF only)
    metadata: dict[str, str] = field(default_factory=dict)  # string values only

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def has(self, name: str) -> bool:
        return name in self.shapes

    def names(self) -> Iterable[str]:
        return self.shapes.keys()


def _strip_prefix(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


# --------------------------------------------------------------------------------------------
# Reading headers

_GGUF_MAGIC = b"GGUF"
# GGUF metadata value types: fixed sizes of the scalar ones; 8 = string, 9 = array.
_GGUF_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_COUNT = 1 << 24  # beyond any real tensor or metadata count: a corrupt header
_MAX_STRING = 1 << 26
_GGML_MAX_DIMS = 4
_GGML_MAX_NAME = 128  # BONSAI_SD_GGML_MAX_NAME in CMakeLists.txt: names are shorter
_INT64_MAX = (1 << 63) - 1  # ggml's tensor sizes are int64


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelFileError(f"{self.path}: the GGUF header is truncated (the file is incomplete or damaged)")
        return data

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def count(self, what: str) -> int:
        n = self.u64()
        if n > _MAX_COUNT:
            raise ModelFileError(f"{self.path}: implausible {what} count {n}: not a valid GGUF file")
        return n

    def raw_string(self) -> bytes:
        n = self.u64()
        if n > _MAX_STRING:
            raise ModelFileError(f"{self.path}: implausible string length {n}: not a valid GGUF file")
        return self.take(n)

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def name(self, what: str) -> tuple[bytes, str]:
        """A key or tensor name: GGUF strings are UTF-8, and the engine matches names exactly."""
        raw = self.raw_string()
        try:
            return raw, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            shown = raw.decode("utf-8", errors="replace")
            raise ModelFileError(f"{self.path}: the name of {what} ({shown[:60]!r}) is not valid UTF-8 (byte "
                                 f"0x{raw[e.start]:02x} at {e.start}): not a valid GGUF file") from None

    def skip_value(self, vtype: int) -> None:
        if vtype in _GGUF_SCALAR_SIZES:
            self.take(_GGUF_SCALAR_SIZES[vtype])
        elif vtype == _GGUF_STRING:
            self.string()
        elif vtype == _GGUF_ARRAY:
            etype, n = self.u32(), self.count("array")
            if etype in _GGUF_SCALAR_SIZES:
                self.take(_GGUF_SCALAR_SIZES[etype] * n)
            else:
                for _ in range(n):
                    self.skip_value(etype)
        else:
            raise ModelFileError(f"{self.path}: unknown GGUF metadata value type {vtype}: not a valid GGUF file")


def _read_gguf(path: Path, f: BinaryIO) -> WeightFile:
    r = _Reader(f, path)
    r.take(4)  # magic, checked by the caller
    version = r.u32()
    if version not in (2, 3):
        raise ModelFileError(f"{path}: GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = r.count("tensor"), r.count("metadata")
    metadata: dict[str, str] = {}
    for index in range(n_kv):
        key, vtype = r.name(f"metadata entry {index}")[1], r.u32()
        if not key:
            raise ModelFileError(f"{path}: a metadata key is empty: not a valid GGUF file")
        if vtype == _GGUF_STRING:
            metadata[key] = r.string()
        else:
            r.skip_value(vtype)
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    for index in range(n_tensors):
        (raw_name, name), n_dims = r.name(f"tensor {index}"), r.u32()
        if len(raw_name) >= _GGML_MAX_NAME:
            raise ModelFileError(f"{path}: tensor {index} has a name of {len(raw_name)} bytes ({name[:40]!r}...), "
                                 f"longer than ggml's {_GGML_MAX_NAME - 1}: not a valid GGUF file")
        if n_dims > _GGML_MAX_DIMS:
            raise ModelFileError(f"{path}: tensor {name!r} has {n_dims} dimensions, more than ggml's "
                                 f"{_GGML_MAX_DIMS}: not a valid GGUF file")
        dims = [r.u64() for _ in range(n_dims)]
        elements = 1
        for d in dims:
            elements *= d
        if any(d > _INT64_MAX for d in dims) or elements > _INT64_MAX:
            raise ModelFileError(f"{path}: tensor {name!r} has dimensions {dims}, too large for any tensor: "
                                 f"not a valid GGUF file")
        types[name] = r.u32()
        r.u64()  # data offset
        shapes[_strip_prefix(name)] = tuple(reversed(dims))  # GGUF lists ne0 (innermost) first
    return WeightFile(path, "gguf", shapes, types, metadata)


def _read_safetensors(path: Path, f: BinaryIO, head: bytes) -> WeightFile:
    (length,) = struct.unpack("<Q", head)
    if length > 100_000_000:
        raise ModelFileError(f"{path}: not a GGUF or safetensors file")
    try:
        header = json.loads(f.read(length))
    except ValueError:
        raise ModelFileError(f"{path}: not a GGUF or safetensors file (no readable header)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a GGUF or safetensors file")
    meta = header.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ModelFileError(f"{path}: safetensors entry {name!r} has no valid shape ({shape!r}): "
                                 f"the header is damaged")
        shapes[_strip_prefix(name)] = tuple(shape)
    return WeightFile(path, "safetensors", shapes, {}, {k: str(v) for k, v in meta.items()})


def read_gguf_header(path: str | Path) -> WeightFile:
    """Read and check the header of a GGUF file: version, counts, string lengths, dimensions."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if f.read(4) != _GGUF_MAGIC:
                raise ModelFileError(f"{path}: not a GGUF file (no GGUF magic)")
            f.seek(0)
            return _read_gguf(path, f)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read: {e.strerror or e}") from None


def read_weight_file(path: str | Path) -> WeightFile:
    """Read the tensor table of a GGUF or safetensors file (not the tensor data)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a directory, expected a .gguf or .safetensors file")
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if head[:4] == _GGUF_MAGIC:
                f.seek(0)
                return _read_gguf(path, f)
            if len(head) == 8:
                return _read_safetensors(path, f, head)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot be read: {e.strerror or e}") from None
    raise ModelFileError(f"{path}: not a GGUF or safetensors file")


# --------------------------------------------------------------------------------------------
# Components

TRANSFORMER, TEXT_ENCODER, VAE = "transformer", "text encoder", "VAE"


def detect_component(wf: WeightFile) -> str | None:
    """Which klein component `wf` is by its tensor names: TRANSFORMER, TEXT_ENCODER, VAE, or None."""
    names = set(wf.names())
    if any(n.startswith(("double_blocks.", "single_blocks.", "transformer_blocks.")) for n in names):
        return TRANSFORMER
    if any(n.startswith(("model.layers.", "blk.", "layers.")) for n in names) or "token_embd.weight" in names:
        return TEXT_ENCODER
    if "decoder.conv_in.weight" in names:
        return VAE
    return None


def _describe_unknown(wf: WeightFile) -> str:
    sample = ", ".join(sorted(wf.names())[:3]) or "no tensors"
    return f"unrecognised tensors ({sample}, ...)"


def check_transformer(wf: WeightFile) -> int:
    """Check that `wf` is a FLUX.2 [klein] transformer sd.cpp can load; return its context dim."""
    p = wf.path
    kind = detect_component(wf)
    if kind != TRANSFORMER:
        what = f"a {kind}" if kind else _describe_unknown(wf)
        raise ModelFileError(f"{p}: given as the transformer, but it holds {what}")
    if wf.has("transformer_blocks.0.attn.to_q.weight") or wf.has("x_embedder.weight"):
        raise ModelFileError(
            f"{p}: a transformer with diffusers names (Flux2Transformer2DModel); stable-diffusion.cpp needs "
            f"BFL names with fused q/k/v: {HOW_TO_CONVERT}"
        )
    if not wf.has("double_stream_modulation_img.lin.weight"):
        if wf.has("double_blocks.0.img_mod.lin.weight"):
            raise ModelFileError(f"{p}: a FLUX.1 transformer; bonsai-sd runs FLUX.2 [klein] (Bonsai Image)")
        raise ModelFileError(f"{p}: not a FLUX.2 transformer (no double_stream_modulation_img.lin.weight)")
    if wf.has("single_blocks.47.linear1.weight") or wf.has("guidance_in.in_layer.weight"):
        raise ModelFileError(f"{p}: a FLUX.2 [dev] transformer; bonsai-sd runs FLUX.2 [klein] (Bonsai Image)")
    img_in, txt_in = wf.shape("img_in.weight"), wf.shape("txt_in.weight")
    if img_in is None or txt_in is None or len(img_in) != 2 or len(txt_in) != 2:
        raise ModelFileError(f"{p}: FLUX.2 transformer without 2-D img_in/txt_in weights: the file is incomplete")
    if img_in[1] != KLEIN_CHANNELS:
        raise ModelFileError(f"{p}: img_in takes {img_in[1]} channels, FLUX.2 [klein] has {KLEIN_CHANNELS}")
    key_norm = wf.shape("double_blocks.0.img_attn.norm.key_norm.scale")
    if key_norm is not None and key_norm != (HEAD_DIM,):
        raise ModelFileError(f"{p}: attention head size {key_norm}, FLUX.2 [klein] has {HEAD_DIM}")
    return txt_in[1]


def _llm_layers(wf: WeightFile) -> tuple[int, bool]:
    """(number of layers, whether they have Qwen3's q/k norms)."""
    layers: set[int] = set()
    qk_norm = False
    for n in wf.names():
        m = re.match(r"(?:model\.layers|blk|layers)\.(\d+)\.", n)
        if m:
            layers.add(int(m.group(1)))
            qk_norm |= n.endswith(("self_attn.q_norm.weight", "attn_q_norm.weight"))
    return (max(layers) + 1 if layers else 0), qk_norm


def check_text_encoder(wf: WeightFile) -> int:
    """Check that `wf` is a Qwen3 text encoder sd.cpp can use for klein; return its hidden size."""
    p = wf.path
    kind = detect_component(wf)
    if kind != TEXT_ENCODER:
        what = f"a {kind}" if kind else _describe_unknown(wf)
        raise ModelFileError(f"{p}: given as the text encoder, but it holds {what}")
    embed = wf.shape("model.embed_tokens.weight") or wf.shape("token_embd.weight") or wf.shape("embed_tokens.weight")
    if embed is None or len(embed) != 2:
        raise ModelFileError(f"{p}: text encoder without a token embedding: the file is incomplete")
    layers, qk_norm = _llm_layers(wf)
    if not qk_norm:
        raise ModelFileError(f"{p}: not a Qwen3 model (its attention has no q/k norms); klein needs Qwen3")
    if layers < QWEN_MIN_LAYERS:
        raise ModelFileError(f"{p}: {layers} layers; klein reads the hidden states after layers 9, 18 and 27")
    if embed[0] < QWEN_VOCAB:
        raise ModelFileError(f"{p}: a vocabulary of {embed[0]} tokens; Qwen3's tokenizer needs {QWEN_VOCAB}")
    return embed[1]


def check_vae(wf: WeightFile) -> bool:
    """Check that `wf` is the FLUX.2 VAE; return whether it has the encoder (needed for reference images)."""
    p = wf.path
    kind = detect_component(wf)
    if kind != VAE:
        what = f"a {kind}" if kind else _describe_unknown(wf)
        raise ModelFileError(f"{p}: given as the VAE, but it holds {what}")
    conv_in = wf.shape("decoder.conv_in.weight")
    if conv_in is None or len(conv_in) != 4:
        raise ModelFileError(f"{p}: VAE without a 4-D decoder.conv_in.weight: the file is damaged")
    if conv_in[1] != FLUX2_VAE_LATENT_CHANNELS:
        raise ModelFileError(
            f"{p}: a VAE with {conv_in[1]} latent channels; FLUX.2 [klein] needs the FLUX.2 VAE "
            f"({FLUX2_VAE_LATENT_CHANNELS} latent channels)"
        )
    return wf.has("encoder.conv_in.weight")


def check_gguf_types(wf: WeightFile, known: Mapping[int, str]) -> None:
    """Refuse tensors whose ggml type id this build does not know (naming the first such tensor)."""
    for name, type_id in wf.gguf_types.items():
        if type_id not in known:
            raise ModelFileError(
                f"{wf.path}: tensor {name} has ggml type id {type_id}, which this build of bonsai-sd does not know "
                f"(a newer or foreign GGUF type); update bonsai-sd or convert the file again"
            )


@dataclass(frozen=True)
class ModelFiles:
    """The three files of a klein pipeline, checked."""

    transformer: Path
    text_encoder: Path
    vae: Path
    vae_has_encoder: bool


def check_model_files(transformer: str | Path, text_encoder: str | Path, vae: str | Path,
                      known_types: Mapping[int, str]) -> ModelFiles:
    """Read and check the three component files and that they fit together."""
    dit, llm, ae = read_weight_file(transformer), read_weight_file(text_encoder), read_weight_file(vae)
    for wf in (dit, llm, ae):
        check_gguf_types(wf, known_types)
    context_dim = check_transformer(dit)
    hidden = check_text_encoder(llm)
    has_encoder = check_vae(ae)
    if 3 * hidden != context_dim:
        raise ModelFileError(
            f"the text encoder {llm.path} (hidden size {hidden}, so a context of {3 * hidden}) does not fit the "
            f"transformer {dit.path} (context {context_dim}): klein 4B uses Qwen3-4B, klein 9B Qwen3-8B"
        )
    return ModelFiles(dit.path, llm.path, ae.path, has_encoder)


def find_components(directory: Path) -> dict[str, list[Path]]:
    """Classify the weight files directly inside `directory` by component."""
    found: dict[str, list[Path]] = {TRANSFORMER: [], TEXT_ENCODER: [], VAE: []}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES and not path.name.startswith("."):
            kind = detect_component(read_weight_file(path))
            if kind is not None:
                found[kind].append(path)
    return found
