"""The GPTQ statistic (docs/gptq.md): Σ x xᵀ over every row a MatMul/Gemm's input takes, and how many rows.

An observer in the calibration pass's sense (:mod:`ptq_core.stats.observers`), so the Hessians are
collected by the same code as activation statistics: serially, on Dask threads or on a remote scheduler,
with chunks merged in any order. Each round's product is float32, the running sum float64; a state is
K×K for a layer whose input rows have K values, whatever the number of samples.
"""

from __future__ import annotations

import numpy as np

from ptq_core.stats.observer_base import BaseObserver


class HessianObserver(BaseObserver):
    """Running Σ x xᵀ of one layer input (its last axis), for GPTQ."""

    method = "GPTQ_HESSIAN"
    passes = 1

    def _reset(self) -> None:
        self._sum: np.ndarray | None = None
        self._rows = 0
        self._rounds = 0

    def update(self, x, pass_index: int = 0) -> None:
        self._check_pass(pass_index)
        a = np.asarray(x)
        if a.ndim == 0 or a.size == 0:
            raise ValueError(f"{self.method} observer: a layer input needs rows of values, got shape {a.shape}")
        rows = a.astype(np.float32, copy=False).reshape(-1, a.shape[-1])
        if not np.all(np.isfinite(rows)):
            raise ValueError(f"{self.method} observer: tensor has non-finite values")
        # one round's product in float32 (3x faster than float64: 12 ms for 128 rows of 1536), the sum
        # over rounds in float64
        part = (rows.T @ rows).astype(np.float64)
        if self._sum is not None and self._sum.shape != part.shape:
            raise ValueError(f"{self.method} observer: rows of {part.shape[0]} values after rows of {self._sum.shape[0]}")
        self._sum = part if self._sum is None else self._sum + part
        self._rows += rows.shape[0]
        self._rounds += 1

    def merge(self, other: "HessianObserver") -> "HessianObserver":
        self._check_other(other)
        out = HessianObserver()
        parts = [s for s in (self._sum, other._sum) if s is not None]
        out._sum = parts[0] + parts[1] if len(parts) == 2 else (parts[0].copy() if parts else None)
        out._rows = self._rows + other._rows
        out._rounds = self._rounds + other._rounds
        return out

    def finalize(self, qmin: int, qmax: int, symmetric: bool):
        raise ValueError(f"{self.method} observer: a Hessian is not an activation range")

    def hessian(self) -> np.ndarray:
        """H = 2/n · Σ x xᵀ (GPTQ's normalisation; the damping is relative, so the scale is immaterial)."""
        if self._sum is None or not self._rows:
            raise ValueError(f"{self.method} observer: no calibration round reached this layer")
        return self._sum * (2.0 / self._rows)

    @property
    def rounds(self) -> int:
        return self._rounds

    def to_state(self) -> dict:
        return {"method": self.method, "sum": None if self._sum is None else self._sum.copy(),
                "rows": np.int64(self._rows), "rounds": np.int64(self._rounds)}

    def _load(self, state: dict) -> None:
        self._sum = None if state["sum"] is None else np.asarray(state["sum"], np.float64).copy()
        self._rows = int(state["rows"])
        self._rounds = int(state["rounds"])
