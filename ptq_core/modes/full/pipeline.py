"""FULL_QUANT's building blocks: calibration rounds, the statistics and bias-correction passes, the
result record and the summary rows; ``quantize.py`` runs them in order, the flow on Dask.

``collector`` arguments take any function with the signature of ``collect.collect_serial``
(model path, tensors, rounds, method) so the same steps run serially here, in tests and on a
Dask cluster (``tasks.dask_stats``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ptq_core.config import QuantConfig
from ptq_core.data.calibration import write_shards
from ptq_core.data.calibration_files import check_inputs, list_calibration_files
from ptq_core.errors import ConfigError
from ptq_core.modes.full import bias_correction
from ptq_core.modes.full.plan import FullQuantPlan
from ptq_core.modes.full.prepare import (
    apply_bias_correction,
    correctable_nodes,
)
from ptq_core.modes.full.targets import COMPUTE_OPS
from ptq_core.modes.weight.plan import LayerDecision
from ptq_core.onnxgraph.session import InputOptions, input_specs
from ptq_core.stats import collect

Collector = Callable[..., dict]


def calibration_shapes(cfg: QuantConfig, inputs: InputOptions) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for calibration: --inputShape, else [ascend_context] input_shape (first dynamic dim)."""
    shapes = inputs.shape_map
    asc = cfg.ascend_context
    if not shapes and asc.input_shape:
        dims_choice = re.findall(r"\[([^\]]*)\]", asc.dynamic_dims or "")
        first = None
        if dims_choice:
            token = dims_choice[0].split(",")[0].split("~")[0].strip()
            first = int(token) if token.isdigit() else None
        for item in asc.input_shape.split(";"):
            if ":" not in item:
                raise ConfigError(f"{cfg.source}: [ascend_context] input_shape item {item!r} has no ':'; write name:[d0,d1,...]")
            name, dims = item.rsplit(":", 1)
            values = [int(v) for v in re.findall(r"-?\d+", dims)]
            if any(v == -1 for v in values) and first is None:
                raise ConfigError(f"{cfg.source}: [ascend_context] input_shape {item!r} has -1 but dynamic_dims gives no size")
            shapes[name] = tuple(first if v == -1 else v for v in values)
    return shapes


def calibration_rounds(cfg: QuantConfig, model: onnx.ModelProto, inputs: InputOptions, shard_dir: Path) -> list[collect.Round]:
    """Preprocess the calibration set once into content-addressed .npy shards; a round lists its shards."""
    from ptq_core.onnxgraph.sites import _dims

    inits = {t.name for t in model.graph.initializer}
    model_inputs = tuple((i.name, i.type.tensor_type.elem_type, _dims(i)) for i in model.graph.input if i.name not in inits)
    from ptq_core.onnxgraph.preflight import check_calibration_shapes

    shapes = calibration_shapes(cfg, inputs)
    check_calibration_shapes(model_inputs, shapes, cfg.source)
    specs = input_specs(model_inputs, shapes)
    check_inputs(cfg, specs)
    paths = write_shards(cfg, specs, shard_dir, inputs.data_format)
    files = list_calibration_files(cfg)
    k = len(specs)
    return [collect.Round(i, tuple((specs[j].name, str(paths[i * k + j])) for j in range(k)),
                          tuple(str(files[s.name][i]) for s in specs))
            for i in range(cfg.data.calibrate_size)]


def model_key(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:24]


def collect_statistics(model: onnx.ModelProto, tensors: tuple[str, ...], rounds: list[collect.Round], method: str,
                       work_dir: Path, collector: Collector = collect.collect_serial) -> dict:
    path = collect.exposed_model_path(model, tensors, work_dir, model_key(model) + "-" +
                                      hashlib.sha256("\n".join(tensors).encode()).hexdigest()[:12])
    try:
        return collector(str(path), tensors, rounds, method)
    finally:
        collect.forget_sessions(str(path))


def accumulate_bias(model_path: str, probes: list, rounds: list[collect.Round]) -> dict:
    """Worker side of the bias-correction pass: per node, its patch means (or FP32 - shadow) summed."""
    outputs = tuple(sorted({name for probe in probes for name in bias_correction.probe_outputs(probe)}))
    stats = {probe.node: bias_correction.new_accumulator(probe) for probe in probes}
    for rnd in rounds:
        values = collect.run_round(model_path, outputs, rnd.feeds())
        for probe in probes:
            stats[probe.node].update(*(values[t] for t in bias_correction.probe_outputs(probe)))
    return stats


def bias_correction_pass(model: onnx.ModelProto, plan: FullQuantPlan, cfg: QuantConfig, rounds: list[collect.Round],
                         work_dir: Path, runner: Callable | None = None) -> tuple[FullQuantPlan, dict]:
    """§8.7 over all calibration rounds (ptq_core.modes.full.bias_correction); ``runner(model_path, probes, rounds)`` may
    distribute it."""
    nodes = correctable_nodes(model, plan, cfg.common.skip_quant_node)
    if not nodes:
        return plan, {}
    input_shapes = {name: tuple(np.load(path, mmap_mode="r").shape) for name, path in rounds[0].shards}
    probe_model, probes = bias_correction.statistics_model(model, plan, nodes, input_shapes)
    path = collect.model_file(work_dir / f"bias-{model_key(probe_model)}.onnx", lambda: probe_model)
    try:
        stats = (runner or accumulate_bias)(str(path), probes, rounds)
    finally:
        collect.forget_sessions(str(path))
    diffs = bias_correction.mean_errors(model, plan, probes, stats)
    return apply_bias_correction(model, plan, diffs), diffs


def correct_float_biases(model: onnx.ModelProto, diffs: dict) -> onnx.ModelProto:
    """Targets that keep biases in float (NVGPU): add the measured mean error to the float bias."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {n.name: n for n in out.graph.node}
    inits = {t.name: t for t in out.graph.initializer}
    for node_name, diff in diffs.items():
        node = by_name[node_name]
        if len(node.input) < 3 or node.input[2] not in inits:
            continue
        tensor = inits[node.input[2]]
        corrected = numpy_helper.to_array(tensor).astype(np.float64) + diff
        tensor.CopyFrom(numpy_helper.from_array(corrected.astype(np.float32), tensor.name))
    return out


def add_missing_biases(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """Give Conv/Gemm nodes that bias correction will touch a zero float bias (named ``<node>_added_bias``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in nodes or len(node.input) >= 3 and node.input[2]:
            continue
        w = inits.get(node.input[1])
        if w is None:
            continue
        if node.op_type == "Conv":
            channels = w.dims[0]
        else:  # Gemm: N = rows of B when transB else columns
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            channels = w.dims[0] if trans_b else w.dims[1]
        name = f"{node.name}_added_bias"
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(channels, np.float32), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
    return model


def drop_added_biases(model: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    """Remove the zero biases ``add_missing_biases`` gave to nodes that ended up in FP32."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dropped = set()
    for node in out.graph.node:
        if node.name not in keep and len(node.input) >= 3 and node.input[2] == f"{node.name}_added_bias":
            dropped.add(node.input[2])
            del node.input[2]
    if dropped:
        inits = [t for t in out.graph.initializer if t.name not in dropped]
        del out.graph.initializer[:]
        out.graph.initializer.extend(inits)
    return out


@dataclass
class FullResult:
    model: onnx.ModelProto  # the prepared FP32 model the plan refers to
    plan: FullQuantPlan
    quantized: onnx.ModelProto
    bias_diffs: dict
    speed: Any = None  # the latency guard's GuardRecord
    timings: dict | None = None  # seconds per phase
    max_drop: Any = None  # [ptqflow] max_drop: what was kept FP32 and what it cost (max_drop.MaxDropResult)


def speed_table_path() -> str | None:
    """The per-machine op timing table lives with ptqflow's cache when PTQFLOW_HOME is set."""

    home = os.environ.get("PTQFLOW_HOME")
    if not home:
        return None
    folder = Path(home) / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / "speed-table.json")


GUARD_METADATA = "ptqflow.latency_guard_timed_on"  # metadata_props key: the CPU the guard's timings came from


def _guard_applies(cfg: QuantConfig, target) -> bool:
    # int8 speed is measured with onnxruntime's CPU kernels, so it only speaks for the CPU target
    return cfg.ptqflow.latency_guard and target.name == "CPU"


def _with_reasons(place, reasons: dict[str, str]):

    kept = dict(place.kept_float)
    for node, why in reasons.items():
        if node in kept:
            kept[node] = why
    return replace(place, kept_float=kept)


def body_rows(model: onnx.ModelProto) -> list[LayerDecision]:
    """Rows for the weighted nodes left inside bodies (Loop/Scan bodies, Ifs nested in them, an If whose
    rounds disagree): they stay FP32, and the summary says so instead of counting nothing."""
    from ptq_core.onnxgraph.sites import find_weight_sites

    rows = []
    for site in find_weight_sites(model, inside_subgraphs=True):
        if site.node_graph and site.op_type in COMPUTE_OPS:
            size = site.size
            rows.append(LayerDecision(
                site.node, site.op_type, site.tensor, site.shape, False,
                f"inside {site.node_graph}: FULL_QUANT calibrates the main graph and the If branches every round "
                "takes; this body stays FP32 (DYNAMIC_QUANT and WEIGHT_QUANT quantize it)",
                bytes_fp32=size * 4, bytes_stored=size * 4))
    return rows


def full_decisions(model: onnx.ModelProto, plan: FullQuantPlan) -> list[LayerDecision]:
    """Summary rows: every weighted node, int8 or kept FP32 with the reason."""

    inits = {t.name: t for t in model.graph.initializer}
    weights = {(w.node, w.input_index): w for w in plan.weights}
    rows = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        weight_name = next((n for n in node.input[1:2] if n in inits), node.input[1] if len(node.input) > 1 else "")
        shape = tuple(inits[weight_name].dims) if weight_name in inits else ()
        size = int(np.prod(shape)) if shape else 0
        w = weights.get((node.name, 1))
        if node.name in plan.nodes and w is not None:
            gran = "per-channel" if w.axis is not None else "per-layer"
            rows.append(LayerDecision(node.name, node.op_type, weight_name, shape, True, f"int8 {gran}", 8, gran,
                                      "int8", size * 4, size, 8.0))
        elif node.name in plan.stored_weights:  # FP32 compute, weights stored as 8-bit codes
            stored, cosine = plan.stored_weights[node.name]
            reason = plan.kept_float.get(node.name, "kept FP32") + "; weights stored 8-bit, decoded at load"
            rows.append(LayerDecision(node.name, node.op_type, weight_name, shape, False, reason, 8, "per-channel",
                                      "int8 storage", size * 4, stored, 8.0, weight_cosine=cosine))
        else:
            reason = plan.kept_float.get(node.name, "not in the int8 region")
            rows.append(LayerDecision(node.name, node.op_type, weight_name, shape, False, reason,
                                      bytes_fp32=size * 4, bytes_stored=size * 4))
    rows += body_rows(model)
    weighted = {r.node for r in rows}
    for node in model.graph.node:  # nodes without weights that --max-drop kept FP32 (a Concat, an Add, ...)
        reason = plan.kept_float.get(node.name, "")
        if node.name not in weighted and reason.startswith("max_drop"):
            rows.append(LayerDecision(node.name, node.op_type, "", (), False, reason))
    return rows
