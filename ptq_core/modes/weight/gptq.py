"""GPTQ: weight rounding that feeds each column's error forward through the inverse Hessian of the
layer's inputs (converter_lite's ``[weight_quant_param] quant_strategy=GPTQ``; docs/gptq.md).

For a MatMul/Gemm weight laid out as W[rows, columns] with rows the output channels and columns the
input features a row is multiplied with, the layer's output error on calibration inputs X is
||(W - Q) X||². GPTQ quantizes one column at a time and spreads that column's rounding error over the
columns not yet quantized, weighted by the inverse Hessian H⁻¹ of H = 2/n · Σ x xᵀ, which minimises the
error the remaining columns can still absorb. converter_lite's choices, kept: asymmetric codes in
[-2^(b-1), 2^(b-1)-1] with per-channel params from the original weights, damping 0.01 of the mean
diagonal, round half away from zero. Columns are processed in blocks (converter_lite: 4; here 128,
the same result up to float rounding, in a fraction of the time) with the lazy update between blocks.

Group-wise params (``group_size`` > 0, ptqflow's addition): each group of columns gets its own scale and
zero point per row, computed when GPTQ reaches the group's first column from the weights as updated by
then; a last group may be shorter. A group's scale is a float16 value (rounded up, so the group's range
still fits) and its zero point a code: that is how they are stored (ptq_core.modes.weight.grouped).

Pure NumPy, float64 throughout. The Hessian comes from :mod:`ptq_core.stats.hessian_observer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ptq_core.quant import encode_range, round_half_away

DAMPING = 0.01
#: the ops whose weight GPTQ rounds (input B, contraction over the activation's last axis)
GPTQ_OPS = ("MatMul", "Gemm")
BLOCK = 128


@dataclass(frozen=True)
class GroupedCodes:
    """Codes [rows, columns] with per-(row, group) affine params; ``group_size`` 0 means one group a row."""

    codes: np.ndarray  # int32 in [qmin, qmax]
    scale: np.ndarray  # float64 [rows, groups]
    zero_point: np.ndarray  # int64 [rows, groups]
    group_size: int
    qmin: int
    qmax: int

    def dequantized(self) -> np.ndarray:
        rows, cols = self.codes.shape
        width = self.group_size or cols
        index = np.arange(cols) // width
        return (self.codes - self.zero_point[:, index]) * self.scale[:, index]


def code_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def row_params(w: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric per-row params over [min(w, 0), max(w, 0)] (§5.2, as fixed-bit weights use)."""
    return encode_range(w.min(axis=1), w.max(axis=1), qmin, qmax, symmetric=False)


#: how far a group's range may shrink (clipping its extremes) when that lowers its rounding error
SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _half_params(lo: np.ndarray, hi: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    exact = np.clip((hi - lo) / (qmax - qmin), 2.0 ** -14, 65504.0)
    half = exact.astype(np.float16)
    half = np.where(half.astype(np.float64) < exact, np.nextafter(half, np.float16(np.inf)), half)
    scale = half.astype(np.float64)
    return scale, np.clip(round_half_away(qmin - lo / scale), qmin, qmax).astype(np.int64)


def group_params(w: np.ndarray, qmin: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row asymmetric params of a group of columns: the scale a float16 value (rounded up, within
    float16's normal range), the zero point a code. The range is [min(w, 0), max(w, 0)] shrunk by the
    factor of ``SHRINK`` that gives the group's codes the least squared error: at 3-4 bits, clipping a
    group's one or two extreme values costs less than the coarser steps of its full range."""
    lo, hi = np.minimum(w.min(axis=1), 0.0), np.maximum(w.max(axis=1), 0.0)
    best = best_err = None
    for factor in SHRINK:
        scale, zp = _half_params(lo * factor, hi * factor, qmin, qmax)
        q = quantize_column(w, scale[:, None], zp[:, None], qmin, qmax)
        err = np.sum(((q - zp[:, None]) * scale[:, None] - w) ** 2, axis=1)
        if best is None:
            best, best_err = (scale, zp), err
            continue
        better = err < best_err
        best = (np.where(better, scale, best[0]), np.where(better, zp, best[1]))
        best_err = np.where(better, err, best_err)
    return best


def quantize_column(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = round_half_away(w / scale + zp)
    return np.clip(np.where(np.isfinite(q), q, zp), qmin, qmax)


def rtn(w: np.ndarray, bits: int, group_size: int = 0) -> GroupedCodes:
    """Plain rounding to nearest with the same params layout: GPTQ's baseline."""
    qmin, qmax = code_range(bits)
    rows, cols = w.shape
    width = group_size or cols
    starts = range(0, cols, width)
    scale = np.empty((rows, len(starts)))
    zp = np.empty((rows, len(starts)), np.int64)
    codes = np.empty((rows, cols), np.int32)
    params = group_params if group_size else row_params
    for g, start in enumerate(starts):
        part = w[:, start:start + width].astype(np.float64)
        scale[:, g], zp[:, g] = params(part, qmin, qmax)
        codes[:, start:start + width] = quantize_column(part, scale[:, g:g + 1], zp[:, g:g + 1], qmin, qmax)
    return GroupedCodes(codes, scale, zp, group_size, qmin, qmax)


def inverse_hessian_factor(hessian: np.ndarray, damping: float = DAMPING) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor U of H⁻¹ with H⁻¹ = UᵀU, the dead columns): H damped by ``damping`` of its
    mean diagonal; a column no input ever reached (zero diagonal) gets a unit diagonal and a zero weight."""
    h = np.array(hessian, dtype=np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    inverse = np.linalg.inv(h)
    return np.linalg.cholesky((inverse + inverse.T) / 2).T, dead


def gptq(w: np.ndarray, hessian: np.ndarray, bits: int, group_size: int = 0, block: int = BLOCK,
         damping: float = DAMPING, per_row: bool = True, act_order: bool = False) -> GroupedCodes:
    """GPTQ codes of ``w`` [rows, columns] given the columns' Hessian [columns, columns]; ``per_row=False``
    gives every row the params of the whole tensor (per-layer weights). ``act_order`` quantizes the
    columns in order of falling Hessian diagonal (the inputs that carry most energy first, while the
    most columns are left to absorb their error); groups then keep their natural columns and take their
    params from the original weights ("static groups"), so the stored layout is the same."""
    qmin, qmax = code_range(bits)
    W = np.array(w, dtype=np.float64)
    rows, cols = W.shape
    h = np.asarray(hessian, np.float64)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(cols)
    U, dead = inverse_hessian_factor(h[np.ix_(order, order)], damping)
    W = W[:, order]
    W[:, dead] = 0.0
    width = group_size or cols
    groups = -(-cols // width)
    scale = np.empty((rows, groups))
    zp = np.empty((rows, groups), np.int64)
    if not group_size:  # converter_lite: params from the weights before any error feedback
        if per_row:
            scale[:, 0], zp[:, 0] = row_params(W, qmin, qmax)
        else:
            s, z = row_params(W.reshape(1, -1), qmin, qmax)
            scale[:, 0], zp[:, 0] = s[0], z[0]
    elif act_order:
        natural = np.empty_like(W)
        natural[:, order] = W
        for g in range(groups):
            scale[:, g], zp[:, g] = group_params(natural[:, g * width:(g + 1) * width], qmin, qmax)
    codes = np.empty((rows, cols), np.int32)

    def quantize(i: int, column: np.ndarray, W1: np.ndarray, i2: int) -> np.ndarray:
        c = int(order[i])  # the column's place in the weight
        g = c // width
        if group_size and not act_order and c % group_size == 0:
            ahead = np.concatenate([W1[:, i - (i2 - W1.shape[1]):], W[:, i2:]], axis=1)[:, :group_size]
            scale[:, g], zp[:, g] = group_params(ahead, qmin, qmax)
        q = quantize_column(column, scale[:, g], zp[:, g], qmin, qmax)
        codes[:, c] = q
        return (q - zp[:, g]) * scale[:, g]

    feed_errors_forward(W, U, block, quantize)
    return GroupedCodes(codes, scale, zp, group_size, qmin, qmax)


def feed_errors_forward(W: np.ndarray, U: np.ndarray, block: int,
                        quantize: Callable[[int, np.ndarray, np.ndarray, int], np.ndarray]) -> None:
    """GPTQ's column loop over ``W`` [rows, columns] (in the order quantized) with ``U`` the upper Cholesky
    factor of H⁻¹: ``quantize(i, column, block_weights, block_end)`` rounds column ``i`` and returns its
    dequantized values; its error is spread over the columns after it, lazily between blocks. ``W`` is
    updated in place."""
    cols = W.shape[1]
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            err = (W1[:, i] - quantize(i1 + i, W1[:, i], W1, i2)) / U1[i, i]
            W1[:, i:] -= np.outer(err, U1[i, i:])
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]


def gptq_on_step(w: np.ndarray, hessian: np.ndarray, step, block: int = BLOCK, damping: float = DAMPING,
                 group_size: int = 0) -> np.ndarray:
    """Mixed bit's codes (``bit_num=0``) by GPTQ: the tensor's one step from the mixed-bit search (or, with
    ``group_size``, a step per row and group: ``step`` [rows, groups]), codes ``floor(x / step + 0.5)``
    unbounded as mixed bit rounds them, each column's error fed forward. Returns int32 codes
    [rows, columns]; they decode as ``codes * step``."""
    W = np.array(w, dtype=np.float64)
    U, dead = inverse_hessian_factor(np.asarray(hessian, np.float64), damping)
    W[:, dead] = 0.0
    codes = np.empty(W.shape, np.int32)
    steps = np.asarray(step, np.float32)
    steps = np.full((W.shape[0], 1), steps) if steps.ndim == 0 else steps
    width = group_size or W.shape[1]

    def quantize(i: int, column: np.ndarray, W1: np.ndarray, i2: int) -> np.ndarray:
        s = steps[:, i // width]
        q = np.floor(column.astype(np.float32) / s + np.float32(0.5))
        codes[:, i] = q
        return q.astype(np.float64) * s.astype(np.float64)

    feed_errors_forward(W, U, block, quantize)
    return codes


def row_errors(d: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Each row's ``d H dᵀ`` for a weight error ``d`` [rows, columns]: its output's squared error summed over
    the calibration inputs (× 2/n)."""
    return np.einsum("ij,jk,ik->i", d, np.asarray(hessian, np.float64), d)


def output_errors(w: np.ndarray, coded: GroupedCodes, hessian: np.ndarray) -> np.ndarray:
    """Each row's ``(w - q) H (w - q)ᵀ`` for GPTQ's or rounding's codes."""
    return row_errors(np.asarray(w, np.float64) - coded.dequantized(), hessian)


def gptq_or_nearest(w: np.ndarray, hessian: np.ndarray, bits: int, group_size: int = 0,
                    per_row: bool = True) -> GroupedCodes:
    """GPTQ's codes, except in rows where rounding to nearest leaves less output error on the calibration
    inputs (GPTQ is greedy: with clipped group ranges at 2-3 bits it can lose a row). Rows are independent
    (each is one output channel with its own params), so the choice is made row by row."""
    # per channel: converter_lite's algorithm as it is; group-wise (ptqflow's addition): in act order
    ours = gptq(w, hessian, bits, group_size=group_size, per_row=per_row, act_order=bool(group_size))
    if not per_row and not group_size:
        return ours  # one scale for the whole tensor: rounding to nearest uses the same
    nearest = rtn(np.asarray(w, np.float64), bits, group_size) if group_size else _rtn_per_row(w, bits, ours)
    keep = output_errors(w, ours, hessian) <= output_errors(w, nearest, hessian)
    pick = keep[:, None]
    return GroupedCodes(np.where(pick, ours.codes, nearest.codes), np.where(pick, ours.scale, nearest.scale),
                        np.where(pick, ours.zero_point, nearest.zero_point), group_size, ours.qmin, ours.qmax)


def _rtn_per_row(w: np.ndarray, bits: int, like: GroupedCodes) -> GroupedCodes:
    """Rounding to nearest with GPTQ's own per-row params (converter_lite's, from the original weights)."""
    codes = quantize_column(np.asarray(w, np.float64), like.scale, like.zero_point, like.qmin, like.qmax)
    return GroupedCodes(codes.astype(np.int32), like.scale, like.zero_point, 0, like.qmin, like.qmax)


def why_not_gptq(site) -> str:
    """The summary's reason a weight (a ``WeightSite``) was rounded to nearest under quant_strategy=GPTQ."""
    if site.graph:
        return "GPTQ: weights inside If/Loop/Scan bodies are rounded to nearest"
    if site.op_type == "Conv":
        from ptq_core.modes.weight.conv_patches import MAX_COLUMNS

        return (f"GPTQ rounds the weights of Convs with group 1, an activation input and at most {MAX_COLUMNS} "
                "input features per output channel; rounded to nearest")
    if site.op_type not in GPTQ_OPS:
        return f"GPTQ applies to MatMul, Gemm and Conv; {site.op_type} rounded to nearest"
    return "GPTQ: the weight is not input B of a MatMul/Gemm fed by an activation; rounded to nearest"
