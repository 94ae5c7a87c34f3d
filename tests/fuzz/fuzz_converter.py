"""atheris over the Python readers of model files: the converter's safetensors reader, its
restricted torch-zip/pickle reader (Gemlite packs), MLX pack and format detection
(open_transformer), the GGUF reader (ggufio on top of gguf-py) and the header checks the
Python API runs (modelfiles), and `bonsai-sd info`'s report.

An input's first byte picks what the rest is:
  0  a whole file named *.safetensors      3  the pickle (data.pkl) of a torch zip built around it
  1  a whole file named *.gguf             4  the JSON header of a safetensors file built around it
  2  a whole file named *.pt
Every reader must either succeed or raise its own error type (ConvertError, GGUFError,
ModelFileError: a message naming the file and the defect). Any other exception is a finding.

    python tests/fuzz/fuzz_converter.py -max_total_time=60 CORPUS_DIR tests/fuzz/converter-seeds
"""

from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["bonsai_sd", "gguf"]):
    from bonsai_sd import fileinfo, ggufio, modelfiles
    from bonsai_sd.convert import safetensors, sources, torchzip
    from bonsai_sd.convert.errors import ConvertError

EXPECTED = (ConvertError, ggufio.GGUFError, modelfiles.ModelFileError)
SUFFIXES = (".safetensors", ".gguf", ".pt", ".pt", ".safetensors")
MAX_READ = 1 << 20  # read tensors up to this size: the data paths, not the disk, are under test
STORAGE_BYTES = 64  # each storage of a mode-3 archive

WORK = Path(tempfile.mkdtemp(prefix="bonsai-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def torch_zip_around(pickle_bytes: bytes) -> bytes:
    """A torch zip archive whose data.pkl is `pickle_bytes`, with storages "0" to "7"."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/byteorder", "little")
        for key in range(8):
            zf.writestr(f"archive/data/{key}", bytes(range(STORAGE_BYTES)))
    return buf.getvalue()


def safetensors_around(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + bytes(256)


def read_tensors(tensors: dict) -> None:
    for value in tensors.values():
        if isinstance(value, (safetensors.StTensor, torchzip.TorchTensor)) and value_bytes(value) <= MAX_READ:
            value.read()
            if len(value.shape) >= 2 and value.shape[0] > 0:
                value.read_rows(0, 1)


def value_bytes(value: safetensors.StTensor | torchzip.TorchTensor) -> int:
    n = 1
    for d in value.shape:
        n *= d
    return n * value.np_dtype.itemsize


def check(path: Path) -> None:
    """Every reader that takes this kind of file."""
    for reader in (lambda: fileinfo.describe_file(path), lambda: sources.open_transformer(path)):
        try:
            reader()
        except EXPECTED:
            pass
    if path.suffix == ".gguf":
        for reader in (lambda: ggufio.read_gguf(path), lambda: modelfiles.read_weight_file(path)):
            try:
                reader()
            except EXPECTED:
                pass
    elif path.suffix == ".pt":
        try:
            read_tensors(torchzip.load_state_dict(path))
        except EXPECTED:
            pass
    else:
        try:
            read_tensors(safetensors.read_header(path)[0])
        except EXPECTED:
            pass
        try:
            modelfiles.read_weight_file(path)
        except EXPECTED:
            pass


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 5, data[1:]
    if mode == 3:
        body = torch_zip_around(body)
    elif mode == 4:
        body = safetensors_around(body)
    path = WORK / f"input{SUFFIXES[mode]}"
    path.write_bytes(body)
    check(path)


def write_seeds(outdir: Path) -> None:
    """The committed seed corpus: one small valid input per mode (a few hundred bytes each)."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import bonsai_packs

    outdir.mkdir(parents=True, exist_ok=True)
    plain = WORK / "plain.safetensors"
    safetensors.save_arrays(plain, {"decoder.conv_in.weight": ("F16", np.ones((2, 4), "<f2")),
                                    "decoder.conv_in.bias": ("F32", np.arange(2, dtype="<f4"))}, {"format": "pt"})
    mlx = WORK / "mlx.safetensors"  # one 2-bit linear (in 256, out 4) and a 16-bit tensor
    safetensors.save_arrays(mlx, {"transformer_blocks.0.attn.to_q.weight": ("U32", np.full((4, 16), 0x55555555, "<u4")),
                                  "transformer_blocks.0.attn.to_q.scales": ("BF16", np.full((4, 2), 0x3C00, "<u2")),
                                  "transformer_blocks.0.attn.to_q.biases": ("BF16", np.full((4, 2), 0xBC00, "<u2")),
                                  "x_embedder.weight": ("BF16", np.zeros((4, 8), "<u2"))})
    gemlite = bonsai_packs.torch_zip_bytes({
        "transformer_blocks.0.attn.to_q.W_q": np.zeros((4, 4), "u1"),
        "transformer_blocks.0.attn.to_q.scales": np.ones((1, 4), "<f4"),
        "transformer_blocks.0.attn.to_q.zeros": -np.ones((1, 4), "<f4"),
        "transformer_blocks.0.attn.to_q.metadata": np.array([0, 2, 128, 3, 4, 1, 1, 2, 2, 0, 4, 1], "<i4"),
        "transformer_blocks.0.attn.to_q.orig_shape": np.array([4, 128], "<i4")}, archive="archive")
    with zipfile.ZipFile(io.BytesIO(gemlite)) as zf:
        pickle_bytes = zf.read("archive/data.pkl")
    gguf_seed = Path(__file__).resolve().parent / "seeds" / "lowbit-contract.gguf"
    header = plain.read_bytes()[8:8 + struct.unpack("<Q", plain.read_bytes()[:8])[0]]
    seeds = {"safetensors-plain": b"\0" + plain.read_bytes(), "safetensors-mlx": b"\0" + mlx.read_bytes(),
             "gguf-contract": b"\1" + gguf_seed.read_bytes(), "torchzip-gemlite": b"\2" + gemlite,
             "pickle-gemlite": b"\3" + pickle_bytes, "json-header": b"\4" + header}
    for name, data in seeds.items():
        (outdir / name).write_bytes(data)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
