#!/usr/bin/env python3
"""The diffusers baseline of `bonsai-sd bench`: the same synthetic FLUX.2 [klein] weights in
diffusers + PyTorch, eager, BF16, on one device; seconds of each stage and peak memory.

    python tools/bench_diffusers.py MODELS_DIR [--sizes 512,1024] [--steps 4] [--warmup 1]
                                    [--images 2] [--device cuda] [-o diffusers.json]

MODELS_DIR is what tools/make_full_size_model.py writes. The transformer is transformer-f16.gguf
(the decoded ternary weights) renamed from BFL to diffusers names (the inverse of the converter's
mapping, tools/tiny_klein.py) and loaded into Flux2Transformer2DModel; the VAE decoder is
vae.safetensors in AutoencoderKLFlux2 (the encoder, unused, keeps its random init); the text
encoder is a transformers Qwen3ForCausalLM of the shape of text-encoder-q4_k.gguf with random
BF16 weights (the timing does not depend on the values). Timed like the pipeline runs them: the
prompt's 512 tokens through the encoder (hidden states 9, 18, 27 stacked), one transformer call
per step, one VAE decode; seconds per image = text encoder + steps x step + VAE. Peak memory is
PyTorch's peak allocation of the whole run (and NVML's device "used" figure when available).

Writes the same JSON schema as `bonsai-sd bench` (one case, type "bf16", mode "diffusers"), so
`bonsai-sd bench --report` shows it beside the engine's cases.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_klein  # noqa: E402 - tools/ is not a package

from bonsai_sd.bench import git_commit  # noqa: E402
from bonsai_sd.convert import klein  # noqa: E402
from bonsai_sd.ggufio import read_gguf  # noqa: E402

TEXT_TOKENS = 512  # klein pads the prompt to 512 tokens
HIDDEN_STATE_LAYERS = (9, 18, 27)


def gguf_arrays(path: Path) -> dict[str, np.ndarray]:
    """F16/F32 tensors of a GGUF as arrays mapped from the file (numpy order)."""
    contents = read_gguf(path)
    data = np.memmap(path, np.uint8, mode="r")
    out = {}
    for t in contents.tensors:
        dtype = {"F16": np.float16, "F32": np.float32}.get(t.type_name)
        if dtype is None:
            raise ValueError(f"{path}: tensor {t.name} is {t.type_name}; the baseline reads F16/F32 files only")
        out[t.name] = data[t.offset:t.offset + t.n_bytes].view(dtype).reshape(t.shape)
    return out


def transformer_config(dims: klein.KleinDims) -> dict[str, Any]:
    return {"patch_size": 1, "in_channels": dims.in_channels, "out_channels": None,
            "num_layers": dims.double_blocks, "num_single_layers": dims.single_blocks,
            "attention_head_dim": dims.head_dim, "num_attention_heads": dims.hidden // dims.head_dim,
            "joint_attention_dim": dims.context, "timestep_guidance_channels": dims.time_channels,
            "mlp_ratio": dims.mlp / dims.hidden, "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000,
            "eps": 1e-6, "guidance_embeds": False}


def load_transformer(path: Path, torch: Any, device: str, dtype: Any) -> tuple[Any, klein.KleinDims]:
    from accelerate import init_empty_weights
    from diffusers import Flux2Transformer2DModel

    bfl = gguf_arrays(path)
    dims = klein.dims_from_bfl({n: a.shape for n, a in bfl.items()}, str(path))
    with init_empty_weights():
        model = Flux2Transformer2DModel(**transformer_config(dims))
    state = {n: torch.from_numpy(np.array(a)).to(device=device, dtype=dtype)  # a copy: the map is read-only
             for n, a in tiny_klein.bfl_to_diffusers(bfl).items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), dims


def load_vae(path: Path, torch: Any, device: str, dtype: Any) -> Any:
    from diffusers import AutoencoderKLFlux2

    st = tiny_klein.read_safetensors(path)
    ch = st.tensors["decoder.conv_in.weight"].shape[0] // tiny_klein.VAE_CH_MULT[-1]
    config = tiny_klein.diffusers_vae_config(tiny_klein.TinyKleinConfig(vae_ch=ch))
    accepted = inspect.signature(AutoencoderKLFlux2.__init__).parameters
    config = {k: v for k, v in config.items() if k in accepted}
    model = AutoencoderKLFlux2(**config)
    state = {n: torch.from_numpy(a) for n, a in tiny_klein.vae_ldm_to_diffusers(st.tensors).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(n.startswith(("decoder.", "post_quant_conv.")) for n in missing):
        raise ValueError(f"{path}: VAE tensors do not fit AutoencoderKLFlux2 (unexpected {unexpected[:3]}, "
                         f"missing {[n for n in missing if n.startswith('decoder.')][:3]})")
    return model.to(device=device, dtype=dtype).eval()


def text_encoder_config(path: Path) -> dict[str, Any]:
    """Qwen3 sizes read from the text encoder GGUF's tensor table (sd.cpp's head counts)."""
    shapes = {t.name: t.shape for t in read_gguf(path).tensors}
    layers = 1 + max(int(n.split(".")[2]) for n in shapes if n.startswith("model.layers."))
    vocab, hidden = shapes["model.embed_tokens.weight"]
    head_dim = shapes["model.layers.0.self_attn.q_norm.weight"][0]
    return {"vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers,
            "intermediate_size": shapes["model.layers.0.mlp.gate_proj.weight"][0],
            "num_attention_heads": shapes["model.layers.0.self_attn.q_proj.weight"][0] // head_dim,
            "num_key_value_heads": shapes["model.layers.0.self_attn.k_proj.weight"][0] // head_dim,
            "head_dim": head_dim, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "tie_word_embeddings": True,
            "max_position_embeddings": 40960}


def load_text_encoder(path: Path, torch: Any, device: str, dtype: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**text_encoder_config(path))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def timed(torch: Any, device: str, fn: Any) -> tuple[Any, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def latent_ids(torch: Any, side: int, device: str) -> Any:
    """(1, side*side, 4) position ids (t, h, w, l) of the image tokens, as the klein pipeline builds them."""
    h, w = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    zeros = torch.zeros_like(h)
    return torch.stack([zeros, h, w, zeros], dim=-1).reshape(1, -1, 4).to(device)


def text_ids(torch: Any, device: str) -> Any:
    ids = torch.zeros(1, TEXT_TOKENS, 4, dtype=torch.long)
    ids[..., 3] = torch.arange(TEXT_TOKENS)
    return ids.to(device)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device, dtype = args.device, torch.bfloat16
    models = Path(args.models)
    cuda = device.startswith("cuda")
    started = time.perf_counter()
    transformer, dims = load_transformer(models / "transformer-f16.gguf", torch, device, dtype)
    vae = load_vae(models / "vae.safetensors", torch, device, dtype)
    text_encoder = load_text_encoder(models / "text-encoder-q4_k.gguf", torch, device, dtype)
    load_s = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    sizes = []
    with torch.inference_mode():
        for size in args.sizes:
            side = size // 16  # FLUX.2: 8x VAE, then 2x2 patches
            images = []
            for i in range(args.warmup + args.images):
                tokens = torch.randint(0, 151_936, (1, TEXT_TOKENS), generator=gen).to(device)
                mask = torch.ones_like(tokens)

                def encode() -> Any:
                    out = text_encoder(input_ids=tokens, attention_mask=mask, output_hidden_states=True,
                                       use_cache=False)
                    stacked = torch.stack([out.hidden_states[k] for k in HIDDEN_STATE_LAYERS], dim=1)
                    return stacked.permute(0, 2, 1, 3).reshape(1, TEXT_TOKENS, -1)

                context, te_s = timed(torch, device, encode)
                latents = torch.randn(1, side * side, dims.in_channels, generator=gen).to(device, dtype)
                img_ids, txt_ids = latent_ids(torch, side, device), text_ids(torch, device)
                step_s = []
                for step in range(args.steps):
                    t = torch.full((1,), 1.0 - step / args.steps, device=device, dtype=dtype)
                    noise_pred, seconds = timed(torch, device, lambda t=t: transformer(
                        hidden_states=latents, encoder_hidden_states=context, timestep=t, img_ids=img_ids,
                        txt_ids=txt_ids, guidance=None, return_dict=False)[0])
                    latents = latents - noise_pred / args.steps
                    step_s.append(seconds)
                z = latents.reshape(1, side, side, dims.in_channels).permute(0, 3, 1, 2)
                z = z.reshape(1, dims.in_channels // 4, 2, 2, side, side).permute(0, 1, 4, 2, 5, 3)
                z = z.reshape(1, dims.in_channels // 4, 2 * side, 2 * side)  # unpatchify to (1, 32, H/8, W/8)
                _, vae_s = timed(torch, device, lambda z=z: vae.decode(z, return_dict=False)[0])
                images.append({"warmup": i < args.warmup, "te_s": te_s, "step_s": step_s, "vae_s": vae_s,
                               "sampling_s": sum(step_s), "wall_s": te_s + sum(step_s) + vae_s})
                print(f"diffusers {size}x{size}: TE {te_s:.3f} s, steps {sum(step_s):.3f} s, VAE {vae_s:.3f} s"
                      f"{' (warm-up)' if i < args.warmup else ''}", flush=True)
            timed_images = [im for im in images if not im["warmup"]]
            mean = lambda key: sum(im[key] for im in timed_images) / len(timed_images)  # noqa: E731
            sizes.append({"size": size, "images": images, "s_per_image": mean("wall_s"), "te_s": mean("te_s"),
                          "sampling_s": mean("sampling_s"), "vae_s": mean("vae_s"),
                          "s_per_step": sum(s for im in timed_images for s in im["step_s"])
                          / sum(len(im["step_s"]) for im in timed_images),
                          "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None})
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": None,
               "cpu": platform.processor(), "gpu": torch.cuda.get_device_name() if cuda else None}
    import diffusers
    import transformers

    return {
        "schema": 1, "tool": "tools/bench_diffusers.py", "bonsai_sd": f"diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, torch {torch.__version__}", "commit": git_commit(),
        "command": ["python", *sys.argv], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine,
        "settings": {"device": device, "device_name": machine["gpu"] or "CPU", "sizes": args.sizes,
                     "steps": args.steps, "warmup": args.warmup, "images": args.images, "dtype": "bf16"},
        "cases": [{"type": "bf16", "mode": "diffusers", "load_s": load_s, "sizes": sizes,
                   "peak_gpu_note": "torch.cuda.max_memory_allocated over the whole run (all three models resident)"}],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=Path("diffusers.json"))
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    report = bench(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
