"""Issue 5: reference images (klein image editing) reach the engine: a pipeline whose VAE has
an encoder loads it, and the reference changes the result deterministically."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_klein
from conftest import SMALL
from PIL import Image

import bonsai_sd
from bonsai_sd.demo import demo_files

# sd.cpp builds the FLUX.2 VAE encoder with 128 base channels whatever the decoder's.
ENCODER_CH = 128


def make_vae_encoder(seed: int = 0) -> dict[str, np.ndarray]:
    """A random FLUX.2 VAE encoder with ldm names (~34 M parameters), from tiny_klein's layers."""
    t: dict[str, np.ndarray] = {}
    tiny_klein._conv(seed, t, "encoder.conv_in", 3, ENCODER_CH, 3)
    block_in = ENCODER_CH
    for level, mult in enumerate(tiny_klein.VAE_CH_MULT):
        for j in range(tiny_klein.VAE_RES_BLOCKS):
            tiny_klein._resnet(seed, t, f"encoder.down.{level}.block.{j}", block_in, ENCODER_CH * mult)
            block_in = ENCODER_CH * mult
        if level != len(tiny_klein.VAE_CH_MULT) - 1:
            tiny_klein._conv(seed, t, f"encoder.down.{level}.downsample.conv", block_in, block_in, 3)
    tiny_klein._resnet(seed, t, "encoder.mid.block_1", block_in, block_in)
    tiny_klein._group_norm(seed, t, "encoder.mid.attn_1.norm", block_in)
    for proj in ("q", "k", "v", "proj_out"):
        tiny_klein._conv(seed, t, f"encoder.mid.attn_1.{proj}", block_in, block_in, 1)
    tiny_klein._resnet(seed, t, "encoder.mid.block_2", block_in, block_in)
    tiny_klein._group_norm(seed, t, "encoder.norm_out", block_in)
    moments = 2 * tiny_klein.VAE_Z_CHANNELS  # mean and log-variance
    tiny_klein._conv(seed, t, "encoder.conv_out", block_in, moments, 3)
    tiny_klein._conv(seed, t, "encoder.quant_conv", moments, moments, 1)
    return t


@pytest.fixture(scope="module")
def editing_pipeline(tmp_path_factory):
    vae = tmp_path_factory.mktemp("vae") / "vae-with-encoder.safetensors"
    tensors = {**tiny_klein.make_vae(tiny_klein.TinyKleinConfig(), 0), **make_vae_encoder(0)}
    tiny_klein.write_safetensors(vae, tensors, "f16", keep_f32=tiny_klein.VAE_F32_ONLY)
    demo = demo_files()
    pipe = bonsai_sd.Pipeline(demo.transformer, text_encoder=demo.text_encoder, vae=vae, threads=1,
                              flash_attention=True)
    yield pipe
    pipe.close()


def test_reference_images_change_the_result(editing_pipeline, tmp_path):
    assert editing_pipeline.files.vae_has_encoder
    red = Image.new("RGB", (64, 64), (230, 20, 20))
    blue_path = tmp_path / "blue.png"
    Image.new("RGB", (48, 80), (20, 20, 230)).save(blue_path)  # another size: the engine resizes it

    def run(*refs):
        image = editing_pipeline("make it blue", seed=1, reference_images=list(refs), **SMALL)
        return np.asarray(image, dtype=np.int16), image.parameters

    plain, params = run()
    with_red, red_params = run(red)
    again, _ = run(red)
    with_blue, _ = run(blue_path)
    assert (params["reference_images"], red_params["reference_images"]) == (0, 1)
    assert np.array_equal(with_red, again)
    assert np.abs(with_red - plain).mean() > 0.5
    # The reference's pixels matter, not only its presence (the random model reacts weakly to them).
    assert not np.array_equal(with_red, with_blue)
