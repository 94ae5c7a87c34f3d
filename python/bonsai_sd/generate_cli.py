"""`bonsai-sd generate`: one image from the command line, with a progress bar."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .pipeline import GUIDANCE, SAMPLER, SCHEDULER, SIZE, STEPS, Progress

STAGE_LABELS = {"load": "loading", "encode": "encoding", "sample": "sampling", "decode": "decoding"}


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" or "N" (square) -> (width, height)."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"size must look like 512x512 or 512, got {text!r}")


def add_generate_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate an image from a prompt",
                       description="Generate an image with a FLUX.2 [klein] / Bonsai Image model.")
    p.add_argument("prompt")
    source = p.add_mutually_exclusive_group()
    source.add_argument("-m", "--model", help="a transformer GGUF (text encoder and VAE beside it), a directory of "
                        "converted files, a released Bonsai Image repository, or a Hugging Face repo id")
    source.add_argument("--demo", action="store_true",
                        help="the tiny random-weight model inside the package (offline; abstract images)")
    p.add_argument("--text-encoder", type=Path, help="the Qwen3 text encoder file (default: found beside the model)")
    p.add_argument("--vae", type=Path, help="the FLUX.2 VAE file (default: found beside the model)")
    p.add_argument("--size", type=parse_size, default=(SIZE, SIZE), metavar="WxH",
                   help=f"image size, multiples of 16 (default {SIZE}x{SIZE})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"sampling steps (default {STEPS})")
    p.add_argument("--seed", type=int, help="random seed (default: a random one, printed)")
    p.add_argument("--guidance", type=float, default=GUIDANCE,
                   help=f"classifier-free guidance scale (default {GUIDANCE:g}: none, as Bonsai/klein are distilled)")
    p.add_argument("--negative-prompt", default="", help="used only with --guidance other than 1")
    p.add_argument("--sampler", default=SAMPLER, help=f"default {SAMPLER}")
    p.add_argument("--scheduler", default=SCHEDULER, help=f"default {SCHEDULER} (klein's schedule)")
    p.add_argument("-r", "--reference", type=Path, action="append", default=[], metavar="IMAGE",
                   help="a reference image for editing (repeatable)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: bonsai-SEED.png)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or metal (default: the first GPU, else the CPU)")
    p.add_argument("-t", "--threads", type=int, help="CPU threads (default: the physical cores)")
    p.add_argument("--offload-to-cpu", action="store_true", help="keep weights in RAM, move each model in to run it")
    p.add_argument("--max-vram", type=float, metavar="GiB",
                   help="with --offload-to-cpu: run a model in parts so that its graph needs at most this much "
                        "device memory")
    p.add_argument("--text-encoder-on-cpu", action="store_true", help="run the text encoder on the CPU")
    p.add_argument("--vae-on-cpu", action="store_true", help="run the VAE on the CPU")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (large images, small devices)")
    p.add_argument("--flash-attention", action="store_true", help="flash attention in every model")
    p.add_argument("--free-text-encoder", action="store_true",
                   help="free each model's weights right after its stage (lowest peak memory)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="count", default=0, help="engine log: -v info, -vv debug")
    p.set_defaults(func=run_generate)


class _Bars:
    """One tqdm bar per stage, on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.stage = ""

    def __call__(self, p: Progress) -> None:
        from tqdm import tqdm

        if p.stage != self.stage or self.bar is None or p.total != self.bar.total:
            self.close()
            self.stage = p.stage
            unit = "tensor" if p.stage == "load" else ("step" if p.stage == "sample" else "tile")
            self.bar = tqdm(total=p.total, desc=STAGE_LABELS.get(p.stage, p.stage), unit=unit, leave=False,
                            dynamic_ncols=True, file=sys.stderr)
        self.bar.n = p.step
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _save_atomically(image: Any, out: Path) -> None:
    """Write to a temporary file beside `out` and rename it: never a partial output file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        image.save(tmp, format=None if out.suffix else "PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_generate(args: argparse.Namespace) -> int:
    from . import _core
    from .convert import ConvertError
    from .ggufio import GGUFError
    from .images import ReferenceImageError, rgb_bytes
    from .modelfiles import ModelFileError
    from .pipeline import Pipeline

    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.demo and args.model is None:
        print("bonsai-sd generate: give a model with -m MODEL, or --demo for the built-in tiny model",
              file=sys.stderr)
        return 2
    bars = None if args.quiet else _Bars()
    options: dict[str, Any] = {
        "device": args.device, "threads": args.threads, "offload_to_cpu": args.offload_to_cpu,
        "max_vram": args.max_vram,
        "text_encoder_on_cpu": args.text_encoder_on_cpu, "vae_on_cpu": args.vae_on_cpu,
        "flash_attention": args.flash_attention, "free_text_encoder": args.free_text_encoder, "progress": bars,
    }
    width, height = args.size
    started = time.perf_counter()
    try:
        for i, reference in enumerate(args.reference):
            rgb_bytes(reference, i)  # a bad reference image fails before the model is loaded
        if args.demo:
            pipe = Pipeline.demo(**options)
        else:
            pipe = Pipeline.from_pretrained(args.model, text_encoder=args.text_encoder, vae=args.vae, **options)
        with pipe:
            image = pipe(args.prompt, width=width, height=height, steps=args.steps, seed=args.seed,
                         guidance=args.guidance, negative_prompt=args.negative_prompt, sampler=args.sampler,
                         scheduler=args.scheduler, reference_images=args.reference, vae_tiling=args.vae_tiling,
                         progress=bars)
        if bars is not None:
            bars.close()
        seed = image.parameters["seed"]
        out = args.output or Path(f"bonsai-{seed}.png")
        _save_atomically(image, out)
    except (ModelFileError, ConvertError, GGUFError, ReferenceImageError, _core.EngineError, OSError) as e:
        print(f"bonsai-sd generate: {e}", file=sys.stderr)  # a file, or the engine, failed
        return 1
    except (ValueError, TypeError) as e:
        print(f"bonsai-sd generate: {e}", file=sys.stderr)  # a parameter out of range
        return 2
    except KeyboardInterrupt:
        print("bonsai-sd generate: interrupted", file=sys.stderr)
        return 130
    finally:
        if bars is not None:
            bars.close()
    print(f"{out} ({image.width}x{image.height}, seed {seed}, {time.perf_counter() - started:.1f} s)")
    return 0
