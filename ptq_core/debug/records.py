"""Which tensors a debug round looks at, and how the quantized model's tensors pair with the FP32 ones.

converter_lite walks the quantized graph in execution order and, for every node, prints its inputs
(in index order) then its outputs, pairing each with the FP32 model's record of the same node, the
same direction and the same index (§12.1). On ONNX the quantized graph also holds the helper nodes
the emitters add (QuantizeLinear/DequantizeLinear pairs, weight decode chains, the dynamic int8
chains); those play the part of converter_lite's QuantDTypeCast nodes and are not listed: their
values are exactly the dequantized rows of the neighbouring nodes. The rules:

- a quantized-graph node with the name of an FP32 node is reported under that name and ONNX op type;
- the dequantized value of an input is what the node consumes (the DequantizeLinear output for an
  int8 activation or weight, the decoded weight for weight quantization); of an output, the
  DequantizeLinear output that its QuantizeLinear feeds, else the output itself;
- its FP32 partner is the tensor of the same name behind the Q/DQ pair (so a Conv whose Relu the
  emitter folded is compared with the Relu's output, which is what its int8 output holds), else the
  FP32 node's tensor at the same index;
- an FP32 node the emitter replaced by a chain (DYNAMIC_QUANT's MatMulInteger) is reported under its
  own name where the chain ends, with the inputs and outputs both graphs share by name;
- TensorTypeFlag is ``Weight`` for FP32 initializers and Constant outputs, else ``Activation``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ptq_core.onnxgraph.walk import producers

_PASS_THROUGH = ("Identity", "Sum")  # the emitter's single-input fences


@dataclass(frozen=True)
class TensorRef:
    inout: str  # "Input" | "Output"
    index: int
    name: str  # printed TensorName: the FP32 name where there is one
    origin: str  # FP32 tensor to compare with ("" when unmatched)
    quant: str  # quantized-graph tensor holding the dequantized value
    kind: str  # "Weight" | "Activation"


@dataclass(frozen=True)
class NodeRecord:
    node: str
    op_type: str
    tensors: tuple[TensorRef, ...]
    quantized: bool  # runs on quantized data (int8 output, or a quantized/decoded weight)


@dataclass(frozen=True)
class DebugPlan:
    records: tuple[NodeRecord, ...]
    origin_tensors: tuple[str, ...]  # FP32 tensors a round must compute (initializers excluded)
    quant_tensors: tuple[str, ...]
    origin_outputs: tuple[str, ...]  # the FP32 model's graph outputs (output_summary.csv)


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name for t in g.initializer}
        self.constants = {o for n in g.node if n.op_type == "Constant" for o in n.output}
        self.producer = producers(g.node)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.outputs = [o.name for o in g.output]
        self.names = set(self.inits) | set(self.inputs) | set(self.producer)


def _base(t: str, q: _Graph, origin: _Graph) -> str | None:
    """Follow Q->DQ pairs and fences back to a tensor the FP32 graph also has."""
    seen = set()
    while t not in origin.names:
        if t in seen:
            return None
        seen.add(t)
        p = q.producer.get(t)
        if p is None:
            return None
        if p.op_type == "DequantizeLinear":
            src = q.producer.get(p.input[0])
            if src is None or src.op_type != "QuantizeLinear":
                return None  # DQ of an integer initializer: a weight, matched by position
            t = src.input[0]
        elif p.op_type in _PASS_THROUGH and len([i for i in p.input if i]) == 1:
            t = p.input[0]
        else:
            return None
    return t


def _dequant_of(t: str, q: _Graph) -> str:
    """The DequantizeLinear output behind ``t``'s QuantizeLinear, or ``t`` when it is not quantized."""
    for c in q.consumers.get(t, []):
        if c.op_type == "QuantizeLinear":
            for d in q.consumers.get(c.output[0], []):
                if d.op_type == "DequantizeLinear":
                    return d.output[0]
    return t


def _has_q(t: str, q: _Graph) -> bool:
    return any(c.op_type == "QuantizeLinear" for c in q.consumers.get(t, []))


def build_plan(origin: onnx.ModelProto, quant: onnx.ModelProto) -> DebugPlan:
    """Pair the records of the quantized model (execution order) with the FP32 model's."""
    o, q = _Graph(origin), _Graph(quant)
    o_nodes = {n.name: n for n in o.nodes if n.name}
    q_names = {n.name for n in q.nodes if n.name}
    o_producer_node = producers(o.nodes)
    weights = o.inits | o.constants

    def kind(name: str) -> str:
        return "Weight" if name in weights else "Activation"

    records: list[NodeRecord] = []
    emitted: set[str] = set()
    for qn in q.nodes:
        on = o_nodes.get(qn.name) if qn.name else None
        if on is not None and qn.name not in emitted:
            emitted.add(qn.name)
            refs, reads_weight, reads_dq, writes_q = [], False, False, False
            for i, t in enumerate(qn.input):
                if not t:
                    continue
                partner = _base(t, q, o) or (on.input[i] if i < len(on.input) and on.input[i] else "")
                refs.append(TensorRef("Input", i, partner or t, partner, t, kind(partner) if partner else "Activation"))
                if partner in weights and t != partner:
                    reads_weight = True  # a quantized weight (DQ of integers, or decoded)
                elif t in q.producer and q.producer[t].op_type == "DequantizeLinear":
                    reads_dq = True
            for j, t in enumerate(qn.output):
                if not t:
                    continue
                value = _dequant_of(t, q)
                writes_q = writes_q or _has_q(t, q)
                partner = _base(value, q, o) or (on.output[j] if j < len(on.output) and on.output[j] else "")
                refs.append(TensorRef("Output", j, partner or t, partner, value, "Activation"))
            # in the int8 region: int8 in and int8 out (a float node feeding the region only hosts the Q)
            quantized = reads_weight or (reads_dq and writes_q)
            records.append(NodeRecord(qn.name, qn.op_type, tuple(refs), quantized))
            continue
        # a chain node the quantizer added: report the FP32 node it replaced where the chain ends
        for t in qn.output:
            replaced = o_producer_node.get(t)
            if replaced is None or replaced.name in q_names or replaced.name in emitted:
                continue
            emitted.add(replaced.name)
            refs = [TensorRef("Input", i, t_in, t_in, t_in, kind(t_in))
                    for i, t_in in enumerate(replaced.input) if t_in and t_in in q.names]
            refs += [TensorRef("Output", j, t_out, t_out, _dequant_of(t_out, q), "Activation")
                     for j, t_out in enumerate(replaced.output) if t_out and t_out in q.names]
            records.append(NodeRecord(replaced.name, replaced.op_type, tuple(refs), True))
    origin_needed = sorted({r.origin for rec in records for r in rec.tensors
                            if r.origin and r.origin not in o.inits})
    quant_needed = sorted({r.quant for rec in records for r in rec.tensors if r.quant not in q.inits})
    return DebugPlan(tuple(records), tuple(origin_needed), tuple(quant_needed), tuple(o.outputs))
