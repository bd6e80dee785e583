"""Activation range observers for full quantization (docs/converter-lite.md §8.1–8.4), as mergeable states.

One observer per activation tensor collects statistics over calibration rounds (one round = one
sample = one forward pass). Rounds may be split across workers in any way: each worker feeds its
rounds to its own partial observer, and the partials are merged in any tree shape. ``merge`` is
associative and commutative, and a merged state equals the state of one observer fed every round
serially, **bit for bit** (min/max are exact, histogram counts are integers, REMOVAL_OUTLIER's
running sums are exact rationals). A state holds fixed-size summaries only; nothing grows with
the number of rounds except two Python integers (REMOVAL_OUTLIER's exact sums, O(log rounds)).

Typical driver (Dask, threads or a plain loop)::

    parts = [make_observer(method) for _ in chunks]        # pass 0, one partial per chunk
    for part, chunk in zip(parts, chunks):
        for x in chunk: part.update(x)
    obs = merge_all(parts)
    if obs.passes == 2:                                    # KL: histogram pass
        obs.begin_pass(1)                                  # freezes the bin interval
        parts = [obs.spawn() for _ in chunks]              # blank pass-1 partials, same interval
        ...  part.update(x, pass_index=1) ...
        obs = merge_all(parts)
    rng = obs.finalize(qmin, qmax, symmetric)

converter_lite computes on the ``float`` activations it records, so every input is taken as
float32 (a float64 tensor is rounded to float32 first), and min/max, order statistics, the KL
interval, bin index and threshold are computed in float32 exactly as converter_lite does. Sums,
the KL search and the §5.2 encoding run in float64 (converter_lite keeps the histogram and the KL
sums in float32; see :func:`kl_divergences` for what that changes). NaN or Inf in a tensor raises
``ValueError`` naming what was seen; the caller adds the tensor and sample names.

No Dask, Prefect or ONNX imports here: pure NumPy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from ptq_core.errors import did_you_mean
from ptq_core.quant import DBL_EPSILON, encode_range, round_half_away

#: KL histogram size and the number of quantized bins a threshold is compressed to (§8.3).
KL_BINS = 2048
KL_TARGET_BINS = 128
#: Every KL bin starts at this value (converter_lite fills its histogram with 1e-7).
KL_BIN_INIT = 1e-7
#: converter_lite's "non-empty" test for whole bins inside a slot (``kEps``); partial edge bins
#: and the expansion use ``|h| > DBL_EPSILON``.
KL_INNER_EPS = 1e-8
#: REMOVAL_OUTLIER quantile fractions; converter_lite multiplies these *float* constants by
#: ``float(n)`` in float32 and truncates.
OUTLIER_LOW = np.float32(0.0001)
OUTLIER_HIGH = np.float32(0.9999)

# Every float32 is an integer multiple of 2**-149, so float32 sums are exact as integers in
# these units (REMOVAL_OUTLIER's running sums).
_F32_UNIT_EXP = 149


@dataclass(frozen=True)
class ActivationRange:
    """A tensor's activation quantization parameters.

    ``lo``/``hi`` are the statistics fed to the §5.2 encoding (MAX_MIN: global min/max; REMOVAL_OUTLIER:
    mean per-round quantiles; KL: ``∓T``), ``scale``/``zero_point`` the resulting params, and
    ``encode_min``/``encode_max`` the nudged range converter_lite records as the param's min/max (§8.4).
    """

    lo: float
    hi: float
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    method: str
    encode_min: float = math.nan
    encode_max: float = math.nan


@runtime_checkable
class Observer(Protocol):
    """One per activation tensor; see the module docstring for the driving protocol."""

    method: str
    passes: int

    def update(self, x: np.ndarray, pass_index: int = 0) -> None: ...

    def merge(self, other: "Observer") -> "Observer": ...

    def begin_pass(self, pass_index: int) -> None: ...

    def finalize(self, qmin: int, qmax: int, symmetric: bool) -> ActivationRange: ...

    def spawn(self) -> "Observer": ...

    def to_state(self) -> dict: ...


# ---------------------------------------------------------------------------------------------
# shared helpers


def _min_max(f: np.ndarray, method: str, converted_from_wider: bool = False) -> tuple[float, float]:
    """Global min and max of a float32 array; NaN/Inf raise ``ValueError`` naming the counts."""
    lo, hi = f.min(), f.max()  # NaN propagates through both; ±Inf shows up as an end
    if np.isfinite(lo) and np.isfinite(hi):
        return float(lo), float(hi)
    nan = int(np.count_nonzero(np.isnan(f)))
    pinf = int(np.count_nonzero(f == np.inf))
    ninf = int(np.count_nonzero(f == -np.inf))
    seen = ", ".join(f"{c} {name}" for c, name in ((nan, "NaN"), (pinf, "+Inf"), (ninf, "-Inf")) if c)
    extra = " (after rounding to float32; values beyond ±3.4e38 become Inf)" if converted_from_wider else ""
    raise ValueError(f"{method} observer: tensor has non-finite values: {seen} among {f.size}{extra}")


def _prepare(x, method: str) -> tuple[np.ndarray, float, float]:
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{method} observer: cannot observe a tensor of dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{method} observer: empty tensor (0 values); converter_lite refuses it too")
    wider = a.dtype.kind == "f" and a.dtype.itemsize > 4
    with np.errstate(over="ignore"):
        f = a.astype(np.float32, copy=False).reshape(-1)
    try:
        lo, hi = _min_max(f, method)
    except ValueError:
        if wider and np.all(np.isfinite(a)):  # finite in float64, Inf only after the cast
            _min_max(f, method, converted_from_wider=True)
        raise
    return f, lo, hi


def _encode(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool, method: str) -> ActivationRange:
    """§5.2 via :func:`ptq_core.quant.encode_range`; a symmetric encoding reports zp 0.

    converter_lite's ``DataDistribution::GetZeroPoint`` returns 0 whenever the encoding is
    symmetric (KL always, MAX_MIN/REMOVAL_OUTLIER on symmetric devices). For signed ranges
    ([-128,127], [-127,127]) §5.2 gives 0 anyway; for an unsigned range it would not, and
    converter_lite still writes 0.
    """
    if not qmax > qmin:
        raise ValueError(f"{method}: need qmax > qmin, got [{qmin}, {qmax}]")
    scale, zp = encode_range(np.array([lo]), np.array([hi]), qmin, qmax, symmetric)
    emin, emax = _encoded_bounds(lo, hi, qmin, qmax, symmetric)
    return ActivationRange(lo=float(lo), hi=float(hi), scale=float(scale[0]),
                           zero_point=0 if symmetric else int(zp[0]), qmin=int(qmin), qmax=int(qmax),
                           method=method, encode_min=emin, encode_max=emax)


def _encoded_bounds(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
    """Steps 1–4 of §5.2 (the nudged, float32-stored range); mirrors ``encode_range`` exactly."""
    hi = max(hi, lo + 1e-10)
    if symmetric:
        a = max(abs(lo), abs(hi))
        lo, hi = -a, a
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = float(qmax - qmin)
    step = (hi - lo) / span
    z = float(round_half_away(-lo / step))
    return float(np.float32((0.0 - z) * step)), float(np.float32((span - z) * step))


def _f32_units(v: float) -> int:
    """A float32 value as an exact integer count of 2**-149."""
    num, den = float(v).as_integer_ratio()
    return num * ((1 << _F32_UNIT_EXP) // den)


def _mean_of_units(total: int, count: int) -> float:
    """Exact mean of float32 values given as summed 2**-149 units, rounded once to float64,
    then to float32 as converter_lite returns it (``std::pair<float, float>``)."""
    return float(np.float32(float(Fraction(total, count << _F32_UNIT_EXP))))


class _Base:
    method: str = ""
    passes: int = 1

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------------
    def to_state(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def _load(self, state: dict) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict):
        if state.get("method") != cls.method:
            raise ValueError(f"{cls.method}: state is for method {state.get('method')!r}")
        obj = cls.__new__(cls)
        obj._load(state)
        return obj

    def __getstate__(self) -> dict:
        return self.to_state()

    def __setstate__(self, state: dict) -> None:
        self._load(state)

    def copy(self):
        return type(self).from_state(self.to_state())

    def spawn(self):
        """A blank partial state for a worker (KL in pass 1 keeps the frozen pass-0 part)."""
        return type(self)()

    # -- protocol ---------------------------------------------------------------------------
    def begin_pass(self, pass_index: int) -> None:
        if pass_index != 0:
            raise ValueError(f"{self.method} has {self.passes} pass(es); no pass {pass_index}")

    def _check_pass(self, pass_index: int) -> None:
        if pass_index != 0:
            raise ValueError(f"{self.method} has {self.passes} pass(es); cannot update pass {pass_index}")

    def _check_other(self, other) -> None:
        if type(other) is not type(self):
            raise ValueError(f"cannot merge {type(other).__name__} into {type(self).__name__}")

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_state().items()
                         if k != "method" and not (isinstance(v, np.ndarray) and v.size > 4))
        return f"{type(self).__name__}({body})"


# ---------------------------------------------------------------------------------------------
# MAX_MIN


class MaxMinObserver(_Base):
    """Running global min and max over all values of all rounds (§8.2)."""

    method = "MAX_MIN"
    passes = 1

    def _reset(self) -> None:
        self._lo = math.inf
        self._hi = -math.inf
        self._rounds = 0

    def update(self, x, pass_index: int = 0) -> None:
        self._check_pass(pass_index)
        _, lo, hi = _prepare(x, self.method)
        self._lo = min(self._lo, lo)
        self._hi = max(self._hi, hi)
        self._rounds += 1

    def merge(self, other: "MaxMinObserver") -> "MaxMinObserver":
        self._check_other(other)
        out = MaxMinObserver()
        out._lo = min(self._lo, other._lo)
        out._hi = max(self._hi, other._hi)
        out._rounds = self._rounds + other._rounds
        return out

    def finalize(self, qmin: int, qmax: int, symmetric: bool) -> ActivationRange:
        if self._rounds == 0:
            raise ValueError("MAX_MIN observer: no calibration round was observed")
        return _encode(self._lo, self._hi, qmin, qmax, bool(symmetric), self.method)

    @property
    def rounds(self) -> int:
        return self._rounds

    def to_state(self) -> dict:
        return {"method": self.method, "min": np.float64(self._lo), "max": np.float64(self._hi),
                "rounds": np.int64(self._rounds)}

    def _load(self, state: dict) -> None:
        self._lo = float(state["min"])
        self._hi = float(state["max"])
        self._rounds = int(state["rounds"])


# ---------------------------------------------------------------------------------------------
# REMOVAL_OUTLIER


def outlier_positions(n: int) -> tuple[int, int]:
    """Order-statistic positions converter_lite uses for a round of ``n`` values.

    ``int(0.0001f * float(n))`` and ``int(0.9999f * float(n))`` evaluated in float32, as in
    ``DataDistribution::RecordMaxMinValueArray``. This is ⌊0.0001·n⌋/⌊0.9999·n⌋ for most n, and
    always (0, n-1) for n < 10000; float32 rounding makes it differ for some larger n, e.g.
    n = 10001 gives (1, 10000) where the exact floor would give 9999.
    """
    fn = np.float32(n)
    i0 = int(OUTLIER_LOW * fn)
    i1 = int(OUTLIER_HIGH * fn)
    return min(i0, n - 1), min(max(i1, 0), n - 1)


class RemovalOutlierObserver(_Base):
    """Per round the 0.01 %/99.99 % order statistics; final range = their means over rounds (§8.2)."""

    method = "REMOVAL_OUTLIER"
    passes = 1

    def _reset(self) -> None:
        self._lo_units = 0  # exact sum of per-round lows, in 2**-149 units
        self._hi_units = 0
        self._rounds = 0

    def update(self, x, pass_index: int = 0) -> None:
        self._check_pass(pass_index)
        f, mn, mx = _prepare(x, self.method)
        i0, i1 = outlier_positions(f.size)
        if i0 == 0 and i1 == f.size - 1:
            lo, hi = mn, mx
        else:
            part = np.partition(f, (i0, i1))
            lo, hi = float(part[i0]), float(part[i1])
        self._lo_units += _f32_units(lo)
        self._hi_units += _f32_units(hi)
        self._rounds += 1

    def merge(self, other: "RemovalOutlierObserver") -> "RemovalOutlierObserver":
        self._check_other(other)
        out = RemovalOutlierObserver()
        out._lo_units = self._lo_units + other._lo_units
        out._hi_units = self._hi_units + other._hi_units
        out._rounds = self._rounds + other._rounds
        return out

    def means(self) -> tuple[float, float]:
        """(mean per-round low, mean per-round high), float32-valued like converter_lite's."""
        if self._rounds == 0:
            raise ValueError("REMOVAL_OUTLIER observer: no calibration round was observed")
        return _mean_of_units(self._lo_units, self._rounds), _mean_of_units(self._hi_units, self._rounds)

    def finalize(self, qmin: int, qmax: int, symmetric: bool) -> ActivationRange:
        lo, hi = self.means()
        return _encode(lo, hi, qmin, qmax, bool(symmetric), self.method)

    @property
    def rounds(self) -> int:
        return self._rounds

    def to_state(self) -> dict:
        # The sums are exact Python ints (a few dozen bytes, growing with log(rounds)).
        return {"method": self.method, "lo_units": self._lo_units, "hi_units": self._hi_units,
                "unit_exp": _F32_UNIT_EXP, "rounds": np.int64(self._rounds)}

    def _load(self, state: dict) -> None:
        if int(state.get("unit_exp", _F32_UNIT_EXP)) != _F32_UNIT_EXP:
            raise ValueError("REMOVAL_OUTLIER state uses a different fixed-point unit")
        self._lo_units = int(state["lo_units"])
        self._hi_units = int(state["hi_units"])
        self._rounds = int(state["rounds"])


# ---------------------------------------------------------------------------------------------
# KL


class KLObserver(_Base):
    """Two passes (§8.3): pass 0 = MAX_MIN, pass 1 = |x| histogram with a frozen interval.

    Phase 0 (before ``begin_pass(1)``) merges like MAX_MIN. ``begin_pass(1)`` freezes the
    pass-0 summary (min, max, rounds) and the float32 interval ``max(|min|,|max|)/2048``; from then
    on partials merge only with partials carrying the identical frozen part, and their integer
    bin counts add. The 1e-7 per-bin start value is added once, in :meth:`finalize`.
    """

    method = "KL"
    passes = 2

    def _reset(self) -> None:
        self._lo = math.inf
        self._hi = -math.inf
        self._rounds0 = 0
        self._interval: np.float32 | None = None  # set by begin_pass(1)
        self._counts: np.ndarray | None = None  # int64[KL_BINS], pass 1
        self._rounds1 = 0
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

    def update(self, x, pass_index: int = 0) -> None:
        if pass_index == 0:
            if self.phase != 0:
                raise ValueError("KL observer: pass-0 update after begin_pass(1)")
            _, lo, hi = _prepare(x, self.method)
            self._lo = min(self._lo, lo)
            self._hi = max(self._hi, hi)
            self._rounds0 += 1
            return
        if pass_index != 1:
            raise ValueError(f"KL has 2 passes; cannot update pass {pass_index}")
        if self.phase != 1:
            raise ValueError("KL observer: pass-1 update before begin_pass(1)")
        f, _, _ = _prepare(x, self.method)
        self._counts += histogram_counts(f, self._interval)
        self._rounds1 += 1
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
        return _encode(-t, t, qmin, qmax, True, self.method)

    @property
    def rounds(self) -> int:
        return self._rounds0

    def to_state(self) -> dict:
        state = {"method": self.method, "min": np.float64(self._lo), "max": np.float64(self._hi),
                 "rounds0": np.int64(self._rounds0)}
        if self._interval is not None:
            state.update(interval=np.float32(self._interval), counts=self._counts.copy(),
                         rounds1=np.int64(self._rounds1))
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


# ---------------------------------------------------------------------------------------------
# KL threshold search (vectorized §8.3)


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


# ---------------------------------------------------------------------------------------------
# registry


OBSERVERS: dict[str, type] = {
    "MAX_MIN": MaxMinObserver,
    "KL": KLObserver,
    "REMOVAL_OUTLIER": RemovalOutlierObserver,
}


def make_observer(method: str) -> Observer:
    """A fresh observer for a converter_lite ``activation_quant_method`` name."""
    try:
        cls = OBSERVERS[method]
    except KeyError:
        raise ValueError(f"unknown activation_quant_method {method!r}; expected one of "
                         f"{', '.join(OBSERVERS)}{did_you_mean(str(method), OBSERVERS)}") from None
    return cls()


def observer_from_state(state: dict) -> Observer:
    """Rebuild an observer from :meth:`to_state` output."""
    method = state.get("method")
    if method not in OBSERVERS:
        raise ValueError(f"observer state has unknown method {method!r}")
    return OBSERVERS[method].from_state(state)


def merge_all(observers: Iterable[Observer]) -> Observer:
    """Pairwise tree merge (the same result as any other merge order)."""
    items = list(observers)
    if not items:
        raise ValueError("merge_all: no observers")
    if len(items) == 1:
        return items[0].merge(type(items[0])())
    while len(items) > 1:
        nxt = [items[a].merge(items[a + 1]) for a in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0]
