"""The per-tensor statistics of converter_lite's debug reports, with its definitions (§12.1).

All statistics come back as float32, as converter_lite prints them; cosine similarity is a double.
Each function takes any numeric array (float, int, bool) and looks at its flattened values.
"""

from __future__ import annotations

import numpy as np

from ptq_core.quant import cosine as quant_cosine

STAT_COLUMNS = ("Min", "Q1", "Median", "Q3", "MAX", "Mean", "Var", "Sparsity")


def _flat(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"debug statistics need a numeric tensor, got dtype {a.dtype}")
    return a.reshape(-1)


def quartile_positions(n: int) -> tuple[int, int, int]:
    """k1, k2, k3 = floor(n/4), floor(n/2), floor(3n/4) (integer arithmetic, as the C++ code)."""
    return n // 4, n // 2, 3 * n // 4


def quartiles(x) -> tuple[float, float, float]:
    """Q1, Median, Q3 as converter_lite computes them: ``sorted(x[1:])[k-1]`` -- element 0 is left out.

    For k = 0 (fewer than 4 elements for Q1, fewer than 2 for the median) converter_lite reads
    before the sorted range (undefined behaviour); we return ``x[0]``, the element its partial
    sort leaves in place, so one-element tensors report their only value.
    """
    a = _flat(x)
    n = a.size
    if n == 0:
        raise ValueError("quartiles of an empty tensor")
    ks = quartile_positions(n)
    rest = a[1:]
    wanted = sorted({k - 1 for k in ks if k > 0})
    part = np.partition(rest, wanted) if wanted else rest
    return tuple(float(part[k - 1]) if k > 0 else float(a[0]) for k in ks)


def tensor_stats(x) -> dict[str, np.float32]:
    """Min, Q1, Median, Q3, MAX, Mean, Var, Sparsity of one tensor, as float32.

    Mean: the sum accumulated in double, rounded to float, divided by n in float. Var is the
    **population standard deviation** (converter_lite's name is misleading); converter_lite
    accumulates the squared deviations in float, we accumulate in double and round once, which is
    at least as accurate. Sparsity: the share of elements that are exactly 0.
    """
    a = _flat(x)
    n = a.size
    if n == 0:
        raise ValueError("statistics of an empty tensor")
    f = a.astype(np.float64, copy=False)
    q1, med, q3 = quartiles(a)
    mean = np.float32(np.float32(f.sum()) / np.float32(n))
    dev = f - np.float64(mean)
    std = np.float32(np.sqrt(np.float32((dev * dev).sum()) / np.float32(n)))
    return {
        "Min": np.float32(f.min()),
        "Q1": np.float32(q1),
        "Median": np.float32(med),
        "Q3": np.float32(q3),
        "MAX": np.float32(f.max()),
        "Mean": mean,
        "Var": std,
        "Sparsity": np.float32(np.count_nonzero(a == 0) / n),
    }


def cosine(a, b) -> float:
    """converter_lite's report cosine: element counts must match (it aborts otherwise), then the tool's one
    cosine (``ptq_core.quant.cosine``)."""
    if np.size(a) != np.size(b):
        raise ValueError(f"cosine of tensors with {np.size(a)} and {np.size(b)} elements")
    return quant_cosine(a, b)


def clip_rate(origin, dequant) -> np.float32:
    """Share of origin elements outside [min(dequant), max(dequant)]: what the quantized range cut off."""
    o = _flat(origin).astype(np.float64, copy=False)
    d = _flat(dequant)
    if o.size == 0 or d.size == 0:
        return np.float32(0.0)
    lo, hi = float(d.min()), float(d.max())
    return np.float32(np.count_nonzero((o < lo) | (o > hi)) / o.size)


HIST_BINS = 32


def histogram(x, bins: int = HIST_BINS, lo: float | None = None, hi: float | None = None) -> dict:
    """A small fixed-bin histogram (for the HTML page): edges over [lo, hi] (the data range by default)."""
    f = _flat(x).astype(np.float64, copy=False)
    f = f[np.isfinite(f)]
    if lo is None:
        lo = float(f.min()) if f.size else 0.0
    if hi is None:
        hi = float(f.max()) if f.size else 1.0
    if hi <= lo:
        hi = lo + 1.0
    counts, _ = np.histogram(np.clip(f, lo, hi), bins=bins, range=(lo, hi))
    return {"lo": lo, "hi": hi, "counts": [int(c) for c in counts]}
