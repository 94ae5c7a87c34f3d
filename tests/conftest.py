from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Developer tools (tiny model generators, fixtures) are importable from tests.
sys.path.insert(0, str(REPO / "tools"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sd_cli() -> str:
    exe = shutil.which("sd-cli")
    assert exe is not None, "sd-cli is not on PATH: install the package first (pip install .)"
    return exe


def upstream_cache_dir() -> Path:
    if os.environ.get("BONSAI_SD_CACHE_DIR"):
        return Path(os.environ["BONSAI_SD_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "bonsai-sd"
    return Path.home() / ".cache" / "bonsai-sd"


# One small generation: the demo model at 64 x 64, one step (the text encoder dominates: ~2-4 s).
SMALL = {"width": 64, "height": 64, "steps": 1}


def run_cli(*args: str) -> tuple[int, str]:
    """`bonsai-sd ARGS` in this process: (exit status, stderr)."""
    import contextlib
    import io

    from bonsai_sd import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue()


@pytest.fixture(scope="session")
def demo_pipeline():
    """The packaged demo model, loaded once. One thread and flash attention: fastest on a small,
    shared CPU (OpenMP threads spin at barriers when the cores are busy)."""
    import bonsai_sd

    pipe = bonsai_sd.Pipeline.demo(threads=1, flash_attention=True)
    yield pipe
    pipe.close()
