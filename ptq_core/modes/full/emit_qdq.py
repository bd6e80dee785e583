"""The QDQ emitter: one ``FullQuantPlan`` -> one ONNX model that plain onnxruntime runs in int8.

``emit_qdq`` writes QuantizeLinear -> DequantizeLinear pairs for the planned activations, integer
weights and int32 biases behind DequantizeLinear, and nothing else: model inputs and outputs stay
float and keep their names (a quantized graph output becomes the DQ output; its producer writes a
renamed ``ptq_f_*`` tensor). Placement follows onnxruntime's QDQ conventions so its graph optimizer
fuses DQ->Conv->Q into QLinearConv, DQ->MatMul(->Q) into QLinearMatMul / MatMulIntegerToFloat,
DQ->Gemm into QGemm, and runs same-scale ops (MaxPool, Reshape, ...) directly on int8. A Relu/Clip
whose input and output carry the same params and that the Q reproduces exactly is folded away,
as onnxruntime's own QDQ quantizer does.

``place_qdq`` decides *where* Q/DQ pairs go for a target (which nodes join the int8 region,
which tensors get params and which tensors must share params); ``fused_ops`` proves what
onnxruntime made of an emitted model; ``check_target_rules`` audits an emitted model against a
target's rules.
"""

from __future__ import annotations

import collections
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.errors import ModelError, PtqError
from ptq_core.modes.full.plan import (
    ActivationQuant,
    BiasQuant,
    FullQuantPlan,
    WeightQuant,
)
from ptq_core.modes.full.targets import COMPUTE_OPS, TARGETS, Target
from ptq_core.modes.weight.emit import MIN_OPSET, PRODUCER, _unique
from ptq_core.onnxgraph.cpu import get_form
from ptq_core.onnxgraph.graph import (  # noqa: F401  (assign_node_names, set_metadata, upgrade_opset re-exported)
    all_names,
    assign_node_names,
    default_opset,
    node_bodies,
    set_metadata,
    upgrade_opset,
)

PREFIX = "ptq_"
_DTYPES = {"int8": (np.int8, onnx.TensorProto.INT8, -128, 127), "uint8": (np.uint8, onnx.TensorProto.UINT8, 0, 255)}
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


# ---------------------------------------------------------------------------------------------
# opset
# ---------------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------------------------

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


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_scalar(inits: dict, name: str):
    if not name or name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    return float(a.reshape(-1)[0]) if a.size == 1 else None


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
    allowed = target.int8_ops if op_types is None else (target.int8_ops & frozenset(op_types))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in inits]
    graph_outputs = {o.name for o in graph.output}
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.output:
            if name:
                producer[name] = node
        for name in node.input:
            if name:
                consumers[name].append(node)
    if any(not n.name for n in graph.node):
        raise ModelError("place_qdq needs named nodes (run graph.assign_node_names first)")
    skip = set(skip)
    users = collections.Counter(name for n in graph.node for name in n.input if name)

    def is_float_const(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type in _FLOAT_TYPES

    def is_fp32_const(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type == onnx.TensorProto.FLOAT

    def activation_inputs(node: onnx.NodeProto) -> list[str]:
        """Float, non-constant data inputs (by op: skip shape/axes/index inputs)."""
        idx = {"Reshape": [0], "Squeeze": [0], "Unsqueeze": [0], "Slice": [0], "Clip": [0],
               "Conv": [0], "ConvTranspose": [0], "Gemm": [0, 1], "MatMul": [0, 1]}.get(node.op_type)
        names = [node.input[i] for i in (idx if idx is not None else range(len(node.input))) if i < len(node.input)]
        return [n for n in names if n and n not in inits]

    kept: dict[str, str] = {}
    region: set[str] = set()
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        if node.name in skip:
            kept[node.name] = "skip_quant_node"
            continue
        if node.op_type not in allowed:
            kept[node.name] = f"{target.name} does not run {node.op_type} in int8"
            continue
        reason = _compute_reason(node, target, inits, users, is_fp32_const)
        if reason:
            kept[node.name] = reason
            continue
        region.add(node.name)

    def outputs_quantized(node: onnx.NodeProto, tensors: set[str]) -> None:
        op = node.op_type
        always = op in target.quantize_outputs_of or op in target.same_scale_ops or op in target.removable_activations
        out = node.output[0] if node.output else ""  # region ops have one float output
        if out and (always or any(c.name in region for c in consumers.get(out, []))):
            tensors.add(out)

    def in_region(name: str, tensors: set[str]) -> bool:
        """Already quantized, or written by a region node: joining costs no new pair on this input."""
        p = producer.get(name)
        return name in tensors or (p is not None and p.name in region)

    def add_node_tensors(node: onnx.NodeProto, tensors: set[str]) -> None:
        tensors.update(activation_inputs(node))
        outputs_quantized(node, tensors)
        for name in activation_inputs(node):  # a region producer's output now has an int8 reader
            p = producer.get(name)
            if p is not None and p.name in region:
                outputs_quantized(p, tensors)

    tensors: set[str] = set()
    for node in graph.node:
        if node.name in region:
            add_node_tensors(node, tensors)
    changed = True
    while changed:  # a pass in graph order settles chains; repeat for joins that enable earlier ones
        changed = False
        for node in graph.node:
            if node.name in region or node.name in skip or node.op_type not in allowed:
                continue
            op = node.op_type
            ins = activation_inputs(node)
            if not ins or len([o for o in node.output if o]) != 1 or not node.output[0]:
                continue  # e.g. MaxPool with its int64 Indices output in use
            join = False
            if op in target.same_scale_ops:
                p = producer.get(ins[0])
                join = ins[0] in tensors or (node.output[0] in tensors and p is not None and p.name in region)
            elif op in target.removable_activations:
                p = producer.get(ins[0])
                join = (ins[0] in tensors or (p is not None and p.name in region)) and _clip_ok(node, inits)
            elif op in target.requant_ops:
                consts = [n for n in node.input if n in inits and is_float_const(n)]
                join = not consts and all(in_region(n, tensors) for n in ins)
            if join:
                region.add(node.name)
                add_node_tensors(node, tensors)
                changed = True

    # sharing: union-find in graph order, roots chosen explicitly
    parent: dict[str, str] = {}
    pinned = graph_outputs | _subgraph_inputs(graph)

    def find(t: str) -> str:
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    for node in graph.node:
        if node.name not in region:
            continue
        op = node.op_type
        ins = activation_inputs(node)
        out = node.output[0] if node.output else ""
        if not ins or out not in tensors or ins[0] not in tensors:
            continue
        if op in target.same_scale_ops:
            parent[out] = find(ins[0])
        elif op in target.removable_activations:
            src = ins[0]
            p = producer.get(src)
            private = (users[src] == 1 and src not in pinned and p is not None and p.name in region
                       and (p.op_type in target.compute_ops or p.op_type in target.requant_ops)
                       and find(src) == src)
            if private:
                parent[src] = out

    order = [n for n in graph_inputs if n in tensors]
    order += [o for n in graph.node for o in n.output if o in tensors and o not in order]
    return QdqPlacement(
        target=target.name,
        nodes=tuple(n.name for n in graph.node if n.name in region),
        tensors=tuple(order),
        source={t: find(t) for t in order},
        kept_float=kept,
    )


def _compute_reason(node, target: Target, inits, users, is_float_const) -> str:
    op = node.op_type
    attrs = _attrs(node)
    if op in ("Conv", "ConvTranspose"):
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
    bias_index = _BIAS_INPUT.get(op)
    if bias_index is not None and len(node.input) > bias_index and node.input[bias_index]:
        if node.input[bias_index] not in inits:
            return "bias is not a constant"
    return ""


def _clip_ok(node: onnx.NodeProto, inits) -> bool:
    """Clip joins only with constant (or absent) bounds."""
    if node.op_type != "Clip":
        return True
    return all((not name) or name in inits for name in node.input[1:3])


# ---------------------------------------------------------------------------------------------
# emitter
# ---------------------------------------------------------------------------------------------

def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    used: set[str] = set()
    for node in graph.node:
        for _, sub in node_bodies(node):
            for n in sub.node:
                used.update(n.input)
            used |= _subgraph_inputs(sub)
            used.update(o.name for o in sub.output)
    return used


def _check_activation(t: str, aq: ActivationQuant) -> None:
    if aq.tensor != t:
        raise PtqError(f"plan: activations[{t!r}] describes tensor {aq.tensor!r}")
    if aq.dtype not in _DTYPES:
        raise PtqError(f"plan: activation {t!r} has dtype {aq.dtype!r}; allowed: int8, uint8")
    _, _, lo, hi = _DTYPES[aq.dtype]
    if not (np.isfinite(aq.scale) and aq.scale > 0):
        raise PtqError(f"plan: activation {t!r} has scale {aq.scale!r}; it must be finite and > 0")
    if not lo <= int(aq.zero_point) <= hi:
        raise PtqError(f"plan: activation {t!r} has zero point {aq.zero_point} outside the {aq.dtype} range [{lo}, {hi}]")


def emit_qdq(model: onnx.ModelProto, plan: FullQuantPlan) -> onnx.ModelProto:
    """Return a new QDQ model for ``plan``; ``model`` is not modified.

    Same plan -> byte-identical model (everything is emitted in graph order, never in dict order).
    New names start with ``ptq_`` and never collide with existing ones.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = upgrade_opset(out)
    graph = out.graph
    nodes = list(graph.node)
    by_name = {n.name: n for n in nodes if n.name}
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    producer: dict[str, onnx.NodeProto] = {}
    for node in nodes:
        for name in node.output:
            if name:
                producer[name] = node
    for name in plan.nodes:
        if name not in by_name:
            raise PtqError(f"plan: node {name!r} is not in the model")

    # ---- activations -------------------------------------------------------------------------
    for t, aq in plan.activations.items():
        _check_activation(t, aq)
        if t not in producer and t not in graph_inputs and t not in inits:
            raise PtqError(f"plan: activation tensor {t!r} is not produced by any node, nor a graph input")
        p = producer.get(t)
        if p is not None and p.op_type == "DequantizeLinear":
            raise PtqError(f"plan: tensor {t!r} is already the output of a DequantizeLinear ({p.name}); the model is already quantized")
    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.input and node.input[0] in plan.activations:
            raise PtqError(f"plan: tensor {node.input[0]!r} already feeds QuantizeLinear {node.name!r}; it would be quantized twice")

    acts = dict(plan.activations)
    taken = all_names(graph)
    nodes = _fold_clamps(nodes, acts, inits, graph_outputs | _subgraph_inputs(graph))
    producer = {name: node for node in nodes for name in node.output if name}

    def fresh(base: str) -> str:
        return _unique(base, taken)

    # graph position of each tensor: graph inputs / initializers first, then node outputs
    position: dict[str, int] = {}
    for i in graph.input:
        position.setdefault(i.name, -1)
    for t in graph.initializer:
        position.setdefault(t.name, -1)
    for k, node in enumerate(nodes):
        for name in node.output:
            position.setdefault(name, k)
    node_index = {id(n): k for k, n in enumerate(nodes)}
    act_order = sorted(acts, key=lambda t: (position.get(t, -1), _input_rank(graph, t), t))

    new_inits: list[onnx.TensorProto] = []
    front: list[onnx.NodeProto] = []
    after: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)
    rename: dict[str, str] = {}  # tensor -> name its readers use now
    shared_params: dict[tuple, tuple[str, str]] = {}
    for t in act_order:
        aq = acts[t]
        np_dtype = _DTYPES[aq.dtype][0]
        # tensors with equal params share one scale/zero-point pair of initializers (fewer tensors,
        # and onnxruntime then recognizes the DQ->Q pairs it can drop around fan-outs)
        key = (np.float32(aq.scale).tobytes(), int(aq.zero_point), aq.dtype)
        if key not in shared_params:
            scale = fresh(f"{PREFIX}s_{t}")
            zp = fresh(f"{PREFIX}z_{t}")
            new_inits.append(numpy_helper.from_array(np.array(aq.scale, np.float32), scale))
            new_inits.append(numpy_helper.from_array(np.array(aq.zero_point, np_dtype), zp))
            shared_params[key] = (scale, zp)
        scale, zp = shared_params[key]
        q_out = fresh(f"{PREFIX}q_{t}")
        p = producer.get(t)
        if t in graph_outputs and p is not None:
            # the graph output keeps its name: it becomes the DQ output, the producer writes a new name
            q_in = fresh(f"{PREFIX}f_{t}")
            p.output[list(p.output).index(t)] = q_in
            dq_out = t
        else:
            q_in, dq_out = t, fresh(f"{PREFIX}dq_{t}")
            rename[t] = dq_out
        pair = [
            helper.make_node("QuantizeLinear", [q_in, scale, zp], [q_out], name=fresh(f"{PREFIX}Q_{t}")),
            helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out], name=fresh(f"{PREFIX}DQ_{t}")),
        ]
        if p is None:
            front.extend(pair)
        else:
            after[node_index[id(p)]].extend(pair)

    # ---- weights and biases ------------------------------------------------------------------
    before: dict[int, list[onnx.NodeProto]] = collections.defaultdict(list)
    replaced: set[str] = set()
    emitted_weights: dict[tuple, str] = {}
    weight_scale: dict[tuple[str, int], np.ndarray] = {}
    for wq in sorted(plan.weights, key=lambda w: (node_index[id(_node(by_name, w.node))], w.input_index)):
        node = _node(by_name, wq.node)
        _check_weight(node, wq, inits)
        _check_form(wq, plan)
        q = np.asarray(wq.q)
        scale = np.asarray(wq.scale, np.float32).reshape(-1)
        zero = np.asarray(wq.zero_point).reshape(-1).astype(q.dtype)
        per_channel = len(scale) > 1
        key = (wq.tensor, q.dtype.str, q.tobytes(), scale.tobytes(), zero.tobytes(), wq.axis if per_channel else None)
        if key not in emitted_weights:
            codes = fresh(f"{PREFIX}w_{wq.tensor}")
            sname = fresh(f"{PREFIX}ws_{wq.tensor}")
            zname = fresh(f"{PREFIX}wz_{wq.tensor}")
            dq_out = fresh(f"{PREFIX}wdq_{wq.tensor}")
            new_inits.append(numpy_helper.from_array(q, codes))
            new_inits.append(numpy_helper.from_array(scale if per_channel else np.asarray(scale[0]), sname))
            new_inits.append(numpy_helper.from_array(zero if per_channel else np.asarray(zero[0]), zname))
            attrs = {"axis": int(wq.axis)} if per_channel else {}
            before[node_index[id(node)]].append(helper.make_node(
                "DequantizeLinear", [codes, sname, zname], [dq_out], name=fresh(f"{PREFIX}WDQ_{wq.tensor}"), **attrs))
            emitted_weights[key] = dq_out
        node.input[wq.input_index] = emitted_weights[key]
        replaced.add(wq.tensor)
        weight_scale[(wq.node, wq.input_index)] = scale

    for bq in sorted(plan.biases, key=lambda b: (node_index[id(_node(by_name, b.node))], b.input_index)):
        node = _node(by_name, bq.node)
        _check_bias(node, bq, inits, plan, weight_scale)
        scale = np.asarray(bq.scale, np.float32).reshape(-1)
        per_channel = len(scale) > 1
        codes = fresh(f"{PREFIX}b_{bq.tensor}")
        sname = fresh(f"{PREFIX}bs_{bq.tensor}")
        zname = fresh(f"{PREFIX}bz_{bq.tensor}")
        dq_out = fresh(f"{PREFIX}bdq_{bq.tensor}")
        new_inits.append(numpy_helper.from_array(np.asarray(bq.q).astype(np.int32), codes))
        zeros = np.zeros(len(scale), np.int32)
        new_inits.append(numpy_helper.from_array(scale if per_channel else np.asarray(scale[0]), sname))
        new_inits.append(numpy_helper.from_array(zeros if per_channel else np.asarray(zeros[0]), zname))
        attrs = {"axis": 0} if per_channel else {}
        before[node_index[id(node)]].append(helper.make_node(
            "DequantizeLinear", [codes, sname, zname], [dq_out], name=fresh(f"{PREFIX}BDQ_{bq.tensor}"), **attrs))
        node.input[bq.input_index] = dq_out
        replaced.add(bq.tensor)

    # ---- rewire readers of quantized tensors to the DQ outputs ---------------------------------
    for node in nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]

    ordered = list(front)
    for k, node in enumerate(nodes):
        ordered.extend(before.get(k, []))
        ordered.append(node)
        ordered.extend(after.get(k, []))
    del graph.node[:]
    graph.node.extend(ordered)

    still_used = {name for n in graph.node for name in n.input} | graph_outputs | _subgraph_inputs(graph)
    keep = [t for t in graph.initializer if t.name not in replaced or t.name in still_used]
    dropped = {t.name for t in graph.initializer} - {t.name for t in keep}
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.initializer.extend(new_inits)
    if dropped:
        kept_inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(kept_inputs)
    _fence_float_nodes(graph, set(plan.nodes), inits, fresh)
    present = {name for n in graph.node for name in n.output}
    kept_vi = [v for v in graph.value_info if v.name in present]
    if len(kept_vi) != len(graph.value_info):  # tensors of folded clamps, dropped initializers
        del graph.value_info[:]
        graph.value_info.extend(kept_vi)
    out.producer_name = PRODUCER
    out.producer_version = __import__("ptq_core").__version__
    form = plan_form(plan)
    if form is not None and plan.weights:
        set_metadata(out, form.metadata())
    return out


def plan_form(plan: FullQuantPlan):
    """The int8 form a plan's weights must follow: its own, or the portable one for a target that
    onnxruntime's CPU kernels run (a hand-written plan); None for other targets."""
    target = TARGETS.get(plan.target)
    if target is None or not target.ort_cpu_kernels:
        return None
    return get_form(plan.int8_form)


def _check_form(wq: WeightQuant, plan: FullQuantPlan) -> None:
    """Refuse int8 codes that onnxruntime's non-VNNI kernels would saturate on (ptq_core.onnxgraph.cpu)."""
    form = plan_form(plan)
    q = np.asarray(wq.q)
    if form is None or form.weight_limit is None or q.dtype != np.int8 or not q.size:
        return
    lo, hi = int(q.min()), int(q.max())
    if max(-lo, hi) > form.weight_limit:
        raise PtqError(f"plan: weight {wq.tensor!r} of node {wq.node!r} has int8 codes in [{lo}, {hi}]; the "
                       f"{form.name} int8 form allows [-{form.weight_limit}, {form.weight_limit}] (larger codes are "
                       f"wrong on x86 CPUs without VNNI); set [ptqflow] int8_form=vnni to write them anyway")


# ops onnxruntime's QDQ propagation moves a DequantizeLinear across (forward) or a Q across (backward)
_TRANSPARENT = frozenset(("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Relu",
                          "Clip", "Resize", "Gather", "Split", "Expand"))


def _fence_float_nodes(graph: onnx.GraphProto, region: set[str], inits: dict, fresh) -> None:
    """Keep nodes left out of the int8 region really in FP32.

    onnxruntime's CPU optimizer moves DequantizeLinear forward across data-movement ops and then
    quantizes the float weight of a Conv/Gemm/MatMul that it finds between a DQ and a Q
    (WeightBiasQuantization), so a skipped node next to int8 neighbours would silently run in
    int8. A single-input ``Sum`` (an identity that no optimizer removes or propagates through)
    in front of such a node stops that; it costs one copy of the tensor.
    """
    producer = {name: node for node in graph.node for name in node.output if name}

    def reaches_dq(name: str) -> bool:
        seen = 0
        while name in producer and seen < 64:
            node = producer[name]
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type not in _TRANSPARENT or not node.input:
                return False
            name, seen = node.input[0], seen + 1
        return False

    ordered = []
    for node in graph.node:
        if (node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and node.name not in region
                and any(name in inits for name in node.input[1:2]) and node.input and reaches_dq(node.input[0])):
            fenced = fresh("ptq_fence_" + node.input[0])
            ordered.append(helper.make_node("Sum", [node.input[0]], [fenced], name=fresh("ptq_fence_" + node.name)))
            node.input[0] = fenced
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)


def _fold_clamps(nodes: list, acts: dict, inits: dict, pinned: set[str]) -> list:
    """Drop a Relu/Clip whose input and output carry the same params when the Q alone reproduces it.

    With zero point = qmin (Relu), or a representable range inside [min, max] (Clip), quantizing the
    clamp's input gives exactly the clamp's quantized output, so the producer writes the clamp's
    output tensor directly and the pair on the input goes away (onnxruntime's quantizer removes such
    activations too; leaving them costs a DQ->Q requantization wherever the tensor fans out).
    Only done when the input has this single reader, is no graph output, and comes from a node.
    """
    readers = collections.Counter(name for n in nodes for name in n.input if name)
    producer = {name: n for n in nodes for name in n.output if name}
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type not in ("Relu", "Clip") or not node.input or not node.output:
            continue
        src, dst = node.input[0], node.output[0]
        a, b = acts.get(src), acts.get(dst)
        if a is None or b is None or (np.float32(a.scale), a.zero_point, a.dtype) != (np.float32(b.scale), b.zero_point, b.dtype):
            continue
        if readers[src] != 1 or src in pinned or src not in producer:
            continue
        _, _, qmin, qmax = _DTYPES[b.dtype]
        scale = float(np.float32(b.scale))
        lo, hi = (qmin - b.zero_point) * scale, (qmax - b.zero_point) * scale
        if node.op_type == "Relu":
            exact = b.zero_point == qmin
        else:
            bounds = [_constant_scalar(inits, name) if len(node.input) > k and node.input[k] else None
                      for k, name in ((1, node.input[1] if len(node.input) > 1 else ""), (2, node.input[2] if len(node.input) > 2 else ""))]
            if any(len(node.input) > k and node.input[k] and v is None for k, v in zip((1, 2), bounds)):
                continue  # non-constant bound
            c_lo = -np.inf if bounds[0] is None else bounds[0]
            c_hi = np.inf if bounds[1] is None else bounds[1]
            tol = 1e-6 * max(1.0, abs(lo), abs(hi))
            exact = lo >= c_lo - tol and hi <= c_hi + tol
        if not exact:
            continue
        p = producer[src]
        p.output[list(p.output).index(src)] = dst
        producer[dst] = p
        del acts[src]
        dropped.add(id(node))
    return [n for n in nodes if id(n) not in dropped]


def _input_rank(graph: onnx.GraphProto, name: str) -> int:
    for k, i in enumerate(graph.input):
        if i.name == name:
            return k
    return len(graph.input)


def _node(by_name: dict, name: str) -> onnx.NodeProto:
    node = by_name.get(name)
    if node is None:
        raise PtqError(f"plan: node {name!r} is not in the model")
    return node


def _check_weight(node: onnx.NodeProto, wq: WeightQuant, inits: dict) -> None:
    where = f"plan: weight {wq.tensor!r} of node {wq.node!r}"
    if wq.input_index >= len(node.input) or node.input[wq.input_index] != wq.tensor:
        raise PtqError(f"{where}: input {wq.input_index} of the node is not {wq.tensor!r}")
    init = inits.get(wq.tensor)
    if init is None:
        raise PtqError(f"{where}: not an initializer of the model")
    if init.data_type != onnx.TensorProto.FLOAT:
        raise PtqError(f"{where}: the weight is {onnx.TensorProto.DataType.Name(init.data_type)}; only float32 weights are quantized")
    q = np.asarray(wq.q)
    if q.dtype not in (np.int8, np.uint8):
        raise PtqError(f"{where}: codes have dtype {q.dtype}; allowed: int8, uint8")
    shape = tuple(int(d) for d in init.dims)
    if q.shape != shape:
        raise PtqError(f"{where}: codes have shape {q.shape}, the weight has {shape}")
    scale = np.asarray(wq.scale).reshape(-1)
    zero = np.asarray(wq.zero_point).reshape(-1)
    if len(zero) != len(scale):
        raise PtqError(f"{where}: {len(scale)} scales but {len(zero)} zero points")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise PtqError(f"{where}: scales must be finite and > 0")
    info = np.iinfo(q.dtype)
    if np.any(zero < info.min) or np.any(zero > info.max):
        raise PtqError(f"{where}: zero points outside the {q.dtype} range")
    if len(scale) > 1:
        if wq.axis is None or not -len(shape) <= wq.axis < len(shape):
            raise PtqError(f"{where}: {len(scale)} scales need a valid channel axis, got {wq.axis!r}")
        if shape[wq.axis] != len(scale):
            raise PtqError(f"{where}: {len(scale)} scales for axis {wq.axis} of size {shape[wq.axis]}")


def _check_bias(node, bq: BiasQuant, inits: dict, plan: FullQuantPlan, weight_scale: dict) -> None:
    where = f"plan: bias {bq.tensor!r} of node {bq.node!r}"
    if bq.input_index >= len(node.input) or node.input[bq.input_index] != bq.tensor:
        raise PtqError(f"{where}: input {bq.input_index} of the node is not {bq.tensor!r}")
    init = inits.get(bq.tensor)
    if init is None:
        raise PtqError(f"{where}: not an initializer of the model")
    q = np.asarray(bq.q)
    shape = tuple(int(d) for d in init.dims)
    if q.shape != shape or len(shape) != 1:
        raise PtqError(f"{where}: codes have shape {q.shape}, the bias has {shape}")
    if q.dtype != np.int32:
        raise PtqError(f"{where}: codes have dtype {q.dtype}; a bias is int32")
    scale = np.asarray(bq.scale, np.float64).reshape(-1)
    if len(scale) not in (1, shape[0]):
        raise PtqError(f"{where}: {len(scale)} scales for {shape[0]} channels")
    # onnxruntime's fused kernels ignore the bias DQ's scale and use s_in * s_w: they must agree
    act = plan.activations.get(node.input[0])
    ws = weight_scale.get((bq.node, 1))
    if act is not None and ws is not None:
        expected = np.float64(np.float32(act.scale)) * ws.astype(np.float64)
        if len(expected) != len(scale) and len(scale) != 1 and len(expected) != 1:
            raise PtqError(f"{where}: {len(scale)} bias scales but {len(expected)} weight scales")
        if not np.allclose(scale, expected, rtol=1e-5, atol=0):
            raise PtqError(f"{where}: scale must equal input scale x weight scale (onnxruntime's integer kernels assume it)")


# ---------------------------------------------------------------------------------------------
# what onnxruntime made of it
# ---------------------------------------------------------------------------------------------

def optimized_model(model, level: str = "extended") -> onnx.ModelProto:
    """The graph onnxruntime (CPU EP) runs after its optimizer, loaded back from
    ``SessionOptions.optimized_model_filepath``.

    ``level``: "basic", "extended" (default; all QDQ fusions happen here) or "all" (adds layout
    transforms: NCHWc/NHWC contrib ops, hardware specific). Saving at "all" can fail on some builds
    (compiled or NCHWc nodes); then the extended graph is returned instead.
    """
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else bytes(model)
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if level not in levels:
        raise PtqError(f"optimization level {level!r}; allowed: {', '.join(levels)}")
    tries = [level] if level != "all" else ["all", "extended"]
    last: Exception | None = None
    for lv in tries:
        with tempfile.TemporaryDirectory(prefix="ptq-ort-") as tmp:
            path = os.path.join(tmp, "optimized.onnx")
            so = ort.SessionOptions()
            so.graph_optimization_level = levels[lv]
            so.optimized_model_filepath = path
            # big initializers go to a side file that is never read back: only the graph matters here
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            try:
                ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
                return onnx.load(path, load_external_data=False)
            except Exception as exc:  # saving the optimized graph failed at this level
                last = exc
    raise PtqError(f"onnxruntime could not optimize the model: {str(last).splitlines()[0] if last else '?'}")


def fused_ops(model_bytes, level: str = "extended") -> collections.Counter:
    """Op types in onnxruntime's optimized graph (CPU EP): QLinearConv, QLinearMatMul,
    MatMulIntegerToFloat, QGemm, QLinearAdd, ... prove that integer kernels run."""
    return collections.Counter(n.op_type for n in optimized_model(model_bytes, level).graph.node)


def float_paths(optimized: onnx.ModelProto, op_types=COMPUTE_OPS) -> list[str]:
    """Nodes of ``op_types`` that still read a DequantizeLinear output after optimization: a quantized
    node that onnxruntime did not fuse and runs in float."""
    produced_by_dq = {o for n in optimized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sorted(f"{n.name} ({n.op_type})" for n in optimized.graph.node
                  if n.op_type in op_types and any(i in produced_by_dq for i in n.input))


# ---------------------------------------------------------------------------------------------
# audit
# ---------------------------------------------------------------------------------------------

def check_target_rules(model: onnx.ModelProto, target: Target) -> list[str]:
    """Inspect an emitted QDQ model and list every way it breaks ``target``'s rules (empty = fine).

    Checked: opset >= 13; activation dtype and symmetry (zero point 0) on every Q/DQ pair; weight
    dtype, symmetry, code range, per-channel only on the target's per-channel ops and along the
    expected axis; int32 bias with zero point 0, axis 0, scale = s_in * s_w, and only where the
    target quantizes biases; weighted nodes only of the target's compute ops; no tensor quantized
    twice; no Q/DQ island (a pair with neither an int8 producer nor an int8 consumer).
    """
    problems: list[str] = []
    graph = model.graph
    try:
        opset = default_opset(model)
    except PtqError:
        opset = 0
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: per-channel DequantizeLinear (axis) is not defined")
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = collections.defaultdict(list)
    for n in graph.node:
        for i, name in enumerate(n.input):
            consumers[name].append((n, i))
    act_np = _DTYPES[target.activation_dtype][0]
    w_lo_hi = {pc: target.weight_qrange(pc) for pc in (True, False)}

    def arr(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    dq_scale: dict[str, np.ndarray] = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) >= 2 and n.input[1] in inits:
            dq_scale[n.output[0]] = arr(n.input[1]).reshape(-1).astype(np.float64)

    quantized_inputs = collections.Counter()
    for n in graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        src = n.input[0]
        quantized_inputs[src] += 1
        p = producer.get(src)
        if p is not None and p.op_type == "DequantizeLinear":
            problems.append(f"tensor {src!r} is quantized twice ({p.name} -> {n.name})")
        zp = arr(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        dtype = zp.dtype if zp is not None else np.dtype(np.uint8)
        if dtype != np.dtype(act_np):
            problems.append(f"{n.name}: activation {src!r} is {dtype} but {target.name} wants {target.activation_dtype}")
        if target.activation_symmetric and zp is not None and np.any(zp != 0):
            problems.append(f"{n.name}: activation {src!r} has zero point {zp.reshape(-1).tolist()} but {target.name} is symmetric (zero point 0)")
        scale = arr(n.input[1])
        if scale is not None and scale.size != 1:
            problems.append(f"{n.name}: activation {src!r} is not per-tensor")
    for name, count in sorted(quantized_inputs.items()):
        if count > 1:
            problems.append(f"tensor {name!r} feeds {count} QuantizeLinear nodes")

    for n in graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        codes = arr(n.input[0])
        scale = arr(n.input[1]).reshape(-1)
        zp = arr(n.input[2]).reshape(-1) if len(n.input) > 2 and n.input[2] else np.zeros(1, codes.dtype)
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
        users = consumers.get(n.output[0], [])
        if codes.dtype == np.int32:
            for user, idx in users:
                if not target.quantize_bias:
                    problems.append(f"{user.name}: bias is int32 but {target.name} keeps biases float")
                if np.any(zp != 0):
                    problems.append(f"{user.name}: bias zero point is not 0")
                if scale.size > 1 and axis != 0:
                    problems.append(f"{user.name}: per-channel bias DequantizeLinear has axis {axis}, expected 0")
                s_in = dq_scale.get(user.input[0])
                s_w = dq_scale.get(user.input[1]) if len(user.input) > 1 else None
                if s_in is not None and s_w is not None and s_in.size == 1:
                    expected = np.float64(np.float32(s_in[0])) * s_w
                    if not np.allclose(scale.astype(np.float64), expected, rtol=1e-5):
                        problems.append(f"{user.name}: bias scale differs from input scale x weight scale")
            continue
        for user, idx in users:
            where = f"{user.name} ({user.op_type}) input {idx}"
            if user.op_type not in target.compute_ops:
                problems.append(f"{where}: integer weight on an op {target.name} does not quantize")
                continue
            if codes.dtype != np.dtype(np.int8 if target.weight_dtype == "int8" else np.uint8):
                problems.append(f"{where}: weight codes are {codes.dtype}, {target.name} wants {target.weight_dtype}")
            per_channel = scale.size > 1
            if per_channel:
                expected_axis = target.weight_axis(user.op_type, idx, codes.shape, _attrs(user))
                if expected_axis is None:
                    problems.append(f"{where}: per-channel weight, but {target.name} quantizes this weight per layer")
                elif axis % codes.ndim != expected_axis:
                    problems.append(f"{where}: per-channel axis {axis}, expected {expected_axis}")
            symmetric, _ = target.weight_scheme(per_channel)
            qmin, qmax = w_lo_hi[per_channel]
            if symmetric and np.any(zp != 0):
                problems.append(f"{where}: weight zero point must be 0 ({'per-channel' if per_channel else 'per-layer'} symmetric)")
            if codes.size and (int(codes.min()) < qmin or int(codes.max()) > qmax):
                problems.append(f"{where}: weight codes span [{int(codes.min())}, {int(codes.max())}], allowed [{qmin}, {qmax}]")

    # islands: a Q/DQ pair whose producer and consumers all run in float
    int8_ops = target.int8_ops | {"QuantizeLinear", "DequantizeLinear"}
    for n in graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        dq = [c for c, _ in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
        readers = [c for d in dq for c, _ in consumers.get(d.output[0], [])]
        p = producer.get(n.input[0])
        producer_int8 = p is not None and p.op_type in int8_ops and _reads_dq(p, producer)
        reader_int8 = any(r.op_type in int8_ops for r in readers)
        if not producer_int8 and not reader_int8:
            problems.append(f"Q/DQ island on {n.input[0]!r}: neither its producer nor a reader is an int8 op of {target.name}")
    return problems


def _reads_dq(node: onnx.NodeProto, producer: dict) -> bool:
    return any((p := producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input if i)
