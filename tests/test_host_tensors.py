"""sd.cpp's host-side tensor math (patch 0080): the broadcast loop of cpp/sdcpp/tensor-loops.h
gives every element the same source offsets, in the same order, as the per-element division it
replaced, and cpp/sdcpp/host-heap.cpp's glibc settings take per-image blocks off mmap (or are left
alone with BONSAI_SD_MALLOC_DEFAULTS=1). tests/cpp/test_host_tensors.cpp is built here with g++.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.fail("g++ is needed (build-essential)")
    out = tmp_path_factory.mktemp("host_tensors") / "test_host_tensors"
    subprocess.run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{REPO / 'cpp/sdcpp'}",
                    str(REPO / "tests/cpp/test_host_tensors.cpp"), str(REPO / "cpp/sdcpp/host-heap.cpp"),
                    "-o", str(out)], check=True, capture_output=True, text=True)
    return out


@pytest.mark.parametrize("mode", ["settings", "defaults"])
def test_host_tensors(exe, mode):
    args = [str(exe)] + (["defaults"] if mode == "defaults" else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"
