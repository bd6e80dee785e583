"""The KL observer (§8.3): pass 0 records min/max, pass 1 an |x| histogram over a frozen interval,
and the range is the threshold the KL search (:mod:`ptq_core.stats.kl_search`) picks in it."""

from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np

from ptq_core.quant import DBL_EPSILON
from ptq_core.stats.kl_search import kl_threshold_bin
from ptq_core.stats.observer_base import (
    ActivationRange,
    BaseObserver,
    encode_activation,
    float32_values,
)

#: KL histogram size (§8.3).
KL_BINS = 2048
#: Every KL bin starts at this value (converter_lite fills its histogram with 1e-7).
KL_BIN_INIT = 1e-7


class KLObserver(BaseObserver):
    """Two passes (§8.3): pass 0 = MAX_MIN, pass 1 = |x| histogram with a frozen interval.

    Phase 0 (before ``begin_pass(1)``) merges like MAX_MIN. ``begin_pass(1)`` freezes the
    pass-0 summary (min, max, rounds) and the float32 interval ``max(|min|,|max|)/2048``; from then
    on partials merge only with partials carrying the identical frozen part, and their integer
    bin counts add. The 1e-7 per-bin start value is added once, in :meth:`finalize`.
    """

    method = "KL"
    passes = 2
    keeps_observed_range = True  # the range is the searched threshold; to_state() keeps pass 0's min/max

    def _reset(self) -> None:
        self._lo = math.inf
        self._hi = -math.inf
        self._rounds0 = 0
        self._interval: np.float32 | None = None  # set by begin_pass(1)
        self._counts: np.ndarray | None = None  # int64[KL_BINS], pass 1
        self._rounds1 = 0
        self._values1 = 0  # values seen in pass 1, those in no bin (|x| <= DBL_EPSILON) included
        self._bin: int | None = None  # cached search result, not part of the state

    @property
    def phase(self) -> int:
        return 0 if self._interval is None else 1

    @property
    def interval(self) -> float | None:
        return None if self._interval is None else float(self._interval)

    def spawn(self) -> "KLObserver":
        out = KLObserver()
        if self.phase == 1:
            out._lo, out._hi, out._rounds0, out._interval = self._lo, self._hi, self._rounds0, self._interval
            out._counts = np.zeros(KL_BINS, np.int64)
        return out

    def begin_pass(self, pass_index: int) -> None:
        if pass_index == 0:
            if self.phase != 0:
                raise ValueError("KL observer: pass 0 is over (begin_pass(1) was called)")
            return
        if pass_index != 1:
            raise ValueError(f"KL has 2 passes; no pass {pass_index}")
        if self.phase == 1:
            return  # idempotent
        if self._rounds0 == 0:
            raise ValueError("KL observer: begin_pass(1) before any pass-0 round was observed")
        max_abs = max(abs(np.float32(self._lo)), abs(np.float32(self._hi)))
        self._interval = np.float32(max_abs / np.float32(KL_BINS))  # float32 like UpdateInterval
        self._counts = np.zeros(KL_BINS, np.int64)

    @classmethod
    def reads_extremes(cls, pass_index: int) -> bool:
        return pass_index == 0

    def update_extremes(self, lo: float, hi: float, pass_index: int = 0) -> None:
        if pass_index != 0:
            raise ValueError("KL observer: pass 1 needs the tensor itself (its histogram)")
        if self.phase != 0:
            raise ValueError("KL observer: pass-0 update after begin_pass(1)")
        self._lo = min(self._lo, lo)
        self._hi = max(self._hi, hi)
        self._rounds0 += 1

    @classmethod
    def reads_bin_indices(cls, pass_index: int) -> bool:
        return pass_index == 1

    def update_bin_counts(self, counts: np.ndarray, values: int) -> None:
        """Pass 1 from counts computed elsewhere (:mod:`ptq_core.stats.in_graph`): ``counts[1:]`` are the
        bins, ``counts[0]`` the values in none (``|x| <= DBL_EPSILON``); ``values`` all the tensor's values."""
        if self.phase != 1:
            raise ValueError("KL observer: pass-1 update before begin_pass(1)")
        self._counts += counts[1:KL_BINS + 1]
        self._rounds1 += 1
        self._values1 += int(values)
        self._bin = None

    def update(self, x, pass_index: int = 0) -> None:
        if pass_index == 0:
            _, lo, hi = float32_values(x, self.method)
            self.update_extremes(lo, hi, 0)
            return
        if pass_index != 1:
            raise ValueError(f"KL has 2 passes; cannot update pass {pass_index}")
        if self.phase != 1:
            raise ValueError("KL observer: pass-1 update before begin_pass(1)")
        f, _, _ = float32_values(x, self.method)
        self._counts += histogram_counts(f, self._interval)
        self._rounds1 += 1
        self._values1 += f.size
        self._bin = None

    def merge(self, other: "KLObserver") -> "KLObserver":
        self._check_other(other)
        if other._is_blank():
            return self.copy()
        if self._is_blank():
            return other.copy()
        if self.phase != other.phase:
            raise ValueError("KL observer: cannot merge a pass-0 state with a pass-1 state "
                             "(give pass-1 workers obs.spawn() after begin_pass(1))")
        out = KLObserver()
        if self.phase == 0:
            out._lo = min(self._lo, other._lo)
            out._hi = max(self._hi, other._hi)
            out._rounds0 = self._rounds0 + other._rounds0
            return out
        mine = (self._lo, self._hi, self._rounds0, float(self._interval))
        theirs = (other._lo, other._hi, other._rounds0, float(other._interval))
        if mine != theirs:
            raise ValueError(f"KL observer: pass-1 states froze different pass-0 summaries "
                             f"(min, max, rounds, interval) {mine} vs {theirs}; call begin_pass(1) once "
                             "on the merged pass-0 state and spawn() the workers' partials from it")
        out._lo, out._hi, out._rounds0, out._interval = self._lo, self._hi, self._rounds0, self._interval
        out._counts = self._counts + other._counts
        out._rounds1 = self._rounds1 + other._rounds1
        out._values1 = self._values1 + other._values1
        return out

    def _is_blank(self) -> bool:
        return self.phase == 0 and self._rounds0 == 0

    def histogram(self) -> np.ndarray:
        """The float64 histogram converter_lite searches: counts plus the 1e-7 start value."""
        if self.phase != 1:
            raise ValueError("KL observer: no histogram before begin_pass(1)")
        return self._counts.astype(np.float64) + KL_BIN_INIT

    def threshold_bin(self) -> int:
        """The §8.3 threshold bin of the current histogram (searched once, then cached)."""
        if self._bin is None:
            self._bin = kl_threshold_bin(self.histogram())
        return self._bin

    def threshold(self) -> float:
        """T = (i + 0.5)·interval, in float32 as converter_lite computes it."""
        i = self.threshold_bin()
        return float((np.float32(i) + np.float32(0.5)) * self._interval)

    def finalize(self, qmin: int, qmax: int, symmetric: bool = True) -> ActivationRange:
        """KL is always symmetric (``symmetric`` is ignored) and reports zero point 0."""
        if self.phase != 1:
            raise ValueError("KL observer: finalize before pass 1 (begin_pass(1) and the histogram pass)")
        if self._rounds1 != self._rounds0:
            raise ValueError(f"KL observer: pass 1 saw {self._rounds1} round(s) but pass 0 saw "
                             f"{self._rounds0}; both passes must run every calibration sample")
        t = self.threshold()
        return encode_activation(-t, t, qmin, qmax, True, self.method)

    @property
    def rounds(self) -> int:
        return self._rounds0

    @property
    def values(self) -> int:
        """How many values the histogram pass saw: too few for 2048 bins and the search picks noise."""
        return self._values1

    def to_state(self) -> dict:
        state = {"method": self.method, "min": np.float64(self._lo), "max": np.float64(self._hi),
                 "rounds0": np.int64(self._rounds0)}
        if self._interval is not None:
            state.update(interval=np.float32(self._interval), counts=self._counts.copy(),
                         rounds1=np.int64(self._rounds1), values1=np.int64(self._values1))
        return state

    def _load(self, state: dict) -> None:
        self._reset()
        self._lo = float(state["min"])
        self._hi = float(state["max"])
        self._rounds0 = int(state["rounds0"])
        if "interval" in state:
            counts = np.asarray(state["counts"], np.int64)
            if counts.shape != (KL_BINS,):
                raise ValueError(f"KL state: counts must have shape ({KL_BINS},), got {counts.shape}")
            self._interval = np.float32(state["interval"])
            self._counts = counts.copy()
            self._rounds1 = int(state["rounds1"])
            self._values1 = int(state.get("values1", 0))


def histogram_counts(f: np.ndarray, interval, bins: int = KL_BINS) -> np.ndarray:
    """Integer bin counts of one tensor, as ``DataDistribution::UpdateHistogram`` fills them.

    Values with ``|x| <= DBL_EPSILON`` are skipped; the others go to bin
    ``min(int(|x| / interval), bins-1)``, the division done in float32.
    """
    interval = np.float32(interval)
    ax = np.abs(np.asarray(f, np.float32).reshape(-1))  # a fresh array: worked on in place below
    tiny = int(np.count_nonzero(ax <= DBL_EPSILON))  # DBL_EPSILON = 2**-52 is exact in float32
    if tiny == ax.size:
        return np.zeros(bins, np.int64)
    if not interval > DBL_EPSILON:
        raise ValueError(f"KL observer: pass-1 values up to {float(ax.max())!r} but the pass-0 range is 0 "
                         "(interval 0); converter_lite fails here too")
    with np.errstate(over="ignore"):
        np.divide(ax, interval, out=ax)  # float32 / float32 -> float32
    np.minimum(ax, np.float32(bins - 1), out=ax)
    # truncation, like static_cast<int>; uint16 holds every bin index and bincount reads it 1.6x faster than intp
    index = ax.astype(np.uint16 if bins <= 1 << 16 else np.intp)
    counts = np.bincount(index, minlength=bins).astype(np.int64, copy=False)
    counts[0] -= tiny  # the skipped |x| <= DBL_EPSILON all fell in bin 0 (interval > DBL_EPSILON)
    return counts


def search_thresholds(observers: Iterable, workers: int | None = None) -> None:
    """Run the §8.3 threshold search of every KL observer now, on ``workers`` threads (default: the
    cores): NumPy releases the GIL in it, so 2 cores search a recognizer's hundred tensors nearly twice
    as fast; the results are cached on the observers."""
    from concurrent.futures import ThreadPoolExecutor

    pending = [o for o in observers if isinstance(o, KLObserver) and o.phase == 1 and o._bin is None]
    if len(pending) < 2:
        return
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(KLObserver.threshold_bin, pending))
