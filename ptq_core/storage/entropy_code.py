"""The Huffman code of an entropy group: which values form its alphabet, and their code lengths.

One length-limited canonical Huffman code (package-merge, optimal for the limit) over the group's
pooled histogram; the central value range it covers is chosen to minimize the total size, and
every value outside it becomes an outlier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_core.storage.bitstream import bit_length
from ptq_core.storage.entropy_group import MAX_CODE_LEN, raw_dtype

__all__ = ["Code", "code_lengths", "plan_code"]

_MAX_ALPHABET = 4096  # largest central range considered (the in-graph tables stay small)
_OUTLIER_FRACTIONS = (0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)


# ---------------------------------------------------------------------------------------------
# Huffman code


def _package_merge(weights: np.ndarray, max_len: int) -> np.ndarray:
    """Optimal code lengths <= max_len for ascending ``weights`` (m >= 2, 2^max_len >= m).

    Package-merge on weights only: each level's list is the leaves merged with the pairwise
    packages of the level below; the first 2m - 2 items of the top list are selected, and the
    selected items of a list are always a prefix whose leaves are the lightest ones, so a leaf's
    length is the number of levels whose selected prefix holds it.
    """
    m = weights.size
    leaves = weights.astype(np.int64)
    flags = [np.ones(m, dtype=bool)]
    prev = leaves
    for _ in range(max_len - 1):
        half = prev.size // 2
        packages = prev[0 : 2 * half : 2] + prev[1 : 2 * half : 2]
        merged = np.concatenate([leaves, packages])
        order = np.argsort(merged, kind="stable")
        prev = merged[order]
        flags.append(order < m)
    lengths = np.zeros(m, dtype=np.int64)
    take = 2 * m - 2
    for flag in reversed(flags):
        nleaf = int(np.count_nonzero(flag[:take]))
        lengths[:nleaf] += 1
        take = 2 * (take - nleaf)
    return lengths


def code_lengths(counts: np.ndarray, max_len: int) -> np.ndarray:
    """Length-limited Huffman lengths for ``counts`` (any order, all > 0)."""
    if counts.size == 1:
        return np.ones(1, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    lengths = np.empty(counts.size, dtype=np.int64)
    lengths[order] = _package_merge(counts[order], max_len)
    return lengths


def _min_len(m: int) -> int:
    return max(1, bit_length(m - 1))


@dataclass(frozen=True)
class Code:
    """A canonical code: symbols (values) and lengths in canonical order (length, then value)."""

    values: np.ndarray  # int64 [S]
    lengths: np.ndarray  # int64 [S]
    max_len: int

    @property
    def codewords(self) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(1 << (self.max_len - self.lengths))[:-1]])
        return starts >> (self.max_len - self.lengths)


def _canonical(values: np.ndarray, lengths: np.ndarray, max_len: int) -> Code:
    order = np.lexsort((values, lengths))
    return Code(values[order], lengths[order], max_len)


# ---------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class _Plan:
    code: Code
    span: tuple[int, int]  # indices of the first and last distinct value of the alphabet
    estimate_bits: float


def _outlier_entry_bits(n: int, nnz: int, span_bits: int) -> float:
    """Rough bits per outlier entry (gap field + value field), for comparing windows."""
    if nnz == 0:
        return 0.0
    return max(1.0, np.log2(n / nnz) + 1.5) + span_bits


def plan_code(values: np.ndarray, counts: np.ndarray, n: int) -> _Plan:
    """Central value range, alphabet and code lengths minimizing the estimated total bits.

    Candidate ranges leave a fraction of the elements (split evenly between both tails) outside
    as outliers; their cost is estimated as a gap field plus a value field each.
    """
    cum = np.concatenate([[0], np.cumsum(counts)])
    total_span = bit_length(int(values[-1] - values[0]))
    candidates: set[tuple[int, int]] = {(int(np.argmax(counts)),) * 2}
    for frac in _OUTLIER_FRACTIONS:
        cut = int(frac * n / 2)
        lo = int(np.searchsorted(cum, cut, side="right")) - 1  # at most cut elements below lo
        hi = int(np.searchsorted(cum, n - cut, side="left")) - 1
        if lo <= hi:
            candidates.add((lo, hi))
    best: _Plan | None = None
    for lo, hi in sorted(candidates):
        s = hi - lo + 1
        if s > _MAX_ALPHABET or values[hi] - values[lo] >= 1 << 24:
            continue
        inside = counts[lo : hi + 1].copy()
        nnz = n - int(inside.sum())
        # outliers are coded as the most frequent symbol
        inside[int(np.argmax(inside))] += nnz
        lengths = code_lengths(inside, MAX_CODE_LEN)
        bits = float(np.dot(inside, lengths))
        bits += 16 * s * np.dtype(raw_dtype(bit_length(int(values[hi] - values[lo])))).itemsize
        bits += nnz * _outlier_entry_bits(n, nnz, total_span)
        if best is None or bits < best.estimate_bits:
            best = _Plan(_canonical(values[lo : hi + 1], lengths, MAX_CODE_LEN), (lo, hi), bits)
    assert best is not None  # the one-symbol alphabet always qualifies
    # Smallest length limit costing (almost) nothing more: smaller decode tables while folding.
    lo, hi = best.span
    inside = counts[lo : hi + 1].copy()
    inside[int(np.argmax(inside))] += n - int(inside.sum())
    full = float(np.dot(inside, code_lengths(inside, MAX_CODE_LEN)))
    for max_len in range(_min_len(inside.size), MAX_CODE_LEN + 1):
        lengths = code_lengths(inside, max_len)
        if float(np.dot(inside, lengths)) <= full + 0.0002 * n + 64:
            code = _canonical(values[lo : hi + 1], lengths, max_len)
            return _Plan(code, best.span, best.estimate_bits)
    return best
