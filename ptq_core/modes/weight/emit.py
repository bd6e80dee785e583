"""Weight-only emitter: packed integer weights plus a constant decode chain ORT folds at load time.

Every quantized weight becomes stored bytes (``ptq_core.storage``'s encoders) and a chain of standard ONNX
ops with only constant inputs (decode -> Cast -> Sub zero point -> Mul scale [-> Add mean
correction]). onnxruntime's constant folding turns the chain back into one float tensor when the
session is created, so the file is small, nothing of ours is needed to run it, and inference
runs the original float kernels at the original speed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.modes.weight.plan import QuantizedWeight, WeightPlan
from ptq_core.onnxgraph.load import default_opset, upgrade_opset
from ptq_core.onnxgraph.walk import all_names, node_label, read_names, subgraphs, unique_name
from ptq_core.quant import broadcast_shape
from ptq_core.storage.decode_ops import decode_nodes

PRODUCER = "ptqflow"
MIN_OPSET = 13


def _channel_tensor(name: str, values: np.ndarray, rank: int, axis: int | None) -> onnx.TensorProto:
    shape = broadcast_shape(rank, axis, len(values))
    array = values.astype(np.float32).reshape(shape) if shape else np.asarray(values[0], np.float32)
    return numpy_helper.from_array(array, name)


def _dequant_chain(qw: QuantizedWeight, prefix: str, output: str, opset: int, codes: str | None = None):
    """codes -> float weight as ``codes * scale + offset`` with offset = mean_corr - zero_point * scale.

    Every op of the chain leaves a full-size tensor that onnxruntime keeps until folding is over, so
    the chain is as short as the math allows: plain int8/int16 storage is cast straight to float
    (no int32 detour), and the zero point is folded into the per-channel offset (no Sub).
    """
    if qw.layout is not None:  # group-wise params (ptq_core.modes.weight.grouped)
        return _grouped_chain(qw, prefix, output, opset)
    if codes is not None:  # the codes come out of the shared entropy group
        nodes, inits = [], []
    elif qw.encoded.kind == "raw":
        nodes, inits, codes = [], [numpy_helper.from_array(qw.encoded.arrays["data"].reshape(qw.shape), f"{prefix}r")], \
            f"{prefix}r"
    else:
        nodes, inits, codes = decode_nodes(qw.encoded, prefix, opset)
    rank = len(qw.shape)
    as_float = f"{prefix}f"
    nodes.append(helper.make_node("Cast", [codes], [as_float], to=onnx.TensorProto.FLOAT))
    scale = qw.scale.astype(np.float32)
    scale = np.broadcast_to(scale, qw.zero_point.shape) if scale.size == 1 and qw.zero_point.size > 1 else scale
    offset = -(qw.zero_point.astype(np.float64) * scale.astype(np.float64))
    if qw.mean_corr is not None:
        offset = offset + qw.mean_corr.astype(np.float64)
    offset = offset.astype(np.float32)
    inits.append(_channel_tensor(f"{prefix}s", scale, rank, qw.axis))
    has_offset = bool(np.any(offset != 0))
    nodes.append(helper.make_node("Mul", [as_float, f"{prefix}s"], [output if not has_offset else f"{prefix}m"]))
    if has_offset:
        inits.append(_channel_tensor(f"{prefix}a", offset, rank, qw.axis))
        nodes.append(helper.make_node("Add", [f"{prefix}m", f"{prefix}a"], [output]))
    return nodes, inits


def _grouped_chain(qw: QuantizedWeight, prefix: str, output: str, opset: int):
    from ptq_core.modes.weight.grouped import decode_chain

    if qw.encoded.kind == "raw":
        nodes, inits, codes = [], [numpy_helper.from_array(qw.encoded.arrays["data"].reshape(
            qw.layout.rows, qw.layout.padded), f"{prefix}r")], f"{prefix}r"
    else:
        nodes, inits, codes = decode_nodes(qw.encoded, prefix, opset)
    more_nodes, more_inits = decode_chain(codes, qw.scale, qw.zero_point, qw.layout, prefix, output)
    return nodes + more_nodes, inits + more_inits


def emit_weight_only(model: onnx.ModelProto, plan: WeightPlan) -> onnx.ModelProto:
    """Return a copy of ``model`` whose planned weights are stored packed and decoded by constant ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = upgrade_opset(out, MIN_OPSET)
    opset = default_opset(out)
    graph = out.graph
    bodies = dict(subgraphs(graph))
    taken = all_names(graph)
    node_at = {n.name: n for n in graph.node}  # main-graph nodes by name, body nodes by path
    for path, body in bodies.items():
        node_at.update((f"{path}/{node_label(n, k)}", n) for k, n in enumerate(body.node))
    base = "q"
    while any(name.startswith(base) for name in taken):  # no new name can collide with an old one
        base += "_"
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    replaced: set[str] = set()
    group_outputs: list[str] = []
    if plan.group is not None:
        from ptq_core.storage.entropy_decode_ops import group_nodes

        nodes, inits, group_outputs = group_nodes(plan.group, f"{base}g_", opset)
        new_nodes.extend(nodes)
        new_inits.extend(inits)
    readers: dict[str, set[str]] = {}  # every reader, body nodes by path: a body may read a main-graph weight
    for name, node in node_at.items():
        for tensor in node.input:
            readers.setdefault(tensor, set()).add(name)
    outputs = {o.name for o in graph.output}
    for index, qw in enumerate(plan.weights):
        # short prefixes: the decode chain repeats its prefix in every name it creates
        prefix = f"{base}{index}_"
        if qw.graph:  # a weight an If/Loop/Scan body holds: decoded in the main graph, read from outer scope
            output = unique_name(f"{qw.tensor}_dequant", taken)
            codes = group_outputs[qw.group_index] if qw.group_index is not None else None
            nodes, inits = _dequant_chain(qw, prefix, output, opset, codes)
            new_nodes.extend(nodes)
            new_inits.extend(inits)
            _rewire(node_at, qw, output)
            _drop_if_unread(bodies[qw.graph], qw.tensor)
            continue
        # the chain takes over the weight's own name when every reader is decoded (the float initializer
        # goes): no renamed inputs, and no second long name stored twice per weight; a body that reads the
        # weight from the main graph then reads the decoded tensor without a change
        takes_name = readers.get(qw.tensor, set()) <= set(qw.nodes) and qw.tensor not in outputs
        output = qw.tensor if takes_name else unique_name(f"{qw.tensor}_dequant", taken)
        codes = group_outputs[qw.group_index] if qw.group_index is not None else None
        nodes, inits = _dequant_chain(qw, prefix, output, opset, codes)
        new_nodes.extend(nodes)
        new_inits.extend(inits)
        _rewire(node_at, qw, output)
        replaced.add(qw.tensor)
    _install(graph, new_nodes, new_inits, replaced, outputs)
    out.producer_name = PRODUCER
    out.producer_version = __import__("ptq_core").__version__
    return out


def _install(graph: onnx.GraphProto, new_nodes: list[onnx.NodeProto], new_inits: list[onnx.TensorProto],
             replaced: set[str], outputs: set[str]) -> None:
    """Put the decode chains in front of the graph's nodes and drop the float weights nothing reads now."""
    decoded = {o for n in new_nodes for o in n.output}
    still_used = read_names(graph) - decoded  # a body reading the float weight from outer scope keeps it
    still_used |= outputs
    keep = [t for t in graph.initializer if t.name not in replaced or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.initializer.extend(new_inits)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + original)
    dropped = replaced - {t.name for t in keep}
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    _share_small_constants(graph, {t.name for t in new_inits})


def _rewire(node_at: dict[str, onnx.NodeProto], qw: QuantizedWeight, output: str) -> None:
    """Point the decoded nodes' inputs that read ``qw.tensor`` at ``output`` (a no-op when they are equal)."""
    for node_name in qw.nodes:
        node = node_at[node_name]
        for i, name in enumerate(node.input):
            if name == qw.tensor:
                node.input[i] = output


def _drop_if_unread(body: onnx.GraphProto, tensor: str) -> None:
    """Drop a body's float initializer once nothing in the body, or in the bodies nested in it, reads it."""
    if tensor in read_names(body) or any(o.name == tensor for o in body.output):
        return
    keep = [t for t in body.initializer if t.name != tensor]
    del body.initializer[:]
    body.initializer.extend(keep)


def _share_small_constants(graph: onnx.GraphProto, new: set[str], limit: int = 256) -> None:
    """Keep one copy of each identical small initializer the decode chains added (they repeat the same tables)."""
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    keep = []
    for tensor in graph.initializer:
        if tensor.name in new and tensor.raw_data and len(tensor.raw_data) <= limit:
            key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data)
            if key in first:
                alias[tensor.name] = first[key]
                continue
            first[key] = tensor.name
        keep.append(tensor)
    if not alias:
        return
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]




