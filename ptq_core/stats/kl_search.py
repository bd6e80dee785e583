"""The §8.3 KL threshold search, vectorized: the divergence of every candidate threshold bin of a
histogram, and the bin that minimizes it. Pure NumPy on a histogram; knows nothing of observers."""

from __future__ import annotations

import math

import numpy as np

from ptq_core.quant import DBL_EPSILON

#: The number of quantized bins a KL threshold is compressed to (§8.3).
KL_TARGET_BINS = 128
#: converter_lite's "non-empty" test for whole bins inside a slot (``kEps``); partial edge bins
#: and the expansion use ``|h| > DBL_EPSILON``.
KL_INNER_EPS = 1e-8


def kl_divergences(hist, target_bins: int = KL_TARGET_BINS, chunk: int = 128) -> np.ndarray:
    """KL divergence of every candidate threshold bin ``i`` in ``target_bins … len(hist)-1``.

    ``hist`` is the histogram exactly as converter_lite searches it (counts plus the start
    value). For candidate i: P = hist[0:i] with the mass of bins ≥ i added to P[i-1]; Q splits
    [0, i) into ``target_bins`` equal fractional slots, sums each slot (edge bins by their overlap),
    and spreads the slot mass back evenly over the slot's non-empty bins (whole bins count when
    ``|h| > 1e-8``, partial edge bins when ``|h| > DBL_EPSILON``; every expanded bin must pass
    ``|h| > DBL_EPSILON``); both normalized; KL = Σ p·ln(p/q) over p ≠ 0, a term with q = 0 adding
    1.0. Slot boundaries are exact rationals (i·j/target), as in converter_lite whose float32
    boundaries are exact for these sizes.

    A histogram with no empty bin (every one an observer builds) is searched from prefix sums
    (``_kl_all_bins_filled``, ~0.04 s for 2048 bins on one core); others bin by bin, vectorized over
    blocks of ``chunk`` candidates (~0.3 s). Computed in float64;
    converter_lite sums in float32, so candidates whose KL differ by less than float32 rounding
    (relative ~1e-6) can order differently there.
    """
    h = np.asarray(hist, np.float64).reshape(-1)
    n, t = h.size, int(target_bins)
    if t < 1 or n <= t:
        raise ValueError(f"KL search needs more bins ({n}) than target bins ({t})")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError("KL search: histogram must be finite and non-negative")
    total = math.fsum(h)
    if not total > DBL_EPSILON:
        raise ValueError("KL search: empty histogram")
    ah = np.abs(h)
    nz_edge = ah > DBL_EPSILON
    nz_inner = ah > KL_INNER_EPS
    if nz_inner.all():  # every histogram an observer builds: its bins start at 1e-7
        return _kl_all_bins_filled(h, t, 2 * chunk)
    # tail[i] = sum(h[i:]), summed from the small end
    tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])
    out = np.empty(n - t, np.float64)
    for c0 in range(t, n, chunk):
        c1 = min(c0 + chunk, n)
        out[c0 - t:c1 - t] = _kl_block(h, nz_edge, nz_inner, tail, t, c0, c1)
    return out


def _kl_all_bins_filled(h: np.ndarray, t: int, chunk: int = 256) -> np.ndarray:
    """``kl_divergences`` when no bin is empty, from prefix sums: O(target) per candidate, not O(i).

    With every bin non-empty each slot counts its full width (i/t bins), Q's total is the kept mass
    H[i] and P's the whole histogram, so for candidate i

        KL = (Σ p·ln p - Σ p·ln q) / P - ln P + ln Q.

    Σ p·ln p is a prefix sum of h·ln h plus the last bin (which carries the tail); Σ p·ln q takes, per
    slot, ln(slot average) times the mass of the bins wholly inside it (a prefix-sum difference) plus
    the at most t-1 bins that straddle two slots, one by one. A few ms for 2048 bins instead of ~0.2 s;
    the same values as the bin-by-bin sum to float64 rounding (held to the literal reference in tests).
    """
    n = h.size
    zero = np.zeros(1)
    # H[k] = sum(h[:k]), kept as whole and fractional parts: a slot's mass is a difference of two prefix
    # sums, and an empty bin's 1e-7 would drown in the rounding of a 1e5-count prefix otherwise
    whole = np.floor(h)
    H_whole = np.concatenate([zero, np.cumsum(whole)])  # exact: integers below 2**53
    H_frac = np.concatenate([zero, np.cumsum(h - whole)])
    H = H_whole + H_frac
    A = np.concatenate([zero, np.cumsum(h * np.log(h))])  # A[k] = sum(h ln h over [:k])
    tail = np.concatenate([np.cumsum(h[::-1])[::-1], [0.0]])  # summed from the small end, as in the block path
    return np.concatenate([_kl_filled_block(h, t, H_whole, H_frac, H, A, tail, c0, min(c0 + chunk, n))
                           for c0 in range(t, n, chunk)])


def _kl_filled_block(h, t: int, H_whole, H_frac, H, A, tail, c0: int, c1: int) -> np.ndarray:
    """``_kl_all_bins_filled`` for candidates c0 … c1-1 (blocks keep the temporaries at a few MB a thread)."""
    n = h.size
    cand = np.arange(c0, c1, dtype=np.int64)[:, None]  # (R, 1)
    bounds = cand * np.arange(t + 1, dtype=np.int64)[None, :]  # slot edges in units of 1/t, (R, t+1)
    edge_bin, rem = bounds // t, bounds % t
    straddles = rem > 0  # the boundary falls inside bin edge_bin
    lo = edge_bin[:, :-1] + straddles[:, :-1]  # first bin wholly inside slot j
    hi = edge_bin[:, 1:]  # one past the last
    inner = (H_whole[hi] - H_whole[lo]) + (H_frac[hi] - H_frac[lo])
    e = np.minimum(edge_bin, n - 1)
    left = np.where(straddles[:, :-1], (t - rem[:, :-1]) / t * h[e[:, :-1]], 0.0)
    right = np.where(straddles[:, 1:], rem[:, 1:] / t * h[e[:, 1:]], 0.0)
    mass = inner + left + right
    avg = mass / (cand / t)  # every bin counts: the slot's width in bins
    log_avg = np.log(avg)
    # bins straddling boundary j (1 <= j < t): q = (rem/t)·avg[j-1] + (1 - rem/t)·avg[j]
    r_mid, s_mid = rem[:, 1:-1], straddles[:, 1:-1]
    q_edge = r_mid / t * avg[:, :-1] + (t - r_mid) / t * avg[:, 1:]
    edge_terms = np.where(s_mid, h[e[:, 1:-1]] * np.log(np.where(s_mid, q_edge, 1.0)), 0.0)
    i = cand[:, 0]
    t_i = tail[i]
    last = h[i - 1] + t_i  # the last kept bin carries the tail
    p_ln_p = A[i - 1] + last * np.log(last)
    p_ln_q = (inner * log_avg).sum(axis=1) + edge_terms.sum(axis=1) + t_i * log_avg[:, -1]
    total_p, total_q = H[i] + t_i, H[i]
    return (p_ln_p - p_ln_q) / total_p - np.log(total_p) + np.log(total_q)


def _kl_block(h, nz_edge, nz_inner, tail, t: int, c0: int, c1: int) -> np.ndarray:
    n = h.size
    cand = np.arange(c0, c1, dtype=np.int64)  # candidate i
    rows = cand.size
    # --- slot masses and non-empty counts: gather up to m bins per slot -----------------------
    # Units of 1/t: slot j of candidate i spans [j*i, (j+1)*i); bin k spans [k*t, (k+1)*t).
    m = -(-(c1 - 1) // t) + 1  # ceil(max slot width) + 1 bins can overlap a slot
    j = np.arange(t, dtype=np.int64)
    start = j[None, :] * cand[:, None]  # (rows, t)
    end = start + cand[:, None]
    k = (start // t)[:, :, None] + np.arange(m, dtype=np.int64)[None, None, :]  # (rows, t, m)
    ov = np.minimum(end[:, :, None], (k + 1) * t) - np.maximum(start[:, :, None], k * t)
    ov = np.maximum(ov, 0)
    kc = np.minimum(k, n - 1)
    w = ov / t  # exact: multiples of 1/t
    mass = np.einsum("rsm,rsm->rs", w, h[kc])
    nz = np.where(ov == t, nz_inner[kc], nz_edge[kc])
    cnt = np.einsum("rsm,rsm->rs", w, nz.astype(np.float64))
    avg = np.zeros_like(mass)
    np.divide(mass, cnt, out=avg, where=cnt > DBL_EPSILON)
    del k, ov, kc, w, nz
    # --- expand back to i bins, flattened over the ragged (candidate, bin<i) triangle -------------
    lengths = cand
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    total_len = int(lengths.sum())
    row = np.repeat(np.arange(rows, dtype=np.int64), lengths)
    kk = np.arange(total_len, dtype=np.int64) - np.repeat(starts, lengths)  # bin index within row
    ii = cand[row]
    j1 = (kk * t) // ii  # slot holding the bin's left edge
    end1 = (j1 + 1) * ii  # that slot's right edge, units 1/t
    w1n = np.minimum((kk + 1) * t, end1) - kk * t  # overlap with slot j1, units 1/t
    w1 = w1n / t
    w2 = (t - w1n) / t  # remainder lies in slot j1+1 (exists whenever w2 > 0)
    j2 = np.minimum(j1 + 1, t - 1)
    flat_avg = avg.reshape(-1)
    base = row * t
    q = np.where(nz_edge[kk], w1 * flat_avg[base + j1] + w2 * flat_avg[base + j2], 0.0)
    del j1, end1, w1n, w1, w2, j2, base
    p = h[kk]
    last = starts + lengths - 1
    p[last] += tail[cand]
    sum_p = np.add.reduceat(p, starts)
    sum_q = np.add.reduceat(q, starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        pn = p / sum_p[row]
        qn = q / sum_q[row]
        terms = np.where(pn != 0, np.where(qn == 0, 1.0, pn * np.log(pn / qn)), 0.0)
    return np.add.reduceat(terms, starts)


def kl_threshold_bin(hist, target_bins: int = KL_TARGET_BINS) -> int:
    """The first candidate bin with the strictly smallest KL divergence (§8.3)."""
    kl = kl_divergences(hist, target_bins)
    return int(target_bins + int(np.argmin(kl)))
