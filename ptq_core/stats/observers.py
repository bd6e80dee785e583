"""The registry of activation range observers for full quantization (docs/converter-lite.md §8.1–8.4):
method name -> observer class, building and rebuilding observers, merging partials.

The observers live in their own modules: the shared contract in :mod:`ptq_core.stats.observer_base`,
MAX_MIN and REMOVAL_OUTLIER in :mod:`ptq_core.stats.minmax_observers`, KL in
:mod:`ptq_core.stats.kl_observer` (its threshold search in :mod:`ptq_core.stats.kl_search`). Callers
ask the observer (``passes``, ``keeps_observed_range``), never the method name, what a method needs.

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

No Dask, Prefect or ONNX imports here: pure NumPy.
"""

from __future__ import annotations

from typing import Iterable

from ptq_core.errors import did_you_mean
from ptq_core.stats.hessian_observer import HessianObserver
from ptq_core.stats.kl_observer import KLObserver
from ptq_core.stats.minmax_observers import MaxMinObserver, RemovalOutlierObserver
from ptq_core.stats.observer_base import Observer

OBSERVERS: dict[str, type] = {
    "MAX_MIN": MaxMinObserver,
    "KL": KLObserver,
    "REMOVAL_OUTLIER": RemovalOutlierObserver,
}
#: every statistic the calibration pass can collect: the activation methods, and GPTQ's Hessians
#: (docs/gptq.md), which ride on the same machinery but are no ``activation_quant_method``
STATISTICS: dict[str, type] = {**OBSERVERS, "GPTQ_HESSIAN": HessianObserver}


def observer_class(method: str) -> type:
    """The observer class of a converter_lite ``activation_quant_method`` name (its ``passes`` and so on)."""
    try:
        return STATISTICS[method]
    except KeyError:
        raise ValueError(f"unknown activation_quant_method {method!r}; expected one of "
                         f"{', '.join(OBSERVERS)}{did_you_mean(str(method), OBSERVERS)}") from None


def make_observer(method: str) -> Observer:
    """A fresh observer for a converter_lite ``activation_quant_method`` name."""
    return observer_class(method)()


def observer_from_state(state: dict) -> Observer:
    """Rebuild an observer from :meth:`to_state` output."""
    method = state.get("method")
    if method not in STATISTICS:
        raise ValueError(f"observer state has unknown method {method!r}")
    return STATISTICS[method].from_state(state)


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
