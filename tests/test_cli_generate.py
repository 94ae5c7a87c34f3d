"""Issue 5: `bonsai-sd generate` (on the packaged demo model, offline) and `bonsai-sd info`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import SMALL
from PIL import Image


def bonsai_sd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bonsai_sd", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def test_generate_demo_writes_a_png_with_its_parameters(tmp_path, demo_pipeline):
    out = tmp_path / "cat.png"
    proc = bonsai_sd("generate", "--demo", "a cat", "--size", "64x64", "--steps", "1", "--seed", "7",
                     "-t", "1", "--flash-attention", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"{out} (64x64, seed 7" in proc.stdout
    assert "sampling" in proc.stderr  # the progress bar
    saved = Image.open(out)
    params = json.loads(saved.text["bonsai_sd"])
    assert (params["prompt"], params["seed"], params["steps"]) == ("a cat", 7, 1)
    # The same pixels as the API with the same settings.
    expected = np.asarray(demo_pipeline("a cat", seed=7, **SMALL))
    assert np.array_equal(np.asarray(saved), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["cat.png"]  # no temporary files left


def test_generate_default_output_name(tmp_path):
    proc = bonsai_sd("generate", "--demo", "a cat", "--size", "64", "--steps", "1", "--seed", "12", "-t", "1", "-q",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bonsai-12.png").is_file()
    assert proc.stderr == ""  # -q: no progress bar


def test_generate_refuses_bad_arguments_without_writing(tmp_path):
    out = tmp_path / "out.png"
    proc = bonsai_sd("generate", "--demo", "a cat", "--size", "500x512", "-o", str(out))
    assert proc.returncode == 2
    assert "width must be a multiple of 16, got 500 (try 496 or 512)" in proc.stderr
    proc = bonsai_sd("generate", "--demo", "a cat", "--size", "wide", "-o", str(out))
    assert proc.returncode == 2 and "size must look like 512x512" in proc.stderr
    assert not out.exists()


def test_generate_needs_a_model(tmp_path):
    proc = bonsai_sd("generate", "a cat")
    assert proc.returncode == 2 and "-m MODEL, or --demo" in proc.stderr
    proc = bonsai_sd("generate", "a cat", "-m", str(tmp_path / "missing.gguf"))
    assert proc.returncode == 1 and "missing.gguf: no such file or directory" in proc.stderr
    proc = bonsai_sd("generate", "a cat", "-m", "someone/some-model")
    assert proc.returncode == 1 and "huggingface" in proc.stderr


def test_generate_unavailable_device():
    proc = bonsai_sd("generate", "--demo", "a cat", "--device", "tpu7")
    assert proc.returncode == 2 and "device 'tpu7' is not available" in proc.stderr


def test_info_lists_devices():
    proc = bonsai_sd("info")
    assert proc.returncode == 0, proc.stderr
    assert "devices: CPU" in proc.stdout
