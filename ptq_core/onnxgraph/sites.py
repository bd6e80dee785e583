"""The weights a quantizer may touch, as data: which inputs of which op hold weights and along which
channel axis (docs/converter-lite.md §5.3, in ONNX layouts), and the ``ModelInfo`` every mode starts
from. Everything outside ``onnxgraph`` sees a model as ``WeightSite`` records; only emitters edit protos."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ptq_core.errors import ModelError, did_you_mean
from ptq_core.onnxgraph.load import default_opset, file_sha256, prepare_model
from ptq_core.onnxgraph.walk import _attrs, node_bodies, node_label, read_names, subgraphs
from ptq_core.onnxgraph.weight_roles import WEIGHT_OPS, _conv_transpose_axis


@dataclass(frozen=True)
class WeightSite:
    """A constant float tensor feeding a quantizable op input."""

    node: str
    op_type: str
    input_index: int
    tensor: str
    shape: tuple[int, ...]
    axis: int
    conv_like: bool
    users: int  # how many node inputs read this tensor
    graph: str = ""  # where the tensor lives: "" for the main graph, else the subgraph's path ("If_0/then_branch")
    node_graph: str = ""  # where the node lives; differs from ``graph`` when a body reads an outer-scope weight

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def channels(self) -> int:
        return self.shape[self.axis] if self.shape else 1


@dataclass(frozen=True)
class ModelInfo:
    """What analysis learned about a model; small and picklable, so tasks can cache it."""

    path: str
    sha256: str
    opset: int
    node_names: tuple[str, ...]
    node_types: tuple[str, ...]
    sites: tuple[WeightSite, ...]
    inputs: tuple[tuple[str, int, tuple], ...]  # (name, onnx elem type, dims with str for symbolic)
    outputs: tuple[str, ...]
    float_bytes: int  # bytes of all float32 initializers
    quantized_ops: tuple[tuple[str, int], ...] = ()  # already-quantized constructs found: (what, count)
    body_node_names: tuple[str, ...] = ()  # nodes inside If/Loop/Scan bodies, by path ("If_0/then_branch/mm")


def find_weight_sites(model: onnx.ModelProto, inside_subgraphs: bool = False) -> list[WeightSite]:
    """Every float initializer with ≥ 2 dims at a weight input of a known op, in node order.

    ``inside_subgraphs``: also the weight inputs of nodes inside If/Loop/Scan bodies, at any depth, whether
    the body holds the weight or reads it from an enclosing graph (exporters do both); their nodes are named
    by path (``If_0/then_branch/MatMul_3``), ``graph`` says where the tensor lives and ``node_graph`` where
    the node does. ``users`` counts the readers in the tensor's own graph and the bodies nested in it, so a
    weight shared with a body counts as shared.
    """
    sites: list[WeightSite] = []

    def walk(graph: onnx.GraphProto, path: str, outer: dict[str, tuple[onnx.TensorProto, str, int]]) -> None:
        reads = Counter(read_names(graph, count=True))
        visible = {**outer, **{t.name: (t, path, reads[t.name]) for t in graph.initializer}}
        sites.extend(_graph_sites(graph, path, visible))
        if not inside_subgraphs:
            return
        for index, node in enumerate(graph.node):
            for attr_name, body in node_bodies(node):
                walk(body, f"{path + '/' if path else ''}{node_label(node, index)}/{attr_name}", visible)

    walk(model.graph, "", {})
    return sites


def _graph_sites(graph: onnx.GraphProto, path: str,
                 inits: dict[str, tuple[onnx.TensorProto, str, int]]) -> list[WeightSite]:
    """``inits``: every initializer the graph's nodes can read (its own and its enclosing graphs'), with
    the path of the graph that holds it and how many inputs read it there and below."""
    graph_inputs = {i.name for i in graph.input}
    sites = []
    for index, node in enumerate(graph.node):
        roles = WEIGHT_OPS.get(node.op_type)
        if not roles:
            continue
        attrs = _attrs(node)
        for role in roles:
            if role.input_index >= len(node.input):
                continue
            name = node.input[role.input_index]
            if name not in inits:
                continue
            tensor, owner, users = inits[name]
            if name in graph_inputs:
                continue  # an initializer overridable as an input is not a constant
            if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                continue
            shape = tuple(int(d) for d in tensor.dims)
            if len(shape) < 2:
                continue
            if role.axis_fn is _conv_transpose_axis:
                axis = _conv_transpose_axis(attrs, len(shape), shape)
            else:
                axis = role.axis_fn(attrs, len(shape))
            sites.append(
                WeightSite(
                    node=f"{path}/{node_label(node, index)}" if path else node.name,
                    op_type=node.op_type,
                    input_index=role.input_index,
                    tensor=name,
                    shape=shape,
                    axis=axis,
                    conv_like=role.conv_like,
                    users=users,
                    graph=owner,
                    node_graph=path,
                )
            )
    return sites


def _dims(value_info: onnx.ValueInfoProto) -> tuple:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


def analyse_model(path: str | Path) -> ModelInfo:
    """Load a model and describe it: names, quantizable weights, inputs and outputs."""
    from ptq_core.onnxgraph.preflight import check_graph

    model = prepare_model(path, load_data=False)  # names, dims and types only: weights stay on disk
    check_graph(model, path)
    inits = {t.name for t in model.graph.initializer}
    float_bytes = sum(
        int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    inputs = tuple(
        (i.name, i.type.tensor_type.elem_type, _dims(i)) for i in model.graph.input if i.name not in inits
    )
    return ModelInfo(
        path=str(path),
        sha256=file_sha256(path),
        opset=default_opset(model),
        node_names=tuple(n.name for n in model.graph.node),
        node_types=tuple(n.op_type for n in model.graph.node),
        sites=tuple(find_weight_sites(model)),
        inputs=inputs,
        outputs=tuple(o.name for o in model.graph.output),
        float_bytes=float_bytes,
        quantized_ops=quantized_constructs(model),
        body_node_names=tuple(f"{path}/{node_label(n, k)}" for path, body in subgraphs(model.graph)
                              for k, n in enumerate(body.node)),
    )


#: onnxruntime's and ONNX's integer kernels: a model holding them was quantized before it reached us
QUANTIZED_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits", "QGemm",
                 "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "QLinearAdd", "QLinearMul",
                 "MatMulIntegerToFloat", "QLinearConcat", "QLinearGlobalAveragePool")


def quantized_constructs(model: onnx.ModelProto) -> tuple[tuple[str, int], ...]:
    """Integer kernels, and DequantizeLinear nodes decoding integer weights (a QDQ model), with counts."""
    counts = Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS)
    integer_inits = {t.name for t in model.graph.initializer
                     if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                                        onnx.TensorProto.UINT4, onnx.TensorProto.INT16, onnx.TensorProto.INT32)}
    dq = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in integer_inits)
    if dq:
        counts["DequantizeLinear of integer weights"] = dq
    return tuple(sorted(counts.items()))


def check_skip_nodes(info: ModelInfo, skip: tuple[str, ...], source: str) -> None:
    """An unknown name in skip_quant_node is an error listing the closest node names. A node inside an
    If/Loop/Scan body is named by its path, as the layer table names it."""
    known = info.node_names + info.body_node_names
    names = set(known)
    for name in skip:
        if name not in names:
            raise ModelError(
                f"{source}: [common_quant_param] skip_quant_node names {name!r}, which is not a node of "
                f"{Path(info.path).name}{did_you_mean(name, known)}"
            )


def check_finite_weight(w: np.ndarray, tensor: str, node: str, op_type: str) -> None:
    """Refuse a weight holding NaN or Inf before it is quantized: its channels' ranges would be
    non-finite and every code of them garbage (and NumPy would warn on the way)."""
    if w.dtype.kind != "f" or np.isfinite(w).all():
        return
    nan = int(np.count_nonzero(np.isnan(w)))
    pinf = int(np.count_nonzero(w == np.inf))
    ninf = int(np.count_nonzero(w == -np.inf))
    seen = ", ".join(f"{c} {name}" for c, name in ((nan, "NaN"), (pinf, "+Inf"), (ninf, "-Inf")) if c)
    raise ModelError(f"weight {tensor!r} of node {node!r} ({op_type}) has {nan + pinf + ninf} non-finite value"
                     f"{'s' if nan + pinf + ninf != 1 else ''} ({seen}) among {w.size}; it cannot be quantized: fix the "
                     f"model, or keep the node FP32 with skip_quant_node={node}")
