"""The ``sweep`` flow: quantize one model at every point of a config grid, then keep the Pareto front.

Points run in parallel on Prefect's thread pool and share every cached upstream task: the config
is resolved and the model analysed once, FULL_QUANT calibration is preprocessed once and its
statistics collected once per ``activation_quant_method`` (``collect_statistics`` is keyed without
per_channel or bias_correction). While the points run, ``ptq_core.onnxgraph.cache`` keeps the FP32 model
the first point parsed (prepared, optimized for FULL_QUANT, run for the summary's reference outputs), so
the others do not load it again. Latency is measured afterwards, one point at a time, so parallel
points do not slow each other's timings.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from ptqflow.flows.quantize import untagged_tasks
from ptqflow.tasks import sweep as sweep_tasks
from ptqflow.tasks import weight

from ptq_core.config import check_runnable
from ptq_core.config.model import parse_config
from ptq_core.data.input_layout import shapes_from_images
from ptq_core.errors import ConfigError
from ptq_core.modes.registry import mode_of
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.sweep import (
    Measured,
    check_pick,
    expand,
    load_grid,
    pareto_front,
    pareto_svg,
    pick_best,
)

DEFAULT_PARALLEL = 2


def sweep_labels(model: str, config: str, grid) -> tuple[str, tuple[str, ...]]:
    """A sweep run's name and tags (``digits_cnn sweep bit_num (3 points)``; the base config's mode, model and
    target tags, and ``sweep``), so that the dashboard tells it apart from its points and from other sweeps."""
    from ptq_core.config import load_config
    from ptq_core.modes.registry import run_labels

    stem = Path(model).stem
    try:
        grid_obj = load_grid(grid)
        _, tags = run_labels(model, load_config(config))
    except Exception:  # a grid or config the flow itself will refuse in one line: the labels must not fail first
        return f"{stem} sweep", ("sweep", f"model:{stem}")
    keys = ", ".join(name.split(".", 1)[1] for name in grid_obj.names)
    return f"{stem} sweep {keys} ({len(grid_obj.points())} points)", (*tags, "sweep")


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return sweep_labels(params["model"], params["config"], params["grid"])[0]


def sweep_tags(model: str, config: str, grid):
    """``prefect.tags`` for a sweep run, entered by whoever starts the flow (the CLI, the screenshots)."""
    from prefect import tags

    return tags(*sweep_labels(str(model), str(config), grid)[1])


@contextmanager
def _cluster_for(calibrates: bool, address: str | None) -> Iterator[str | None]:
    """FULL_QUANT without an address: one loopback LocalCluster for the whole sweep, not one per point,
    so worker processes (and their onnxruntime sessions) are reused."""
    import os

    from ptqflow.tasks.dask_stats import ADDRESS_ENV, local_cluster

    address = address or os.environ.get(ADDRESS_ENV) or None
    if not calibrates or address:
        yield address
        return
    cluster = local_cluster()
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@flow(name="sweep", persist_result=True, task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_PARALLEL),
      flow_run_name=_run_name)
def sweep(model: str, config: str, grid: str | dict, output_dir: str, input_shape: str = "",
          input_data_format: str | None = None, dask_address: str | None = None, tolerance: float = 0.002,
          pick: str = "size", latency_runs: int = 20) -> dict:
    """Quantize ``model`` at every point of ``grid`` over ``config``; write the table, plot and best config.

    ``grid`` is a path to a .json/.toml file, inline JSON, or a dict mapping ``section.key`` to values.
    Writes ``output_dir``/point_<k>.onnx and .cfg, sweep.parquet, pareto.svg and best.cfg.
    """
    with untagged_tasks():  # the run keeps its tags; its many tasks would each ask for tag concurrency slots
        return _sweep(model, config, grid, output_dir, input_shape, input_data_format, dask_address, tolerance, pick,
                      latency_runs)


def _sweep(model: str, config: str, grid, output_dir: str, input_shape: str, input_data_format: str | None,
           dask_address: str | None, tolerance: float, pick: str, latency_runs: int) -> dict:
    start = time.perf_counter()
    check_pick(pick)
    grid_obj = load_grid(grid)
    config_path = Path(config).resolve()
    model = str(Path(model).resolve())
    base = weight.resolve_config(str(config_path))
    points = expand(config_path.read_text(encoding="utf-8"), str(config_path), grid_obj)
    for point in points:
        check_runnable(point.config)
    inputs = InputOptions.from_flags(input_shape, input_data_format)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_paths = [sweep_tasks.write_text_atomic(out_dir / f"point_{p.index}.cfg", p.text) for p in points]

    # the analysis key and points 2..N reuse the FP32 model the first of them parsed (and its reference
    # outputs); released after the points
    with model_cache.sharing():
        info = weight.analyse(model)
        inputs = shapes_from_images(base, info.inputs, inputs)  # dynamic dims the calibration images fix
        keys = [sweep_tasks.point_key(info, p.config, inputs) for p in points]
        with _cluster_for(any(mode_of(p.config).calibrates(p.config) for p in points), dask_address) as address:
            futures = [sweep_tasks.quantize_point.submit(model, str(path.resolve()), inputs, address, key)
                       for path, key in zip(cfg_paths, keys)]
            records = [f.result() for f in futures]
            for i, record in enumerate(records):  # a cache entry can outlive the file it points to
                if not Path(record.model_path).exists():
                    records[i] = sweep_tasks.quantize_point.with_options(refresh_cache=True)(
                        model, str(cfg_paths[i].resolve()), inputs, address, keys[i])

    measured, rows = _measure_points(points, records, cfg_paths, out_dir, info, inputs, latency_runs)
    front = pareto_front(measured)
    best = pick_best(measured, tolerance, pick)
    for row in rows:
        row["pareto"] = row["point"] in front
        row["best"] = row["point"] == best.index

    best_point = points[best.index]
    best_cfg = sweep_tasks.write_text_atomic(out_dir / "best.cfg", best_point.text)
    if parse_config(best_cfg.read_text(encoding="utf-8"), str(best_cfg)).fingerprint() != best_point.config.fingerprint():
        raise ConfigError(f"{best_cfg}: the written config does not read back as point {best.index}")
    labels = {p.index: p.label for p in points}
    title = f"{Path(model).name}: {len(points)} points, {grid_obj.source}"
    sweep_tasks.write_text_atomic(out_dir / "pareto.svg", pareto_svg(measured, labels, best.index, title))
    sweep_tasks.write_parquet(rows, out_dir / "sweep.parquet")

    _publish(rows, grid_obj, model, best, best_point, best_cfg, out_dir, pick, tolerance)
    return {"rows": rows, "best": best.index, "best_config": str(best_cfg), "pareto": sorted(front),
            "wall_time_s": time.perf_counter() - start}


def _measure_points(points, records, cfg_paths, out_dir: Path, info, inputs, latency_runs: int):
    """Each point's model copied out of the cache, its latency measured; the table's rows."""
    measured: list[Measured] = []
    rows: list[dict] = []
    for point, record in zip(points, records):
        summary = record.summary
        if summary.output_cosine is None:
            from ptq_core.errors import ModelError

            raise ModelError(f"a sweep ranks its points by output cosine, which was {summary.cosine_inputs}")
        target = sweep_tasks.copy_atomic(record.model_path, out_dir / f"point_{point.index}.onnx")
        ms = sweep_tasks.measure_latency(str(target), info, inputs, latency_runs)
        measured.append(Measured(point.index, int(summary.size_after), float(ms), float(summary.output_cosine)))
        rows.append({"point": point.index, **{k: v for k, v in point.overrides.items()},
                     "size_bytes": int(summary.size_after), "latency_ms": round(float(ms), 4),
                     "cosine": round(float(summary.output_cosine), 6),
                     "compression_ratio": round(summary.ratio, 3), **point_layers(summary), "model": str(target),
                     "config": str(cfg_paths[point.index])})
    return measured, rows


def _publish(rows, grid_obj, model: str, best, best_point, best_cfg, out_dir: Path, pick: str, tolerance: float):
    """The sweep's table and picked point as Prefect artifacts, for the dashboard."""
    from ptqflow.report import lead_columns

    lead = ("point", *grid_obj.names, "cosine", "compression_ratio", "pareto", "best")
    create_table_artifact(key="sweep-pareto", table=lead_columns(rows, lead),
                          description=f"Sweep of {Path(model).name} over {', '.join(grid_obj.names)}")
    create_markdown_artifact(key="sweep-best", markdown="\n".join([
        f"**Best point {best.index}** ({best_point.label}) by `{pick}` within cosine tolerance {tolerance}:",
        f"size {best.size_bytes} B, latency {best.latency_ms:.3f} ms, cosine {best.cosine:.6f}.",
        f"Config: `{best_cfg}`; table: `{out_dir / 'sweep.parquet'}`; plot: `{out_dir / 'pareto.svg'}`.",
    ]), description="The picked sweep point")


def point_layers(summary) -> dict:
    """How many layers a point quantized, and why a point that quantized none is no real choice (every
    layer kept FP32: on this CPU the latency guard found no int8 kernel faster, say)."""
    t = summary.totals()
    quantized, kept = t["layers_quantized"], t["layers_skipped"]
    note = ""
    if quantized == 0 and kept:
        reasons = sorted({d.reason.split(" (")[0].split(";")[0] for d in summary.layers if not d.quantized})
        note = "no layer quantized: " + "; ".join(reasons[:2])
    return {"layers_quantized": quantized, "layers_kept_float": kept, "note": note}
