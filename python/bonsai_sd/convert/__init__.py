"""The converter: released Bonsai Image checkpoints -> GGUF for stable-diffusion.cpp."""

from __future__ import annotations

from .api import COMPONENTS, LOWBIT_CHOICES, SKIP_CHOICES, ConvertResult, convert
from .errors import ConvertError

__all__ = ["COMPONENTS", "LOWBIT_CHOICES", "SKIP_CHOICES", "ConvertError", "ConvertResult", "convert"]
