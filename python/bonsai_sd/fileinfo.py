"""A human-readable report of a GGUF file: tensors, types, sizes, bits per weight, metadata."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .ggufio import GGUFContents, read_gguf

_MAX_LIST_ITEMS = 8
_MAX_STRING = 200


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(_format_value(v) for v in value[:_MAX_LIST_ITEMS])
        more = f", ... ({len(value)} items)" if len(value) > _MAX_LIST_ITEMS else ""
        return f"[{shown}{more}]"
    if isinstance(value, str):
        text = value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + f"... ({len(value)} chars)"
        return repr(text)
    return str(value)


def describe(contents: GGUFContents) -> str:
    """The report `bonsai-sd info FILE` prints."""
    lines = [f"file: {contents.path} ({contents.path.stat().st_size:,} bytes)", "", "metadata:"]
    for key, value in contents.metadata.items():
        lines.append(f"  {key} = {_format_value(value)}")

    name_width = max((len(t.name) for t in contents.tensors), default=4)
    lines += ["", f"tensors: {len(contents.tensors)} (shape: rows..., row length)",
              f"  {'name':<{name_width}}  {'type':<8} {'shape':>16} {'bytes':>14} {'bpw':>7}"]
    per_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in contents.tensors:
        shape = " x ".join(str(n) for n in t.shape)
        lines.append(f"  {t.name:<{name_width}}  {t.type_name:<8} {shape:>16} {t.n_bytes:>14,} {t.bits_per_weight:>7.4f}")
        row = per_type[t.type_name]
        row[0] += 1
        row[1] += t.n_elements
        row[2] += t.n_bytes

    lines += ["", "by type:", f"  {'type':<8} {'tensors':>7} {'elements':>16} {'bytes':>16} {'bpw':>7}"]
    for type_name, (count, elements, nbytes) in sorted(per_type.items(), key=lambda kv: -kv[1][2]):
        bpw = 8 * nbytes / elements if elements else 0.0
        lines.append(f"  {type_name:<8} {count:>7} {elements:>16,} {nbytes:>16,} {bpw:>7.4f}")
    elements = sum(t.n_elements for t in contents.tensors)
    nbytes = sum(t.n_bytes for t in contents.tensors)
    bpw = 8 * nbytes / elements if elements else 0.0
    lines.append(f"  {'total':<8} {len(contents.tensors):>7} {elements:>16,} {nbytes:>16,} {bpw:>7.4f}")
    return "\n".join(lines)


def describe_file(path: str | os.PathLike[str]) -> str:
    return describe(read_gguf(Path(path)))
