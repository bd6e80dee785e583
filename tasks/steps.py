"""A mode's steps (ptq_core.modes.registry) run as cached Prefect tasks: the flow's side of the one list
that ``convert_direct`` runs in process. Used by the quantize flow and by each sweep point."""

from __future__ import annotations

from ptqflow.tasks import dynamic, full, weight

from ptq_core.modes.job import Job
from ptq_core.modes.registry import DYNAMIC, FULL, WEIGHT, Mode, mode_of, run_steps
from ptq_core.onnxgraph.session import InputOptions


def flow_steps(mode: Mode, dask_address: str | None):
    """The flow's implementation of ``mode``'s steps: each step a cached task."""
    return {WEIGHT: lambda: weight.WeightTasks(dask_address), DYNAMIC: dynamic.DynamicTasks,
            FULL: lambda: full.FullTasks(dask_address)}[mode]()


def run_flow_steps(model: str, cfg, info, output: str, inputs: InputOptions, dask_address: str | None) -> dict:
    """The state after the mode's steps: the summary, and what the debug reports read (calibration
    rounds for FULL_QUANT, the plan file otherwise)."""
    mode = mode_of(cfg)
    return run_steps(mode, flow_steps(mode, dask_address), Job(model, cfg, info, output, inputs))
