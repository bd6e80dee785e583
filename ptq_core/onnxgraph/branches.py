"""FULL_QUANT inside ``If`` bodies: inline the branch the calibration data takes, quantize, put it back.

Activation statistics need every tensor a Q/DQ pair will sit on, and onnxruntime can only expose tensors
of the main graph. A model that keeps its whole network inside an ``If`` (silero-vad chooses its 8 kHz or
16 kHz network on an int64 ``sr`` input) would otherwise leave FULL_QUANT nothing to quantize.

1. :func:`branches_taken` evaluates the condition of each top-level ``If`` whose branches hold weight
   ops, on every calibration round (only the part of the graph that computes the condition runs).
2. Where every round takes the same branch, :func:`inline_branches` moves that branch's nodes into the
   main graph (its outputs reach the ``If``'s outputs through marked Identity nodes); the rest of the
   FULL_QUANT pipeline runs on that flat graph unchanged.
3. :func:`restore_branches` puts the quantized region back into the branch: the nodes that came from it
   and every node the quantizer added that reads from it or feeds only it. The other branch stays as it
   was (FP32): no calibration round took it, so nothing could calibrate it, and the model still serves
   every input the original did.

An ``If`` whose condition differs between rounds is left whole, and said so (docs/modes.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ptq_core.onnxgraph.walk import all_names, producers, readers, unique_name

BRANCHES = {True: "then_branch", False: "else_branch"}
OUT_MARK = "ptq_branch_out"  # name prefix of the Identity nodes that stand for a branch's outputs
WEIGHT_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class InlinedBranch:
    """One ``If`` whose taken branch now sits in the main graph."""

    node: str  # the If node's name
    branch: str  # then_branch / else_branch
    nodes: tuple[str, ...]  # the branch's node names
    weight_nodes: tuple[str, ...]  # its weight ops (Conv, MatMul, ...)


@dataclass(frozen=True)
class BranchReport:
    """What happened to each ``If`` with weights: the summary's record."""

    inlined: tuple[InlinedBranch, ...] = ()
    left_whole: tuple[str, ...] = ()  # "If_0: rounds take both branches"

    def text(self, quantized: set[str]) -> str:
        parts = []
        for b in self.inlined:
            done = sum(1 for n in b.weight_nodes if n in quantized)
            other = "else_branch" if b.branch == "then_branch" else "then_branch"
            parts.append(f"{b.node}/{b.branch}: {done} of {len(b.weight_nodes)} weight nodes int8 (every calibration "
                         f"round takes it); {b.node}/{other} stays FP32 (no round takes it)")
        parts.extend(self.left_whole)
        return "; ".join(parts)


def _weight_nodes(graph: onnx.GraphProto) -> tuple[str, ...]:
    return tuple(n.name for n in graph.node if n.op_type in WEIGHT_OP_TYPES)


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def weighted_ifs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level ``If`` nodes with a weight op directly in one of their branches."""
    return [n for n in model.graph.node if n.op_type == "If" and n.name
            and any(m.op_type in WEIGHT_OP_TYPES for b in BRANCHES.values() for m in _branch(n, b).node)]


def branches_taken(model: onnx.ModelProto, ifs: list[onnx.NodeProto], feeds_of_rounds) -> dict[str, bool | None]:
    """Per ``If``: the branch every round takes (True = then), or None where rounds differ."""
    from ptq_core.onnxgraph.session import make_session

    conds = [n.input[0] for n in ifs]
    made_by = producers(model.graph.node)
    needed, stack = {}, list(conds)
    while stack:  # the nodes the conditions depend on, and nothing else
        node = made_by.get(stack.pop())
        if node is not None and node.name not in needed:
            needed[node.name] = node
            stack.extend(node.input)
    nodes = [n for n in model.graph.node if n.name in needed]
    read = {t for n in nodes for t in n.input} | set(conds)
    part = helper.make_model(  # only what the conditions read: not a copy of every weight
        helper.make_graph(nodes, "conditions", list(model.graph.input),
                          [helper.make_tensor_value_info(c, onnx.TensorProto.BOOL, None) for c in conds],
                          initializer=[t for t in model.graph.initializer if t.name in read]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    session = make_session(part)
    needed = {i.name for i in session.get_inputs()}
    seen: dict[str, set[bool]] = {c: set() for c in conds}
    for feeds in feeds_of_rounds:
        values = session.run(conds, {k: v for k, v in feeds.items() if k in needed})
        for c, v in zip(conds, values):
            seen[c].add(bool(np.asarray(v).reshape(-1)[0]))
    return {n.name: (next(iter(seen[n.input[0]])) if len(seen[n.input[0]]) == 1 else None) for n in ifs}


def specialize(model: onnx.ModelProto, feeds_of_rounds) -> tuple[onnx.ModelProto, BranchReport]:
    """``model`` with the branch every calibration round takes inlined, for each top-level ``If`` with
    weights; ``If`` nodes whose rounds disagree stay whole. Returns the model unchanged when none applies."""
    ifs = weighted_ifs(model)
    if not ifs:
        return model, BranchReport()
    taken = branches_taken(model, ifs, feeds_of_rounds)
    left = tuple(f"{name}: calibration rounds take both branches, so both stay FP32"
                 for name, branch in taken.items() if branch is None)
    flat, inlined = inline_branches(model, {k: v for k, v in taken.items() if v is not None})
    return flat, BranchReport(inlined, left)


def inline_branches(model: onnx.ModelProto, taken: dict[str, bool]) -> tuple[onnx.ModelProto, tuple[InlinedBranch, ...]]:
    """A copy of ``model`` with the taken branch of each named ``If`` in the main graph."""
    flat = onnx.ModelProto()
    flat.CopyFrom(model)
    graph = flat.graph
    taken_names = all_names(graph)
    nodes, inlined = [], []
    for node in graph.node:
        if node.name not in taken:
            nodes.append(node)
            continue
        name = BRANCHES[taken[node.name]]
        body = _branch(node, name)
        nodes.extend(body.node)
        graph.initializer.extend(body.initializer)
        graph.value_info.extend(body.value_info)
        for out, target in zip(body.output, node.output):
            mark = unique_name(f"{OUT_MARK}_{node.name}", taken_names)
            taken_names.add(mark)
            nodes.append(helper.make_node("Identity", [out.name], [target], name=mark))
        inlined.append(InlinedBranch(node.name, name, tuple(n.name for n in body.node), _weight_nodes(body)))
    del graph.node[:]
    graph.node.extend(nodes)
    return flat, tuple(inlined)


def _region_of(quantized: onnx.ModelProto, frame: onnx.ModelProto, inlined: tuple[InlinedBranch, ...]) -> dict[str, str]:
    """Node name -> the If whose branch it belongs to, for every node of the quantized flat graph that
    goes back into a branch: the branch's own nodes, then added nodes that read from the region (in
    graph order) or feed only the region (in reverse order)."""
    owner = {n: b.node for b in inlined for n in b.nodes}
    outer = {n.name for n in frame.graph.node}
    nodes = list(quantized.graph.node)
    for node in nodes:  # the marks stand for the branch's outputs: what feeds them is the branch's
        if node.name.startswith(OUT_MARK):
            owner[node.name] = next(b.node for b in inlined if node.name.startswith(f"{OUT_MARK}_{b.node}"))
    made_by = producers(nodes)
    for node in nodes:  # reads from the region
        if node.name in owner or node.name in outer:
            continue
        sources = {owner.get(made_by[t].name) for t in node.input if t in made_by} - {None}
        if len(sources) == 1:
            owner[node.name] = sources.pop()
    read_by = readers(nodes)
    for node in reversed(nodes):  # feeds only the region
        if node.name in owner or node.name in outer:
            continue
        users = {owner.get(r.name) for t in node.output for r, _ in read_by.get(t, [])}
        if len(users) == 1 and None not in users:
            owner[node.name] = users.pop()
    return owner


def restore_branches(quantized: onnx.ModelProto, frame: onnx.ModelProto, inlined: tuple[InlinedBranch, ...],
                     untouched: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """``quantized`` (a flat graph from :func:`inline_branches`) with each inlined region back in its
    ``If``; ``frame`` is the model that was inlined. The branch nobody took comes from ``untouched`` where
    given (the model before onnxruntime's constant folding, which can grow a branch it never runs by
    half). Changes ``quantized`` in place and returns it."""
    if not inlined:
        return quantized
    owner = _region_of(quantized, frame, inlined)
    ifs = {}
    for n in frame.graph.node:
        if n.name in {b.node for b in inlined}:
            ifs[n.name] = onnx.NodeProto()
            ifs[n.name].CopyFrom(n)
    bodies: dict[str, list[onnx.NodeProto]] = {name: [] for name in ifs}
    outputs: dict[str, list[str]] = {name: [] for name in ifs}
    main: list[onnx.NodeProto] = []
    for node in quantized.graph.node:
        if node.name.startswith(OUT_MARK):
            name = next(b.node for b in inlined if node.name.startswith(f"{OUT_MARK}_{b.node}"))
            if not outputs[name]:
                main.append(ifs[name])  # where the branch's results are first needed
            outputs[name].append(node)
        elif node.name in owner:
            bodies[owner[node.name]].append(node)
        else:
            main.append(node)
    inner = {t for nodes in bodies.values() for n in nodes for t in n.output}
    before = {n.name: n for n in untouched.graph.node} if untouched is not None else {}
    for b in inlined:
        original = _branch(ifs[b.node], b.branch)
        names = []
        for mark in outputs[b.node]:
            if mark.input[0] in inner:
                names.append(mark.input[0])
            else:  # an outer value returned as is: onnxruntime wants an Identity inside the branch
                bodies[b.node].append(helper.make_node("Identity", [mark.input[0]], [mark.name], name=mark.name))
                names.append(mark.name)
        outs = [helper.make_value_info(name, info.type) for name, info in zip(names, original.output)]
        body = helper.make_graph(bodies[b.node], original.name, [], outs,
                                 value_info=[v for v in quantized.graph.value_info if v.name in inner])
        other = BRANCHES[b.branch == "else_branch"]
        for attr in ifs[b.node].attribute:
            if attr.name == b.branch:
                attr.g.CopyFrom(body)
            elif attr.name == other and b.node in before:
                attr.g.CopyFrom(_branch(before[b.node], other))
    graph = quantized.graph
    kept_info = [v for v in graph.value_info if v.name not in inner]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    del graph.node[:]
    graph.node.extend(main)
    return quantized
