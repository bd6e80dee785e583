"""The ``quantize`` flow: resolve config -> analyse model -> quantize -> emit -> summarize."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ptq_core.pipeline import Summary
from ptq_core.runtime import InputOptions
from ptqflow.tasks import weight


@flow(name="quantize", persist_result=True)
def quantize(model: str, config: str, output: str, input_shape: str = "", input_data_format: str = "NCHW") -> Summary:
    """Quantize ``model`` with a converter_lite ``config`` and write ``output`` (.onnx added if missing)."""
    start = time.perf_counter()
    inputs = InputOptions.from_flags(input_shape, input_data_format)
    model = str(Path(model).resolve())
    cfg = weight.resolve_config(str(Path(config).resolve()))
    info = weight.analyse(model)
    record = weight.quantize_weights(model, cfg, info, inputs)
    if not Path(record["plan_path"]).exists():  # a cache entry can outlive the file it points to
        record = weight.quantize_weights.with_options(refresh_cache=True)(model, cfg, info, inputs)
    out = weight.emit_model(model, record["plan_path"], output)
    summary: Summary = weight.summarize(model, out, cfg, info, record["plan_path"], inputs)
    summary.wall_time_s = time.perf_counter() - start
    publish(summary)
    return summary


def publish(summary: Summary) -> None:
    """The summary table and totals as Prefect artifacts, for the dashboard."""
    create_table_artifact(key="quantize-layers", table=summary.rows(),
                          description=f"Per-layer decisions for {Path(summary.model).name}")
    totals = summary.totals()
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in totals.items()]
    create_markdown_artifact(key="quantize-summary", markdown="\n".join(lines),
                             description=f"Summary for {Path(summary.model).name}")
