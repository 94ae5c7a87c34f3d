"""Issue 9: a converted Bonsai-format model computes what diffusers computes on the same weights.

A tiny FLUX.2 [klein] is built in diffusers (tools/klein_reference.py: torch's random init, the
block linears exact ternary or binary per 128-group), written in every Bonsai pack format
(tools/bonsai_packs.py), converted with the real converter and run by the engine through its
testing entry points (bonsai_sd._core.Context: diffusion_forward, decode_latent, sample_sigmas,
generate with noise / prompt_embeds / trace). The reference is diffusers in float64 on the CPU:
Flux2Transformer2DModel, Flux2KleinPipeline's schedule and loop, AutoencoderKLFlux2.

Errors are relative L2 errors, ||engine - reference|| / ||reference||. Each check names the
mapping bugs it catches; the tests at the end inject those bugs (a converter monkeypatched to
lay rows out wrongly, or the reference given wrong RoPE positions) and show the checks fail.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the fidelity tests need torch and diffusers (pip install '.[test]')")
pytest.importorskip("diffusers", reason="the fidelity tests need diffusers (pip install '.[test]')")

import bonsai_packs as bp  # noqa: E402
import klein_reference as kr  # noqa: E402
import tiny_klein as tk  # noqa: E402

from bonsai_sd import _core  # noqa: E402
from bonsai_sd import pipeline as bonsai_pipeline  # noqa: E402
from bonsai_sd.convert import convert  # noqa: E402
from bonsai_sd.convert import transformer as convert_transformer  # noqa: E402
from bonsai_sd.convert.encode import F32, decode  # noqa: E402
from bonsai_sd.convert.pipeline import Segment  # noqa: E402
from bonsai_sd.ggufio import read_gguf, write_gguf  # noqa: E402

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

SEED = 0
# Two blocks of each kind, so a mapping that mixes blocks up shows too; context 3 x 32 = 96.
CFG = tk.TinyKleinConfig(double_blocks=2, single_blocks=2)
FORMATS = tuple(bp.FORMATS)
LOWBIT = {"ternary": ("pq2_0", "ptq1_0", "q2_0"), "binary": ("q1_0",)}
STEPS = 4

# An image of 128 x 64 pixels: a 4 x 8 latent (not square, so height and width cannot be
# confused), 12 prompt tokens, a noise level from the middle of a 4-step schedule.
LATENT_H, LATENT_W, TOKENS, SIGMA = 4, 8, 12, 0.75
WIDTH, HEIGHT = 16 * LATENT_W, 16 * LATENT_H

# Bounds (relative L2).
F32_BOUND = 1e-4  # the issue's: float32 arithmetic against float64 (measured ~1e-6)
# Flash attention rounds K and V to f16 (unit roundoff 2^-11 = 4.9e-4 per value); the output mixes
# those errors (measured 1.2e-4 here), so twice the unit roundoff bounds it.
FLASH_BOUND = 2 * 2.0**-11
LOOP_BOUND = 1e-3  # the issue's, for the final latent after 4 steps (measured ~2e-6)
# The issue's, for the decoded image. sd.cpp's Conv2d keeps its weights in F16 and builds its
# im2col in F16, so every convolution rounds its input to fp16 (relative 2^-11): measured ~2e-4.
DECODE_BOUND = 1e-3
# Low-bit weights are exact (the converter is lossless), but ggml's CPU matmul rounds each
# low-bit linear's input to 8 bits (Q8_0: codes round(127 x / max|x|) per 32 values, so each value
# moves by up to max|x| / 254, a relative RMS of ~5e-3 on Gaussian-like activations). That
# rounding, emulated inside the float64 reference (klein_reference.engine_activation_rounding),
# moves this model's output by ~4e-3; the tests assert it stays under half the bound, leaving the
# other half for the engine's own realization of the rounding (values near a rounding boundary
# round differently in float32 and float64, and a flipped code propagates) and, on x86, the
# fp16 rounding of the F16 linears' inputs (~4e-4).
LOWBIT_BOUND = 1e-2
# An injected mapping bug must move the output far beyond every bound above.
BUG_MIN_ERROR = 1.5 * LOWBIT_BOUND


# ---- fixtures -----------------------------------------------------------------------------------


@dataclass
class Inputs:
    latent: np.ndarray  # [128, h, w], float32
    prompt_embeds: np.ndarray  # [tokens, 96], float32


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    rng = np.random.default_rng(9)
    return Inputs(latent=rng.standard_normal((tk.DIT_CHANNELS, LATENT_H, LATENT_W)).astype(np.float32),
                  prompt_embeds=rng.standard_normal((TOKENS, CFG.context_dim)).astype(np.float32))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fidelity")


@pytest.fixture(scope="module")
def other_files(workdir) -> tuple[Path, Path]:
    """(text encoder, VAE) for the engine: tiny_klein's, the VAE in F32. The text encoder only
    has to load: every generation here is given its prompt embeddings."""
    llm, vae = workdir / "llm.safetensors", workdir / "vae.safetensors"
    tk.write_safetensors(llm, tk.make_llm(CFG, SEED), "f16")
    tk.write_safetensors(vae, tk.make_vae(CFG, SEED), "f32", keep_f32=tk.VAE_F32_ONLY)
    return llm, vae


@dataclass
class Model:
    weights: str
    reference: kr.Reference
    packs: dict[str, Path]  # format -> the pack's file


@pytest.fixture(scope="module")
def models(workdir) -> Callable[[str], Model]:
    """models(weights) -> the diffusers model of that flavour, its packs; built once each."""
    built: dict[str, Model] = {}
    vae = kr.make_vae(CFG, SEED)

    def get(weights: str) -> Model:
        if weights not in built:
            transformer, arrays = kr.make_transformer(CFG, weights, SEED)
            packs = bp.write_packs(workdir / f"packs-{weights}", bp.from_arrays(arrays, weights))
            built[weights] = Model(weights, kr.Reference(transformer, vae), packs)
        return built[weights]

    return get


def gguf_tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    contents = read_gguf(path)
    return {t.name: (t.type_id, contents.read(t).tobytes()) for t in contents.tensors}


def convert_every_format(model: Model, quant_type: str, out_dir: Path) -> Path:
    """Converts each pack format; they must give identical tensors. Returns one output."""
    outputs = {fmt: convert(pack, out_dir / f"{model.weights}-{fmt}-{quant_type}.gguf", quant_type=quant_type,
                            verify=True) for fmt, pack in model.packs.items()}
    assert all(r.verify is not None and r.verify.ok for r in outputs.values())
    first, *others = FORMATS
    tensors = gguf_tensors(outputs[first].output)
    for fmt in others:
        assert gguf_tensors(outputs[fmt].output) == tensors, f"{fmt} and {first} convert to different tensors"
    return outputs[first].output


def widened_to_f32(path: Path, out: Path) -> Path:
    """The GGUF with every tensor stored as F32 (exact: each value is an fp16 or a low-bit
    value). F32 weights keep ggml from rounding activations: its F16 matmul rounds its input to
    fp16 (and loading with weight_type="f32" would leave the embedders and the final layer F16,
    as sd.cpp never converts those)."""
    contents = read_gguf(path)
    tensors = {}
    for t in contents.tensors:
        rows = int(np.prod(t.shape[:-1]))
        values = decode(contents.read(t), t.type_id, rows).reshape(t.shape).astype("<f4")
        tensors[t.name] = (F32, values.reshape(-1).view(np.uint8), t.shape)
    return write_gguf(out, tensors)


@pytest.fixture(scope="module")
def f32_transformer(models, workdir) -> Callable[[str], Path]:
    """f32_transformer(weights) -> the converted transformer (low-bit linears as F16), widened to F32."""
    made: dict[str, Path] = {}

    def get(weights: str) -> Path:
        if weights not in made:
            converted = convert_every_format(models(weights), "f16", workdir)
            made[weights] = widened_to_f32(converted, workdir / f"{weights}-f32.gguf")
        return made[weights]

    return get


@contextmanager
def engine(transformer: Path, other_files: tuple[Path, Path], **options: object) -> Iterator[object]:
    llm, vae = other_files
    ctx = _core.Context(diffusion_model=str(transformer), llm=str(llm), vae=str(vae), n_threads=2, **options)
    try:
        yield ctx
    finally:
        ctx.close()


def engine_forward(transformer: Path, other_files: tuple[Path, Path], inputs: Inputs, **options: object) -> np.ndarray:
    with engine(transformer, other_files, **options) as ctx:
        return ctx.diffusion_forward(x=inputs.latent, sigma=SIGMA, prompt_embeds=inputs.prompt_embeds)


def report(what: str, error: float, bound: float) -> None:
    log.info("%s: relative error %.3g (bound %.3g)", what, error, bound)


# ---- the transformer ----------------------------------------------------------------------------

TRANSFORMER_BUGS = ("norm_out halves not swapped, q/k/v order in a fused qkv, modulation (shift/scale/gate) "
                    "order, RoPE axes")


@pytest.mark.parametrize("weights", ["ternary", "binary"])
def test_transformer_forward_f32_matches_diffusers(models, f32_transformer, other_files, inputs, weights):
    """One transformer forward, F32 weights vs diffusers in float64: <= 1e-4.

    Catches every mapping bug of the transformer's tensors (norm_out halves not swapped, q/k/v
    order in a fused qkv, modulation shift/scale/gate order, embedders or blocks mixed up), RoPE
    axes or positions laid out differently from diffusers (text tokens on the l axis, latent
    rows on h and columns on w), and the timestep convention (sigma, not 1000 sigma)."""
    reference = models(weights).reference.forward(inputs.latent, SIGMA, inputs.prompt_embeds)
    got = engine_forward(f32_transformer(weights), other_files, inputs)
    error = kr.relative_error(got, reference)
    report(f"forward F32 ({weights})", error, F32_BOUND)
    assert error <= F32_BOUND, f"transformer forward differs from diffusers ({TRANSFORMER_BUGS}?)"


def _flux_graph_nodes(stderr: str) -> int:
    counts = re.findall(r"bonsai-sd timing: flux nodes=(\d+)", stderr)
    assert counts, "no BONSAI_SD_TIMING line for the flux graph"
    return int(counts[-1])


def test_transformer_forward_per_head_rope_matches_diffusers(models, f32_transformer, other_files, inputs,
                                                             monkeypatch, capfd):
    """The attention GPUs get (cpp/sdcpp/rope-positions.h): q and k rotated in place where the heads
    sit, q, k and v read by flash attention through permuted views. Forced on the CPU here, against
    the per-token rotation with the same flash attention: the same values (the same ROPE arithmetic
    on other views), and against diffusers within FLASH_BOUND. The graph must be the smaller one,
    or the path did not run."""
    reference = models("ternary").reference.forward(inputs.latent, SIGMA, inputs.prompt_embeds)
    monkeypatch.setenv("BONSAI_SD_TIMING", "1")
    nodes, outputs = {}, {}
    for layout, setting in [("per token", "0"), ("per head", "1")]:
        monkeypatch.setenv("BONSAI_SD_ROPE_PER_HEAD", setting)
        outputs[layout] = engine_forward(f32_transformer("ternary"), other_files, inputs, diffusion_flash_attn=True)
        nodes[layout] = _flux_graph_nodes(capfd.readouterr().err)
        error = kr.relative_error(outputs[layout], reference)
        report(f"forward F32, flash attention, RoPE {layout}", error, FLASH_BOUND)
        assert error <= FLASH_BOUND, f"RoPE {layout}: the forward differs from diffusers"
    assert kr.relative_error(outputs["per head"], outputs["per token"]) <= 1e-6
    assert nodes["per head"] < nodes["per token"], nodes


@pytest.mark.parametrize(("weights", "quant_type"), [(w, t) for w, types in LOWBIT.items() for t in types])
def test_transformer_forward_lowbit_matches_diffusers(models, workdir, other_files, inputs, weights, quant_type):
    """One transformer forward with the low-bit linears in `quant_type` (the converter's output
    as it is) vs diffusers in float64: <= LOWBIT_BOUND (see its comment for the derivation).

    Catches the transformer mapping bugs (as the F32 check) for the low-bit path, and a low-bit
    codec or kernel that decodes weights wrongly (a wrong code order, scale or sign moves the
    output by far more than the 8-bit rounding of activations)."""
    model = models(weights)
    reference = model.reference.forward(inputs.latent, SIGMA, inputs.prompt_embeds)
    with kr.engine_activation_rounding(model.reference.transformer):
        rounded = model.reference.forward(inputs.latent, SIGMA, inputs.prompt_embeds)
    rounding_effect = kr.relative_error(rounded, reference)
    assert rounding_effect <= LOWBIT_BOUND / 2, "the bound's premise: 8-bit activations move this model little"

    got = engine_forward(convert_every_format(model, quant_type, workdir), other_files, inputs)
    error = kr.relative_error(got, reference)
    report(f"forward {quant_type} ({weights}); Q8_0 activation rounding alone: {rounding_effect:.3g}", error,
           LOWBIT_BOUND)
    assert error <= LOWBIT_BOUND, f"{quant_type} transformer forward differs from diffusers ({TRANSFORMER_BUGS}?)"


# ---- the schedule -------------------------------------------------------------------------------


class RecordingContext:
    """Stands in for a Pipeline's engine context: records what generate() is asked."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def generate(self, **kwargs: object) -> list[tuple[int, int, int, bytes]]:
        self.calls.append(kwargs)
        w, h = int(kwargs["width"]), int(kwargs["height"])  # type: ignore[call-overload]
        return [(w, h, 3, bytes(w * h * 3))]


def pipeline_sigmas(pipe: bonsai_pipeline.Pipeline, size: int) -> list[float]:
    """The noise levels `pipe` samples at for a size x size image with its defaults: the sampling
    parameters it passes to the engine, planned by the engine as a generation plans them."""
    engine_ctx, recorder = pipe._ctx, RecordingContext()
    pipe._ctx = recorder
    try:
        pipe("a lantern", width=size, height=size, seed=1)
    finally:
        pipe._ctx = engine_ctx
    (call,) = recorder.calls
    return engine_ctx.sample_sigmas(width=call["width"], height=call["height"], steps=call["steps"],
                                    sample_method=call["sample_method"], scheduler=call["scheduler"],
                                    sigmas=call["sigmas"])


def float32_ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)


@pytest.fixture(scope="module")
def tiny_pipeline(f32_transformer, other_files):
    llm, vae = other_files
    pipe = bonsai_pipeline.Pipeline(f32_transformer("ternary"), text_encoder=llm, vae=vae, threads=2)
    yield pipe
    pipe.close()


@pytest.mark.parametrize("size", [512, 1024])
def test_pipeline_schedule_is_flux2_kleins(models, tiny_pipeline, size):
    """The 4 sigmas bonsai_sd.Pipeline samples at by default equal Flux2KleinPipeline's to
    float32 precision: timesteps linspace(1, 1/4, 4) shifted by mu(image tokens, 4) (both
    compute in float32; sd.cpp with expf/powf, so allow 2 ulps).

    Catches a scheduler whose timestep spacing differs (sd.cpp's default "discrete" spaces
    them linspace(1, 0.001, N); see the next test), a shift computed from the wrong token count
    (pixels instead of 16 x 16 patches) or with the wrong constants, and a missing final 0."""
    got = np.array(pipeline_sigmas(tiny_pipeline, size), np.float64)
    want = models("ternary").reference.sigmas(size, size, STEPS)
    log.info("sigmas at %d^2: engine %s, diffusers %s, float32 ulps apart %s", size, got.tolist(), want.tolist(),
             float32_ulps(got, want).tolist())
    assert got.shape == want.shape == (STEPS + 1,)
    assert got[-1] == want[-1] == 0
    assert (float32_ulps(got[:-1], want[:-1]) <= 2).all(), f"engine {got.tolist()} vs diffusers {want.tolist()}"


def test_schedule_check_catches_the_discrete_scheduler(models, tiny_pipeline):
    """sd.cpp's default scheduler for FLUX.2 ("discrete") is not klein's: the check above fails on it."""
    got = np.array(tiny_pipeline._ctx.sample_sigmas(width=512, height=512, steps=STEPS, scheduler="discrete"))
    want = models("ternary").reference.sigmas(512, 512, STEPS)
    assert float32_ulps(got[:-1], want[:-1]).max() > 1e5


# ---- the denoising loop and the VAE -------------------------------------------------------------


@pytest.fixture(scope="module")
def denoised(models, f32_transformer, other_files, inputs) -> dict[str, object]:
    """The engine's and diffusers' 4-step loops from the same noise and prompt embeddings, and
    the engine's decode of diffusers' final latent."""
    reference = models("ternary").reference
    want = reference.denoise(inputs.latent, inputs.prompt_embeds, STEPS)
    trace: dict[str, object] = {}
    with engine(f32_transformer("ternary"), other_files) as ctx:
        ctx.generate(prompt="", width=WIDTH, height=HEIGHT, steps=STEPS, seed=5, sample_method="euler",
                     scheduler=bonsai_pipeline.SCHEDULER, noise=inputs.latent, prompt_embeds=inputs.prompt_embeds,
                     trace=trace)
        planned = ctx.sample_sigmas(width=WIDTH, height=HEIGHT, steps=STEPS, sample_method="euler",
                                    scheduler=bonsai_pipeline.SCHEDULER)
        decoded = ctx.decode_latent(latent=want.astype(np.float32))
    return {"reference": want, "trace": trace, "planned": planned, "decoded": decoded}


def test_denoising_loop_matches_diffusers(denoised):
    """The final latent of 4 Euler steps from identical noise and prompt embeddings: <= 1e-3.

    Catches, beyond the transformer's bugs: the velocity's sign or the Euler update, the noise
    scaling of the initial latent (sigma_0 = 1), a schedule that differs from the pipeline's,
    and a latent or prompt layout the engine reads differently (channels vs pixels, tokens vs
    features)."""
    (latent,) = denoised["trace"]["latents"]
    error = kr.relative_error(latent, denoised["reference"])
    report("denoising loop (final latent)", error, LOOP_BOUND)
    assert error <= LOOP_BOUND, "the engine's denoising loop differs from Flux2KleinPipeline's"


def test_traced_sigmas_are_the_planned_ones(denoised):
    """sample_sigmas (the schedule test's source) reports the plan a generation really samples at."""
    assert denoised["trace"]["sigmas"] == denoised["planned"]


def test_vae_decode_matches_diffusers(models, denoised):
    """The engine's VAE decode of diffusers' final latent vs the pipeline's own decode (undo the
    latent normalization, unpatchify, AutoencoderKLFlux2.decode): <= 1e-3 on [0, 1] pixels.

    Catches wrong latent statistics (FLUX.2's per-channel mean/std), a 2 x 2 patch order that
    differs from diffusers', and a VAE decoder mapping bug (up-block order, attention)."""
    want = models("ternary").reference.decode(denoised["reference"])
    got = denoised["decoded"]
    clipped = float(np.mean((want == 0) | (want == 1)))
    error = kr.relative_error(got, want)
    report(f"VAE decode ({clipped:.2%} of the reference pixels clipped)", error, DECODE_BOUND)
    assert clipped < 0.01  # nearly every pixel inside (0, 1): the comparison is not hidden by the clamp
    assert error <= DECODE_BOUND, "the engine's VAE decode differs from AutoencoderKLFlux2's"


# ---- the checks fail for the right reason: injected bugs ---------------------------------------


def _rows(segments: list[Segment], low: int, high: int) -> list[Segment]:
    """The parts of `segments` (row ranges laid end to end) that make output rows [low, high)."""
    out, position = [], 0
    for s in segments:
        n = s.stop - s.start
        a, b = max(low, position), min(high, position + n)
        if a < b:
            out.append(Segment(s.source, s.start + a - position, s.start + b - position))
        position += n
    return out


@dataclass(frozen=True)
class RowBug:
    """A converter that lays out one output tensor's row blocks in the wrong order."""

    tensor: str
    blocks: int
    order: tuple[int, ...]

    def segments(self, original: Callable[..., list[Segment]]) -> Callable[..., list[Segment]]:
        def wrong(spec, source):  # type: ignore[no-untyped-def]
            segments = original(spec, source)
            if spec.name != self.tensor:
                return segments
            size = spec.shape[0] // self.blocks
            return [s for block in self.order for s in _rows(segments, block * size, (block + 1) * size)]

        return wrong


CONVERTER_BUGS = {
    # diffusers stores norm_out.linear as (scale, shift), BFL as (shift, scale): a converter
    # that forgets the swap.
    "norm_out halves not swapped": RowBug("final_layer.adaLN_modulation.1.weight", 2, (1, 0)),
    # to_q/to_k/to_v concatenated as k, q, v.
    "q/k/v order": RowBug("double_blocks.0.img_attn.qkv.weight", 3, (1, 0, 2)),
    # the image stream's attention modulation as (scale, shift, gate) instead of (shift, scale, gate).
    "modulation order": RowBug("double_stream_modulation_img.lin.weight", 6, (1, 0, 2, 3, 4, 5)),
}


@pytest.mark.parametrize("bug", CONVERTER_BUGS)
def test_forward_check_catches_converter_bug(models, workdir, other_files, inputs, monkeypatch, bug):
    """The forward check fails, by far, on a transformer converted with a broken mapping."""
    model = models("ternary")
    monkeypatch.setattr(convert_transformer, "_segments", CONVERTER_BUGS[bug].segments(convert_transformer._segments))
    broken = convert(model.packs["mlx"], workdir / "broken.gguf", quant_type="f16")
    monkeypatch.undo()
    got = engine_forward(widened_to_f32(broken.output, workdir / "broken-f32.gguf"), other_files, inputs)
    error = kr.relative_error(got, model.reference.forward(inputs.latent, SIGMA, inputs.prompt_embeds))
    report(f"forward with the injected bug '{bug}'", error, F32_BOUND)
    assert error > BUG_MIN_ERROR


ROPE_BUGS = {
    # latent rows on the w axis and columns on the h axis
    "RoPE h and w axes swapped": lambda img, txt: (img[:, [0, 2, 1, 3]], txt),
    # text token index on the t axis instead of l
    "RoPE text positions on the t axis": lambda img, txt: (img, txt[:, [3, 1, 2, 0]]),
}


@pytest.mark.parametrize("bug", ROPE_BUGS)
def test_forward_check_catches_rope_axis_bug(models, f32_transformer, other_files, inputs, bug):
    """Positions laid out on other RoPE axes than diffusers': the forward check fails, by far.
    (The engine builds its own positions, so the bug is injected into the reference's.)"""
    model = models("ternary")
    got = engine_forward(f32_transformer("ternary"), other_files, inputs)
    wrong = model.reference.forward(inputs.latent, SIGMA, inputs.prompt_embeds, permute_ids=ROPE_BUGS[bug])
    error = kr.relative_error(got, wrong)
    report(f"forward against a reference with '{bug}'", error, F32_BOUND)
    assert error > BUG_MIN_ERROR


def _transposed_patches(latent: np.ndarray) -> np.ndarray:
    """Each VAE channel's 2 x 2 patch read transposed (sub-pixels (0, 1) and (1, 0) swapped)."""
    return latent.reshape(-1, 4, *latent.shape[1:])[:, [0, 2, 1, 3]].reshape(latent.shape)


def _unnormalized(latent: np.ndarray) -> np.ndarray:
    """What a decoder that skips FLUX.2's latent statistics reads, as a normalized latent."""
    mean, std = (s.reshape(-1, 1, 1) for s in tk.latent_bn_statistics())
    return (latent - mean) / std


LATENT_BUGS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "2 x 2 patch order transposed": _transposed_patches,
    "latent statistics not applied": _unnormalized,
}


@pytest.mark.parametrize("bug", LATENT_BUGS)
def test_decode_check_catches_latent_layout_bug(models, denoised, bug):
    """A latent laid out differently from diffusers' (injected on the reference side): the VAE
    check fails, by far."""
    latent = denoised["reference"]
    wrong = models("ternary").reference.decode(LATENT_BUGS[bug](latent))
    error = kr.relative_error(denoised["decoded"], wrong)
    report(f"VAE decode against a reference with '{bug}'", error, DECODE_BOUND)
    assert error > 10 * DECODE_BOUND
