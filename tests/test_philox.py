"""sd.cpp's default noise (PhiloxRNG: torch.cuda's randn, made on the CPU) comes from
cpp/sdcpp/philox.h (patch 0069): the same numbers as upstream's per-element-allocating loop, which
took about 300 ms of every 1024x1024 FLUX.2 generation on the GPU machine.

tests/cpp/test_philox.cpp checks the generator against Random123's known-answer vectors and the
normals bit for bit against a reference computed the way upstream does; it is built here with g++.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_philox_normals(tmp_path):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.fail("g++ is needed (build-essential)")
    exe = tmp_path / "test_philox"
    subprocess.run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{REPO / 'cpp/sdcpp'}",
                    str(REPO / "tests/cpp/test_philox.cpp"), "-o", str(exe)], check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok ")
