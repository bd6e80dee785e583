"""Rows of ``quant_param.csv``: every quantized node's tensors with their parameters, one row per channel.

Sources: the emitted QDQ model itself for FULL_QUANT (the DequantizeLinear a node reads, the
QuantizeLinear its output feeds), the weight plan for WEIGHT_QUANT and DYNAMIC_QUANT (weights only:
dynamic activations get their parameters at run time). Dims are in ONNX layout (converter_lite
prints its internal layout, e.g. KHWC for conv weights); unknown activation dims print as -1.
WEIGHT_QUANT's scale already holds varCorr (the runtime multiplies it in), so CorrectionVar prints 1
and CorrectionMean is meanCorr; bits are the stored bits, 0 for mixed bit as in converter_lite.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ptq_core.debug.records import DebugPlan
from ptq_core.onnxgraph.walk import producers

_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
         onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT32: 32}


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    for t in model.graph.initializer:
        out[t.name] = tuple(t.dims)
    return out


def _rows(node: str, op: str, tensor: str, dims: tuple[int, ...], scale, zp, bits: int, var=None, mean=None) -> list[dict]:
    scale = np.asarray(scale, np.float64).reshape(-1)  # an LSTM's (directions, 4 * hidden): one row per channel
    zp = np.broadcast_to(np.asarray(zp if zp is not None else 0).reshape(-1), scale.shape)
    var = np.broadcast_to(np.atleast_1d(np.asarray(1.0 if var is None else var, np.float32)), scale.shape)
    mean = np.broadcast_to(np.atleast_1d(np.asarray(0.0 if mean is None else mean, np.float32)), scale.shape)
    elements = int(np.prod(dims)) if dims and all(d >= 0 for d in dims) else -1
    return [{"NodeName": node, "NodeType": op, "TensorName": tensor, "ElementsNum": elements, "Dims": tuple(dims),
             "Scale": float(scale[c]), "ZeroPoint": int(np.rint(zp[c])), "Bits": bits,
             "CorrectionVar": float(var[c]), "CorrectionMean": float(mean[c])} for c in range(scale.size)]


def qdq_rows(quant: onnx.ModelProto, plan: DebugPlan) -> list[dict]:
    """FULL_QUANT: the params of the Q/DQ pairs around every quantized node, in report order."""
    inits = {t.name: t for t in quant.graph.initializer}
    producer = producers(quant.graph.node)
    shapes = _shapes(quant)
    rows: list[dict] = []
    for rec in plan.records:
        if not rec.quantized:
            continue
        for ref in rec.tensors:
            dq = producer.get(ref.quant)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
                continue
            scale = numpy_helper.to_array(inits[dq.input[1]])
            zp_name = dq.input[2] if len(dq.input) > 2 else ""
            zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else None
            src = dq.input[0]
            if src in inits:
                elem, dims = inits[src].data_type, tuple(inits[src].dims)
            else:
                q = producer.get(src)
                elem = inits[q.input[2]].data_type if q is not None and len(q.input) > 2 and q.input[2] in inits \
                    else onnx.TensorProto.UINT8
                dims = shapes.get(ref.quant, ())
            rows += _rows(rec.node, rec.op_type, ref.name, dims, scale, zp, _BITS.get(elem, 8))
    return rows


def weight_rows(origin: onnx.ModelProto, plan) -> list[dict]:
    """WEIGHT_QUANT: each quantized weight under each node that reads it (converter_lite repeats shared ones)."""
    ops = {n.name: n.op_type for n in origin.graph.node}
    bits = {(d.node, d.tensor): d.bits for d in plan.decisions if d.quantized}
    order = {n.name: i for i, n in enumerate(origin.graph.node)}
    rows = []
    for w in plan.weights:
        for node in w.nodes:
            b = bits.get((node, w.tensor), w.encoded.bits if w.encoded is not None else 0)
            rows.append((order.get(node, 0), _rows(node, ops.get(node, ""), w.tensor, tuple(w.shape), w.scale,
                                                   w.zero_point, b, None, w.mean_corr)))
    return [r for _, part in sorted(rows, key=lambda t: t[0]) for r in part]


def dynamic_rows(origin: onnx.ModelProto, plan) -> list[dict]:
    """DYNAMIC_QUANT: the int8 weights (activation params are computed at run time)."""
    order = {n.name: i for i, n in enumerate(origin.graph.node)}
    rows = []
    for dn in sorted(plan.nodes, key=lambda n: order.get(n.node, 0)):
        for key in (dn.weight, dn.recurrence) if dn.recurrence else (dn.weight,):  # an LSTM has W and R
            w = plan.weights[key]
            rows += _rows(dn.node, dn.op_type, w.tensor, tuple(w.codes.shape), w.scale, w.zero_point, 8)
    return rows
