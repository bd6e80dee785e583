"""Fixed-bit weight quantization a block at a time, so a weight of hundreds of MB needs little more
memory than itself.

Quantizing a whole tensor at once in float64 (codes, dequantized values, the bias correction's
statistics, the rebuilt weight for its cosine) holds about ten copies of it: 2.6 GiB of temporaries
for one 256 MiB weight. Here the per-channel (or per-tensor) min/max come first, from float32
reductions, then the codes are made one block of whole channels at a time (a per-layer tensor: one
flat slice at a time) straight into one array of the narrowest integer type, and the correction and
the weight cosine are taken per block. Each element goes through the same operations as in
``ptq_core.quant`` and each channel's statistics see the same contiguous row, so codes, scales and
corrections are bit for bit those of the unblocked formulas for any block size; only the cosine's
three dot products are summed block by block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_core.quant import (
    DBL_EPSILON,
    AffineParams,
    code_dtype,
    correction,
    dequantize,
    encode_range,
    qrange,
    quantize,
)

BLOCK_ELEMENTS = 1 << 20  # elements of float work per block (whole channels; at least one channel)


class CosineSums:
    """The cosine of ``ptq_core.quant.cosine`` from dot products added one block at a time."""

    def __init__(self) -> None:
        self.aa = self.bb = self.ab = 0.0
        self.finite = True

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, np.float64).ravel()
        b = np.asarray(b, np.float64).ravel()
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            self.finite = False
        if self.finite:
            self.aa += float(a @ a)
            self.bb += float(b @ b)
            self.ab += float(a @ b)

    def value(self) -> float:
        """Both empty-norm -> 1, one empty-norm or any non-finite value -> 0, as ``cosine`` does."""
        if not self.finite:
            return 0.0
        if self.aa < DBL_EPSILON and self.bb < DBL_EPSILON:
            return 1.0
        if self.aa * self.bb < DBL_EPSILON:
            return 0.0
        return self.ab / float(np.sqrt(self.aa) * np.sqrt(self.bb))


@dataclass(frozen=True)
class FixedCodes:
    """Codes of one weight (the weight's shape, narrowest integer type) and what rebuilds it."""

    codes: np.ndarray
    params: AffineParams
    var_corr: np.ndarray | None  # per-channel correction as the runtime applies it; None when not applied
    mean_corr: np.ndarray | None
    cosine: float  # weight vs its rebuilt (dequantized, corrected) self


def _channel_range(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max per channel (one pair per tensor for None) as float64; exact, as min/max of
    float32 values are the float32 values of the float64 min/max."""
    if axis is None:
        return np.array([w.min()], np.float64), np.array([w.max()], np.float64)
    others = tuple(i for i in range(w.ndim) if i != axis)
    return w.min(axis=others).astype(np.float64), w.max(axis=others).astype(np.float64)


def channel_blocks(channels: int, per_channel: int, block_elements: int) -> list[tuple[int, int]]:
    """[start, end) channel ranges of about ``block_elements`` elements, never one channel alone (unless
    the tensor has one): numpy lays out, and so sums, a single-channel slice differently."""
    step = max(2, block_elements // max(1, per_channel))
    bounds = [[c0, min(channels, c0 + step)] for c0 in range(0, channels, step)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        last = bounds.pop()
        bounds[-1][1] = last[1]
    return [(c0, c1) for c0, c1 in bounds]


def quantize_fixed(w: np.ndarray, bits: int, axis: int | None, bias_correction: bool,
                   block_elements: int = BLOCK_ELEMENTS) -> FixedCodes:
    """Asymmetric full-range min/max codes of ``w`` (converter_lite's fixed-bit weight quant) with the
    per-channel variance/mean correction when ``bias_correction`` and ``axis`` is not None (the runtime
    applies it to per-channel weights only), made ``block_elements`` at a time."""
    qmin, qmax = qrange(bits)
    lo, hi = _channel_range(w, axis)
    scale, zp = encode_range(lo, hi, qmin, qmax)
    params = AffineParams(scale=scale, zero_point=zp, qmin=qmin, qmax=qmax, axis=axis)
    codes = np.empty(w.shape, code_dtype(qmin, qmax))
    sums = CosineSums()
    if axis is None:
        flat, out = w.reshape(-1), codes.reshape(-1)
        for start in range(0, flat.size, max(1, block_elements)):
            part = flat[start : start + block_elements]
            q = quantize(part, params)
            out[start : start + q.size] = q
            sums.add(part, dequantize(q, params))
        return FixedCodes(codes, params, None, None, sums.value())
    channels = w.shape[axis]
    var_parts, mean_parts = [], []
    for c0, c1 in channel_blocks(channels, w.size // max(1, channels), block_elements):
        where = (slice(None),) * axis + (slice(c0, c1),)
        part = w[where]  # the channels [c0, c1) in the tensor's own layout, so channel_view makes the
        # same (view or copy) layout as for the whole tensor and numpy sums each channel in the same order
        block = AffineParams(scale=scale[c0:c1], zero_point=zp[c0:c1], qmin=qmin, qmax=qmax, axis=axis)
        q = quantize(part, block)
        codes[where] = q
        d = dequantize(q, block)
        if bias_correction:
            vc, mc = correction(part, d, axis)
            vc = np.where((vc >= 0) & (vc <= 10), vc, 1.0)  # the runtime clamps varCorr to [0, 10]
            var_parts.append(vc)
            mean_parts.append(mc)
            d = dequantize(q, block, vc, mc)
        sums.add(part, d)
    if not bias_correction:
        return FixedCodes(codes, params, None, None, sums.value())
    return FixedCodes(codes, params, np.concatenate(var_parts), np.concatenate(mean_parts), sums.value())
