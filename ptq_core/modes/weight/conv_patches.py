"""A Conv's input as the rows its weight multiplies (im2col), so GPTQ can round Conv weights (docs/gptq.md).

A Conv weight W[O, C, k1, k2, ...] is a matrix W[O, C·k1·k2·...] applied to every patch of the input that one
output position sees. GPTQ needs the Hessian of those patches, Σ p pᵀ. The statistics pass collects it like a
MatMul input's: the statistics model gets, per Conv, a depthwise Conv with one-hot kernels (the Conv's own
strides, pads, dilations and auto_pad; ``group`` = C) that writes each patch as C·K channels in the weight's
column order (channel-major, then kernel positions row-major), and a Transpose that puts those channels last.
The one-hot kernels copy values exactly, and a depthwise Conv costs C·K multiplies per output position, so
the pass stays cheap where an explicit im2col GEMM would not.

Only Convs in the main graph with ``group`` = 1 qualify (a grouped Conv's output channels see different
inputs), with an activation input and at most ``MAX_COLUMNS`` columns (the Hessian is columns² float64
values); ``gptq.why_not_gptq`` says so for the others.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.onnxgraph.sites import WeightSite
from ptq_core.onnxgraph.walk import all_names, unique_name

MAX_COLUMNS = 4608  # C·k1·k2 (512 channels of a 3x3 kernel): a 170 MiB float64 Hessian at most
GEOMETRY = ("strides", "pads", "dilations", "auto_pad")  # attributes the patch Conv copies


def conv_columns(site: WeightSite) -> int:
    return int(np.prod(site.shape[1:]))


def qualifies(node: onnx.NodeProto, site: WeightSite, inits: set[str]) -> bool:
    """A Conv weight whose Hessian can be collected as patches (see the module docstring)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (site.input_index == 1 and len(site.shape) >= 3 and attrs.get("group", 1) == 1
            and node.input[0] not in inits and conv_columns(site) <= MAX_COLUMNS)


def one_hot_kernels(channels: int, kernel: tuple[int, ...]) -> np.ndarray:
    """[C·K, 1, k1, k2, ...]: output channel c·K + j copies input channel c at kernel position j."""
    k = int(np.prod(kernel))
    out = np.zeros((channels * k, 1) + tuple(kernel), np.float32)
    flat = out.reshape(channels, k, k)
    flat[:, np.arange(k), np.arange(k)] = 1.0
    return out


def with_conv_patches(model: onnx.ModelProto, sites: list[WeightSite]) -> tuple[onnx.ModelProto, dict]:
    """``model`` (a copy, when anything is added) with a patch tensor per qualifying Conv, and weight tensor
    -> the patch tensors its Convs read (a weight two Convs share takes both into its Hessian)."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {t.name for t in model.graph.initializer}
    wanted: dict[str, list[str]] = {}
    added_nodes: list[onnx.NodeProto] = []
    added_inits: list[onnx.TensorProto] = []
    taken = all_names(model.graph)
    kernels: dict[tuple, str] = {}
    for site in sites:
        node = nodes.get(site.node) if not site.graph and site.op_type == "Conv" else None
        if node is None or not qualifies(node, site, inits):
            continue
        channels, kernel = int(site.shape[1]), tuple(int(d) for d in site.shape[2:])
        key = (channels, kernel)
        if key not in kernels:
            kernels[key] = unique_name(f"ptq_gptq_onehot_{channels}x{'x'.join(map(str, kernel))}", taken)
            added_inits.append(numpy_helper.from_array(one_hot_kernels(channels, kernel), kernels[key]))
        patches, rows = unique_name(f"{node.name}_gptq_patches", taken), unique_name(f"{node.name}_gptq_rows", taken)
        geometry = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in GEOMETRY}
        added_nodes.append(helper.make_node("Conv", [node.input[0], kernels[key]], [patches], name=patches,
                                            group=channels, kernel_shape=list(kernel), **geometry))
        rank = len(kernel) + 2
        added_nodes.append(helper.make_node("Transpose", [patches], [rows], name=rows,
                                            perm=[0, *range(2, rank), 1]))
        wanted.setdefault(site.tensor, []).append(rows)
    if not added_nodes:
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.extend(added_nodes)
    out.graph.initializer.extend(added_inits)
    return out, {w: tuple(names) for w, names in wanted.items()}
