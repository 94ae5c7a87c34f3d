"""Issue 2: the build, the module's report, sd-cli on PATH, refusal of unknown GGUF types,
and the configure step's checks on the upstream archive and the patch series."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import numpy as np
import pytest
from conftest import upstream_cache_dir
from ggufraw import RawTensor, write_gguf

from bonsai_sd import _core

PINNED_SHA256 = "998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282"
SDIST_FILE = "stable_diffusion_cpp_python-0.4.7.tar.gz"


def test_module_reports_versions_and_backends():
    assert _core.__version__ == dist_version("bonsai-sd")
    assert _core.sd_commit == "60477fd5"
    assert _core.ggml_version == "0.9.8"
    assert _core.ggml_commit.startswith("404fcb9d")
    assert "CPU" in _core.backends()
    assert _core.ggml_max_name == 128


def test_type_table_matches_published_layouts():
    table = {row["name"]: row for row in _core.type_table()}
    ids = [row["id"] for row in _core.type_table()]
    assert ids == sorted(set(ids))
    # (id, block elements, bytes per block) from the GGUF/ggml specification.
    published = {
        "f32": (0, 1, 4), "f16": (1, 1, 2), "q4_0": (2, 32, 18), "q4_1": (3, 32, 20),
        "q5_0": (6, 32, 22), "q5_1": (7, 32, 24), "q8_0": (8, 32, 34), "q2_K": (10, 256, 84),
        "q4_K": (12, 256, 144), "q6_K": (14, 256, 210), "bf16": (30, 1, 2),
        "tq1_0": (34, 256, 54), "tq2_0": (35, 256, 66),
    }
    for name, (type_id, block, size) in published.items():
        row = table[name]
        assert (row["id"], row["block_size"], row["type_size"]) == (type_id, block, size), name
    # Removed ids keep no traits.
    assert not {4, 5, 31, 32, 33, 36, 37, 38} & set(ids)


def test_type_table_agrees_with_gguf_py():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for row in _core.type_table():
        if row["name"] == "q8_1":
            continue  # activation-only type; gguf-py still lists its old 40-byte (fp32 d, s) size
        try:
            qtype = GGMLQuantizationType(row["id"])
        except ValueError:
            continue  # a type gguf-py does not know
        assert GGML_QUANT_SIZES[qtype] == (row["block_size"], row["type_size"]), row["name"]


def test_sd_cli_help_from_path(sd_cli):
    assert Path(sd_cli).parent == Path(sys.executable).parent or shutil.which("sd-cli") == sd_cli
    proc = subprocess.run([sd_cli, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "--diffusion-model" in proc.stdout
    assert "[ERROR]" not in proc.stdout + proc.stderr
    assert "60477fd5" in proc.stdout


def test_bonsai_sd_info_runs():
    proc = subprocess.run([sys.executable, "-m", "bonsai_sd", "info"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "60477fd5" in proc.stdout and "q8_0" in proc.stdout


# Definitions only libstdc++ itself has: the locale machinery and the stream inserters.
LIBSTDCXX_OWN_SYMBOLS = ("_ZNSt6locale", "_ZNSo9_M_insert", "_ZNKSt7num_put")


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("nm") is None, reason="ELF and binutils' nm")
def test_libraries_export_no_libstdcxx():
    """A toolchain that links libstdc++ statically must not export that copy: its unique symbols
    would bind to a system libstdc++ loaded first (by numpy) and the engine would crash (seen on
    the GPU machine; CMakeLists.txt hides static copies with --exclude-libs)."""
    package = Path(_core.__file__).parent
    for library in [package / "libstable-diffusion.so", Path(_core.__file__)]:
        proc = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        exported = [line.split()[-1] for line in proc.stdout.splitlines() if line.strip()]
        leaked = [name for name in exported if name.startswith(LIBSTDCXX_OWN_SYMBOLS)]
        assert not leaked, f"{library.name} exports libstdc++'s own symbols: {leaked[:5]}"


def test_generation_after_numpy_is_imported_first():
    code = ("import numpy, bonsai_sd\n"
            "image = bonsai_sd.Pipeline.demo()('a fox', width=64, height=64, steps=1, seed=1)\n"
            "print(image.size)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(64, 64)" in proc.stdout


# Ids ggml has no traits for: past the end of the table, a hole inside it, absurd values.
UNKNOWN_TYPE_IDS = [4, 50, 77, 100, 200, 0xFFFF, 0xFFFFFFFF]


def _gguf_with_type(path: Path, type_id: int) -> Path:
    return write_gguf(path, [
        RawTensor("img_in.weight", (128, 256), 0, np.zeros((256, 128), np.float32).tobytes()),
        RawTensor("double_blocks.0.img_attn.qkv.weight", (256, 768), type_id, b"\0" * 4096),
    ])


@pytest.mark.parametrize("type_id", UNKNOWN_TYPE_IDS)
def test_sd_cli_refuses_unknown_tensor_type(tmp_path, sd_cli, type_id):
    model = _gguf_with_type(tmp_path / "bad.gguf", type_id)
    out = tmp_path / "out.png"
    proc = subprocess.run([sd_cli, "--diffusion-model", str(model), "-p", "a cat", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"  # not a signal
    log = proc.stdout + proc.stderr
    assert f"tensor 'double_blocks.0.img_attn.qkv.weight' has unknown ggml type id {type_id}" in log
    assert str(model) in log
    assert not out.exists()


@pytest.mark.parametrize("type_id", UNKNOWN_TYPE_IDS)
def test_python_loader_refuses_unknown_tensor_type(tmp_path, type_id):
    model = _gguf_with_type(tmp_path / "bad.gguf", type_id)
    with pytest.raises(_core.EngineError) as err:
        _core.Context(diffusion_model=str(model))
    assert f"tensor 'double_blocks.0.img_attn.qkv.weight' has unknown ggml type id {type_id}" in str(err.value)
    assert str(model) in str(err.value)


def test_python_loader_refuses_row_not_whole_blocks(tmp_path):
    # q8_0 blocks are 32 elements: a row of 100 cannot be q8_0.
    model = write_gguf(tmp_path / "ragged.gguf", [RawTensor("img_in.weight", (100, 4), 8, b"\0" * 4 * 4 * 34)])
    with pytest.raises(_core.EngineError, match="row length of 100, not a multiple of its block size 32"):
        _core.Context(diffusion_model=str(model))


# ---- configure-time checks -----------------------------------------------------------------

def _configure(source: Path, build: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *args],
                          capture_output=True, text=True, timeout=600, env=full_env)


def test_configure_refuses_archive_with_wrong_hash(tmp_path, repo_root):
    bogus = tmp_path / SDIST_FILE
    bogus.write_bytes(b"not the pinned sdist")
    proc = _configure(repo_root, tmp_path / "build", f"-DBONSAI_SD_UPSTREAM_ARCHIVE={bogus}")
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert str(bogus) in log.replace("\n", "").replace("  ", " ") or SDIST_FILE in log
    assert PINNED_SHA256 in log.replace("\n", "")
    assert "sha256" in log


def test_configure_refuses_cached_archive_with_wrong_hash(tmp_path, repo_root):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / SDIST_FILE).write_bytes(b"truncated")
    proc = _configure(repo_root, tmp_path / "build", env={"BONSAI_SD_CACHE_DIR": str(cache),
                                                          "BONSAI_SD_UPSTREAM_ARCHIVE": ""})
    assert proc.returncode != 0
    assert "sha256" in proc.stdout + proc.stderr
    assert (cache / SDIST_FILE).read_bytes() == b"truncated"  # nothing silently replaced


def _pinned_archive() -> Path:
    archive = upstream_cache_dir() / SDIST_FILE
    if not archive.exists():
        pytest.skip(f"{archive} is not cached (the package build puts it there)")
    return archive


def _project_copy(repo_root: Path, dest: Path) -> Path:
    shutil.copytree(repo_root, dest, ignore=shutil.ignore_patterns("build", ".git", "__pycache__", "*.egg-info"))
    return dest


@pytest.mark.slow
def test_configure_names_a_patch_that_does_not_apply(tmp_path, repo_root):
    archive = _pinned_archive()
    src = _project_copy(repo_root, tmp_path / "src")
    (src / "ggml-patches" / "9999-does-not-apply.patch").write_text(
        "--- a/include/stable-diffusion.h\n+++ b/include/stable-diffusion.h\n"
        "@@ -1,3 +1,3 @@\n-this line is not in the file\n+nor is this one\n context\n")
    proc = _configure(src, tmp_path / "build", f"-DBONSAI_SD_UPSTREAM_ARCHIVE={archive}")
    assert proc.returncode != 0
    assert "patch ggml-patches/9999-does-not-apply.patch does not apply" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_configure_twice_is_safe(tmp_path, repo_root):
    archive = _pinned_archive()
    build = tmp_path / "build"
    first = _configure(repo_root, build, f"-DBONSAI_SD_UPSTREAM_ARCHIVE={archive}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "bonsai-sd: applying 0001-" in first.stdout
    header = build / "_upstream" / "stable-diffusion.cpp" / "src" / "model_io" / "gguf_io.cpp"
    stamp = header.stat().st_mtime_ns
    second = _configure(repo_root, build)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "bonsai-sd: applying" not in second.stdout  # nothing re-extracted or re-patched
    assert header.stat().st_mtime_ns == stamp
    assert "read_gguf_index" in header.read_text()  # the patched tree, not the pristine one
