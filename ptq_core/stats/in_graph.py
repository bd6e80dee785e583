"""Statistics taken inside the model run (docs/architecture.md, "statistics"): a tensor's min and max
(MAX_MIN, KL's first pass), and the histogram bin of each value (KL's second pass).

MAX_MIN and KL's first pass need only each tensor's global min and max. Exposing every tensor as a
graph output makes onnxruntime hand back each sample's whole activation set at once (about 200 MB a
sample on a PP-OCR text recognizer) for NumPy to scan; reducing inside the graph returns three
scalars a tensor instead. Each tensor gets ``ReduceMin``, ``ReduceMax`` and ``ReduceSum`` placed
right after the node that makes it, and the session runs in onnxruntime's priority-based order, so a
tensor is freed as soon as its consumers and reductions are done: the pass holds one inference's
working set, not the exposed tensors (measured on the recognizer, 2 threads: 60 MB instead of 430 MB,
21-24 ms a sample instead of 39 ms).

Min and max are exact in any order, so the observers' states are the same bits as on the exposed
tensors. onnxruntime's ``ReduceMin``/``ReduceMax`` do not propagate a NaN that is not the first
element, so ``ReduceSum`` is the sentinel: any NaN or Inf makes the sum non-finite (as can an
overflowing sum of finite values). A round whose reductions are not all finite is run again the exposed
way, where the observers see the tensors themselves and raise their exact errors (or find them finite).

KL's histogram pass needs every value, but only as a bin index: ``min(int(|x| / interval), 2047)``
with the division in float32, values with ``|x| <= DBL_EPSILON`` in no bin. The bins model computes
that index in the graph (Abs, Div, Min, Cast; IEEE division and truncation, the same integers NumPy
gets) and hands back uint16 indices shifted by one, 0 marking the skipped values: half the bytes of the
float tensor, and no NumPy pass but ``bincount``. A tensor whose interval is not above DBL_EPSILON is
exposed as it is (the observer raises converter_lite's error where values exceed it).

Tensors that are not float32 (the observers round other floats to float32 first) are exposed as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_core.onnxgraph.walk import unique_name
from ptq_core.quant import DBL_EPSILON

REDUCTIONS = ("ReduceMin", "ReduceMax", "ReduceSum")


@dataclass(frozen=True)
class ExtremesLayout:
    """Which outputs of the reduced model hold each tensor's (min, max, sum), and which tensors are raw."""

    reduced: dict[str, tuple[str, str, str]]
    raw: tuple[str, ...]

    def outputs(self) -> list[str]:
        return [name for triple in self.reduced.values() for name in triple] + list(self.raw)


def layout_of(exposed: onnx.ModelProto, tensors: tuple[str, ...]) -> ExtremesLayout:
    """The reduced model's outputs for ``tensors``, named from the exposed model's output types."""
    types = {o.name: o.type.tensor_type.elem_type for o in exposed.graph.output}
    taken = {name for node in exposed.graph.node for name in node.output} | {i.name for i in exposed.graph.input}
    reduced, raw = {}, []
    for tensor in tensors:
        if types.get(tensor) != TensorProto.FLOAT:
            raw.append(tensor)
            continue
        names = []
        for op in REDUCTIONS:
            name, k = f"{tensor}::{op}", 0
            while name in taken:
                k += 1
                name = f"{tensor}::{op}{k}"
            taken.add(name)
            names.append(name)
        reduced[tensor] = tuple(names)
    return ExtremesLayout(reduced, tuple(raw))


def extremes_model(exposed: onnx.ModelProto, tensors: tuple[str, ...]) -> tuple[onnx.ModelProto, ExtremesLayout]:
    """``exposed`` (the model with ``tensors`` among its outputs) with each float32 tensor's reductions
    placed right after its producer, and only the reductions and the raw tensors as outputs."""
    layout = layout_of(exposed, tensors)
    out = onnx.ModelProto()
    out.CopyFrom(exposed)
    graph = out.graph
    # a graph input is reduced before anything runs, any other tensor right after its producer
    _place_after_producers(graph, {tensor: [helper.make_node(op, [tensor], [name], keepdims=0)
                                            for op, name in zip(REDUCTIONS, names)]
                                   for tensor, names in layout.reduced.items()})
    raw_info = {o.name: o for o in exposed.graph.output if o.name in layout.raw}
    del graph.output[:]
    for names in layout.reduced.values():
        graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in names)
    graph.output.extend(raw_info[name] for name in layout.raw)
    return out, layout


@dataclass(frozen=True)
class BinsLayout:
    """The bins model's uint16 index output of each tensor (index + 1; 0 = no bin), and the raw tensors."""

    indices: dict[str, str]
    raw: tuple[str, ...]

    def outputs(self) -> list[str]:
        return list(self.indices.values()) + list(self.raw)


def bins_model(exposed: onnx.ModelProto, intervals: dict[str, float], bins: int) -> tuple[onnx.ModelProto, BinsLayout]:
    """``exposed`` computing, right after each float32 tensor's producer, its values' KL bin indices."""
    types = {o.name: o.type.tensor_type.elem_type for o in exposed.graph.output}
    taken = {name for node in exposed.graph.node for name in node.output} | {i.name for i in exposed.graph.input}
    taken |= {t.name for t in exposed.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(exposed)
    graph = out.graph
    consts = {key: unique_name(f"ptq_bins_{key}", taken) for key in ("top", "one", "zero", "eps")}
    graph.initializer.extend([numpy_helper.from_array(np.float32(bins - 1), consts["top"]),
                              numpy_helper.from_array(np.int32(1), consts["one"]),
                              numpy_helper.from_array(np.int32(0), consts["zero"]),
                              numpy_helper.from_array(np.float32(DBL_EPSILON), consts["eps"])])
    indices, raw, chains = {}, [], {}
    for tensor, interval in intervals.items():
        if types.get(tensor) != TensorProto.FLOAT or not np.float32(interval) > DBL_EPSILON:
            raw.append(tensor)
            continue
        n = {k: unique_name(f"{tensor}::bins_{k}", taken) for k in ("itv", "abs", "div", "min", "int", "inc", "big", "sel", "out")}
        graph.initializer.append(numpy_helper.from_array(np.float32(interval), n["itv"]))
        chains[tensor] = [
            helper.make_node("Abs", [tensor], [n["abs"]]),
            helper.make_node("Div", [n["abs"], n["itv"]], [n["div"]]),
            helper.make_node("Min", [n["div"], consts["top"]], [n["min"]]),
            helper.make_node("Cast", [n["min"]], [n["int"]], to=TensorProto.INT32),
            helper.make_node("Add", [n["int"], consts["one"]], [n["inc"]]),
            helper.make_node("Greater", [n["abs"], consts["eps"]], [n["big"]]),
            helper.make_node("Where", [n["big"], n["inc"], consts["zero"]], [n["sel"]]),
            helper.make_node("Cast", [n["sel"]], [n["out"]], to=TensorProto.UINT16),
        ]
        indices[tensor] = n["out"]
    _place_after_producers(graph, chains)
    raw_info = {o.name: o for o in exposed.graph.output}
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.UINT16, None) for name in indices.values())
    graph.output.extend(raw_info[name] for name in raw)
    return out, BinsLayout(indices, tuple(raw))


def _place_after_producers(graph: onnx.GraphProto, chains: dict[str, list[onnx.NodeProto]]) -> None:
    nodes = list(graph.node)
    del graph.node[:]
    produced = {name for node in nodes for name in node.output}
    for tensor, chain in chains.items():
        if tensor not in produced:
            graph.node.extend(chain)
    for node in nodes:
        graph.node.append(node)
        for tensor in node.output:
            graph.node.extend(chains.get(tensor, ()))
