"""tools/tiny_klein.py: the tiny FLUX.2 [klein]-shaped model sets every end-to-end test builds on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import tiny_klein as tk  # noqa: E402

CFG = tk.TinyKleinConfig()


@pytest.fixture(scope="module")
def ternary() -> tk.DitWeights:
    return tk.make_dit(CFG, "ternary", seed=7)


@pytest.fixture(scope="module")
def binary() -> tk.DitWeights:
    return tk.make_dit(CFG, "binary", seed=7)


# ---- determinism


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (tk.make_dit(CFG, "ternary", seed=s) for s in (3, 3, 4))
    assert a.tensors.keys() == c.tensors.keys()
    for name in a.tensors:
        assert np.array_equal(a.tensors[name], b.tensors[name]), name
        assert not np.array_equal(a.tensors[name], c.tensors[name]), name
    llm_a, llm_b = tk.make_llm(CFG, seed=3), tk.make_llm(CFG, seed=3)
    assert all(np.array_equal(llm_a[n], llm_b[n]) for n in llm_a)


def test_float_tensors_do_not_depend_on_the_flavour(ternary, binary):
    plain = tk.make_dit(CFG, "float", seed=7)
    for name, value in plain.tensors.items():
        if tk.is_block_linear(name):
            assert not np.array_equal(value, ternary.tensors[name]), name
            assert not np.array_equal(ternary.tensors[name], binary.tensors[name]), name
        else:
            assert np.array_equal(value, ternary.tensors[name]), name
            assert np.array_equal(value, binary.tensors[name]), name


def test_written_files_are_byte_identical_for_one_seed(tmp_path):
    first = tk.write_model_set(tmp_path / "a", "binary", "bf16", seed=5)
    second = tk.write_model_set(tmp_path / "b", "binary", "bf16", seed=5)
    for component in ("dit", "vae", "llm"):
        assert getattr(first, component).read_bytes() == getattr(second, component).read_bytes(), component


# ---- shapes sd.cpp needs


def test_dit_shapes_follow_sdcpp_constraints(ternary):
    t = ternary.tensors
    h = CFG.dit_hidden
    assert t["img_in.weight"].shape == (h, 128)
    assert t["txt_in.weight"].shape == (h, 3 * CFG.llm_hidden)
    assert t["double_blocks.0.txt_attn.norm.key_norm.scale"].shape == (128,)  # sd.cpp: head dim
    assert t["single_blocks.0.linear1.weight"].shape == (3 * h + 2 * 3 * h, h)
    assert t["final_layer.linear.weight"].shape == (128, h)
    assert not any("bias" in n or "guidance_in" in n for n in t)


def test_llm_shapes_give_16_query_heads_and_the_full_vocab():
    llm = tk.make_llm(CFG, seed=0)
    assert llm["model.embed_tokens.weight"].shape == (151_936, CFG.llm_hidden)
    assert max(int(n.split(".")[2]) for n in llm if n.startswith("model.layers.")) == 27
    assert llm["model.layers.0.self_attn.q_proj.weight"].shape == (16 * 128, CFG.llm_hidden)
    assert llm["model.layers.0.self_attn.k_proj.weight"].shape == (8 * 128, CFG.llm_hidden)


def test_config_refuses_shapes_sdcpp_cannot_run():
    with pytest.raises(ValueError, match="llm_layers"):
        tk.TinyKleinConfig(llm_layers=27)
    with pytest.raises(ValueError, match="vae_ch"):
        tk.TinyKleinConfig(vae_ch=48)
    with pytest.raises(ValueError, match="flavour"):
        tk.make_dit(CFG, "quaternary")


# ---- ternary / binary groups


def _groups(weight: np.ndarray) -> np.ndarray:
    out, inp = weight.shape
    assert inp % 128 == 0
    return weight.reshape(out, inp // 128, 128)


def _exact_in_fp16_and_bf16(x: np.ndarray) -> bool:
    as_f16 = x.astype(np.float16).astype(np.float32)
    as_bf16 = (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # truncation
    return bool(np.array_equal(as_f16, x) and np.array_equal(as_bf16, x))


@pytest.mark.parametrize("flavour", ["ternary", "binary"])
def test_block_linear_groups_are_exactly_plus_minus_s(flavour, ternary, binary):
    dit = {"ternary": ternary, "binary": binary}[flavour]
    quantized = [n for n in dit.tensors if tk.is_block_linear(n)]
    assert sorted(quantized) == sorted(dit.codes) == sorted(dit.scales)
    assert len(quantized) == 8 * CFG.double_blocks + 2 * CFG.single_blocks
    zeros = total = 0
    for name in quantized:
        groups = _groups(dit.tensors[name])
        s = np.abs(groups).max(axis=2)  # the group scale, read from the dense weight alone
        assert (s > 0).all(), name
        magnitudes = np.abs(groups)
        on_scale = magnitudes == s[:, :, None]
        if flavour == "binary":
            assert on_scale.all(), name
        else:
            assert (on_scale | (magnitudes == 0)).all(), name
        zeros += int((magnitudes == 0).sum())
        total += magnitudes.size
        assert np.array_equal(s, dit.scales[name]), name
        assert _exact_in_fp16_and_bf16(s) and _exact_in_fp16_and_bf16(2 * s), name
        # Scales near sqrt(k)/sqrt(fan_in) keep activations at scale.
        assert 0.3 < float(np.median(s) * np.sqrt(groups.shape[1] * 128)) < 3.0, name
    if flavour == "ternary":
        assert 0.30 < zeros / total < 0.37
    else:
        assert zeros == 0


def test_codes_and_scales_reproduce_the_dense_weight(ternary):
    for name, codes in ternary.codes.items():
        assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 0, 1}
        decoded = tk.GroupQuantized(codes, ternary.scales[name]).dense()
        assert np.array_equal(decoded, ternary.tensors[name]), name


# ---- bf16 / fp16 exactness of the stored float tensors


def test_every_float_tensor_is_exact_in_fp16_and_bf16(ternary):
    vae = tk.make_vae(CFG, seed=7)
    llm = tk.make_llm(CFG, seed=7)
    for group in (ternary.tensors, vae, llm):
        for name, value in group.items():
            if name in tk.VAE_F32_ONLY:
                continue
            assert np.isfinite(value).all(), name
            assert _exact_in_fp16_and_bf16(value), name


def test_round_to_bf16_rounds_to_nearest_even():
    ulp = 2.0**-7  # bf16 spacing in [1, 2); 3.4e38 lies past the midpoint of bf16 max and 2^128
    x = np.array([1.0, 1 + ulp / 2, 1 + 3 * ulp / 2, 1 + ulp / 2 + 2**-20, -(1 + 3 * ulp / 2), 3.4e38], np.float32)
    expected = np.array([1.0, 1.0, 1 + 2 * ulp, 1 + ulp, -(1 + 2 * ulp), np.inf], dtype=np.float32)
    assert np.array_equal(tk.round_to_bf16(x), expected)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_stored_files_hold_the_generated_values_exactly(tmp_path, dtype):
    files = tk.write_model_set(tmp_path, "ternary", dtype, seed=7)
    expected = {
        "dit": tk.make_dit(CFG, "ternary", seed=7).tensors,
        "vae": tk.make_vae(CFG, seed=7),
        "llm": tk.make_llm(CFG, seed=7),
    }
    for component, tensors in expected.items():
        stored = tk.read_safetensors(getattr(files, component))
        assert list(stored.tensors) == list(tensors), component
        for name, value in tensors.items():
            want_dtype = "F32" if name in tk.VAE_F32_ONLY else dtype.upper()
            assert stored.dtypes[name] == want_dtype, name
            assert np.array_equal(stored.tensors[name], value), name
        assert stored.metadata["component"] == component and stored.metadata["seed"] == "7"


def test_writer_refuses_values_fp16_cannot_hold(tmp_path):
    target = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="big"):
        tk.write_safetensors(target, {"big": np.array([1e6], dtype=np.float32)}, "f16")
    assert not target.exists() and not list(tmp_path.iterdir())


# ---- diffusers <-> BFL names

# Flux2Transformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=False): its state
# dict keys, written out from the module structure (not from tiny_klein's tables).
DIFFUSERS_KEYS = {
    "x_embedder.weight", "context_embedder.weight",
    "time_guidance_embed.timestep_embedder.linear_1.weight",
    "time_guidance_embed.timestep_embedder.linear_2.weight",
    "double_stream_modulation_img.linear.weight", "double_stream_modulation_txt.linear.weight",
    "single_stream_modulation.linear.weight",
    *(f"transformer_blocks.0.attn.{p}.weight" for p in (
        "to_q", "to_k", "to_v", "norm_q", "norm_k", "to_out.0",
        "add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k", "to_add_out")),
    *(f"transformer_blocks.0.{ff}.{p}.weight" for ff in ("ff", "ff_context") for p in ("linear_in", "linear_out")),
    *(f"single_transformer_blocks.0.attn.{p}.weight" for p in ("to_qkv_mlp_proj", "to_out", "norm_q", "norm_k")),
    "norm_out.linear.weight", "proj_out.weight",
}  # fmt: skip


def test_diffusers_names_are_the_flux2_module_names(ternary):
    assert set(tk.bfl_to_diffusers(ternary.tensors)) == DIFFUSERS_KEYS


def test_klein_4b_shapes_have_100_quantized_linears_in_diffusers_names():
    klein = tk.TinyKleinConfig(dit_heads=24, double_blocks=5, single_blocks=20)
    rows_only = {n: np.empty((s[0], 0), np.float32) for n, s in tk.dit_shapes(klein).items() if tk.is_block_linear(n)}
    assert len(tk.bfl_to_diffusers(rows_only)) == 100


def test_qkv_split_and_adaln_swap(ternary):
    t, h = ternary.tensors, CFG.dit_hidden
    d = tk.bfl_to_diffusers(t)
    qkv = t["double_blocks.0.img_attn.qkv.weight"]
    assert np.array_equal(d["transformer_blocks.0.attn.to_q.weight"], qkv[:h])
    assert np.array_equal(d["transformer_blocks.0.attn.to_k.weight"], qkv[h : 2 * h])
    assert np.array_equal(d["transformer_blocks.0.attn.to_v.weight"], qkv[2 * h :])
    txt_qkv = t["double_blocks.0.txt_attn.qkv.weight"]
    assert np.array_equal(d["transformer_blocks.0.attn.add_k_proj.weight"], txt_qkv[h : 2 * h])
    ada = t["final_layer.adaLN_modulation.1.weight"]  # BFL rows: shift, then scale
    assert np.array_equal(d["norm_out.linear.weight"][:h], ada[h:])  # diffusers rows: scale, then shift
    assert np.array_equal(d["norm_out.linear.weight"][h:], ada[:h])
    assert np.array_equal(d["single_transformer_blocks.0.attn.norm_k.weight"], t["single_blocks.0.norm.key_norm.scale"])


def test_diffusers_to_bfl_round_trips_tensors_codes_and_scales(ternary):
    for part in (ternary.tensors, ternary.codes, ternary.scales):
        back = tk.diffusers_to_bfl(tk.bfl_to_diffusers(part))
        assert back.keys() == part.keys()
        for name, value in part.items():
            assert back[name].dtype == value.dtype and np.array_equal(back[name], value), name
    total = sum(v.nbytes for v in ternary.tensors.values())
    assert sum(v.nbytes for v in tk.bfl_to_diffusers(ternary.tensors).values()) == total


def test_diffusers_to_bfl_refuses_incomplete_or_unknown_tensors(ternary):
    d = tk.bfl_to_diffusers(ternary.tensors)
    del d["transformer_blocks.0.attn.add_v_proj.weight"]
    with pytest.raises(ValueError, match=r"txt_attn\.qkv.*v part"):
        tk.diffusers_to_bfl(d)
    with pytest.raises(ValueError, match="guidance_embedder"):
        tk.diffusers_to_bfl({"time_guidance_embed.guidance_embedder.linear_1.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="vector_in"):
        tk.bfl_to_diffusers({"vector_in.in_layer.weight": np.zeros((2, 2))})


def test_diffusers_layout_writes_configs_and_mapped_weights(tmp_path, ternary):
    files = tk.write_model_set(tmp_path, "ternary", "bf16", seed=7, layout="diffusers")
    import json

    config = json.loads((files.dit.parent / "config.json").read_text())
    assert config["_class_name"] == "Flux2Transformer2DModel"
    assert (config["num_layers"], config["num_single_layers"], config["num_attention_heads"]) == (1, 1, 2)
    assert config["joint_attention_dim"] == 3 * CFG.llm_hidden and config["guidance_embeds"] is False
    stored = tk.read_safetensors(files.dit).tensors
    back = tk.diffusers_to_bfl(stored)
    assert all(np.array_equal(back[n], v) for n, v in ternary.tensors.items()) and back.keys() == ternary.tensors.keys()
    vae = tk.read_safetensors(files.vae).tensors
    assert vae["decoder.mid_block.attentions.0.to_q.weight"].ndim == 2
    assert "decoder.up_blocks.3.resnets.0.conv_shortcut.weight" in vae  # ldm up.0: 64 -> 32 channels
    assert json.loads((files.llm.parent / "config.json").read_text())["num_attention_heads"] == 16


# ---- latent statistics


def _upstream_vae_source(repo_root: Path) -> Path | None:
    candidates = [Path("/tmp/upgit/src/auto_encoder_kl.hpp")]
    candidates += sorted(repo_root.glob("build/*/_upstream/stable-diffusion.cpp/src/auto_encoder_kl.hpp"))
    return next((p for p in candidates if p.is_file()), None)


def test_bn_statistics_are_sdcpp_constants(repo_root):
    vae = tk.make_vae(CFG, seed=0)
    mean, std = tk.latent_bn_statistics()
    assert np.array_equal(vae["bn.running_mean"], mean)
    np.testing.assert_allclose(np.sqrt(vae["bn.running_var"] + tk.VAE_BN_EPS), std, rtol=1e-6)
    source = _upstream_vae_source(repo_root)
    if source is None:
        pytest.skip("the pinned upstream auto_encoder_kl.hpp is not unpacked here")
    body = source.read_text().split("get_latents_mean_std", 1)[1]
    vectors = re.findall(r"from_vector\(\{([^}]*)\}\)", body)[:2]
    parsed = [np.array([float(v.strip().rstrip("f")) for v in vec.split(",")], dtype=np.float32) for vec in vectors]
    assert np.array_equal(parsed[0], mean) and np.array_equal(parsed[1], std)


# ---- end to end in sd-cli


def _run_sd_cli(sd_cli: str, files: tk.ModelSet, out: Path, prompt: str = "a lovely cat", vae: Path | None = None):
    cmd = [
        sd_cli, "--diffusion-model", str(files.dit), "--vae", str(vae or files.vae), "--llm", str(files.llm),
        "-p", prompt, "--cfg-scale", "1", "--steps", "2", "-W", "64", "-H", "64", "--seed", "42",
        "-t", "2", "-v", "-o", str(out),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "dtype"), [("float", "f32"), ("ternary", "f16"), ("binary", "bf16")])
def test_sd_cli_generates_an_image(tmp_path, sd_cli, flavour, dtype):
    files = tk.write_model_set(tmp_path, flavour, dtype, seed=1)
    proc = _run_sd_cli(sd_cli, files, tmp_path / "out.png")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Version: Flux.2 klein" in log
    assert (
        "flux: depth = 1, depth_single_blocks = 1, guidance_embed = false, "
        f"context_in_dim = {CFG.context_dim}, hidden_size = {CFG.dit_hidden}, num_heads = 2"
    ) in log
    assert f"llm: num_layers = 28, vocab_size = 151936, hidden_size = {CFG.llm_hidden}" in log
    assert "vae decoder: ch = 32" in log
    assert "[ERROR]" not in log and "unknown tensor" not in log
    pixels = _pixels(tmp_path / "out.png")
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 5 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


@pytest.mark.slow
def test_sd_cli_image_depends_on_prompt_and_reads_diffusers_vae_names(tmp_path, sd_cli):
    files = tk.write_model_set(tmp_path / "bfl", "ternary", "bf16", seed=2)
    diffusers = tk.write_model_set(tmp_path / "diffusers", "ternary", "bf16", seed=2, layout="diffusers")
    runs = {
        "base": _run_sd_cli(sd_cli, files, tmp_path / "base.png"),
        "prompt": _run_sd_cli(sd_cli, files, tmp_path / "prompt.png", prompt="a red fox"),
        "vae": _run_sd_cli(sd_cli, files, tmp_path / "vae.png", vae=diffusers.vae),
    }
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, (proc.stdout + proc.stderr)[-4000:])
    base, prompt, vae = (_pixels(tmp_path / f"{n}.png") for n in runs)
    assert np.abs(base - prompt).mean() > 1.0  # the text encoder's output reaches the image
    # Same decoder weights under diffusers names: sd.cpp maps them back. Its mid-block attention
    # runs as a 2-D linear instead of a 1x1 conv, so pixels may move by one level.
    assert np.abs(base - vae).max() <= 1
