"""Read tensors from a torch.save zip archive without importing torch.

A torch zip holds `<archive>/data.pkl` (a pickle whose tensors refer to storages by key) and
one uncompressed entry `<archive>/data/<key>` per storage. The pickle is read by a restricted
unpickler: it builds tensor references and plain containers only, and refuses every other
global, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
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
    shape, strides = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    if len(shape) != len(strides) or int(storage_offset) < 0 or any(n < 0 for n in shape + strides):
        raise pickle.UnpicklingError(f"a tensor with size {list(shape)}, stride {list(strides)} and storage offset "
                                     f"{storage_offset}")
    return _PendingTensor(storage, int(storage_offset), shape, strides)


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
        numel = int(pid[4])
        if numel < 0:
            raise pickle.UnpicklingError(f"storage {pid[2]!r} has {numel} elements")
        return StorageRef(str(pid[2]), pid[1].name, numel)


# What zipfile raises for a damaged archive (besides OSError): a bad directory, an unsupported
# version or compression, a bad CRC, a truncated deflate stream, offsets that do not fit.
_ZIP_ERRORS = (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError, ValueError, struct.error, OverflowError)
_ZIP_ENCRYPTED = 0x1  # general purpose flag bit 0
_MAX_PICKLE_BYTES = 256 << 20  # a state dict's data.pkl holds names and shapes: a few MB at most
_MAX_MEMO_INDEX = 1 << 24  # the unpickler sizes its memo by the largest index it is given
_MAX_DEPTH = 32  # a state dict nests a few levels
_MAX_VALUES = 1 << 22  # values visited while resolving (shared references count each time)


def _check_opcodes(path: Path, pickle_bytes: bytes) -> None:
    """Walk the pickle's opcodes without running them: a memo index the unpickler would grow
    its memo to (gigabytes for a few bytes of pickle) is refused, as is a stream it cannot parse."""
    try:
        for opcode, arg, pos in pickletools.genops(pickle_bytes):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET") \
                    and int(arg) > _MAX_MEMO_INDEX:
                raise ConvertError(f"{path}: the pickle uses memo index {arg} at byte {pos} (hostile or damaged file)")
    except (ValueError, KeyError) as e:  # pickletools' words for a malformed stream
        raise ConvertError(f"{path}: cannot read the pickle: {e}") from None


def _read_pickle_bytes(path: Path, zf: zipfile.ZipFile, name: str) -> bytes:
    """data.pkl's bytes, checked against its declared size and CRC (a compressed entry cannot
    expand past the size its header declares)."""
    info = zf.getinfo(name)
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise ConvertError(f"{path}: {name} is encrypted (torch never writes that: damaged or hostile archive)")
    if info.file_size > _MAX_PICKLE_BYTES:
        raise ConvertError(f"{path}: {name} declares {info.file_size:,} bytes; a state dict's pickle is far smaller "
                           f"(damaged or hostile archive)")
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size)
            if len(data) != info.file_size or f.read(1):
                raise ConvertError(f"{path}: {name} does not have the {info.file_size:,} bytes its header declares "
                                   f"(damaged or hostile archive)")
    except (OSError, *_ZIP_ERRORS) as e:
        raise ConvertError(f"{path}: {name} cannot be read ({e}; damaged file?)") from None
    return data


def is_torch_zip(path: str | os.PathLike[str]) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
    except (OSError, *_ZIP_ERRORS):
        return False


def _entry_data_offset(path: Path, f: Any, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ConvertError(f"{path}: bad local header for zip entry {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{key: TorchTensor or plain value} of a torch zip whose pickle is a (nested) dict."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, *_ZIP_ERRORS) as e:
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
        if byteorder in zf.namelist() and _read_pickle_bytes(path, zf, byteorder).strip() not in (b"little", b""):
            raise ConvertError(f"{path}: big-endian torch archives are not supported")
        pickle_bytes = _read_pickle_bytes(path, zf, pkl_names[0])
        _check_opcodes(path, pickle_bytes)
        try:
            obj = _RestrictedUnpickler(io.BytesIO(pickle_bytes)).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise ConvertError(f"{path}: cannot read the pickle: {e}") from e
        infos = {i.filename: i for i in zf.infolist()}
        visited = 0
        with open(path, "rb") as f:
            def resolve(name: str, value: Any, depth: int = 0) -> Any:
                nonlocal visited
                visited += 1
                if depth > _MAX_DEPTH or visited > _MAX_VALUES:
                    raise ConvertError(f"{path}: the pickle nests more than {_MAX_DEPTH} levels or holds more than "
                                       f"{_MAX_VALUES:,} values (not a state dict; hostile file?)")
                if isinstance(value, _PendingTensor):
                    info = infos.get(f"{prefix}data/{value.storage.key}")
                    if info is None:
                        raise ConvertError(f"{path}: tensor {name!r}: storage {value.storage.key} is missing")
                    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & _ZIP_ENCRYPTED:
                        raise ConvertError(f"{path}: tensor {name!r}: storage {value.storage.key} is compressed "
                                           f"or encrypted")
                    if info.file_size < value.storage.numel * value.storage.np_dtype.itemsize:
                        raise ConvertError(f"{path}: tensor {name!r}: storage {value.storage.key} is truncated")
                    return TorchTensor(path, name, value.storage, _entry_data_offset(path, f, info),
                                       value.storage_offset, value.shape, value.stride)
                if isinstance(value, dict):
                    return {k: resolve(f"{name}.{k}" if name else str(k), v, depth + 1) for k, v in value.items()}
                if isinstance(value, (list, tuple)):
                    return type(value)(resolve(f"{name}.{i}", v, depth + 1) for i, v in enumerate(value))
                return value

            resolved = resolve("", obj)
    if not isinstance(resolved, dict):
        raise ConvertError(f"{path}: the pickle holds a {type(resolved).__name__}, not a state dict")
    size = path.stat().st_size
    for key, value in resolved.items():
        if isinstance(value, TorchTensor) and value.data_offset + value.storage.numel * value.np_dtype.itemsize > size:
            raise ConvertError(f"{path}: tensor {key!r} is truncated")
    return resolved
