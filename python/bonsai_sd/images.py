"""Images in and out of the engine: generated images that carry their parameters into the PNG
text chunk, and reference images turned into the RGB bytes the engine reads."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Union

from PIL import Image, PngImagePlugin

ImageInput = Union[Image.Image, str, "os.PathLike[str]"]

PARAMETERS_KEY = "parameters"  # human-readable, the key most image tools read
JSON_KEY = "bonsai_sd"  # the same parameters as JSON
MAX_REFERENCE_SIDE = 16384  # the engine's limit per side (cpp/sdcpp/api-guards.cpp)


class ReferenceImageError(ValueError):
    """A reference image that cannot be read or used; the message names it and says why."""


class GeneratedImage(Image.Image):
    """A PIL image whose generation parameters (``info["parameters"]`` and, as JSON,
    ``info["bonsai_sd"]``) are written into the PNG text chunk when it is saved as PNG."""

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.info[JSON_KEY])

    def png_info(self) -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        for key in (PARAMETERS_KEY, JSON_KEY):
            if key in self.info:
                info.add_text(key, self.info[key])
        return info

    def save(self, fp: str | os.PathLike[str] | IO[bytes], format: str | None = None, **params: Any) -> None:
        if "pnginfo" not in params and _saves_png(fp, format):
            params["pnginfo"] = self.png_info()
        super().save(fp, format, **params)


def _saves_png(fp: str | os.PathLike[str] | IO[bytes], format: str | None) -> bool:
    if format is not None:
        return format.upper() == "PNG"
    name = fp if isinstance(fp, (str, os.PathLike)) else getattr(fp, "name", "")
    return Path(os.fspath(name)).suffix.lower() == ".png" if name else False


def parameters_text(prompt: str, negative_prompt: str, fields: Mapping[str, Any]) -> str:
    """The parameters in the common "prompt / Negative prompt: / Key: value, ..." layout."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items()))
    return "\n".join(lines)


def generated_image(width: int, height: int, channels: int, pixels: bytes, text: str,
                    parameters: Mapping[str, Any]) -> GeneratedImage:
    mode = {3: "RGB", 4: "RGBA", 1: "L"}.get(channels)
    if mode is None:
        raise ValueError(f"the engine returned an image with {channels} channels")
    image = Image.frombytes(mode, (width, height), pixels)
    # PIL builds images through its own constructors; the subclass only adds save() behaviour
    # and no state, so re-classing the fresh image is safe.
    image.__class__ = GeneratedImage
    image.info[PARAMETERS_KEY] = text
    image.info[JSON_KEY] = json.dumps(dict(parameters), sort_keys=True)
    return image  # type: ignore[return-value]


def _check_size(label: str, img: Image.Image) -> None:
    width, height = img.size
    if not (1 <= width <= MAX_REFERENCE_SIDE and 1 <= height <= MAX_REFERENCE_SIDE):
        raise ReferenceImageError(f"{label} is {width}x{height}; reference images must be 1 to "
                                  f"{MAX_REFERENCE_SIDE} pixels per side")


def _to_rgb(label: str, img: Image.Image) -> tuple[int, int, bytes]:
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ReferenceImageError(f"{label}: its {img.mode} pixels cannot be converted to RGB ({e})") from None
    return rgb.width, rgb.height, rgb.tobytes()


def rgb_bytes(image: ImageInput, index: int) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a reference image given as a PIL image or a path."""
    if isinstance(image, Image.Image):
        label = f"reference image {index}"
        _check_size(label, image)
        return _to_rgb(label, image)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"reference image {index} must be a PIL image or a path, got {type(image).__name__}")
    path = Path(image)
    label = f"reference image {index}: {path}"
    if not path.is_file():
        raise ReferenceImageError(f"{label}: no such file")
    # What PIL raises for a file it cannot decode (SyntaxError: some malformed PNG chunks).
    unreadable = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
    try:
        img = Image.open(path)
    except unreadable as e:
        raise ReferenceImageError(f"{label}: cannot be read as an image ({e})") from None
    with img:
        _check_size(label, img)  # from the header, before the pixels are decoded
        try:
            img.load()
        except unreadable as e:
            raise ReferenceImageError(f"{label}: cannot be read as an image ({e})") from None
        return _to_rgb(label, img)
