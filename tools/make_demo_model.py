#!/usr/bin/env python3
"""Write the demo model that ships inside the bonsai-sd package (run by CMake at build time).

    python tools/make_demo_model.py OUTDIR

A tiny FLUX.2 [klein]-shaped set from tools/tiny_klein.py (seed 0, ternary transformer): random
weights, so its images are abstract patterns; it exists so that ``bonsai-sd generate --demo``
runs the whole engine offline on a fresh install. The transformer's block linears are exactly
ternary per 128-group, like Bonsai's, and are stored losslessly as PQ2_0, so the demo runs the
low-bit kernels. To keep the package small, every other 2-D weight whose rows are whole
32-element blocks is stored as q4_0 (the text encoder's 151,936-row embedding dominates; f16
would make the set ~35 MB, this makes it ~13 MB):

- ``OUTDIR/transformer.gguf``   the DiT, BFL names;
- ``OUTDIR/text_encoder.gguf``  the Qwen3-shaped text encoder, Hugging Face names;
- ``OUTDIR/vae.safetensors``    the VAE decoder, f16 (sd.cpp runs its convolutions in f16/f32).

Deterministic: the same tiny_klein and gguf versions write the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))  # run before the package is installed
import tiny_klein  # noqa: E402

from bonsai_sd import lowbit  # noqa: E402
from bonsai_sd.ggufio import contract_entries, register_gguf_types  # noqa: E402

SEED = 0
FLAVOUR = "ternary"
QUANT_BLOCK = 32


def _storage(name: str, value: np.ndarray) -> tuple[np.ndarray, GGMLQuantizationType]:
    if tiny_klein.is_block_linear(name):
        return lowbit.quantize(value.astype(np.float32), lowbit.PQ2_0), GGMLQuantizationType(lowbit.PQ2_0.type_id)
    if value.ndim == 2 and value.shape[1] % QUANT_BLOCK == 0:
        return quants.quantize(value.astype(np.float32), GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0
    return value.astype(np.float32), GGMLQuantizationType.F32


def write_gguf(path: Path, arch: str, component: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Write `tensors` (PQ2_0 block linears, q4_0 where possible, else f32) to `path` via a temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = GGUFWriter(tmp, arch)
        writer.add_string("bonsai_sd.component", component)
        writer.add_string("bonsai_sd.demo", f"tools/tiny_klein.py seed {SEED}, {FLAVOUR} transformer")
        stored = {name: _storage(name, np.asarray(value)) for name, value in tensors.items()}
        used = [t for t in lowbit.LOWBIT_TYPES if any(q == t.type_id for _, q in stored.values())]
        if used:
            writer.add_array("bonsai_sd.types", contract_entries(used))
        for name, (data, qtype) in stored.items():
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    register_gguf_types()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    out: Path = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_klein.TinyKleinConfig()
    write_gguf(out / "transformer.gguf", "flux2", "transformer", tiny_klein.make_dit(cfg, FLAVOUR, SEED).tensors)
    write_gguf(out / "text_encoder.gguf", "qwen3", "text-encoder", tiny_klein.make_llm(cfg, SEED))
    tiny_klein.write_safetensors(
        out / "vae.safetensors",
        tiny_klein.make_vae(cfg, SEED),
        "f16",
        {"generator": "bonsai-sd tools/make_demo_model.py", "component": "vae"},
        keep_f32=tiny_klein.VAE_F32_ONLY,
    )
    for f in sorted(out.iterdir()):
        print(f"{f} ({f.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
