"""Issue 3 (Python part): GGUF files with the four low-bit types, the layout contract, and
`bonsai-sd info FILE`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ggufraw import RawTensor, write_gguf as write_raw_gguf

from bonsai_sd import ggufio, lowbit
from bonsai_sd.ggufio import CONTRACT_KEY, GGUFError, read_gguf, write_gguf
from bonsai_sd.lowbit import LOWBIT_TYPES, PQ2_0, PTQ1_0, Q1_0, Q2_0


def test_gguf_py_learns_the_types():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for t in LOWBIT_TYPES:
        qtype = GGMLQuantizationType(t.type_id)
        assert qtype.name == t.name
        assert GGML_QUANT_SIZES[qtype] == (t.block_elements, t.block_bytes)
    ggufio.register_gguf_types()  # idempotent
    assert [m.value for m in GGMLQuantizationType].count(142) == 1


def _ternary_rows(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    scales = rng.uniform(0.01, 4.0, (rows, cols // 128)).astype(np.float16).astype(np.float32)
    codes = rng.integers(-1, 2, (rows, cols)).astype(np.float32)
    codes[:, ::128] = 1.0
    return (codes.reshape(rows, -1, 128) * scales[..., None]).reshape(rows, cols)


def _all_types_file(path, rng):
    tensors = {}
    values = {}
    for i, t in enumerate(LOWBIT_TYPES):
        x = _ternary_rows(rng, 6, 384)
        if t == Q1_0:
            x = np.where(x >= 0, 1.0, -1.0).astype(np.float32) * np.abs(x).max(axis=1, keepdims=True)
        tensors[f"blk.{i}.{t.name.lower()}.weight"] = (t.type_id, lowbit.quantize(x, t), x.shape)
        values[f"blk.{i}.{t.name.lower()}.weight"] = x
    tensors["norm.scale"] = (0, np.linspace(-1, 1, 128, dtype=np.float32), (128,))
    write_gguf(path, tensors, {"general.name": "all four", "test.count": 4})
    return tensors, values


def test_write_read_round_trip_all_types(tmp_path):
    path = tmp_path / "all.gguf"
    tensors, values = _all_types_file(path, np.random.default_rng(3))
    contents = read_gguf(path)
    assert contents.metadata[CONTRACT_KEY] == ["41:q1_0:128:18:1", "42:q2_0:64:18:1",
                                              "142:pq2_0:128:34:1", "143:ptq1_0:128:28:1"]
    assert contents.metadata["general.name"] == "all four" and contents.metadata["test.count"] == 4
    assert [t.name for t in contents.tensors] == list(tensors)
    for entry in contents.tensors:
        type_id, data, shape = tensors[entry.name]
        assert (entry.type_id, entry.shape) == (type_id, tuple(shape))
        assert entry.offset % 32 == 0
        raw = contents.read(entry)
        assert raw.tobytes() == data.tobytes()
        if entry.name in values:
            t = lowbit.lowbit_type(type_id)
            assert np.array_equal(lowbit.dequantize(raw.reshape(shape[0], -1), t), values[entry.name])


def test_contract_lists_only_the_types_used(tmp_path):
    x = _ternary_rows(np.random.default_rng(0), 2, 128)
    write_gguf(tmp_path / "one.gguf", {"w": (PTQ1_0.type_id, lowbit.quantize(x, PTQ1_0), x.shape)})
    assert read_gguf(tmp_path / "one.gguf").metadata[CONTRACT_KEY] == ["143:ptq1_0:128:28:1"]
    write_gguf(tmp_path / "none.gguf", {"w": (1, x.astype(np.float16), x.shape)})
    assert CONTRACT_KEY not in read_gguf(tmp_path / "none.gguf").metadata


def test_our_writer_agrees_with_an_independent_raw_writer(tmp_path):
    x = _ternary_rows(np.random.default_rng(1), 4, 256)
    data = lowbit.quantize(x, PQ2_0)
    raw = write_raw_gguf(tmp_path / "raw.gguf", [RawTensor("w", (256, 4), PQ2_0.type_id, data.tobytes())],
                         {CONTRACT_KEY: PQ2_0.contract_entry})
    ours = read_gguf(raw)
    assert ours.tensors[0].shape == (4, 256) and ours.tensors[0].type_name == "PQ2_0"
    assert ours.read(ours.tensors[0]).tobytes() == data.tobytes()


def _raw_file(tmp_path, type_id, nbytes, contract=None, then_another=True, row=256):
    tensors = [RawTensor("blk.0.w", (row, 4), type_id, bytes(nbytes))]
    if then_another:
        tensors.append(RawTensor("blk.1.w", (4,), 0, bytes(16)))
    kv = {CONTRACT_KEY: contract} if contract else {}
    return write_raw_gguf(tmp_path / "f.gguf", tensors, kv)


def test_layout_contract_rules(tmp_path):
    # Without a contract, the published layouts are assumed (PrismML's own GGUFs have none).
    assert read_gguf(_raw_file(tmp_path, PQ2_0.type_id, 4 * 2 * 34)).tensors[0].type_name == "PQ2_0"
    # With one, every used id >= 100 must be declared, and declared as we read it.
    path = _raw_file(tmp_path, PQ2_0.type_id, 4 * 2 * 34, contract="41:q1_0:128:18:1")
    with pytest.raises(GGUFError, match=r"'blk.0.w' has type PQ2_0 \(id 142\) but the file's bonsai_sd.types does "
                                        r"not declare it"):
        read_gguf(path)
    path = _raw_file(tmp_path, PQ2_0.type_id, 4 * 2 * 34, contract="142:pq2_0:128:34:2")
    with pytest.raises(GGUFError, match="declares '142:pq2_0:128:34:2'"):
        read_gguf(path)
    path = _raw_file(tmp_path, PQ2_0.type_id, 4 * 2 * 34, contract="142:pq2_0:128:34:1")
    assert read_gguf(path).tensors[0].type_name == "PQ2_0"


def test_legacy_128_element_q2_0_at_id_42_is_refused(tmp_path):
    # PrismML's old "Q2_0": 34 bytes per 128 elements at id 42. A 4 x 1024 tensor of it is 1088 bytes
    # (a whole number of 32-byte alignment units), where Q2_0 (18 per 64) needs 1152.
    path = _raw_file(tmp_path, Q2_0.type_id, 4 * 8 * 34, row=1024)
    with pytest.raises(GGUFError, match="'blk.0.w' has type id 42 but only 1088 bytes: the size of PrismML's legacy"):
        read_gguf(path)


def test_truncated_file_names_the_tensor(tmp_path):
    path = _raw_file(tmp_path, Q1_0.type_id, 4 * 2 * 18, then_another=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GGUFError, match=r"tensor 'blk.0.w' needs 144 bytes at offset \d+ but only 60 are there \(truncated file\?\)"):
        read_gguf(path)


def test_unknown_type_id_names_the_tensor(tmp_path):
    with pytest.raises(GGUFError, match="tensor 'blk.0.w' has unknown ggml type id 77"):
        read_gguf(_raw_file(tmp_path, 77, 64))


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    out = tmp_path / "out.gguf"
    plan = [ggufio.PlannedTensor("a", (2, 128), PQ2_0.type_id), ggufio.PlannedTensor("b", (4,), 0)]
    with pytest.raises(RuntimeError, match="boom"):
        with ggufio.GGUFStreamWriter(out, "test", plan, {}) as w:
            w.write("a", np.zeros(68, np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GGUFError, match="'b' was not written completely"):
        with ggufio.GGUFStreamWriter(out, "test", plan, {}) as w:
            w.write("a", np.zeros(68, np.uint8))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(GGUFError, match="writing 'b' but the next tensor is 'a'"):
        with ggufio.GGUFStreamWriter(out, "test", plan, {}) as w:
            w.write("b", np.zeros(16, np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_info_prints_tensors_sizes_bpw_and_metadata(tmp_path):
    path = tmp_path / "all.gguf"
    _all_types_file(path, np.random.default_rng(4))
    proc = subprocess.run([sys.executable, "-m", "bonsai_sd", "info", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  blk.")}
    # name, type, shape "6 x 384", bytes, bits per weight
    assert rows["blk.0.q1_0.weight"][1:] == ["Q1_0", "6", "x", "384", "324", "1.1250"]
    assert rows["blk.1.q2_0.weight"][1:] == ["Q2_0", "6", "x", "384", "648", "2.2500"]
    assert rows["blk.2.pq2_0.weight"][1:] == ["PQ2_0", "6", "x", "384", "612", "2.1250"]
    assert rows["blk.3.ptq1_0.weight"][1:] == ["PTQ1_0", "6", "x", "384", "504", "1.7500"]
    assert "bonsai_sd.types = ['41:q1_0:128:18:1', '42:q2_0:64:18:1', '142:pq2_0:128:34:1', '143:ptq1_0:128:28:1']" \
        in out
    assert "general.name = 'all four'" in out
    total = [line.split() for line in out.splitlines() if line.strip().startswith("total")][0]
    assert total[1:] == ["5", f"{4 * 6 * 384 + 128:,}", f"{324 + 648 + 612 + 504 + 512:,}",
                         f"{8 * (324 + 648 + 612 + 504 + 512) / (4 * 6 * 384 + 128):.4f}"]


def test_info_on_a_bad_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    proc = subprocess.run([sys.executable, "-m", "bonsai_sd", "info", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr
