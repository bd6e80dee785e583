"""The ``quantize`` flow: resolve config -> analyse model -> quantize -> emit -> summarize."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from ptqflow.tasks import debug, dynamic, full, weight

from ptq_core.config.flags import apply_optimize
from ptq_core.convert import Summary, apply_max_drop
from ptq_core.data.calibration import shapes_from_images
from ptq_core.onnxgraph.preflight import check_output
from ptq_core.onnxgraph.session import InputOptions


@flow(name="quantize", persist_result=True)
def quantize(model: str, config: str, output: str, input_shape: str = "", input_data_format: str | None = None,
             dask_address: str | None = None, max_drop: float | None = None, optimize: str | None = None) -> Summary:
    """Quantize ``model`` with a converter_lite ``config`` and write ``output`` (.onnx added if missing).

    ``max_drop`` (``--max-drop``) overrides ``[ptqflow] max_drop``; it is part of the config's fingerprint,
    so cached steps that depend on it rerun. ``optimize`` is converter_lite's ``--optimize``.
    """
    start = time.perf_counter()
    inputs = InputOptions.from_flags(input_shape, input_data_format)
    model = str(Path(model).resolve())
    cfg = apply_optimize(apply_max_drop(weight.resolve_config(str(Path(config).resolve())), max_drop), optimize)
    check_output(output, model)
    info = weight.analyse(model)
    inputs = shapes_from_images(cfg, info.inputs, inputs)  # dynamic dims the calibration images fix
    summary, made = _steps(model, cfg, info, output, inputs, dask_address)
    if cfg.common.debug_info_save_path:
        # rounds and plan from the steps just run: asking the tasks again would re-hash the calibration set
        summary.debug = debug.debug_reports(model, summary.output, cfg, inputs, made.get("rounds"),
                                            made.get("plan_path"), dask_address)
    summary.wall_time_s = time.perf_counter() - start
    publish(summary)
    return summary


def quantize_steps(model: str, cfg, info, output: str, inputs: InputOptions, dask_address: str | None = None) -> Summary:
    """The cached tasks after config and analysis; the sweep flow runs the same steps for each point."""
    return _steps(model, cfg, info, output, inputs, dask_address)[0]


def _steps(model: str, cfg, info, output: str, inputs: InputOptions,
           dask_address: str | None) -> tuple[Summary, dict]:
    """The summary, and what the debug reports read: calibration rounds (full) or the plan file (others)."""
    if cfg.common.quant_type == "FULL_QUANT":
        return _full(model, cfg, info, output, inputs, dask_address)
    if cfg.common.quant_type == "DYNAMIC_QUANT":
        return _dynamic(model, cfg, info, output, inputs)
    return _weight(model, cfg, info, output, inputs)


def _weight(model: str, cfg, info, output: str, inputs: InputOptions) -> tuple[Summary, dict]:
    record = weight.quantize_weights(model, cfg, info, inputs)
    if not Path(record["plan_path"]).exists():  # a cache entry can outlive the file it points to
        record = weight.quantize_weights.with_options(refresh_cache=True)(model, cfg, info, inputs)
    out = weight.emit_model(model, record["plan_path"], output)
    return weight.summarize(model, out, cfg, info, record["plan_path"], inputs), {"plan_path": record["plan_path"]}


def _dynamic(model: str, cfg, info, output: str, inputs: InputOptions) -> tuple[Summary, dict]:
    record = dynamic.quantize_dynamic(model, cfg, info)
    if not (Path(record["model_path"]).exists() and Path(record["plan_path"]).exists()):
        record = dynamic.quantize_dynamic.with_options(refresh_cache=True)(model, cfg, info)
    out = dynamic.emit_dynamic(record, output)
    return dynamic.summarize_dynamic(model, out, cfg, info, record, inputs), {"plan_path": record["plan_path"]}


def _full(model: str, cfg, info, output: str, inputs: InputOptions,
          dask_address: str | None) -> tuple[Summary, dict]:
    digest = full.data_digest(cfg, info, inputs)
    rounds = full.preprocess_calibration(model, cfg, inputs, digest)
    if not all(Path(p).exists() for r in rounds for _, p in r.shards):
        rounds = full.preprocess_calibration.with_options(refresh_cache=True)(model, cfg, inputs, digest)
    record = full.quantize_full(model, cfg, info, inputs, digest, rounds, dask_address)
    if not (Path(record["model_path"]).exists() and Path(record["plan_path"]).exists()):
        record = full.quantize_full.with_options(refresh_cache=True)(model, cfg, info, inputs, digest, rounds,
                                                                       dask_address)
    out = full.emit_full(record, output)
    return full.summarize_full(model, out, cfg, info, record, inputs), {"rounds": rounds}


def publish(summary: Summary) -> None:
    """The summary table and totals as Prefect artifacts, for the dashboard."""
    create_table_artifact(key="quantize-layers", table=summary.rows(),
                          description=f"Per-layer decisions for {Path(summary.model).name}")
    worst = worst_layers(summary.rows())
    if worst:
        create_table_artifact(key="quantize-worst-layers", table=worst,
                              description=f"Quantized layers with the lowest weight cosine in {Path(summary.model).name}")
    totals = summary.totals()
    lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in totals.items()]
    create_markdown_artifact(key="quantize-summary", markdown="\n".join(lines),
                             description=f"Summary for {Path(summary.model).name}")


def worst_layers(rows: list[dict], n: int = 10) -> list[dict]:
    """The ``n`` quantized layers whose dequantized weights are furthest from FP32 (lowest weight cosine)."""
    scored = [r for r in rows if r["status"] == "quantized" and r.get("weight_cosine") is not None]
    scored.sort(key=lambda r: (r["weight_cosine"], r["node"]))
    keep = ("node", "op", "shape", "bits", "encoding", "weight_cosine", "bytes_fp32", "bytes_stored")
    return [{k: r[k] for k in keep} for r in scored[:n]]
