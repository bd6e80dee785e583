"""One FULL_QUANT quantization, in the order converter_lite runs it (docs/converter-lite.md §8): prepare
and place Q/DQ, let the latency guard keep slow int8 nodes FP32, collect statistics, compute parameters,
correct biases, emit; then the guard's whole-model check, ``--max-drop``'s keep loop and the storage of
kept nodes' weights. ``quantize_full`` adds the choice of cross-layer equalization on top.

The run is a small class because its phases share the prepared model, the placement, the observers
and the phase clock; each phase is one method, in the order ``run`` calls them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ptq_core.config import QuantConfig
from ptq_core.heap import release_free_memory
from ptq_core.modes.full.emit_qdq import emit_qdq
from ptq_core.modes.full.pipeline import (
    GUARD_METADATA,
    Collector,
    FullResult,
    _guard_applies,
    _with_reasons,
    add_missing_biases,
    bias_correction_pass,
    calibration_rounds,
    collect_statistics,
    correct_float_biases,
    drop_added_biases,
    model_key,
    speed_table_path,
)
from ptq_core.modes.full.prepare import (
    build_plan,
    check_weights,
    observed_tensors,
    placement,
    skip_names,
)
from ptq_core.modes.full.targets import BIAS_CORRECTED_OPS
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.branches import restore_branches, specialize
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.stats import collect
from ptq_core.stats.kl_observer import search_thresholds

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
    result = FullRun(*args, equalize=setting != "false").run()
    if setting != "auto" or not result.plan.equalized:
        return result
    plain = FullRun(*args, equalize=False).run()
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


class FullRun:
    """One quantization of the model, with or without cross-layer equalization where it applies."""

    def __init__(self, model_path: str | Path, cfg: QuantConfig, inputs: InputOptions, work_dir: Path,
                 collector: Collector, bias_runner: Callable | None, rounds: list[collect.Round],
                 progress: Callable | None, equalize: bool):
        if progress and collector is collect.collect_serial:
            def collector(m, t, r, meth):
                return collect.collect_serial(m, t, r, meth, progress=progress)
        self.model_path, self.cfg, self.inputs, self.work_dir = model_path, cfg, inputs, work_dir
        self.collector, self.bias_runner, self.rounds, self.equalize = collector, bias_runner, rounds, equalize
        self.clock = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.speed: dict | None = None
        self.table = None
        self.decision_key = ""

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.clock
        self.clock = now

    def run(self) -> FullResult:
        self.prepare()
        self.guard_nodes()
        self.collect(observed_tensors(self.place))
        plan, diffs, quantized = self.finish(self.place)
        plan, diffs, quantized = self.guard_whole_model(plan, diffs, quantized)
        self.lap("latency_guard_s")
        quantized = self.as_written(plan, quantized)
        max_drop = None
        if self.cfg.ptqflow.max_drop is not None:
            plan, diffs, quantized, max_drop = self.keep_within_max_drop(plan, diffs, quantized)
        quantized = self.compact(quantized)
        if self.branches.inlined:
            from ptq_core.onnxgraph.load import upgrade_opset

            untouched = upgrade_opset(model_cache.prepared_model(self.model_path, True))
            quantized = restore_branches(quantized, self.frame, self.branches.inlined, untouched)
        plan.branch_note = self.branches.text(set(plan.nodes))
        from ptq_core.modes.full.latency_guard import GuardRecord

        guard = None if self.speed is None else GuardRecord.of(self.speed)
        return FullResult(self.model, plan, quantized, diffs, guard, {k: round(v, 3) for k, v in self.phases.items()},
                          max_drop)

    def prepare(self) -> None:
        """The prepared FP32 graph, the Q/DQ placement and, where asked, equalized weights."""
        cfg = self.cfg
        self.model = model_cache.full_model(self.model_path)  # a private copy; optimized once per sweep
        self.frame = self.model
        self.model, self.branches = specialize(self.model, (r.feeds() for r in self.rounds))
        self.target, self.place = placement(self.model, cfg)
        check_weights(self.model, self.target, self.place)
        self.chains = []
        if self.equalize and not cfg.full.per_channel and self.target.cross_layer_equalization:
            from ptq_core.modes.full.equalization import equalize

            self.model, self.chains = equalize(self.model)  # weights only: the placement's graph is the same
        self.lap("prepare_and_preprocess_s")
        self.feeds0 = self.rounds[0].feeds()
        self.skip = skip_names(self.model, cfg.common.skip_quant_node)  # fused nodes keep the user's name as a prefix

    def guard_nodes(self) -> None:
        """Nodes whose int8 kernel is slower here stay FP32; decisions are remembered per model and config."""
        from ptq_core.modes.full.latency_guard import (
            SpeedTable,
            int8_losers,
            tensor_shapes,
        )
        from ptq_core.modes.full.placement import place_qdq

        cfg, model = self.cfg, self.model
        if _guard_applies(cfg, self.target):
            self.table = SpeedTable(speed_table_path())
            # decisions are remembered per model and config, so the same inputs give the same model
            # max_drop is left out: its loop runs after the guard and must start from the same int8 model
            guard_cfg = replace(cfg, ptqflow=replace(cfg.ptqflow, max_drop=None))
            shapes0 = sorted(v.shape for v in self.feeds0.values())
            self.decision_key = f"model|{model_key(model)}|{guard_cfg.fingerprint()}|{shapes0}"
            remembered = self.table.decisions.get(self.decision_key)
            shapes = tensor_shapes(model, {k: v.shape for k, v in self.feeds0.items()})
            losers, timings = int8_losers(model, cfg, self.target, self.place.nodes, shapes, self.table)
            if remembered is not None:
                losers = dict(remembered["demoted"])
            self.speed = {"demoted": dict(losers), "node_us": timings}
            if losers:
                self.skip = self.skip + tuple(losers)
                self.place = _with_reasons(place_qdq(model, self.target, skip=self.skip), losers)
        self.do_bias = cfg.full.bias_correction and self.target.bias_correction
        if self.do_bias:
            convs = [n.name for n in model.graph.node if n.name in self.place.nodes and n.op_type in BIAS_CORRECTED_OPS]
            self.model = add_missing_biases(model, convs)
        self.lap("latency_guard_s")

    def collect(self, tensors: tuple[str, ...]) -> None:
        if self.cfg.ptqflow.max_drop is not None:  # the keep loop re-places Q/DQ but never recollects
            from ptq_core.modes.full.max_drop import border_tensors

            tensors = border_tensors(self.model, self.target, self.place, self.skip)
        release_free_memory()  # the latency guard's sessions, before the statistics pass's peak
        self.observers = collect_statistics(self.model, tensors, self.rounds, self.cfg.full.activation_quant_method,
                                            self.work_dir / "models", self.collector)
        self.lap("statistics_s")

    def collect_missing(self, place) -> None:
        """Statistics of tensors that now border the int8 region and were inside it before."""
        missing = [t for t in observed_tensors(place) if t not in self.observers]
        if missing:
            self.observers.update(collect_statistics(self.model, tuple(missing), self.rounds,
                                                     self.cfg.full.activation_quant_method,
                                                     self.work_dir / "models", self.collector))

    def finish(self, place):
        """Parameters, bias correction and the emitted QDQ model for ``place``."""
        release_free_memory()  # the statistics pass's tensors, before bias correction's
        search_thresholds(self.observers.values())  # KL: every tensor's search at once, on all cores
        plan = build_plan(self.model, self.cfg, self.target, place, self.observers)
        plan.equalized = tuple(c.nodes for c in self.chains)
        self.lap("parameters_s")
        diffs = {}
        source = self.model
        if self.do_bias:
            plan, diffs = bias_correction_pass(self.model, plan, self.cfg, self.rounds, self.work_dir / "models",
                                               self.bias_runner)
            if not self.target.quantize_bias:
                source = correct_float_biases(self.model, diffs)
            self.lap("bias_correction_s")
        emitted = emit_qdq(drop_added_biases(source, set(place.nodes)), plan)
        self.lap("emit_s")
        return plan, diffs, emitted

    def guard_whole_model(self, plan, diffs, quantized):
        """While the whole int8 model is slower, give back the nodes that gain least, a quarter at a time."""
        from ptq_core.modes.full.placement import place_qdq
        from ptq_core.onnxgraph.timing import paired_latency_ms

        speed, table, key = self.speed, self.table, self.decision_key
        if speed is None:
            return plan, diffs, quantized
        if table.decisions.get(key) is not None:
            speed.update(table.decisions[key]["latency"])
            return plan, diffs, quantized
        release_free_memory()  # bias correction's sessions, before two timed sessions hold the peak
        fp32_ms, int8_ms = paired_latency_ms([self.model, quantized], self.feeds0)
        speed.update(fp32_ms=fp32_ms, int8_ms=int8_ms, rounds=[])
        timings = speed["node_us"]
        # 3 % margin: batch-1 timings on a busy machine jitter by a few percent, and "never slower" must hold
        while int8_ms > 0.97 * fp32_ms and any(n in timings for n in self.place.nodes):
            ranked = sorted((timings[n][0] - timings[n][1], n) for n in self.place.nodes if n in timings)
            batch = [n for _, n in ranked[: max(1, len(ranked) // 4)]]
            reasons = {n: f"whole model slower in int8 ({int8_ms:.3f} ms vs FP32 {fp32_ms:.3f} ms); this node gains "
                          f"least" for n in batch}
            speed["demoted"].update(reasons)
            self.skip = self.skip + tuple(batch)
            self.place = _with_reasons(place_qdq(self.model, self.target, skip=self.skip), speed["demoted"])
            self.collect_missing(self.place)
            plan, diffs, quantized = self.finish(self.place)
            fp32_ms, int8_ms = paired_latency_ms([self.model, quantized], self.feeds0)
            speed["rounds"].append({"demoted": len(batch), "int8_ms": int8_ms})
        speed["fp32_ms"], speed["int8_ms"] = fp32_ms, int8_ms
        table.decisions[key] = {"demoted": speed["demoted"],
                                "latency": {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "rounds": speed["rounds"]}}
        table.save()
        return plan, diffs, quantized

    def keep_within_max_drop(self, plan, diffs, quantized):
        """``--max-drop``: keep the most damaging nodes FP32 until the output is within the bound."""
        from ptq_core.modes.full.max_drop import Build, FinalizeOnce, keep_until_within
        from ptq_core.modes.full.placement import place_qdq
        from ptq_core.onnxgraph.timing import median_latency_ms

        demoted = dict(self.speed["demoted"]) if self.speed else {}
        self.observers.update({t: FinalizeOnce(o) for t, o in self.observers.items()})  # same ranges every rebuild

        def rebuild(extra: tuple[str, ...], reasons: dict[str, str]) -> Build:
            self.lap("max_drop_s")  # the damage pass and the evaluations since the last build
            kept = _with_reasons(place_qdq(self.model, self.target, skip=self.skip + extra), demoted)
            kept = replace(kept, kept_float={**kept.kept_float, **reasons})
            self.collect_missing(kept)  # a tensor that was inside the int8 region now borders it
            new_plan, new_diffs, emitted = self.finish(kept)
            # the loop judges the model as it will be written: a node the guard keeps FP32 for speed has
            # 8-bit stored weights unless the loop keeps its float weights too
            return Build(kept, new_plan, new_diffs, self.as_written(new_plan, emitted, float_weights=set(extra)))

        report, build = keep_until_within(self.model, Build(self.place, plan, diffs, quantized), self.rounds,
                                          self.cfg.ptqflow.max_drop, rebuild,
                                          latency=lambda m: median_latency_ms(m, self.feeds0, runs=30),
                                          stored=tuple(plan.stored_weights))
        self.place = build.place
        self.lap("max_drop_s")
        return build.plan, build.diffs, build.quantized, report

    def as_written(self, plan, quantized, float_weights: set[str] = frozenset()):
        """``quantized`` with the weights of the nodes the guard keeps FP32 for speed stored as 8-bit codes
        (FP32 for speed, not accuracy), except ``float_weights``, which ``--max-drop`` keeps float."""
        speed = self.speed
        if speed is None or not speed["demoted"]:
            return quantized
        from ptq_core.modes.full.kept_weights import store_kept_weights

        nodes = set(speed["demoted"]) - set(plan.nodes) - set(float_weights)
        quantized, stored = store_kept_weights(quantized, nodes, self.cfg)
        plan.stored_weights = {s.node: (s.bytes_stored, s.weight_cosine) for s in stored}
        self.lap("emit_s")
        return quantized

    def compact(self, quantized):
        """The graph without redundant bytes, the guard's CPU named."""
        speed = self.speed
        from ptq_core.onnxgraph.compact import compact_model

        compact_model(quantized)
        if speed is not None:  # which nodes run int8 was decided by timings on this machine: say which
            from ptq_core.modes.full.latency_guard import machine_key
            from ptq_core.onnxgraph.load import set_metadata

            speed["timed_on"] = machine_key()
            set_metadata(quantized, {GUARD_METADATA: speed["timed_on"]})
        return quantized
