"""The torch zip reader (no torch) and the fixture writer, cross-checked against real torch when
it is installed (the tests that need it skip cleanly otherwise)."""

from __future__ import annotations


import numpy as np
import pytest

from bonsai_sd.convert import ConvertError
from bonsai_sd.convert.torchzip import TorchTensor, load_state_dict

import bonsai_packs as bp


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.W_q": rng.integers(0, 256, (48, 40), dtype=np.uint8),
        "a.scales": rng.standard_normal((3, 40)).astype("<f4"),
        "a.metadata": np.arange(12, dtype="<i4"),
        "norm.weight": rng.integers(0, 1 << 16, (128,), dtype=np.uint16).astype("<u2"),  # bf16 bits
        "big": np.arange(70000, dtype="<f2"),
    }


def test_writer_and_reader_round_trip(tmp_path):
    path = tmp_path / "state_dict.pt"
    arrays = _arrays()
    path.write_bytes(bp.torch_zip_bytes(arrays))
    state = load_state_dict(path)
    assert list(state) == list(arrays)
    dtypes = {"a.W_q": "U8", "a.scales": "F32", "a.metadata": "I32", "norm.weight": "BF16", "big": "F16"}
    for name, array in arrays.items():
        t = state[name]
        assert isinstance(t, TorchTensor) and t.dtype == dtypes[name] and t.shape == array.shape
        assert np.array_equal(t.read(), array)
    assert np.array_equal(state["a.W_q"].read_rows(5, 9), arrays["a.W_q"][5:9])


def _torch():
    return pytest.importorskip("torch")


def test_torch_loads_what_the_fixture_writer_writes(tmp_path):
    torch_mod = _torch()
    path = tmp_path / "state_dict.pt"
    arrays = _arrays()
    path.write_bytes(bp.torch_zip_bytes(arrays))
    loaded = torch_mod.load(path, weights_only=True)
    assert list(loaded) == list(arrays)
    assert loaded["norm.weight"].dtype == torch_mod.bfloat16
    for name, array in arrays.items():
        tensor = loaded[name]
        raw = tensor.view(torch_mod.int16).numpy().view("<u2") if tensor.dtype == torch_mod.bfloat16 else tensor.numpy()
        assert np.array_equal(raw, array), name


def test_reader_reads_what_torch_save_writes(tmp_path):
    torch_mod = _torch()
    base = torch_mod.arange(24 * 10, dtype=torch_mod.float32).reshape(24, 10)
    state = {
        "plain": base.clone(),
        "transposed": base.t(),  # a non-contiguous view: strides (1, 10)
        "offset": base[3:7],  # a view into the middle of a storage
        "bf16": (base / 7).to(torch_mod.bfloat16),
        "u8": torch_mod.arange(200, dtype=torch_mod.uint8).reshape(20, 10),
        "ints": torch_mod.tensor([5, -2, 7], dtype=torch_mod.int32),
    }
    path = tmp_path / "saved.pt"
    torch_mod.save(state, path)
    got = load_state_dict(path)
    assert np.array_equal(got["plain"].read(), base.numpy())
    assert not got["transposed"].is_contiguous
    assert np.array_equal(got["transposed"].read(), base.t().contiguous().numpy())
    assert np.array_equal(got["transposed"].read_rows(2, 5), base.t()[2:5].numpy())
    assert np.array_equal(got["offset"].read(), base[3:7].numpy())
    assert np.array_equal(got["bf16"].read(), state["bf16"].view(torch_mod.int16).numpy().view("<u2"))
    assert np.array_equal(got["u8"].read(), state["u8"].numpy())
    assert got["ints"].read().tolist() == [5, -2, 7]


def test_reader_refuses_unknown_globals(tmp_path):
    torch_mod = _torch()
    path = tmp_path / "model.pt"
    torch_mod.save({"layer": torch_mod.nn.Linear(2, 2)}, path)  # pickles a module class
    with pytest.raises(ConvertError, match="refers to torch.nn.modules.linear.Linear, which this reader does not load"):
        load_state_dict(path)
