"""Issue 4: every input the converter must refuse, with the tensor and the reason named, and no
output file left behind (including when the fault is found halfway through writing)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bonsai_sd.convert import ConvertError, convert
from bonsai_sd.convert.safetensors import read_header, save_arrays

import bonsai_packs as bp

# The last low-bit module in file order: a fault here is met after most tensors are written.
LAST_LOWBIT = "single_transformer_blocks.0.attn.to_out"
FIRST_LOWBIT = "transformer_blocks.0.attn.to_q"


@pytest.fixture(scope="module")
def ternary() -> bp.KleinWeights:
    return bp.tiny_weights("ternary", seed=5)


@pytest.fixture(scope="module")
def binary() -> bp.KleinWeights:
    return bp.tiny_weights("binary", seed=6)


def _arrays(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    refs, _ = read_header(path)
    return {name: (ref.dtype, ref.read().copy()) for name, ref in refs.items()}


def _edited(src: Path, dst: Path, edit: Callable[[dict[str, tuple[str, np.ndarray]]], None]) -> Path:
    arrays = _arrays(src)
    edit(arrays)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_arrays(dst, arrays)


def _refused(src: Path, out_dir: Path, match: str, **kwargs) -> None:
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(ConvertError, match=match):
        convert(src, out_dir / "out.gguf", **kwargs)
    assert list(out_dir.iterdir()) == [], "a partial output was left behind"


def _bf16(value: float) -> np.uint16:
    return np.array([value], np.float32).view(np.uint32)[0] >> 16


@pytest.fixture(scope="module")
def mlx_ternary(ternary, tmp_path_factory) -> Path:
    return bp.write_mlx(tmp_path_factory.mktemp("mlx-t"), ternary)


@pytest.fixture(scope="module")
def mlx_binary(binary, tmp_path_factory) -> Path:
    return bp.write_mlx(tmp_path_factory.mktemp("mlx-b"), binary)


# ---- MLX value checks ----------------------------------------------------------------------------

def test_ternary_code_3(mlx_ternary, tmp_path):
    def put_code_3(a):
        words = a[f"{LAST_LOWBIT}.weight"][1]
        words[7, 2] |= np.uint32(3 << 10)  # row 7, element 16 * 2 + 5 = 37

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", put_code_3)
    _refused(bad, tmp_path / "out", rf"tensor '{LAST_LOWBIT}.weight': row 7, element 37 has code 3, which is not ternary")


def test_ternary_bias_not_minus_scale(mlx_ternary, tmp_path):
    def nudge_bias(a):
        a[f"{FIRST_LOWBIT}.biases"][1][3, 1] += 1  # one bf16 ulp

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", nudge_bias)
    _refused(bad, tmp_path / "out", rf"tensor '{FIRST_LOWBIT}.biases': row 3, group 1: bias .* != -scale")


def test_binary_scale_not_minus_twice_bias(mlx_binary, tmp_path):
    def nudge_scale(a):
        a[f"{LAST_LOWBIT}.scales"][1][0, 2] += 1

    bad = _edited(mlx_binary, tmp_path / "in" / "model.safetensors", nudge_scale)
    _refused(bad, tmp_path / "out", rf"tensor '{LAST_LOWBIT}.biases': row 0, group 2: scale .* != -2 \* bias")


@pytest.mark.parametrize("scale", [2.0 ** 17, 2.0 ** -30, float("inf")])
def test_scale_outside_fp16_range(mlx_ternary, tmp_path, scale):
    def set_scale(a):
        a[f"{FIRST_LOWBIT}.scales"][1][1, 0] = _bf16(scale)
        a[f"{FIRST_LOWBIT}.biases"][1][1, 0] = _bf16(-scale)

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", set_scale)
    _refused(bad, tmp_path / "out", rf"tensor '{FIRST_LOWBIT}.scales': scale .* at \(1, 0\) is outside fp16 range")


def test_binary_scale_outside_fp16_range(mlx_binary, tmp_path):
    def set_scale(a):
        a[f"{FIRST_LOWBIT}.scales"][1][0, 0] = _bf16(2.0 ** -28)
        a[f"{FIRST_LOWBIT}.biases"][1][0, 0] = _bf16(-(2.0 ** -29))

    bad = _edited(mlx_binary, tmp_path / "in" / "model.safetensors", set_scale)
    _refused(bad, tmp_path / "out", rf"tensor '{FIRST_LOWBIT}.biases': scale \(-bias\) .* is outside fp16 range")


# ---- inventory ------------------------------------------------------------------------------------

def test_missing_tensor(mlx_ternary, tmp_path):
    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors",
                  lambda a: a.pop("single_transformer_blocks.0.attn.norm_k.weight"))
    _refused(bad, tmp_path / "out", "tensor 'single_transformer_blocks.0.attn.norm_k.weight' is missing")


def test_missing_part_of_a_quantized_module(mlx_ternary, tmp_path):
    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", lambda a: a.pop(f"{FIRST_LOWBIT}.biases"))
    _refused(bad, tmp_path / "out", rf"tensor '{FIRST_LOWBIT}.biases' is missing \(quantized module '{FIRST_LOWBIT}'\)")


def test_unexpected_tensor(mlx_ternary, tmp_path):
    def add(a):
        a["time_guidance_embed.guidance_embedder.linear_1.weight"] = ("BF16", np.zeros((256, 256), np.uint16))

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", add)
    _refused(bad, tmp_path / "out", "unexpected tensor 'time_guidance_embed.guidance_embedder.linear_1.weight'")


def test_unexpected_quantized_tensor(mlx_ternary, tmp_path):
    def quantize_proj_out(a):
        a.pop("proj_out.weight")
        a["proj_out.weight"] = ("U32", np.zeros((128, 16), np.uint32))
        a["proj_out.scales"] = ("BF16", np.zeros((128, 2), np.uint16))
        a["proj_out.biases"] = ("BF16", np.zeros((128, 2), np.uint16))

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", quantize_proj_out)
    _refused(bad, tmp_path / "out", "unexpected quantized tensor 'proj_out.weight'")


def test_wrong_shape(mlx_ternary, tmp_path):
    def reshape(a):
        dtype, x = a["double_stream_modulation_txt.linear.weight"]
        a["double_stream_modulation_txt.linear.weight"] = (dtype, x[:-256])

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", reshape)
    _refused(bad, tmp_path / "out", r"tensor 'double_stream_modulation_txt.linear.weight' has shape \[1280, 256\], "
                                    r"expected \[1536, 256\]")


def test_wrong_shape_of_a_quantized_module(mlx_ternary, tmp_path):
    def reshape(a):
        for role in ("weight", "scales", "biases"):
            dtype, x = a[f"{FIRST_LOWBIT}.{role}"]
            a[f"{FIRST_LOWBIT}.{role}"] = (dtype, x[:128])

    bad = _edited(mlx_ternary, tmp_path / "in" / "model.safetensors", reshape)
    _refused(bad, tmp_path / "out", rf"tensor '{FIRST_LOWBIT}.weight' has shape \[128, 256\], expected \[256, 256\]")


# ---- damaged and unknown files ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["mlx", "unpacked", "gemlite", "bfl"])
def test_truncated_file(ternary, tmp_path, fmt):
    path = bp.write_packs(tmp_path / "packs", ternary, [fmt])[fmt]
    path.write_bytes(path.read_bytes()[:-1000])
    _refused(path, tmp_path / "out", r"\(truncated file\?\)$")


def test_unknown_formats(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    _refused(junk, tmp_path / "out", "not a safetensors file")
    empty = tmp_path / "repo"
    empty.mkdir()
    _refused(empty, tmp_path / "out", "unknown format: no transformer checkpoint found")
    legacy = tmp_path / "legacy" / "state_dict.pt"
    legacy.parent.mkdir()
    legacy.write_bytes(pickle.dumps({"a": 1}))
    _refused(legacy, tmp_path / "out", "not a torch zip archive")
    other = tmp_path / "other.safetensors"
    save_arrays(other, {"foo.weight": ("F16", np.zeros((4, 4), np.float16))})
    _refused(other, tmp_path / "out", "unknown format: neither diffusers nor BFL")
    _refused(tmp_path / "missing.safetensors", tmp_path / "out", "no such file or directory")
    from bonsai_sd.ggufio import write_gguf

    dit = write_gguf(tmp_path / "dit.gguf", {"img_in.weight": (1, np.zeros((4, 128), np.float16), (4, 128))})
    _refused(dit, tmp_path / "out", "already a GGUF; nothing to convert")


def test_unpacked_master_that_is_not_exact(ternary, tmp_path):
    path = bp.write_unpacked(tmp_path / "repo", ternary)

    def perturb(a):
        row = a[f"{LAST_LOWBIT}.weight"][1][5]  # bf16 bits
        magnitude = (row[128:256] & 0x7FFF).max()
        row[130] = magnitude - (1 << 7)  # half the group's magnitude: a third value in the group

    bad = _edited(path, tmp_path / "bad" / "diffusion_pytorch_model.safetensors", perturb)
    # The first low-bit tensor is exact, so this is a ternary master: the bad group is refused.
    _refused(bad, tmp_path / "out", rf"tensor '{LAST_LOWBIT}.weight': row 5, element 130 is .* not exactly ternary")
    # --from unpacked on a model whose first low-bit tensor is not exact:
    def perturb_first(a):
        a[f"{FIRST_LOWBIT}.weight"][1][0, 0] += 1

    bad2 = _edited(path, tmp_path / "bad2" / "diffusion_pytorch_model.safetensors", perturb_first)
    _refused(bad2, tmp_path / "out", "is not exactly ternary or binary per 128-group; convert it with --from lossy",
             from_format="unpacked")


# ---- Gemlite -------------------------------------------------------------------------------------

def _gemlite_with(ternary: bp.KleinWeights, root: Path, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    tensors = bp.gemlite_tensors(ternary)
    edit(tensors)
    path = root / "transformer-gemlite-int2" / "state_dict.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(bp.torch_zip_bytes(tensors))
    return path


def test_gemlite_zeros_not_minus_scale(ternary, tmp_path):
    def nudge(t):
        t[f"{FIRST_LOWBIT}.zeros"][1, 4] *= 1.5  # [in / 128, out]: group 1, output row 4

    bad = _gemlite_with(ternary, tmp_path / "repo", nudge)
    _refused(bad, tmp_path / "out", rf"tensor '{FIRST_LOWBIT}.zeros': row 4, group 1: bias .* != -scale")


def test_gemlite_code_3(ternary, tmp_path):
    def put_code_3(t):
        t[f"{LAST_LOWBIT}.W_q"][10, 3] = 0b11000000  # byte 10 of output row 3: element 43

    bad = _gemlite_with(ternary, tmp_path / "repo", put_code_3)
    _refused(bad, tmp_path / "out", rf"tensor '{LAST_LOWBIT}.W_q': row 3, element 43 has code 3")


def test_gemlite_wrong_group_size(ternary, tmp_path):
    def group_64(t):
        t[f"{FIRST_LOWBIT}.metadata"][2] = 64

    bad = _gemlite_with(ternary, tmp_path / "repo", group_64)
    _refused(bad, tmp_path / "out", f"module '{FIRST_LOWBIT}' is W_nbits=2, group_size=64")


def test_hostile_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "repo" / "transformer-gemlite-int2" / "state_dict.pt"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("state_dict/data.pkl", pickle.dumps({"x": Exploit()}, protocol=2))
    _refused(path, tmp_path / "out", r"the pickle refers to (builtins|io)\.open, which this reader does not load")
    assert not marker.exists()
