"""The ``quantize`` flow: resolve config -> analyse model -> quantize -> emit -> summarize."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from ptqflow.tasks import debug, weight
from ptqflow.tasks.steps import run_flow_steps

from ptq_core.config import load_config
from ptq_core.config.flags import apply_optimize
from ptq_core.convert import apply_max_drop
from ptq_core.data.input_layout import shapes_from_images
from ptq_core.modes.registry import run_labels
from ptq_core.onnxgraph.preflight import check_output
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.summary import Summary


def _labels(model: str, config: str, max_drop: float | None) -> tuple[str, tuple[str, ...]]:
    try:
        return run_labels(model, apply_max_drop(load_config(config), max_drop))
    except Exception:  # a config the flow itself will refuse in one line: the labels must not fail first
        return f"{Path(model).stem} (config not read)", ()


def _run_name() -> str:
    """The run's name on the dashboard: model, mode and key settings (``digits_cnn FULL_QUANT KL pc``)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return _labels(params["model"], params["config"], params.get("max_drop"))[0]


def run_tags(model: str, config: str, max_drop: float | None = None):
    """``prefect.tags`` for a quantize run (mode, model, target), entered by whoever starts the flow."""
    from prefect import tags

    return tags(*_labels(str(model), str(config), max_drop)[1])


@contextmanager
def untagged_tasks() -> Iterator[None]:
    """Tasks started inside carry no tags; the run keeps its own (the dashboard filters runs by them).

    Prefect asks the server for tag concurrency slots before every tagged task, and a task inherits the
    tags its flow was started under: a round trip per task, which took 2 s before the emit step that
    follows the long quantize step (docs/flows.md). ptqflow sets no tag concurrency limits.
    """
    from prefect.context import TagsContext

    with TagsContext(current_tags=set()):
        yield


@flow(name="quantize", persist_result=True, flow_run_name=_run_name)
def quantize(model: str, config: str, output: str, input_shape: str = "", input_data_format: str | None = None,
             dask_address: str | None = None, max_drop: float | None = None, optimize: str | None = None) -> Summary:
    """Quantize ``model`` with a converter_lite ``config`` and write ``output`` (.onnx added if missing).

    ``max_drop`` (``--max-drop``) overrides ``[ptqflow] max_drop``; it is part of the config's fingerprint,
    so cached steps that depend on it rerun. ``optimize`` is converter_lite's ``--optimize``.
    """
    start = time.perf_counter()
    with untagged_tasks():
        inputs = InputOptions.from_flags(input_shape, input_data_format)
        model = str(Path(model).resolve())
        cfg = apply_optimize(apply_max_drop(weight.resolve_config(str(Path(config).resolve())), max_drop), optimize)
        check_output(output, model)
        info = weight.analyse(model)
        inputs = shapes_from_images(cfg, info.inputs, inputs)  # dynamic dims the calibration images fix
        state = run_flow_steps(model, cfg, info, output, inputs, dask_address)
        summary = state["summary"]
        if cfg.common.debug_info_save_path:
            # rounds and plan from the steps just run: asking the tasks again would re-hash the calibration set
            summary = replace(summary, debug=debug.debug_reports(model, summary.output, cfg, inputs,
                                                                 state.get("rounds"), state.get("plan_path"),
                                                                 dask_address))
    summary = replace(summary, wall_time_s=time.perf_counter() - start)
    publish(summary)
    return summary


def publish(summary: Summary) -> None:
    """The summary table and totals as Prefect artifacts, for the dashboard."""
    create_table_artifact(key="quantize-layers", table=layer_table(summary.rows()),
                          description=f"Per-layer decisions for {Path(summary.model).name}")
    worst = worst_layers(summary.rows())
    if worst:
        create_table_artifact(key="quantize-worst-layers", table=worst,
                              description=f"Quantized layers with the lowest weight cosine in {Path(summary.model).name}")
    from ptqflow.report import summary_lines, verdict

    rows = summary_lines(summary)
    debug = summary.debug or {}
    if debug.get("page"):
        rows.append(("debug page", f"file://{debug['page']}"))
    if debug.get("top"):
        worst = debug["top"][0]  # NodeDamage.as_row()
        rows.append(("worst node", f"{worst['node']} ({worst['op']}, damage score {worst['score']:.4f})"))
    # short rows in a table; long ones (the target's rules, the phase times) as a list below it, where they
    # wrap instead of being cut at the dashboard's width
    short = [(label, text) for label, text in rows if len(text) <= 90]
    long = [(label, text) for label, text in rows if len(text) > 90]
    lines = [f"**{verdict(summary)}**", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {text.replace('|', '/')} |" for label, text in short]
    lines += [""] + [f"- **{label}:** {text}" for label, text in long]
    create_markdown_artifact(key="quantize-summary", markdown="\n".join(lines),
                             description=f"Summary for {Path(summary.model).name}")
    logger = get_run_logger()  # the run's Logs tab says what the terminal said
    logger.info(verdict(summary))
    for label, text in rows:
        logger.info("%s: %s", label, text)


#: the layer table's columns, those a user scans first leftmost: at 1400 px the UI shows about eight, and
#: ``detail`` (the longest text) goes last
LAYER_COLUMNS = ("node", "op", "status", "bits", "weight_cosine", "bytes_fp32", "bytes_stored", "shape", "encoding",
                 "effective_bits", "step", "tensor", "detail")


def layer_table(rows: list[dict]) -> list[dict]:
    """The dashboard's layer table: a float layer's bits read "fp32", and columns empty in every row (the
    mixed-bit step outside mixed bit, weight cosine where nothing measured it) are left out."""
    from ptqflow.report import lead_columns

    rows = [{**r, "bits": r["bits"] if r["status"] == "quantized" else "fp32"} for r in rows]
    empty = {k for k in (rows[0] if rows else {}) if all(r.get(k) is None for r in rows)}
    return [{k: v for k, v in r.items() if k not in empty} for r in lead_columns(rows, LAYER_COLUMNS)]


def worst_layers(rows: list[dict], n: int = 10) -> list[dict]:
    """The ``n`` quantized layers whose dequantized weights are furthest from FP32 (lowest weight cosine)."""
    scored = [r for r in rows if r["status"] == "quantized" and r.get("weight_cosine") is not None]
    scored.sort(key=lambda r: (r["weight_cosine"], r["node"]))
    keep = ("node", "op", "shape", "bits", "encoding", "weight_cosine", "bytes_fp32", "bytes_stored")
    return [{k: r[k] for k in keep} for r in scored[:n]]
