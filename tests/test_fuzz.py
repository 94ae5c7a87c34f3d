"""Issue 11: libFuzzer over the model-file reading path, for a bounded time.

tests/fuzz/fuzz_model_files.cpp is compiled with clang (-fsanitize=fuzzer,address,undefined)
against the patched upstream tree and ggml library of this checkout's build, then run from the
committed seed corpus (tests/fuzz/seeds) for BONSAI_SD_FUZZ_SECONDS (default 60). Any crash,
abort, leak or sanitizer report fails the test and leaves the input under the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FUZZ_DIR = REPO / "tests" / "fuzz"


def build_tree() -> tuple[Path, Path]:
    """(patched upstream source tree, ggml static library directory) of this checkout's build."""
    for build in sorted((REPO / "build").glob("*/")):
        upstream = build / "_upstream" / "stable-diffusion.cpp"
        libs = build / "upstream" / "ggml" / "src"
        if (upstream / "src" / "model_io" / "gguf_io.cpp").exists() and (libs / "libggml-base.a").exists():
            return upstream, libs
    pytest.fail("no build tree under build/: run `pip install .` from this checkout first")


def clang() -> str:
    for name in ("clang++-14", "clang++"):
        if shutil.which(name):
            return name
    if os.environ.get("BONSAI_SD_SKIP_FUZZ") == "1":
        pytest.skip("clang is not installed and BONSAI_SD_SKIP_FUZZ=1")
    pytest.fail("clang with libFuzzer is needed (Debian: clang-14 libclang-rt-14-dev, see .ci/apt-packages.txt)")


def test_model_file_readers_survive_fuzzing(tmp_path):
    upstream, libs = build_tree()
    cxx = clang()
    sources = [FUZZ_DIR / "fuzz_model_files.cpp", upstream / "src/model_io/gguf_io.cpp",
               upstream / "src/model_io/safetensors_io.cpp", upstream / "ggml/src/gguf.cpp",
               REPO / "cpp/sdcpp/gguf-checks.cpp", REPO / "cpp/sdcpp/safetensors-checks.cpp"]
    includes = [upstream / "include", upstream / "src", upstream / "src/model_io", upstream / "ggml/include",
                upstream / "ggml/src", upstream / "thirdparty", REPO / "cpp/sdcpp", REPO / "cpp/lowbit"]
    # enum: ggml reads type ids into its enums before range-checking them, by design.
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize=enum", "-fno-sanitize-recover=all"]
    flags = ["-std=c++17", "-g", "-O1", "-DGGML_MAX_NAME=128", *sanitize, *[f"-I{d}" for d in includes]]

    def compile_one(src: Path) -> Path:
        obj = tmp_path / (src.name + ".o")
        subprocess.run([cxx, "-c", "-fsanitize=fuzzer-no-link", *flags, str(src), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        return obj

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, sources))
    fuzzer = tmp_path / "fuzz_model_files"
    subprocess.run([cxx, "-fsanitize=fuzzer", *sanitize, *map(str, objects), str(libs / "libggml-base.a"),
                    "-lpthread", "-o", str(fuzzer)], check=True, capture_output=True, text=True)

    seconds = int(os.environ.get("BONSAI_SD_FUZZ_SECONDS", "60"))
    corpus = tmp_path / "corpus"  # new inputs go here, not into the committed seeds
    corpus.mkdir()
    proc = subprocess.run([str(fuzzer), f"-max_total_time={seconds}", "-max_len=65536", "-timeout=10",
                           "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", str(corpus),
                           str(FUZZ_DIR / "seeds")], capture_output=True, text=True, errors="replace",
                          timeout=seconds + 300)
    done = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    print(f"libFuzzer: {done.group(1) if done else '?'} executions in {seconds} s")
    crashes = sorted(p.name for p in tmp_path.iterdir() if re.match(r"(crash|leak|timeout|oom)-", p.name))
    assert proc.returncode == 0 and not crashes, f"{crashes}\n{proc.stderr[-4000:]}"
    assert done and int(done.group(1)) > 1000
