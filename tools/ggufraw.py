"""A minimal GGUF v3 writer and header reader for tests and fixtures, written from the GGUF specification.

It writes whatever type ids and shapes it is given, so tests can build files that
the library must refuse (unknown types, bad shapes) as well as valid ones.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

ALIGNMENT = 32
GGUF_UINT32 = 4
GGUF_STRING = 8
GGUF_ARRAY = 9


@dataclass
class RawTensor:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] first (the row length)
    type_id: int
    data: bytes


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path: Path, tensors: list[RawTensor], kv: dict[str, str | int | list[str]] | None = None) -> Path:
    kv = kv or {}
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, value in kv.items():
        header += _string(key)
        if isinstance(value, str):
            header += struct.pack("<I", GGUF_STRING) + _string(value)
        elif isinstance(value, list):
            header += struct.pack("<IIQ", GGUF_ARRAY, GGUF_STRING, len(value)) + b"".join(_string(v) for v in value)
        else:
            header += struct.pack("<II", GGUF_UINT32, value)
    offset = 0
    blobs = []
    for t in tensors:
        header += _string(t.name) + struct.pack("<I", len(t.shape))
        header += b"".join(struct.pack("<q", n) for n in t.shape)
        header += struct.pack("<IQ", t.type_id, offset)
        padded = t.data + b"\0" * (-len(t.data) % ALIGNMENT)
        blobs.append(padded)
        offset += len(padded)
    header += b"\0" * (-len(header) % ALIGNMENT)
    path.write_bytes(header + b"".join(blobs))
    return path


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_value(buf: bytes, pos: int, vtype: int) -> int:
    if vtype in _SCALAR_SIZES:
        return pos + _SCALAR_SIZES[vtype]
    if vtype == GGUF_STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n
    if vtype == GGUF_ARRAY:
        etype, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        for _ in range(n):
            pos = _skip_value(buf, pos, etype)
        return pos
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_tensor_types(path: Path) -> dict[str, int]:
    """Tensor name -> type id, read straight from a GGUF v3 header."""
    buf = Path(path).read_bytes()
    assert buf[:4] == b"GGUF"
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    pos = 24
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos = _skip_value(buf, pos + 4, vtype)
    types = {}
    for _ in range(n_tensors):
        (n,) = struct.unpack_from("<Q", buf, pos)
        name = buf[pos + 8:pos + 8 + n].decode()
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * n_dims
        types[name], _ = struct.unpack_from("<IQ", buf, pos)
        pos += 12
    return types
