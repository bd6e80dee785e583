"""A streaming reader of every calibration round, for tests only: shipped code reads one round at a
time (:func:`ptq_core.data.calibration.load_sample`) or writes shards, never the whole set in order."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ptq_core.config.model import QuantConfig
from ptq_core.data.calibration import _prepared, _round
from ptq_core.onnxgraph.session import InputSpec


def iter_samples(cfg: QuantConfig, specs: list[InputSpec], input_format: str = "NCHW") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(round, feeds)`` for every round in order; one round in memory at a time."""
    files = _prepared(cfg, specs, input_format)
    for i in range(cfg.data.calibrate_size):
        yield i, _round(files, cfg, specs, i, input_format)
