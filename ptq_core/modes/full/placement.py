"""Where a target's Q/DQ pairs go in one model: the int8 region, the quantized tensors, shared params.

Placement is its own step, apart from writing the model (``emit_qdq``): planning, ``--max-drop``
and the latency guard place Q/DQ many times to decide what to calibrate and what to keep FP32,
and only the final plan is ever written. Everything here reads the target's tables
(``targets.py``); nothing is written to the model.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import onnx

from ptq_core.errors import ModelError
from ptq_core.modes.full.targets import (
    ACTIVATION_INPUTS,
    BIAS_INPUT,
    COMPUTE_OPS,
    CONV_OPS,
    Target,
)
from ptq_core.modes.weight.emit import MIN_OPSET
from ptq_core.onnxgraph.load import default_opset
from ptq_core.onnxgraph.walk import _attrs, node_bodies

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class QdqPlacement:
    """Where a target's Q/DQ pairs go in one model (all in graph order).

    ``nodes``: the int8 region (compute nodes plus the same-scale, removable and requant ops that
    joined it). ``tensors``: every activation tensor that needs params. ``source``: for each of
    those, the tensor whose calibration statistics give its params; tensors with the same source
    must get identical params (a MaxPool output reuses its input's; a Conv output followed by a
    Relu takes the Relu output's, so its Q clamps at zero and ``emit_qdq`` drops the Relu).
    ``kept_float``: compute-type nodes left out, with the reason.
    """

    target: str
    nodes: tuple[str, ...]
    tensors: tuple[str, ...]
    source: dict[str, str] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)


def place_qdq(model: onnx.ModelProto, target: Target, skip: tuple[str, ...] = (),
              op_types: frozenset | set | None = None) -> QdqPlacement:
    """Choose the int8 region and the Q/DQ tensors for ``target`` (nodes must be named).

    Rules (no Q/DQ islands: every pair touches an int8 node):
    * compute ops of the target with constant float weights start the region;
    * every float activation input of a region node gets a pair (graph inputs included);
    * a region node's output gets a pair when a consumer is in the region, when the target needs
      it for fusion (``quantize_outputs_of``), or when it is a same-scale/removable op;
    * a same-scale op joins when its input is quantized, or when it sits between a region node and
      a quantized tensor; its output shares its input's params;
    * a removable activation (Relu/Clip with constant bounds, asymmetric targets) joins when its
      input is quantized or written by a region node; if that input has this one consumer, comes
      from a compute/requant node and is no graph output, it shares the activation output's params
      (and the emitter folds the activation away);
    * a requant op joins when every input comes from the region (or is a quantized graph input).
    """
    if default_opset(model) < MIN_OPSET:
        raise ModelError(f"place_qdq needs opset >= {MIN_OPSET}: run upgrade_opset first, then place, calibrate and plan "
                         f"on the upgraded model (the converter may restructure ops such as Softmax)")
    if any(not n.name for n in model.graph.node):
        raise ModelError("place_qdq needs named nodes (run graph.assign_node_names first)")
    allowed = target.int8_ops if op_types is None else (target.int8_ops & frozenset(op_types))
    placer = _Placer(model.graph, target, allowed, set(skip))
    placer.seed()
    placer.grow()
    return placer.result()


class _Placer:
    """One graph's growing int8 region for one target: the state ``place_qdq``'s steps share."""

    def __init__(self, graph: onnx.GraphProto, target: Target, allowed: frozenset, skip: set[str]):
        self.graph, self.target, self.allowed, self.skip = graph, target, allowed, skip
        self.inits = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.users = collections.Counter(name for n in graph.node for name in n.input if name)
        self.kept: dict[str, str] = {}
        self.region: set[str] = set()
        self.tensors: set[str] = set()

    # ---- tensors -----------------------------------------------------------------------------
    def is_float_const(self, name: str) -> bool:
        t = self.inits.get(name)
        return t is not None and t.data_type in _FLOAT_TYPES

    def is_fp32_const(self, name: str) -> bool:
        t = self.inits.get(name)
        return t is not None and t.data_type == onnx.TensorProto.FLOAT

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Float, non-constant data inputs (by op: skip shape/axes/index inputs)."""
        idx = ACTIVATION_INPUTS.get(node.op_type)
        names = [node.input[i] for i in (idx if idx is not None else range(len(node.input))) if i < len(node.input)]
        return [n for n in names if n and n not in self.inits]

    def written_by_region(self, name: str) -> bool:
        p = self.producer.get(name)
        return p is not None and p.name in self.region

    def in_region(self, name: str) -> bool:
        """Already quantized, or written by a region node: joining costs no new pair on this input."""
        return name in self.tensors or self.written_by_region(name)

    # ---- the region --------------------------------------------------------------------------
    def seed(self) -> None:
        """Compute ops with constant float weights start the region; the others are kept float."""
        for node in self.graph.node:
            if node.op_type not in COMPUTE_OPS:
                continue
            if node.name in self.skip:
                self.kept[node.name] = "skip_quant_node"
                continue
            if node.op_type not in self.allowed:
                self.kept[node.name] = f"{self.target.name} does not run {node.op_type} in int8"
                continue
            reason = _compute_reason(node, self.target, self.inits, self.users, self.is_fp32_const)
            if reason:
                self.kept[node.name] = reason
                continue
            self.region.add(node.name)
        for node in self.graph.node:
            if node.name in self.region:
                self.add_node_tensors(node)

    def outputs_quantized(self, node: onnx.NodeProto) -> None:
        op, target = node.op_type, self.target
        always = op in target.quantize_outputs_of or op in target.same_scale_ops or op in target.removable_activations
        out = node.output[0] if node.output else ""  # region ops have one float output
        if out and (always or any(c.name in self.region for c in self.consumers.get(out, []))):
            self.tensors.add(out)

    def add_node_tensors(self, node: onnx.NodeProto) -> None:
        self.tensors.update(self.activation_inputs(node))
        self.outputs_quantized(node)
        for name in self.activation_inputs(node):  # a region producer's output now has an int8 reader
            if self.written_by_region(name):
                self.outputs_quantized(self.producer[name])

    def joins(self, node: onnx.NodeProto, ins: list[str]) -> bool:
        """Whether a same-scale, removable or requant node joins the region as it stands."""
        op, target = node.op_type, self.target
        if op in target.same_scale_ops:
            return ins[0] in self.tensors or (node.output[0] in self.tensors and self.written_by_region(ins[0]))
        if op in target.removable_activations:
            return self.in_region(ins[0]) and _clip_ok(node, self.inits)
        if op in target.requant_ops:
            consts = [n for n in node.input if n in self.inits and self.is_float_const(n)]
            return not consts and all(self.in_region(n) for n in ins)
        return False

    def grow(self) -> None:
        changed = True
        while changed:  # a pass in graph order settles chains; repeat for joins that enable earlier ones
            changed = False
            for node in self.graph.node:
                if node.name in self.region or node.name in self.skip or node.op_type not in self.allowed:
                    continue
                ins = self.activation_inputs(node)
                if not ins or len([o for o in node.output if o]) != 1 or not node.output[0]:
                    continue  # e.g. MaxPool with its int64 Indices output in use
                if self.joins(node, ins):
                    self.region.add(node.name)
                    self.add_node_tensors(node)
                    changed = True

    # ---- shared params -----------------------------------------------------------------------
    def share(self) -> dict[str, str]:
        """Union-find in graph order with explicit roots: tensor -> tensor its params come from."""
        parent: dict[str, str] = {}
        pinned = {o.name for o in self.graph.output} | subgraph_inputs(self.graph)
        target = self.target

        def find(t: str) -> str:
            while parent.get(t, t) != t:
                t = parent[t]
            return t

        for node in self.graph.node:
            if node.name not in self.region:
                continue
            ins = self.activation_inputs(node)
            out = node.output[0] if node.output else ""
            if not ins or out not in self.tensors or ins[0] not in self.tensors:
                continue
            if node.op_type in target.same_scale_ops:
                parent[out] = find(ins[0])
            elif node.op_type in target.removable_activations:
                src = ins[0]
                p = self.producer.get(src)
                private = (self.users[src] == 1 and src not in pinned and self.written_by_region(src)
                           and (p.op_type in target.compute_ops or p.op_type in target.requant_ops)
                           and find(src) == src)
                if private:
                    parent[src] = out
        return {t: find(t) for t in self.tensors}

    def result(self) -> QdqPlacement:
        graph_inputs = [i.name for i in self.graph.input if i.name not in self.inits]
        order = [n for n in graph_inputs if n in self.tensors]
        order += [o for n in self.graph.node for o in n.output if o in self.tensors and o not in order]
        source = self.share()
        return QdqPlacement(
            target=self.target.name,
            nodes=tuple(n.name for n in self.graph.node if n.name in self.region),
            tensors=tuple(order),
            source={t: source[t] for t in order},
            kept_float=self.kept,
        )


def _compute_reason(node, target: Target, inits, users, is_float_const) -> str:
    op = node.op_type
    attrs = _attrs(node)
    if op in CONV_OPS:
        if len(node.input) < 2 or not is_float_const(node.input[1]):
            return "weight is not a constant float32 initializer"
        if node.input[0] in inits:
            return "data input is a constant"
        weight = node.input[1]
    elif op == "Gemm":
        if not target.transposed_gemm and (attrs.get("transA", 0) or attrs.get("transB", 0)):
            return f"{target.name} does not quantize Gemm with transA/transB"
        if all(i in inits for i in node.input[:2]):
            return "both inputs are constants"
        weight = node.input[1] if node.input[1] in inits else node.input[0]
    else:  # MatMul
        if all(i in inits for i in node.input[:2]):
            return "both inputs are constants"
        weight = next((i for i in node.input[:2] if i in inits), "")
    for i in node.input[:2]:
        if i in inits and not is_float_const(i):
            return f"constant input {i!r} is not float32 (only float32 weights are quantized)"
    if weight and not target.shared_weights and users[weight] > 1:
        return f"{target.name} does not quantize a weight shared by several nodes"
    bias_index = BIAS_INPUT.get(op)
    if bias_index is not None and len(node.input) > bias_index and node.input[bias_index]:
        if node.input[bias_index] not in inits:
            return "bias is not a constant"
    return ""


def _clip_ok(node: onnx.NodeProto, inits) -> bool:
    """Clip joins only with constant (or absent) bounds."""
    if node.op_type != "Clip":
        return True
    return all((not name) or name in inits for name in node.input[1:3])


def subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every tensor an If/Loop/Scan body reads or returns: such tensors keep their names (pinned)."""
    used: set[str] = set()
    for node in graph.node:
        for _, sub in node_bodies(node):
            for n in sub.node:
                used.update(n.input)
            used |= subgraph_inputs(sub)
            used.update(o.name for o in sub.output)
    return used
