"""Affine quantization numerics as MindSpore Lite computes them (docs/converter-lite.md §5–6).

Rounding is C's ``std::round`` (half away from zero), not NumPy's half-to-even; ranges always
contain zero and are "nudged" so zero is exactly representable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DBL_EPSILON = float(np.finfo(np.float64).eps)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C ``std::round``: ties go away from zero (np.round would send 2.5 to 2)."""
    x = np.asarray(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def qrange(bits: int, narrow: bool = False, unsigned: bool = False) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code: full [-2^(b-1), 2^(b-1)-1], narrow drops the lowest."""
    if unsigned:
        return 0, (1 << bits) - 1
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return (lo + 1, hi) if narrow else (lo, hi)


@dataclass(frozen=True)
class AffineParams:
    """Per-tensor (arrays of length 1) or per-channel scale and zero point."""

    scale: np.ndarray  # float64
    zero_point: np.ndarray  # int64
    qmin: int
    qmax: int
    axis: int | None  # None = per-tensor


def encode_range(lo: np.ndarray, hi: np.ndarray, qmin: int, qmax: int, symmetric: bool = False):
    """§5.2: observed (lo, hi) -> (scale, zero_point), vectorized over channels."""
    lo = np.asarray(lo, dtype=np.float64).copy()
    hi = np.asarray(hi, dtype=np.float64).copy()
    hi = np.maximum(hi, lo + 1e-10)
    if symmetric:
        a = np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = -a, a
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    span = float(qmax - qmin)
    step = (hi - lo) / span
    z = round_half_away(-lo / step)
    lo = (-z * step).astype(np.float32).astype(np.float64)
    hi = ((span - z) * step).astype(np.float32).astype(np.float64)
    scale = (hi - lo) / span
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = round_half_away(qmin - lo / scale)
    zp = np.where(np.isfinite(zp), zp, 0).astype(np.int64)
    return scale, zp


def channel_view(w: np.ndarray, axis: int | None) -> np.ndarray:
    """(C, -1) view with channels first; per-tensor gives (1, N)."""
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def broadcast_shape(rank: int, axis: int | None, channels: int) -> tuple[int, ...]:
    if axis is None:
        return ()
    shape = [1] * rank
    shape[axis] = channels
    return tuple(shape)


def weight_params(w: np.ndarray, bits: int, axis: int | None, symmetric: bool = False, narrow: bool = False,
                  limits: tuple[int, int] | None = None) -> AffineParams:
    """Min/max per channel (or tensor) -> asymmetric full-range params, as fixed-bit weight quant does.

    ``limits`` narrows the code range further (the portable int8 form, ptq_core.onnxgraph.cpu).
    """
    qmin, qmax = qrange(bits, narrow=narrow) if limits is None else limits
    view = channel_view(w.astype(np.float64), axis)
    scale, zp = encode_range(view.min(axis=1), view.max(axis=1), qmin, qmax, symmetric)
    return AffineParams(scale=scale, zero_point=zp, qmin=qmin, qmax=qmax, axis=axis)


def quantize(w: np.ndarray, params: AffineParams) -> np.ndarray:
    """q = clamp(round(x/scale + zp)); a scale at or below 1e-38 gives 0 codes (§5.2 step 6)."""
    shape = broadcast_shape(w.ndim, params.axis, len(params.scale))
    scale = params.scale.reshape(shape) if shape else params.scale[0]
    zp = params.zero_point.reshape(shape) if shape else params.zero_point[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = round_half_away(w.astype(np.float64) / scale + zp)
    q = np.clip(q, params.qmin, params.qmax)
    q = np.where(np.asarray(scale) <= 1e-38, 0, q)
    return q.astype(code_dtype(params.qmin, params.qmax))


def code_dtype(qmin: int, qmax: int) -> type:
    """The narrowest of int8/int16/int32 that holds codes in [qmin, qmax]."""
    return np.int8 if qmax <= 127 and qmin >= -128 else np.int16 if qmax <= 32767 else np.int32


def dequantize(q: np.ndarray, params: AffineParams, var_corr=None, mean_corr=None) -> np.ndarray:
    """(q - zp) * scale, with the per-channel variance/mean correction when given."""
    shape = broadcast_shape(q.ndim, params.axis, len(params.scale))
    scale = params.scale.reshape(shape) if shape else params.scale[0]
    zp = params.zero_point.reshape(shape) if shape else params.zero_point[0]
    d = (q.astype(np.float64) - zp) * scale
    if var_corr is not None:
        vc = np.asarray(var_corr, np.float64)
        mc = np.asarray(mean_corr, np.float64)
        d = d * (vc.reshape(shape) if shape else vc[0]) + (mc.reshape(shape) if shape else mc[0])
    return d


def correction(w: np.ndarray, d: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """§6.3 varCorr/meanCorr per channel: match the dequantized weight's std and mean to the original."""
    wv = channel_view(w.astype(np.float64), axis)
    dv = channel_view(d.astype(np.float64), axis)
    mw, md = wv.mean(axis=1), dv.mean(axis=1)
    sw, sd = wv.std(axis=1), dv.std(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = sw / sd
    ok = (sw > DBL_EPSILON) & (sd > DBL_EPSILON) & (ratio > 0) & (ratio < 10)
    var_corr = np.where(ok, ratio, 1.0)
    mean_corr = mw - md * var_corr
    return var_corr, mean_corr


def passes_gain_check(bits: int, elements_per_channel: int) -> bool:
    """§6.2: per-channel quantization pays only if 256 // (32 - b) < elements per channel."""
    return 256 // (32 - bits) < elements_per_channel


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in double with converter_lite's edge cases (§12.1): both squared norms below
    DBL_EPSILON -> 1; their product below it, or any NaN/Inf -> 0. The one cosine of the tool: weight and
    output cosines, --max-drop's damage and the debug reports all read it."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return 0.0
    # element-wise products and NumPy's pairwise sums, not BLAS dot: a multi-threaded BLAS call per tensor
    # made a debug round 10x slower on a busy machine
    na, nb = float(np.sum(a * a)), float(np.sum(b * b))
    if na < DBL_EPSILON and nb < DBL_EPSILON:
        return 1.0
    if na * nb < DBL_EPSILON:
        return 0.0
    return float(np.sum(a * b)) / float(np.sqrt(na) * np.sqrt(nb))
