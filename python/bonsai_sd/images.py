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


def rgb_bytes(image: ImageInput, index: int) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a reference image given as a PIL image or a path."""
    if isinstance(image, Image.Image):
        img = image
    else:
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"reference image {index}: {path}: no such file")
        try:
            img = Image.open(path)
            img.load()
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"reference image {index}: {path}: cannot be read as an image ({e})") from None
    rgb = img.convert("RGB")
    return rgb.width, rgb.height, rgb.tobytes()
