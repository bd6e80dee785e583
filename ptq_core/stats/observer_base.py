"""The observer contract: the :class:`Observer` protocol, the :class:`ActivationRange` it finalizes to,
and what every observer shares (float32 input checks, state plumbing, the §5.2 encoding).

Kept apart from the observers themselves so that each method's module (MAX_MIN and REMOVAL_OUTLIER,
KL) depends only on this contract, and the registry (:mod:`ptq_core.stats.observers`) on all of them.

converter_lite computes on the ``float`` activations it records, so every input is taken as
float32 (a float64 tensor is rounded to float32 first), and min/max, order statistics, the KL
interval, bin index and threshold are computed in float32 exactly as converter_lite does. Sums,
the KL search and the §5.2 encoding run in float64 (converter_lite keeps the histogram and the KL
sums in float32; see :func:`ptq_core.stats.kl_search.kl_divergences` for what that changes). NaN or
Inf in a tensor raises ``ValueError`` naming what was seen; the caller adds the tensor and sample names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ptq_core.quant import encode_range, round_half_away


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
    """One per activation tensor; see :mod:`ptq_core.stats.observers` for the driving protocol."""

    method: str
    passes: int
    keeps_observed_range: bool

    def update(self, x: np.ndarray, pass_index: int = 0) -> None: ...

    @classmethod
    def reads_extremes(cls, pass_index: int) -> bool: ...

    def update_extremes(self, lo: float, hi: float, pass_index: int = 0) -> None: ...

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


def float32_values(x, method: str) -> tuple[np.ndarray, float, float]:
    """A tensor as flat float32 with its min and max; bad dtypes, empty tensors, NaN/Inf raise ``ValueError``."""
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


def encode_activation(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool, method: str) -> ActivationRange:
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


class BaseObserver:
    """State plumbing every observer shares: pickling through ``to_state``, copy, spawn, pass checks.

    ``passes`` is how many passes over the calibration rounds the method needs.
    ``keeps_observed_range`` says whether the final range differs from the observed min/max while
    ``to_state()`` still holds that min/max (as ``"min"``/``"max"``) for callers that want both.
    """

    method: str = ""
    passes: int = 1
    keeps_observed_range: bool = False

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
    @classmethod
    def reads_extremes(cls, pass_index: int) -> bool:
        """Whether pass ``pass_index`` needs only each round's global min and max of a tensor (finite,
        of a float32 tensor): the statistics pass then reduces inside the model run
        (:mod:`ptq_core.stats.in_graph`) and calls :meth:`update_extremes` instead of :meth:`update`."""
        return False

    def update_extremes(self, lo: float, hi: float, pass_index: int = 0) -> None:
        raise ValueError(f"{self.method} pass {pass_index} needs the tensor itself, not its min and max")

    @classmethod
    def reads_bin_indices(cls, pass_index: int) -> bool:
        """Whether pass ``pass_index`` is a histogram over the frozen interval, which the statistics pass
        then computes as bin indices inside the model run and hands over as counts."""
        return False

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
