"""What a conversion's steps share: the job they read, the records cached flow steps pass on, and the
one pickle format of a stored plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ptq_core.config import QuantConfig
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.onnxgraph.sites import ModelInfo

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Job:
    """What every step of one conversion reads; steps add what they make to the run's state."""

    model: str
    cfg: QuantConfig
    info: ModelInfo
    output: str
    inputs: InputOptions
    work_dir: Path | None = None
    progress: Progress | None = None


@dataclass(frozen=True)
class StoredResult:
    """What a cached flow step hands to the next: where its outputs are on disk (a Prefect result stays
    small; the plan and model live in content-addressed files)."""

    plan_path: str
    model_path: str | None = None  # FULL_QUANT and DYNAMIC_QUANT: the quantized model, written once
    reference: str | None = None  # WEIGHT_QUANT auto_tune: which inputs the search measured on


@dataclass(frozen=True)
class PlanFile:
    """The one pickle format of a stored plan, for every mode (read back by summarize and the debug step)."""

    plan: Any
    tuned: Any = None  # WEIGHT_QUANT: the auto_tune result
    prepared: Any = None  # FULL_QUANT: the prepared FP32 graph the plan refers to
    speed: Any = None  # FULL_QUANT: the latency guard's GuardRecord
    timings: dict | None = None  # FULL_QUANT: seconds per phase
    max_drop: Any = None  # FULL_QUANT: the --max-drop record (MaxDropResult)

    def save(self, path: Path) -> str:
        import pickle

        from ptq_core.files import write_atomic

        return str(write_atomic(path, pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)))

    @staticmethod
    def load(path: str) -> PlanFile:
        import pickle

        with open(path, "rb") as fh:
            return pickle.load(fh)


class Steps(Protocol):
    """An implementation of a mode's steps: one method per step name, ``(job, state) -> state additions``."""

    def __getattr__(self, step: str) -> Callable[[Job, dict], dict]: ...
