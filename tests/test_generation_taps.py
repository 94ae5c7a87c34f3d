"""The engine's testing/expert entry points (cpp/sdcpp/generation-taps.h, bonsai_sd._core.Context):
a generation given its noise and prompt embeddings and traced, the diffusion model and the VAE
decoder alone, the sampling plan. Run on the packaged demo model; tests/test_fidelity.py
compares their numbers with diffusers."""

from __future__ import annotations

import numpy as np
import pytest

from bonsai_sd import _core
from bonsai_sd.demo import demo_files

CHANNELS, CONTEXT_DIM = 128, 96  # the demo model's latent channels and prompt embedding size
SIZE = 64  # pixels: a 4 x 4 latent
LATENT = SIZE // 16


@pytest.fixture(scope="module")
def ctx():
    files = demo_files()
    context = _core.Context(diffusion_model=str(files.transformer), llm=str(files.text_encoder), vae=str(files.vae),
                            n_threads=1)
    yield context
    context.close()


def noise(seed: int, latent: int = LATENT) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((CHANNELS, latent, latent)).astype(np.float32)


def embeds(seed: int, tokens: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((tokens, CONTEXT_DIM)).astype(np.float32)


def generate(ctx, **kwargs) -> bytes:
    options = {"prompt": "", "width": SIZE, "height": SIZE, "steps": 2, "seed": 1, **kwargs}
    (image,) = ctx.generate(**options)
    return image[3]


def test_given_noise_replaces_the_seeded_noise(ctx):
    e = embeds(0)
    first = generate(ctx, seed=1, noise=noise(1), prompt_embeds=e)
    assert generate(ctx, seed=2, noise=noise(1), prompt_embeds=e) == first  # the seed no longer matters
    assert generate(ctx, seed=1, noise=noise(2), prompt_embeds=e) != first


def test_given_prompt_embeddings_replace_the_prompt(ctx):
    first = generate(ctx, prompt="a red fox", prompt_embeds=embeds(0))
    assert generate(ctx, prompt="a blue whale", prompt_embeds=embeds(0)) == first
    assert generate(ctx, prompt="a red fox", prompt_embeds=embeds(1)) != first
    assert generate(ctx, prompt="a red fox", prompt_embeds=embeds(0, tokens=3)) != first


def test_trace_reports_the_sigmas_and_the_final_latent(ctx):
    trace: dict[str, object] = {}
    image = generate(ctx, noise=noise(1), prompt_embeds=embeds(0), steps=3, scheduler="simple", trace=trace)
    sigmas = trace["sigmas"]
    assert sigmas == ctx.sample_sigmas(width=SIZE, height=SIZE, steps=3, scheduler="simple")
    assert len(sigmas) == 4 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))
    (latent,) = trace["latents"]
    assert latent.shape == (CHANNELS, LATENT, LATENT) and latent.dtype == np.float32
    # the traced latent is the one decoded: decoding it again gives the same 8-bit image
    decoded = ctx.decode_latent(latent=latent)
    pixels = np.frombuffer(image, np.uint8).reshape(SIZE, SIZE, 3)
    assert np.abs(np.rint(decoded.transpose(1, 2, 0) * 255) - pixels).max() <= 1


def test_custom_sigmas_are_planned_as_given(ctx):
    assert ctx.sample_sigmas(width=SIZE, height=SIZE, sigmas=[1.0, 0.5, 0.0]) == [1.0, 0.5, 0.0]


def test_diffusion_forward_and_decode_shapes(ctx):
    x = noise(3, latent=2)
    prediction = ctx.diffusion_forward(x=x, sigma=0.5, prompt_embeds=embeds(0))
    assert prediction.shape == x.shape and np.isfinite(prediction).all()
    assert not np.array_equal(prediction, ctx.diffusion_forward(x=x, sigma=0.9, prompt_embeds=embeds(0)))
    # a leading batch dimension of 1 is accepted
    assert np.array_equal(prediction, ctx.diffusion_forward(x=x[None], sigma=0.5, prompt_embeds=embeds(0)[None]))
    image = ctx.decode_latent(latent=x)
    assert image.shape == (3, 32, 32)
    assert image.min() >= 0 and image.max() <= 1


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"noise": noise(1)[:64]}, _core.EngineError, "noise: 64 channels, the model's latents have 128"),
    ({"noise": noise(1, latent=8)}, _core.EngineError, r"noise: shape \[8, 8, 128\] .* the generation's latent is"),
    ({"noise": np.full((CHANNELS, LATENT, LATENT), np.nan, np.float32)}, _core.EngineError,
     "noise: value 0 is not finite"),
    ({"noise": noise(1)[0]}, ValueError, r"noise: expected 3 dimensions \[channels"),
    ({"noise": noise(1), "batch_count": 2}, ValueError, "noise needs batch_count 1"),
    ({"noise": "noise"}, ValueError, "noise: expected a float array"),
    ({"prompt_embeds": embeds(0)[:, :95]}, _core.EngineError,
     "95 values per token, the model's context dimension is 96"),
    ({"prompt_embeds": np.zeros((0, CONTEXT_DIM), np.float32)}, ValueError, "prompt_embeds: empty dimension 0"),
    ({"trace": []}, TypeError, "trace must be a dict"),
])
def test_generate_refuses_bad_taps(ctx, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(ctx, **kwargs)
    assert generate(ctx, prompt_embeds=embeds(0))  # the context stays usable


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda c: c.diffusion_forward(x=noise(1), sigma=1.5, prompt_embeds=embeds(0)), ValueError, "sigma must be in"),
    (lambda c: c.diffusion_forward(x=noise(1)[:32], sigma=0.5, prompt_embeds=embeds(0)), _core.EngineError,
     "x: 32 channels"),
    (lambda c: c.diffusion_forward(x=noise(1), sigma=0.5, prompt_embeds=embeds(0)[:, :10]), _core.EngineError,
     "context dimension is 96"),
    (lambda c: c.decode_latent(latent=noise(1)[:3]), _core.EngineError, "latent: 3 channels"),
    (lambda c: c.decode_latent(latent=np.zeros((CHANNELS, 2048, 1), np.float32)), _core.EngineError,
     "out of range"),
    (lambda c: c.sample_sigmas(width=100, height=64), ValueError, "multiples of 16"),
])
def test_testing_entry_points_refuse_bad_input(ctx, call, error, match):
    with pytest.raises(error, match=match):
        call(ctx)


def test_forward_needs_the_weights_kept_loaded():
    files = demo_files()
    ctx = _core.Context(diffusion_model=str(files.transformer), llm=str(files.text_encoder), vae=str(files.vae),
                        n_threads=1, free_params_immediately=True)
    try:
        with pytest.raises(_core.EngineError, match="free_params_immediately off"):
            ctx.diffusion_forward(x=noise(1), sigma=0.5, prompt_embeds=embeds(0))
    finally:
        ctx.close()
    with pytest.raises(ValueError, match="closed"):
        ctx.decode_latent(latent=noise(1))
