#!/usr/bin/env python3
"""Measure the converter on full-size (FLUX.2 klein 4B-shaped) synthetic packs: peak memory of
`bonsai-sd convert` against the bound 2 x largest tensor + 300 MB, time, and the GGUF size and
bits per weight for each output type, next to PrismML's published sizes.

    python tools/measure_convert.py [--workdir DIR] [--weights ternary,binary] [--types pq2_0,...]
                                    [--formats mlx,gemlite,unpacked,bfl] [--verify]

Every output type is measured on the MLX pack, the default type on the other formats asked
for. The packs (MLX about 1.4 GB ternary, 1.0 GB binary; unpacked 7.75 GB) and outputs live
in a temporary directory
that is deleted at the end. Each conversion runs in its own process, which reports its own peak
resident set (VmHWM, Linux).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bonsai_packs as bp
from bonsai_sd.convert.safetensors import read_header
from bonsai_sd.convert.torchzip import TorchTensor, load_state_dict
from bonsai_sd.ggufio import read_gguf

MB = 1e6
# PrismML's figures for the same transformer (whitepaper Table 2), in GB.
PUBLISHED = {"binary": {"ideal": 0.93, "MLX pack": 0.97}, "ternary": {"ideal": 1.21, "MLX pack": 1.43}}


# Runs the CLI and reports the process's own peak resident set (VmHWM). Not wait4()'s ru_maxrss:
# Linux carries the parent's high-water mark across fork + exec into it.
_CHILD = """
import sys
from bonsai_sd.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_KB", int(hwm.split()[1]), file=sys.stderr)
sys.exit(code)
"""


def run_convert(src: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in bytes) of one `bonsai-sd convert` in a fresh process."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "convert", str(src), "-o", str(out), "-q", *extra],
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"convert failed:\n{proc.stdout}\n{proc.stderr}")
    peak_kb = int(next(line for line in proc.stderr.splitlines() if line.startswith("PEAK_KB")).split()[1])
    return seconds, peak_kb * 1024.0


def _largest_tensor(pack: Path) -> tuple[str, int]:
    if pack.suffix == ".pt":
        state = load_state_dict(pack)
        sizes = {n: t.storage.numel * t.np_dtype.itemsize for n, t in state.items() if isinstance(t, TorchTensor)}
    else:
        refs, _ = read_header(pack)
        sizes = {n: r.nbytes for n, r in refs.items()}
    name = max(sizes, key=sizes.__getitem__)
    return name, sizes[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to put the temporary packs (default: the system temp)")
    parser.add_argument("--weights", default="ternary,binary")
    parser.add_argument("--types", default="pq2_0,ptq1_0,q2_0", help="ternary output types to convert to")
    parser.add_argument("--formats", default="mlx", help="source formats to measure (mlx always first)")
    parser.add_argument("--verify", action="store_true", help="also time a --verify run of the default type")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bonsai-measure-") as tmp:
        root = Path(tmp)
        formats = ["mlx", *(f for f in args.formats.split(",") if f and f != "mlx")]
        for weights in args.weights.split(","):
            kw = bp.random_klein(bp.KLEIN_4B, weights, seed=1)
            for fmt in formats:
                start = time.monotonic()
                pack = bp.write_packs(root / weights, kw, [fmt])[fmt]
                largest = _largest_tensor(pack)
                print(f"{weights}: synthetic {fmt} pack {pack.stat().st_size:,} bytes, written in "
                      f"{time.monotonic() - start:.0f} s; largest tensor {largest[0]} {largest[1]:,} bytes")
                bound = 2 * largest[1] + 300 * MB
                default = "q1_0" if weights == "binary" else "pq2_0"
                types = [default] if weights == "binary" or fmt != "mlx" else args.types.split(",")
                for quant_type in types:
                    out = root / f"{weights}-{quant_type}.gguf"
                    seconds, peak = run_convert(pack, out, ["--type", quant_type])
                    contents = read_gguf(out)
                    elements = sum(t.n_elements for t in contents.tensors)
                    lowbit = [t for t in contents.tensors if t.type_name.lower() == quant_type]
                    size = out.stat().st_size
                    print(f"  -> {quant_type}: file {size:,} bytes ({size / 1e9:.3f} GB), "
                          f"{8 * size / elements:.4f} bits per weight overall, low-bit linears "
                          f"{sum(t.n_bytes for t in lowbit):,} bytes in {len(lowbit)} tensors; "
                          f"{seconds:.0f} s, peak RSS {peak / MB:.0f} MB (bound {bound / MB:.0f} MB: "
                          f"{'ok' if peak < bound else 'EXCEEDED'})")
                    out.unlink()
                if args.verify:
                    out = root / f"{weights}-verify.gguf"
                    seconds, peak = run_convert(pack, out, ["--verify"])
                    print(f"  -> {default} with --verify: {seconds:.0f} s, peak RSS {peak / MB:.0f} MB")
                    out.unlink()
                shutil.rmtree(root / weights / fmt)
            print(f"  PrismML {weights}: {', '.join(f'{k} {v} GB' for k, v in PUBLISHED[weights].items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
