"""Tasks of the sweep flow: one cached task per grid point, one cached latency measurement per model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from ptqflow.tasks import weight
from ptqflow.tasks.caching import content_key, file_digest

from ptq_core.config import QuantConfig
from ptq_core.files import write_atomic
from ptq_core.modes.registry import mode_of
from ptq_core.onnxgraph.session import InputOptions, input_specs, random_feeds
from ptq_core.onnxgraph.sites import ModelInfo
from ptq_core.onnxgraph.timing import median_latency_ms
from ptq_core.summary import Summary
from ptqflow._env import cache_dir
from ptqflow._phases import ours


def point_key(info: ModelInfo, cfg: QuantConfig, inputs: InputOptions) -> str:
    """What a point's result depends on: model bytes, resolved settings, shapes and calibration bytes."""
    digest = None
    if mode_of(cfg).calibrates(cfg):
        from ptqflow.tasks.full import data_digest

        digest = data_digest(cfg, info, inputs)
    else:
        digest = weight._data_digest(cfg, info, inputs)
    return content_key("sweep_point", info.sha256, cfg.fingerprint(), inputs, digest)


@dataclass(frozen=True)
class SweepPoint:
    """One grid point's result: its summary and the model in the content cache."""

    summary: Summary
    model_path: str


def _point_cache_key(ctx, params) -> str:
    return params["key"]


@task(name="sweep_point", cache_key_fn=_point_cache_key, persist_result=True)
@ours
def quantize_point(model: str, config_path: str, inputs: InputOptions, dask_address: str | None, key: str) -> SweepPoint:
    """One grid point through the quantize flow's cached steps; the model lands in the content cache."""
    from ptqflow.tasks.steps import run_flow_steps

    cfg = weight.resolve_config(config_path)
    info = weight.analyse(model)  # cached by model bytes: runs once for the whole sweep
    summary = run_flow_steps(model, cfg, info, str(cache_dir("sweep") / f"{key}.onnx"), inputs, dask_address)["summary"]
    return SweepPoint(summary, str(summary.output))


def _latency_key(ctx, params) -> str:
    return content_key("latency", file_digest(params["model_path"]), params["inputs"], params["runs"])


@task(name="measure_latency", cache_key_fn=_latency_key, persist_result=True)
@ours
def measure_latency(model_path: str, info: ModelInfo, inputs: InputOptions, runs: int = 20) -> float:
    """Median ms on one onnxruntime thread with generated inputs (the values do not change the time)."""
    feeds = random_feeds(input_specs(info.inputs, inputs.shape_map))
    return median_latency_ms(model_path, feeds, runs=runs, warmup=3)


def copy_atomic(source: str | Path, target: Path) -> Path:
    return write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))


def write_text_atomic(target: Path, text: str) -> Path:
    return write_atomic(target, text)


def write_parquet(rows: list[dict], target: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return write_atomic(target, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))
