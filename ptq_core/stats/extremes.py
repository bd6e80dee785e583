"""Statistics that are a tensor's min and max, taken inside the model run (docs/architecture.md, "statistics").

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

Tensors that are not float32 (the observers round other floats to float32 first) are exposed as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto, helper

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
    nodes = list(graph.node)
    del graph.node[:]

    def reductions(tensor: str) -> list[onnx.NodeProto]:
        return [helper.make_node(op, [tensor], [name], keepdims=0)
                for op, name in zip(REDUCTIONS, layout.reduced[tensor])]

    produced = {name for node in nodes for name in node.output}
    for tensor in layout.reduced:
        if tensor not in produced:  # a graph input: reduced before anything runs
            graph.node.extend(reductions(tensor))
    for node in nodes:
        graph.node.append(node)
        for tensor in node.output:
            if tensor in layout.reduced:
                graph.node.extend(reductions(tensor))
    raw_info = {o.name: o for o in exposed.graph.output if o.name in layout.raw}
    del graph.output[:]
    for names in layout.reduced.values():
        graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in names)
    graph.output.extend(raw_info[name] for name in layout.raw)
    return out, layout
