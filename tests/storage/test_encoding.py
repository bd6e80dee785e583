"""Weight-code storage (fixed_bit, split_coding, decode_numpy): round trips, converter_lite's size rule, byte layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_reference import fixed_sizes

from ptq_core.storage.decode_numpy import decode
from ptq_core.storage.encoded import EncodedTensor, effective_bits
from ptq_core.storage.fixed_bit import encode_fixed, encode_kind
from ptq_core.storage.split_coding import encode_split

WIDTHS = range(1, 17)


def _lo_hi(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _kinds(bits: int) -> tuple[str, ...]:
    return ("raw", "bitpack", "index", "sparse") if bits in (8, 16) else ("bitpack", "index", "sparse")


def _assert_round_trip(enc: EncodedTensor, q: np.ndarray) -> None:
    out = decode(enc)
    assert out.dtype == np.int32
    assert out.shape == q.shape
    np.testing.assert_array_equal(out, q)


# ---------------------------------------------------------------------------------------------
# reference: a literal port of converter_lite's TensorCompressor size logic (loops, small inputs)


def _reference_sizes(q: np.ndarray, bits: int, zps: list[int]) -> dict[str, int]:
    data = [int(v) for v in q.reshape(-1)]
    n = len(data)
    u = len(set(data))
    ub = math.ceil(math.log2(u))
    per_channel = n // len(zps)
    best_len, best_k, best_nnz = None, 0, 0
    for k in range(2, 11):
        nnz, prev = 0, -1
        for i, v in enumerate(data):
            if v != zps[i // per_channel] or i - prev >= (1 << k):
                nnz += 1
                prev = i
        length = nnz * k + nnz * ub
        if best_len is None or length < best_len:
            best_len, best_k, best_nnz = length, k, nnz
    return {
        "raw": math.ceil(bits * n / 8),
        "index": math.ceil((bits + bits * u + ub * n) / 8),
        "sparse": math.ceil((8 + 32 + bits + bits * u + ub * best_nnz + best_k * best_nnz) / 8),
        "coord_bits": best_k,
        "nnz": best_nnz,
    }


def _expected_kind(sizes: dict[str, int], bits: int) -> str:
    best = min(sizes["raw"], sizes["index"], sizes["sparse"])
    if sizes["raw"] == best:
        return "raw" if bits in (8, 16) else "bitpack"
    return "index" if sizes["index"] == best else "sparse"


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("bits", WIDTHS)
def test_every_kind_round_trips_random_codes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = _lo_hi(bits)
    for shape in [(1,), (7,), (13,), (3, 5, 4), (1001,)]:
        q = rng.integers(lo, hi + 1, size=shape, dtype=np.int32)
        zp = rng.integers(lo, hi + 1, size=1)
        for kind in _kinds(bits):
            _assert_round_trip(encode_kind(q, bits, zp, kind=kind), q)
        _assert_round_trip(encode_fixed(q, bits, zp), q)


@pytest.mark.parametrize("bits", WIDTHS)
def test_round_trip_edge_cases(bits: int) -> None:
    rng = np.random.default_rng(100 + bits)
    lo, hi = _lo_hi(bits)
    every_value = rng.permutation(np.arange(lo, hi + 1))  # u = 2^b: the count field wraps to 0
    cases = {
        "all equal (u=1)": np.full((4, 9), hi, dtype=np.int16),
        "all equal to zp": np.zeros(37, dtype=np.int64),
        "every value": every_value,
        "every value, ragged": np.concatenate([every_value, every_value[:3]]),
        "single element": np.array([lo]),
        "extremes only": np.array([lo, hi] * 5 + [lo]),
    }
    for name, q in cases.items():
        for kind in _kinds(bits):
            enc = encode_kind(q, bits, np.zeros(1, np.int32), kind=kind)
            out = decode(enc)
            assert np.array_equal(out, q), (name, kind)


def test_count_wraps_to_zero_in_the_stream() -> None:
    q = np.arange(-4, 4)  # u = 8 = 2^3
    enc = encode_kind(q, 3, kind="index")
    assert enc.arrays["stream"][0] >> 5 == 0  # the leading 3-bit field u = 8 is stored as 0
    _assert_round_trip(enc, q)


def test_per_channel_zero_points_sparse() -> None:
    rng = np.random.default_rng(7)
    zps = np.array([-3, 0, 5, 1], dtype=np.int32)
    q = np.repeat(zps, 500).reshape(4, 500)
    hits = rng.random(q.shape) < 0.01
    q = np.where(hits, rng.integers(-8, 8, size=q.shape), q)
    enc = encode_fixed(q, 4, zps)
    assert enc.kind == "sparse"
    assert enc.arrays["zero_points"].tolist() == zps.tolist()
    _assert_round_trip(enc, q)
    # the same codes judged against a single zero point are not sparse at all
    assert encode_fixed(q, 4, np.zeros(1, np.int32)).kind != "sparse"


def test_shared_zero_point_is_stored_once() -> None:
    q = np.zeros((3, 100), dtype=np.int8)
    q[1, 7] = 5
    enc = encode_kind(q, 8, np.zeros(3, np.int32), kind="sparse")
    assert enc.arrays["zero_points"].shape == (1,)
    _assert_round_trip(enc, q)


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_mostly_zero_point_picks_sparse(bits: int) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = _lo_hi(bits)
    q = np.full(4000, 1, dtype=np.int32)
    idx = rng.choice(q.size, size=20, replace=False)
    q[idx] = rng.integers(lo, hi + 1, size=20)
    enc = encode_fixed(q, bits, np.array([1]))
    assert enc.kind == "sparse"
    _assert_round_trip(enc, q)


@pytest.mark.parametrize("bits", [3, 5, 8, 11, 16])
def test_few_distinct_values_picks_index(bits: int) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = _lo_hi(bits)
    q = rng.choice(np.array([lo, 0, hi]), size=(64, 31))
    enc = encode_fixed(q, bits, np.zeros(1, np.int32))
    assert enc.kind == "index"
    assert enc.meta["ub"] == 2
    _assert_round_trip(enc, q)


def test_long_zero_runs_force_entries() -> None:
    q = np.zeros(5000, dtype=np.int32)
    q[[0, 2500, 4999]] = [3, -2, 1]
    sizes = fixed_sizes(q, 4, np.zeros(1))
    ref = _reference_sizes(q, 4, [0])
    assert sizes["nnz"] == ref["nnz"] > 3  # forced entries in the long gaps and the tail
    assert sizes["coord_bits"] == ref["coord_bits"]
    _assert_round_trip(encode_kind(q, 4, kind="sparse"), q)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(1, 16),
    n_channels=st.sampled_from([1, 2, 3]),
    per_channel=st.integers(1, 60),
    density=st.floats(0.0, 1.0),
    distinct=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_choice_follows_converter_lite_rule(
    bits: int, n_channels: int, per_channel: int, density: float, distinct: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    lo, hi = _lo_hi(bits)
    pool = rng.integers(lo, hi + 1, size=distinct)
    zps = rng.choice(pool, size=n_channels)
    q = np.repeat(zps, per_channel)
    mask = rng.random(q.size) < density
    q = np.where(mask, rng.choice(pool, size=q.size), q)
    ref = _reference_sizes(q, bits, zps.tolist())
    sizes = fixed_sizes(q, bits, zps)
    for key in ("raw", "index", "sparse", "coord_bits", "nnz"):
        assert sizes[key] == ref[key], key
    enc = encode_fixed(q, bits, zps)
    assert enc.kind == _expected_kind(ref, bits)
    if enc.kind in ("index", "sparse"):
        assert enc.arrays["stream"].nbytes == ref[enc.kind]  # the stream is exactly the measured size
    _assert_round_trip(enc, q)


@pytest.mark.parametrize(
    ("bits", "q", "equal", "expected"),
    [
        (2, [0], ("raw", "index"), "bitpack"),
        (4, [0] * 11 + [5] + [0] * 8 + [4, 0, 0, 0, 4, 0, 0, 0, 0], ("index", "sparse"), "index"),
        (2, [0, 1, 0, 0, 0, -1] + [0] * 5 + [1] + [0] * 21 + [1, 0, 0, 0, 0], ("raw", "sparse"), "bitpack"),
    ],
)
def test_ties_prefer_raw_then_index(bits: int, q: list[int], equal: tuple[str, str], expected: str) -> None:
    arr = np.array(q)
    sizes = fixed_sizes(arr, bits, np.zeros(1))
    assert sizes[equal[0]] == sizes[equal[1]] == min(sizes["raw"], sizes["index"], sizes["sparse"])
    assert encode_fixed(arr, bits, np.zeros(1)).kind == expected


# ---------------------------------------------------------------------------------------------
# sizes


@pytest.mark.parametrize("bits", WIDTHS)
def test_uniform_codes_cost_b_bits(bits: int) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = _lo_hi(bits)
    n = 100_000
    q = rng.integers(lo, hi + 1, size=n)
    enc = encode_fixed(q, bits, np.zeros(1, np.int32))
    assert enc.kind == ("raw" if bits in (8, 16) else "bitpack")
    assert abs(enc.nbytes / (n * bits / 8) - 1) < 0.01
    assert abs(effective_bits(enc) - bits) < 0.01 * bits
    assert enc.nbytes == math.ceil(n * bits / 8)


def test_enable_encode_false_stores_raw() -> None:
    q8 = np.zeros(100, dtype=np.int32)  # would compress to almost nothing
    enc = encode_fixed(q8, 8, np.zeros(1), enable_encode=False)
    assert enc.kind == "raw" and enc.arrays["data"].dtype == np.int8
    enc16 = encode_fixed(q8.reshape(10, 10), 16, np.zeros(1), enable_encode=False)
    assert enc16.kind == "raw" and enc16.arrays["data"].dtype == np.int16 and enc16.arrays["data"].shape == (10, 10)
    with pytest.raises(ValueError, match="8 or 16"):
        encode_fixed(q8, 4, np.zeros(1), enable_encode=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.array([8]), 4, np.zeros(1)), "outside the signed 4-bit range"),
        ((np.array([0, 1, 2]), 4, np.zeros(2)), "do not divide"),
        ((np.array([0]), 0, np.zeros(1)), "1..16"),
        ((np.array([0]), 17, np.zeros(1)), "1..16"),
        ((np.array([0.5]), 4, np.zeros(1)), "integer"),
        ((np.array([], dtype=np.int8), 4, np.zeros(1)), "empty"),
    ],
)
def test_invalid_input_is_rejected(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_fixed(*args)


# ---------------------------------------------------------------------------------------------
# byte layouts, computed by hand


def test_bitpack_layout_is_lsb_first() -> None:
    # stored v + 4 = 0,3,4,7,5,2 -> LSB-first bits 000 110 001 111 101 010
    q = np.array([-4, -1, 0, 3, 1, -2])
    enc = encode_fixed(q, 3, np.zeros(1))
    assert enc.kind == "bitpack"
    assert enc.arrays["packed"].tolist() == [0x18, 0x5F, 0x01]
    bits = np.concatenate([[(v + 4) >> j & 1 for j in range(3)] for v in q]).astype(np.uint8)
    assert enc.arrays["packed"].tolist() == np.packbits(bits, bitorder="little").tolist()


def test_bitpack_layout_16_bit_words_little_endian() -> None:
    q = np.array([0x234 - 512, 0x3FF - 512], dtype=np.int32)  # stored as v + 512 in 10 bits
    enc = encode_kind(q, 10, kind="bitpack")
    # bits 0..9 = 0x234, bits 10..19 = 0x3FF: the 20-bit word 0xFFE34, little-endian bytes
    assert enc.arrays["packed"].tolist() == [0x34, 0xFE, 0x0F]


def test_index_layout_is_msb_first() -> None:
    # u=3 -> 011; values +4: 010 101 111; ranks 01 00 01 01 10; pad 00
    q = np.array([1, -2, 1, 1, 3])
    enc = encode_kind(q, 3, kind="index")
    assert enc.arrays["stream"].tolist() == [0x6A, 0xF4, 0x58]
    assert enc.meta == {"n": 5, "u": 3, "ub": 2}
    _assert_round_trip(enc, q)


def test_sparse_layout_is_msb_first() -> None:
    # k=3 (8 bits), nnz=2 (32 bits), u=3 (4 bits), values+8: 0111 1000 1101, ranks 10 00,
    # coordinates 010 111, pad 000000
    q = np.zeros(12, dtype=np.int32)
    q[2], q[10] = 5, -1
    enc = encode_kind(q, 4, np.zeros(1), kind="sparse")
    assert enc.meta["k"] == 3 and enc.meta["nnz"] == 2
    assert enc.arrays["stream"].tolist() == [0x03, 0, 0, 0, 0x02, 0x37, 0x8D, 0x85, 0xC0]
    _assert_round_trip(enc, q)


# ---------------------------------------------------------------------------------------------
# split coding


def _full_width(q: np.ndarray) -> int:
    lo, hi = int(q.min()), int(q.max())
    bits = 1
    while lo < -(1 << (bits - 1)) or hi > (1 << (bits - 1)) - 1:
        bits += 1
    return bits


@pytest.mark.parametrize("dist", ["laplace", "normal"])
@pytest.mark.parametrize("scale", [3.0, 60.0, 2000.0])
def test_split_round_trips_bell_shaped_codes(dist: str, scale: float) -> None:
    rng = np.random.default_rng(int(scale))
    draw = rng.laplace if dist == "laplace" else rng.normal
    q = np.clip(np.round(draw(0.0, scale, size=(200, 150))), -32768, 32767).astype(np.int16)
    enc = encode_split(q)
    _assert_round_trip(enc, q)
    full = _full_width(q)
    assert enc.nbytes <= math.ceil(q.size * full / 8)
    if dist == "laplace" and scale >= 60:
        assert enc.kind == "split" and enc.meta["nnz"] > 0
        assert effective_bits(enc) < full - 1  # heavy tails: the outlier list pays off


def test_split_without_outliers_is_plain_bitpacking() -> None:
    q = np.arange(100, 116).repeat(50)  # 16 values, off-centre: needs 8 signed bits, 4 as a window
    enc = encode_split(q)
    assert enc.kind == "split" and enc.bits == 4 and enc.meta["nnz"] == 0
    assert enc.nbytes == q.size * 4 // 8
    _assert_round_trip(enc, q)


def test_split_handles_int32_outliers_and_long_gaps() -> None:
    rng = np.random.default_rng(3)
    q = rng.integers(-3, 4, size=300_000).astype(np.int32)
    q[[5, 150_000, 299_999]] = [2**30, -(2**31), 2**31 - 1]
    enc = encode_split(q)
    assert enc.kind == "split"
    _assert_round_trip(enc, q)
    assert effective_bits(enc) < 3.1


def test_split_single_element_and_constant() -> None:
    for q in (np.array([-7]), np.full((3, 3), 12345, dtype=np.int32)):
        _assert_round_trip(encode_split(q), q)


def test_split_prefers_index_for_few_distinct_values() -> None:
    q = np.random.default_rng(0).choice(np.array([-900, 17, 4000]), size=5000)
    enc = encode_split(q)
    assert enc.kind == "index"
    _assert_round_trip(enc, q)


def test_split_rejects_codes_beyond_int32() -> None:
    with pytest.raises(ValueError, match="int32"):
        encode_split(np.array([0, 2**31]))
