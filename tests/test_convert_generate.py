"""Issue 4: converted tiny models generate through sd-cli (and the Python API).

The tiny klein set comes from tools/tiny_klein.py; its DiT is packed in every Bonsai format by
tools/bonsai_packs.py and converted. Converted to F16 (exact), the image must be identical to
the one sd-cli makes from tiny_klein's own BFL file. The low-bit outputs need the four types
inside ggml; those tests run once this build's type table has them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bonsai_sd.convert import convert

import bonsai_packs as bp
import tiny_klein as tk

SEED = 3
CFG = tk.TinyKleinConfig(llm_hidden=64, llm_intermediate=128)  # MLX 4-bit groups of 64 need hidden 64


def _types_in_build() -> set[str]:
    from bonsai_sd import _core

    return {row["name"].lower() for row in _core.type_table()}


needs_lowbit_types = pytest.mark.skipif(not {"q1_0", "q2_0", "pq2_0", "ptq1_0"} <= _types_in_build(),
                                        reason="this build's ggml does not have the low-bit types yet")


@dataclass
class TinySet:
    weights: str
    files: tk.ModelSet  # tiny_klein's own files: the BFL DiT, the VAE, the Qwen3 text encoder
    packs: dict[str, Path]  # the same DiT in every Bonsai format
    reference: np.ndarray  # sd-cli's image from tiny_klein's DiT


def _sd_cli(sd_cli: str, dit: Path, vae: Path, llm: Path, out: Path) -> np.ndarray:
    from PIL import Image

    cmd = [sd_cli, "--diffusion-model", str(dit), "--vae", str(vae), "--llm", str(llm), "-p", "a lovely cat",
           "--cfg-scale", "1", "--steps", "2", "-W", "64", "-H", "64", "--seed", "42", "-t", "2", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "[ERROR]" not in log
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"), np.int16)


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory, sd_cli):
    """tiny_set(weights) -> TinySet, built once per flavour."""
    built: dict[str, TinySet] = {}

    def get(weights: str) -> TinySet:
        if weights not in built:
            root = tmp_path_factory.mktemp(f"tiny-{weights}")
            files = tk.write_model_set(root / "set", weights, "f16", SEED, "bfl", CFG)
            dit = tk.make_dit(CFG, weights, SEED)
            packs = bp.write_packs(root / "packs", bp.from_arrays(tk.bfl_to_diffusers(dit.tensors), weights))
            reference = _sd_cli(sd_cli, files.dit, files.vae, files.llm, root / "reference.png")
            built[weights] = TinySet(weights, files, packs, reference)
        return built[weights]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["ternary", "binary"])
@pytest.mark.parametrize("fmt", ["mlx", "gemlite"])
def test_f16_conversion_generates_the_reference_image(tiny_sets, sd_cli, tmp_path, weights, fmt):
    tiny = tiny_sets(weights)
    result = convert(tiny.packs[fmt], tmp_path / "dit.gguf", quant_type="f16", verify=True)
    image = _sd_cli(sd_cli, result.output, tiny.files.vae, tiny.files.llm, tmp_path / "out.png")
    assert image.std() > 5
    assert np.array_equal(image, tiny.reference)


@pytest.mark.slow
@needs_lowbit_types
@pytest.mark.parametrize(("weights", "quant_type"),
                         [("ternary", "pq2_0"), ("ternary", "ptq1_0"), ("ternary", "q2_0"), ("binary", "q1_0")])
def test_lowbit_conversion_generates(tiny_sets, sd_cli, tmp_path, weights, quant_type):
    tiny = tiny_sets(weights)
    result = convert(tiny.packs["mlx"], tmp_path / "dit.gguf", quant_type=quant_type, verify=True)
    image = _sd_cli(sd_cli, result.output, tiny.files.vae, tiny.files.llm, tmp_path / "out.png")
    # The low-bit kernels may round activations to 8 bits; the image stays close to the exact one.
    assert np.abs(image - tiny.reference).mean() < 3.0


@pytest.mark.slow
def test_mlx_4bit_text_encoder_generates(tiny_sets, sd_cli, tmp_path):
    from bonsai_sd.convert.safetensors import save_arrays
    from bonsai_sd.convert.text_encoder import find_text_encoder, open_text_encoder

    tiny = tiny_sets("ternary")
    bp.write_mlx_text_encoder(tmp_path / "repo", tk.make_llm(CFG, SEED), config=tk.qwen3_config(CFG))
    te = convert(tmp_path / "repo", tmp_path / "te.gguf", component="text-encoder", verify=True)
    # The same 4-bit values decoded to F32: sd-cli must give (nearly) the same image with either.
    source = open_text_encoder(find_text_encoder(tmp_path / "repo"))
    decoded = {n: ("F32", t.float_rows(0, t.shape[0]).reshape(t.shape)) for n, t in source.tensors.items()}
    f32_llm = save_arrays(tmp_path / "llm-decoded.safetensors", decoded)
    q4 = _sd_cli(sd_cli, tiny.files.dit, tiny.files.vae, te.output, tmp_path / "q4.png")
    f32 = _sd_cli(sd_cli, tiny.files.dit, tiny.files.vae, f32_llm, tmp_path / "f32.png")
    assert q4.std() > 5
    assert np.abs(q4 - f32).mean() < 3.0  # ggml's Q4_1 matmul rounds activations to 8 bits


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["ternary", "binary"])
@pytest.mark.parametrize("quant_type", ["f16", pytest.param(None, id="lowbit", marks=needs_lowbit_types)])
def test_python_api_loads_a_converted_model(tiny_sets, tmp_path, weights, quant_type):
    from bonsai_sd import _core

    tiny = tiny_sets(weights)
    result = convert(tiny.packs["gemlite"], tmp_path / "dit.gguf", quant_type=quant_type)
    te = bp.write_mlx_text_encoder(tmp_path / "repo", tk.make_llm(CFG, SEED))
    llm = convert(te, tmp_path / "te.gguf")
    ctx = _core.Context(diffusion_model=str(result.output), llm=str(llm.output), vae=str(tiny.files.vae),
                        n_threads=2)
    assert not ctx.closed
    ctx.close()


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["ternary", "binary"])
def test_python_api_generates_from_a_converted_model(tiny_sets, tmp_path, weights):
    import bonsai_sd

    if not hasattr(bonsai_sd, "Pipeline"):
        pytest.skip("bonsai_sd.Pipeline is not in this build yet")
    tiny = tiny_sets(weights)
    result = convert(tiny.packs["unpacked"], tmp_path / "dit.gguf", quant_type="f16")
    pipe = bonsai_sd.Pipeline(str(result.output), text_encoder=str(tiny.files.llm), vae=str(tiny.files.vae))
    image = pipe("a lovely cat", width=64, height=64, steps=2, seed=42)
    pixels = np.asarray(image.convert("RGB"), np.int16)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 5
