"""The QDQ emitter: one ``FullQuantPlan`` -> one ONNX model that plain onnxruntime runs in int8.

``emit_qdq`` writes QuantizeLinear -> DequantizeLinear pairs for the planned activations, integer
weights and int32 biases behind DequantizeLinear, and nothing else: model inputs and outputs stay
float and keep their names (a quantized graph output becomes the DQ output; its producer writes a
renamed ``ptq_f_*`` tensor). Placement follows onnxruntime's QDQ conventions so its graph optimizer
fuses DQ->Conv->Q into QLinearConv, DQ->MatMul(->Q) into QLinearMatMul / MatMulIntegerToFloat,
DQ->Gemm into QGemm, and runs same-scale ops (MaxPool, Reshape, ...) directly on int8. A Relu/Clip
whose input and output carry the same params and that the Q reproduces exactly is folded away,
as onnxruntime's own QDQ quantizer does.

This module only writes: where the pairs go is ``placement.place_qdq``, the plan is checked by
``plan_checks``, and ``audit`` proves what onnxruntime made of the result and whether it keeps
the target's rules.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.errors import PtqError
from ptq_core.modes.full.placement import subgraph_inputs
from ptq_core.modes.full.plan import BiasQuant, FullQuantPlan, WeightQuant
from ptq_core.modes.full.plan_checks import (
    QUANT_DTYPES,
    check_activation,
    check_bias,
    check_form,
    check_weight,
    plan_form,
    planned_node,
)
from ptq_core.modes.full.targets import (
    COMPUTE_OPS,
    ORT_QDQ_TRANSPARENT_OPS,
    REMOVABLE_ACTIVATIONS,
)
from ptq_core.modes.weight.emit import PRODUCER
from ptq_core.onnxgraph.load import set_metadata, upgrade_opset
from ptq_core.onnxgraph.walk import all_names, producers, unique_name

PREFIX = "ptq_"


def emit_qdq(model: onnx.ModelProto, plan: FullQuantPlan) -> onnx.ModelProto:
    """Return a new QDQ model for ``plan``; ``model`` is not modified.

    Same plan -> byte-identical model (everything is emitted in graph order, never in dict order).
    New names start with ``ptq_`` and never collide with existing ones.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = upgrade_opset(out)
    _QdqWriter(out.graph, plan).write()
    out.producer_name = PRODUCER
    out.producer_version = __import__("ptq_core").__version__
    form = plan_form(plan)
    if form is not None and plan.weights:
        set_metadata(out, form.metadata())
    return out


class _QdqWriter:
    """One graph being rewritten for one plan: the new nodes and initializers collected in graph
    order, then put in place at once."""

    def __init__(self, graph: onnx.GraphProto, plan: FullQuantPlan):
        self.graph, self.plan = graph, plan
        self.nodes = list(graph.node)
        self.by_name = {n.name: n for n in self.nodes if n.name}
        self.inits = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        self.new_inits: list[onnx.TensorProto] = []
        self.front: list[onnx.NodeProto] = []  # pairs on graph inputs
        self.after: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)  # pairs on node outputs
        self.before: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)  # weight and bias DQs
        self.rename: dict[str, str] = {}  # tensor -> name its readers use now
        self.replaced: set[str] = set()  # float initializers now behind a DQ

    def fresh(self, base: str) -> str:
        return unique_name(base, self.taken)

    def write(self) -> None:
        self.check_plan()
        self.acts = dict(self.plan.activations)
        self.taken = all_names(self.graph)
        self.nodes = _fold_clamps(self.nodes, self.acts, self.inits, self.graph_outputs | subgraph_inputs(self.graph))
        self.producer = producers(self.nodes)
        self.node_index = {id(n): k for k, n in enumerate(self.nodes)}
        self.activation_pairs()
        weight_scale = self.weight_dqs()
        self.bias_dqs(weight_scale)
        self.assemble()
        _fence_float_nodes(self.graph, set(self.plan.nodes), self.inits, self.fresh)
        present = {name for n in self.graph.node for name in n.output}
        kept_vi = [v for v in self.graph.value_info if v.name in present]
        if len(kept_vi) != len(self.graph.value_info):  # tensors of folded clamps, dropped initializers
            del self.graph.value_info[:]
            self.graph.value_info.extend(kept_vi)

    def check_plan(self) -> None:
        plan = self.plan
        graph_inputs = {i.name for i in self.graph.input}
        producer = producers(self.nodes)
        for name in plan.nodes:
            if name not in self.by_name:
                raise PtqError(f"plan: node {name!r} is not in the model")
        for t, aq in plan.activations.items():
            check_activation(t, aq)
            if t not in producer and t not in graph_inputs and t not in self.inits:
                raise PtqError(f"plan: activation tensor {t!r} is not produced by any node, nor a graph input")
            p = producer.get(t)
            if p is not None and p.op_type == "DequantizeLinear":
                raise PtqError(f"plan: tensor {t!r} is already the output of a DequantizeLinear ({p.name}); the model is already quantized")
        for node in self.nodes:
            if node.op_type == "QuantizeLinear" and node.input and node.input[0] in plan.activations:
                raise PtqError(f"plan: tensor {node.input[0]!r} already feeds QuantizeLinear {node.name!r}; it would be quantized twice")

    # ---- activations -------------------------------------------------------------------------
    def activation_order(self) -> list[str]:
        """Planned tensors in graph position: graph inputs / initializers first, then node outputs."""
        position: dict[str, int] = {}
        for i in self.graph.input:
            position.setdefault(i.name, -1)
        for t in self.graph.initializer:
            position.setdefault(t.name, -1)
        for k, node in enumerate(self.nodes):
            for name in node.output:
                position.setdefault(name, k)
        return sorted(self.acts, key=lambda t: (position.get(t, -1), _input_rank(self.graph, t), t))

    def activation_pairs(self) -> None:
        # tensors with equal params share one scale/zero-point pair of initializers (fewer tensors,
        # and onnxruntime then recognizes the DQ->Q pairs it can drop around fan-outs)
        shared_params: dict[tuple, tuple[str, str]] = {}
        for t in self.activation_order():
            aq = self.acts[t]
            key = (np.float32(aq.scale).tobytes(), int(aq.zero_point), aq.dtype)
            if key not in shared_params:
                scale = self.fresh(f"{PREFIX}s_{t}")
                zp = self.fresh(f"{PREFIX}z_{t}")
                self.new_inits.append(numpy_helper.from_array(np.array(aq.scale, np.float32), scale))
                self.new_inits.append(numpy_helper.from_array(np.array(aq.zero_point, QUANT_DTYPES[aq.dtype][0]), zp))
                shared_params[key] = (scale, zp)
            self.activation_pair(t, *shared_params[key])

    def activation_pair(self, t: str, scale: str, zp: str) -> None:
        q_out = self.fresh(f"{PREFIX}q_{t}")
        p = self.producer.get(t)
        if t in self.graph_outputs and p is not None:
            # the graph output keeps its name: it becomes the DQ output, the producer writes a new name
            q_in = self.fresh(f"{PREFIX}f_{t}")
            p.output[list(p.output).index(t)] = q_in
            dq_out = t
        else:
            q_in, dq_out = t, self.fresh(f"{PREFIX}dq_{t}")
            self.rename[t] = dq_out
        pair = [
            helper.make_node("QuantizeLinear", [q_in, scale, zp], [q_out], name=self.fresh(f"{PREFIX}Q_{t}")),
            helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out], name=self.fresh(f"{PREFIX}DQ_{t}")),
        ]
        if p is None:
            self.front.extend(pair)
        else:
            self.after[self.node_index[id(p)]].extend(pair)

    # ---- weights and biases ------------------------------------------------------------------
    def in_node_order(self, items) -> list:
        return sorted(items, key=lambda w: (self.node_index[id(planned_node(self.by_name, w.node))], w.input_index))

    def weight_dqs(self) -> dict[tuple[str, int], np.ndarray]:
        """DQs in front of the planned weights (equal codes and params share one); the scale of each."""
        emitted: dict[tuple, str] = {}
        weight_scale: dict[tuple[str, int], np.ndarray] = {}
        for wq in self.in_node_order(self.plan.weights):
            node = planned_node(self.by_name, wq.node)
            check_weight(node, wq, self.inits)
            check_form(wq, self.plan)
            q = np.asarray(wq.q)
            scale = np.asarray(wq.scale, np.float32).reshape(-1)
            zero = np.asarray(wq.zero_point).reshape(-1).astype(q.dtype)
            per_channel = len(scale) > 1
            key = (wq.tensor, q.dtype.str, q.tobytes(), scale.tobytes(), zero.tobytes(), wq.axis if per_channel else None)
            if key not in emitted:
                emitted[key] = self.initializer_dq(node, wq, "w", q, scale, zero, int(wq.axis) if per_channel else None)
            node.input[wq.input_index] = emitted[key]
            self.replaced.add(wq.tensor)
            weight_scale[(wq.node, wq.input_index)] = scale
        return weight_scale

    def bias_dqs(self, weight_scale: dict) -> None:
        for bq in self.in_node_order(self.plan.biases):
            node = planned_node(self.by_name, bq.node)
            check_bias(node, bq, self.inits, self.plan, weight_scale)
            scale = np.asarray(bq.scale, np.float32).reshape(-1)
            zeros = np.zeros(len(scale), np.int32)
            codes = np.asarray(bq.q).astype(np.int32)
            node.input[bq.input_index] = self.initializer_dq(node, bq, "b", codes, scale, zeros, 0 if len(scale) > 1 else None)
            self.replaced.add(bq.tensor)

    def initializer_dq(self, node: onnx.NodeProto, item: WeightQuant | BiasQuant, kind: str, codes: np.ndarray,
                       scale: np.ndarray, zero: np.ndarray, axis: int | None) -> str:
        """Codes, scale and zero point as initializers and a DQ in front of ``node``; the DQ output.

        ``kind`` "w" or "b" names them (ptq_w_*, ptq_ws_*, ptq_wz_*, ptq_wdq_*, ptq_WDQ_*); ``axis``
        None writes scalar params (per layer)."""
        codes_name = self.fresh(f"{PREFIX}{kind}_{item.tensor}")
        sname = self.fresh(f"{PREFIX}{kind}s_{item.tensor}")
        zname = self.fresh(f"{PREFIX}{kind}z_{item.tensor}")
        dq_out = self.fresh(f"{PREFIX}{kind}dq_{item.tensor}")
        per_channel = axis is not None
        self.new_inits.append(numpy_helper.from_array(codes, codes_name))
        self.new_inits.append(numpy_helper.from_array(scale if per_channel else np.asarray(scale[0]), sname))
        self.new_inits.append(numpy_helper.from_array(zero if per_channel else np.asarray(zero[0]), zname))
        attrs = {"axis": axis} if per_channel else {}
        self.before[self.node_index[id(node)]].append(helper.make_node(
            "DequantizeLinear", [codes_name, sname, zname], [dq_out], name=self.fresh(f"{PREFIX}{kind.upper()}DQ_{item.tensor}"),
            **attrs))
        return dq_out

    # ---- the new graph -----------------------------------------------------------------------
    def assemble(self) -> None:
        """Rewire readers to the DQ outputs, put the new nodes in place, drop replaced initializers."""
        graph = self.graph
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name in self.rename:
                    node.input[i] = self.rename[name]
        ordered = list(self.front)
        for k, node in enumerate(self.nodes):
            ordered.extend(self.before.get(k, []))
            ordered.append(node)
            ordered.extend(self.after.get(k, []))
        del graph.node[:]
        graph.node.extend(ordered)

        still_used = {name for n in graph.node for name in n.input} | self.graph_outputs | subgraph_inputs(graph)
        keep = [t for t in graph.initializer if t.name not in self.replaced or t.name in still_used]
        dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
        del graph.initializer[:]
        graph.initializer.extend(keep)
        graph.initializer.extend(self.new_inits)
        if dropped:
            kept_inputs = [i for i in graph.input if i.name not in dropped]
            del graph.input[:]
            graph.input.extend(kept_inputs)


def _input_rank(graph: onnx.GraphProto, name: str) -> int:
    for k, i in enumerate(graph.input):
        if i.name == name:
            return k
    return len(graph.input)


def _fence_float_nodes(graph: onnx.GraphProto, region: set[str], inits: dict, fresh) -> None:
    """Keep nodes left out of the int8 region really in FP32.

    onnxruntime's CPU optimizer moves DequantizeLinear forward across data-movement ops and then
    quantizes the float weight of a Conv/Gemm/MatMul that it finds between a DQ and a Q
    (WeightBiasQuantization), so a skipped node next to int8 neighbours would silently run in
    int8. A single-input ``Sum`` (an identity that no optimizer removes or propagates through)
    in front of such a node stops that; it costs one copy of the tensor.
    """
    producer = producers(graph.node)

    def reaches_dq(name: str) -> bool:
        seen = 0
        while name in producer and seen < 64:
            node = producer[name]
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in ORT_QDQ_TRANSPARENT_OPS or not node.input:
                return False
            name, seen = node.input[0], seen + 1
        return False

    ordered = []
    for node in graph.node:
        if (node.op_type in COMPUTE_OPS and node.name not in region
                and any(name in inits for name in node.input[1:2]) and node.input and reaches_dq(node.input[0])):
            fenced = fresh("ptq_fence_" + node.input[0])
            ordered.append(helper.make_node("Sum", [node.input[0]], [fenced], name=fresh("ptq_fence_" + node.name)))
            node.input[0] = fenced
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


def _constant_scalar(inits: dict, name: str):
    if not name or name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def _fold_clamps(nodes: list, acts: dict, inits: dict, pinned: set[str]) -> list:
    """Drop a Relu/Clip whose input and output carry the same params when the Q alone reproduces it.

    With zero point = qmin (Relu), or a representable range inside [min, max] (Clip), quantizing the
    clamp's input gives exactly the clamp's quantized output, so the producer writes the clamp's
    output tensor directly and the pair on the input goes away (onnxruntime's quantizer removes such
    activations too; leaving them costs a DQ->Q requantization wherever the tensor fans out).
    Only done when the input has this single reader, is no graph output, and comes from a node.
    """
    readers = collections.Counter(name for n in nodes for name in n.input if name)
    producer = producers(nodes)
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type not in REMOVABLE_ACTIVATIONS or not node.input or not node.output:
            continue
        src, dst = node.input[0], node.output[0]
        a, b = acts.get(src), acts.get(dst)
        if a is None or b is None or (np.float32(a.scale), a.zero_point, a.dtype) != (np.float32(b.scale), b.zero_point, b.dtype):
            continue
        if readers[src] != 1 or src in pinned or src not in producer:
            continue
        if not _clamp_reproduced(node, b, inits):
            continue
        p = producer[src]
        p.output[list(p.output).index(src)] = dst
        producer[dst] = p
        del acts[src]
        dropped.add(id(node))
    return [n for n in nodes if id(n) not in dropped]


def _clamp_reproduced(node: onnx.NodeProto, b, inits: dict) -> bool:
    """Whether quantizing with the clamp output's params ``b`` clamps exactly as ``node`` does."""
    _, _, qmin, qmax = QUANT_DTYPES[b.dtype]
    scale = float(np.float32(b.scale))
    lo, hi = (qmin - b.zero_point) * scale, (qmax - b.zero_point) * scale
    if node.op_type == "Relu":
        return b.zero_point == qmin
    bounds = [_constant_scalar(inits, name) if len(node.input) > k and node.input[k] else None
              for k, name in ((1, node.input[1] if len(node.input) > 1 else ""), (2, node.input[2] if len(node.input) > 2 else ""))]
    if any(len(node.input) > k and node.input[k] and v is None for k, v in zip((1, 2), bounds)):
        return False  # non-constant bound
    c_lo = -np.inf if bounds[0] is None else bounds[0]
    c_hi = np.inf if bounds[1] is None else bounds[1]
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    return lo >= c_lo - tol and hi <= c_hi + tol
