"""bonsai-sd: ternary and binary image models in stable-diffusion.cpp.

    import bonsai_sd
    pipe = bonsai_sd.Pipeline("bonsai-ternary.gguf", text_encoder="qwen3-4b.gguf", vae="flux2-vae.safetensors")
    pipe("a red fox curled beneath paper lanterns", seed=402).save("fox.png")
"""

from __future__ import annotations

import logging
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version as _dist_version
from typing import Any

try:
    __version__ = _dist_version("bonsai-sd")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

# A library adds no handlers of its own; this one keeps Python's last-resort handler from
# printing engine warnings to stderr in programs that have not configured logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# The public names, imported on first use: the pure-Python parts of the package (the converter,
# the GGUF tools) do not load the engine.
_EXPORTS = {
    "Pipeline": "pipeline", "Progress": "pipeline", "Cancelled": "pipeline", "EngineError": "pipeline",
    "SAMPLERS": "pipeline", "SCHEDULERS": "pipeline", "GeneratedImage": "images", "ModelFileError": "modelfiles",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
