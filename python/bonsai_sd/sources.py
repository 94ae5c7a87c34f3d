"""Where a model comes from (`Pipeline.from_pretrained`): a transformer file, a directory of
converted files, a released Bonsai Image repository (converted once into a cache), or a Hugging
Face repo id (downloaded with the optional `huggingface_hub`)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .modelfiles import TEXT_ENCODER, TRANSFORMER, VAE, ModelFileError, find_components

log = logging.getLogger(__name__)

# Files that mark a released (diffusers-layout) Bonsai Image / FLUX.2 klein repository.
RELEASE_MARKERS = ("model_index.json", "transformer", "transformer-packed-mflux", "transformer-gemlite-int1",
                   "transformer-gemlite-int2")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Names of the converted files, as the converter writes them into the cache.
CONVERTED_NAMES = {TRANSFORMER: "transformer.gguf", TEXT_ENCODER: "text_encoder.gguf", VAE: "vae.safetensors"}


@dataclass(frozen=True)
class ResolvedModel:
    transformer: Path
    text_encoder: Path
    vae: Path


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """$BONSAI_SD_CACHE_DIR, else $XDG_CACHE_HOME/bonsai-sd, else ~/.cache/bonsai-sd (as the build uses)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("BONSAI_SD_CACHE_DIR"):
        return Path(os.environ["BONSAI_SD_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "bonsai-sd"
    return Path.home() / ".cache" / "bonsai-sd"


def is_release_repo(directory: Path) -> bool:
    return any((directory / marker).exists() for marker in RELEASE_MARKERS)


def _pick(found: dict[str, list[Path]], kind: str, given: str | Path | None, where: Path) -> Path:
    if given is not None:
        return Path(given)
    candidates = found[kind]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModelFileError(f"{where}: no {kind} file found; pass it explicitly ({_ARG[kind]}=PATH)")
    names = ", ".join(p.name for p in candidates)
    raise ModelFileError(f"{where}: several {kind} files ({names}); choose one with {_ARG[kind]}=PATH")


_ARG = {TRANSFORMER: "transformer", TEXT_ENCODER: "text_encoder", VAE: "vae"}


def from_directory(directory: Path, text_encoder: str | Path | None = None,
                   vae: str | Path | None = None, transformer: Path | None = None) -> ResolvedModel:
    """The components among the weight files directly inside `directory` (explicit ones win)."""
    found = find_components(directory)
    return ResolvedModel(
        transformer=_pick(found, TRANSFORMER, transformer, directory),
        text_encoder=_pick(found, TEXT_ENCODER, text_encoder, directory),
        vae=_pick(found, VAE, vae, directory),
    )


def _fingerprint(directory: Path) -> str:
    """A key for a repository directory's content: its path and every file's name, size and mtime."""
    h = hashlib.sha256(str(directory.resolve()).encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and ".cache" not in p.parts):
        st = path.stat()
        h.update(f"{path.relative_to(directory)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def convert_release(repo: Path, out_dir: Path) -> None:
    """Convert a released repository's three components into `out_dir` (CONVERTED_NAMES).

    The seam to the converter, `bonsai_sd.convert.convert(src, out, component=...)`."""
    try:
        from .convert import convert  # type: ignore[attr-defined]
    except ImportError:
        raise ModelFileError(
            f"{repo}: a released Bonsai Image repository needs converting, and this installation has no "
            f"converter (bonsai_sd.convert); convert it elsewhere with `bonsai-sd convert` and pass the GGUF files"
        ) from None
    for kind, component in ((TRANSFORMER, "transformer"), (TEXT_ENCODER, "text-encoder"), (VAE, "vae")):
        log.info("converting the %s of %s", kind, repo)
        convert(repo, out_dir / CONVERTED_NAMES[kind], component=component, progress=True)


def from_release(repo: Path, cache_dir: str | Path | None) -> ResolvedModel:
    """Converted files of a released repository, converting it into the cache the first time."""
    target = cache_root(cache_dir) / "converted" / f"{repo.resolve().name}-{_fingerprint(repo)}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            convert_release(repo, scratch)
            try:
                scratch.rename(target)  # complete conversions only
            except OSError:
                if not target.is_dir():  # not another process finishing first
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("converted %s into %s", repo, target)
    return ResolvedModel(*(target / CONVERTED_NAMES[k] for k in (TRANSFORMER, TEXT_ENCODER, VAE)))


def download(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    """A local snapshot of a Hugging Face repository (needs huggingface_hub and, the first time, network)."""
    offline_help = (f"download it on a connected machine (huggingface-cli download {repo_id} --local-dir DIR) "
                    f"and pass DIR instead of the repo id")
    try:
        import huggingface_hub
    except ImportError:
        raise ModelFileError(f"{repo_id!r} is not a local path; to fetch it from the Hugging Face hub, "
                             f"pip install huggingface_hub, or {offline_help}") from None
    hub_cache = None if cache_dir is None else str(cache_root(cache_dir) / "hub")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=hub_cache))
    except Exception as e:  # huggingface_hub raises many types for "offline", "no such repo", ...
        raise ModelFileError(f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
                             f"{offline_help}") from None


def resolve_model(source: str | Path, *, text_encoder: str | Path | None = None, vae: str | Path | None = None,
                  cache_dir: str | Path | None = None, revision: str | None = None) -> ResolvedModel:
    """The three component files for `source` (see Pipeline.from_pretrained)."""
    path = Path(source)
    if path.is_file():
        return from_directory(path.parent, text_encoder, vae, transformer=path)
    if path.is_dir():
        if is_release_repo(path):
            resolved = from_release(path, cache_dir)
            return ResolvedModel(resolved.transformer, Path(text_encoder or resolved.text_encoder),
                                 Path(vae or resolved.vae))
        return from_directory(path, text_encoder, vae)
    if isinstance(source, str) and _REPO_ID.match(source) and not path.exists():
        return resolve_model(download(source, revision, cache_dir), text_encoder=text_encoder, vae=vae,
                             cache_dir=cache_dir)
    raise ModelFileError(f"{source}: no such file or directory")
