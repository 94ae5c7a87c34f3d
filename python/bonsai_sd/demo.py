"""The demo model shipped inside the package: a tiny FLUX.2 [klein]-shaped set with random
weights (tools/make_demo_model.py, run at build time). Its images are abstract patterns; it lets
`bonsai-sd generate --demo` run the whole engine offline on a fresh install."""

from __future__ import annotations

from pathlib import Path

from .modelfiles import ModelFileError
from .sources import ResolvedModel

DEMO_DIR = Path(__file__).resolve().parent / "demo"


def demo_files() -> ResolvedModel:
    files = ResolvedModel(DEMO_DIR / "transformer.gguf", DEMO_DIR / "text_encoder.gguf", DEMO_DIR / "vae.safetensors")
    missing = [p.name for p in (files.transformer, files.text_encoder, files.vae) if not p.is_file()]
    if missing:
        raise ModelFileError(f"the demo model is missing from this installation ({', '.join(missing)} in {DEMO_DIR}); "
                             f"reinstall bonsai-sd (the build generates it with tools/make_demo_model.py)")
    return files
