#!/usr/bin/env python3
"""A regression corpus of malformed inputs, derived from the valid tiny model of tools/tiny_klein.py.

Every case is a small, deterministic edit of a valid file (truncations, huge counts and
lengths, bad dims and types, offsets outside the file, bad JSON, bit flips, hostile pickles,
zip bombs, broken images). Each says which input it is (its role), so that a test can give
it to every entry point that takes such an input:

  transformer   a GGUF/safetensors DiT          text-encoder, vae   the other two components
  source        a converter input: an MLX pack, a Gemlite torch zip, an unpacked diffusers
                checkpoint (with its place in a released repository)
  image         a reference image for editing

A loader must refuse each malformed case with an error that names the file and the defect,
never abort or crash; an image case that is unusual but valid (a palette PNG) may be accepted.

    python tools/malformed_models.py OUTDIR        # writes OUTDIR/<case><suffix>, lists the defects

Nothing here is committed as a binary: the corpus is rebuilt from tools/tiny_klein.py and
tools/bonsai_packs.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bonsai_packs  # noqa: E402
import ggufraw  # noqa: E402
import tiny_klein  # noqa: E402

TRANSFORMER, TEXT_ENCODER, VAE, SOURCE, IMAGE = "transformer", "text-encoder", "vae", "source", "image"
ROLES = (TRANSFORMER, TEXT_ENCODER, VAE, SOURCE, IMAGE)


@dataclass(frozen=True)
class Case:
    name: str    # file stem, e.g. "gguf-huge-tensor-count"
    suffix: str  # ".gguf", ".safetensors", ".pt", ".png", ...
    data: bytes
    defect: str  # what is wrong, in words
    role: str = TRANSFORMER
    repo_path: str | None = None  # a source's place in a released repository
    malformed: bool = True  # False: unusual but valid (may be accepted)


def base_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny ternary DiT (BFL names), float16: a valid diffusion model for sd.cpp."""
    dit = tiny_klein.make_dit(tiny_klein.TinyKleinConfig(), "ternary", seed).tensors
    return {name: np.asarray(value, np.float16) for name, value in sorted(dit.items())}


def valid_gguf(tensors: dict[str, np.ndarray]) -> bytes:
    """F16 tensors (F32 ones as F32) in a GGUF without metadata."""
    raw = [ggufraw.RawTensor(name, tuple(reversed(v.shape)), 0 if v.dtype == np.float32 else 1, v.tobytes())
           for name, v in tensors.items()]
    path = Path("/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") / f"malformed-base-{id(raw)}.gguf"
    try:
        return ggufraw.write_gguf(path, raw).read_bytes()
    finally:
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class GgufLayout:
    """Byte positions inside the valid GGUF, found by walking its header."""

    n_tensors_at: int
    n_kv_at: int
    first_tensor_info_at: int  # the name length of tensor 0
    infos_end: int             # end of the last tensor info (before the alignment padding)
    data_at: int


def _first_tensor(buf: bytes, lay: GgufLayout, name: str) -> tuple[int, int, int]:
    """(n_dims pos, type pos, offset pos) of the tensor called `name`."""
    pos = lay.first_tensor_info_at
    while pos < lay.infos_end:
        (n,) = struct.unpack_from("<Q", buf, pos)
        this = buf[pos + 8:pos + 8 + n].decode()
        n_dims_at = pos + 8 + n
        (n_dims,) = struct.unpack_from("<I", buf, n_dims_at)
        type_at = n_dims_at + 4 + 8 * n_dims
        if this == name:
            return n_dims_at, type_at, type_at + 4
        pos = type_at + 12
    raise KeyError(name)


def gguf_layout(buf: bytes) -> GgufLayout:
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    assert n_kv == 0, "the base file carries no metadata"
    pos = 24
    first = pos
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * n_dims + 12
    return GgufLayout(n_tensors_at=8, n_kv_at=16, first_tensor_info_at=first, infos_end=pos,
                      data_at=pos + (-pos % 32))


def _patch(buf: bytes, at: int, fmt: str, *values) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, at, *values)
    return bytes(out)


def _tensor0_fields(buf: bytes, lay: GgufLayout) -> tuple[int, int, int, int]:
    """(name length pos, n_dims pos, type pos, offset pos) of tensor 0."""
    pos = lay.first_tensor_info_at
    (n,) = struct.unpack_from("<Q", buf, pos)
    n_dims_at = pos + 8 + n
    (n_dims,) = struct.unpack_from("<I", buf, n_dims_at)
    type_at = n_dims_at + 4 + 8 * n_dims
    return pos, n_dims_at, type_at, type_at + 4


def _with_kv(buf: bytes, key: str, vtype: int, payload: bytes) -> bytes:
    """Insert one KV pair (raw payload after the type) before the tensor infos."""
    lay = gguf_layout(buf)
    kb = key.encode()
    kv = struct.pack("<Q", len(kb)) + kb + struct.pack("<I", vtype) + payload
    head = _patch(buf[:lay.first_tensor_info_at], lay.n_kv_at, "<Q", 1)
    infos = buf[lay.first_tensor_info_at:lay.infos_end]
    padding = b"\0" * (-(len(head) + len(kv) + len(infos)) % 32)
    return head + kv + infos + padding + buf[lay.data_at:]


def gguf_cases(buf: bytes) -> Iterator[Case]:
    lay = gguf_layout(buf)
    name_at, n_dims_at, type_at, offset_at = _tensor0_fields(buf, lay)
    dims_at = n_dims_at + 4

    def case(name: str, data: bytes, defect: str) -> Case:
        return Case(f"gguf-{name}", ".gguf", data, defect)

    yield case("empty", b"", "an empty file")
    yield case("magic-only", b"GGUF", "the header stops after the magic")
    yield case("truncated-header", buf[:20], "the header is cut inside the counts")
    yield case("truncated-tensor-infos", buf[:lay.first_tensor_info_at + 40], "the tensor infos are cut short")
    yield case("truncated-data", buf[:lay.data_at + (len(buf) - lay.data_at) // 2], "tensor data is cut short")
    yield case("truncated-last-byte", buf[:-1], "the last tensor misses one byte")
    yield case("version-99", _patch(buf, 4, "<I", 99), "an unknown GGUF version")
    yield case("version-0", _patch(buf, 4, "<I", 0), "GGUF version 0")
    yield case("huge-tensor-count", _patch(buf, lay.n_tensors_at, "<Q", 1 << 60), "2^60 tensors")
    yield case("tensor-count-plus-one", _patch(buf, lay.n_tensors_at, "<Q", struct.unpack_from(
        "<Q", buf, lay.n_tensors_at)[0] + 1), "one tensor more than the file holds")
    yield case("huge-kv-count", _patch(buf, lay.n_kv_at, "<Q", 1 << 60), "2^60 metadata pairs")
    yield case("huge-name-length", _patch(buf, name_at, "<Q", 1 << 62), "a tensor name of 2^62 bytes")
    yield case("n-dims-99", _patch(buf, n_dims_at, "<I", 99), "a tensor with 99 dimensions")
    yield case("n-dims-0", _patch(buf, n_dims_at, "<I", 0), "a tensor with 0 dimensions")
    yield case("negative-dim", _patch(buf, dims_at, "<q", -128), "a negative dimension")
    yield case("zero-dim", _patch(buf, dims_at, "<q", 0), "a zero dimension")
    yield case("huge-dims", _patch(buf, dims_at, "<qq", 1 << 40, 1 << 40), "dimensions whose product overflows")
    for type_id in (4, 50, 77, 100, 141, 144, 1000, 0xFFFFFFFF):
        yield case(f"type-{type_id}", _patch(buf, type_at, "<I", type_id), f"tensor type id {type_id}")
    yield case("type-q8_0-ragged", _patch(buf, type_at, "<I", 8), "q8_0 data whose size does not match")
    yield case("offset-past-end", _patch(buf, offset_at, "<Q", 1 << 40), "a tensor offset past the end of the file")
    yield case("offset-misaligned", _patch(buf, offset_at, "<Q", 1), "a tensor offset that breaks the alignment")
    yield case("huge-key-length", _patch(_with_kv(buf, "general.name", 8, struct.pack("<Q", 0)),
                                         lay.first_tensor_info_at, "<Q", 1 << 62), "a metadata key of 2^62 bytes")
    yield case("kv-huge-string", _with_kv(buf, "general.name", 8, struct.pack("<Q", 1 << 62)),
               "a metadata string of 2^62 bytes")
    yield case("kv-huge-array", _with_kv(buf, "general.tags", 9, struct.pack("<IQ", 8, 1 << 61)),
               "a metadata array of 2^61 strings")
    yield case("kv-unknown-type", _with_kv(buf, "general.name", 99, b"\0" * 8), "metadata value type 99")
    yield case("kv-alignment-zero", _with_kv(buf, "general.alignment", 4, struct.pack("<I", 0)),
               "general.alignment = 0")
    yield case("kv-alignment-odd", _with_kv(buf, "general.alignment", 4, struct.pack("<I", 3)),
               "general.alignment = 3")
    rng = np.random.default_rng(2026)
    for i in range(8):
        out = bytearray(buf)
        for pos in rng.integers(0, lay.data_at, 4):
            out[pos] ^= 1 << int(rng.integers(0, 8))
        yield case(f"bitflip-header-{i}", bytes(out), "bit flips in the header")


_ST_DTYPES = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<u2"): "BF16", np.dtype("<u4"): "U32"}


def valid_safetensors(tensors: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The arrays in a safetensors file (uint16 arrays as BF16 bits, uint32 as U32)."""
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, value in tensors.items():
        data = value.tobytes()
        header[name] = {"dtype": _ST_DTYPES[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    return _safetensors(header, b"".join(blobs)), header


def _safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_cases(tensors: dict[str, np.ndarray]) -> Iterator[Case]:
    buf, header = valid_safetensors(tensors)
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    data = buf[8 + hlen:]
    first = next(iter(header))

    def case(name: str, payload: bytes, defect: str) -> Case:
        return Case(f"safetensors-{name}", ".safetensors", payload, defect)

    def edited(edit: Callable[[dict], None]) -> bytes:
        h = json.loads(json.dumps(header))
        edit(h)
        return _safetensors(h, data)

    yield case("empty", b"", "an empty file")
    yield case("header-past-end", struct.pack("<Q", len(buf)) + buf[8:], "a header longer than the file")
    yield case("huge-header", struct.pack("<Q", 1 << 62) + buf[8:], "a header of 2^62 bytes")
    yield case("bad-json", struct.pack("<Q", 16) + b"{not json at all" + data, "a header that is not JSON")
    yield case("json-list", _safetensors([1, 2, 3], data), "a header that is a JSON list")  # type: ignore[arg-type]
    yield case("truncated-data", buf[:8 + hlen + len(data) // 2], "tensor data cut short")

    def set_field(field: str, value: object) -> Callable[[dict], None]:
        return lambda h: h[first].__setitem__(field, value)

    yield case("offsets-past-end", edited(set_field("data_offsets", [0, len(data) + 4096])),
               "data_offsets past the end of the file")
    yield case("offsets-reversed", edited(set_field("data_offsets", [64, 0])), "data_offsets end before they start")
    yield case("offsets-huge", edited(set_field("data_offsets", [0, 1 << 62])), "data_offsets of 2^62")
    yield case("dtype-unknown", edited(set_field("dtype", "Q9")), "an unknown dtype")
    yield case("shape-mismatch", edited(set_field("shape", [3, 3])), "a shape that disagrees with the byte range")
    yield case("shape-negative", edited(set_field("shape", [-1, 256])), "a negative dimension")
    yield case("shape-huge", edited(set_field("shape", [1 << 40, 1 << 40])), "a shape whose size overflows")
    yield case("shape-5d", edited(set_field("shape", [1, 1, 1, 1, 1, 256])), "six dimensions")
    yield case("missing-offsets", edited(lambda h: h[first].pop("data_offsets")), "a tensor without data_offsets")


# ---- text encoder and VAE ----------------------------------------------------------------------

def _component_cases(prefix: str, role: str, tensors: dict[str, np.ndarray], key_tensor: str,
                     wrong_shape: tuple[int, ...], what: str) -> Iterator[Case]:
    """Defects of a text encoder or VAE file, as safetensors and as GGUF."""
    buf, header = valid_safetensors(tensors)
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    data = buf[8 + hlen:]

    def edited(edit: Callable[[dict], None]) -> bytes:
        h = json.loads(json.dumps(header))
        edit(h)
        return _safetensors(h, data)

    def case(name: str, suffix: str, payload: bytes, defect: str) -> Case:
        return Case(f"{prefix}-{name}", suffix, payload, defect, role)

    yield case("truncated", ".safetensors", buf[:8 + hlen + len(data) // 3], f"a {what} cut to a third")
    yield case("bad-json", ".safetensors", struct.pack("<Q", 12) + b'{"a": [1, 2' + data, "a header that is not JSON")
    yield case("offsets-past-end", ".safetensors",
               edited(lambda h: h[key_tensor].__setitem__("data_offsets", [0, len(data) + 4096])),
               f"{key_tensor}'s bytes past the end of the file")
    yield case("dtype-unknown", ".safetensors", edited(lambda h: h[key_tensor].__setitem__("dtype", "F8_E9M9")),
               f"{key_tensor} of an unknown dtype")
    yield case("wrong-shape", ".safetensors", edited(lambda h: h[key_tensor].__setitem__("shape", list(wrong_shape))),
               f"{key_tensor} of shape {list(wrong_shape)} (its bytes say otherwise)")
    yield case("missing-key-tensor", ".safetensors", edited(lambda h: h.pop(key_tensor)), f"no {key_tensor}")
    gguf = valid_gguf({n: v for n, v in tensors.items()})
    lay = gguf_layout(gguf)
    _, type_at, offset_at = _first_tensor(gguf, lay, key_tensor)
    yield case("truncated", ".gguf", gguf[:len(gguf) * 2 // 3], f"a GGUF {what} cut to two thirds")
    yield case("type-77", ".gguf", _patch(gguf, type_at, "<I", 77), f"{key_tensor} of ggml type id 77")
    yield case("offset-past-end", ".gguf", _patch(gguf, offset_at, "<Q", 1 << 40), f"{key_tensor} past the end")
    yield case("version-99", ".gguf", _patch(gguf, 4, "<I", 99), "GGUF version 99")


def text_encoder_cases(seed: int = 0) -> Iterator[Case]:
    llm = {n: np.asarray(v, np.float16) for n, v in tiny_klein.make_llm(tiny_klein.TinyKleinConfig(), seed).items()}
    yield from _component_cases("text-encoder", TEXT_ENCODER, llm, "model.embed_tokens.weight", (151_936, 3),
                                "text encoder")


def vae_cases(seed: int = 0) -> Iterator[Case]:
    vae = {n: np.asarray(v, np.float32 if n.endswith(tuple(tiny_klein.VAE_F32_ONLY)) else np.float16)
           for n, v in tiny_klein.make_vae(tiny_klein.TinyKleinConfig(), seed).items()}
    shape = vae["decoder.conv_in.weight"].shape
    yield from _component_cases("vae", VAE, vae, "decoder.conv_in.weight", (shape[0], 16, 3, 3), "VAE")


# ---- converter inputs: MLX packs, Gemlite torch zips, unpacked diffusers checkpoints ------------

_MLX_FILE = "transformer-packed-mflux/diffusion_pytorch_model.safetensors"
_GEMLITE_FILE = "transformer-gemlite-int2/state_dict.pt"
_UNPACKED_FILE = "transformer/diffusion_pytorch_model.safetensors"
_MODULE = "transformer_blocks.0.attn.to_q"  # a quantized linear of every pack


def _mlx_tensors(kw: bonsai_packs.KleinWeights) -> dict[str, np.ndarray]:
    """The MLX pack's arrays (as written by bonsai_packs.write_mlx), in memory."""
    out: dict[str, np.ndarray] = {}
    for name, shape in kw.shapes.items():
        if kw.is_lowbit(name):
            module = name[: -len(".weight")]
            for role, array in bonsai_packs._mlx_parts(kw, name, "BF16").items():
                out[f"{module}.{role}"] = np.ascontiguousarray(array)
        else:
            out[name] = bonsai_packs.bf16_bits(kw.dense(name))
    return out


def mlx_cases(kw: bonsai_packs.KleinWeights) -> Iterator[Case]:
    tensors = _mlx_tensors(kw)
    buf, header = valid_safetensors(tensors)
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    data = bytearray(buf[8 + hlen:])

    def case(name: str, payload: bytes, defect: str) -> Case:
        return Case(f"mlx-{name}", ".safetensors", payload, defect, SOURCE, _MLX_FILE)

    def edited(edit: Callable[[dict], None], body: bytes = bytes(data)) -> bytes:
        h = json.loads(json.dumps(header))
        edit(h)
        return _safetensors(h, body)

    w, sc, bi = (f"{_MODULE}.{r}" for r in ("weight", "scales", "biases"))
    yield case("truncated", buf[: len(buf) // 2], "an MLX pack cut in half")
    yield case("weight-f16", edited(lambda h: h[w].__setitem__("dtype", "F16") or
                                    h[w].__setitem__("shape", [h[w]["shape"][0], h[w]["shape"][1] * 2])),
               f"{w} stored as F16, not U32 codes")
    yield case("scales-wrong-shape", edited(lambda h: h[sc].__setitem__("shape", h[sc]["shape"][::-1])),
               f"{sc} transposed (disagrees with {bi})")
    yield case("biases-i16", edited(lambda h: h[bi].__setitem__("dtype", "I16")), f"{bi} of dtype I16")
    yield case("scales-missing", edited(lambda h: h.pop(sc)), f"no {sc}")
    yield case("biases-missing", edited(lambda h: h.pop(bi)), f"no {bi}")
    yield case("weight-missing", edited(lambda h: h.pop(w)), f"no {w} (scales without codes)")
    yield case("bits-3", edited(lambda h: h[w].__setitem__("shape", [h[w]["shape"][0], h[w]["shape"][1] * 3 // 2])),
               f"{w} of a width that would make 3-bit codes (and disagrees with its bytes)")
    begin, end = header[w]["data_offsets"]
    codes = bytearray(data)
    codes[begin:begin + 4] = b"\xff\xff\xff\xff"  # sixteen 2-bit codes of 3
    yield case("ternary-code-3", _safetensors(header, bytes(codes)), f"{w} holds the ternary code 3")
    sb, se = header[bi]["data_offsets"]
    biased = bytearray(data)
    biased[sb:sb + 2] = bytes(bonsai_packs.bf16_bits(np.array([0.5], np.float32)))
    yield case("bias-not-minus-scale", _safetensors(header, bytes(biased)), f"{bi}[0] is not -{sc}[0]")


def _gemlite_zip(tensors: dict[str, np.ndarray]) -> bytes:
    return bonsai_packs.torch_zip_bytes(tensors)


def _zip_with_pickle(pickle_bytes: bytes, storages: dict[str, bytes] | None = None,
                     compress_pickle: bool = False) -> bytes:
    """A torch zip archive ("state_dict/") around a hand-made pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("state_dict/data.pkl", pickle_bytes,
                    compress_type=zipfile.ZIP_DEFLATED if compress_pickle else zipfile.ZIP_STORED)
        zf.writestr("state_dict/byteorder", "little")
        for key, blob in (storages or {}).items():
            zf.writestr(f"state_dict/data/{key}", blob)
    return buf.getvalue()


class _Payload:
    """Pickles as a call of `func(*args)` (what a hostile __reduce__ produces)."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


def gemlite_cases(kw: bonsai_packs.KleinWeights) -> Iterator[Case]:
    tensors = bonsai_packs.gemlite_tensors(kw)
    valid = _gemlite_zip(tensors)

    def case(name: str, payload: bytes, defect: str) -> Case:
        return Case(f"gemlite-{name}", ".pt", payload, defect, SOURCE, _GEMLITE_FILE)

    marker = "/tmp/bonsai-sd-malformed-pickle-ran"  # a test checks that no payload created it
    for name, func, args in (("os-system", os.system, (f"touch {marker}",)),
                             ("builtins-eval", eval, (f"open({marker!r}, 'w')",)),
                             ("builtins-exec", exec, (f"open({marker!r}, 'w')",)),
                             ("subprocess-popen", __import__("subprocess").Popen, (["touch", marker],))):
        hostile = pickle.dumps({"transformer_blocks.0.attn.to_q.W_q": _Payload(func, *args)}, protocol=2)
        yield case(name, _zip_with_pickle(hostile), f"a pickle that calls {func.__module__}.{func.__qualname__}")
    yield case("reduce-getattr", _zip_with_pickle(
        b"\x80\x02cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00ostRX\x06\x00\x00\x00systemtR"
        b"(X\x04\x00\x00\x00truetR."), "getattr(__import__('os'), 'system')('true') in opcodes")
    deep = b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b"."
    yield case("deep-nesting", _zip_with_pickle(deep), "100 000 nested lists")
    bomb = b"\x80\x02]q\x00" + b"".join(b"(h%ch%clq%c" % (i, i, i + 1) for i in range(60)) + b"."
    yield case("memo-bomb", _zip_with_pickle(bomb), "memo references that double a list 60 times (2^60 items)")
    yield case("huge-memo-index", _zip_with_pickle(b"\x80\x02]r\xff\xff\xff\x3f."), "memo index 2^30 - 1")
    yield case("truncated-zip", valid[: len(valid) // 2], "a Gemlite archive cut in half")
    yield case("not-a-zip", b"PK\x03\x04" + bytes(range(256)) * 4, "a zip signature and garbage")
    bomb_zip = bytearray(_zip_with_pickle(b"\0" * (16 << 20), compress_pickle=True))
    _declare_size(bomb_zip, "state_dict/data.pkl", 100)
    yield case("zip-bomb", bytes(bomb_zip), "data.pkl declares 100 bytes and inflates to 16 MB (from 16 KB)")
    huge = bytearray(_zip_with_pickle(pickle.dumps({}, protocol=2), compress_pickle=True))
    _declare_size(huge, "state_dict/data.pkl", 1 << 30)
    yield case("zip-huge-declared-size", bytes(huge), "data.pkl declares 1 GiB")
    encrypted = bytearray(valid)
    _set_entry_field(encrypted, "state_dict/data.pkl", "flags", 0x1)
    yield case("encrypted-pickle", bytes(encrypted), "data.pkl flagged as encrypted (found by fuzzing)")
    named = dict(tensors)
    w_q = f"{_MODULE}.W_q"
    named[w_q] = np.ascontiguousarray(named[w_q].T)
    yield case("w-q-transposed", _gemlite_zip(named), f"{w_q} transposed")
    meta = dict(tensors)
    meta[f"{_MODULE}.metadata"] = meta[f"{_MODULE}.metadata"].copy()
    meta[f"{_MODULE}.metadata"][1] = 3
    yield case("metadata-3-bit", _gemlite_zip(meta), f"{_MODULE}.metadata says 3-bit")
    missing = {k: v for k, v in tensors.items() if k != f"{_MODULE}.scales"}
    yield case("scales-missing", _gemlite_zip(missing), f"no {_MODULE}.scales")
    storage = bytearray(valid)
    _declare_size(storage, "state_dict/data/0", 2)
    yield case("storage-truncated", bytes(storage), "storage 0 declares 2 bytes")
    tiny = pickle.dumps({"a": 1}, protocol=2)  # a pickle of plain values: no tensors at all
    yield case("no-tensors", _zip_with_pickle(tiny), "a state dict without tensors")


# Where a field lies in a local header ("PK\3\4") and in a central directory entry ("PK\1\2").
_ZIP_FIELDS = {"flags": ("<H", 6, 8), "size": ("<I", 22, 24)}


def _set_entry_field(archive: bytearray, name: str, field: str, value: int) -> None:
    """Rewrite a field of entry `name` in both of its zip headers."""
    fmt, local_at, central_at = _ZIP_FIELDS[field]
    raw = name.encode()
    local = archive.find(b"PK\x03\x04")
    while local != -1:
        (name_len,) = struct.unpack_from("<H", archive, local + 26)
        if archive[local + 30:local + 30 + name_len] == raw:
            struct.pack_into(fmt, archive, local + local_at, value)
        local = archive.find(b"PK\x03\x04", local + 4)
    central = archive.find(b"PK\x01\x02")
    while central != -1:
        (name_len,) = struct.unpack_from("<H", archive, central + 28)
        if archive[central + 46:central + 46 + name_len] == raw:
            struct.pack_into(fmt, archive, central + central_at, value)
        central = archive.find(b"PK\x01\x02", central + 4)


def _declare_size(archive: bytearray, name: str, size: int) -> None:
    """Rewrite the uncompressed size of entry `name` in both of its zip headers."""
    _set_entry_field(archive, name, "size", size)


def unpacked_cases(kw: bonsai_packs.KleinWeights) -> Iterator[Case]:
    tensors = {name: bonsai_packs.bf16_bits(kw.float_value(name)) for name in kw.shapes}
    buf, header = valid_safetensors(tensors)
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    data = buf[8 + hlen:]

    def case(name: str, payload: bytes, defect: str) -> Case:
        return Case(f"unpacked-{name}", ".safetensors", payload, defect, SOURCE, _UNPACKED_FILE)

    def edited(edit: Callable[[dict], None]) -> bytes:
        h = json.loads(json.dumps(header))
        edit(h)
        return _safetensors(h, data)

    w = f"{_MODULE}.weight"
    oblong = next(n for n, shape in kw.shapes.items() if len(shape) == 2 and shape[0] != shape[1])
    yield case("truncated", buf[: len(buf) * 3 // 4], "an unpacked checkpoint cut to three quarters")
    yield case("tensor-missing", edited(lambda h: h.pop("proj_out.weight")), "no proj_out.weight")
    yield case("wrong-shape", edited(lambda h: h[oblong].__setitem__("shape", h[oblong]["shape"][::-1])),
               f"{oblong} transposed")
    yield case("dtype-i8", edited(lambda h: h[w].__setitem__("dtype", "I8") or
                                  h[w].__setitem__("shape", [h[w]["shape"][0], h[w]["shape"][1] * 2])),
               f"{w} of dtype I8")
    yield case("header-list", _safetensors([header], data), "a header that is a JSON list")  # type: ignore[arg-type]


def source_cases(seed: int = 0) -> Iterator[Case]:
    kw = bonsai_packs.tiny_weights("ternary", seed)
    yield from mlx_cases(kw)
    yield from gemlite_cases(kw)
    yield from unpacked_cases(kw)


# ---- reference images ---------------------------------------------------------------------------

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, idat: bytes, color_type: int = 2, depth: int = 8) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def image_cases() -> Iterator[Case]:
    from PIL import Image

    def case(name: str, suffix: str, payload: bytes, defect: str, malformed: bool = True) -> Case:
        return Case(f"image-{name}", suffix, payload, defect, IMAGE, malformed=malformed)

    def saved(image: Image.Image, fmt: str) -> bytes:
        out = io.BytesIO()
        image.save(out, fmt)
        return out.getvalue()

    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    png, jpeg = saved(photo, "PNG"), saved(photo, "JPEG")
    yield case("png-truncated", ".png", png[: len(png) // 2], "a PNG cut in half")
    yield case("png-garbage", ".png", png[:16] + bytes(rng.integers(0, 255, 400, dtype=np.uint8)), "a PNG of garbage")
    yield case("jpeg-truncated", ".jpg", jpeg[:200], "a JPEG cut after 200 bytes")
    yield case("jpeg-header-only", ".jpg", b"\xff\xd8\xff\xe0" + b"\0" * 20, "a JPEG with no image data")
    yield case("png-100000x100000", ".png", _png(100_000, 100_000, zlib.compress(b"\0" * 1000)),
               "a PNG whose header claims 100000 x 100000 pixels")
    yield case("png-20000x8", ".png", _png(20_000, 8, zlib.compress(b"\0" * (8 * (1 + 3 * 20_000)))),
               "a 20000 x 8 PNG (wider than 16384)")
    yield case("png-zero-width", ".png", _png(0, 64, zlib.compress(b"")), "a PNG of width 0")
    yield case("not-an-image", ".png", b"this is not an image\n" * 10, "text named .png")
    yield case("mode-i16", ".png", saved(Image.fromarray(rng.integers(0, 65535, (32, 32), dtype=np.uint16)), "PNG"),
               "16-bit grayscale", malformed=False)
    yield case("mode-palette", ".png", saved(photo.convert("P"), "PNG"), "a palette PNG", malformed=False)
    yield case("mode-la", ".png", saved(photo.convert("LA"), "PNG"), "gray with alpha", malformed=False)
    yield case("mode-cmyk", ".jpg", saved(photo.convert("CMYK"), "JPEG"), "a CMYK JPEG", malformed=False)
    yield case("mode-1bit", ".png", saved(photo.convert("1"), "PNG"), "a 1-bit PNG", malformed=False)


# ---- the corpus ---------------------------------------------------------------------------------

def all_cases(seed: int = 0, roles: tuple[str, ...] = ROLES) -> Iterator[Case]:
    """Every case, built one family at a time (the whole corpus is ~1 GB of files)."""
    if TRANSFORMER in roles:
        tensors = base_tensors(seed)
        yield from gguf_cases(valid_gguf(tensors))
        yield from safetensors_cases(tensors)
    if TEXT_ENCODER in roles:
        yield from text_encoder_cases(seed)
    if VAE in roles:
        yield from vae_cases(seed)
    if SOURCE in roles:
        yield from source_cases(seed)
    if IMAGE in roles:
        yield from image_cases()


def write_corpus(outdir: Path, seed: int = 0) -> list[tuple[Case, Path]]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for c in all_cases(seed):
        path = outdir / (c.name + c.suffix)
        path.write_bytes(c.data)
        written.append((c, path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args()
    for c, path in write_corpus(args.outdir):
        print(f"{c.role:<13} {path.name:<44} {c.defect}")


if __name__ == "__main__":
    main()
