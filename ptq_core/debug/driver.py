"""The whole debug step around a finished conversion: plan, rounds, the three reports, ranking, page.

``run_debug`` is the serial path (``ptq convert --no-flow`` and tests); the flow's task
(``ptqflow.tasks.debug``) calls ``prepare_debug``, maps ``debug_round`` over the rounds on Dask and
ends with ``finish_debug``, so both paths write identical files. Rounds are objects with ``index``
and ``feeds()`` (``collect.Round`` for calibration shards, ``SampleRound`` / ``RandomRound`` here),
so a worker loads its own input and nothing round-sized crosses the network.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ptq_core.debug import html, rank
from ptq_core.debug.quant_param import dynamic_rows, qdq_rows, weight_rows
from ptq_core.debug.records import build_plan
from ptq_core.debug.rounds import DebugJob, RoundOutcome, debug_round
from ptq_core.debug.writer import (
    remove_stale_rounds,
    write_output_summary,
    write_quant_param,
)
from ptq_core.errors import ConfigError
from ptq_core.stats.collect import exposed_model_path

HIST_KEEP = 8  # worst tensors shown as histograms on the page


@dataclass(frozen=True)
class SampleRound:
    """Calibration sample ``index`` read through the config's preprocessing (WEIGHT_QUANT with data)."""

    index: int
    cfg: object
    specs: tuple
    data_format: str = "NCHW"

    def feeds(self) -> dict[str, np.ndarray]:
        from ptq_core.data.calibration import load_sample

        return load_sample(self.cfg, list(self.specs), self.index, self.data_format)


@dataclass(frozen=True)
class RandomRound:
    """converter_lite's stand-in input without calibration data: floats uniform in [0.1, 1)."""

    index: int
    specs: tuple

    def feeds(self) -> dict[str, np.ndarray]:
        from ptq_core.onnxgraph.session import random_feeds

        return random_feeds(list(self.specs), seed=self.index)


@dataclass
class DebugResult:
    folder: str
    rounds: int
    files: list[str]
    ranking: list[dict]  # NodeDamage.as_row(), worst first
    skip_line: str
    page: str
    summary_markdown: str
    seconds: float = 0.0
    removed: list[str] = field(default_factory=list)


def debug_folder(cfg, create: bool = True) -> Path:
    """``debug_info_save_path`` resolved and created (converter_lite requires it to exist; we create it).

    ``create=False`` (before any work) only checks that it is, or can become, a folder: a run that fails
    later leaves no empty folder behind."""
    path = Path(cfg.common.debug_info_save_path).expanduser()
    where = f"{cfg.source}: [common_quant_param] debug_info_save_path={cfg.common.debug_info_save_path}"
    if not create:
        existing = path
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{where} is not a folder")
        if not existing.is_dir():
            raise ConfigError(f"{where}: cannot create the folder ({existing} is a file)")
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"{where}: cannot write in {existing}")
        return path.resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{cfg.source}: [common_quant_param] debug_info_save_path={cfg.common.debug_info_save_path}: "
                          f"cannot create the folder ({exc.strerror})") from None
    if not path.is_dir():
        raise ConfigError(f"{cfg.source}: [common_quant_param] debug_info_save_path={cfg.common.debug_info_save_path} "
                          "is not a folder")
    return path.resolve()


def default_rounds(cfg, model: onnx.ModelProto, inputs) -> list:
    """WEIGHT_QUANT / DYNAMIC_QUANT rounds: the calibration samples when configured, else one random input."""
    from ptq_core.onnxgraph.session import input_specs
    from ptq_core.onnxgraph.sites import _dims

    inits = {t.name for t in model.graph.initializer}
    model_inputs = tuple((i.name, i.type.tensor_type.elem_type, _dims(i)) for i in model.graph.input if i.name not in inits)
    specs = tuple(input_specs(model_inputs, inputs.shape_map))
    from ptq_core.modes.registry import mode_of

    if mode_of(cfg).uses_calibration_for_reference and cfg.data.has_calibration:
        return [SampleRound(i, cfg, specs, inputs.data_format) for i in range(cfg.data.calibrate_size)]
    return [RandomRound(0, specs)]


def _exposed(model: onnx.ModelProto, tensors: tuple[str, ...], work_dir: Path, role: str) -> str:
    """The model with ``tensors`` as outputs, written once per (model, tensor set): the FP32 model's set
    depends on the quantized model it is paired with, so the model alone is not a key."""
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    h.update("\0".join(tensors).encode())
    key = f"debug-{role}-{h.hexdigest()[:20]}"
    return str(exposed_model_path(model, tensors, Path(work_dir), key, untyped_as_float=False))


def prepare_debug(origin: onnx.ModelProto, quant: onnx.ModelProto, work_dir: Path) -> DebugJob:
    """Pair the records and write both models with their tensors exposed (content-addressed, once)."""
    plan = build_plan(origin, quant)
    return DebugJob(_exposed(origin, plan.origin_tensors, work_dir, "origin"),
                    _exposed(quant, plan.quant_tensors, work_dir, "quant"), plan, _written_copy(quant, Path(work_dir)))


def _written_copy(quant: onnx.ModelProto, work_dir: Path) -> str:
    """The written model beside the exposed ones (content-addressed), for the outputs as onnxruntime runs it;
    "" over 2 GB, where output_summary.csv keeps the exact-math figures."""
    from ptq_core.files import write_atomic

    if quant.ByteSize() >= 2**31 - 1:
        return ""
    data = quant.SerializeToString(deterministic=True)
    path = work_dir / f"debug-written-{hashlib.sha256(data).hexdigest()[:20]}.onnx"
    if not path.exists():
        work_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return str(path)


def param_rows(cfg, origin: onnx.ModelProto, quant: onnx.ModelProto, job: DebugJob, plan=None) -> list[dict]:
    """quant_param.csv's rows: the Q/DQ pairs of the written model, or the plan's weights."""
    from ptq_core.modes.registry import DYNAMIC, FULL, mode_of

    mode = mode_of(cfg)
    if mode is FULL:
        return qdq_rows(quant, job.plan)
    return dynamic_rows(origin, plan) if mode is DYNAMIC else weight_rows(origin, plan)


def run_round(job: DebugJob, rnd, out_dir: str) -> RoundOutcome:
    """One round from its input object (what a Dask worker runs)."""
    return debug_round(job, rnd.index, rnd.feeds(), out_dir)


def keep_worst(kept: list[dict], new: list[dict], limit: int = HIST_KEEP) -> list[dict]:
    """Bounded: the ``limit`` lowest-cosine histograms seen so far, one per (node, tensor)."""
    best: dict[tuple, dict] = {}
    for h in kept + new:
        k = (h["node"], h["tensor"], h["inout"])
        if k not in best or h["cosine"] < best[k]["cosine"]:
            best[k] = h
    return sorted(best.values(), key=lambda h: (h["cosine"], h["node"]))[:limit]


def finish_debug(folder: Path, job: DebugJob, params: list[dict], outputs: list[tuple[int, str, float]],
                 worst: list[dict], rounds: int, started: float, title: str) -> DebugResult:
    """After the rounds: output summary, quant params, stale rounds removed, ranking, HTML page."""
    outputs = sorted(outputs)
    write_output_summary(folder, outputs)
    if params:
        write_quant_param(folder, params)
    else:
        for stale in ("quant_param.csv", "quant_param.parquet"):
            (folder / stale).unlink(missing_ok=True)
    removed = remove_stale_rounds(folder, rounds)
    ranked = rank.rank_nodes(folder)
    skip = rank.propose_skip_line(ranked)
    page = html.write_page(folder, title, ranked, outputs, worst, skip)
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    return DebugResult(str(folder), rounds, files, [d.as_row() for d in ranked], skip, str(page),
                       html.summary_markdown(ranked, outputs, skip, rounds), time.perf_counter() - started, removed)


def run_debug(cfg, origin: onnx.ModelProto, quant: onnx.ModelProto, rounds: list, work_dir: Path,
              plan=None, progress=None, model_path: str = "") -> DebugResult:
    """Serial debug step: one round at a time, each written as soon as it is computed."""
    started = time.perf_counter()
    folder = debug_folder(cfg)
    job = prepare_debug(origin, quant, work_dir)
    outputs: list[tuple[int, str, float]] = []
    worst: list[dict] = []
    for done, rnd in enumerate(rounds, start=1):
        outcome = run_round(job, rnd, str(folder))
        outputs += outcome.outputs
        worst = keep_worst(worst, outcome.worst)
        if progress:
            progress(done, len(rounds), "debug rounds")
    params = param_rows(cfg, origin, quant, job, plan)
    return finish_debug(folder, job, params, outputs, worst, len(rounds), started, title_for(cfg, model_path or origin.graph.name))


def title_for(cfg, model_path) -> str:
    """The page's title: which model, which mode and config (several reports are often open at once). No
    clock time: the same inputs give byte-identical reports (a minute in the title made them differ)."""
    return f"{Path(str(model_path)).name}: {cfg.common.quant_type} debug report ({Path(str(cfg.source)).name})"


def debug_models(cfg, model_path, output_path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The FP32 side (the prepared graph the quantizer worked on) and the written quantized model."""
    from ptq_core.modes.registry import mode_of

    return mode_of(cfg).prepared(str(model_path)), onnx.load(str(output_path))


def debug_rounds(cfg, origin: onnx.ModelProto, inputs, work_dir: Path) -> list:
    from ptq_core.modes.registry import mode_of

    if mode_of(cfg).calibrates(cfg):
        from ptq_core.modes.full.pipeline import calibration_rounds

        return calibration_rounds(cfg, origin, inputs, Path(work_dir) / "shards")
    return default_rounds(cfg, origin, inputs)


def result_record(result: DebugResult, top: int = 10) -> dict:
    """The small dict a Summary carries: where the reports are and the worst nodes."""
    return {"folder": result.folder, "rounds": result.rounds, "files": result.files, "page": result.page,
            "skip_line": result.skip_line, "seconds": round(result.seconds, 3), "top": result.ranking[:top]}


def debug_step(cfg, model_path, output_path, inputs, plan=None, work_dir=None, progress=None) -> dict:
    """Serial debug reports after a conversion (``convert_direct``, i.e. ``ptq convert --no-flow``)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ptq-debug-") as tmp:
        work = Path(work_dir or tmp)
        origin, quant = debug_models(cfg, model_path, output_path)
        rounds = debug_rounds(cfg, origin, inputs, work)
        result = run_debug(cfg, origin, quant, rounds, work / "debug-models", plan, progress, str(model_path))
    return result_record(result)
