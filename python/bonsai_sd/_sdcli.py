"""The `sd-cli` console script: runs the sd-cli binary built into this package."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def binary_path() -> Path:
    """Path of the packaged sd-cli executable (built against the same patched library)."""
    name = "sd-cli.exe" if os.name == "nt" else "sd-cli"
    return Path(__file__).resolve().parent / "bin" / name


def main() -> None:
    exe = binary_path()
    if not exe.is_file():
        sys.exit(f"sd-cli: the packaged binary is missing ({exe}); reinstall bonsai-sd")
    argv = [str(exe), *sys.argv[1:]]
    if os.name == "nt":  # no exec on Windows: forward the exit status instead
        import subprocess

        sys.exit(subprocess.call(argv))
    os.execv(argv[0], argv)
