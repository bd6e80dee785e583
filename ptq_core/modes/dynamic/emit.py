"""DYNAMIC_QUANT's emitter: the planned int8 weights and the run-time quantization chains, in standard
ONNX ops only (DynamicQuantizeLinear, QuantizeLinear, MatMulInteger, Gather, Cast, Mul, ...), so plain
onnxruntime runs the model with its integer kernels. Why each chain looks as it does (onnxruntime's
fusions and their slips): docs/dynamic-quant.md."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.errors import PtqError
from ptq_core.modes.dynamic.plan import (
    MATMUL_OPS,
    RECURRENT_OPS,
    DynamicNode,
    DynamicPlan,
    DynamicWeight,
)
from ptq_core.modes.dynamic.rotation import hadamard
from ptq_core.onnxgraph.cpu import get_form
from ptq_core.onnxgraph.load import default_opset, set_metadata
from ptq_core.onnxgraph.walk import read_names


class _Emitter:
    """Builds the new nodes and initializers; every new name is checked against all existing ones."""

    def __init__(self, graph: onnx.GraphProto, opset: int, reserved: frozenset[str] = frozenset()):
        self.graph = graph
        self.opset = opset
        self.taken = {n.name for n in graph.node} | {t.name for t in graph.initializer} | set(reserved)
        self.taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
        for n in graph.node:
            self.taken.update(n.input)
            self.taken.update(n.output)
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[tuple, str] = {}
        self.weight_names: dict[str, tuple[str, str, str | None]] = {}  # key -> (codes, scale, zero point)
        self.row_quant: dict[str, tuple[str, str]] = {}  # ACWL: activation -> (codes, row absmax)
        self.rotated: dict[tuple[str, int], str] = {}  # (activation, block) -> rotated activation
        self.scale_names: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def init(self, base: str, array) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, array) -> str:
        """A small constant shared by every node that needs the same value."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            self.consts[key] = self.init(f"dynamic_quant_const_{len(self.consts)}", array)
        return self.consts[key]

    def node(self, out: list, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        out.append(helper.make_node(op, inputs, outputs, name=self.name(name), **attrs))

    def weight(self, w: DynamicWeight) -> tuple[str, str | None, str | None]:
        """(codes, scale, zero point) initializer names; a MatMul's scale is made by ``matmul_scale``."""
        if w.key in self.weight_names:
            return self.weight_names[w.key]
        base = w.tensor + ("_T" if w.key.endswith("T") else "")
        codes = self.init(f"{base}_{w.codes.dtype.name}", w.codes)  # _int8, or _uint8 (an LSTM, portable form)
        scale = zp = None
        if w.kind == "gather":  # (C, 1, .., 1): the gathered scales broadcast over the gathered slices
            shape = (len(w.scale),) + (1,) * (w.codes.ndim - 1 - w.axis)
            scale = self.init(f"{base}_scale", w.scale.reshape(shape))
            if np.any(w.zero_point):
                zp = self.init(f"{base}_zero_point", w.zero_point.reshape(shape))
        self.weight_names[w.key] = (codes, scale, zp)
        return self.weight_names[w.key]

    def matmul_scale(self, w: DynamicWeight, factor: float = 1.0) -> str:
        """The B scale initializer times ``factor`` (a Gemm's alpha, ACWL's 1/127), made once per value."""
        key = (w.key, float(factor))
        if key not in self.scale_names:
            base = w.tensor + ("_T" if w.key.endswith("T") else "") + "_scale"
            self.scale_names[key] = self.init(base, matmul_scale_array(w, factor))
        return self.scale_names[key]


def matmul_scale_array(w: DynamicWeight, factor: float = 1.0) -> np.ndarray:
    """The B scale initializer: a scalar (per layer), (N,) for a 2-D B, (.., 1, N) tiled for a batched B.

    onnxruntime's fused kernel takes a per-column scale only in B's own layout; any other shape is
    applied after the bias it fused, which scales the bias too.
    """
    scale = (w.scale * np.float32(factor)).astype(np.float32)
    if w.axis is None:
        return np.float32(scale[0])
    if w.codes.ndim == 2:
        return scale
    batch = w.codes.shape[:-2]
    return np.ascontiguousarray(np.broadcast_to(scale.reshape((1,) * len(batch) + (1, -1)), batch + (1, len(scale))))


def emit_dynamic(model: onnx.ModelProto, plan: DynamicPlan, reserved: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """Return a copy of ``model`` with the planned nodes rewritten (int8 weights, run-time activation quantization).

    ``reserved``: names no new node or tensor may take (a body's outer scopes, ptq_core.onnxgraph.scopes).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = default_opset(out)
    if opset < MIN_OPSET and plan.nodes:
        try:
            out = onnx.version_converter.convert_version(out, MIN_OPSET)
        except Exception as exc:
            raise PtqError(f"model opset {opset} is below {MIN_OPSET} and could not be upgraded ({exc}); "
                           f"re-export the model with opset >= {MIN_OPSET}") from None
        opset = MIN_OPSET
    graph = out.graph
    em = _Emitter(graph, opset, reserved)
    todo = {d.node: d for d in plan.nodes}
    missing = sorted(set(todo) - {n.name for n in graph.node})
    if missing:
        raise PtqError(f"the dynamic-quant plan names node {missing[0]!r}, which is not in the model")
    new_nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    for node in graph.node:
        d = todo.get(node.name)
        if d is None:
            new_nodes.append(node)
            continue
        w = plan.weights[d.weight]
        replaced.update(node.input)  # the float weight, a Gemm's C: dropped below if nothing reads them now
        if d.op_type == "Gather":
            _emit_gather(em, new_nodes, node, w)
        elif d.op_type in RECURRENT_OPS:
            _emit_lstm(em, new_nodes, node, w, plan.weights[d.recurrence])
        else:
            _emit_matmul(em, new_nodes, node, d, w, plan.strategy)
    if plan.strategy == "ACWL":
        _unfusable_bias_adds(new_nodes, set(_outputs(graph, todo)), {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = read_names(graph) | {o.name for o in graph.output}  # bodies may read a weight from outer scope
    dropped = {t.name for t in graph.initializer if t.name in replaced and t.name not in still_used}
    keep = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep + em.inits)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    value_info = [v for v in graph.value_info if v.name not in dropped]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    if any(d.op_type in RECURRENT_OPS for d in plan.nodes) and not any(
            o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    out.producer_name = PRODUCER
    out.producer_version = __import__("ptq_core").__version__
    if plan.written_form:
        set_metadata(out, get_form(plan.written_form).metadata())
    return out


def _outputs(graph: onnx.GraphProto, todo: dict) -> list[str]:
    return [node.output[0] for node in graph.node if node.name in todo and node.op_type in MATMUL_OPS]


def _unfusable_bias_adds(nodes: list[onnx.NodeProto], matmul_outputs: set[str], constants: set[str]) -> None:
    """Turn ``Add(ACWL MatMul output, constant)`` into the equivalent two-input ``Sum``, in place.

    onnxruntime folds a constant Add after MatMulIntegerToFloat into the kernel, which adds it
    *before* applying a non-scalar A scale: the bias would be multiplied by each row's scale
    (measured: errors of ~100 on a unit-scale output). ``Sum`` computes the same broadcast addition
    and is not fused; it runs as one separate pass over the output.
    """
    for node in nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        a, b = node.input
        if (a in matmul_outputs and b in constants) or (b in matmul_outputs and a in constants):
            node.op_type = "Sum"


def _emit_gather(em: _Emitter, out: list, node: onnx.NodeProto, w: DynamicWeight) -> None:
    codes, scale, zp = em.weight(w)
    ids, y, n = node.input[1], node.output[0], node.name
    rows = em.name(f"{y}_int8")
    em.node(out, "Gather", [codes, ids], [rows], f"{n}_int8", axis=w.axis)
    value = em.name(f"{y}_codes")
    em.node(out, "Cast", [rows], [value], f"{n}_cast", to=onnx.TensorProto.FLOAT)
    if zp is not None:
        row_zp, row_zpf, centred = em.name(f"{y}_zp_int8"), em.name(f"{y}_zp"), em.name(f"{y}_centred")
        em.node(out, "Gather", [zp, ids], [row_zp], f"{n}_zero_point", axis=0)
        em.node(out, "Cast", [row_zp], [row_zpf], f"{n}_zero_point_cast", to=onnx.TensorProto.FLOAT)
        em.node(out, "Sub", [value, row_zpf], [centred], f"{n}_sub_zero_point")
        value = centred
    row_scale = em.name(f"{y}_scale")
    em.node(out, "Gather", [scale, ids], [row_scale], f"{n}_scale", axis=0)
    em.node(out, "Mul", [value, row_scale], [y], f"{n}_dequant")


def _rotated_activation(em: _Emitter, out: list, a: str, block: int, tag: str) -> str:
    """``a @ blockdiag(H, .., H)`` on the last axis, made once per activation and block (Q, K and V share it).

    Reshape to (-1, block) rows, one float MatMul with H, reshape back to ``Shape(a)``: three cheap
    nodes that work for any rank without shape information.
    """
    if (a, block) in em.rotated:
        return em.rotated[(a, block)]
    shape, rows, turned, rotated = (em.name(f"{a}_shape"), em.name(f"{a}_blocks"), em.name(f"{a}_blocks_rotated"),
                                    em.name(f"{a}_rotated"))
    em.node(out, "Shape", [a], [shape], f"{tag}_shape")
    em.node(out, "Reshape", [a, em.const(np.array([-1, block], np.int64))], [rows], f"{tag}_blocks")
    em.node(out, "MatMul", [rows, em.const(hadamard(block).astype(np.float32))], [turned], f"{tag}_hadamard")
    em.node(out, "Reshape", [turned, shape], [rotated], f"{tag}_unblock")
    em.rotated[(a, block)] = rotated
    return rotated


def _acwl_activation(em: _Emitter, out: list, a: str, tag: str) -> tuple[str, str]:
    """Per-row symmetric int8 codes (as uint8 + 128) of activation ``a``; shared by all its readers.

    Returns (codes, row absmax (.., M, 1)). Rows are normalized by their reciprocal scale
    127 / absmax_row and quantized with one scalar-scale QuantizeLinear.
    """
    if a in em.row_quant:
        return em.row_quant[a]
    absx, raw, amax = em.name(f"{a}_abs"), em.name(f"{a}_absmax_raw"), em.name(f"{a}_absmax")
    em.node(out, "Abs", [a], [absx], f"{tag}_abs")
    if em.opset >= 18:
        em.node(out, "ReduceMax", [absx, em.const(np.array([-1], np.int64))], [raw], f"{tag}_absmax", keepdims=1)
    else:
        em.node(out, "ReduceMax", [absx], [raw], f"{tag}_absmax", axes=[-1], keepdims=1)
    em.node(out, "Max", [raw, em.const(np.float32(ROW_SCALE_FLOOR))], [amax], f"{tag}_absmax_floor")
    inv, normed, q = em.name(f"{a}_row_inverse_scale"), em.name(f"{a}_normalized"), em.name(f"{a}_uint8")
    em.node(out, "Div", [em.const(np.float32(127.0)), amax], [inv], f"{tag}_row_inverse_scale")
    em.node(out, "Mul", [a, inv], [normed], f"{tag}_normalize")
    em.node(out, "QuantizeLinear", [normed, em.const(np.float32(1.0)), em.const(np.uint8(ACT_ZERO_POINT))], [q],
            f"{tag}_quantize")
    em.row_quant[a] = (q, amax)
    return em.row_quant[a]


def _emit_lstm(em: _Emitter, out: list, node: onnx.NodeProto, w: DynamicWeight, r: DynamicWeight) -> None:
    """LSTM -> com.microsoft DynamicQuantizeLSTM: W and R in (directions, K, 4 * hidden), per gate-row
    scales and zero points (uint8 around 128 in the portable form, int8 around 0 otherwise); the optional
    inputs (B, sequence_lens, initial_h, initial_c, P) as they were."""
    params = []
    for weight in (w, r):
        codes = em.weight(weight)[0]
        key = (weight.key, "lstm")
        if key not in em.scale_names:
            em.scale_names[key] = em.init(f"{weight.tensor}_scale", weight.scale)
            zero = weight.zero_point if weight.zero_point is not None else np.zeros(weight.scale.shape, np.int8)
            em.scale_names[key + ("zp",)] = em.init(f"{weight.tensor}_zero_point", zero)
        params.append((codes, em.scale_names[key], em.scale_names[key + ("zp",)]))
    optional = [node.input[i] if i < len(node.input) else "" for i in range(3, 8)]
    inputs = [node.input[0], params[0][0], params[1][0], *optional, params[0][1], params[0][2], params[1][1],
              params[1][2]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
    out.append(helper.make_node("DynamicQuantizeLSTM", inputs, list(node.output),
                                name=em.name(f"{node.name}_quant"), domain=MS_DOMAIN, **attrs))


def _emit_matmul(em: _Emitter, out: list, node: onnx.NodeProto, d: DynamicNode, w: DynamicWeight, strategy: str) -> None:
    codes = em.weight(w)[0]
    a, y, n = node.input[0], node.output[0], node.name
    if d.trans_a:
        at = em.name(f"{a}_T")
        em.node(out, "Transpose", [a], [at], f"{n}_transpose_a", perm=[1, 0])
        a = at
    if d.rotation:
        a = _rotated_activation(em, out, a, d.rotation, f"{n}_rotate")
    acc, acc_f, multiplier = em.name(f"{y}_int32"), em.name(f"{y}_int32_float"), em.name(f"{y}_multiplier")
    has_bias = d.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
    result = em.name(f"{y}_rescaled") if has_bias else y
    if strategy == "ALWC":
        aq, a_scale, a_zp = em.name(f"{a}_uint8"), em.name(f"{a}_scale"), em.name(f"{a}_zero_point")
        em.node(out, "DynamicQuantizeLinear", [a], [aq, a_scale, a_zp], f"{n}_dynamic_cast_node_0")
        em.node(out, "MatMulInteger", [aq, codes, a_zp], [acc], f"{n}_integer")
        # Mul(A scale, B scale), A scale first: the form onnxruntime fuses into its integer kernel;
        # a Gemm's alpha is folded into the B scale
        em.node(out, "Mul", [a_scale, em.matmul_scale(w, d.alpha)], [multiplier], f"{n}_multiplier")
        em.node(out, "Cast", [acc], [acc_f], f"{n}_cast", to=onnx.TensorProto.FLOAT)
        em.node(out, "Mul", [acc_f, multiplier], [result], f"{n}_rescale")
    else:
        aq, amax = _acwl_activation(em, out, a, f"{n}_dynamic_cast_node_0")
        em.node(out, "MatMulInteger", [aq, codes, em.const(np.uint8(ACT_ZERO_POINT))], [acc], f"{n}_integer")
        # Mul(row absmax (.., M, 1), B scale / 127): onnxruntime fuses this into MatMulIntegerToFloat
        # with a per-row A scale; a bias must then stay outside the kernel (``_unfusable_bias_adds``)
        em.node(out, "Mul", [amax, em.matmul_scale(w, d.alpha / 127.0)], [multiplier], f"{n}_multiplier")
        em.node(out, "Cast", [acc], [acc_f], f"{n}_cast", to=onnx.TensorProto.FLOAT)
        em.node(out, "Mul", [acc_f, multiplier], [result], f"{n}_rescale")
    if has_bias:
        bias = node.input[2]
        if d.beta != 1.0:
            init = next((t for t in em.graph.initializer if t.name == bias), None)
            if init is not None:
                bias = em.init(f"{bias}_beta", numpy_helper.to_array(init).astype(np.float32) * np.float32(d.beta))
            else:
                scaled = em.name(f"{bias}_beta")
                em.node(out, "Mul", [bias, em.const(np.float32(d.beta))], [scaled], f"{n}_beta")
                bias = scaled
        # ACWL: Sum, not Add, so onnxruntime does not fold the bias under the per-row scale
        em.node(out, "Add" if strategy == "ALWC" else "Sum", [result, bias], [y], f"{n}_bias")


PRODUCER = "ptqflow"
MS_DOMAIN = "com.microsoft"


MIN_OPSET = 11  # DynamicQuantizeLinear


ROW_SCALE_FLOOR = 1e-30  # absmax floor: an all-zero row would give 127 / 0 = inf, and 0 * inf = NaN


ACT_ZERO_POINT = 128  # ACWL int8 codes stored as uint8 + 128
