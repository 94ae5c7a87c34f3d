"""cpp/metal: the per-type code of the Metal kernels, compiled as C++ through the shim header.

No Metal compiler or Apple GPU is reachable here, so cpp/metal/lowbit-metal.h (block layouts,
decoders, dequantize, quantize, the mat-vec lane function) is written to compile both as Metal
and as C++ via cpp/metal/metal-shim.h. The checks live in tests/cpp/test_metal_shim.cpp; this
module builds it with g++ against the scalar codec (gcc) and runs it. What this does not cover
(the kernel entry points, ggml's templates, the host code) is listed in README.md, "Metal".
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOWBIT = REPO / "cpp" / "lowbit"
METAL = REPO / "cpp" / "metal"
TEST_SOURCE = REPO / "tests" / "cpp" / "test_metal_shim.cpp"
WARNINGS = ["-Wall", "-Wextra", "-Werror"]


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{what} failed:\n{' '.join(cmd)}\n{result.stderr}"


def test_metal_shared_code_against_the_codec(tmp_path: Path) -> None:
    missing = [tool for tool in ("gcc", "g++") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"needs {', '.join(missing)} (Debian: build-essential)")

    codec = tmp_path / "lowbit-codec.o"
    _run(["gcc", "-std=c11", "-O2", *WARNINGS, f"-I{LOWBIT}", "-c", str(LOWBIT / "lowbit-codec.c"), "-o", str(codec)],
         "build of the codec")
    exe = tmp_path / "test_metal_shim"
    # C++14: the Metal Shading Language is based on it, so nothing newer may slip into the
    # shared header. -fno-strict-aliasing: blocks are read through casted pointers, as in Metal.
    _run(["g++", "-std=c++14", "-O2", *WARNINGS, "-fno-strict-aliasing", f"-I{LOWBIT}", f"-I{METAL}",
          str(TEST_SOURCE), str(codec), "-lm", "-o", str(exe)],
         "build of the shim test")

    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"shim checks failed:\n{output[-4000:]}"
    for name in ("q1_0", "q2_0", "pq2_0", "ptq1_0"):
        assert f"{name:<6} ok\n" in result.stdout, output
    assert "all checks passed" in result.stdout


def test_metal_sources_include_only_what_the_embedding_inlines() -> None:
    """The embedded Metal library is one source string. ggml-metal's CMake (patch 0007) builds it
    with sed: a first pass replaces each line holding `#include "lowbit-kernels.metal"` (in
    ggml-metal.metal) by that file, a second pass the lines holding the two header includes.
    So only lowbit-kernels.metal may include, exactly those two headers, and no other line may
    hold an include text: it would be replaced mid-line, or reach the runtime Metal compiler
    unresolved and break every Metal kernel, not only ours."""
    allowed = {"lowbit-kernels.metal": ["lowbit-metal-impl.h", "lowbit-metal.h"], "lowbit-metal.h": [],
               "lowbit-metal-impl.h": []}
    for name, wanted in allowed.items():
        found = []
        for number, line in enumerate((METAL / name).read_text().splitlines(), start=1):
            if "#include" in line:
                assert line.startswith('#include "') and line.endswith('"'), f"{name}:{number}: {line!r}"
                found.append(line.split('"')[1])
        assert found == wanted, f"{name} includes {found}, the embedding inlines {wanted}"
