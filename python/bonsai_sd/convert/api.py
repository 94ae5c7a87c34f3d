"""`convert()`: a released Bonsai Image checkpoint (or any FLUX.2 [klein] transformer, its
Qwen3 text encoder, its VAE) -> a GGUF that stable-diffusion.cpp loads."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..ggufio import GGUFError, GGUFStreamWriter, PlannedTensor, read_gguf
from ..lowbit import PQ2_0, Q1_0, LowbitType, lowbit_type
from .encode import DENSE_TYPE_NAMES
from .errors import ConvertError
from .pipeline import OutputTensor, Progress, VerifyReport, verify_outputs, write_outputs
from .sources import open_transformer
from .text_encoder import find_text_encoder, open_text_encoder, plan_text_encoder
from .transformer import plan_transformer, transformer_metadata
from .vae import find_vae, plan_vae

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "text-encoder", "vae")
LOWBIT_CHOICES = ("pq2_0", "ptq1_0", "q2_0", "q1_0", "f16")
SKIP_CHOICES = ("f16", "bf16", "q8_0")


@dataclass
class ConvertResult:
    output: Path
    component: str
    source: str  # a description of what was read
    lowbit_type: str | None
    n_tensors: int
    n_bytes: int  # tensor data bytes
    n_elements: int
    lossless: bool
    verify: VerifyReport | None
    passed_through: bool = False

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.n_bytes / self.n_elements if self.n_elements else 0.0


ProgressFactory = Callable[[str, int, str], Any]  # (description, total, unit) -> a tqdm-like bar


def _tqdm_bar(description: str, total: int, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(desc=description, total=total, unit=unit, unit_scale=unit == "B", leave=False, dynamic_ncols=True)


@contextmanager
def _bar(factory: ProgressFactory | None, description: str, total: int, unit: str) -> Iterator[Progress | None]:
    if factory is None:
        yield None
        return
    bar = factory(description, total, unit)
    try:
        yield bar.update
    finally:
        bar.close()


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()


def _source_metadata(src: Path, files: list[Path], fmt: str, description: str,
                     factory: ProgressFactory | None) -> dict[str, Any]:
    total = sum(p.stat().st_size for p in files)
    with _bar(factory, "hashing source", total, "B") as progress:
        hashes = [sha256_file(p, progress) for p in files]
    base = src if src.is_dir() else src.parent
    names = [os.path.relpath(p, base) for p in files]
    return {
        "bonsai_sd.tool": f"bonsai-sd {__version__}",
        "bonsai_sd.source.format": fmt,
        "bonsai_sd.source.description": description,
        "bonsai_sd.source.files": names,
        "bonsai_sd.source.sha256": hashes,
    }


def _write(out: Path, arch: str, outputs: list[OutputTensor], metadata: dict[str, Any], verify: bool,
           factory: ProgressFactory | None) -> VerifyReport | None:
    """Stream the tensors into a temporary file, verify it if asked, then rename it into place."""
    plan = [PlannedTensor(o.name, tuple(o.shape), o.type_id) for o in outputs]
    report = None
    with GGUFStreamWriter(out, arch, plan, metadata) as writer:
        with _bar(factory, f"writing {out.name}", sum(p.n_bytes for p in plan), "B") as progress:
            write_outputs(writer, outputs, progress)
        if verify:
            staged = writer.finish()
            with _bar(factory, "verifying", sum(p.n_bytes for p in plan), "B") as progress:
                report = verify_outputs(staged, outputs, progress)
            failed = [c for c in report.checks if c.lossless and c.max_abs_diff != 0]
            if failed:
                raise ConvertError(f"verification failed: tensor {failed[0].name!r} differs from the source by "
                                   f"{failed[0].max_abs_diff} ({len(failed)} tensors differ); nothing was written")
    return report


def _result(out: Path, component: str, source: str, t: LowbitType | None, outputs: list[OutputTensor],
            report: VerifyReport | None) -> ConvertResult:
    n_bytes = sum(o.n_bytes for o in outputs)
    n_elements = sum(PlannedTensor(o.name, tuple(o.shape), o.type_id).n_elements for o in outputs)
    return ConvertResult(out, component, source, t.name if t else None, len(outputs), n_bytes, n_elements,
                         all(o.lossless for o in outputs), report)


def _copy(src: Path, out: Path, component: str, description: str) -> ConvertResult:
    """Pass a file sd.cpp already reads through unchanged (atomically), once its header and
    tensor table have been checked against its size."""
    from . import safetensors

    if src.suffix == ".gguf":
        read_gguf(src)
    else:
        safetensors.read_header(src)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    log.info("%s: passed %s through unchanged to %s", component, src, out)
    size = out.stat().st_size
    return ConvertResult(out, component, description, None, 0, size, 0, True, None, passed_through=True)


def _parse_skip_type(skip_type: str | None) -> int | None:
    if skip_type is not None and skip_type.lower() not in SKIP_CHOICES:
        raise ConvertError(f"unknown --skip-type {skip_type!r} (choose from {', '.join(SKIP_CHOICES)})")
    return DENSE_TYPE_NAMES[skip_type.lower()] if skip_type else None


def _detect_component(path: Path) -> str:
    from . import safetensors, torchzip

    if torchzip.is_torch_zip(path) or path.suffix in (".pt", ".pth", ".bin"):
        return "transformer"
    if path.suffix == ".gguf":
        names = {t.name for t in read_gguf(path).tensors}
    elif path.name.endswith(".index.json"):
        names = set(safetensors.read_index(path))
    else:
        names = set(safetensors.read_header(path)[0])
    if any(n.startswith(("model.layers.", "model.embed_tokens", "layers.", "blk.", "token_embd.")) for n in names):
        return "text-encoder"
    if any(n.startswith(("decoder.", "encoder.")) for n in names):
        return "vae"
    return "transformer"


def convert(src: str | os.PathLike[str], out: str | os.PathLike[str], *, quant_type: str | None = None,
            skip_type: str | None = None, verify: bool = False, from_format: str | None = None,
            component: str | None = None, progress: bool | ProgressFactory = False) -> ConvertResult:
    """Convert one component of a checkpoint into a GGUF at `out`.

    src: a released repository directory, a component directory, or a file.
    quant_type: low-bit type of the transformer's ternary/binary linears (pq2_0 default for ternary,
        ptq1_0 smallest, q2_0 for mainline ggml; q1_0 for binary).
    skip_type: f16, bf16 or q8_0 for the 16-bit tensors (default: kept exactly).
    verify: dequantize the written file and require a max abs diff of exactly 0 against the
        source's own dequantization on every lossless tensor (before the file is renamed into place).
    from_format: force the transformer format (mlx, gemlite, unpacked, bfl, lossy).
    component: transformer, text-encoder or vae (default: transformer for a directory,
        detected from the tensor names for a file).
    progress: True for tqdm bars on stderr, or a factory (description, total, unit) -> bar.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ConvertError(f"{src}: no such file or directory")
    if out.exists() and out.is_dir():
        raise ConvertError(f"{out}: is a directory; give the output file name")
    if out.resolve() == src.resolve():
        raise ConvertError(f"{out}: the output would overwrite the source")
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: the output directory does not exist")
    if quant_type is not None and quant_type.lower() not in LOWBIT_CHOICES:
        raise ConvertError(f"unknown --type {quant_type!r} (choose from {', '.join(LOWBIT_CHOICES)})")
    skip = _parse_skip_type(skip_type)
    factory: ProgressFactory | None = _tqdm_bar if progress is True else (progress or None)
    if component is not None and component not in COMPONENTS:
        raise ConvertError(f"unknown component {component!r} (choose from {', '.join(COMPONENTS)})")

    try:
        if component is None:
            component = "transformer" if src.is_dir() else _detect_component(src)
        if component == "text-encoder":
            return _convert_text_encoder(src, out, verify, factory)
        if component == "vae":
            return _convert_vae(src, out, verify, factory)
        return _convert_transformer(src, out, quant_type.lower() if quant_type else None, skip, verify, from_format,
                                    factory)
    except GGUFError as e:  # a GGUF input (text encoder, VAE) the reader refuses
        raise ConvertError(str(e)) from None


def _convert_transformer(src: Path, out: Path, quant_type: str | None, skip: int | None, verify: bool,
                         from_format: str | None, factory: ProgressFactory | None) -> ConvertResult:
    as_f16 = quant_type == "f16"
    lb = lowbit_type(quant_type) if quant_type and not as_f16 else None
    source = open_transformer(src, from_format, "binary" if lb == Q1_0 else ("ternary" if lb else None))
    log.info("transformer: %s (%s)", source.description, source.files[0])
    if lb is None and not as_f16:
        lb = Q1_0 if source.weights == "binary" else PQ2_0
    if source.weights == "binary" and lb is not None and lb != Q1_0:
        raise ConvertError(f"{source.files[0]}: binary weights convert to q1_0, not {lb.name.lower()}")
    if source.weights == "ternary" and lb == Q1_0:
        raise ConvertError(f"{source.files[0]}: ternary weights cannot be stored as q1_0; "
                           f"use pq2_0 (default), ptq1_0 or q2_0")
    if not source.exact:
        log.warning("transformer: LOSSY conversion: %s -> %s; the output is labelled lossy",
                    source.description, lb.name if lb else "F16")
    with _bar(factory, "scanning 16-bit tensors", len(source.tensors), "tensor") as progress:
        outputs = plan_transformer(source, lb, skip, progress)
    metadata = _source_metadata(src, source.files, source.format, source.description, factory)
    metadata.update({"bonsai_sd.component": "transformer", **transformer_metadata(source, outputs, lb)})
    report = _write(out, "flux2", outputs, metadata, verify, factory)
    result = _result(out, "transformer", source.description, lb, outputs, report)
    if as_f16:
        result.lowbit_type = "F16"
    log.info("transformer: wrote %s: %d tensors, %d bytes of tensor data, %.4f bits per weight%s", out,
             result.n_tensors, result.n_bytes, result.bits_per_weight, "" if result.lossless else " (lossy)")
    return result


def _convert_text_encoder(src: Path, out: Path, verify: bool, factory: ProgressFactory | None) -> ConvertResult:
    path = find_text_encoder(src)
    if path.suffix == ".gguf":
        return _copy(path, out, "text-encoder", "GGUF text encoder")
    source = open_text_encoder(path)
    log.info("text encoder: %s (%s)", source.description, path)
    outputs = plan_text_encoder(source)
    metadata = _source_metadata(src, source.files, "mlx" if "MLX" in source.description else "safetensors",
                                source.description, factory)
    metadata.update({"bonsai_sd.component": "text-encoder", "bonsai_sd.lossless": True})
    report = _write(out, "qwen3", outputs, metadata, verify, factory)
    return _result(out, "text-encoder", source.description, None, outputs, report)


def _convert_vae(src: Path, out: Path, verify: bool, factory: ProgressFactory | None) -> ConvertResult:
    path = find_vae(src)
    if out.suffix != ".gguf" or path.suffix == ".gguf":
        return _copy(path, out, "vae", f"VAE {path.suffix[1:]}")
    outputs = plan_vae(path)
    metadata = _source_metadata(src, [path], "safetensors", "VAE", factory)
    metadata.update({"bonsai_sd.component": "vae", "bonsai_sd.lossless": True})
    report = _write(out, "flux2-vae", outputs, metadata, verify, factory)
    return _result(out, "vae", "VAE safetensors", None, outputs, report)
