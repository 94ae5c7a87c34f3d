"""cpp/lowbit: fp16, the four low-bit codecs, the transcodes, row validation and the CPU kernels.

The checks live in the C program tests/cpp/test_lowbit.c; this module builds it with gcc from
the sources directly (no CMake) once per SIMD variant and runs it. Each build checks its
dispatched kernels against the scalar reference bit for bit, so the AVX2 build tests AVX2 and
the AArch64 builds (run under qemu-aarch64) test NEON.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOWBIT = REPO / "cpp" / "lowbit"
TEST_SOURCE = REPO / "tests" / "cpp" / "test_lowbit.c"
# Every build compiles every file, as ggml does; each SIMD file is empty unless its target
# macros are set, and lowbit-kernels.c dispatches to the one that is.
LOWBIT_SOURCES = ["lowbit-codec.c", "lowbit-kernels.c", "lowbit-avx2.c", "lowbit-neon.c"]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]


@dataclass(frozen=True)
class Variant:
    name: str
    compiler: str
    flags: tuple[str, ...]
    expected_simd: str
    runner: tuple[str, ...] = ()

    @property
    def cross(self) -> bool:
        return bool(self.runner)


VARIANTS = [
    Variant("x86-scalar", "gcc", ("-O2",), "scalar"),
    # ggml's x86 AVX2 build (GGML_NATIVE=OFF) enables AVX2 with FMA and F16C
    Variant("x86-avx2", "gcc", ("-O2", "-mavx2", "-mfma", "-mf16c"), "avx2"),
    # AArch64 under user-mode qemu (static, so no target sysroot is needed at run time):
    # plain NEON, and NEON with the dot-product extension.
    Variant(
        "aarch64-neon",
        "aarch64-linux-gnu-gcc",
        ("-O2", "-march=armv8-a", "-static"),
        "neon",
        ("qemu-aarch64",),
    ),
    Variant(
        "aarch64-neon-dotprod",
        "aarch64-linux-gnu-gcc",
        ("-O2", "-march=armv8.2-a+dotprod", "-static"),
        "neon",
        ("qemu-aarch64",),
    ),
]


def _host_is_x86() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def _build(variant: Variant, out_dir: Path) -> Path:
    exe = out_dir / f"test_lowbit_{variant.name}"
    sources = [str(LOWBIT / s) for s in LOWBIT_SOURCES] + [str(TEST_SOURCE)]
    cmd = [variant.compiler, "-std=c11", *WARNINGS, *variant.flags, f"-I{LOWBIT}", *sources, "-lm", "-o", str(exe)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"build of {variant.name} failed:\n{' '.join(cmd)}\n{result.stderr}"
    return exe


def _host_has_avx2() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return {"avx2", "fma", "f16c"} <= flags


def _missing_tools(variant: Variant) -> list[str]:
    tools = [variant.compiler, *variant.runner[:1]]
    return [tool for tool in tools if shutil.which(tool) is None]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_lowbit_c_program(variant: Variant, tmp_path: Path) -> None:
    if not variant.cross and not _host_is_x86():
        pytest.skip(f"{variant.name} is built for the x86-64 host")
    if variant.expected_simd == "avx2" and not _host_has_avx2():
        pytest.skip("this CPU lacks AVX2/FMA/F16C")
    missing = _missing_tools(variant)
    if missing:
        message = f"{variant.name} needs {', '.join(missing)} (Debian: see .ci/apt-packages.txt)"
        if variant.cross and os.environ.get("BONSAI_SD_SKIP_NEON") == "1":
            pytest.skip(message + "; skipped because BONSAI_SD_SKIP_NEON=1")
        pytest.fail(message)

    exe = _build(variant, tmp_path)
    result = subprocess.run([*variant.runner, str(exe)], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{variant.name} checks failed:\n{output[-4000:]}"
    assert f"simd: {variant.expected_simd}\n" in result.stdout, output
    assert "all checks passed" in result.stdout
