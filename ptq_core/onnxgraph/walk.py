"""Walking an ONNX graph and the bodies nested in its If/Loop/Scan nodes: stable labels, the names a new
tensor must avoid, and who reads what."""

from __future__ import annotations

from collections import defaultdict

import onnx

from ptq_core.errors import ModelError


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or ``<op>@<index>`` for the unnamed nodes of If/Loop/Scan bodies (which
    assign_node_names does not name): the label that subgraph paths and body rewiring agree on."""
    return node.name or f"{node.op_type}@{index}"


def node_bodies(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """The graphs a node holds (If's branches, a Loop or Scan body), each with its attribute name."""
    bodies = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            bodies.append((attr.name, attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            bodies.extend((f"{attr.name}[{k}]", g) for k, g in enumerate(attr.graphs))
    return bodies


def all_names(graph: onnx.GraphProto, taken: set[str] | None = None) -> set[str]:
    """Every node, tensor and value name in ``graph`` and the bodies nested in it: what a new name must avoid."""
    taken = set() if taken is None else taken
    taken.update(n.name for n in graph.node)
    taken.update(t.name for t in graph.initializer)
    taken.update(i.name for i in graph.input)
    taken.update(o.name for o in graph.output)
    taken.update(v.name for v in graph.value_info)
    for node in graph.node:
        taken.update(node.input)
        taken.update(node.output)
        for _, body in node_bodies(node):
            all_names(body, taken)
    return taken


def read_names(graph: onnx.GraphProto, count: bool = False) -> list[str] | set[str]:
    """The names the nodes of ``graph`` and of every body nested in it read (as a list with repeats when
    ``count``: one entry per reading input); a tensor only a body reads is still in use."""
    found: list[str] = []

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            found.extend(name for name in node.input if name)
            for _, body in node_bodies(node):
                walk(body)

    walk(graph)
    return found if count else set(found)


def subgraphs(graph: onnx.GraphProto, prefix: str = "") -> list[tuple[str, onnx.GraphProto]]:
    """Every graph nested in ``graph``'s nodes (If branches, Loop and Scan bodies, at any depth), with a
    stable path: ``<node name>/<attribute>`` (``If_0/then_branch``), nested paths joined by ``/``."""
    found = []
    for index, node in enumerate(graph.node):
        for name, body in node_bodies(node):
            path = f"{prefix}{node_label(node, index)}/{name}"
            found.append((path, body))
            found.extend(subgraphs(body, path + "/"))
    return found


def every_graph(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every graph nested in it, outermost first."""
    return [graph] + [body for _, body in subgraphs(graph)]


def graph_at(model: onnx.ModelProto, path: str) -> onnx.GraphProto:
    """The graph a WeightSite's ``graph`` path names ("" = the main graph)."""
    if not path:
        return model.graph
    for found, graph in subgraphs(model.graph):
        if found == path:
            return graph
    raise ModelError(f"no subgraph {path!r} in the model")


def producers(nodes) -> dict[str, onnx.NodeProto]:
    """tensor name -> the node that writes it (``nodes``: a graph's nodes, any iterable of them)."""
    return {name: node for node in nodes for name in node.output if name}


def readers(nodes) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """tensor name -> [(node, input index)] for every node that reads it (empty optional inputs left out)."""
    result: dict[str, list] = defaultdict(list)
    for node in nodes:
        for i, name in enumerate(node.input):
            if name:
                result[name].append((node, i))
    return result


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken``, which it joins."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name
