"""Split coding: our stand-in for converter_lite's FSE coding of mixed-bit codes (§11.3).

converter_lite entropy-codes unbounded mixed-bit codes with FSE, which no standard ONNX op can
decode.  This stores a k-bit low part for every element plus a sparse list of corrections for the
few elements that do not fit; converter_lite's fixed-bit kinds compete when the codes allow.

Stream layout (n = number of elements, "field(w)" = a w-bit unsigned integer):

``split`` (ours, for unbounded mixed-bit codes)
    ``arrays["stream"]``: uint8, ceil((n*k + nnz*(g + h))/8) bytes, an LSB-first stream like
    ``bitpack``: n fields(k) holding (q_i - offset) mod 2^k, then nnz fields(g) holding gap - 1 of
    each correction entry (gap = distance to the previous entry, -1 before the first), then the
    corrections c = hi - corr_min, where hi = floor((q_i - offset) / 2^k): nnz fields(min(h, 16))
    holding c mod 2^16, then, only when h > 16, nnz fields(h - 16) holding c >> 16 (the split keeps
    every field decodable in int32 even for int32-wide codes).  Every element whose hi is not 0
    has an entry; when a gap would exceed 2^g a filler entry with hi = 0 is inserted 2^g after
    the previous one.  Decoding: q_i = offset + low_i + 2^k * hi_i.  The offset is chosen so that
    offset + 2^k - 1 fits in int32.  With no outliers this is plain bit-packing at width k.
    ``meta`` holds k, offset, nnz, g ("gap_bits"), h ("corr_bits") and corr_min.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_core.storage.bitstream import MAX_FIELD_BITS, bit_length, pack_fields
from ptq_core.storage.code_arrays import as_codes, value_counts
from ptq_core.storage.encoded import EncodedTensor
from ptq_core.storage.fixed_bit import encode_fixed
from ptq_core.storage.gap_coding import best_gap_width, gap_entries

__all__ = ["encode_split", "split_correction_bits"]

_SPLIT_LOW_BITS = range(1, 17)
_SPLIT_CORR_LOW_BITS = 16  # split corrections wider than this into two fields
_INT32_MAX = int(np.iinfo(np.int32).max)


@dataclass(frozen=True)
class _SplitPlan:
    low_bits: int
    offset: int
    positions: np.ndarray  # elements whose hi part is not 0
    hi: np.ndarray  # their hi parts
    gap_bits: int
    corr_bits: int
    corr_min: int
    nnz: int

    def stream_bits(self, n: int) -> int:
        return n * self.low_bits + self.nnz * (self.gap_bits + self.corr_bits)


def _best_window(values: np.ndarray, cumulative: np.ndarray, low_bits: int) -> int:
    """Start of the 2^k-wide value window holding the most elements (fewest outliers).

    The start is pulled down so the window ends inside int32 (covering no fewer elements, as no
    value lies above), which keeps offset + low in int32 for the ONNX decoder.
    """
    ends = np.searchsorted(values, values + (1 << low_bits), side="left")
    covered = cumulative[ends] - cumulative[: values.size]
    start = int(values[int(np.argmax(covered))])
    return min(start, _INT32_MAX - (1 << low_bits) + 1)


def _split_plan(flat: np.ndarray, low_bits: int, offset: int) -> _SplitPlan | None:
    """Outliers, correction width and best gap width for one low width; None if unstorable."""
    hi_all = (flat - offset) >> low_bits
    positions = np.flatnonzero(hi_all)
    if positions.size == 0:
        return _SplitPlan(low_bits, offset, positions, positions.astype(np.int64), 0, 0, 0, 0)
    hi = hi_all[positions]
    corr_min = min(int(hi.min()), 0)
    corr_bits = bit_length(max(int(hi.max()), 0) - corr_min)
    if corr_bits > _SPLIT_CORR_LOW_BITS + MAX_FIELD_BITS:
        return None
    gaps = np.diff(positions, prepend=-1)
    best_g, best_nnz = best_gap_width(gaps, corr_bits)
    return _SplitPlan(low_bits, offset, positions, hi, best_g, corr_bits, corr_min, best_nnz)


def _best_split_plan(flat: np.ndarray) -> _SplitPlan:
    """Scan k = 1..16, keeping the plan with the fewest stream bits.

    The low part alone costs n*k bits, so the scan stops once that exceeds the best total, or once
    a k leaves no outliers (wider k can only cost more).
    """
    n = flat.size
    values, counts = value_counts(flat)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    best: _SplitPlan | None = None
    for k in _SPLIT_LOW_BITS:
        if best is not None and n * k >= best.stream_bits(n):
            break
        plan = _split_plan(flat, k, _best_window(values, cumulative, k))
        if plan is None:
            continue
        if best is None or plan.stream_bits(n) < best.stream_bits(n):
            best = plan
        if plan.nnz == 0:
            break
    if best is None:
        raise ValueError("no low width 1..16 can store these codes")
    return best


def _encode_split_plan(arr: np.ndarray, flat: np.ndarray, plan: _SplitPlan) -> EncodedTensor:
    k = plan.low_bits
    low = (flat - plan.offset) & ((1 << k) - 1)
    segments = [(low, k)]
    if plan.nnz:
        gaps, ends = gap_entries(plan.positions, plan.gap_bits, n_tail=None)
        corr = np.full(gaps.size, -plan.corr_min, dtype=np.int64)
        corr[ends] = plan.hi - plan.corr_min
        low_bits, high_bits = split_correction_bits(plan.corr_bits)
        segments += [(gaps, plan.gap_bits), (corr & ((1 << low_bits) - 1), low_bits), (corr >> low_bits, high_bits)]
    stream = pack_fields(segments, msb_first=False)
    meta = {
        "n": int(flat.size),
        "k": k,
        "offset": plan.offset,
        "nnz": plan.nnz,
        "gap_bits": plan.gap_bits,
        "corr_bits": plan.corr_bits,
        "corr_min": plan.corr_min,
    }
    return EncodedTensor("split", k, tuple(arr.shape), {"stream": stream}, meta)


def split_correction_bits(corr_bits: int) -> tuple[int, int]:
    """Widths of the two correction fields of a split stream: (min(h, 16), max(h - 16, 0))."""
    return min(corr_bits, _SPLIT_CORR_LOW_BITS), max(corr_bits - _SPLIT_CORR_LOW_BITS, 0)


def _signed_width(lo: int, hi: int) -> int:
    """Smallest b with [lo, hi] inside [-2^(b-1), 2^(b-1) - 1]."""
    return max(bit_length(-lo - 1) if lo < 0 else 0, bit_length(hi) if hi > 0 else 0) + 1


def encode_split(q: np.ndarray) -> EncodedTensor:
    """Store unbounded signed codes (mixed-bit quantization) compactly.

    converter_lite entropy-codes these with FSE, which standard ONNX ops cannot undo.  Instead
    each tensor gets the low width k (1..16) and value window that minimize the total bytes of a
    k-bit low part plus gap-coded corrections for the outliers (layout in the module docstring).
    When the codes fit a signed 16-bit range, converter_lite's fixed kinds (bit-packing at the
    full needed width, indexing, sparse around 0) compete too; on ties those win.
    """
    arr = as_codes(q)
    flat = arr.reshape(-1).astype(np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
        raise ValueError(f"codes span [{lo}, {hi}], outside the int32 range")
    candidates = []
    width = _signed_width(lo, hi)
    if width <= 16:
        candidates.append(encode_fixed(arr, width, np.zeros(1, dtype=np.int64)))
    candidates.append(_encode_split_plan(arr, flat, _best_split_plan(flat)))
    return min(candidates, key=lambda enc: enc.nbytes)
