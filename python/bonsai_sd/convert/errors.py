"""The converter's error type."""

from __future__ import annotations


class ConvertError(ValueError):
    """Input the converter refuses; the message names the file or tensor and the reason."""
