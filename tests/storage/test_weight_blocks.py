"""Fixed-bit weight quantization a block of channels at a time: the same bytes as the whole tensor at
once (and as the unblocked formulas of ptq_core.quant), with memory bounded by a block."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ptq_core.config import parse_config
from ptq_core.modes.weight.blocks import channel_blocks
from ptq_core.modes.weight.plan import _fixed
from ptq_core.quant import correction, cosine, dequantize, quantize, weight_params

WHOLE = 1 << 40  # one block: the unblocked path

# (shape, axis): channels first and last (numpy lays the two out differently), conv-like, per-layer
SHAPES = [((40, 24), 1), ((24, 40), 0), ((6, 10, 3, 3), 0), ((5, 12, 3, 3), 1), ((9, 5, 7), 2), ((33, 17), None)]


def _cfg(bits: int, bias_correction: bool, enable_encode: bool = True):
    return parse_config(f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\n"
                        f"enable_encode={str(enable_encode).lower()}\n"
                        f"[weight_quant_param]\nbias_correction={str(bias_correction).lower()}\n")


def _weight(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, shape).astype(np.float32)
    w.reshape(-1)[::13] *= 25  # outliers
    w[rng.random(shape) < 0.3] = 0
    return w


def _plan_bytes(result) -> bytes:
    enc, zp, scale, mean, _ = result
    parts = [repr((enc.kind, enc.bits, enc.shape, sorted(enc.meta.items()))).encode()]
    parts += [enc.arrays[k].dtype.str.encode() + enc.arrays[k].tobytes() for k in sorted(enc.arrays)]
    parts += [zp.tobytes(), scale.tobytes(), b"-" if mean is None else mean.tobytes()]
    return b"|".join(parts)


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("bits", [2, 4, 8, 11, 16])
@pytest.mark.parametrize("bias_correction", [True, False])
def test_blocked_quantization_gives_the_bytes_of_the_whole_tensor(shape, axis, bits, bias_correction):
    w = _weight(shape, bits)
    cfg = _cfg(bits, bias_correction)
    whole = _fixed(w, bits, axis, cfg, block_elements=WHOLE)
    for block in (1, 7, 50):
        blocked = _fixed(w, bits, axis, cfg, block_elements=block)
        assert _plan_bytes(blocked) == _plan_bytes(whole), f"block_elements={block}"
        assert blocked[4] == pytest.approx(whole[4], abs=1e-12)  # only the cosine's sums are reordered


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("bits", [3, 8, 16])
def test_blocked_codes_scales_and_corrections_follow_the_unblocked_formulas(shape, axis, bits):
    """The reference is ptq_core.quant applied to the whole tensor, as MindSpore Lite computes it."""
    w = _weight(shape, 100 + bits)
    enc, zp, scale, mean, cos = _fixed(w, bits, axis, _cfg(bits, True, enable_encode=False) if bits in (8, 16)
                                       else _cfg(bits, True), block_elements=5)
    params = weight_params(w, bits, axis)
    q = quantize(w, params)
    d = dequantize(q, params)
    vc, mc = correction(w, d, axis)
    if axis is not None:
        vc = np.where((vc >= 0) & (vc <= 10), vc, 1.0)
        assert np.array_equal(scale, (params.scale * vc).astype(np.float32))
        assert (mean is None and not np.any(mc)) or np.array_equal(mean, mc.astype(np.float32))
        rebuilt = dequantize(q, params, vc, mc)
    else:
        assert np.array_equal(scale, params.scale.astype(np.float32)) and mean is None
        rebuilt = d
    assert np.array_equal(zp, params.zero_point.astype(np.float32))
    if enc.kind == "raw":
        assert np.array_equal(enc.arrays["data"], q)
    assert cos == pytest.approx(cosine(w, rebuilt), abs=1e-12)


def test_channel_blocks_never_leave_one_channel_alone():
    assert channel_blocks(7, 10, 20) == [(0, 2), (2, 4), (4, 7)]
    assert channel_blocks(6, 10, 1) == [(0, 2), (2, 4), (4, 6)]
    assert channel_blocks(1, 10, 1) == [(0, 1)]
    assert channel_blocks(5, 10, 10**9) == [(0, 5)]


@pytest.mark.parametrize("axis", [1, 0, None])
def test_blocked_quantization_holds_far_less_than_the_whole_tensor_at_once(axis):
    """Whole: ~8.5x the weight's bytes in float64 temporaries; in blocks: the codes and one block."""
    w = np.random.default_rng(0).normal(0, 0.02, (1024, 2048)).astype(np.float32)
    cfg = _cfg(8, True)
    peaks = []
    for block in (WHOLE, w.size // 64):
        tracemalloc.start()
        _fixed(w, 8, axis, cfg, block_elements=block)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] > 4 * w.nbytes
    assert peaks[1] < 1.0 * w.nbytes
