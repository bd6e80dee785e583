"""Weights an exporter computes from constants, folded into initializers before anything looks for weights.

PyTorch writes an LSTM's W as ``Unsqueeze(Concat(Slice(weight_ih, ...), ...))``: the gates reordered from
its i, f, g, o to ONNX's i, o, f, c. The weight is a constant, but no initializer holds it, so a quantizer
that looks for initializers at weight inputs finds nothing (silero-vad's four LSTMs). Here every weight
input (``weight_roles.WEIGHT_OPS``) that a chain of shape-only ops computes from initializers alone becomes
an initializer, evaluated by onnx's reference runtime; the chain's nodes and the initializers only they
read go. Nothing else is folded: other constant subgraphs stay as exported.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.onnxgraph.scopes import drop_unread_initializers
from ptq_core.onnxgraph.walk import node_bodies, producers, read_names
from ptq_core.onnxgraph.weight_roles import WEIGHT_OPS

#: ops that only move, select or join values: folding them changes no number
SHAPE_OPS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Concat", "Slice", "Identity", "Flatten",
                       "Gather", "Split"})


def fold_weight_chains(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold, in place, every constant chain that feeds a weight input; returns ``model``.

    The folded weight goes to the graph that holds the chain's largest initializer (the graph that held
    the weight before), and chains that compute the same bytes there share one initializer:
    silero-vad computes each LSTM weight in both branches of an inner ``If`` from one tensor of the outer
    branch, and a copy per branch would double those weights.
    """
    leaves: set[str] = set()  # initializers the chains read: dropped at the end where nothing else does
    placed: dict[tuple[int, str], str] = {}  # (owner graph, value digest) -> the initializer holding it

    def walk(graph: onnx.GraphProto, outer: dict[str, tuple[onnx.TensorProto, onnx.GraphProto, int]],
             depth: int) -> None:
        visible = {**outer, **{t.name: (t, graph, depth) for t in graph.initializer}}
        made_by = producers(graph.node)
        chains: list[onnx.NodeProto] = []
        folded: set[str] = set()
        for node in graph.node:
            for role in WEIGHT_OPS.get(node.op_type, ()):
                if role.input_index >= len(node.input):
                    continue
                name = node.input[role.input_index]
                if not name or name in visible:
                    continue
                chain = _constant_chain(name, made_by, visible)
                if not chain:
                    continue
                sources = sorted({i for n in chain for i in n.input if i in visible})
                value = _evaluate(model, chain, name, {i: visible[i][0] for i in sources})
                if value is None or value.dtype not in (np.float32, np.float16) or value.ndim < 2:
                    continue
                tensor = numpy_helper.from_array(value, name)
                # where the weight itself lives (the largest source), not the chain's small index constants
                biggest = max(sources, key=lambda i: (int(np.prod(visible[i][0].dims)), -visible[i][2]))
                owner, owner_depth = visible[biggest][1], visible[biggest][2]
                digest = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode() + value.tobytes()).hexdigest()
                key = (id(owner), digest)
                if key in placed:  # the same bytes already hold a weight there: read that one
                    node.input[role.input_index] = placed[key]
                else:
                    owner.initializer.append(tensor)
                    placed[key] = name
                    visible[name] = (tensor, owner, owner_depth)
                chains.extend(chain)
                folded.add(name)
                leaves.update(sources)
        if chains:
            _drop_dead(graph, {n.output[0] for n in chains}, folded)
        for node in graph.node:
            for _, body in node_bodies(node):
                walk(body, visible, depth + 1)

    walk(model.graph, {}, 0)
    if leaves:
        drop_unread_initializers(model, leaves)
    return model


def _constant_chain(name: str, made_by: dict, visible: dict) -> list[onnx.NodeProto] | None:
    """The nodes, in graph order of discovery, that compute ``name`` from initializers through shape ops
    only; None when any input along the way is an activation or the chain leaves this graph."""
    chain: list[onnx.NodeProto] = []
    seen: set[int] = set()
    todo = [name]
    while todo:
        tensor = todo.pop()
        if not tensor or tensor in visible:
            continue
        node = made_by.get(tensor)
        if node is None or node.op_type not in SHAPE_OPS or any(a.type in (onnx.AttributeProto.GRAPH,
                                                                           onnx.AttributeProto.GRAPHS)
                                                                 for a in node.attribute):
            return None
        if id(node) in seen:
            continue
        seen.add(id(node))
        chain.append(node)
        todo.extend(node.input)
    return chain


def _evaluate(model: onnx.ModelProto, chain: list[onnx.NodeProto], name: str,
              sources: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """``name``'s value from a model of only the chain and its ``sources``, run by onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    order = {id(n): k for k, n in enumerate(chain)}
    nodes = sorted(chain, key=lambda n: -order[id(n)])  # discovered from the output back: reverse it
    graph = helper.make_graph([_copy(n) for n in nodes], "fold", [], [onnx.ValueInfoProto(name=name)],
                              [sources[i] for i in sorted(sources)])
    small = helper.make_model(graph, opset_imports=list(model.opset_import))
    small.ir_version = model.ir_version
    try:
        return np.asarray(ReferenceEvaluator(small).run(None, {})[0])
    except Exception:  # noqa: BLE001 -- an op the reference runtime lacks: the chain simply stays
        return None


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _drop_dead(graph: onnx.GraphProto, candidates: set[str], folded: set[str]) -> None:
    """Remove the chain nodes (``candidates``: their first outputs) that now compute only folded weights
    (initializers hold those) or values nothing in the graph, or nested in it, reads; repeated until none
    goes, as a chain's inner nodes die once its last node does."""
    outputs = {o.name for o in graph.output}
    while True:
        read = read_names(graph) | outputs
        dead = {n.output[0] for n in graph.node if n.output and n.output[0] in candidates
                and all(o in folded or o not in read for o in n.output)}
        if not dead:
            return
        keep = [n for n in graph.node if not (n.output and n.output[0] in dead)]
        del graph.node[:]
        graph.node.extend(keep)
