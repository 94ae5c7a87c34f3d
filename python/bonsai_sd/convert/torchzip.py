"""Read tensors from a torch.save zip archive without importing torch.

A torch zip holds `<archive>/data.pkl` (a pickle whose tensors refer to storages by key) and
one uncompressed entry `<archive>/data/<key>` per storage. The pickle is read by a restricted
unpickler: it builds tensor references and plain containers only, and refuses every other
global, so a hostile file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConvertError

# torch's legacy typed-storage classes, as named in the pickle, and their element types
# (BFloat16 as raw uint16 bits).
STORAGE_DTYPES: dict[str, tuple[str, np.dtype]] = {
    "ByteStorage": ("U8", np.dtype("u1")), "CharStorage": ("I8", np.dtype("i1")),
    "ShortStorage": ("I16", np.dtype("<i2")), "IntStorage": ("I32", np.dtype("<i4")),
    "LongStorage": ("I64", np.dtype("<i8")), "HalfStorage": ("F16", np.dtype("<f2")),
    "FloatStorage": ("F32", np.dtype("<f4")), "DoubleStorage": ("F64", np.dtype("<f8")),
    "BFloat16Storage": ("BF16", np.dtype("<u2")), "BoolStorage": ("BOOL", np.dtype("?")),
}


@dataclass(frozen=True)
class StorageRef:
    key: str
    storage_class: str
    numel: int

    @property
    def dtype(self) -> str:
        return STORAGE_DTYPES[self.storage_class][0]

    @property
    def np_dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.storage_class][1]


@dataclass(frozen=True)
class TorchTensor:
    """A tensor of a torch zip archive: a strided view of one storage, read on demand."""

    path: Path
    name: str
    storage: StorageRef
    data_offset: int  # absolute file offset of the storage's bytes
    storage_offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    @property
    def np_dtype(self) -> np.dtype:
        return self.storage.np_dtype

    @property
    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def _read_elements(self, first: int, count: int) -> np.ndarray:
        if first < 0 or first + count > self.storage.numel:
            raise ConvertError(f"{self.path}: tensor {self.name!r} reaches outside its storage")
        with open(self.path, "rb") as f:
            f.seek(self.data_offset + first * self.np_dtype.itemsize)
            data = np.fromfile(f, self.np_dtype, count)
        if data.size != count:
            raise ConvertError(f"{self.path}: tensor {self.name!r} is truncated")
        return data

    def read(self) -> np.ndarray:
        """The whole tensor as a C-contiguous array (strides honoured)."""
        if any(n == 0 for n in self.shape):
            return np.zeros(self.shape, self.np_dtype)
        span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        flat = self._read_elements(self.storage_offset, span)
        if self.is_contiguous:
            return flat[: int(np.prod(self.shape, dtype=np.int64))].reshape(self.shape)
        item = self.np_dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat, self.shape, tuple(s * item for s in self.stride), writeable=False)
        return np.ascontiguousarray(view)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if len(self.shape) < 2:
            return self.read().reshape(-1)[start:stop]
        if not self.is_contiguous:
            return self.read()[start:stop]
        row = int(np.prod(self.shape[1:], dtype=np.int64))
        data = self._read_elements(self.storage_offset + start * row, (stop - start) * row)
        return data.reshape(stop - start, *self.shape[1:])


class _StateDict(dict):
    """Stands in for collections.OrderedDict (a state_dict carries a `_metadata` attribute)."""


@dataclass(frozen=True)
class _PendingTensor:
    storage: StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: StorageRef, storage_offset: int, size: Any, stride: Any, *_: Any) -> _PendingTensor:
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


class _StorageClass:
    def __init__(self, name: str):
        self.name = name


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    **{("torch", name): _StorageClass(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"the pickle refers to {module}.{name}, which this reader does not load "
                                         f"(only tensors and plain containers)") from None

    def persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageClass)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return StorageRef(str(pid[2]), pid[1].name, int(pid[4]))


def is_torch_zip(path: str | os.PathLike[str]) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _entry_data_offset(f: Any, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ConvertError(f"bad local header for zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{key: TorchTensor or plain value} of a torch zip whose pickle is a (nested) dict."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise ConvertError(f"{path}: a zip archive without its central directory (truncated file?)") from e
        raise ConvertError(f"{path}: unknown format: not a torch zip archive ({e}; legacy torch files are not "
                           f"supported)") from e
    with zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl_names) != 1:
            raise ConvertError(f"{path}: not a torch zip archive (no single data.pkl)")
        prefix = pkl_names[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() not in (b"little", b""):
            raise ConvertError(f"{path}: big-endian torch archives are not supported")
        try:
            obj = _RestrictedUnpickler(zf.open(pkl_names[0])).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise ConvertError(f"{path}: cannot read the pickle: {e}") from e
        infos = {i.filename: i for i in zf.infolist()}
        with open(path, "rb") as f:
            def resolve(name: str, value: Any) -> Any:
                if isinstance(value, _PendingTensor):
                    info = infos.get(f"{prefix}data/{value.storage.key}")
                    if info is None:
                        raise ConvertError(f"{path}: tensor {name!r}: storage {value.storage.key} is missing")
                    if info.compress_type != zipfile.ZIP_STORED:
                        raise ConvertError(f"{path}: tensor {name!r}: storage {value.storage.key} is compressed")
                    if info.file_size < value.storage.numel * value.storage.np_dtype.itemsize:
                        raise ConvertError(f"{path}: tensor {name!r}: storage {value.storage.key} is truncated")
                    return TorchTensor(path, name, value.storage, _entry_data_offset(f, info), value.storage_offset,
                                       value.shape, value.stride)
                if isinstance(value, dict):
                    return {k: resolve(f"{name}.{k}" if name else str(k), v) for k, v in value.items()}
                if isinstance(value, (list, tuple)):
                    return type(value)(resolve(f"{name}.{i}", v) for i, v in enumerate(value))
                return value

            resolved = resolve("", obj)
    if not isinstance(resolved, dict):
        raise ConvertError(f"{path}: the pickle holds a {type(resolved).__name__}, not a state dict")
    size = path.stat().st_size
    for key, value in resolved.items():
        if isinstance(value, TorchTensor) and value.data_offset + value.storage.numel * value.np_dtype.itemsize > size:
            raise ConvertError(f"{path}: tensor {key!r} is truncated")
    return resolved
