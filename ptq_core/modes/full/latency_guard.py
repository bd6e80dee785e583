"""Does int8 pay on this machine? Per-node kernel times from onnxruntime's profiler, in context.

onnxruntime's int8 kernels do not always beat its FP32 ones: on x86 its NCHWc FP32 convolutions
beat QLinearConv for depthwise and small convolutions, and every int8 region pays for the
Q/DQ conversions at its edges. So the planner profiles the FP32 model and the candidate int8
model on the same input, keeps in FP32 every node whose int8 kernel is not faster, and then
checks the whole model: while the int8 model is still slower than FP32, the nodes with the
smallest gain go back to FP32 too. Timings are in context (real shapes, real neighbours,
the optimizer's real fusions), which a table of isolated micro-benchmarks cannot give.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_core.files import write_atomic


@dataclass(frozen=True)
class GuardRecord:
    """What the latency guard decided and measured, as the summary and the dashboard report it."""

    demoted: dict  # node -> why it stays FP32
    node_us: dict  # node -> (FP32 µs, int8 µs) per inference, from the per-op timings
    fp32_ms: float = 0.0  # whole model, batch 1, as the guard timed it
    int8_ms: float = 0.0
    rounds: tuple = ()  # the whole-model check's give-back rounds
    timed_on: str = ""  # onnxruntime version and CPU the timings speak for

    @staticmethod
    def of(speed: dict) -> GuardRecord:
        return GuardRecord(dict(speed["demoted"]), dict(speed["node_us"]), float(speed.get("fp32_ms", 0.0)),
                           float(speed.get("int8_ms", 0.0)), tuple(speed.get("rounds", ())), speed.get("timed_on", ""))


def _session(model: onnx.ModelProto, profile_dir: str | None = None):
    from ptq_core.onnxgraph.session import make_session

    return make_session(model, threads=1, profile_prefix=os.path.join(profile_dir, "prof") if profile_dir else None)






def node_times_us(model: onnx.ModelProto, feeds: dict, runs: int = 40, warmup: int = 10) -> dict[str, float]:
    """Mean kernel time per node name (µs per inference) from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory(prefix="ptq-prof-") as tmp:
        session = _session(model, tmp)
        for _ in range(warmup + runs):
            session.run(None, feeds)
        path = session.end_profiling()
        with open(path) as fh:
            events = json.load(fh)
    totals: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        totals[event["name"][: -len("_kernel_time")]].append(float(event.get("dur", 0)))
    # keep the last `runs` samples of each node (the first ones are warm-up)
    return {name: float(np.mean(v[-runs:])) for name, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# per-op micro-benchmarks, cached per machine


def machine_key() -> str:
    """onnxruntime version, CPU model and int8 ISA flags: a table measured elsewhere does not apply here.

    The flags matter as much as the model name: the same VM type can land on hosts with and without
    VNNI, and onnxruntime picks different int8 kernels for each (ptq_core.onnxgraph.cpu).
    """
    import onnxruntime as ort

    from ptq_core.onnxgraph.cpu import machine_isa

    return f"onnxruntime {ort.__version__} | {machine_isa()}"


_SAVE_LOCK = threading.Lock()


class SpeedTable:
    """JSON map of op signature -> [fp32 µs, int8 µs], one file per machine key."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self.data: dict[str, list[float]] = {}
        self.decisions: dict[str, dict] = {}  # whole-model outcomes, keyed by model + config
        if path and os.path.exists(path):
            try:
                with open(path) as fh:
                    loaded = json.load(fh)
                if loaded.get("machine") == machine_key():
                    self.data = loaded.get("ops", {})
                    self.decisions = loaded.get("decisions", {})
            except (OSError, ValueError):
                self.data, self.decisions = {}, {}

    def get(self, signature: str):
        value = self.data.get(signature)
        return tuple(value) if value else None

    def put(self, signature: str, fp32_us: float, int8_us: float) -> None:
        self.data[signature] = [round(fp32_us, 3), round(int8_us, 3)]

    def save(self) -> None:
        """Merge into what is on disk, then write atomically: parallel sweep points (threads) and runs
        (processes) share one table, and none may drop another's timings or decisions."""
        if not self.path:
            return
        with _SAVE_LOCK:
            on_disk = SpeedTable(self.path)
            self.data = {**on_disk.data, **self.data}
            self.decisions = {**on_disk.decisions, **self.decisions}
            write_atomic(self.path, json.dumps({"machine": machine_key(), "ops": self.data,
                                                "decisions": self.decisions}, sort_keys=True, indent=0))


def _kernel_sum(times: dict[str, float], exclude: tuple[str, ...]) -> float:
    return sum(v for k, v in times.items() if not k.startswith(exclude))


def micro_benchmark(fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: dict, runs: int = 30,
                    quick_runs: int = 10, clear: float = 0.2) -> tuple[float, float]:
    """Kernel time of the op alone: FP32 without NCHWc reorders, int8 without the edge Q/DQ.

    ``quick_runs`` first; the full ``runs`` only when the two are within ``clear`` of each other, where
    the guard's 3 % margin needs the precision.
    """
    def measure(n: int) -> tuple[float, float]:
        a = node_times_us(fp32, feeds, runs=n, warmup=3)
        b = node_times_us(int8, feeds, runs=n, warmup=3)
        return _kernel_sum(a, ("ReorderInput", "ReorderOutput")), _kernel_sum(b, ("ptq_Q_", "ptq_DQ_",
                                                                              "QuantizeLinear", "DequantizeLinear"))

    fp32_us, int8_us = measure(quick_runs)
    if fp32_us > 0 and abs(int8_us / fp32_us - 1.0) <= clear:
        fp32_us, int8_us = measure(runs)
    return fp32_us, int8_us


def tensor_shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor once the graph inputs are fixed (ONNX shape inference)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in input_shapes:
            dims = value.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[value.name]):
                d.Clear()
                d.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def signature(node: onnx.NodeProto, in_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> str:
    attrs = sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in node.attribute)
    return f"{node.op_type}|{'x'.join(map(str, in_shape))}|{'x'.join(map(str, w_shape))}|{attrs}"


def single_node_models(node: onnx.NodeProto, in_shape: tuple[int, ...], inits: dict, cfg, target):
    """The node alone as an FP32 model and as the int8 model ptqflow would emit for it."""
    from onnx import helper

    from ptq_core.modes.full.emit_qdq import emit_qdq
    from ptq_core.modes.full.placement import place_qdq
    from ptq_core.modes.full.prepare import build_plan
    from ptq_core.stats.observers import make_observer

    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    clone.input[0] = "x"
    del clone.output[:]
    clone.output.append("y")
    clone.name = "op"
    used = [inits[n] for n in clone.input[1:] if n in inits]
    graph = helper.make_graph([clone], "op", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], used)
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    fp32.ir_version = 8
    rng = np.random.default_rng(0)
    feeds = {"x": rng.uniform(-1, 1, in_shape).astype(np.float32)}
    y = _session(fp32).run(None, feeds)[0]
    observers = {}
    for name, value in (("x", feeds["x"]), ("y", y)):
        obs = make_observer("MAX_MIN")
        obs.update(value, 0)
        observers[name] = obs
    place = place_qdq(fp32, target)
    if "op" not in place.nodes:
        return None
    plan = build_plan(fp32, cfg, target, place, observers)
    return fp32, emit_qdq(fp32, plan), feeds


def int8_losers(model: onnx.ModelProto, cfg, target, nodes: tuple[str, ...], shapes: dict, table: SpeedTable,
                margin: float = 0.97) -> tuple[dict[str, str], dict[str, tuple[float, float]]]:
    """Compute nodes whose int8 kernel is not at least ``1/margin`` times faster than FP32 here."""
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    losers: dict[str, str] = {}
    timings: dict[str, tuple[float, float]] = {}
    for name in nodes:
        node = by_name[name]
        if node.op_type not in target.compute_ops or len(node.input) < 2 or node.input[1] not in inits:
            continue
        in_shape = shapes.get(node.input[0])
        if in_shape is None:
            continue
        sig = signature(node, in_shape, tuple(inits[node.input[1]].dims))
        cached = table.get(sig)
        if cached is None:
            built = single_node_models(node, in_shape, inits, cfg, target)
            if built is None:
                continue
            cached = micro_benchmark(*built)
            table.put(sig, *cached)
        fp32_us, int8_us = cached
        timings[name] = (fp32_us, int8_us)
        if int8_us * margin >= fp32_us:
            losers[name] = f"int8 kernel not faster here ({int8_us:.0f} µs vs FP32 {fp32_us:.0f} µs)"
    table.save()
    return losers, timings
