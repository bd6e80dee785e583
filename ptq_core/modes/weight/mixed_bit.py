"""Mixed-bit weight quantization (bit_num=0): one step per tensor from a relative-error target.

converter_lite picks no bit width: it searches a uniform step ``s`` (symmetric, zero point 0,
unbounded integer codes) so that the corrected relative L2 error of the tensor is about
``init_scale`` (docs/converter-lite.md §7), then entropy-codes the codes. The effective bit width is
whatever the storage needs; ``auto_tune`` searches ``init_scale`` itself against the model's
output cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ptq_core.quant import DBL_EPSILON


@dataclass(frozen=True)
class MixedBitResult:
    """The step found for one tensor, its codes' correction and how the search ended."""

    scale: float
    var_corr: float
    mean_corr: float
    error: float
    iterations: int
    converged: bool


def _codes(w: np.ndarray, s: float) -> np.ndarray:
    # floor(w/s + 0.5) in float32, i.e. round half up, as the source does
    return np.floor(w / np.float32(s) + np.float32(0.5))


def relative_error(w: np.ndarray, s: float) -> tuple[float, float, float]:
    """E(s) of §7 with its whole-tensor variance/mean correction: returns (E, varCorr, meanCorr)."""
    q = _codes(w, s)
    d = q * np.float32(s)
    sw, sd = float(w.std(dtype=np.float64)), float(d.std(dtype=np.float64))
    mw, md = float(w.mean(dtype=np.float64)), float(d.mean(dtype=np.float64))
    var_corr = sw / sd if sd >= DBL_EPSILON else 1.0
    mean_corr = mw - md * var_corr
    diff = w.astype(np.float64) - (var_corr * d.astype(np.float64) + mean_corr)
    energy = float(np.dot(w.ravel().astype(np.float64), w.ravel().astype(np.float64)))
    if energy < 1e-10:
        return 1e-10 / (1 + 1e-7), var_corr, mean_corr
    err = (1e-10 + float(np.sqrt(np.dot(diff.ravel(), diff.ravel()) / energy))) / (1 + 1e-7)
    return err, var_corr, mean_corr


def search_step(w: np.ndarray, target: float, max_iterations: int = 100, tolerance: float = 0.01) -> MixedBitResult | None:
    """Binary search for the step whose relative error is within 1 % of ``target``.

    Returns None when the search fails, so the caller falls back to 8-bit fixed quantization as
    converter_lite does. (The source's min/max helper skips the first element for the minimum; we
    use the true extremes, which only moves the starting point of the search.)
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    lo, hi = float(w.min()), float(w.max())
    if hi < lo + 1e-5:
        return MixedBitResult(abs(hi) + 1e-5, 1.0, 0.0, 0.0, 0, True)
    s0 = (hi - lo) * target
    right = 2 * s0
    for _ in range(64):
        if relative_error(w, right)[0] >= target:
            break
        right *= 2
    left = s0 / 2
    for _ in range(64):
        if relative_error(w, left)[0] <= target:
            break
        left /= 2
    s = s0
    for iteration in range(1, max_iterations + 2):
        err, vc, mc = relative_error(w, s)
        if abs(err - target) / target < tolerance:
            return MixedBitResult(s, vc, mc, err, iteration, True)
        if iteration > max_iterations:
            if err < target:
                return MixedBitResult(s, vc, mc, err, iteration, False)
            return None
        if err > target:
            right = s
        else:
            left = s
        s = (left + right) / 2
    return None


def group_steps(rows: np.ndarray, group_size: int, target: float, iterations: int = 40) -> np.ndarray:
    """Mixed bit per group (``bit_num=0`` with ``[ptqflow] group_size``, ptqflow's addition): for each row and
    each group of ``group_size`` columns, the step whose codes ``floor(x / step + 0.5)`` leave a relative L2
    error of at most ``target`` in that group, found by bisection on log2(step) for all groups at once and
    stored as a float16 value (rounded down, within float16's normal range). Returns [rows, groups]."""
    r, cols = rows.shape
    groups = -(-cols // group_size)
    x = np.zeros((r, groups * group_size), np.float32)
    x[:, :cols] = rows
    x = x.reshape(r, groups, group_size)
    energy = np.einsum("rgk,rgk->rg", x, x, dtype=np.float64)
    amax = np.maximum(np.abs(x).max(axis=2).astype(np.float64), 1e-30)
    lo, hi = np.log2(amax * 1e-6), np.log2(amax * 4.0)

    def error(step: np.ndarray) -> np.ndarray:
        s = step.astype(np.float32)[:, :, None]
        d = x - np.floor(x / s + np.float32(0.5)) * s
        return np.sqrt(np.einsum("rgk,rgk->rg", d, d, dtype=np.float64) / np.maximum(energy, 1e-30))

    for _ in range(iterations):
        mid = (lo + hi) / 2
        over = error(np.exp2(mid)) > target
        hi, lo = np.where(over, mid, hi), np.where(over, lo, mid)
    step = np.clip(np.exp2(lo), 2.0 ** -14, 65504.0).astype(np.float16)
    step = np.where(step.astype(np.float64) > np.exp2(lo), np.nextafter(step, np.float16(0)), step)
    step = np.where(energy < 1e-10, np.float16(1.0), np.maximum(step, np.float16(2.0 ** -14)))
    return step.astype(np.float32)


def mixed_codes(w: np.ndarray, result: MixedBitResult) -> np.ndarray:
    """The unbounded integer codes for the chosen step (int32; converter_lite stores int16)."""
    return _codes(np.asarray(w, np.float32), result.scale).astype(np.int32)


@dataclass(frozen=True)
class TuneStep:
    init_scale: float
    cosine: float
    ratio: float


@dataclass(frozen=True)
class TuneResult:
    init_scale: float
    cosine: float
    steps: tuple[TuneStep, ...]


def auto_tune(evaluate: Callable[[float], tuple[float, float]], budget: int = 10, threshold: float = 0.995,
              lo: float = 1e-3, hi: float = 0.5) -> TuneResult:
    """Find the coarsest ``init_scale`` whose model keeps mean output cosine >= ``threshold``.

    ``evaluate(t)`` quantizes the model at init_scale ``t`` and returns (cosine, compression
    ratio). Like converter_lite, the goal is the coarsest acceptable step, since a larger
    init_scale is a smaller model; the search is a bisection in log(init_scale), which needs
    far fewer model builds than the source's linear scan in 1/init_scale.
    """
    steps: list[TuneStep] = []

    def probe(t: float) -> float:
        cos, ratio = evaluate(t)
        steps.append(TuneStep(t, cos, ratio))
        return cos

    if probe(hi) >= threshold:
        return TuneResult(hi, steps[-1].cosine, tuple(steps))
    if probe(lo) < threshold:
        best = max(steps, key=lambda s: s.cosine)
        return TuneResult(best.init_scale, best.cosine, tuple(steps))
    good, bad = lo, hi
    good_cos = steps[-1].cosine
    for _ in range(max(1, budget - 2)):
        mid = float(np.sqrt(good * bad))
        cos = probe(mid)
        if cos >= threshold:
            good, good_cos = mid, cos
        else:
            bad = mid
        if bad / good < 1.05:
            break
    return TuneResult(good, good_cos, tuple(steps))
