"""FULL_QUANT as plain steps; the flow wraps each in a cached task and runs statistics on Dask.

``collector`` arguments take any function with the signature of ``collect.collect_serial``
(model path, tensors, rounds, method) so the same steps run serially here, in tests and on a
Dask cluster (``tasks.dask_stats``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ptq_core.config import QuantConfig
from ptq_core.data.calibration import check_inputs, list_calibration_files, write_shards
from ptq_core.errors import ConfigError
from ptq_core.modes.full import bias_correction
from ptq_core.modes.full.emit_qdq import emit_qdq
from ptq_core.modes.full.plan import FullQuantPlan
from ptq_core.modes.full.prepare import (
    apply_bias_correction,
    build_plan,
    check_weights,
    correctable_nodes,
    observed_tensors,
    placement,
    skip_names,
)
from ptq_core.modes.weight.plan import LayerDecision
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.session import InputOptions, input_specs, release_free_memory
from ptq_core.stats import collect
from ptq_core.stats.observers import search_thresholds

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
    from ptq_core.onnxgraph.graph import _dims

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
    speed: dict | None = None  # latency guard evidence
    timings: dict | None = None  # seconds per phase
    max_drop: dict | None = None  # [ptqflow] max_drop: what was kept FP32 and what it cost (max_drop.MaxDropResult)


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


EQUALIZATION_CHECK_ROUNDS = 32  # rounds that decide equalization=auto (8 chose wrong on the recognizer)


def quantize_full(model_path: str | Path, cfg: QuantConfig, inputs: InputOptions, work_dir: Path,
                  collector: Collector = collect.collect_serial, bias_runner: Callable | None = None,
                  rounds: list[collect.Round] | None = None, progress: Callable | None = None) -> FullResult:
    """Prepare, place, calibrate, plan, bias-correct and emit (no file written).

    ``progress(done, total, label)`` follows the serial calibration rounds (Dask collectors report their own).

    Cross-layer equalization (per_channel=false) preserves the FP32 function but moves the activations'
    ranges, and on some models per-layer int8 ends up worse with it (the PP-OCRv4 recognizer, measured).
    ``[ptqflow] cross_layer_equalization=auto`` (the default) therefore quantizes both ways and keeps the
    model whose outputs are closer to FP32 on the first calibration rounds; ``true`` always equalizes, as
    converter_lite does; ``false`` never does.
    """
    setting = cfg.ptqflow.cross_layer_equalization
    if rounds is None:
        rounds = calibration_rounds(cfg, model_cache.full_model(model_path), inputs, work_dir / "shards")
    args = (model_path, cfg, inputs, work_dir, collector, bias_runner, rounds, progress)
    result = _quantize_full_once(*args, equalize=setting != "false")
    if setting != "auto" or not result.plan.equalized:
        return result
    plain = _quantize_full_once(*args, equalize=False)
    check = rounds[:EQUALIZATION_CHECK_ROUNDS]
    with_cle, without = (calibration_cosine(result.model, r.quantized, check) for r in (result, plain))
    keep = result if with_cle > without else plain
    chains = result.plan.equalized
    keep.plan.equalized = chains if keep is result else ()
    keep.plan.equalization_note = (
        f"{'kept' if keep is result else 'tried and left out'}: output cosine vs FP32 {with_cle:.6f} with, "
        f"{without:.6f} without, over {len(check)} calibration rounds")
    keep.timings = {k: round(result.timings.get(k, 0.0) + plain.timings.get(k, 0.0), 3)
                    for k in {**result.timings, **plain.timings}}
    return keep


def calibration_cosine(fp32: onnx.ModelProto, quantized: onnx.ModelProto, rounds: list[collect.Round]) -> float:
    """Mean output cosine of ``quantized`` against ``fp32`` over ``rounds``."""
    from ptq_core.onnxgraph.session import make_session, output_cosine, run

    a, b = make_session(fp32), make_session(quantized)
    return float(np.mean([output_cosine(run(a, feeds), run(b, feeds)) for feeds in (r.feeds() for r in rounds)]))


def _quantize_full_once(model_path: str | Path, cfg: QuantConfig, inputs: InputOptions, work_dir: Path,
                        collector: Collector, bias_runner: Callable | None, rounds: list[collect.Round],
                        progress: Callable | None, equalize: bool) -> FullResult:
    """One quantization of the model, with or without cross-layer equalization where it applies."""
    if progress and collector is collect.collect_serial:
        def collector(m, t, r, meth):
            return collect.collect_serial(m, t, r, meth, progress=progress)
    from ptq_core.modes.full.emit_qdq import place_qdq
    from ptq_core.modes.full.latency_guard import (
        SpeedTable,
        int8_losers,
        median_latency_ms,
        paired_latency_ms,
        tensor_shapes,
    )


    clock = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock
        clock = now

    model = model_cache.full_model(model_path)  # a private copy; optimized once per sweep
    target, place = placement(model, cfg)
    check_weights(model, target, place)
    chains = []
    if equalize and not cfg.full.per_channel and target.cross_layer_equalization:
        from ptq_core.modes.full.equalization import equalize

        model, chains = equalize(model)  # weights only: the placement's graph is the same
    if rounds is None:
        rounds = calibration_rounds(cfg, model, inputs, work_dir / "shards")
    lap("prepare_and_preprocess_s")
    feeds0 = rounds[0].feeds()
    speed: dict | None = None
    skip = skip_names(model, cfg.common.skip_quant_node)  # fused nodes keep the user's name as a prefix
    table = None
    decision_key = ""
    if _guard_applies(cfg, target):
        table = SpeedTable(speed_table_path())
        # decisions are remembered per model and config, so the same inputs give the same model
        # max_drop is left out: its loop runs after the guard and must start from the same int8 model
        guard_cfg = replace(cfg, ptqflow=replace(cfg.ptqflow, max_drop=None))
        decision_key = f"model|{model_key(model)}|{guard_cfg.fingerprint()}|{sorted(v.shape for v in feeds0.values())}"
        remembered = table.decisions.get(decision_key)
        shapes = tensor_shapes(model, {k: v.shape for k, v in feeds0.items()})
        losers, timings = int8_losers(model, cfg, target, place.nodes, shapes, table)
        if remembered is not None:
            losers = dict(remembered["demoted"])
        speed = {"demoted": dict(losers), "node_us": timings}
        if losers:
            skip = skip + tuple(losers)
            place = _with_reasons(place_qdq(model, target, skip=skip), losers)
    do_bias = cfg.full.bias_correction and target.bias_correction
    if do_bias:
        convs = [n.name for n in model.graph.node if n.name in place.nodes and n.op_type in ("Conv", "Gemm")]
        model = add_missing_biases(model, convs)
    lap("latency_guard_s")
    tensors = observed_tensors(place)
    if cfg.ptqflow.max_drop is not None:  # the keep loop re-places Q/DQ but never recollects
        from ptq_core.modes.full.max_drop import border_tensors

        tensors = border_tensors(model, target, place, skip)
    release_free_memory()  # the latency guard's sessions, before the statistics pass's peak
    observers = collect_statistics(model, tensors, rounds, cfg.full.activation_quant_method,
                                   work_dir / "models", collector)
    lap("statistics_s")

    def finish(place):
        release_free_memory()  # the statistics pass's tensors, before bias correction's
        search_thresholds(observers.values())  # KL: every tensor's search at once, on all cores
        plan = build_plan(model, cfg, target, place, observers)
        plan.equalized = tuple(c.nodes for c in chains)
        lap("parameters_s")
        diffs = {}
        source = model
        if do_bias:
            plan, diffs = bias_correction_pass(model, plan, cfg, rounds, work_dir / "models", bias_runner)
            if not target.quantize_bias:
                source = correct_float_biases(model, diffs)
            lap("bias_correction_s")
        emitted = emit_qdq(drop_added_biases(source, set(place.nodes)), plan)
        lap("emit_s")
        return plan, diffs, emitted

    plan, diffs, quantized = finish(place)
    if speed is not None and table.decisions.get(decision_key) is not None:
        speed.update(table.decisions[decision_key]["latency"])
    elif speed is not None:
        fp32_ms, int8_ms = paired_latency_ms([model, quantized], feeds0)
        speed.update(fp32_ms=fp32_ms, int8_ms=int8_ms, rounds=[])
        timings = speed["node_us"]
        # while the whole int8 model is slower, give back the nodes that gain least, a quarter at a time
        # 3 % margin: batch-1 timings on a busy machine jitter by a few percent, and "never slower" must hold
        while int8_ms > 0.97 * fp32_ms and any(n in timings for n in place.nodes):
            ranked = sorted((timings[n][0] - timings[n][1], n) for n in place.nodes if n in timings)
            batch = [n for _, n in ranked[: max(1, len(ranked) // 4)]]
            reasons = {n: f"whole model slower in int8 ({int8_ms:.3f} ms vs FP32 {fp32_ms:.3f} ms); this node gains "
                          f"least" for n in batch}
            speed["demoted"].update(reasons)
            skip = skip + tuple(batch)
            place = _with_reasons(place_qdq(model, target, skip=skip), speed["demoted"])
            missing = [t for t in observed_tensors(place) if t not in observers]
            if missing:
                observers.update(collect_statistics(model, tuple(missing), rounds, cfg.full.activation_quant_method,
                                                    work_dir / "models", collector))
            plan, diffs, quantized = finish(place)
            fp32_ms, int8_ms = paired_latency_ms([model, quantized], feeds0)
            speed["rounds"].append({"demoted": len(batch), "int8_ms": int8_ms})
        speed["fp32_ms"], speed["int8_ms"] = fp32_ms, int8_ms
        table.decisions[decision_key] = {"demoted": speed["demoted"],
                                         "latency": {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "rounds": speed["rounds"]}}
        table.save()
    lap("latency_guard_s")
    max_drop = None
    if cfg.ptqflow.max_drop is not None:
        from ptq_core.modes.full.max_drop import Build, FinalizeOnce, keep_until_within

        demoted = dict(speed["demoted"]) if speed else {}
        observers.update({t: FinalizeOnce(o) for t, o in observers.items()})  # same ranges in every rebuild

        def rebuild(extra: tuple[str, ...], reasons: dict[str, str]) -> Build:
            lap("max_drop_s")  # the damage pass and the evaluations since the last build
            kept = _with_reasons(place_qdq(model, target, skip=skip + extra), demoted)
            kept = replace(kept, kept_float={**kept.kept_float, **reasons})
            missing = [t for t in observed_tensors(kept) if t not in observers]
            if missing:  # a tensor that was inside the int8 region now borders it
                observers.update(collect_statistics(model, tuple(missing), rounds, cfg.full.activation_quant_method,
                                                    work_dir / "models", collector))
            return Build(kept, *finish(kept))

        report, build = keep_until_within(model, Build(place, plan, diffs, quantized), rounds, cfg.ptqflow.max_drop,
                                          rebuild, latency=lambda m: median_latency_ms(m, feeds0, runs=30))
        place, plan, diffs, quantized = build.place, build.plan, build.diffs, build.quantized
        max_drop = report.to_dict()
        lap("max_drop_s")
    if speed is not None and speed["demoted"]:  # FP32 for speed, not accuracy: 8-bit storage all the same
        from ptq_core.modes.full.kept_weights import store_kept_weights

        quantized, stored = store_kept_weights(quantized, set(speed["demoted"]) - set(plan.nodes), cfg)
        plan.stored_weights = {s.node: (s.bytes_stored, s.weight_cosine) for s in stored}
        lap("emit_s")
    from ptq_core.onnxgraph.compact import compact_model

    compact_model(quantized)
    if speed is not None:  # which nodes run int8 was decided by timings on this machine: say which
        from ptq_core.modes.full.latency_guard import machine_key
        from ptq_core.onnxgraph.graph import set_metadata

        speed["timed_on"] = machine_key()
        set_metadata(quantized, {GUARD_METADATA: speed["timed_on"]})
    return FullResult(model, plan, quantized, diffs, speed, {k: round(v, 3) for k, v in phases.items()}, max_drop)


def _with_reasons(place, reasons: dict[str, str]):
    from dataclasses import replace

    kept = dict(place.kept_float)
    for node, why in reasons.items():
        if node in kept:
            kept[node] = why
    return replace(place, kept_float=kept)


def full_decisions(model: onnx.ModelProto, plan: FullQuantPlan) -> list[LayerDecision]:
    """Summary rows: every weighted node, int8 or kept FP32 with the reason."""

    inits = {t.name: t for t in model.graph.initializer}
    weights = {(w.node, w.input_index): w for w in plan.weights}
    rows = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
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
    weighted = {r.node for r in rows}
    for node in model.graph.node:  # nodes without weights that --max-drop kept FP32 (a Concat, an Add, ...)
        reason = plan.kept_float.get(node.name, "")
        if node.name not in weighted and reason.startswith("max_drop"):
            rows.append(LayerDecision(node.name, node.op_type, "", (), False, reason))
    return rows
