"""Issue 3 (Python part): the NumPy reference codecs of Q1_0, Q2_0, PQ2_0 and PTQ1_0.

Expected bytes of the hand-written vectors are derived in the comments from the layout
specification (DESIGN §4), never by calling the encoder.
"""

from __future__ import annotations

import numpy as np
import pytest

from bonsai_sd import lowbit
from bonsai_sd.lowbit import LOWBIT_TYPES, PQ2_0, PTQ1_0, Q1_0, Q2_0, TERNARY_TYPES

FP16_TWO = [0x00, 0x40]  # 2.0 as IEEE binary16 is 0x4000, stored little-endian


def test_type_table():
    assert [(t.name, t.type_id, t.block_elements, t.block_bytes) for t in LOWBIT_TYPES] == [
        ("Q1_0", 41, 128, 18), ("Q2_0", 42, 64, 18), ("PQ2_0", 142, 128, 34), ("PTQ1_0", 143, 128, 28)]
    assert [t.bits_per_weight for t in LOWBIT_TYPES] == [1.125, 2.25, 2.125, 1.75]
    assert PTQ1_0.contract_entry == "143:ptq1_0:128:28:1"
    assert lowbit.lowbit_type("ptq1_0") is PTQ1_0 and lowbit.lowbit_type(42) is Q2_0
    with pytest.raises(KeyError, match="not a low-bit type"):
        lowbit.lowbit_type("q4_0")


def test_ptq1_0_hand_written_vector():
    # One block, d = 2.0, every element 0 (trit 1) except:
    #   x[0] = +2 (trit 2), x[16] = -2 (trit 0), x[5] = -2, x[79] = +2,
    #   x[80] = +2, x[81] = -2, x[119] = -2, x[121] = -2, x[127] = +2.
    x = np.zeros(128, np.float32)
    x[[0, 79, 80, 127]] = 2.0
    x[[16, 5, 81, 119, 121]] = -2.0
    # A byte's five trits t0..t4 (t0 most significant) form v = 81 t0 + 27 t1 + 9 t2 + 3 t3 + t4,
    # stored as ceil(v * 256 / 243).
    # All-zero byte: trits (1,1,1,1,1), v = 121, ceil(30976 / 243) = ceil(127.47) = 128.
    expected = [128] * 26
    # qs[0] holds elements 0, 16, 32, 48, 64: trits (2,0,1,1,1), v = 162+0+9+3+1 = 175,
    # ceil(44800 / 243) = ceil(184.36) = 185.
    expected[0] = 185
    # qs[5] holds elements 5, 21, 37, 53, 69: trits (0,1,1,1,1), v = 27+9+3+1 = 40, ceil(10240/243) = 43.
    expected[5] = 43
    # qs[15] holds elements 15, 31, 47, 63, 79: trits (1,1,1,1,2), v = 81+27+9+3+2 = 122,
    # ceil(31232 / 243) = ceil(128.53) = 129.
    expected[15] = 129
    # qs[16] holds elements 80, 88, 96, 104, 112: trits (2,1,1,1,1), v = 162+27+9+3+1 = 202,
    # ceil(51712 / 243) = ceil(212.81) = 213.
    expected[16] = 213
    # qs[17] holds elements 81, 89, 97, 105, 113: trits (0,1,1,1,1), v = 40 -> 43.
    expected[17] = 43
    # qs[23] holds elements 87, 95, 103, 111, 119: trits (1,1,1,1,0), v = 81+27+9+3 = 120,
    # ceil(30720 / 243) = ceil(126.42) = 127.
    expected[23] = 127
    # qh[0] holds elements 120, 122, 124, 126 and a zero fifth trit: (1,1,1,1,0), v = 120 -> 127.
    expected[24] = 127
    # qh[1] holds elements 121, 123, 125, 127: (0,1,1,2,0), v = 0+27+9+6 = 42,
    # ceil(10752 / 243) = ceil(44.25) = 45.
    expected[25] = 45
    expected += FP16_TWO  # d comes last in PTQ1_0

    got = lowbit.quantize(x, PTQ1_0)
    assert got.tolist() == expected
    assert np.array_equal(lowbit.dequantize(np.array(expected, np.uint8), PTQ1_0), x)


def test_ptq1_0_byte_trick_reads_every_trit():
    # For every 5-trit value v, byte = ceil(v * 256 / 243) and trit n (most significant first)
    # must read back as ((byte * 3^n) mod 256) * 3 >> 8: the decoder's multiply-and-shift.
    for v in range(243):
        byte = -(-v * 256 // 243)
        digits = [(v // 3 ** (4 - n)) % 3 for n in range(5)]
        assert [(((byte * 3 ** n) & 0xFF) * 3) >> 8 for n in range(5)] == digits, v


def test_q2_0_and_pq2_0_hand_written_vectors():
    # Elements 0..3 = +d, 0, -d, 0 -> codes 2, 1, 0, 1 at bits 0, 2, 4, 6 of byte 0:
    # 2 + (1 << 2) + (0 << 4) + (1 << 6) = 70. Every other group of four is zero: codes 1,1,1,1 = 0x55.
    x = np.zeros(128, np.float32)
    x[0], x[2] = 2.0, -2.0
    q2 = lowbit.quantize(x, Q2_0)
    assert q2.tolist() == FP16_TWO + [70] + [0x55] * 15 + [0, 0] + [0x55] * 16  # 2nd block: all zero, d = 0
    pq2 = lowbit.quantize(x, PQ2_0)
    assert pq2.tolist() == FP16_TWO + [70] + [0x55] * 31


def test_q1_0_hand_written_vector():
    # d = mean |x| = 2; element j is bit (j % 8) of byte j / 8; x >= 0 -> 1.
    x = np.full(128, -2.0, np.float32)
    x[[0, 9, 127]] = 2.0
    assert lowbit.quantize(x, Q1_0).tolist() == FP16_TWO + [0x01, 0x02] + [0] * 13 + [0x80]


def _fp16_exact_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """Scales over the whole fp16 range: subnormals, both extremes, random normals, both signs."""
    random_bits = rng.integers(0x0001, 0x7BFF, n, dtype=np.uint16)  # positive finite non-zero halves
    scales = random_bits.view(np.float16).astype(np.float32)
    scales[:4] = [np.float16(65504), np.float16(6.0e-8), np.float16(6.1035156e-05), 1.0]
    return scales


@pytest.mark.parametrize("t", LOWBIT_TYPES, ids=lambda t: t.name)
def test_exact_inputs_round_trip_bit_exactly(t):
    rng = np.random.default_rng(1234 + t.type_id)
    rows, cols = 16, 1024
    n_blocks = rows * cols // t.block_elements
    scales = _fp16_exact_scales(rng, n_blocks)
    if t == Q1_0:
        signs = rng.choice([-1.0, 1.0], (n_blocks, t.block_elements))
    else:
        signs = rng.choice([-1.0, 0.0, 1.0], (n_blocks, t.block_elements))
        signs[:, 0] = 1.0  # a non-zero element per block, so d = s exactly
    x = (signs * scales[:, None]).astype(np.float32).reshape(rows, cols)

    q = lowbit.quantize(x, t)
    assert q.shape == (rows, t.row_bytes(cols))
    assert np.array_equal(lowbit.block_scales(q, t).astype(np.float32), scales)
    back = lowbit.dequantize(q, t)
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.array_equal(back, x)
    assert np.array_equal(lowbit.quantize(back, t), q)  # and the bytes reproduce


def _scalar_reference(block: np.ndarray, t: lowbit.LowbitType) -> tuple[np.float16, list[int]]:
    """The reference semantics, one element at a time in float32."""
    if t == Q1_0:
        total = np.float32(0)
        for v in block:
            total = np.float32(total + np.float32(abs(v)))
        return np.float16(total / np.float32(len(block))), [int(v >= 0) for v in block]
    d = np.float32(max(abs(v) for v in block))
    codes = []
    for v in block:
        if d == 0:
            codes.append(1)
            continue
        r = np.float32(v / d)
        q = int(np.floor(abs(float(r)) + 0.5)) * (1 if r >= 0 else -1)  # round half away from zero
        codes.append(min(max(q + 1, 0), 3))
    return np.float16(d), codes


@pytest.mark.parametrize("t", LOWBIT_TYPES, ids=lambda t: t.name)
def test_general_float_input_matches_scalar_reference(t):
    rng = np.random.default_rng(7 + t.type_id)
    x = rng.standard_normal(8 * 128).astype(np.float32)
    x[:4] = [0.5, -0.5, 0.25, -0.25]  # x / d = +-0.5 exactly once d = 1 (set below): ties round away
    x[4] = 1.0
    x[5:128] = np.clip(x[5:128], -0.99, 0.99)
    x[256:384] = 0.0  # an all-zero block
    codes, d = lowbit.decode(lowbit.quantize(x, t), t)
    for b, block in enumerate(x.reshape(-1, t.block_elements)):
        ref_d, ref_codes = _scalar_reference(block, t)
        assert d[b].tobytes() == ref_d.tobytes(), (t.name, b)
        assert codes[b].tolist() == ref_codes, (t.name, b)
    if t != Q1_0:
        assert codes[0, :4].tolist() == [2, 0, 1, 1]


def _random_ternary_blocks(t: lowbit.LowbitType, n_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 3, (n_blocks, t.block_elements))
    d = rng.integers(0, 0x7C00, n_blocks, dtype=np.uint16).view(np.float16)  # any finite d >= 0
    d[::3] = -d[::3]
    if t == Q2_0:  # pairs of 64-blocks share d: one 128-element group
        d = np.repeat(d[::2], 2)
    return lowbit.encode(t, codes, d)


@pytest.mark.parametrize("src", TERNARY_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("dst", TERNARY_TYPES, ids=lambda t: t.name)
def test_transcodes_are_lossless(src, dst):
    blocks = _random_ternary_blocks(src, 64 if src == Q2_0 else 32, seed=src.type_id * 1000 + dst.type_id)
    out = lowbit.transcode(blocks, src, dst)
    assert out.shape[1] == dst.block_bytes
    assert np.array_equal(lowbit.dequantize(out, dst).reshape(-1), lowbit.dequantize(blocks, src).reshape(-1))
    assert np.array_equal(lowbit.transcode(out, dst, src), blocks)


def test_transcode_layouts_are_byte_shuffles():
    pq = _random_ternary_blocks(PQ2_0, 4, seed=5)
    q2 = lowbit.pq2_0_to_q2_0(pq)
    for i in range(4):  # d, then the first 16 code bytes; d again, then the next 16
        assert q2[2 * i].tobytes() == pq[i, :18].tobytes()
        assert q2[2 * i + 1].tobytes() == pq[i, :2].tobytes() + pq[i, 18:].tobytes()
    ptq = lowbit.pq2_0_to_ptq1_0(pq)
    assert ptq[:, 26:].tobytes() == pq[:, :2].tobytes()  # same d, moved to the end


def test_transcodes_refuse_what_does_not_fit():
    codes = np.ones((2, 128), np.uint8)
    codes[1, 77] = 3
    pq = lowbit.encode(PQ2_0, codes, np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="block 1 has a code 3"):
        lowbit.transcode(pq, PQ2_0, PTQ1_0)
    with pytest.raises(ValueError, match="code 3"):
        lowbit.encode(PTQ1_0, codes, np.array([1.0, 1.0]))
    q2 = lowbit.encode(Q2_0, np.ones((2, 64), np.uint8), np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="blocks 0 and 1 have different scales"):
        lowbit.transcode(q2, Q2_0, PQ2_0)
    with pytest.raises(ValueError, match="no lossless transcode"):
        lowbit.transcode(pq, PQ2_0, Q1_0)


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="not a multiple of 128"):
        lowbit.quantize(np.zeros((2, 192), np.float32), PQ2_0)
    with pytest.raises(ValueError, match="not a whole number of 28-byte blocks"):
        lowbit.dequantize(np.zeros(30, np.uint8), PTQ1_0)
