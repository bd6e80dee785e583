"""Cross-layer equalization before per-layer quantization (docs/converter-lite.md §8.8).

With one scale per weight tensor (``per_channel=false``) a convolution whose output channels span very
different ranges loses its small channels to the large ones. Scaling output channel i of a Conv down by
s_i and the next layer's input channel i up by s_i leaves the FP32 function unchanged (through a Relu,
which commutes with positive scales) and can even out the ranges. converter_lite does this for
conv -> conv and conv -> depthwise conv -> conv chains, each conv followed by nothing or a Relu (not
ReLU6, whose clip does not commute), on every target but DSP:

* two layers: s_i = r1_i / sqrt(r1_i * r2_i), where r1_i is the largest |w| of output channel i of the
  first weight and r2_i that of input channel i of the second; W1 and b1 rows / s_i, W2 columns * s_i.
* three layers (the middle one depthwise): c = cbrt(r1 r2 r3), s12 = r1 / c, s23 = c / r3, applied
  pairwise the same way.

A non-positive, NaN or infinite scale becomes 1. Chains are found in graph order and equalized in
reverse order of discovery, as converter_lite does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class Chain:
    """Two or three convolutions equalized together (node names, first to last)."""

    nodes: tuple[str, ...]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """The lookups chain finding needs: producers, consumers, single-use initializers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.inits = {t.name: t for t in model.graph.initializer}
        self.outputs = {o.name for o in model.graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        uses: dict[str, int] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
                uses[name] = uses.get(name, 0) + 1
        self.uses = uses
        self.inputs = {i.name for i in model.graph.input}

    def own_weight(self, node: onnx.NodeProto, index: int) -> bool:
        """Input ``index`` is a float initializer only this node reads (so scaling it changes nothing else)."""
        if index >= len(node.input) or not node.input[index]:
            return index == 2  # an absent bias is fine
        name = node.input[index]
        tensor = self.inits.get(name)
        return (tensor is not None and name not in self.inputs and self.uses.get(name, 0) == 1
                and tensor.data_type == onnx.TensorProto.FLOAT)

    def conv_kind(self, node: onnx.NodeProto) -> str | None:
        """"conv" (group 1), "depthwise" (one input channel per group, as many groups as channels) or None."""
        if node.op_type != "Conv" or not self.own_weight(node, 1) or not self.own_weight(node, 2):
            return None
        w = self.inits[node.input[1]]
        if len(w.dims) != 4:
            return None
        group = int(_attrs(node).get("group", 1))
        if group == 1:
            return "conv"
        if w.dims[1] == 1 and group == w.dims[0]:
            return "depthwise"
        return None

    def next_layer(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """The single consumer of ``node``'s output, through at most one Relu with a single consumer,
        reading it as its data input."""
        tensor = node.output[0]
        users = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(users) != 1:
            return None
        nxt = users[0]
        if nxt.op_type == "Relu":
            tensor = nxt.output[0]
            users = self.consumers.get(tensor, [])
            if tensor in self.outputs or len(users) != 1:
                return None
            nxt = users[0]
        return nxt if nxt.input and nxt.input[0] == tensor and list(nxt.input).count(tensor) == 1 else None


def find_chains(model: onnx.ModelProto) -> list[Chain]:
    """conv -> conv and conv -> depthwise -> conv chains, in graph order (a conv may end one chain and
    start the next, as in converter_lite)."""
    g = _Graph(model)
    chains = []
    for node in model.graph.node:
        if g.conv_kind(node) != "conv":
            continue
        second = g.next_layer(node)
        if second is None:
            continue
        kind = g.conv_kind(second)
        channels = g.inits[node.input[1]].dims[0]
        if kind == "conv" and g.inits[second.input[1]].dims[1] == channels:
            chains.append(Chain((node.name, second.name)))
        elif kind == "depthwise" and g.inits[second.input[1]].dims[0] == channels:
            third = g.next_layer(second)
            if third is not None and g.conv_kind(third) == "conv" and g.inits[third.input[1]].dims[1] == channels:
                chains.append(Chain((node.name, second.name, third.name)))
    return chains


def _safe(scale: np.ndarray) -> np.ndarray:
    ok = np.isfinite(scale) & (scale > 0)
    return np.where(ok, scale, 1.0)


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Chain]]:
    """A copy of ``model`` with every chain equalized, and the chains."""
    chains = find_chains(model)
    if not chains:
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {n.name: n for n in out.graph.node}
    tensors = {t.name: t for t in out.graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(tensors[name]).astype(np.float64)
        return arrays[name]

    def scale_pair(first: onnx.NodeProto, second: onnx.NodeProto, s: np.ndarray) -> None:
        """first's output channel i / s_i (weight rows and bias), second's input channel i * s_i."""
        w1 = array(first.input[1])
        w1 /= s.reshape(-1, *([1] * (w1.ndim - 1)))
        if len(first.input) > 2 and first.input[2]:
            array(first.input[2])[:] /= s
        w2 = array(second.input[1])
        if int(_attrs(second).get("group", 1)) == 1:
            w2 *= s.reshape(1, -1, *([1] * (w2.ndim - 2)))
        else:  # depthwise: channel i's filter reads input channel i
            w2 *= s.reshape(-1, *([1] * (w2.ndim - 1)))

    def out_range(node) -> np.ndarray:
        w = array(node.input[1])
        return np.abs(w).reshape(w.shape[0], -1).max(axis=1)

    def in_range(node) -> np.ndarray:
        w = array(node.input[1])
        return np.abs(np.moveaxis(w, 1, 0)).reshape(w.shape[1], -1).max(axis=1)

    for chain in reversed(chains):
        nodes = [by_name[n] for n in chain.nodes]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if len(nodes) == 2:
                r1, r2 = out_range(nodes[0]), in_range(nodes[1])
                scale_pair(nodes[0], nodes[1], _safe(r1 / np.sqrt(r1 * r2)))
            else:
                r1, r2, r3 = out_range(nodes[0]), out_range(nodes[1]), in_range(nodes[2])
                c = np.cbrt(r1 * r2 * r3)
                scale_pair(nodes[0], nodes[1], _safe(r1 / c))
                scale_pair(nodes[1], nodes[2], _safe(c / r3))
    for name, values in arrays.items():
        tensors[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    return out, chains
