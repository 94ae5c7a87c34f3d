"""Issue 4: lossy 16-bit input, --skip-type, the text encoder (MLX 4-bit -> Q4_1), the VAE, the
command line and `bonsai-sd info` on converted files."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from bonsai_sd import lowbit
from bonsai_sd.convert import ConvertError, convert
from bonsai_sd.convert.safetensors import read_header, save_arrays
from bonsai_sd.ggufio import read_gguf

import bonsai_packs as bp

LOWBIT_EXAMPLE = "transformer_blocks.0.attn.to_q.weight"


@pytest.fixture(scope="module")
def ternary() -> bp.KleinWeights:
    return bp.tiny_weights("ternary", seed=21)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.fixture(scope="module")
def klein16(ternary, tmp_path_factory) -> Path:
    """A 16-bit klein whose block linears are ordinary floats (not ternary): the lossy path."""
    root = tmp_path_factory.mktemp("klein16")
    path = bp.write_unpacked(root, ternary)
    refs, _ = read_header(path)
    arrays = {n: (r.dtype, r.read()) for n, r in refs.items()}
    rng = np.random.default_rng(0)
    for name, (dtype, bits) in list(arrays.items()):
        if bp.KleinWeights.is_lowbit(name):
            noisy = rng.standard_normal(bits.shape).astype(np.float32) * 0.05
            arrays[name] = ("BF16", _f32_to_bf16(noisy))
    return save_arrays(path, arrays)


def _gguf_floats(path: Path, name: str) -> np.ndarray:
    contents = read_gguf(path)
    t = contents.tensor(name)
    raw = contents.read(t)
    if t.type_name in ("F16", "BF16", "F32"):
        return {"F16": raw.view("<f2").astype(np.float32), "F32": raw.view("<f4"),
                "BF16": _bf16_to_f32(raw.view("<u2"))}[t.type_name].reshape(t.shape)
    if t.type_name == "Q8_0":
        return gguf_dequantize(raw.reshape(t.shape[0], -1), GGMLQuantizationType.Q8_0)
    return lowbit.dequantize(raw.reshape(t.shape[0], -1), lowbit.lowbit_type(t.type_name))


# ---- lossy post-training quantization ------------------------------------------------------------

def _absmean_reference(x: np.ndarray, weights: str) -> np.ndarray:
    """Per 128-group: d = fp16(mean |x|); binary sign(x) d, ternary clamp(round(x / d), -1, 1) d."""
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        for g in range(x.shape[1] // 128):
            block = x[r, g * 128:(g + 1) * 128].astype(np.float64)
            d = float(np.float16(np.mean(np.abs(block))))
            if weights == "binary":
                q = np.where(block >= 0, 1.0, -1.0)
            else:
                ratio = block / d
                q = np.where(ratio >= 0.5, 1.0, np.where(ratio <= -0.5, -1.0, 0.0))
            out[r, g * 128:(g + 1) * 128] = q * d
    return out


@pytest.mark.parametrize(("quant_type", "weights", "type_name"), [(None, "ternary", "PQ2_0"), ("q1_0", "binary", "Q1_0")])
def test_lossy_16bit_input_is_labelled(klein16, tmp_path, caplog, quant_type, weights, type_name):
    caplog.set_level(logging.INFO, logger="bonsai_sd")
    result = convert(klein16, tmp_path / "lossy.gguf", quant_type=quant_type, verify=True)
    assert not result.lossless and result.verify.ok  # lossy tensors are reported, not failed
    assert any("LOSSY" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    meta = read_gguf(result.output).metadata
    assert meta["bonsai_sd.source.format"] == "lossy" and meta["bonsai_sd.lossless"] is False
    assert meta["bonsai_sd.weights"] == weights and weights in meta["bonsai_sd.lossy"]
    assert "double_blocks.0.img_attn.qkv.weight" in meta["bonsai_sd.lossy_tensors"]
    checks = {c.name: c for c in result.verify.checks}
    assert checks["double_blocks.0.img_attn.qkv.weight"].max_abs_diff > 0
    assert checks["img_in.weight"].max_abs_diff == 0 and checks["img_in.weight"].lossless
    refs, _ = read_header(klein16)
    source = _bf16_to_f32(refs["single_transformer_blocks.0.attn.to_out.weight"].read())
    got = _gguf_floats(result.output, "single_blocks.0.linear2.weight")
    assert read_gguf(result.output).tensor("single_blocks.0.linear2.weight").type_name == type_name
    np.testing.assert_array_equal(got, _absmean_reference(source, weights))


def test_from_lossy_forces_quantization_of_an_exact_master(ternary, tmp_path):
    path = bp.write_unpacked(tmp_path / "repo", ternary)
    result = convert(path, tmp_path / "forced.gguf", from_format="lossy")
    assert not result.lossless
    assert read_gguf(result.output).metadata["bonsai_sd.source.format"] == "lossy"


# ---- --skip-type -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unpacked_with_a_bf16_only_tensor(ternary, tmp_path_factory) -> Path:
    """The unpacked master with one 16-bit tensor holding a value fp16 cannot represent."""
    path = bp.write_unpacked(tmp_path_factory.mktemp("bf16only"), ternary)
    refs, _ = read_header(path)
    arrays = {n: (r.dtype, r.read().copy()) for n, r in refs.items()}
    arrays["context_embedder.weight"][1][0, 0] = _f32_to_bf16(np.array([1.0e-6], np.float32))[0]
    return save_arrays(path, arrays)


def test_16bit_tensors_are_kept_exactly(unpacked_with_a_bf16_only_tensor, tmp_path):
    result = convert(unpacked_with_a_bf16_only_tensor, tmp_path / "out.gguf", verify=True)
    types = {t.name: t.type_name for t in read_gguf(result.output).tensors}
    assert types["txt_in.weight"] == "BF16"  # 1e-6 is below fp16's normal range
    assert types["img_in.weight"] == "F16" and types["single_blocks.0.norm.key_norm.scale"] == "F16"
    assert result.lossless and result.verify.ok


@pytest.mark.parametrize("skip", ["f16", "bf16", "q8_0"])
def test_skip_type(unpacked_with_a_bf16_only_tensor, tmp_path, skip):
    result = convert(unpacked_with_a_bf16_only_tensor, tmp_path / "out.gguf", skip_type=skip, verify=True)
    contents = read_gguf(result.output)
    types = {t.name: t.type_name for t in contents.tensors}
    assert types["double_blocks.0.img_attn.qkv.weight"] == "PQ2_0"
    lossy = set(contents.metadata.get("bonsai_sd.lossy_tensors", []))
    if skip == "q8_0":
        assert types["txt_in.weight"] == "Q8_0" and types["img_in.weight"] == "Q8_0"
        assert types["single_blocks.0.norm.key_norm.scale"] == "F16"  # vectors stay exact
        assert "img_in.weight" in lossy
        q8 = _gguf_floats(result.output, "img_in.weight")
        refs, _ = read_header(unpacked_with_a_bf16_only_tensor)
        source = _bf16_to_f32(refs["x_embedder.weight"].read())
        assert np.abs(q8 - source).max() <= np.abs(source).max() / 127 / 2 * 1.01  # half a Q8_0 step
    else:
        assert types["txt_in.weight"] == skip.upper() and types["img_in.weight"] == skip.upper()
        assert lossy == ({"txt_in.weight"} if skip == "f16" else set())
    assert contents.metadata["bonsai_sd.lossless"] is (not lossy)
    assert result.verify.ok


# ---- text encoder: MLX 4-bit -> Q4_1 -------------------------------------------------------------

def _tiny_qwen(rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, q, kv, inter = 64, 256, 128, 128
    t = {"model.embed_tokens.weight": rng.standard_normal((1000, h)).astype(np.float32)}
    p = "model.layers.0."
    for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                        ("self_attn.o_proj", (h, q)), ("mlp.gate_proj", (inter, h)), ("mlp.up_proj", (inter, h)),
                        ("mlp.down_proj", (h, inter))):
        t[f"{p}{name}.weight"] = rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[1])
    for name, size in (("self_attn.q_norm", 128), ("self_attn.k_norm", 128), ("input_layernorm", h),
                       ("post_attention_layernorm", h)):
        t[f"{p}{name}.weight"] = (1 + 0.1 * rng.standard_normal(size)).astype(np.float32)
    t["model.norm.weight"] = np.ones(h, np.float32)
    return t


def test_text_encoder_mlx_4bit_to_q4_1_exactly(tmp_path):
    path = bp.write_mlx_text_encoder(tmp_path / "repo", _tiny_qwen(np.random.default_rng(3)))
    result = convert(tmp_path / "repo", tmp_path / "te.gguf", component="text-encoder", verify=True)
    assert result.verify.ok and result.lossless
    contents = read_gguf(result.output)
    types = {t.name: t.type_name for t in contents.tensors}
    assert types["model.layers.0.self_attn.q_proj.weight"] == "Q4_1"
    assert types["model.embed_tokens.weight"] == "Q4_1"
    assert types["model.norm.weight"] in ("F16", "BF16")
    assert contents.metadata["bonsai_sd.component"] == "text-encoder"

    # Independent of the converter: MLX's own dequantization from the stored words (nibble j of
    # the row at bits 4 (j % 8) of word j / 8), against gguf-py's Q4_1 decoder.
    refs, _ = read_header(path)
    for module in ("model.layers.0.mlp.down_proj", "model.embed_tokens"):
        words = refs[f"{module}.weight"].read()
        scales = _bf16_to_f32(refs[f"{module}.scales"].read())
        biases = _bf16_to_f32(refs[f"{module}.biases"].read())
        shifts = np.arange(8, dtype=np.uint32) * 4
        q = ((words[:, :, None] >> shifts) & 0xF).reshape(words.shape[0], -1).astype(np.float32)
        group = q.shape[1] // scales.shape[1]
        expected = (q.reshape(q.shape[0], -1, group) * scales[:, :, None] + biases[:, :, None]).reshape(q.shape)
        entry = contents.tensor(f"{module}.weight")
        got = gguf_dequantize(contents.read(entry).reshape(entry.shape[0], -1), GGMLQuantizationType.Q4_1)
        np.testing.assert_array_equal(got, expected)


def test_text_encoder_file_is_detected_and_hqq_refused(tmp_path):
    path = bp.write_mlx_text_encoder(tmp_path / "repo", _tiny_qwen(np.random.default_rng(4)))
    assert convert(path, tmp_path / "te.gguf").component == "text-encoder"
    hqq = tmp_path / "gemlite-repo" / "text_encoder-hqq-4bit" / "qmodel.pt"
    hqq.parent.mkdir(parents=True)
    hqq.write_bytes(b"PK")
    with pytest.raises(ConvertError, match="HQQ 4-bit .* is not supported"):
        convert(tmp_path / "gemlite-repo", tmp_path / "x.gguf", component="text-encoder")


def test_text_encoder_scale_must_be_fp16_exact(tmp_path):
    path = bp.write_mlx_text_encoder(tmp_path / "repo", _tiny_qwen(np.random.default_rng(5)))
    refs, _ = read_header(path)
    arrays = {n: (r.dtype, r.read().copy()) for n, r in refs.items()}
    arrays["model.layers.0.mlp.up_proj.biases"][1][2, 0] = _f32_to_bf16(np.array([3.0e-7], np.float32))[0]
    save_arrays(path, arrays)
    with pytest.raises(ConvertError, match="'model.layers.0.mlp.up_proj.biases': bias .* at \\(2, 0\\) is outside fp16"):
        convert(path, tmp_path / "te.gguf")
    assert not (tmp_path / "te.gguf").exists()


def test_text_encoder_pass_through_and_16bit_shards(tmp_path):
    from bonsai_sd.ggufio import write_gguf

    gguf_te = write_gguf(tmp_path / "qwen.gguf", {"token_embd.weight": (1, np.ones((8, 64), np.float16), (8, 64)),
                                                  "blk.0.attn_norm.weight": (0, np.ones(64, np.float32), (64,))})
    result = convert(gguf_te, tmp_path / "copy.gguf")
    assert result.passed_through and (tmp_path / "copy.gguf").read_bytes() == gguf_te.read_bytes()

    # An unpacked repository's text_encoder/: 16-bit shards and their index.
    tensors = _tiny_qwen(np.random.default_rng(7))
    names = list(tensors)
    te_dir = tmp_path / "repo" / "text_encoder"
    te_dir.mkdir(parents=True)
    shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
    for shard, members in shards.items():
        save_arrays(te_dir / shard, {n: ("BF16", _f32_to_bf16(tensors[n])) for n in members})
    index = {"weight_map": {n: shard for shard, members in shards.items() for n in members}}
    (te_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    result = convert(tmp_path / "repo", tmp_path / "te.gguf", component="text-encoder", verify=True)
    contents = read_gguf(result.output)
    assert sorted(t.name for t in contents.tensors) == sorted(names)
    assert result.lossless and result.verify.ok
    assert len(contents.metadata["bonsai_sd.source.files"]) == 3  # the index and both shards
    got = _gguf_floats(result.output, "model.layers.0.mlp.up_proj.weight")
    assert np.array_equal(got, _bf16_to_f32(_f32_to_bf16(tensors["model.layers.0.mlp.up_proj.weight"])))


def test_progress_reports_every_byte(ternary, tmp_path):
    bars = []

    class Bar:
        def __init__(self, description, total, unit):
            self.description, self.total, self.unit, self.done = description, total, unit, 0
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            pass

    bp.write_mlx(tmp_path / "repo", ternary)
    result = convert(tmp_path / "repo", tmp_path / "out.gguf", progress=Bar, verify=True)
    by_name = {b.description.split()[0]: b for b in bars}
    assert by_name["writing"].total == by_name["writing"].done == result.n_bytes
    assert by_name["verifying"].done == result.n_bytes
    assert by_name["hashing"].done == by_name["hashing"].total > 0


# ---- VAE ---------------------------------------------------------------------------------------

def _tiny_vae(path: Path) -> Path:
    rng = np.random.default_rng(6)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_arrays(path, {
        "decoder.conv_in.weight": ("F32", rng.standard_normal((64, 32, 3, 3)).astype(np.float32)),
        "decoder.conv_in.bias": ("F32", np.zeros(64, np.float32)),
        "bn.running_mean": ("F32", rng.standard_normal(128).astype(np.float32)),
        "bn.num_batches_tracked": ("I64", np.array(7, np.int64)),
    })


def test_vae_to_gguf_and_pass_through(tmp_path):
    vae = _tiny_vae(tmp_path / "repo" / "vae" / "diffusion_pytorch_model.safetensors")
    result = convert(tmp_path / "repo", tmp_path / "vae.gguf", component="vae", verify=True)
    contents = read_gguf(result.output)
    assert [t.name for t in contents.tensors] == ["decoder.conv_in.weight", "decoder.conv_in.bias", "bn.running_mean"]
    assert contents.tensor("decoder.conv_in.weight").shape == (64, 32, 3, 3)
    assert contents.tensor("decoder.conv_in.weight").type_name == "F32"  # random floats: only F32 is exact
    assert contents.tensor("decoder.conv_in.bias").type_name == "F16"
    assert result.verify.ok
    copied = convert(vae, tmp_path / "vae.safetensors")
    assert copied.passed_through and copied.component == "vae"
    assert (tmp_path / "vae.safetensors").read_bytes() == vae.read_bytes()


# ---- command line ------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsai_sd", *args], capture_output=True, text=True, timeout=300)


def test_cli_convert_and_info(ternary, tmp_path):
    root = tmp_path / "repo"
    bp.write_mlx(root, ternary)
    out = tmp_path / "bonsai.gguf"
    proc = _cli("convert", str(root), "-o", str(out), "--type", "ptq1_0", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert f"{out}: transformer, PTQ1_0, 25 tensors" in proc.stdout and "lossless" in proc.stdout
    assert "verify: 25 tensors, max abs diff 0.0" in proc.stdout
    assert "MLX 2-bit ternary pack" in proc.stderr
    info = _cli("info", str(out))
    assert info.returncode == 0, info.stderr
    qkv = next(line.split() for line in info.stdout.splitlines() if "double_blocks.0.img_attn.qkv.weight" in line)
    assert qkv[1:] == ["PTQ1_0", "768", "x", "256", f"{768 * 2 * 28:,}", "1.7500"]
    assert "bonsai_sd.source.format = 'mlx'" in info.stdout
    assert "bonsai_sd.types = ['143:ptq1_0:128:28:1']" in info.stdout


def test_cli_refusal_is_an_error_message(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _cli("convert", str(tmp_path / "empty"), "-o", str(tmp_path / "x.gguf"), "-q")
    assert proc.returncode == 1
    assert "bonsai-sd convert:" in proc.stderr and "unknown format" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.gguf").exists()
