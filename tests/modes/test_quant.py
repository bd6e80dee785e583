"""Fixed-bit numerics follow MindSpore Lite: half-away rounding, zero-containing nudged ranges."""

import numpy as np
import pytest

from ptq_core.quant import (
    correction,
    dequantize,
    encode_range,
    passes_gain_check,
    qrange,
    quantize,
    round_half_away,
    weight_params,
)


def test_round_half_away_from_zero():
    assert list(round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -2.5]))) == [1, 2, 3, -1, -3]


@pytest.mark.parametrize("bits,expected", [(8, (-128, 127)), (4, (-8, 7)), (1, (-1, 0)), (16, (-32768, 32767))])
def test_full_range(bits, expected):
    assert qrange(bits) == expected


def test_range_is_forced_to_contain_zero_and_nudged():
    scale, zp = encode_range(np.array([0.5]), np.array([2.0]), -128, 127)
    assert zp[0] == -128  # lo forced to 0 maps exactly to qmin
    assert scale[0] == pytest.approx(2.0 / 255, rel=1e-6)
    q = quantize(np.array([0.0], np.float32), weight_params(np.array([0.5, 2.0], np.float32), 8, None))
    assert q[0] == -128


def test_symmetric_range_gives_zero_zero_point():
    scale, zp = encode_range(np.array([-1.0]), np.array([0.5]), -127, 127, symmetric=True)
    assert zp[0] == 0 and scale[0] == pytest.approx(1 / 127, rel=1e-6)


def test_per_channel_params_are_asymmetric_per_channel():
    w = np.stack([np.linspace(-1, 3, 20), np.linspace(-4, 0.5, 20)]).astype(np.float32)
    p = weight_params(w, 8, axis=0)
    assert len(p.scale) == 2 and p.zero_point[0] != p.zero_point[1]
    q = quantize(w, p)
    assert q.min() >= -128 and q.max() <= 127
    assert np.max(np.abs(dequantize(q, p) - w)) <= p.scale.max() / 2 + 1e-6


@pytest.mark.parametrize("bits", range(1, 17))
def test_codes_stay_in_range_for_every_width(bits):
    w = np.random.default_rng(bits).normal(size=(8, 50)).astype(np.float32)
    q = quantize(w, weight_params(w, bits, axis=0))
    lo, hi = qrange(bits)
    assert q.min() >= lo and q.max() <= hi


@pytest.mark.parametrize("bits,needed", [(8, 11), (4, 10), (16, 17)])
def test_gain_check_thresholds(bits, needed):
    assert passes_gain_check(bits, needed) and not passes_gain_check(bits, needed - 1)


def test_correction_matches_std_and_mean():
    rng = np.random.default_rng(0)
    w = rng.normal(0.3, 1, (4, 200)).astype(np.float32)
    p = weight_params(w, 3, axis=0)
    q = quantize(w, p)
    vc, mc = correction(w, dequantize(q, p), 0)
    corrected = dequantize(q, p, vc, mc)
    assert np.allclose(corrected.std(axis=1), w.std(axis=1), rtol=1e-6)
    assert np.allclose(corrected.mean(axis=1), w.mean(axis=1), atol=1e-6)

