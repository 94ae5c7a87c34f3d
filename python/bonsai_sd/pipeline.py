"""`bonsai_sd.Pipeline`: load a FLUX.2 [klein] / Bonsai Image model once, generate many images.

Bonsai's defaults: 4 steps, guidance 1 (no classifier-free guidance, no negative prompt),
Flow-Match Euler, 512 x 512. The sigma schedule is diffusers' ``Flux2KleinPipeline`` schedule:
timesteps ``linspace(1, 1/N, N)`` warped by the empirical, resolution-dependent shift mu(N, image
tokens). The pinned sd.cpp computes that same mu for every FLUX.2 model, but its default
("discrete") scheduler spaces the timesteps as ``linspace(1, 0.001, N)``; its "simple" scheduler
spaces them as ``1 - floor(1000 i / N) / 1000``, which is diffusers' spacing whenever N divides
1000 (N = 1, 2, 4, 5, 8, 10, 20, ...; within 0.001 otherwise). So the default scheduler here is
"simple" (tests compare it with the exact schedule passed as custom sigmas, and
tests/test_fidelity.py finds its 4-step sigmas at 512 and 1024 pixels within one float32 ulp of
diffusers' Flux2KleinPipeline's).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from . import _core
from .images import GeneratedImage, ImageInput, generated_image, parameters_text, rgb_bytes
from .modelfiles import ModelFiles, check_model_files

log = logging.getLogger(__name__)

STEPS = 4
GUIDANCE = 1.0
SIZE = 512
SAMPLER = "euler"
SCHEDULER = "simple"
MAX_SIDE = 16384
MAX_SEED = 2**63 - 1
MAX_PROMPT_BYTES = 16384  # the engine's limit (cpp/sdcpp/api-guards.cpp); klein reads 512 tokens

Cancelled = _core.Cancelled
EngineError = _core.EngineError


@dataclass(frozen=True)
class Progress:
    """One progress report. `stage` is "load" (tensors read), "sample" (denoising steps), or,
    with VAE tiling, "encode" (tiles of the reference images) and "decode" (tiles of the result)."""

    stage: str
    step: int
    total: int
    seconds_per_step: float


ProgressCallback = Callable[[Progress], Any]


class _StageRouter:
    """Labels sd.cpp's progress reports (step, total, seconds) with their stage.

    Each stage reports a sequence that starts at step 0. The sampling sequence is the first one
    whose total is the number of sampling steps; tiled reference encodes come before it, the
    tiled decode after it."""

    def __init__(self, callback: ProgressCallback, sample_steps: int | None) -> None:
        self.callback = callback
        self.sample_steps = sample_steps
        self.sampled = False
        self.stage = "load" if sample_steps is None else ""

    def __call__(self, step: int, total: int, seconds: float) -> None:
        if self.sample_steps is not None and (step == 0 or not self.stage):
            if not self.sampled and total == self.sample_steps:
                self.stage, self.sampled = "sample", True
            else:
                self.stage = "decode" if self.sampled else "encode"
        self.callback(Progress(self.stage, step, total, seconds))


def resolve_device(device: str | None) -> str:
    """The ggml device name for "cpu", "cuda", "cuda:N", "metal" or an exact device name;
    "" (the engine's choice: the first GPU, else the CPU) for None or "auto"."""
    if device is None or device.strip().lower() in ("", "auto"):
        return ""
    names = [d["name"] for d in _core.devices()]
    want = device.strip().lower()
    if want == "cpu":
        matches = [n for n in names if n.upper() == "CPU"]
    elif want == "cuda" or want.startswith("cuda:"):
        index = want.partition(":")[2] or "0"
        matches = [n for n in names if n.upper() == f"CUDA{index}"]
    elif want == "metal":
        matches = [n for n in names if n.upper().startswith(("MTL", "METAL"))]
    else:
        matches = [n for n in names if n.lower() == want]
    if matches:
        return matches[0]
    hint = ""
    if want.startswith("cuda"):
        hint = '; for CUDA, reinstall with CMAKE_ARGS="-DBONSAI_SD_CUDA=ON" pip install bonsai-sd'
    elif want == "metal":
        hint = "; Metal is built on macOS only"
    raise ValueError(f"device {device!r} is not available in this build (devices: {', '.join(names)}){hint}")


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _check_side(name: str, value: object) -> int:
    """At least 16 and a multiple of 16; the largest size is checked with both sides (_check_size)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 16:
        raise ValueError(f"{name} must be in [16, {MAX_SIDE}], got {value}")
    side = value
    if side % 16:
        below, above = side - side % 16, side - side % 16 + 16
        raise ValueError(f"{name} must be a multiple of 16, got {side} (try {below} or {above})")
    return side


def _check_size(width: int, height: int) -> None:
    if width > MAX_SIDE or height > MAX_SIDE:
        # The least the engine would hold: the decoded image, three floats per pixel.
        gib = 3 * 4 * width * height / 2**30
        raise ValueError(f"a {width}x{height} image is larger than {MAX_SIDE}x{MAX_SIDE}, the largest the engine "
                         f"generates: its decoded pixels alone would need {gib:.2f} GiB of memory")


def _check_prompt(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    if "\0" in text:
        raise ValueError(f"{name} contains a NUL character at index {text.index(chr(0))}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid text: an unpaired surrogate at index {e.start} "
                         f"(invalid UTF-8 in the input?)") from None
    if size > MAX_PROMPT_BYTES:
        raise ValueError(f"{name} is {size:,} bytes of UTF-8, more than the {MAX_PROMPT_BYTES:,} the engine accepts")
    return text


def _check_sigmas(sigmas: Sequence[float]) -> list[float]:
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        raise ValueError("sigmas needs at least 2 values (one step): the noise levels, ending at 0")
    if any(not math.isfinite(s) or s < 0 for s in values):
        raise ValueError(f"sigmas must be finite and >= 0, got {values}")
    if any(b > a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"sigmas must not increase, got {values}")
    return values


class Pipeline:
    """A FLUX.2 [klein] pipeline (Bonsai Image): load once, generate many images.

    >>> pipe = Pipeline("bonsai-ternary.gguf", text_encoder="qwen3-4b.gguf", vae="flux2-vae.safetensors")
    >>> pipe("a red fox curled beneath paper lanterns", seed=402).save("fox.png")

    transformer, text_encoder, vae: the component files (GGUF or safetensors; BFL names for the
        transformer). They are checked (kind, shapes, fit) before the engine sees them.
    device: "cpu", "cuda", "cuda:N", "metal" or a ggml device name; default: the first GPU, else CPU.
    threads: CPU threads (default: the physical cores).
    offload_to_cpu: keep the weights in RAM and move each model to the device while it runs.
    text_encoder_on_cpu, vae_on_cpu: run those models on the CPU (with a GPU device).
    flash_attention: flash attention in every model.
    weight_type: convert the weights to this ggml type at load (e.g. "q8_0"); default: as stored.
    max_vram: with offload_to_cpu, the most GiB of device memory one model's graph may use: a
        model whose weights and buffers need more runs in segments, each segment's weights moved
        in as it runs (slower; lowest device memory). None: no limit.
    free_text_encoder: free the text encoder's weights right after it has encoded the prompt
        (and, the pinned engine's only way to do that, the transformer's after sampling and the
        VAE's after decoding); the next generation then loads the model again. Lowest peak
        memory for one image per load.
    progress: called with Progress(stage="load", ...) while the weights are read.
    """

    def __init__(self, transformer: str | Path, *, text_encoder: str | Path, vae: str | Path,
                 device: str | None = None, threads: int | None = None, offload_to_cpu: bool = False,
                 text_encoder_on_cpu: bool = False, vae_on_cpu: bool = False, flash_attention: bool = False,
                 weight_type: str | None = None, max_vram: float | None = None, free_text_encoder: bool = False,
                 progress: ProgressCallback | None = None) -> None:
        known_types = {row["id"]: row["name"] for row in _core.type_table()}
        self.files: ModelFiles = check_model_files(transformer, text_encoder, vae, known_types)
        if max_vram is not None and (isinstance(max_vram, bool) or not isinstance(max_vram, (int, float))
                                     or not math.isfinite(max_vram) or max_vram <= 0):
            raise ValueError(f"max_vram must be a positive number of GiB, got {max_vram!r}")
        if max_vram is not None and not offload_to_cpu:
            raise ValueError("max_vram needs offload_to_cpu=True (the weights must live in RAM to be moved in by parts)")
        if weight_type is not None and weight_type not in known_types.values():
            raise ValueError(f"unknown weight type {weight_type!r} (known: {', '.join(sorted(known_types.values()))})")
        self._options: dict[str, Any] = {
            "device": resolve_device(device),
            "n_threads": 0 if threads is None else _check_int("threads", threads, 1, 1024),
            "weight_type": weight_type or "",
            "offload_params_to_cpu": offload_to_cpu,
            "keep_clip_on_cpu": text_encoder_on_cpu,
            "keep_vae_on_cpu": vae_on_cpu,
            "flash_attn": flash_attention,
            "diffusion_flash_attn": flash_attention,
            # The encoder is loaded when the file has one: reference images need it.
            "vae_decode_only": not self.files.vae_has_encoder,
            "free_params_immediately": free_text_encoder,
            "max_vram": 0.0 if max_vram is None else float(max_vram),
        }
        self.free_text_encoder = free_text_encoder
        self._lock = threading.Lock()  # one generation per pipeline at a time (the engine runs one per process)
        self._generating_thread: int | None = None
        self._ctx: Any = self._load(progress)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, text_encoder: str | Path | None = None,
                        vae: str | Path | None = None, cache_dir: str | Path | None = None,
                        revision: str | None = None, **options: Any) -> Pipeline:
        """A pipeline from a transformer GGUF (the other components beside it, or given), a
        directory of converted files, a released Bonsai Image repository directory (converted
        once into the cache), or a Hugging Face repo id (downloaded with huggingface_hub)."""
        from .sources import resolve_model

        files = resolve_model(source, text_encoder=text_encoder, vae=vae, cache_dir=cache_dir, revision=revision)
        return cls(files.transformer, text_encoder=files.text_encoder, vae=files.vae, **options)

    @classmethod
    def demo(cls, **options: Any) -> Pipeline:
        """The tiny random-weight model shipped inside the package (abstract images; offline)."""
        from .demo import demo_files

        files = demo_files()
        return cls(files.transformer, text_encoder=files.text_encoder, vae=files.vae, **options)

    def _load(self, progress: ProgressCallback | None = None) -> Any:
        router = None if progress is None else _StageRouter(progress, None)
        return _core.Context(diffusion_model=str(self.files.transformer), llm=str(self.files.text_encoder),
                             vae=str(self.files.vae), progress=router, **self._options)

    # ---- generation ------------------------------------------------------------------------

    def __call__(self, prompt: str, *, width: int = SIZE, height: int = SIZE, steps: int = STEPS,
                 seed: int | None = None, guidance: float = GUIDANCE, negative_prompt: str = "",
                 sampler: str = SAMPLER, scheduler: str = SCHEDULER, sigmas: Sequence[float] | None = None,
                 reference_images: Sequence[ImageInput] = (), vae_tiling: bool = False,
                 progress: ProgressCallback | None = None) -> GeneratedImage:
        """Generate one image.

        seed: None picks a random one (recorded in the image's parameters); the same seed and
            parameters give the same pixels on the same build and device.
        guidance: classifier-free guidance scale; 1 (Bonsai, klein) runs without it and ignores
            negative_prompt.
        sampler, scheduler: sd.cpp names (see bonsai_sd.SAMPLERS, bonsai_sd.SCHEDULERS).
        sigmas: explicit noise levels (steps = len(sigmas) - 1), overriding steps and scheduler.
        reference_images: PIL images or paths for klein image editing (needs the full FLUX.2 VAE,
            with its encoder).
        vae_tiling: decode (and encode) in tiles, for large images on small devices.
        progress: called with Progress(stage, step, total, seconds_per_step) in this thread; an
            exception it raises cancels the generation and propagates.

        Raises Cancelled after cancel(), KeyboardInterrupt on Ctrl-C (the pipeline stays usable),
        EngineError when the engine fails, ValueError/TypeError for invalid arguments.
        """
        prompt, negative_prompt = _check_prompt("prompt", prompt), _check_prompt("negative_prompt", negative_prompt)
        width, height = _check_side("width", width), _check_side("height", height)
        _check_size(width, height)
        custom_sigmas = None if sigmas is None else _check_sigmas(sigmas)
        steps = len(custom_sigmas) - 1 if custom_sigmas else _check_int("steps", steps, 1, 1000)
        seed = secrets.randbits(32) if seed is None else _check_int("seed", seed, 0, MAX_SEED)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
            raise TypeError(f"guidance must be a number, got {type(guidance).__name__}")
        guidance = float(guidance)
        if not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)})")
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be callable, got {type(progress).__name__}")
        refs = [rgb_bytes(image, i) for i, image in enumerate(reference_images)]
        if refs and not self.files.vae_has_encoder:
            raise ValueError(f"reference images need the VAE's encoder, and {self.files.vae} has only the decoder; "
                             f"use the full FLUX.2 VAE")

        router = None if progress is None else _StageRouter(progress, steps)
        if self._generating_thread == threading.get_ident():
            raise RuntimeError("a pipeline cannot generate from inside its own progress callback")
        with self._lock:
            if self._ctx is None:
                if self.free_text_encoder:
                    log.info("loading the model again (free_text_encoder frees the weights after each image)")
                    self._ctx = self._load()
                else:
                    raise ValueError("the pipeline is closed")
            self._generating_thread = threading.get_ident()
            try:
                images = self._ctx.generate(
                    prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, steps=steps,
                    seed=seed, cfg_scale=guidance, sample_method=sampler,
                    scheduler="" if custom_sigmas else scheduler, sigmas=custom_sigmas or [], ref_images=refs,
                    vae_tiling=vae_tiling, progress=router)
            finally:
                self._generating_thread = None
                if self.free_text_encoder:
                    self._ctx.close()
                    self._ctx = None

        w, h, channels, pixels = images[0]
        fields: dict[str, Any] = {
            "Steps": steps, "Sampler": sampler, "Schedule type": "custom" if custom_sigmas else scheduler,
            "CFG scale": guidance, "Seed": seed, "Size": f"{w}x{h}", "Model": self.files.transformer.name,
            "Text encoder": self.files.text_encoder.name, "VAE": self.files.vae.name,
        }
        if refs:
            fields["Reference images"] = len(refs)
        if vae_tiling:
            fields["VAE tiling"] = True
        fields["Version"] = f"bonsai-sd {_core.__version__}"
        parameters = {
            "prompt": prompt, "negative_prompt": negative_prompt, "width": w, "height": h, "steps": steps,
            "seed": seed, "guidance": guidance, "sampler": sampler,
            "scheduler": "custom" if custom_sigmas else scheduler, "sigmas": custom_sigmas,
            "reference_images": len(refs), "vae_tiling": vae_tiling,
            "transformer": self.files.transformer.name, "text_encoder": self.files.text_encoder.name,
            "vae": self.files.vae.name, "bonsai_sd": _core.__version__,
        }
        return generated_image(w, h, channels, pixels, parameters_text(prompt, negative_prompt, fields), parameters)

    generate = __call__

    def cancel(self) -> None:
        """Stop the generation in progress (it raises Cancelled soon after; the pipeline stays
        usable). Safe from any thread, including a progress callback."""
        ctx = self._ctx
        if ctx is not None:
            ctx.cancel()

    # ---- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model now (otherwise when the pipeline is garbage-collected). A generation
        running in another thread is cancelled first."""
        if self._generating_thread == threading.get_ident():
            raise RuntimeError("a pipeline cannot be closed from inside its own progress callback; call cancel()")
        self.cancel()
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
            self._ctx = None
            self.free_text_encoder = False  # a closed pipeline stays closed

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        f = self.files
        return f"Pipeline({str(f.transformer)!r}, text_encoder={str(f.text_encoder)!r}, vae={str(f.vae)!r})"


SAMPLERS: tuple[str, ...] = tuple(_core.sample_methods())
SCHEDULERS: tuple[str, ...] = tuple(_core.schedulers())
