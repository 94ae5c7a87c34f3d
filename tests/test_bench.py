"""Issue 8: the full-size model generator (on its tiny shapes), `bonsai-sd bench`, and the GPU script's flow."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import make_full_size_model as mfm
import numpy as np
import pytest

from bonsai_sd import _core, lowbit
from bonsai_sd.bench import REFERENCES, markdown, step_durations, summarize
from bonsai_sd.ggufio import read_gguf

TERNARY = ("pq2_0", "ptq1_0", "q2_0")
LOWBIT = {"pq2_0": lowbit.PQ2_0, "ptq1_0": lowbit.PTQ1_0, "q2_0": lowbit.Q2_0, "q1_0": lowbit.Q1_0}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-set")
    mfm.make_model_set(out, scale=mfm.TINY, jobs=2)
    return out


def tensor_values(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a generated GGUF decoded to float32: the low-bit types by the NumPy
    reference codecs, F16/F32 by NumPy, Q8_0/Q4_K by ggml's own dequantizer."""
    contents = read_gguf(path)
    out = {}
    for t in contents.tensors:
        raw = contents.read(t)
        name = t.type_name.lower()
        if name in LOWBIT:
            values = lowbit.dequantize(raw, LOWBIT[name])
        elif name in ("f16", "f32"):
            values = raw.view("<f2" if name == "f16" else "<f4").astype(np.float32)
        else:
            rows = int(np.prod(t.shape[:-1]))
            values = _core.ggml.dequantize({"q8_0": "q8_0", "q4_k": "q4_K"}[name], raw.tobytes(), rows, t.shape[-1])
        out[t.name] = values.reshape(t.shape)
    return out


def test_the_set_has_every_file_with_klein_names_and_the_pipeline_accepts_it(tiny_set):
    import bonsai_sd
    from bonsai_sd.modelfiles import check_model_files

    known = {row["id"]: row["name"] for row in _core.type_table()}
    for t in mfm.TRANSFORMER_TYPES:
        files = check_model_files(tiny_set / f"transformer-{t}.gguf", tiny_set / "text-encoder-q4_k.gguf",
                                  tiny_set / "vae.safetensors", known)
        assert not files.vae_has_encoder
        kinds = {p.name: p.kind for p in mfm.transformer_tensors(mfm.TINY.dit)}
        contents = read_gguf(files.transformer)
        assert [x.name for x in contents.tensors] == list(kinds)
        for x in contents.tensors:  # the block linears, and only those, in the file's type
            assert x.type_name.lower() == (t if kinds[x.name] == "lowbit" else "f16"), (t, x.name)
    assert not list(tiny_set.glob(".*"))  # no partial files left
    assert bonsai_sd.Pipeline  # the package import works beside the tool


def test_the_ternary_files_hold_one_model_exactly_and_the_others_approximate_it(tiny_set):
    f16 = tensor_values(tiny_set / "transformer-f16.gguf")
    for t in TERNARY:
        got = tensor_values(tiny_set / f"transformer-{t}.gguf")
        for name, want in f16.items():
            assert np.array_equal(got[name], want), (t, name)
    block_linears = [p.name for p in mfm.transformer_tensors(mfm.TINY.dit) if p.kind == "lowbit"]
    for name in block_linears:  # ternary: each 128-group is {-s, 0, +s}
        groups = np.abs(f16[name].reshape(f16[name].shape[0], -1, 128))
        assert ((groups == 0) | (groups == groups.max(axis=2, keepdims=True))).all()
        assert np.mean(groups == 0) == pytest.approx(1 / 3, abs=0.05)
    # Q8_0 stores d = max|x| / 127 in fp16: a value s comes back within 2^-11 of it, relatively.
    # Q4_K has 16 levels between a sub-block's min and max (2 s apart): the zero between them is
    # off by up to a step (2 s / 15), plus 6-bit scale rounding; a fifth of max |w| bounds both.
    for t, relative in (("q8_0", 2.0**-10), ("q4_k", 0.2)):
        got = tensor_values(tiny_set / f"transformer-{t}.gguf")
        for name in block_linears:
            scale = np.abs(f16[name]).max()
            assert np.abs(got[name] - f16[name]).max() <= relative * scale, (t, name)
        for name in set(f16) - set(block_linears):
            assert np.array_equal(got[name], f16[name])


def test_binary_file_holds_plus_minus_scale_and_the_same_16_bit_tensors(tiny_set):
    f16 = tensor_values(tiny_set / "transformer-f16.gguf")
    q1 = tensor_values(tiny_set / "transformer-q1_0.gguf")
    for p in mfm.transformer_tensors(mfm.TINY.dit):
        if p.kind == "lowbit":
            groups = q1[p.name].reshape(p.shape[0], -1, 128)
            assert (np.abs(groups) == np.abs(groups[:, :, :1])).all() and (groups != 0).all()
            assert np.mean(groups > 0) == pytest.approx(0.5, abs=0.05)
        else:
            assert np.array_equal(q1[p.name], f16[p.name])


def test_files_do_not_depend_on_the_number_of_workers(tiny_set, tmp_path):
    mfm.make_model_set(tmp_path, ["ptq1_0", "q4_k"], scale=mfm.TINY, jobs=1, vae=False)
    for name in ("transformer-ptq1_0.gguf", "transformer-q4_k.gguf", "text-encoder-q4_k.gguf"):
        digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (tiny_set, tmp_path)]
        assert digest[0] == digest[1], name


def test_random_q4_k_blocks_decode_in_ggml_to_the_chosen_values():
    plan = mfm.TensorPlan("model.layers.0.mlp.up_proj.weight", (4, 512), "q4_k")
    blocks = mfm.random_q4_k(3, plan, 0, 4)
    assert blocks.shape == (8, 144)
    got = _core.ggml.dequantize("q4_K", blocks.tobytes(), 4, 512).reshape(8, 8, 32)
    # Rebuild the values from the same random stream: sc, m, then the code bytes.
    rng = mfm._rng(3, plan.name, 0, "q4_k")
    sc = rng.integers(4, 9, (8, 8), dtype=np.uint8)
    m = np.rint(7.5 * sc)
    qs = np.frombuffer(rng.bytes(8 * 128), np.uint8).reshape(8, 4, 32)
    codes = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(8, 8, 32).astype(np.float32)  # sub-blocks 2j, 2j+1
    d = np.float32(np.float16(1.0 / (27.6 * np.sqrt(512))))
    want = d * sc[:, :, None] * codes - d * m[:, :, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    assert abs(got.mean()) < 0.1 * got.std()  # about zero-mean, as the docstring says


def test_q4_k_scale_packing_round_trips_all_six_bit_values():
    rng = np.random.default_rng(0)
    sc = rng.integers(0, 64, (64, 8), dtype=np.uint8)
    m = rng.integers(0, 64, (64, 8), dtype=np.uint8)
    packed = mfm.pack_q4_k_scales(sc, m)
    # ggml's get_scale_min_k4, restated: sub-blocks 0..3 low 6 bits; 4..7 nibble + top bits.
    got_sc = np.concatenate([packed[:, 0:4] & 63, (packed[:, 8:12] & 0xF) | ((packed[:, 0:4] >> 6) << 4)], axis=1)
    got_m = np.concatenate([packed[:, 4:8] & 63, (packed[:, 8:12] >> 4) | ((packed[:, 4:8] >> 6) << 4)], axis=1)
    assert np.array_equal(got_sc, sc) and np.array_equal(got_m, m)
    with pytest.raises(ValueError, match="6-bit"):
        mfm.pack_q4_k_scales(sc + 64, m)


def test_full_size_plan_matches_klein_4b_and_qwen3_4b():
    dit = mfm.transformer_tensors(mfm.FULL.dit)
    # Bonsai's 100 block linears are 80 BFL tensors (q, k and v fused in the double blocks).
    assert len([p for p in dit if p.kind == "lowbit"]) == 5 * 8 + 20 * 2
    assert len([p for p in dit if p.kind == "dense"]) == 9
    shapes = {p.name: p.shape for p in dit}
    assert shapes["single_blocks.19.linear1.weight"] == (3 * 3072 + 2 * 9216, 3072)
    assert shapes["double_blocks.4.img_mlp.0.weight"] == (18432, 3072)
    assert shapes["txt_in.weight"] == (3072, 7680)
    params = sum(int(np.prod(p.shape)) for p in dit)
    assert params == pytest.approx(3.875e9, rel=0.01)  # klein 4B's 7.75 GB in 16 bits
    f16_bytes = sum(int(np.prod(p.shape)) * 2 for p in dit)
    assert f16_bytes == pytest.approx(7.75e9, rel=0.01)
    llm = mfm.text_encoder_tensors(mfm.FULL.llm)
    shapes = {p.name: p.shape for p in llm}
    assert shapes["model.layers.35.self_attn.q_proj.weight"] == (4096, 2560)
    assert shapes["model.layers.35.self_attn.k_proj.weight"] == (1024, 2560)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (2560, 9728)
    assert shapes["model.embed_tokens.weight"] == (151_936, 2560)
    assert sum(int(np.prod(p.shape)) for p in llm) == pytest.approx(4.02e9, rel=0.01)


def test_unknown_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown transformer type"):
        mfm.make_model_set(tmp_path, ["q3_x"], scale=mfm.TINY)
    assert not list(tmp_path.iterdir())


# ---- bench: pure parts ---------------------------------------------------------------------------

def test_step_durations_from_running_means():
    # sd.cpp reports step k with the mean seconds per step over steps 1..k.
    assert step_durations([(1, 2.0), (2, 1.5), (3, 4.0 / 3.0)]) == pytest.approx([2.0, 1.0, 1.0])
    assert step_durations([(1, 2.0), (1, 2.0), (3, 1.0)]) == pytest.approx([2.0, 0.5, 0.5])  # a repeat, a gap
    assert step_durations([]) == []


def test_summary_leaves_warm_up_images_out():
    images = [{"warmup": True, "wall_s": 10.0, "step_s": [5.0], "te_s": 3.0, "sampling_s": 5.0, "vae_s": 2.0},
              {"warmup": False, "wall_s": 4.0, "step_s": [1.0, 2.0], "te_s": 1.0, "sampling_s": 3.0, "vae_s": None},
              {"warmup": False, "wall_s": 6.0, "step_s": [3.0], "te_s": 2.0, "sampling_s": 3.0, "vae_s": 1.0}]
    s = summarize(images)
    assert s == {"s_per_image": 5.0, "s_per_step": 2.0, "te_s": 1.5, "sampling_s": 3.0, "vae_s": 1.0}


def _report(cases, gpu="NVIDIA H100 80GB HBM3"):
    return {"machine": {"gpu": gpu}, "cases": cases}


def test_markdown_ratios_against_f16_and_the_references():
    size = lambda s, gpu: {"size": 1024, "s_per_image": s, "peak_gpu_bytes": gpu, "peak_rss_bytes": 2e9}  # noqa: E731
    bench = _report([
        {"type": "pq2_0", "mode": "default", "file_bytes": {"transformer": 1.368e9}, "load_s": 1.0,
         "sizes": [size(1.5, 4e9)]},
        {"type": "f16", "mode": "default", "file_bytes": {"transformer": 7.75e9}, "load_s": 2.0,
         "sizes": [size(2.0, 10e9)]},
        {"type": "q4_k", "mode": "default", "error": "the case exited with status -6: boom", "sizes": []},
        {"type": "q8_0", "mode": "default", "skipped": "time budget of 10 s spent"},
    ])
    diffusers = _report([{"type": "bf16", "mode": "diffusers", "sizes": [size(0.5, 20e9)]}])
    text = markdown([bench, diffusers])
    pq2 = next(line for line in text.splitlines() if line.startswith("| pq2_0 | default"))
    cells = [c.strip() for c in pq2.split("|")[1:-1]]
    assert cells[4:6] == ["1.50", "0.75"] and cells[10:12] == ["4.00", "0.40"]
    assert "| bf16 | diffusers |" in text and "- q4_k (default) failed: the case exited with status -6" in text
    assert "- q8_0 (default) skipped: time budget" in text
    upstream = next(r for r in REFERENCES if r["size"] == 1024 and "F16" in r["what"])
    assert f"= x{1.5 / upstream['s_per_image']:.2f} the time of upstream sd.cpp" in text
    assert "= x3.00 the time of diffusers BF16 (this machine) 0.50 s, peak memory x0.20" in text
    # On a CPU run, no GPU references apply.
    assert "upstream" not in markdown([_report(bench["cases"], gpu=None)])


# ---- bench: end to end on the tiny set -------------------------------------------------------------

def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsai_sd", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.slow
def test_bench_runs_each_type_in_its_own_process_and_writes_json(tiny_set, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", str(tiny_set), "--device", "cpu", "-t", "1", "--sizes", "64", "--steps", "2",
                   "--warmup", "0", "--images", "1", "--types", "pq2_0,f16", "--modes", "default,lean", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert [(c["type"], c["mode"]) for c in report["cases"]] == [("pq2_0", "default"), ("f16", "default"),
                                                                 ("pq2_0", "lean"), ("f16", "lean")]
    assert report["settings"]["steps"] == 2 and report["settings"]["device_name"].startswith("CPU")
    for case in report["cases"]:
        assert case["load_s"] > 0 and case["file_bytes"]["transformer"] > 0
        (s,) = case["sizes"]
        assert s["size"] == 64 and s["peak_rss_bytes"] > 50e6
        (image,) = s["images"]
        assert len(image["step_s"]) == 2 and all(x > 0 for x in image["step_s"])
        for key in ("te_s", "sampling_s", "vae_s", "engine_s"):
            assert image[key] is not None and image[key] >= 0, key
        assert image["wall_s"] >= image["te_s"] + image["sampling_s"]
    lean = report["cases"][2]
    assert lean["options"] == {"flash_attention": True} and lean["vae_tiling"]  # on a CPU: no offload
    assert "| pq2_0 | default |" in proc.stdout and f"written: {out}" in proc.stdout
    rendered = run_cli("bench", "--report", str(out))
    assert rendered.returncode == 0 and "#### 64x64" in rendered.stdout


def test_bench_refuses_missing_files_and_bad_arguments(tmp_path):
    proc = run_cli("bench", str(tmp_path), "--types", "pq2_0", "--device", "cpu")
    assert proc.returncode == 2 and "transformer-pq2_0.gguf" in proc.stderr and "make_full_size_model" in proc.stderr
    proc = run_cli("bench", str(tmp_path), "--types", "q9_0")
    assert proc.returncode == 2 and "invalid arguments ['q9_0']" in proc.stderr
    proc = run_cli("bench", str(tmp_path), "--sizes", "100")
    assert proc.returncode == 2
    assert not list(tmp_path.iterdir())


def test_a_crashing_case_is_reported_and_the_run_goes_on(tiny_set, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_set, broken)
    f16 = broken / "transformer-f16.gguf"
    f16.write_bytes(f16.read_bytes()[: f16.stat().st_size // 2])  # truncated: the engine refuses it
    out = tmp_path / "bench.json"
    proc = run_cli("bench", str(broken), "--device", "cpu", "-t", "1", "--sizes", "64", "--steps", "1", "--warmup",
                   "0", "--images", "1", "--types", "f16", "-o", str(out))
    report = json.loads(out.read_text())
    (case,) = report["cases"]
    assert proc.returncode == 1 and case["type"] == "f16" and "error" in case
    assert "failed" in proc.stdout


def test_cases_past_the_time_budget_are_skipped(tiny_set, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", str(tiny_set), "--device", "cpu", "--types", "pq2_0,f16", "--time-budget", "0",
                   "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    cases = json.loads(out.read_text())["cases"]
    assert [(c["type"], c["skipped"]) for c in cases] == [("pq2_0", "time budget of 0 s spent"),
                                                          ("f16", "time budget of 0 s spent")]


def test_max_vram_is_checked_before_loading(demo_pipeline):
    import bonsai_sd

    files = demo_pipeline.files
    args = (files.transformer,)
    kwargs = {"text_encoder": files.text_encoder, "vae": files.vae}
    with pytest.raises(ValueError, match="max_vram needs offload_to_cpu"):
        bonsai_sd.Pipeline(*args, **kwargs, max_vram=2.0)
    for bad in (0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ValueError, match="max_vram must be a positive number"):
            bonsai_sd.Pipeline(*args, **kwargs, offload_to_cpu=True, max_vram=bad)
    with pytest.raises(ValueError, match="max_vram must be >= 0"):
        _core.Context(diffusion_model=str(files.transformer), max_vram=-1.0)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_bench_script_runs_its_whole_flow_on_tiny_models(repo_root, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "BONSAI_SD_COMMIT": "test"}
    proc = subprocess.run(["bash", str(repo_root / "tools" / "gpu-bench.sh"), "--tiny", "--models",
                           str(tmp_path / "models")], capture_output=True, text=True, timeout=1200, env=env,
                          cwd=repo_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert {"bench.json", "lean.json", "report.md", "gpu-bench.log", "bench.log"} <= set(names) and len(names) <= 8
    bench = json.loads((out / "bench.json").read_text())
    assert [c["type"] for c in bench["cases"]] == ["pq2_0", "f16"] and bench["commit"] == "test"
    assert all("error" not in c for c in bench["cases"])
    lean = json.loads((out / "lean.json").read_text())
    assert lean["cases"][0]["mode"] == "lean"
    assert "| pq2_0 | lean |" in (out / "report.md").read_text()


def test_diffusers_baseline_maps_the_f16_file_onto_every_diffusers_tensor(tiny_set):
    """What tools/bench_diffusers.py hands to load_state_dict(strict=True) (torch itself is only on
    the GPU machine): exactly Flux2Transformer2DModel's tensors, with their shapes."""
    import bench_diffusers
    import tiny_klein

    bfl = bench_diffusers.gguf_arrays(tiny_set / "transformer-f16.gguf")
    state = tiny_klein.bfl_to_diffusers(bfl)
    assert {n: a.shape for n, a in state.items()} == mfm.klein.diffusers_inventory(mfm.TINY.dit)
    assert bench_diffusers.transformer_config(mfm.TINY.dit)["num_attention_heads"] == 2
    config = bench_diffusers.text_encoder_config(tiny_set / "text-encoder-q4_k.gguf")
    assert config == {"vocab_size": 151_936, "hidden_size": 256, "num_hidden_layers": 28, "intermediate_size": 512,
                      "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-6,
                      "rope_theta": 1_000_000.0, "tie_word_embeddings": True, "max_position_embeddings": 40960}
