"""Issue 11: malformed model files end in a clear error, never an abort or a crash.

The corpus (tools/malformed_models.py) edits one valid tiny DiT in ways a damaged download or
a hostile file would: truncations, huge counts and lengths, bad dims, types and offsets, bad
safetensors JSON, bit flips. Each goes through sd-cli (convert and generate) and the Python
loader with a valid VAE and text encoder beside it.
"""

from __future__ import annotations

import signal
import subprocess

import malformed_models
import pytest
import tiny_klein

from bonsai_sd import _core

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def companions(tmp_path_factory) -> tiny_klein.ModelSet:
    return tiny_klein.write_model_set(tmp_path_factory.mktemp("ok"), flavour="ternary", dtype="f16", seed=0)


def describe(rc: int) -> str:
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"


def test_valid_base_loads(tmp_path, companions):
    # The corpus edits this file; it must itself be fine, or every refusal below proves nothing.
    path = tmp_path / "base.gguf"
    path.write_bytes(malformed_models.valid_gguf(malformed_models.base_tensors()))
    _core.Context(diffusion_model=str(path), vae=str(companions.vae), llm=str(companions.llm)).close()


def test_every_malformed_file_is_refused_cleanly(tmp_path, sd_cli, companions):
    problems = []
    n_cases = 0
    for case in malformed_models.all_cases():
        n_cases += 1
        path = tmp_path / (case.name + case.suffix)
        path.write_bytes(case.data)
        out = tmp_path / "out.gguf"

        conv = subprocess.run([sd_cli, "-M", "convert", "-m", str(path), "-o", str(out)],
                              capture_output=True, text=True, timeout=120)
        if conv.returncode not in (0, 1):
            problems.append(f"{case.name} ({case.defect}): sd-cli convert {describe(conv.returncode)}")
        elif conv.returncode == 1 and str(path) not in conv.stdout + conv.stderr:
            problems.append(f"{case.name}: sd-cli convert's error does not name the file")
        if conv.returncode != 0 and out.exists():
            problems.append(f"{case.name}: a failed convert left {out.name} behind")
        out.unlink(missing_ok=True)

        try:
            _core.Context(diffusion_model=str(path), vae=str(companions.vae), llm=str(companions.llm)).close()
        except _core.EngineError as err:
            if str(path) not in str(err) and "diffusion model" not in str(err):
                problems.append(f"{case.name}: the Python error names neither the file nor the component: {err}")
        path.unlink()
    assert n_cases >= 50
    assert not problems, "\n".join(problems)
