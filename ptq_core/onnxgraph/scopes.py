"""A subgraph (an If branch, a Loop or Scan body, at any depth) as a model of its own, and back.

A pass written for the main graph (DYNAMIC_QUANT's planner and emitter) then runs unchanged on every body:
the body's nodes become the model's graph, and the outer-scope initializers they read (exporters keep a
body's weights in the main graph as often as in the body) are copied in as the model's own, so they are
found as weights. The result goes back into the body in place: new tensors live in the body, outer
initializers stay where they were, and the ones no node reads any more are dropped afterwards
(docs/modes.md, "Weights inside If, Loop and Scan bodies").

ONNX forbids a body from redefining a name its outer scopes use: the pass must steer clear of every name
in the model (``walk.all_names``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ptq_core.onnxgraph.walk import every_graph, node_bodies, node_label, read_names


@dataclass
class Scope:
    """One subgraph, where it sits, and the initializers of the scopes around it."""

    path: str  # "If_0/then_branch", "outer/body/If_3/else_branch"
    graph: onnx.GraphProto  # the body itself (a live sub-message of the model: changed in place)
    outer: dict[str, onnx.TensorProto]  # initializers of the enclosing graphs, innermost winning


def scopes_deepest_first(model: onnx.ModelProto) -> list[Scope]:
    """Every subgraph, each after all the subgraphs nested in it: a body is rewritten only once its
    own bodies are, so the copy of it that the pass sees already holds their final form."""
    found: list[Scope] = []

    def walk(graph: onnx.GraphProto, prefix: str, visible: dict[str, onnx.TensorProto]) -> None:
        for index, node in enumerate(graph.node):
            for attr_name, body in node_bodies(node):
                path = f"{prefix}{node_label(node, index)}/{attr_name}"
                walk(body, path + "/", {**visible, **{t.name: t for t in body.initializer}})
                found.append(Scope(path, body, visible))

    walk(model.graph, "", {t.name: t for t in model.graph.initializer})
    return found


def outer_reads(scope: Scope) -> list[str]:
    """The outer-scope initializers the body's own nodes read (not its nested bodies': they were done)."""
    own = {t.name for t in scope.graph.initializer}
    names = []
    for node in scope.graph.node:
        for name in node.input:
            if name in scope.outer and name not in own and name not in names:
                names.append(name)
    return names


def as_model(scope: Scope, template: onnx.ModelProto) -> onnx.ModelProto:
    """The body as a model with ``template``'s opsets, its outer-scope weights as its own initializers."""
    model = onnx.ModelProto()
    model.ir_version = template.ir_version
    model.opset_import.extend(template.opset_import)
    model.graph.CopyFrom(scope.graph)
    model.graph.initializer.extend(scope.outer[name] for name in outer_reads(scope))
    return model


def put_back(scope: Scope, rewritten: onnx.ModelProto, borrowed: list[str]) -> None:
    """``rewritten`` (a pass's output for ``as_model(scope)``) into the body in place; the borrowed outer
    initializers are left to their own scope, even where the pass kept them."""
    graph = rewritten.graph
    body = scope.graph
    outer = set(borrowed)
    del body.node[:]
    body.node.extend(graph.node)
    del body.initializer[:]
    body.initializer.extend(t for t in graph.initializer if t.name not in outer)
    del body.value_info[:]
    body.value_info.extend(graph.value_info)


def drop_unread_initializers(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove from every scope the initializers among ``candidates`` that no node anywhere reads and no
    graph outputs (outer weights a body pass replaced with int8 ones)."""
    read = read_names(model.graph) | {o.name for g in every_graph(model.graph) for o in g.output}  # output as is

    def prune(graph: onnx.GraphProto) -> None:
        keep = [t for t in graph.initializer if t.name not in candidates or t.name in read]
        if len(keep) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(keep)
            inputs = [i for i in graph.input if i.name not in candidates or i.name in read]
            del graph.input[:]
            graph.input.extend(inputs)
        for node in graph.node:
            for _, body in node_bodies(node):
                prune(body)

    prune(model.graph)


def hoist_shared_initializers(model: onnx.ModelProto) -> None:
    """Initializers with the same contents in two or more bodies of one graph's nodes (both branches of an
    If quantizing one outer weight each for itself) move up into that graph, once; the bodies read it from
    there. Deepest graphs first, so a copy can climb further when its new graph's siblings hold it too.

    Only a tensor whose name is defined nowhere else in the model moves (every name a body pass writes is
    such a name), and never one its body lists as an input or outputs as is: renaming those would change
    the body's signature.
    """
    from collections import Counter

    from onnx import numpy_helper

    defined = Counter(name for g in every_graph(model.graph) for name in
                      [t.name for t in g.initializer] + [i.name for i in g.input] +
                      [o for n in g.node for o in n.output])

    def content(t: onnx.TensorProto) -> tuple:
        return t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()

    def visit(graph: onnx.GraphProto) -> None:
        bodies = [body for node in graph.node for _, body in node_bodies(node)]
        for body in bodies:
            visit(body)
        if len(bodies) < 2:
            return
        groups: dict[tuple, list[tuple[onnx.GraphProto, onnx.TensorProto]]] = {}
        for body in bodies:
            fixed = {i.name for i in body.input} | {o.name for o in body.output}
            for t in body.initializer:
                if defined[t.name] == 1 and t.name not in fixed:
                    groups.setdefault(content(t), []).append((body, t))
        for members in groups.values():
            if len({id(body) for body, _ in members}) < 2:
                continue
            keep = onnx.TensorProto()
            keep.CopyFrom(members[0][1])
            rename = {t.name: keep.name for _, t in members}
            for body in {id(b): b for b, _ in members}.values():
                kept = [t for t in body.initializer if t.name not in rename]
                del body.initializer[:]
                body.initializer.extend(kept)
                _rename_reads(body, rename)
            graph.initializer.append(keep)

    visit(model.graph)


def _rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
        for _, body in node_bodies(node):
            _rename_reads(body, rename)
