"""The reference side of the numerical fidelity tests (issue 9): a tiny FLUX.2 [klein] built in
diffusers, and diffusers' own transformer, schedule, denoising loop and VAE decode on it, in
float64 on the CPU.

- ``make_transformer()`` builds a ``Flux2Transformer2DModel`` from tiny_klein's config with
  torch's random init, then sets the block linears Bonsai quantizes to exact ternary (or binary)
  values per 128-group and every other tensor to a value exact in bf16 and fp16, so that every
  Bonsai pack format (tools/bonsai_packs.py) holds these weights losslessly.
- ``make_vae()`` builds an ``AutoencoderKLFlux2`` holding tiny_klein's VAE decoder and sd.cpp's
  hard-coded FLUX.2 latent statistics (its encoder stays random: the tiny sets have none).
- ``Reference`` runs them through ``Flux2KleinPipeline`` (with the prompt embeddings given, so
  no text encoder or tokenizer) and its helpers for positions, packing and the latent
  statistics.
- ``engine_activation_rounding()`` rounds, inside the reference, the inputs of the low-bit
  linears the way ggml's CPU matmul does for them (Q8_0: 8-bit codes per 32 values with an fp16
  scale), to predict how much a low-bit type changes the result.

Needs torch and diffusers (and transformers, which diffusers' pipeline module imports).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import (Flux2KleinPipeline, compute_empirical_mu,
                                                           retrieve_timesteps)

import tiny_klein as tk
from bonsai_sd.convert import klein

Q8_0_BLOCK = 32  # ggml's Q8_0: 32 values share one fp16 scale

# Flux2KleinPipeline's scheduler for the distilled klein models: flow matching with the
# resolution-dependent shift mu passed in by the pipeline (exponential time shift).
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True,
                    "time_shift_type": "exponential"}


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _model_config(config: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---- models ---------------------------------------------------------------------------------


def make_transformer(cfg: tk.TinyKleinConfig, weights: str, seed: int = 0) -> tuple[Flux2Transformer2DModel,
                                                                                   dict[str, np.ndarray]]:
    """A float64 Flux2Transformer2DModel and its weights as diffusers-named float32 arrays.

    The 16-bit linears are drawn (torch, seeded) with unit gain, std 1/sqrt(fan_in), and
    rounded to values exact in bf16 and fp16; the RMSNorm weights (ones at init) are drawn
    around 1 so that a misplaced norm shows; the block linears are exact `weights` ("ternary" or
    "binary") codes times one scale per 128-group (tiny_klein.group_quantized: scales with three
    significant bits).
    """
    torch.manual_seed(seed)
    model = Flux2Transformer2DModel.from_config(_model_config(tk.diffusers_transformer_config(cfg)))
    arrays: dict[str, np.ndarray] = {}
    for name, value in model.state_dict().items():
        if klein.is_lowbit_linear(name):
            arrays[name] = tk.group_quantized(_rng(seed, name), tuple(value.shape), weights).dense()
        elif value.ndim == 1:
            arrays[name] = tk.half_exact(1.0 + 0.1 * _rng(seed, name).standard_normal(value.shape))
        else:  # unit gain, not torch's default (1/3 of it): every block then shapes the output
            arrays[name] = tk.half_exact(torch.randn(value.shape).numpy() / np.sqrt(value.shape[1]))
    model.load_state_dict({n: torch.from_numpy(a) for n, a in arrays.items()}, strict=True)
    return model.to(torch.float64).eval(), arrays


def make_vae(cfg: tk.TinyKleinConfig, seed: int = 0) -> AutoencoderKLFlux2:
    """A float64 AutoencoderKLFlux2 whose decoder and latent statistics are tiny_klein's
    (make_vae(cfg, seed)); the encoder, absent from the tiny sets, keeps its random init."""
    vae = AutoencoderKLFlux2.from_config(_model_config(tk.diffusers_vae_config(cfg)))
    state = {n: torch.from_numpy(a) for n, a in tk.vae_ldm_to_diffusers(tk.make_vae(cfg, seed)).items()}
    loaded = vae.load_state_dict(state, strict=False)
    stray = [n for n in loaded.missing_keys if not n.startswith(("encoder.", "quant_conv."))]
    if stray or loaded.unexpected_keys:
        raise ValueError(f"the tiny VAE does not fit AutoencoderKLFlux2: missing {stray}, "
                         f"unexpected {loaded.unexpected_keys}")
    return vae.to(torch.float64).eval()


# ---- the reference computations -------------------------------------------------------------


def _f64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, np.float64))


@dataclass
class Reference:
    """diffusers' FLUX.2 [klein] computations on one transformer and VAE (float64, CPU).

    Latents are numpy arrays [128, h, w] as the transformer sees them (patchified and
    normalized; the engine's layout too), prompt embeddings [tokens, dim].
    """

    transformer: Flux2Transformer2DModel
    vae: AutoencoderKLFlux2

    def pipeline(self) -> Flux2KleinPipeline:
        scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)  # type: ignore[arg-type]
        pipe = Flux2KleinPipeline(scheduler=scheduler, vae=self.vae, text_encoder=None, tokenizer=None,
                                  transformer=self.transformer, is_distilled=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @staticmethod
    def positions(latent_h: int, latent_w: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image ids [h*w, 4], text ids [tokens, 4]) as the pipeline makes them: (t, h, w, l)."""
        img = Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 1, latent_h, latent_w))[0]
        txt = Flux2KleinPipeline._prepare_text_ids(torch.zeros(1, tokens, 1))[0]
        return img, txt

    def forward(self, latent: np.ndarray, sigma: float, prompt_embeds: np.ndarray,
                permute_ids: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                ) -> np.ndarray:
        """The transformer's prediction for `latent` at noise level `sigma`, as one step of the
        pipeline's loop computes it (its timestep argument is sigma). `permute_ids` may rewrite
        the (image, text) position ids first."""
        channels, h, w = latent.shape
        img_ids, txt_ids = self.positions(h, w, prompt_embeds.shape[0])
        if permute_ids is not None:
            img_ids, txt_ids = permute_ids(img_ids, txt_ids)
        packed = Flux2KleinPipeline._pack_latents(_f64(latent)[None])
        with torch.no_grad():
            out = self.transformer(hidden_states=packed, encoder_hidden_states=_f64(prompt_embeds)[None],
                                   timestep=torch.tensor([sigma], dtype=torch.float64), img_ids=img_ids,
                                   txt_ids=txt_ids, guidance=None, return_dict=False)[0]
        return out[0].T.reshape(channels, h, w).numpy()

    def sigmas(self, width: int, height: int, steps: int) -> np.ndarray:
        """Flux2KleinPipeline's noise levels for an image of this size (ending at 0): timesteps
        linspace(1, 1/N, N) shifted by mu = compute_empirical_mu(image tokens, N)."""
        pipe = self.pipeline()
        tokens = (height // (2 * pipe.vae_scale_factor)) * (width // (2 * pipe.vae_scale_factor))
        mu = compute_empirical_mu(image_seq_len=tokens, num_steps=steps)
        retrieve_timesteps(pipe.scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return pipe.scheduler.sigmas.numpy().astype(np.float64)

    def denoise(self, noise: np.ndarray, prompt_embeds: np.ndarray, steps: int) -> np.ndarray:
        """The pipeline's denoising loop from `noise` [128, h, w]: the final latent [128, h, w]."""
        channels, h, w = noise.shape
        final: list[torch.Tensor] = []

        def keep_last(pipe: Flux2KleinPipeline, i: int, t: torch.Tensor, kwargs: dict) -> dict:
            if i == steps - 1:
                final.append(kwargs["latents"])  # packed [1, h * w, 128], after the last step
            return {}

        pipe = self.pipeline()
        scale = 2 * pipe.vae_scale_factor
        pipe(prompt_embeds=_f64(prompt_embeds)[None], latents=_f64(noise)[None], height=h * scale,
             width=w * scale, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
             callback_on_step_end=keep_last, callback_on_step_end_tensor_inputs=["latents"])
        return final[0][0].T.reshape(channels, h, w).numpy()

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """The pipeline's decode of a final latent [128, h, w]: undo the latent normalization, unpatchify,
        AutoencoderKLFlux2.decode, and map [-1, 1] to [0, 1] (clamped): an image [3, 16h, 16w]."""
        x = _f64(latent)[None]
        mean = self.vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(self.vae.bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
        x = Flux2KleinPipeline._unpatchify_latents(x * std + mean)
        with torch.no_grad():
            image = self.vae.decode(x, return_dict=False)[0]
        return (image[0] / 2 + 0.5).clamp(0, 1).numpy()


# ---- what the engine's low-bit matmuls do to activations ---------------------------------------


def round_like_q8_0(x: torch.Tensor) -> torch.Tensor:
    """x with each run of 32 values along the last axis replaced by its Q8_0 value: codes
    round(x * 127 / max|x|) times the scale max|x| / 127 rounded to fp16 (ggml's quantize_row_q8_0)."""
    blocks = x.reshape(*x.shape[:-1], -1, Q8_0_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    codes = torch.round(blocks * (127.0 / safe))
    scale = (amax / 127.0).to(torch.float16).to(x.dtype)
    return (codes * scale).reshape(x.shape)


@contextmanager
def engine_activation_rounding(model: Flux2Transformer2DModel) -> Iterator[None]:
    """Inside the block, every low-bit linear of `model` sees its input rounded as the engine's
    CPU matmul rounds it for the low-bit weight types (round_like_q8_0)."""
    handles = [module.register_forward_pre_hook(lambda _module, args: (round_like_q8_0(args[0]), *args[1:]))
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and klein.is_lowbit_linear(f"{name}.weight")]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want|| (L2 over all elements, float64)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {want.shape}")
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))
