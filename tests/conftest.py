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
