"""Issue 5: invalid arguments and files raise Python exceptions with actionable messages before
anything reaches the engine, and an engine failure is an exception, never an abort."""

from __future__ import annotations

import json
import logging
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import tiny_klein
from conftest import SMALL
from ggufraw import RawTensor, write_gguf

import bonsai_sd
from bonsai_sd import _core
from bonsai_sd.demo import demo_files
from bonsai_sd.modelfiles import ModelFileError

DEMO = demo_files()


def header_only_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A safetensors file with a header and no tensor data: enough for the checks, which must
    refuse it before the engine would try to read it."""
    header = {name: {"dtype": "F16", "shape": list(shape), "data_offsets": [0, 0]} for name, shape in shapes.items()}
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head)
    return path


def dit_shapes(**changes: tuple[int, ...] | None) -> dict[str, tuple[int, ...]]:
    shapes = dict(tiny_klein.dit_shapes(tiny_klein.TinyKleinConfig()))
    for name, shape in changes.items():
        name = name.replace("__", ".")
        if shape is None:
            shapes.pop(name)
        else:
            shapes[name] = shape
    return shapes


def llm_shapes(hidden: int = 32, layers: int = 28, vocab: int = 151_936,
               qk_norm: bool = True) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        shapes[f"model.layers.{i}.self_attn.q_proj.weight"] = (2048, hidden)
        if qk_norm:
            shapes[f"model.layers.{i}.self_attn.q_norm.weight"] = (128,)
    return shapes


def load(transformer=DEMO.transformer, text_encoder=DEMO.text_encoder, vae=DEMO.vae, **options) -> None:
    bonsai_sd.Pipeline(transformer, text_encoder=text_encoder, vae=vae, **options).close()


# ---- files ---------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.gguf: no such file"):
        load(transformer=tmp_path / "nope.gguf")


def test_a_directory_instead_of_a_file(tmp_path):
    with pytest.raises(ModelFileError, match="is a directory"):
        load(vae=tmp_path)


def test_not_a_weight_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, this is not a model")
    with pytest.raises(ModelFileError, match="not a GGUF or safetensors file"):
        load(text_encoder=tmp_path / "notes.txt")


def test_truncated_gguf_header(tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(DEMO.transformer.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="truncated"):
        load(transformer=cut)


@pytest.mark.parametrize(("slot", "given", "holds"), [
    ("transformer", "vae", "VAE"),
    ("transformer", "text_encoder", "text encoder"),
    ("text_encoder", "transformer", "transformer"),
    ("text_encoder", "vae", "VAE"),
    ("vae", "transformer", "transformer"),
    ("vae", "text_encoder", "text encoder"),
])
def test_a_component_of_the_wrong_kind(slot, given, holds):
    files = {"transformer": DEMO.transformer, "text_encoder": DEMO.text_encoder, "vae": DEMO.vae}
    files[slot] = files[given]
    label = {"transformer": "transformer", "text_encoder": "text encoder", "vae": "VAE"}[slot]
    with pytest.raises(ModelFileError, match=f"given as the {label}, but it holds a {holds}"):
        load(**files)


def test_diffusers_named_transformer_says_convert(tmp_path):
    dit = tiny_klein.bfl_to_diffusers(tiny_klein.make_dit(tiny_klein.TinyKleinConfig(), "float", 0).tensors)
    path = header_only_safetensors(tmp_path / "diffusers.safetensors", {k: v.shape for k, v in dit.items()})
    with pytest.raises(ModelFileError, match="diffusers names.*bonsai-sd convert"):
        load(transformer=path)


def test_flux1_transformer(tmp_path):
    shapes = dit_shapes(double_stream_modulation_img__lin__weight=None)
    shapes["double_blocks.0.img_mod.lin.weight"] = (1536, 256)
    with pytest.raises(ModelFileError, match="FLUX.1 transformer"):
        load(transformer=header_only_safetensors(tmp_path / "flux1.safetensors", shapes))


def test_flux2_dev_transformer(tmp_path):
    shapes = dit_shapes(single_blocks__47__linear1__weight=(2304, 256))
    with pytest.raises(ModelFileError, match=r"FLUX.2 \[dev\]"):
        load(transformer=header_only_safetensors(tmp_path / "dev.safetensors", shapes))


def test_not_a_flux_transformer(tmp_path):
    shapes = {"double_blocks.0.something.weight": (4, 4)}
    with pytest.raises(ModelFileError, match="not a FLUX.2 transformer"):
        load(transformer=header_only_safetensors(tmp_path / "other.safetensors", shapes))


def test_wrong_latent_channels(tmp_path):
    shapes = dit_shapes(img_in__weight=(256, 64))
    with pytest.raises(ModelFileError, match="img_in takes 64 channels"):
        load(transformer=header_only_safetensors(tmp_path / "dit.safetensors", shapes))


def test_prefixed_names_are_recognised(tmp_path):
    shapes = {f"model.diffusion_model.{k}": v for k, v in dit_shapes(img_in__weight=(256, 64)).items()}
    with pytest.raises(ModelFileError, match="img_in takes 64 channels"):  # got past the kind checks
        load(transformer=header_only_safetensors(tmp_path / "dit.safetensors", shapes))


@pytest.mark.parametrize(("shapes", "message"), [
    (llm_shapes(qk_norm=False), "not a Qwen3 model"),
    (llm_shapes(layers=12), "12 layers"),
    (llm_shapes(vocab=32_000), "vocabulary of 32000 tokens"),
])
def test_text_encoder_that_klein_cannot_use(tmp_path, shapes, message):
    with pytest.raises(ModelFileError, match=message):
        load(text_encoder=header_only_safetensors(tmp_path / "llm.safetensors", shapes))


def test_text_encoder_that_does_not_fit_the_transformer(tmp_path):
    path = header_only_safetensors(tmp_path / "llm.safetensors", llm_shapes(hidden=2560))
    with pytest.raises(ModelFileError, match=r"hidden size 2560, so a context of 7680.*context 96.*Qwen3-4B"):
        load(text_encoder=path)


def test_vae_of_another_model(tmp_path):
    path = header_only_safetensors(tmp_path / "ae.safetensors",
                                   {"decoder.conv_in.weight": (512, 16, 3, 3),
                                    "decoder.up.0.block.0.conv1.weight": (4,)})
    with pytest.raises(ModelFileError, match="16 latent channels.*FLUX.2 VAE"):
        load(vae=path)


def test_unknown_gguf_type_is_refused_before_the_engine(tmp_path):
    tensors = [RawTensor(name, tuple(reversed(shape)), 0, b"") for name, shape in dit_shapes().items()]
    tensors[5] = RawTensor(tensors[5].name, tensors[5].shape, 200, b"")
    path = write_gguf(tmp_path / "odd.gguf", tensors)
    with pytest.raises(ModelFileError, match=f"tensor {tensors[5].name} has ggml type id 200"):
        load(transformer=path)


def test_engine_failure_is_an_exception(tmp_path):
    """A file whose header is fine but whose data is cut short passes the checks; the engine's
    refusal comes back as EngineError with its reason (the process survives)."""
    cut = tmp_path / "transformer.gguf"
    data = DEMO.transformer.read_bytes()
    cut.write_bytes(data[: len(data) - 100_000])
    with pytest.raises(bonsai_sd.EngineError, match="could not load the model: .+"):
        load(transformer=cut)


# ---- options -------------------------------------------------------------------------------

def test_unavailable_device():
    names = [d["name"] for d in _core.devices()]
    if not any(n.upper().startswith("CUDA") for n in names):
        with pytest.raises(ValueError, match="device 'cuda' is not available.*BONSAI_SD_CUDA=ON"):
            load(device="cuda")
    with pytest.raises(ValueError, match="device 'tpu7' is not available in this build \\(devices: .*CPU"):
        load(device="tpu7")


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"threads": 0}, ValueError, r"threads must be in \[1, 1024\], got 0"),
    ({"threads": 2.5}, TypeError, "threads must be an integer"),
    ({"weight_type": "q9_9"}, ValueError, "unknown weight type 'q9_9'"),
])
def test_invalid_load_options(options, error, message):
    with pytest.raises(error, match=message):
        load(**options)


# ---- generation arguments ------------------------------------------------------------------

INVALID_ARGUMENTS = [
    ({"width": 500}, ValueError, r"width must be a multiple of 16, got 500 \(try 496 or 512\)"),
    ({"height": 8}, ValueError, r"height must be in \[16, 16384\], got 8"),
    ({"width": 32768}, ValueError, "a 32768x64 image is larger than 16384x16384"),
    ({"width": True}, TypeError, "width must be an integer"),
    ({"steps": 0}, ValueError, r"steps must be in \[1, 1000\], got 0"),
    ({"steps": 2.0}, TypeError, "steps must be an integer"),
    ({"seed": -1}, ValueError, "seed must be in"),
    ({"seed": 2**64}, ValueError, "seed must be in"),
    ({"guidance": math.nan}, ValueError, "guidance must be a finite number"),
    ({"guidance": -1.0}, ValueError, "guidance must be a finite number >= 0"),
    ({"sampler": "eulerr"}, ValueError, "unknown sampler 'eulerr' \\(known: euler, euler_a"),
    ({"scheduler": "kleinish"}, ValueError, "unknown scheduler 'kleinish' \\(known: discrete"),
    ({"sigmas": [1.0]}, ValueError, "sigmas needs at least 2 values"),
    ({"sigmas": [0.5, 1.0, 0.0]}, ValueError, "sigmas must not increase"),
    ({"negative_prompt": None}, TypeError, "negative_prompt must be a string"),
    ({"reference_images": ["/nonexistent/ref.png"]}, ValueError,
     "reference image 0: /nonexistent/ref.png: no such file"),
]


@pytest.mark.parametrize(("changes", "error", "message"), INVALID_ARGUMENTS)
def test_invalid_generation_arguments_never_reach_the_engine(demo_pipeline, caplog, changes, error, message):
    args = {**SMALL, "seed": 1, **changes}
    with caplog.at_level(logging.DEBUG, logger="bonsai_sd.engine"), pytest.raises(error, match=message):
        demo_pipeline("a cat", **args)
    assert not [r for r in caplog.records if r.name == "bonsai_sd.engine"]  # the engine saw nothing


def test_prompt_must_be_text(demo_pipeline):
    with pytest.raises(TypeError, match="prompt must be a string"):
        demo_pipeline(None, **SMALL)


def test_reference_images_need_the_vae_encoder(demo_pipeline, tmp_path):
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(ref)
    with pytest.raises(ValueError, match="reference images need the VAE's encoder.*only the decoder"):
        demo_pipeline("make it blue", reference_images=[ref], **SMALL)


def test_unreadable_reference_image(demo_pipeline, tmp_path):
    bad = tmp_path / "ref.png"
    shutil.copy(DEMO.vae, bad)
    with pytest.raises(ValueError, match="reference image 0: .*cannot be read as an image"):
        demo_pipeline("make it blue", reference_images=[bad], **SMALL)
