"""Integer code arrays as every encoder takes them: checked to hold integers, and counted.

The fixed-bit, split and entropy-group encoders all start from this check and this histogram.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_codes", "value_counts"]

_BINCOUNT_MAX_SPAN = 1 << 22  # counting distinct values by bincount beats sorting below this span


def as_codes(q: np.ndarray, name: str = "q") -> np.ndarray:
    arr = np.asarray(q)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer codes, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; there is nothing to encode")
    return arr


def value_counts(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts (bincount for narrow spans, sort otherwise)."""
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < _BINCOUNT_MAX_SPAN:
        counts = np.bincount(flat - lo)
        present = np.flatnonzero(counts)
        return present.astype(np.int64) + lo, counts[present].astype(np.int64)
    values, counts = np.unique(flat, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)
