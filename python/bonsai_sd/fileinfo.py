"""A human-readable report of a model file: tensors, types, sizes, bits per weight, metadata.

Reads GGUF (the engine's format), safetensors, and PyTorch zip checkpoints (the converter's
Gemlite input, read without torch); only headers and the pickle are read, never tensor data.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .convert import safetensors, torchzip
from .convert.errors import ConvertError
from .ggufio import read_gguf

_MAX_LIST_ITEMS = 8
_MAX_STRING = 200
ACCEPTED = "GGUF, safetensors and PyTorch zip (.pt) files"


@dataclass(frozen=True)
class _Row:
    name: str
    type_name: str
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(_format_value(v) for v in value[:_MAX_LIST_ITEMS])
        more = f", ... ({len(value)} items)" if len(value) > _MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    if isinstance(value, str):
        text = value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + f"... ({len(value)} chars)"
        return repr(text)
    return str(value)


def _report(path: Path, kind: str, metadata: Mapping[str, Any], rows: Iterable[_Row]) -> str:
    rows = list(rows)
    lines = [f"file: {path} ({path.stat().st_size:,} bytes, {kind})", "", "metadata:"]
    for key, value in metadata.items():
        lines.append(f"  {key} = {_format_value(value)}")

    name_width = max((len(r.name) for r in rows), default=4)
    lines += ["", f"tensors: {len(rows)} (shape: rows..., row length)",
              f"  {'name':<{name_width}}  {'type':<8} {'shape':>16} {'bytes':>14} {'bpw':>7}"]
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        shape = " x ".join(str(n) for n in r.shape)
        bpw = 8 * r.n_bytes / r.n_elements if r.n_elements else 0.0
        lines.append(f"  {r.name:<{name_width}}  {r.type_name:<8} {shape:>16} {r.n_bytes:>14,} {bpw:>7.4f}")
        totals = per_type[r.type_name]
        totals[0] += 1
        totals[1] += r.n_elements
        totals[2] += r.n_bytes

    lines += ["", "by type:", f"  {'type':<8} {'tensors':>7} {'elements':>16} {'bytes':>16} {'bpw':>7}"]
    for type_name, (count, elements, nbytes) in sorted(per_type.items(), key=lambda kv: -kv[1][2]):
        bpw = 8 * nbytes / elements if elements else 0.0
        lines.append(f"  {type_name:<8} {count:>7} {elements:>16,} {nbytes:>16,} {bpw:>7.4f}")
    elements = sum(r.n_elements for r in rows)
    nbytes = sum(r.n_bytes for r in rows)
    bpw = 8 * nbytes / elements if elements else 0.0
    lines.append(f"  {'total':<8} {len(rows):>7} {elements:>16,} {nbytes:>16,} {bpw:>7.4f}")
    return "\n".join(lines)


def _describe_gguf(path: Path) -> str:
    contents = read_gguf(path)
    rows = (_Row(t.name, t.type_name, t.shape, t.n_elements, t.n_bytes) for t in contents.tensors)
    return _report(path, "GGUF", contents.metadata, rows)


def _describe_safetensors(path: Path) -> str:
    tensors, metadata = safetensors.read_header(path)
    rows = (_Row(t.name, t.dtype, t.shape, math.prod(t.shape), t.nbytes) for t in tensors.values())
    return _report(path, "safetensors", metadata, rows)


def _describe_torch_zip(path: Path) -> str:
    state = torchzip.load_state_dict(path)
    rows, other = [], {}
    for key, value in state.items():
        if isinstance(value, torchzip.TorchTensor):
            n = math.prod(value.shape)
            rows.append(_Row(key, value.dtype, value.shape, n, n * value.np_dtype.itemsize))
        else:
            other[key] = value if isinstance(value, (int, float, str, bool)) else type(value).__name__
    return _report(path, "PyTorch zip", other, rows)


def describe_file(path: str | os.PathLike[str]) -> str:
    """The report `bonsai-sd info FILE` prints. Raises ValueError (GGUFError, ConvertError)
    naming the file and the defect when it is none of the formats read here, or damaged."""
    path = Path(path)
    if path.is_dir():
        raise ConvertError(f"{path}: is a directory; bonsai-sd info reads {ACCEPTED}")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"GGUF":
        return _describe_gguf(path)
    if head[:4] == b"PK\x03\x04" or path.suffix in (".pt", ".pth", ".bin"):
        return _describe_torch_zip(path)
    if (len(head) == 9 and head[8:9] == b"{") or path.suffix == ".safetensors":
        return _describe_safetensors(path)
    raise ConvertError(f"{path}: not a model file bonsai-sd reads (it reads {ACCEPTED})")
