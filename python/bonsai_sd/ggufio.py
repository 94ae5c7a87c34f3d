"""GGUF reading and writing with the four low-bit types, on top of the PyPI `gguf` package.

gguf-py knows Q1_0 (since 0.18) but not Q2_0, PQ2_0 or PTQ1_0. Importing this module adds
the missing ids to `gguf.GGMLQuantizationType` and their block sizes to `GGML_QUANT_SIZES`,
so gguf's own reader and writer handle them; a gguf-py that already gives one of our ids a
different block size is refused rather than silently overridden.

Files we write carry the layout contract (DESIGN §4): the key `bonsai_sd.types`, one entry
"<id>:<name>:<block elements>:<block bytes>:<layout version>" per low-bit type used, with
ggml's lower-case type name (as the engine's loader writes and checks it).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .lowbit import LOWBIT_TYPES, PQ2_0, Q2_0, LowbitType
from .modelfiles import ModelFileError, read_gguf_header

log = logging.getLogger(__name__)

CONTRACT_KEY = "bonsai_sd.types"
PRIVATE_ID_START = 100  # ids from here on must be declared by a file's contract, if it has one


class GGUFError(ValueError):
    """A GGUF file we cannot read or write correctly; the message names the file and tensor."""


def _add_int_enum_member(cls: type, name: str, value: int) -> None:
    member = int.__new__(cls, value)
    member._name_ = name
    member._value_ = value
    if hasattr(cls, "_add_member_"):  # Python >= 3.13
        cls._add_member_(name, member)
    else:
        type.__setattr__(cls, name, member)
        cls._member_map_[name] = member
    cls._member_names_.append(name)
    cls._value2member_map_[value] = member


def register_gguf_types() -> None:
    """Teach gguf-py the low-bit types it lacks (idempotent)."""
    for t in LOWBIT_TYPES:
        try:
            qtype = GGMLQuantizationType(t.type_id)
        except ValueError:
            _add_int_enum_member(GGMLQuantizationType, t.name, t.type_id)
            qtype = GGMLQuantizationType(t.type_id)
        known = GGML_QUANT_SIZES.get(qtype)
        if known is None:
            GGML_QUANT_SIZES[qtype] = (t.block_elements, t.block_bytes)
        elif known != (t.block_elements, t.block_bytes):
            raise RuntimeError(f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''} gives ggml type "
                               f"{t.type_id} the block size {known}, not {t.name}'s "
                               f"({t.block_elements}, {t.block_bytes}); refusing to mix layouts")


register_gguf_types()


def type_nbytes(type_id: int, n_elements: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    return n_elements // block * size


def contract_entries(types: Iterable[LowbitType]) -> list[str]:
    return [t.contract_entry for t in sorted(set(types), key=lambda t: t.type_id)]


# ---- reading --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # numpy order: the row length (ggml ne[0]) last
    n_elements: int
    n_bytes: int
    offset: int  # absolute file offset of the data

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.n_bytes / self.n_elements if self.n_elements else 0.0


@dataclass
class GGUFContents:
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorEntry] = field(default_factory=list)

    def tensor(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.path}: no tensor named {name!r}")

    def read(self, entry: TensorEntry) -> np.ndarray:
        """The tensor's bytes, read from the file (no memory map)."""
        return self.read_range(entry, 0, entry.n_bytes)

    def read_range(self, entry: TensorEntry, start: int, nbytes: int) -> np.ndarray:
        """Bytes [start, start + nbytes) of a tensor's data."""
        if start < 0 or start + nbytes > entry.n_bytes:
            raise GGUFError(f"{self.path}: bytes {start}..{start + nbytes} are outside tensor {entry.name!r}")
        with open(self.path, "rb") as f:
            f.seek(entry.offset + start)
            data = np.fromfile(f, np.uint8, nbytes)
        if data.size != nbytes:
            raise GGUFError(f"{self.path}: tensor {entry.name!r} is truncated")
        return data


def _field_value(path: Path, key: str, fld: Any) -> Any:
    try:
        value = fld.contents()
    except UnicodeDecodeError as e:  # GGUF strings are UTF-8
        raise GGUFError(f"{path}: metadata {key!r} holds a string that is not valid UTF-8 ({e.reason} at byte "
                        f"{e.start}): not a valid GGUF file") from None
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value


class _CheckedReader(gguf.GGUFReader):
    """gguf's reader, with the tensor table checked before any tensor data is touched."""

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        _check_tensor_table(Path(self.data.filename), int(self.data.size), start_offs, fields, int(self.alignment))
        super()._build_tensors(start_offs, fields)


def _check_tensor_table(path: Path, file_size: int, start_offs: int, fields: list[Any], alignment: int) -> None:
    """Known type ids, every tensor's bytes inside the file and before the next tensor, and the
    tensors laid out one after the other in table order, each padded to the alignment (ggml's
    loader refuses any other layout)."""
    spans = []
    for fld in fields:
        _, name_data, _, dims, raw_dtype, offset = fld.parts
        name = bytes(name_data).decode("utf-8", "replace")
        type_id = int(raw_dtype[0])
        if type_id not in GGMLQuantizationType._value2member_map_:
            raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type id {type_id}")
        ne = [int(n) for n in dims]
        block, _ = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
        if not ne or ne[0] % block:
            raise GGUFError(f"{path}: tensor {name!r} has a row length of {ne[0] if ne else 0}, not a multiple of "
                            f"the {GGMLQuantizationType(type_id).name} block size {block}")
        spans.append((int(start_offs) + int(offset[0]), name, type_id, ne))
    spans.sort()
    for i, (begin, name, type_id, ne) in enumerate(spans):
        n_elements = math.prod(ne)
        need = type_nbytes(type_id, n_elements)
        limit = spans[i + 1][0] if i + 1 < len(spans) else file_size
        have = limit - begin
        if need <= have:
            continue
        if type_id == Q2_0.type_id and ne[0] % PQ2_0.block_elements == 0 and have >= PQ2_0.row_bytes(n_elements):
            raise GGUFError(f"{path}: tensor {name!r} has type id 42 but only {have} bytes: the size of PrismML's "
                            f"legacy 128-element Q2_0 (34 B per 128), not of Q2_0 (18 B per 64 = {need} B). "
                            f"It is not read as Q2_0; such data is PQ2_0 (id 142).")
        raise GGUFError(f"{path}: tensor {name!r} needs {need} bytes at offset {begin} but only {max(have, 0)} "
                        f"are there (truncated file?)")
    expected = 0
    for fld in fields:
        _, name_data, _, dims, raw_dtype, offset = fld.parts
        if int(offset[0]) != expected:
            name = bytes(name_data).decode("utf-8", "replace")
            raise GGUFError(f"{path}: tensor {name!r} starts at data offset {int(offset[0])}, but the tensors before "
                            f"it end at {expected}: the tensor table does not match the data (damaged file?)")
        need = type_nbytes(int(raw_dtype[0]), math.prod(int(n) for n in dims))
        expected += need + (-need % alignment)


def read_gguf(path: str | os.PathLike[str]) -> GGUFContents:
    """Metadata and tensor table of a GGUF file, checked against the layout contract."""
    path = Path(path)
    try:
        # Our own walk of the header first: it names the defect (a count, a length, a
        # dimension) where gguf's reader would fail with an indexing error.
        read_gguf_header(path)
    except ModelFileError as e:
        raise GGUFError(str(e)) from None
    try:
        reader = _CheckedReader(path)
    except GGUFError:
        raise
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({e})") from e
    contents = GGUFContents(path)
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        contents.metadata[key] = _field_value(path, key, fld)
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        contents.tensors.append(TensorEntry(t.name, int(t.tensor_type), t.tensor_type.name, shape,
                                            int(t.n_elements), int(t.n_bytes), int(t.data_offset)))
    check_layout_contract(contents)
    return contents


def parse_contract(value: Any) -> dict[int, str]:
    entries: dict[int, str] = {}
    items = value if isinstance(value, list) else [value]
    for item in items:
        fields = str(item).split(":")
        if len(fields) != 5 or not fields[0].isdigit():
            raise GGUFError(f"malformed {CONTRACT_KEY} entry {item!r}")
        entries[int(fields[0])] = str(item)
    return entries


def check_layout_contract(contents: GGUFContents) -> None:
    """The engine's rule: a file without a contract is read with the published layouts; a file
    with one must agree with ours on every low-bit type its tensors use, and declare every
    used id >= 100."""
    if CONTRACT_KEY not in contents.metadata:
        return
    declared = parse_contract(contents.metadata[CONTRACT_KEY])
    ours = {t.type_id: t for t in LOWBIT_TYPES}
    used = {t.type_id for t in contents.tensors}
    for type_id, entry in declared.items():
        if type_id in used and type_id in ours and entry != ours[type_id].contract_entry:
            raise GGUFError(f"{contents.path}: {CONTRACT_KEY} declares {entry!r}, but this version reads "
                            f"{ours[type_id].contract_entry!r}")
    for t in contents.tensors:
        if t.type_id >= PRIVATE_ID_START and t.type_id not in declared:
            raise GGUFError(f"{contents.path}: tensor {t.name!r} has type {t.type_name} (id {t.type_id}) but the "
                            f"file's {CONTRACT_KEY} does not declare it")


# ---- writing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: the row length last
    type_id: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __post_init__(self) -> None:
        block, _ = GGML_QUANT_SIZES[GGMLQuantizationType(self.type_id)]
        if not self.shape or self.shape[-1] % block:
            raise GGUFError(f"tensor {self.name!r}: shape {self.shape} has rows that are not whole "
                            f"{block}-element blocks of {GGMLQuantizationType(self.type_id).name}")

    @property
    def n_bytes(self) -> int:
        return type_nbytes(self.type_id, self.n_elements)

    @property
    def byte_shape(self) -> tuple[int, ...]:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(self.type_id)]
        return (*self.shape[:-1], self.shape[-1] // block * size)


def _add_metadata(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint64(key, value) if value >= 0 else writer.add_int64(key, value)
    elif isinstance(value, float):
        writer.add_float64(key, value)
    elif isinstance(value, str):
        writer.add_key_value(key, value, GGUFValueType.STRING)  # add_string drops empty strings
    elif isinstance(value, Sequence) and value:
        writer.add_array(key, list(value))
    else:
        raise TypeError(f"metadata {key!r}: cannot store {value!r}")


class GGUFStreamWriter:
    """Writes a GGUF whose tensor table is known up front, then each tensor's bytes in chunks.

    The file is written under a temporary name in the output's directory and renamed into
    place by `commit()`; `abort()` (or leaving a `with` block by an exception) removes it,
    so no partial output is ever left under the final name.
    """

    def __init__(self, path: str | os.PathLike[str], arch: str, tensors: Sequence[PlannedTensor],
                 metadata: Mapping[str, Any]):
        self.path = Path(path)
        self.tensors = list(tensors)
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise GGUFError(f"{self.path}: duplicate tensor names")
        metadata = dict(metadata)
        used = [t for t in LOWBIT_TYPES if any(p.type_id == t.type_id for p in self.tensors)]
        if used:
            metadata[CONTRACT_KEY] = contract_entries(used)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        os.close(fd)
        self._tmp = Path(tmp)
        self._next = 0
        self._written = 0
        self._committed = False
        self._finished = False
        try:
            self._writer = gguf.GGUFWriter(self._tmp, arch)
            for key, value in metadata.items():
                _add_metadata(self._writer, key, value)
            for t in self.tensors:
                # Given bytes (uint8) and a raw type, gguf-py takes a byte shape and derives the elements.
                self._writer.add_tensor_info(t.name, t.byte_shape, np.dtype(np.uint8), t.n_bytes,
                                             raw_dtype=GGMLQuantizationType(t.type_id))
            self._writer.write_header_to_file()
            self._writer.write_kv_data_to_file()
            self._writer.write_ti_data_to_file()
            self._out: BinaryIO = self._writer.fout[0]
            self._pad()
        except BaseException:
            self.abort()
            raise

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % self._writer.data_alignment))

    @property
    def current(self) -> PlannedTensor | None:
        return self.tensors[self._next] if self._next < len(self.tensors) else None

    def write(self, name: str, chunk: np.ndarray | bytes) -> None:
        """Append bytes of tensor `name`, which must be the next one in table order."""
        t = self.current
        if t is None or t.name != name:
            raise GGUFError(f"{self.path}: writing {name!r} but the next tensor is "
                            f"{t.name if t else 'none'!r}")
        data = memoryview(np.ascontiguousarray(chunk).view(np.uint8).reshape(-1)) if isinstance(chunk, np.ndarray) \
            else memoryview(chunk)
        if self._written + data.nbytes > t.n_bytes:
            raise GGUFError(f"{self.path}: tensor {name!r} would exceed its {t.n_bytes} bytes")
        self._out.write(data)
        self._written += data.nbytes
        if self._written == t.n_bytes:
            self._pad()
            self._next += 1
            self._written = 0

    def finish(self) -> Path:
        """Complete and close the file, still under its temporary name (to check it before commit)."""
        if self._finished:
            return self._tmp
        if self.current is not None:
            raise GGUFError(f"{self.path}: tensor {self.current.name!r} was not written completely")
        self._out.flush()
        os.fsync(self._out.fileno())
        self._writer.close()
        self._finished = True
        return self._tmp

    def commit(self) -> Path:
        if self._committed:
            return self.path
        self.finish()
        os.replace(self._tmp, self.path)
        self._committed = True
        return self.path

    def abort(self) -> None:
        if self._committed:
            return
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> GGUFStreamWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


def write_gguf(path: str | os.PathLike[str], tensors: Mapping[str, tuple[int, np.ndarray, tuple[int, ...]]],
               metadata: Mapping[str, Any] | None = None, arch: str = "bonsai-sd") -> Path:
    """Write a whole GGUF from in-memory tensors: name -> (type id, bytes, element shape)."""
    plan = [PlannedTensor(name, tuple(shape), type_id) for name, (type_id, _, shape) in tensors.items()]
    with GGUFStreamWriter(path, arch, plan, metadata or {}) as w:
        for name, (_, data, _) in tensors.items():
            w.write(name, data)
    return Path(path)
