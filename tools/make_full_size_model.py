#!/usr/bin/env python3
"""Write a full-size FLUX.2 [klein] 4B-shaped model set with random weights, for benchmarks.

    python tools/make_full_size_model.py OUTDIR [--types f16,q8_0,q4_k,pq2_0,ptq1_0,q2_0,q1_0]
                                         [--jobs N] [--seed N] [--tiny] [--force]

Files (BFL / sd.cpp names; what `bonsai_sd.Pipeline` and sd-cli load):
  transformer-<type>.gguf   the transformer (5 double + 20 single blocks, hidden 3072, 24 heads x
                            128, MLP 9216, context 7680). Only the 100 block linears change type,
                            as in Bonsai Image; the 9 other linears and the norms are F16.
                            pq2_0, ptq1_0, q2_0, f16, q8_0 and q4_k hold ONE set of ternary
                            weights (group-128 codes in {-1, 0, +1} times an fp16 scale): the low-bit
                            files are that model exactly, f16 its exact decoding, q8_0 and q4_k
                            ggml's own quantizations of that decoding. q1_0 holds binary weights
                            ({-1, +1} times a scale) drawn beside them, with the same 16-bit tensors.
  text-encoder-q4_k.gguf    a Qwen3-4B-shaped text encoder (36 layers, hidden 2560, 32 q / 8 kv
                            heads x 128, MLP 9728, vocabulary 151,936), Q4_K linears and embedding
                            written directly as random valid blocks (zero-mean rows of std about
                            1/sqrt(fan in)), F32 norms.
  vae.safetensors           a FLUX.2 VAE-shaped decoder (base channels 128, multipliers 1,2,4,4,
                            z 32), F16, from tools/tiny_klein.py's generator.

--tiny writes the same set at tools/tiny_klein.py-like sizes (hidden 256, 1 + 1 blocks, a 28-layer
Qwen3 of hidden 256, VAE base 32) in a second: the benchmark's own tests run on it.

Speed: the work is cut into chunks of rows, computed by --jobs worker processes that write each
chunk straight to its place in every output file (positional writes), so nothing larger than a
chunk is ever held in memory. The random stream of a chunk is keyed by (seed, tensor, first row):
the files do not depend on --jobs. Files are written under temporary names and renamed when
complete; existing complete files are kept unless --force.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from bonsai_sd import lowbit
from bonsai_sd.convert import klein
from bonsai_sd.ggufio import CONTRACT_KEY, contract_entries, read_gguf

log = logging.getLogger("make_full_size_model")

GROUP = 128  # Bonsai's group along a row = one PQ2_0 / PTQ1_0 / Q1_0 block, two Q2_0 blocks
CHUNK_ELEMENTS = 1 << 22  # rows per task: about 4 M elements (16 MB as float32)
QK_K = 256  # elements of a Q4_K super-block
Q4_K_BYTES = 144  # d, dmin (fp16), 12 bytes of 6-bit scales/mins, 128 bytes of 4-bit codes

# The transformer types, in the order they are reported; the first four are the low-bit types.
TRANSFORMER_TYPES = ("pq2_0", "ptq1_0", "q2_0", "q1_0", "f16", "q8_0", "q4_k")
GGML_NAMES = {"pq2_0": "PQ2_0", "ptq1_0": "PTQ1_0", "q2_0": "Q2_0", "q1_0": "Q1_0", "f16": "F16",
              "q8_0": "Q8_0", "q4_k": "Q4_K", "f32": "F32"}
# The ggml quantizer names (bonsai_sd._core.ggml.quantize) of the types made from decoded weights.
_GGML_QUANTIZE = {"q8_0": "q8_0", "q4_k": "q4_K"}


def type_id(name: str) -> int:
    return int(GGMLQuantizationType[GGML_NAMES[name]])


def row_bytes(type_name: str, n: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id(type_name))]
    if n % block:
        raise ValueError(f"a row of {n} elements is not a whole number of {type_name} blocks of {block}")
    return n // block * size


# ---- shapes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Qwen3Dims:
    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class Scale:
    name: str
    dit: klein.KleinDims
    llm: Qwen3Dims
    vae_ch: int


FULL = Scale(
    "klein-4b",
    klein.KleinDims(hidden=3072, in_channels=128, context=7680, time_channels=256, mlp=9216, head_dim=128,
                    double_blocks=5, single_blocks=20),
    # sd.cpp (llm.hpp) fixes Qwen3's heads at 32 q / 8 kv x 128 and reads the rest from the file.
    Qwen3Dims(layers=36, hidden=2560, q_heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151_936),
    vae_ch=128,
)
# Every row length a multiple of 256 (Q4_K); exactly 28 Qwen3 layers make sd.cpp use 16 q heads.
TINY = Scale(
    "tiny",
    klein.KleinDims(hidden=256, in_channels=128, context=768, time_channels=256, mlp=768, head_dim=128,
                    double_blocks=1, single_blocks=1),
    Qwen3Dims(layers=28, hidden=256, q_heads=16, kv_heads=8, head_dim=128, intermediate=512, vocab=151_936),
    vae_ch=32,
)


def transformer_path(outdir: Path, type_name: str) -> Path:
    return outdir / f"transformer-{type_name}.gguf"


def text_encoder_path(outdir: Path) -> Path:
    return outdir / "text-encoder-q4_k.gguf"


def vae_path(outdir: Path) -> Path:
    return outdir / "vae.safetensors"


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order: the row length last
    kind: str  # "lowbit" (a block linear), "dense" (16-bit weight), "norm", "q4_k" (text encoder)

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def row_length(self) -> int:
        return self.shape[-1]


def transformer_tensors(dims: klein.KleinDims) -> list[TensorPlan]:
    out = []
    for spec in klein.bfl_layout(dims):
        kind = "lowbit" if spec.lowbit else ("norm" if len(spec.shape) == 1 else "dense")
        out.append(TensorPlan(spec.name, spec.shape, kind))
    return out


def transformer_type_of(plan: TensorPlan, type_name: str) -> str:
    return type_name if plan.kind == "lowbit" else "f16"


def text_encoder_tensors(d: Qwen3Dims) -> list[TensorPlan]:
    """Hugging Face Qwen3 names (sd.cpp maps them; the embedding is tied, so no lm_head)."""
    q, kv = d.q_heads * d.head_dim, d.kv_heads * d.head_dim
    out = [TensorPlan("model.embed_tokens.weight", (d.vocab, d.hidden), "q4_k")]
    for i in range(d.layers):
        p = f"model.layers.{i}."
        out += [
            TensorPlan(p + "input_layernorm.weight", (d.hidden,), "norm"),
            TensorPlan(p + "self_attn.q_proj.weight", (q, d.hidden), "q4_k"),
            TensorPlan(p + "self_attn.k_proj.weight", (kv, d.hidden), "q4_k"),
            TensorPlan(p + "self_attn.v_proj.weight", (kv, d.hidden), "q4_k"),
            TensorPlan(p + "self_attn.q_norm.weight", (d.head_dim,), "norm"),
            TensorPlan(p + "self_attn.k_norm.weight", (d.head_dim,), "norm"),
            TensorPlan(p + "self_attn.o_proj.weight", (d.hidden, q), "q4_k"),
            TensorPlan(p + "post_attention_layernorm.weight", (d.hidden,), "norm"),
            TensorPlan(p + "mlp.gate_proj.weight", (d.intermediate, d.hidden), "q4_k"),
            TensorPlan(p + "mlp.up_proj.weight", (d.intermediate, d.hidden), "q4_k"),
            TensorPlan(p + "mlp.down_proj.weight", (d.hidden, d.intermediate), "q4_k"),
        ]
    out.append(TensorPlan("model.norm.weight", (d.hidden,), "norm"))
    return out


def text_encoder_type_of(plan: TensorPlan) -> str:
    return "q4_k" if plan.kind == "q4_k" else "f32"


# ---- the numbers of one chunk ------------------------------------------------------------------

def _rng(seed: int, name: str, row: int, stream: str = "") -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(stream.encode()), row])


def group_scales(rng: np.random.Generator, rows: int, row_length: int) -> np.ndarray:
    """fp16 group scales with three significant bits around 1.2 / sqrt(row length)."""
    mantissa = rng.integers(8, 16, (rows, row_length // GROUP)) / 8.0
    target = np.log2(1.2 / np.sqrt(row_length))
    exponent = np.floor(target + rng.uniform(-0.5, 0.5, (rows, row_length // GROUP)))
    return np.ldexp(mantissa, exponent.astype(np.int64)).astype(np.float16)


def ternary_blocks(seed: int, plan: TensorPlan, row0: int, rows: int) -> np.ndarray:
    """The chunk's ternary weights as PQ2_0 blocks [rows * groups, 34] (codes 0, 1, 2 = -1, 0, +1)."""
    rng = _rng(seed, plan.name, row0, "ternary")
    codes = rng.integers(0, 3, (rows * plan.row_length // GROUP, GROUP), dtype=np.uint8)
    return lowbit.encode(lowbit.PQ2_0, codes, group_scales(rng, rows, plan.row_length).reshape(-1))


def binary_blocks(seed: int, plan: TensorPlan, row0: int, rows: int) -> np.ndarray:
    """The chunk's binary weights as Q1_0 blocks [rows * groups, 18]."""
    rng = _rng(seed, plan.name, row0, "binary")
    bits = np.frombuffer(rng.bytes(rows * plan.row_length // 8), np.uint8).reshape(-1, GROUP // 8)
    d = group_scales(rng, rows, plan.row_length).reshape(-1, 1).view(np.uint8)
    return np.concatenate([d, bits], axis=1)


def dense_values(seed: int, plan: TensorPlan, row0: int, rows: int) -> np.ndarray:
    """A 16-bit weight's rows (std 1/sqrt(row length)) or a norm's scale (about 1), float32."""
    rng = _rng(seed, plan.name, row0, "dense")
    if plan.kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(plan.shape[0], np.float32)).astype(np.float32)
    return rng.standard_normal((rows, plan.row_length), np.float32) / np.float32(np.sqrt(plan.row_length))


def random_q4_k(seed: int, plan: TensorPlan, row0: int, rows: int) -> np.ndarray:
    """Random valid Q4_K rows: each 32-element sub-block is d * (sc * q - m) with q uniform in
    0..15, sc in 4..8 and m = round(7.5 sc) (so about zero-mean), d = dmin = 1 / (27.6 sqrt(k))
    (so a std near 1/sqrt(row length)). Returns [rows * k / 256, 144] bytes."""
    rng = _rng(seed, plan.name, row0, "q4_k")
    n = rows * plan.row_length // QK_K
    sc = rng.integers(4, 9, (n, 8), dtype=np.uint8)
    m = np.rint(7.5 * sc).astype(np.uint8)
    d = np.full((n, 1), 1.0 / (27.6 * np.sqrt(plan.row_length)), np.float16).view(np.uint8)
    return np.concatenate([d, d, pack_q4_k_scales(sc, m), np.frombuffer(rng.bytes(n * 128), np.uint8).reshape(n, 128)],
                          axis=1)


def pack_q4_k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Q4_K's 12 scale bytes from 6-bit scales and mins [n, 8]: sub-blocks 0..3 in the low 6 bits
    of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 as nibbles in bytes 8..11 (scale low,
    min high) with their top two bits in the top bits of bytes 0..3 (scales) and 4..7 (mins)."""
    if (sc > 63).any() or (m > 63).any():
        raise ValueError("Q4_K scales and mins are 6-bit")
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0xF) | ((m[:, 4:8] & 0xF) << 4)
    return out


def transformer_chunk(seed: int, plan: TensorPlan, row0: int, rows: int, types: Sequence[str]) -> dict[str, bytes]:
    """The chunk's bytes in each transformer type asked for."""
    if plan.kind != "lowbit":
        data = dense_values(seed, plan, row0, rows).astype("<f2").tobytes()
        return {t: data for t in types}
    out: dict[str, bytes] = {}
    if "q1_0" in types:
        out["q1_0"] = binary_blocks(seed, plan, row0, rows).tobytes()
    ternary = [t for t in types if t != "q1_0"]
    if not ternary:
        return out
    pq2 = ternary_blocks(seed, plan, row0, rows)
    if "pq2_0" in ternary:
        out["pq2_0"] = pq2.tobytes()
    if "q2_0" in ternary:
        out["q2_0"] = lowbit.pq2_0_to_q2_0(pq2).tobytes()
    if "ptq1_0" in ternary:
        out["ptq1_0"] = lowbit.pq2_0_to_ptq1_0(pq2).tobytes()
    decoded = [t for t in ternary if t in ("f16", "q8_0", "q4_k")]
    if decoded:
        dense = lowbit.dequantize(pq2, lowbit.PQ2_0).reshape(rows, plan.row_length)
        if "f16" in decoded:
            out["f16"] = dense.astype("<f2").tobytes()  # exact: codes x an fp16 scale
        for t in decoded:
            if t in _GGML_QUANTIZE:
                from bonsai_sd import _core

                out[t] = _core.ggml.quantize(_GGML_QUANTIZE[t], dense)
    return out


def text_encoder_chunk(seed: int, plan: TensorPlan, row0: int, rows: int) -> bytes:
    if plan.kind == "q4_k":
        return random_q4_k(seed, plan, row0, rows).tobytes()
    return dense_values(seed, plan, row0, rows).astype("<f4").tobytes()


# ---- files: header first, then every chunk written at its offset ---------------------------------

@dataclass
class PlannedFile:
    path: Path
    arch: str
    tensors: list[tuple[str, tuple[int, ...], str]]  # name, shape, type name
    metadata: dict[str, Any]
    offsets: dict[str, int] | None = None  # absolute data offset per tensor, once the header is written
    size: int = 0

    @property
    def partial(self) -> Path:
        return self.path.with_name(f".{self.path.name}.partial")

    def write_header(self) -> None:
        """Write the GGUF header, tensor table and padding to the partial file and size it."""
        lowbit_used = [t for t in lowbit.LOWBIT_TYPES if any(GGML_NAMES[tt] == t.name for _, _, tt in self.tensors)]
        metadata = dict(self.metadata)
        if lowbit_used:
            metadata[CONTRACT_KEY] = contract_entries(lowbit_used)
        writer = gguf.GGUFWriter(self.partial, self.arch)
        for key, value in metadata.items():
            if isinstance(value, str):
                writer.add_string(key, value)
            elif isinstance(value, list):
                writer.add_array(key, value)
            else:
                writer.add_uint64(key, int(value))
        sizes = []
        for name, shape, type_name in self.tensors:
            nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes(type_name, shape[-1])
            byte_shape = (*shape[:-1], row_bytes(type_name, shape[-1]))
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes,
                                   raw_dtype=GGMLQuantizationType(type_id(type_name)))
            sizes.append(nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        out = writer.fout[0]
        alignment = writer.data_alignment
        start = out.tell() + (-out.tell() % alignment)
        writer.close()
        self.offsets = {}
        position = start
        for (name, _, _), nbytes in zip(self.tensors, sizes):
            self.offsets[name] = position
            position += nbytes + (-nbytes % alignment)
        self.size = position
        os.truncate(self.partial, self.size)

    def commit(self) -> None:
        """Check the written header against the plan, then give the file its name."""
        contents = read_gguf(self.partial)
        found = {t.name: t.offset for t in contents.tensors}
        if found != self.offsets:
            raise RuntimeError(f"{self.partial}: the tensor offsets gguf reads differ from the planned ones")
        os.replace(self.partial, self.path)


@dataclass(frozen=True)
class Task:
    kind: str  # "transformer" | "text_encoder"
    tensor: int
    row0: int
    rows: int


def chunk_tasks(kind: str, plans: Sequence[TensorPlan]) -> list[Task]:
    tasks = []
    for i, plan in enumerate(plans):
        step = max(1, CHUNK_ELEMENTS // plan.row_length) if plan.kind != "norm" else 1
        for row0 in range(0, plan.rows, step):
            tasks.append(Task(kind, i, row0, min(step, plan.rows - row0)))
    return tasks


# Worker state, set once per process by _init_worker (read-only afterwards).
_WORKER: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _WORKER.update(state)
    _WORKER["fds"] = {}


def _fd(path: Path) -> int:
    fds = _WORKER["fds"]
    if path not in fds:
        fds[path] = os.open(path, os.O_WRONLY)
    return fds[path]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _run_task(task: Task) -> int:
    seed = _WORKER["seed"]
    if task.kind == "transformer":
        plan = _WORKER["transformer"][task.tensor]
        files: dict[str, PlannedFile] = _WORKER["transformer_files"]
        chunks = transformer_chunk(seed, plan, task.row0, task.rows, list(files))
        written = 0
        for type_name, data in chunks.items():
            f = files[type_name]
            assert f.offsets is not None
            offset = f.offsets[plan.name] + task.row0 * row_bytes(transformer_type_of(plan, type_name), plan.row_length)
            _pwrite_all(_fd(f.partial), data, offset)
            written += len(data)
        return written
    plan = _WORKER["text_encoder"][task.tensor]
    f = _WORKER["text_encoder_file"]
    data = text_encoder_chunk(seed, plan, task.row0, task.rows)
    offset = f.offsets[plan.name] + task.row0 * row_bytes(text_encoder_type_of(plan), plan.row_length)
    _pwrite_all(_fd(f.partial), data, offset)
    return len(data)


# ---- the whole set -----------------------------------------------------------------------------

def _metadata(scale: Scale, seed: int, what: str) -> dict[str, Any]:
    return {"bonsai_sd.tool": "tools/make_full_size_model.py", "bonsai_sd.synthetic": what,
            "bonsai_sd.synthetic.shapes": scale.name, "bonsai_sd.synthetic.seed": seed}


def write_vae(outdir: Path, scale: Scale, seed: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tiny_klein

    cfg = tiny_klein.TinyKleinConfig(vae_ch=scale.vae_ch)
    tensors = tiny_klein.make_vae(cfg, seed)
    path = vae_path(outdir)
    tiny_klein.write_safetensors(path, tensors, "f16", {"generator": "tools/make_full_size_model.py",
                                                        "shapes": scale.name, "seed": str(seed)},
                                 keep_f32=tiny_klein.VAE_F32_ONLY)
    return path


def make_model_set(outdir: Path, types: Iterable[str] = TRANSFORMER_TYPES, scale: Scale = FULL, seed: int = 0,
                   jobs: int | None = None, force: bool = False, text_encoder: bool = True,
                   vae: bool = True) -> dict[str, Path]:
    """Write the set (skipping complete files unless `force`); returns {component: path}."""
    outdir.mkdir(parents=True, exist_ok=True)
    types = list(dict.fromkeys(types))
    unknown = [t for t in types if t not in TRANSFORMER_TYPES]
    if unknown:
        raise ValueError(f"unknown transformer type(s) {unknown}; known: {', '.join(TRANSFORMER_TYPES)}")
    result: dict[str, Path] = {}
    dit_plans = transformer_tensors(scale.dit)
    llm_plans = text_encoder_tensors(scale.llm)

    dit_files: dict[str, PlannedFile] = {}
    for t in types:
        path = transformer_path(outdir, t)
        result[f"transformer-{t}"] = path
        if path.exists() and not force:
            continue
        weights = "binary" if t == "q1_0" else "ternary"
        meta = {**_metadata(scale, seed, f"random {weights} FLUX.2 klein transformer"),
                "bonsai_sd.weights": weights, "bonsai_sd.lowbit_type": GGML_NAMES[t]}
        dit_files[t] = PlannedFile(path, "flux2", [(p.name, p.shape, transformer_type_of(p, t)) for p in dit_plans],
                                   meta)
    llm_file = None
    if text_encoder:
        path = text_encoder_path(outdir)
        result["text_encoder"] = path
        if force or not path.exists():
            llm_file = PlannedFile(path, "qwen3", [(p.name, p.shape, text_encoder_type_of(p)) for p in llm_plans],
                                   _metadata(scale, seed, "random Qwen3 text encoder"))

    tasks = []
    if dit_files:
        tasks += chunk_tasks("transformer", dit_plans)
    if llm_file:
        tasks += chunk_tasks("text_encoder", llm_plans)
    planned = [*dit_files.values(), *([llm_file] if llm_file else [])]
    try:
        for f in planned:
            f.write_header()
        if tasks:
            total = sum(f.size for f in planned)
            state = {"seed": seed, "transformer": dit_plans, "text_encoder": llm_plans,
                     "transformer_files": dit_files, "text_encoder_file": llm_file}
            # Big tasks first, so the pool does not end on one long straggler.
            tasks.sort(key=lambda t: -t.rows * (dit_plans if t.kind == "transformer" else llm_plans)[t.tensor].row_length)
            started, done, last = time.monotonic(), 0, 0.0
            workers = jobs or os.cpu_count() or 1
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(state,)) as pool:
                for written in pool.map(_run_task, tasks, chunksize=4):
                    done += written
                    now = time.monotonic()
                    if now - last > 5:
                        log.info("%.1f of %.1f GB written (%.0f s)", done / 1e9, total / 1e9, now - started)
                        last = now
            log.info("%d files, %.1f GB in %.0f s with %d workers", len(planned), total / 1e9,
                     time.monotonic() - started, workers)
        for f in planned:
            f.commit()
    except BaseException:
        for f in planned:
            f.partial.unlink(missing_ok=True)
        raise
    if vae:
        path = vae_path(outdir)
        result["vae"] = path
        if force or not path.exists():
            write_vae(outdir, scale, seed)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--types", default=",".join(TRANSFORMER_TYPES),
                        help=f"transformer types (default: all of {','.join(TRANSFORMER_TYPES)}); '' for none")
    parser.add_argument("--no-text-encoder", action="store_true")
    parser.add_argument("--no-vae", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds; for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-j", "--jobs", type=int, help="worker processes (default: every core)")
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="make_full_size_model: %(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer's chatter about each file
    types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
    try:
        files = make_model_set(args.outdir, types, TINY if args.tiny else FULL, args.seed, args.jobs, args.force,
                               text_encoder=not args.no_text_encoder, vae=not args.no_vae)
    except (ValueError, OSError) as e:
        print(f"make_full_size_model: {e}", file=sys.stderr)
        return 1
    for component, path in files.items():
        print(f"{component}: {path} ({path.stat().st_size / 1e9:.3f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
