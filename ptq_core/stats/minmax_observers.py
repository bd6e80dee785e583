"""The one-pass observers built on per-round extremes (§8.2): MAX_MIN (global min and max) and
REMOVAL_OUTLIER (mean per-round 0.01 %/99.99 % order statistics, summed exactly)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ptq_core.stats.observer_base import (
    ActivationRange,
    BaseObserver,
    encode_activation,
    float32_values,
)

#: REMOVAL_OUTLIER quantile fractions; converter_lite multiplies these *float* constants by
#: ``float(n)`` in float32 and truncates.
OUTLIER_LOW = np.float32(0.0001)
OUTLIER_HIGH = np.float32(0.9999)

# Every float32 is an integer multiple of 2**-149, so float32 sums are exact as integers in
# these units (REMOVAL_OUTLIER's running sums).
_F32_UNIT_EXP = 149


def _f32_units(v: float) -> int:
    """A float32 value as an exact integer count of 2**-149."""
    num, den = float(v).as_integer_ratio()
    return num * ((1 << _F32_UNIT_EXP) // den)


def _mean_of_units(total: int, count: int) -> float:
    """Exact mean of float32 values given as summed 2**-149 units, rounded once to float64,
    then to float32 as converter_lite returns it (``std::pair<float, float>``)."""
    return float(np.float32(float(Fraction(total, count << _F32_UNIT_EXP))))


# ---------------------------------------------------------------------------------------------
# MAX_MIN


class MaxMinObserver(BaseObserver):
    """Running global min and max over all values of all rounds (§8.2)."""

    method = "MAX_MIN"
    passes = 1

    def _reset(self) -> None:
        self._lo = math.inf
        self._hi = -math.inf
        self._rounds = 0

    def update(self, x, pass_index: int = 0) -> None:
        _, lo, hi = float32_values(x, self.method)
        self.update_extremes(lo, hi, pass_index)

    @classmethod
    def reads_extremes(cls, pass_index: int) -> bool:
        return pass_index == 0

    def update_extremes(self, lo: float, hi: float, pass_index: int = 0) -> None:
        self._check_pass(pass_index)
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
        return encode_activation(self._lo, self._hi, qmin, qmax, bool(symmetric), self.method)

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


class RemovalOutlierObserver(BaseObserver):
    """Per round the 0.01 %/99.99 % order statistics; final range = their means over rounds (§8.2)."""

    method = "REMOVAL_OUTLIER"
    passes = 1

    def _reset(self) -> None:
        self._lo_units = 0  # exact sum of per-round lows, in 2**-149 units
        self._hi_units = 0
        self._rounds = 0

    def update(self, x, pass_index: int = 0) -> None:
        self._check_pass(pass_index)
        f, mn, mx = float32_values(x, self.method)
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
        return encode_activation(lo, hi, qmin, qmax, bool(symmetric), self.method)

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
