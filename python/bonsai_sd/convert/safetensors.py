"""Minimal safetensors reading (rows at a time, no memory map) and writing.

Written from the format description: an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
BF16 is returned as its raw uint16 bits, because NumPy has no bfloat16.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConvertError

# safetensors dtype -> NumPy dtype of the stored items (BF16 as raw bits)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class StTensor:
    """One tensor of a safetensors file, read on demand."""

    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute file offset
    nbytes: int

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def row_items(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else (self.shape[0] if self.shape else 1)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the leading dimension, shaped (stop - start, *shape[1:])."""
        if len(self.shape) <= 1:
            return self.read().reshape(-1)[start:stop]
        itemsize = self.np_dtype.itemsize
        count = (stop - start) * self.row_items
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row_items * itemsize)
            data = np.fromfile(f, self.np_dtype, count)
        if data.size != count:
            raise ConvertError(f"{self.path}: tensor {self.name!r} is truncated")
        return data.reshape(stop - start, *self.shape[1:])

    def read(self) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = np.fromfile(f, self.np_dtype, count)
        if data.size != count:
            raise ConvertError(f"{self.path}: tensor {self.name!r} is truncated")
        return data.reshape(self.shape)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, StTensor], dict[str, str]]:
    """Tensors and `__metadata__` of a safetensors file, checked for consistency with its size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConvertError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(_MAX_HEADER, size - 8):
            raise ConvertError(f"{path}: not a safetensors file (header length {header_len} for a {size}-byte file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConvertError(f"{path}: not a safetensors file (bad JSON header: {e})") from e
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, StTensor] = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(n) for n in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"{path}: malformed header entry for tensor {name!r}") from e
        if dtype not in DTYPES:
            raise ConvertError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if end - begin != expected:
            raise ConvertError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {list(shape)} {dtype} "
                               f"(expected {expected})")
        if data_start + end > size:
            raise ConvertError(f"{path}: tensor {name!r} ends at byte {data_start + end} but the file has {size} "
                               f"bytes (truncated file?)")
        tensors[name] = StTensor(path, name, dtype, shape, data_start + begin, expected)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_index(path: str | os.PathLike[str]) -> dict[str, StTensor]:
    """All tensors of a sharded checkpoint given its `*.safetensors.index.json`."""
    path = Path(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: not a safetensors index ({e})") from e
    tensors: dict[str, StTensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_tensors, _ = read_header(path.parent / shard)
        tensors.update(shard_tensors)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ConvertError(f"{path}: tensor {missing[0]!r} is listed but not in its shard")
    return tensors


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]


def write_safetensors(path: str | os.PathLike[str], specs: Iterable[TensorSpec],
                      produce: Callable[[str], np.ndarray], metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors one at a time: `produce(name)` returns each tensor's array when its turn comes."""
    path = Path(path)
    specs = list(specs)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for s in specs:
        nbytes = int(np.prod(s.shape, dtype=np.int64)) * DTYPES[s.dtype].itemsize
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for s in specs:
                array = np.asarray(produce(s.name))
                if array.dtype.newbyteorder("<") != DTYPES[s.dtype] or tuple(array.shape) != s.shape:
                    raise ValueError(f"{s.name}: got {array.dtype} {array.shape}, declared {s.dtype} {s.shape}")
                f.write(array.astype(DTYPES[s.dtype], copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_arrays(path: str | os.PathLike[str], arrays: Mapping[str, tuple[str, np.ndarray]],
                metadata: Mapping[str, str] | None = None) -> Path:
    """Write in-memory arrays: name -> (safetensors dtype, array in that dtype's storage form)."""
    specs = [TensorSpec(name, dtype, tuple(a.shape)) for name, (dtype, a) in arrays.items()]
    return write_safetensors(path, specs, lambda name: arrays[name][1], metadata)
