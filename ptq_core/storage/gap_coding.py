"""Gap coding of sorted position lists, the one layout of every sparse list we store.

SPARSE's kept elements, the split coding's corrections and an entropy group's outliers are all
stored as the gaps to the previous entry in fixed-width fields, with filler entries where a gap
is too long for the width.
"""

from __future__ import annotations

import numpy as np

from ptq_core.storage.bitstream import MAX_FIELD_BITS, bit_length

__all__ = ["best_gap_width", "entry_count", "gap_entries"]


def gap_entries(positions: np.ndarray, width: int, n_tail: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Gap-code sorted positions with filler entries for long gaps.

    Returns (stored fields = gap - 1, entry index of each real position).  A filler entry is
    emitted wherever the distance to the previous entry reaches 2^width.  If ``n_tail`` is given,
    fillers also continue through the tail up to element n_tail - 1 (converter_lite's SPARSE
    does this; the split coding does not need it).
    """
    span = 1 << width
    prev = np.concatenate([[-1], positions[:-1]]).astype(np.int64)
    gaps = positions.astype(np.int64) - prev
    per_gap = (gaps + span - 1) >> width
    ends = np.cumsum(per_gap) - 1
    body = int(ends[-1]) + 1 if ends.size else 0
    last = int(positions[-1]) if positions.size else -1
    tail = ((n_tail - 1 - last) >> width) if n_tail is not None else 0
    stored = np.full(body + tail, span - 1, dtype=np.int64)
    stored[ends] = gaps - (per_gap - 1) * span - 1
    return stored, ends


def entry_count(gaps: np.ndarray, width: int) -> int:
    """Number of entries gap_entries emits for these gaps (without tail)."""
    return int(((gaps + (1 << width) - 1) >> width).sum())


def best_gap_width(gaps: np.ndarray, value_bits: int) -> tuple[int, int]:
    """(g, entries): the gap width in 1..MAX_FIELD_BITS minimizing entries * (g + value_bits).

    ``gaps`` are the distances to the previous position (-1 before the first); the smallest g wins
    ties.  The split coding and entropy groups choose their gap width this way.
    """
    best_g, best_entries = 0, 0
    for g in range(1, min(MAX_FIELD_BITS, max(1, bit_length(int(gaps.max()) - 1))) + 1):
        entries = entry_count(gaps, g)
        if best_g == 0 or entries * (g + value_bits) < best_entries * (best_g + value_bits):
            best_g, best_entries = g, entries
    return best_g, best_entries
