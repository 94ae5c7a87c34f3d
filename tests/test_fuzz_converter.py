"""Issue 11: atheris over the Python model-file readers (the converter's and the API's), for a
bounded time.

tests/fuzz/fuzz_converter.py runs from the committed seeds (tests/fuzz/converter-seeds, one
small valid input per mode) for BONSAI_SD_ATHERIS_SECONDS (default 30). Any exception other
than the readers' own error types, a timeout or memory beyond 2 GB fails the test and leaves the
input under the test's tmp dir. The libFuzzer harness over the C++ readers is tests/test_fuzz.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"


def test_converter_readers_survive_fuzzing(tmp_path):
    if importlib.util.find_spec("atheris") is None:
        # The test extra installs atheris on Linux (its wheels are Linux-only).
        if sys.platform != "linux" or os.environ.get("BONSAI_SD_SKIP_FUZZ") == "1":
            pytest.skip("atheris is not installed (Linux only; or BONSAI_SD_SKIP_FUZZ=1)")
        pytest.fail("atheris is needed: pip install '.[test]'")
    seconds = int(os.environ.get("BONSAI_SD_ATHERIS_SECONDS", "30"))
    corpus = tmp_path / "corpus"  # new inputs go here, not into the committed seeds
    corpus.mkdir()
    proc = subprocess.run([sys.executable, str(FUZZ_DIR / "fuzz_converter.py"), f"-max_total_time={seconds}",
                           "-timeout=20", "-rss_limit_mb=2048", "-max_len=65536", f"-artifact_prefix={tmp_path}/",
                           str(corpus), str(FUZZ_DIR / "converter-seeds")],
                          capture_output=True, text=True, errors="replace", timeout=seconds + 300)
    done = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    print(f"atheris: {done.group(1) if done else '?'} executions in {seconds} s")
    findings = sorted(p.name for p in tmp_path.iterdir() if re.match(r"(crash|leak|timeout|oom)-", p.name))
    assert proc.returncode == 0 and not findings, f"{findings}\n{proc.stderr[-4000:]}"
    assert done and int(done.group(1)) > 1000
