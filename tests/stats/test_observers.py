"""Activation observers (docs/converter-lite.md §8.1–8.4): exact converter_lite statistics, split-invariant merges."""

import math
import pickle
import re

import numpy as np
import pytest

from ptq_core.quant import DBL_EPSILON, encode_range
from ptq_core.stats.kl_observer import (
    KL_BIN_INIT,
    KL_BINS,
    KLObserver,
    histogram_counts,
)
from ptq_core.stats.kl_search import kl_divergences, kl_threshold_bin
from ptq_core.stats.minmax_observers import (
    MaxMinObserver,
    RemovalOutlierObserver,
    outlier_positions,
)
from ptq_core.stats.observer_base import ActivationRange, Observer
from ptq_core.stats.observers import (
    OBSERVERS,
    make_observer,
    merge_all,
    observer_from_state,
)

CPU = (-128, 127)


def rounds(seed=0, count=12):
    """Calibration rounds of different sizes (some above 10000 values, so quantiles are not min/max)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(count):
        n = int(rng.choice([300, 4000, 12000, 25000]))
        x = rng.laplace(0.2 * r, 1.0 + 0.1 * r, size=n).astype(np.float32)
        x[rng.integers(0, n, 3)] = rng.normal(0, 40, 3)  # a few outliers per round
        out.append(x.reshape(-1, 10) if n % 10 == 0 else x)
    return out


def feed(obs, xs, pass_index=0):
    for x in xs:
        obs.update(x, pass_index)
    return obs


def assert_same_state(a, b):
    sa, sb = a.to_state(), b.to_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert np.array_equal(np.asarray(sa[key]), np.asarray(sb[key])), key


def run_split(method, xs, sizes, order):
    """Pass 0 (and pass 1 for KL) on three partials of the given sizes, merged in the given order."""
    assert sum(sizes) == len(xs)
    bounds = np.cumsum([0, *sizes])
    chunks = [xs[bounds[i]:bounds[i + 1]] for i in range(3)]

    def combine(parts):
        a, b, c = parts
        return a.merge(b).merge(c) if order == "left" else a.merge(b.merge(c))

    obs = combine([feed(make_observer(method), ch) for ch in chunks])
    if obs.passes == 2:
        obs.begin_pass(1)
        # pass 1 with a different split than pass 0 (rounds rotate between workers)
        chunks = chunks[1:] + chunks[:1]
        obs = combine([feed(obs.spawn(), ch, 1) for ch in chunks])
    return obs


def run_serial(method, xs):
    obs = feed(make_observer(method), xs)
    if obs.passes == 2:
        obs.begin_pass(1)
        feed(obs, xs, 1)
    return obs


# ---------------------------------------------------------------------------------------------
# merge


@pytest.mark.parametrize("method", sorted(OBSERVERS))
@pytest.mark.parametrize("sizes", [(4, 4, 4), (1, 10, 1), (0, 5, 7)])
@pytest.mark.parametrize("order", ["left", "right"])
def test_merged_partials_equal_serial_bit_for_bit(method, sizes, order):
    xs = rounds()
    serial = run_serial(method, xs)
    merged = run_split(method, xs, sizes, order)
    assert_same_state(merged, serial)
    if method != "KL" or sizes == (1, 10, 1):  # KL's range is a pure function of the state; search once
        assert merged.finalize(*CPU, False) == serial.finalize(*CPU, False)


@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_merge_is_commutative_and_leaves_inputs_unchanged(method):
    xs = rounds(1, 6)
    a, b = feed(make_observer(method), xs[:2]), feed(make_observer(method), xs[2:])
    before = (a.to_state(), b.to_state())
    ab, ba = a.merge(b), b.merge(a)
    assert_same_state(ab, ba)
    assert_same_state(a, observer_from_state(before[0]))
    assert_same_state(b, observer_from_state(before[1]))
    assert_same_state(merge_all([feed(make_observer(method), [x]) for x in xs]), ab)


def test_kl_refuses_pass1_partials_with_different_intervals():
    xs = rounds(2, 4)
    a, b = feed(make_observer("KL"), xs[:2]), feed(make_observer("KL"), xs[2:])
    a.begin_pass(1)
    b.begin_pass(1)  # each froze its own local range: a misuse that must not merge silently
    with pytest.raises(ValueError, match="different pass-0"):
        a.merge(b)
    with pytest.raises(ValueError, match="pass-0 state with a pass-1"):
        a.merge(feed(make_observer("KL"), xs[:1]))


def test_kl_finalize_needs_every_round_in_both_passes():
    xs = rounds(3, 4)
    obs = feed(make_observer("KL"), xs)
    with pytest.raises(ValueError, match="before pass 1"):
        obs.finalize(*CPU, True)
    obs.begin_pass(1)
    feed(obs, xs[:3], 1)
    with pytest.raises(ValueError, match="pass 1 saw 3"):
        obs.finalize(*CPU, True)


# ---------------------------------------------------------------------------------------------
# MAX_MIN / REMOVAL_OUTLIER


@pytest.mark.parametrize("qmin,qmax,sym", [(-128, 127, False), (-127, 127, True), (0, 255, False)])
def test_max_min_is_encode_range_of_the_true_min_max(qmin, qmax, sym):
    xs = rounds(4, 5)
    lo = float(min(x.min() for x in xs))
    hi = float(max(x.max() for x in xs))
    got = feed(make_observer("MAX_MIN"), xs).finalize(qmin, qmax, sym)
    scale, zp = encode_range(np.array([lo]), np.array([hi]), qmin, qmax, sym)
    assert (got.lo, got.hi) == (lo, hi)
    assert got.scale == scale[0] and got.zero_point == zp[0]
    assert (got.qmin, got.qmax, got.method) == (qmin, qmax, "MAX_MIN")
    # the recorded (nudged) range is consistent with the scale and zero point, as §5.2 stores it
    assert got.scale == (got.encode_max - got.encode_min) / (qmax - qmin)
    assert got.encode_min <= min(lo, 0.0) + got.scale and got.encode_max >= max(hi, 0.0) - got.scale


def test_removal_outlier_takes_exact_order_statistics_per_round_and_averages():
    rng = np.random.default_rng(5)
    big = rng.normal(size=50_000).astype(np.float32)  # positions 5 and 49995
    small = rng.normal(size=9_999).astype(np.float32)  # n < 10000: true min and max
    assert outlier_positions(big.size) == (5, 49_995)
    assert outlier_positions(small.size) == (0, small.size - 1)
    s = np.sort(big)
    obs = feed(make_observer("REMOVAL_OUTLIER"), [big, small])
    lo = np.float32((np.float64(s[5]) + np.float64(small.min())) / 2)
    hi = np.float32((np.float64(s[49_995]) + np.float64(small.max())) / 2)
    assert obs.means() == (float(lo), float(hi))
    got = obs.finalize(*CPU, False)
    scale, zp = encode_range(np.array([lo], np.float64), np.array([hi], np.float64), *CPU)
    assert (got.lo, got.hi, got.scale, got.zero_point) == (float(lo), float(hi), scale[0], zp[0])


def test_removal_outlier_positions_use_converter_lites_float32_product():
    # int(0.9999f * 10001.0f) == 10000 in float32, while floor(0.9999 * 10001) == 9999
    assert outlier_positions(10_001) == (1, 10_000)
    assert outlier_positions(1) == (0, 0)
    x = np.arange(10_001, dtype=np.float32)[::-1].copy()
    assert feed(make_observer("REMOVAL_OUTLIER"), [x]).means() == (1.0, 10_000.0)


# ---------------------------------------------------------------------------------------------
# KL


def reference_kl(h, target=128):
    """Literal §8.3 in float64 (data_distribution.cc's loops): KL of every candidate i."""
    h = [float(v) for v in h]
    n = len(h)
    kls = []
    for i in range(target, n):
        ref = h[:i]
        ref[i - 1] += math.fsum(h[i:])
        quant = [0.0] * target
        expanded = [0.0] * i
        width = i / target
        for j in range(target):
            start, end = j * width, j * width + width
            left, right = math.ceil(start), math.floor(end)
            if left > start:
                quant[j] += (left - start) * h[left - 1]
            if right < end:
                quant[j] += (end - right) * h[right]
            for v in h[left:right]:
                quant[j] += v
        for j in range(target):
            start, end = j * width, j * width + width
            left, right = math.ceil(start), math.floor(end)
            count = 0.0
            if left > start and abs(h[left - 1]) > DBL_EPSILON:
                count += left - start
            if right < end and abs(h[right]) > DBL_EPSILON:
                count += end - right
            count += sum(1 for v in h[left:right] if not -1e-8 <= v <= 1e-8)
            if abs(count) <= DBL_EPSILON:
                continue
            avg = quant[j] / count
            if left > start and abs(h[left - 1]) > DBL_EPSILON:
                expanded[left - 1] += avg * (left - start)
            if right < end and abs(h[right]) > DBL_EPSILON:
                expanded[right] += avg * (end - right)
            for k in range(left, right):
                if abs(h[k]) > DBL_EPSILON:
                    expanded[k] += avg
        p, q = np.array(ref) / sum(ref), np.array(expanded) / sum(expanded)
        with np.errstate(divide="ignore", invalid="ignore"):
            kls.append(np.sum(np.where(p != 0, np.where(q == 0, 1.0, p * np.log(p / q)), 0.0)))
    return np.array(kls)


def kl_histogram(x):
    obs = feed(make_observer("KL"), [x])
    obs.begin_pass(1)
    feed(obs, [x], 1)
    return obs, obs.histogram()


def _gaussian(rng):
    return rng.normal(0, 1, 100_000)


def _laplace_outliers(rng):
    x = rng.laplace(0, 0.5, 100_000)
    x[:20] = rng.uniform(-60, 60, 20)
    return x


def _relu(rng):
    return np.maximum(rng.normal(0.3, 1, 100_000), 0)  # all >= 0, ~38 % exact zeros (skipped)


@pytest.mark.parametrize("make", [_gaussian, _laplace_outliers, _relu])
def test_kl_search_matches_literal_reference(make):
    x = make(np.random.default_rng(6)).astype(np.float32)
    obs, h = kl_histogram(x)
    want = reference_kl(h)
    got = kl_divergences(h)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    bin_ = kl_threshold_bin(h)
    assert bin_ == 128 + int(np.argmin(want))
    assert obs.threshold() == float((np.float32(bin_) + np.float32(0.5)) * np.float32(obs.interval))


def test_kl_search_matches_reference_on_small_and_sparse_histograms():
    rng = np.random.default_rng(7)
    counts = np.zeros(256)
    counts[rng.integers(0, 200, 40)] = rng.integers(1, 1000, 40)  # gaps between bins
    for h in (counts + KL_BIN_INIT, counts):  # with and without the 1e-7 start value
        want = reference_kl(h, target=32)
        np.testing.assert_allclose(kl_divergences(h, 32), want, rtol=1e-9, atol=1e-15)
        assert kl_threshold_bin(h, 32) == 32 + int(np.argmin(want))


def test_kl_prefix_sum_search_agrees_with_the_bin_by_bin_search():
    from ptq_core.stats.kl_search import _kl_block

    rng = np.random.default_rng(11)
    makes = [lambda: np.abs(rng.normal(0, 1, 50_000)), lambda: np.abs(rng.standard_t(2, 50_000)),
             lambda: np.maximum(rng.normal(0.3, 1, 50_000), 0), lambda: rng.uniform(0, 1, 50_000) ** 4]
    for trial in range(12):
        x = makes[trial % 4]().astype(np.float32)
        h = histogram_counts(x, np.float32(x.max() / KL_BINS)).astype(np.float64) + KL_BIN_INIT
        tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
        filled = np.ones(h.size, bool)
        by_bin = _kl_block(h, filled, filled, tail, 128, 128, h.size)
        fast = kl_divergences(h)
        np.testing.assert_allclose(fast, by_bin, rtol=1e-8, atol=1e-15)
        assert np.argmin(fast) == np.argmin(by_bin)


def test_kl_histogram_skips_zeros_and_clamps_to_the_last_bin():
    interval = np.float32(0.5)
    x = np.array([0, 1e-17, -1e-17, 0.25, -0.75, 1023.9, -5000], np.float32)
    counts = histogram_counts(x, interval)
    assert counts.sum() == 4
    assert counts[0] == 1 and counts[1] == 1 and counts[2047] == 2
    obs, h = kl_histogram(np.array([-3.0, 0.0, 2.0], np.float32))
    assert obs.interval == 3.0 / 2048
    assert h.min() == KL_BIN_INIT and h.sum() == pytest.approx(2 + KL_BINS * KL_BIN_INIT)


@pytest.mark.parametrize("make", [_gaussian, _relu])
def test_kl_range_is_symmetric_with_zero_point_zero(make):
    x = make(np.random.default_rng(8)).astype(np.float32)
    obs, _ = kl_histogram(x)
    t = obs.threshold()
    got = obs.finalize(*CPU, symmetric=False)  # the device flag is ignored
    assert (got.lo, got.hi, got.zero_point, got.method) == (-t, t, 0, "KL")
    scale, zp = encode_range(np.array([-t]), np.array([t]), *CPU, symmetric=True)
    assert got.scale == scale[0] and zp[0] == 0
    assert got.scale == pytest.approx(2 * t / 255, rel=1e-6)
    assert got.encode_min == pytest.approx(-128 * got.scale, rel=1e-6)
    assert obs.finalize(0, 255, True).zero_point == 0  # converter_lite's GetZeroPoint: symmetric -> 0


def test_kl_search_is_fast():
    import time

    h = kl_histogram(_laplace_outliers(np.random.default_rng(9)).astype(np.float32))[1]
    start = time.perf_counter()
    kl_threshold_bin(h)
    assert time.perf_counter() - start < 0.25  # the prefix-sum search: ~0.04 s here, the bin-by-bin one ~0.3 s


# ---------------------------------------------------------------------------------------------
# state size, pickling, errors


@pytest.mark.parametrize("method", ["MAX_MIN", "KL"])
def test_state_size_does_not_grow_with_rounds(method):
    rng = np.random.default_rng(10)
    xs = [rng.normal(size=64).astype(np.float32) for _ in range(1000)]
    sizes = []
    for count in (10, 1000):
        obs = feed(make_observer(method), xs[:count])
        sizes.append(len(pickle.dumps(obs)))
        if method == "KL":
            obs.begin_pass(1)
            feed(obs, xs[:count], 1)
            sizes.append(len(pickle.dumps(obs)))
    assert sizes[:len(sizes) // 2] == sizes[len(sizes) // 2:]


def test_removal_outlier_state_stays_small():
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=64).astype(np.float32) for _ in range(1000)]
    small = len(pickle.dumps(feed(make_observer("REMOVAL_OUTLIER"), xs[:10])))
    large = len(pickle.dumps(feed(make_observer("REMOVAL_OUTLIER"), xs)))
    assert large <= small + 8  # two exact integers growing with log(rounds)


@pytest.mark.parametrize("method", sorted(OBSERVERS))
def test_pickle_round_trip_keeps_state(method):
    obs = run_serial(method, rounds(12, 3))
    back = pickle.loads(pickle.dumps(obs))
    assert type(back) is type(obs) and isinstance(back, Observer)
    assert_same_state(back, obs)
    assert back.finalize(*CPU, False) == obs.finalize(*CPU, False)


@pytest.mark.parametrize("method", sorted(OBSERVERS))
@pytest.mark.parametrize("bad,label", [(np.nan, "NaN"), (np.inf, "+Inf"), (-np.inf, "-Inf")])
def test_non_finite_values_raise(method, bad, label):
    x = np.linspace(-1, 1, 100).astype(np.float32)
    x[7] = bad
    obs = make_observer(method)
    with pytest.raises(ValueError, match=rf"1 {re.escape(label)}"):
        obs.update(x)
    if method == "KL":
        obs.update(np.ones(4, np.float32))
        obs.begin_pass(1)
        with pytest.raises(ValueError, match=rf"1 {re.escape(label)}"):
            obs.update(x, 1)


def test_float64_input_is_observed_as_float32():
    x = np.array([0.1, -0.3], np.float64)
    got = feed(make_observer("MAX_MIN"), [x]).finalize(*CPU, False)
    assert (got.lo, got.hi) == (float(np.float32(-0.3)), float(np.float32(0.1)))
    with pytest.raises(ValueError, match="after rounding to float32"):
        make_observer("MAX_MIN").update(np.array([1e300, 0.0]))


def test_registry_and_unknown_method():
    assert {name: type(make_observer(name)) for name in OBSERVERS} == {
        "MAX_MIN": MaxMinObserver, "KL": KLObserver, "REMOVAL_OUTLIER": RemovalOutlierObserver}
    assert [make_observer(m).passes for m in ("MAX_MIN", "KL", "REMOVAL_OUTLIER")] == [1, 2, 1]
    with pytest.raises(ValueError, match="did you mean 'MAX_MIN'"):
        make_observer("MAXMIN")
    with pytest.raises(ValueError, match="no calibration round"):
        make_observer("MAX_MIN").finalize(*CPU, False)
    assert isinstance(ActivationRange(0.0, 1.0, 1 / 255, -128, -128, 127, "MAX_MIN"), ActivationRange)

