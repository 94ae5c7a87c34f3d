"""A minimal GGUF v3 writer for tests, written from the GGUF specification.

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
