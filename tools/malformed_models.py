#!/usr/bin/env python3
"""A regression corpus of malformed model files, derived from one valid tiny DiT.

Every case is a small, deterministic edit of a valid GGUF or safetensors file (truncations,
huge counts and lengths, bad dims and types, offsets outside the file, bad JSON, bit flips).
A loader must refuse each with an error that names the file — never abort or crash.

    python tools/malformed_models.py OUTDIR        # writes OUTDIR/<case>.gguf|.safetensors

Nothing here is committed as a binary: the corpus is rebuilt from tools/tiny_klein.py.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ggufraw  # noqa: E402
import tiny_klein  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str    # file stem, e.g. "gguf-huge-tensor-count"
    suffix: str  # ".gguf" or ".safetensors"
    data: bytes
    defect: str  # what is wrong, in words


def base_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """The tiny ternary DiT (BFL names), float16: a valid diffusion model for sd.cpp."""
    dit = tiny_klein.make_dit(tiny_klein.TinyKleinConfig(), "ternary", seed).tensors
    return {name: np.asarray(value, np.float16) for name, value in sorted(dit.items())}


def valid_gguf(tensors: dict[str, np.ndarray]) -> bytes:
    raw = [ggufraw.RawTensor(name, tuple(reversed(v.shape)), 1, v.tobytes()) for name, v in tensors.items()]
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


def valid_safetensors(tensors: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, value in tensors.items():
        data = value.tobytes()
        header[name] = {"dtype": "F16", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
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


def all_cases(seed: int = 0) -> list[Case]:
    tensors = base_tensors(seed)
    return [*gguf_cases(valid_gguf(tensors)), *safetensors_cases(tensors)]


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
        print(f"{path.name:<40} {c.defect}")


if __name__ == "__main__":
    main()
