"""DYNAMIC_QUANT: int8 weights stored at convert time, activations quantized at run time.

The emitted model uses **standard ONNX ops only** (DynamicQuantizeLinear, QuantizeLinear,
MatMulInteger, Gather, Cast, Mul, ...); plain onnxruntime runs it, and its graph optimizer turns
the quantized MatMuls into its integer kernels. Semantics follow converter_lite's dynamic quantizer
(mslite-semantics §4.3, §9), adapted to what onnxruntime runs fast:

Which nodes
    MatMul and Gemm with a constant float32 weight B of rank >= 2 (and, by the op's type rule, a
    float32 activation A); Gather with a constant float32 table of rank >= 2. ``skip_quant_node``
    nodes are untouched. min_quant_weight_size / min_quant_weight_channel do not apply (converter_lite
    forces both to 0 in this mode). Convolutions, RNNs and everything else stay FP32.
    A MatMul whose two inputs are both activations stays float under both strategies: converter_lite's
    ACWL skips it too, while its ALWC would quantize both sides at run time; in onnxruntime that needs
    two DynamicQuantizeLinear passes and an unpacked int8 GEMM, which at attention shapes
    (128x32 @ 32x128) is not faster than the float kernel, so we keep it float.

ALWC (activation per-layer, weight per-channel) -- the default
    Weight: symmetric int8 [-127, 127], one scale per output column (the N axis; Gemm transB=1 is
    transposed offline to (K, N)); a weight read by several nodes gets one per-layer scale
    (converter_lite's shared-MatMul rule). Rounding half away from zero (``quant.quantize``).
    Activation: ``DynamicQuantizeLinear(A) -> MatMulInteger(A_u8, B_s8, a_zp) -> Cast -> Mul(a_scale
    * b_scale)`` [-> Add bias]. onnxruntime (>= 1.17, checked on 1.32) fuses this into its
    ``DynamicQuantizeMatMul`` kernel (via ``MatMulIntegerToFloat``; per-column B scales are
    supported), and folds a following constant 1-D bias Add into it.
    Difference from converter_lite: DynamicQuantizeLinear is uint8 asymmetric over
    [min(x, 0), max(x, 0)] -- zero is always inside the range -- and rounds half to even, while
    converter_lite's runtime uses int8 over [min(x), max(x)] without forcing zero and rounds half
    away. For activations whose range already spans zero (LayerNorm outputs, most hidden states)
    the two grids coincide up to that rounding; for one-signed tensors (e.g. after ReLU)
    onnxruntime's grid is coarser by at most the missing gap to zero.

ACWL (activation per-channel, weight per-layer)
    Weight: symmetric int8 [-127, 127], one scale for the whole tensor.
    Activation: symmetric per row (token): scale_row = absmax_row / 127 (converter_lite writes
    2*absmax/254, the same number), zero point 0. Computed at run time with standard ops:
    ``Abs -> ReduceMax(last axis, keepdims) -> Max(., 1e-30) -> Div 127`` for the row scales, then
    ``QuantizeLinear`` per axis on the activation viewed as (rows, K). The int8 grid is stored
    shifted by +128 as uint8 with a scalar zero point 128 (identical codes, zero point 0 in int8
    terms), because onnxruntime's x86 MatMulInteger is ~8x faster for u8 x s8 (VNNI/AVX2 kernels)
    than for s8 x s8 (measured 8.7 ms vs 0.42 ms at 128x384 @ 384x1536). ONNX's MatMulInteger
    accepts a per-row a_zero_point in the spec, but with symmetric rows it is 128 for every row,
    so the scalar form suffices and keeps the fused kernel eligible. ``MatMulInteger -> Cast ->
    Mul(row_scale * b_scale)`` is fused by onnxruntime into ``MatMulIntegerToFloat`` (which accepts
    the per-row A scale). The activation chain is shared by all quantized MatMuls that read the same
    tensor (Q, K and V projections quantize their input once).
    Rounding: QuantizeLinear rounds half to even; converter_lite rounds half away from zero. They
    differ only when x / scale_row is exactly k + 0.5, by one code; we keep the single fused
    QuantizeLinear (emulating half-away would take five more full-size elementwise passes).

Gather (both strategies)
    Weight-only int8, asymmetric [-128, 127], one (scale, zero point) per slice along the gather
    axis (per row/token for an embedding). The int8 table stays int8 in memory: the graph gathers
    int8 rows with the run-time ids, gathers their scales and zero points too, and dequantizes only
    the gathered rows: ``Gather -> Cast -> Sub(zp) -> Mul(scale)``. Bit-exact with
    ``(q - zp) * scale`` in float32.

Gemm: alpha is folded into the B scale, ``beta * C`` is added after the rescale (C stays float;
a constant C is pre-multiplied). transA=1 inserts a Transpose before the quantizer.

Measured (AMD EPYC Zen 4, onnxruntime 1.32, 1 thread, median ms of one MatMul model, A = [1, 128, K];
``tests/test_dynamic_quant.py::micro_benchmark``):

    shape (A @ B)              FP32    ALWC   ACWL
    128x384  @ 384x384         0.336   0.106  0.124
    128x384  @ 384x1536        1.35    0.38   0.42
    128x1536 @ 1536x384        1.37    0.39   0.42
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.config import QuantConfig
from ptq_core.errors import PtqError
from ptq_core.graph import WeightSite, default_opset, find_weight_sites, initializer_array
from ptq_core.quant import cosine, dequantize, quantize, weight_params
from ptq_core.weight_quant import LayerDecision

PRODUCER = "ptqflow"
MIN_OPSET = 13  # QuantizeLinear with a per-axis scale (ACWL) needs 13; the rest needs 11
STRATEGIES = ("ALWC", "ACWL")
MATMUL_OPS = ("MatMul", "Gemm")
ROW_SCALE_FLOOR = 1e-30  # an all-zero row would give scale 0 and x / 0 = NaN in QuantizeLinear
SWAP_BIAS_ADD = True  # Add(bias, y) -> Add(y, bias) so onnxruntime folds the bias into the int8 kernel


@dataclass(frozen=True)
class DynamicWeight:
    """One int8 initializer the emitter writes, in the layout its integer op reads.

    MatMul/Gemm: ``codes`` is B as (.., K, N), symmetric, ``zero_point`` None, ``axis`` rank-1 (per
    column) or None (per layer). Gather: the table as in the model, ``zero_point`` int8 per slice
    along ``axis`` (the gather axis).
    """

    key: str
    tensor: str
    kind: str  # "matmul" | "gather"
    codes: np.ndarray  # int8
    scale: np.ndarray  # float32, (C,) per channel or (1,) per layer
    zero_point: np.ndarray | None  # int8 (C,) or None (symmetric)
    axis: int | None

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + (self.zero_point.nbytes if self.zero_point is not None else 0))


@dataclass(frozen=True)
class DynamicNode:
    """One node the emitter rewrites."""

    node: str
    op_type: str  # MatMul | Gemm | Gather
    weight: str  # key into DynamicPlan.weights
    trans_a: bool = False  # Gemm
    alpha: float = 1.0  # Gemm
    beta: float = 1.0  # Gemm


@dataclass
class DynamicPlan:
    strategy: str
    decisions: list[LayerDecision] = field(default_factory=list)
    weights: dict[str, DynamicWeight] = field(default_factory=dict)
    nodes: list[DynamicNode] = field(default_factory=list)

    @property
    def quantized(self) -> list[LayerDecision]:
        return [d for d in self.decisions if d.quantized]

    @property
    def skipped(self) -> list[LayerDecision]:
        return [d for d in self.decisions if not d.quantized]


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------

def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _symmetric_int8(w: np.ndarray, axis: int | None):
    params = weight_params(w, 8, axis, symmetric=True, narrow=True)  # [-127, 127], zp 0
    return quantize(w, params), params


def _asymmetric_int8(w: np.ndarray, axis: int):
    params = weight_params(w, 8, axis)  # [-128, 127]
    return quantize(w, params), params


def _not_a_site_reason(node: onnx.NodeProto, index: int, inits: dict, graph_inputs: set) -> str | None:
    """Why input ``index`` of ``node`` is a constant that find_weight_sites did not list (None: it is an activation)."""
    if index >= len(node.input) or not node.input[index]:
        return None
    name = node.input[index]
    if name not in inits or name in graph_inputs:
        return None
    t = inits[name]
    if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return f"constant {onnx.TensorProto.DataType.Name(t.data_type).lower()} input, not a float weight"
    return f"{len(t.dims)}-D constant (only weights with >= 2 dims are quantized)"


def plan_dynamic(model: onnx.ModelProto, cfg: QuantConfig) -> DynamicPlan:
    """Decide and quantize the weights of ``model`` for DYNAMIC_QUANT under ``cfg``.

    ``model`` is a prepared model (``graph.prepare_model``: Constant nodes as initializers, every
    node named). Returns the int8 tensors, the nodes to rewrite, and one ``LayerDecision`` per
    weighted node (and per activation x activation MatMul) with the reason when left float.
    """
    strategy = cfg.dynamic_quant_param.quant_strategy
    if strategy not in STRATEGIES:
        raise PtqError(f"[dynamic_quant_param] quant_strategy={strategy}: must be one of {', '.join(STRATEGIES)}")
    skip = set(cfg.common.skip_quant_node)
    plan = DynamicPlan(strategy=strategy)
    sites = find_weight_sites(model)
    by_node: dict[str, list[WeightSite]] = {}
    for site in sites:
        by_node.setdefault(site.node, []).append(site)
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    first_user: dict[str, str] = {}

    def row(node, site: WeightSite | None, quantized: bool, reason: str, **kw) -> None:
        tensor = site.tensor if site else ""
        shape = site.shape if site else ()
        size = site.size * 4 if site else 0
        kw.setdefault("bytes_fp32", size)
        kw.setdefault("bytes_stored", size)
        plan.decisions.append(LayerDecision(node.name, node.op_type, tensor, shape, quantized, reason, **kw))

    for node in model.graph.node:
        node_sites = by_node.get(node.name, [])
        if node.op_type in MATMUL_OPS:
            b_site = next((s for s in node_sites if s.input_index == 1), None)
            a_site = next((s for s in node_sites if s.input_index == 0), None)
            if b_site is None and a_site is None:
                why = _not_a_site_reason(node, 1, inits, graph_inputs) or _not_a_site_reason(node, 0, inits, graph_inputs)
                if why is None:
                    why = ("both inputs are activations: kept float (converter_lite's ACWL skips these; its ALWC "
                           "would quantize both at run time, which onnxruntime does not run faster)")
                b_name = node.input[1] if len(node.input) > 1 else ""
                row(node, None, False, why)
                if b_name in inits:  # name the constant in the row
                    d = plan.decisions.pop()
                    plan.decisions.append(LayerDecision(d.node, d.op_type, b_name, tuple(inits[b_name].dims), False, why))
                continue
            if node.name in skip:
                for s in (b_site, a_site):
                    if s:
                        row(node, s, False, "skip_quant_node")
                continue
            if b_site is None:
                row(node, a_site, False, "constant A with an activation B: only a constant B weight is quantized")
                continue
            if a_site is not None:
                row(node, b_site, False, "both inputs are constant: onnxruntime folds this node at load time")
                continue
            if inits[b_site.tensor].data_type != onnx.TensorProto.FLOAT:
                row(node, b_site, False, "float16 weight: dynamic quantization needs float32 activations")
                continue
            _plan_matmul(plan, model, node, b_site, strategy, first_user, row)
        elif node.op_type == "Gather":
            site = next((s for s in node_sites if s.input_index == 0), None)
            if site is None:
                continue  # a Gather on shapes or ids: nothing to quantize, no row
            if node.name in skip:
                row(node, site, False, "skip_quant_node")
                continue
            if inits[site.tensor].data_type != onnx.TensorProto.FLOAT:
                row(node, site, False, "float16 table: kept as is")
                continue
            _plan_gather(plan, model, node, site, first_user, row)
        else:
            for s in node_sites:
                row(node, s, False, f"DYNAMIC_QUANT quantizes MatMul/Gemm/Gather only; {node.op_type} stays FP32")
    return plan


def _plan_matmul(plan, model, node, site: WeightSite, strategy, first_user, row) -> None:
    attrs = _attrs(node)
    trans_b = node.op_type == "Gemm" and bool(attrs.get("transB", 0))
    key = f"{site.tensor}|matmul{'T' if trans_b else ''}"
    per_channel = strategy == "ALWC" and site.users == 1
    granularity = "per-channel" if per_channel else "per-layer"
    dyn = DynamicNode(node.name, node.op_type, key,
                      trans_a=node.op_type == "Gemm" and bool(attrs.get("transA", 0)),
                      alpha=float(attrs.get("alpha", 1.0)) if node.op_type == "Gemm" else 1.0,
                      beta=float(attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0)
    if strategy == "ALWC":
        how = f"ALWC: int8 {granularity} symmetric weight, activation uint8 per-tensor at run time"
    else:
        how = "ACWL: int8 per-layer symmetric weight, activation int8 per-row symmetric at run time"
    if key in plan.weights:
        first = first_user[key]
        plan.nodes.append(dyn)
        row(node, site, True, f"{how}; shares weight with {first}", bits=8, granularity=granularity,
            encoding="int8", bytes_stored=0, bytes_fp32=0, effective_bits=8.0)
        return
    w = initializer_array(model, site.tensor).astype(np.float32)
    if trans_b:
        w = np.ascontiguousarray(w.T)
    axis = w.ndim - 1 if per_channel else None
    codes, params = _symmetric_int8(w, axis)
    dq = dequantize(codes, params)
    weight = DynamicWeight(key, site.tensor, "matmul", codes, params.scale.astype(np.float32), None, axis)
    plan.weights[key] = weight
    first_user[key] = node.name
    plan.nodes.append(dyn)
    row(node, site, True, how, bits=8, granularity=granularity, encoding="int8", bytes_stored=weight.nbytes,
        effective_bits=8.0, weight_cosine=cosine(w, dq))


def _plan_gather(plan, model, node, site: WeightSite, first_user, row) -> None:
    key = f"{site.tensor}|gather{site.axis}"
    how = "int8 per-row asymmetric table, rows dequantized after the lookup"
    dyn = DynamicNode(node.name, node.op_type, key)
    if key in plan.weights:
        plan.nodes.append(dyn)
        row(node, site, True, f"{how}; shares table with {first_user[key]}", bits=8, granularity="per-channel",
            encoding="int8", bytes_stored=0, bytes_fp32=0, effective_bits=8.0)
        return
    w = initializer_array(model, site.tensor).astype(np.float32)
    codes, params = _asymmetric_int8(w, site.axis)
    dq = dequantize(codes, params)
    weight = DynamicWeight(key, site.tensor, "gather", codes, params.scale.astype(np.float32),
                           params.zero_point.astype(np.int8), site.axis)
    plan.weights[key] = weight
    first_user[key] = node.name
    plan.nodes.append(dyn)
    row(node, site, True, how, bits=8, granularity="per-channel", encoding="int8", bytes_stored=weight.nbytes,
        effective_bits=8.0, weight_cosine=cosine(w, dq))


# ---------------------------------------------------------------------------------------------
# emission
# ---------------------------------------------------------------------------------------------

class _Names:
    """New node and tensor names: readable, never equal to an existing one, deterministic."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken = {n.name for n in graph.node} | {t.name for t in graph.initializer}
        self.taken |= {i.name for i in graph.input} | {o.name for o in graph.output}
        for n in graph.node:
            self.taken.update(n.input)
            self.taken.update(n.output)

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


class _Emitter:
    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.graph = graph
        self.opset = opset
        self.names = _Names(graph)
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[tuple, str] = {}
        self.weight_names: dict[str, tuple[str, str, str | None]] = {}  # key -> (codes, scale, zp)
        self.row_quant: dict[str, tuple[str, str]] = {}  # ACWL activation -> (uint8 codes, row scale)

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.names(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, array: np.ndarray) -> str:
        """A small shared constant (scalars, shapes)."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            self.consts[key] = self.init(f"dynamic_quant_const_{len(self.consts)}", array)
        return self.consts[key]

    def node(self, out: list, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        out.append(helper.make_node(op, inputs, outputs, name=self.names(name), **attrs))

    def weight(self, w: DynamicWeight) -> tuple[str, str, str | None]:
        if w.key in self.weight_names:
            return self.weight_names[w.key]
        base = w.tensor + ("_T" if w.key.endswith("T") else "")
        codes = self.init(f"{base}_int8", w.codes)
        if w.kind == "matmul":
            scale = self.init(f"{base}_scale", w.scale if w.axis is not None else np.float32(w.scale[0]))
            zp = None
        else:  # gather: (C, 1, .., 1) so that the gathered scales broadcast over the gathered rows
            shape = (len(w.scale),) + (1,) * (w.codes.ndim - 1 - w.axis)
            scale = self.init(f"{base}_scale", w.scale.reshape(shape))
            zp = self.init(f"{base}_zero_point", w.zero_point.reshape(shape)) if np.any(w.zero_point) else None
        self.weight_names[w.key] = (codes, scale, zp)
        return self.weight_names[w.key]


def emit_dynamic(model: onnx.ModelProto, plan: DynamicPlan) -> onnx.ModelProto:
    """Return a copy of ``model`` with the planned nodes rewritten to int8 weights and run-time activation quantization."""
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
    em = _Emitter(graph, opset)
    todo = {d.node: d for d in plan.nodes}
    new_nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    quantized_outputs: set[str] = set()
    for node in graph.node:
        d = todo.get(node.name)
        if d is None:
            new_nodes.append(node)
            continue
        w = plan.weights[d.weight]
        replaced.add(w.tensor)
        if d.op_type == "Gather":
            _emit_gather(em, new_nodes, node, w)
        else:
            _emit_matmul(em, new_nodes, node, d, w, plan.strategy)
            quantized_outputs.add(node.output[0])
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    dropped = {name for name in replaced if name not in still_used}
    keep = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep + em.inits)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    if SWAP_BIAS_ADD:
        _bias_second(graph, quantized_outputs)
    out.producer_name = PRODUCER
    out.producer_version = __import__("ptq_core").__version__
    return out


def _emit_gather(em: _Emitter, out: list, node: onnx.NodeProto, w: DynamicWeight) -> None:
    codes, scale, zp = em.weight(w)
    ids, y = node.input[1], node.output[0]
    n = node.name
    rows = em.names(f"{y}_int8")
    em.node(out, "Gather", [codes, ids], [rows], f"{n}_int8", axis=w.axis)
    as_float = em.names(f"{y}_codes")
    em.node(out, "Cast", [rows], [as_float], f"{n}_cast", to=onnx.TensorProto.FLOAT)
    if zp is not None:
        row_zp = em.names(f"{y}_zp_int8")
        em.node(out, "Gather", [zp, ids], [row_zp], f"{n}_zero_point", axis=0)
        row_zpf = em.names(f"{y}_zp")
        em.node(out, "Cast", [row_zp], [row_zpf], f"{n}_zero_point_cast", to=onnx.TensorProto.FLOAT)
        centred = em.names(f"{y}_centred")
        em.node(out, "Sub", [as_float, row_zpf], [centred], f"{n}_sub_zero_point")
        as_float = centred
    row_scale = em.names(f"{y}_scale")
    em.node(out, "Gather", [scale, ids], [row_scale], f"{n}_scale", axis=0)
    em.node(out, "Mul", [as_float, row_scale], [y], f"{n}_dequant")


def _reduce_max_last(em: _Emitter, out: list, x: str, y: str, name: str) -> None:
    if em.opset >= 18:
        em.node(out, "ReduceMax", [x, em.const(np.array([-1], np.int64))], [y], name, keepdims=1)
    else:
        em.node(out, "ReduceMax", [x], [y], name, axes=[-1], keepdims=1)


def _acwl_activation(em: _Emitter, out: list, a: str, k: int, tag: str) -> tuple[str, str]:
    """Per-row symmetric int8 (stored as uint8 + 128) of activation ``a``; shared by its readers."""
    if a in em.row_quant:
        return em.row_quant[a]
    absx = em.names(f"{a}_abs")
    em.node(out, "Abs", [a], [absx], f"{tag}_abs")
    amax0 = em.names(f"{a}_absmax_raw")
    _reduce_max_last(em, out, absx, amax0, f"{tag}_absmax")
    amax = em.names(f"{a}_absmax")
    em.node(out, "Max", [amax0, em.const(np.float32(ROW_SCALE_FLOOR))], [amax], f"{tag}_absmax_floor")
    scale = em.names(f"{a}_row_scale")  # (.., M, 1)
    em.node(out, "Div", [amax, em.const(np.float32(127.0))], [scale], f"{tag}_row_scale")
    flat_scale = em.names(f"{a}_row_scale_flat")
    em.node(out, "Reshape", [scale, em.const(np.array([-1], np.int64))], [flat_scale], f"{tag}_row_scale_flat")
    rows = em.names(f"{a}_rows")
    em.node(out, "Shape", [flat_scale], [rows], f"{tag}_rows")
    zps = em.names(f"{a}_row_zero_point")
    em.node(out, "ConstantOfShape", [rows], [zps], f"{tag}_row_zero_point",
            value=numpy_helper.from_array(np.array([128], np.uint8), "value"))
    flat = em.names(f"{a}_2d")
    em.node(out, "Reshape", [a, em.const(np.array([-1, k], np.int64))], [flat], f"{tag}_2d")
    q2 = em.names(f"{a}_uint8_2d")
    em.node(out, "QuantizeLinear", [flat, flat_scale, zps], [q2], f"{tag}_quantize", axis=0)
    shape = em.names(f"{a}_shape")
    em.node(out, "Shape", [a], [shape], f"{tag}_shape")
    q = em.names(f"{a}_uint8")
    em.node(out, "Reshape", [q2, shape], [q], f"{tag}_nd")
    em.row_quant[a] = (q, amax)
    return q, amax


def acwl_divisor(b_scale) -> np.float32:
    """ACWL output multiplier per row = absmax_row / (127 / b_scale), both in float32."""
    return np.float32(np.float32(127.0) / np.float32(b_scale))


def _emit_matmul(em: _Emitter, out: list, node: onnx.NodeProto, d: DynamicNode, w: DynamicWeight, strategy: str) -> None:
    codes, scale, _ = em.weight(w)
    n = node.name
    a, y = node.input[0], node.output[0]
    if d.alpha != 1.0 and strategy == "ALWC":  # Gemm alpha folded into this node's weight scale
        scale = em.init(f"{w.tensor}_scale_alpha", (w.scale * np.float32(d.alpha)).astype(np.float32)
                        if w.axis is not None else np.float32(w.scale[0] * np.float32(d.alpha)))
    if d.trans_a:
        at = em.names(f"{a}_T")
        em.node(out, "Transpose", [a], [at], f"{n}_transpose_a", perm=[1, 0])
        a = at
    if strategy == "ALWC":
        aq, a_scale, a_zp = em.names(f"{a}_uint8"), em.names(f"{a}_scale"), em.names(f"{a}_zero_point")
        em.node(out, "DynamicQuantizeLinear", [a], [aq, a_scale, a_zp], f"{n}_dynamic_cast_node_0")
        mm_inputs = [aq, codes, a_zp]
    else:
        k = int(w.codes.shape[-2])
        aq, absmax = _acwl_activation(em, out, a, k, f"{n}_dynamic_cast_node_0")
        mm_inputs = [aq, codes, em.const(np.uint8(128))]
    acc = em.names(f"{y}_int32")
    em.node(out, "MatMulInteger", mm_inputs, [acc], f"{n}_integer")
    multiplier = em.names(f"{y}_multiplier")
    if strategy == "ALWC":
        # Mul(A scale, B scale), A scale first: the form onnxruntime fuses into DynamicQuantizeMatMul
        em.node(out, "Mul", [a_scale, scale], [multiplier], f"{n}_multiplier")
    else:
        # row_scale * b_scale written as absmax / (127 / b_scale): not a Mul, so onnxruntime does NOT
        # fuse it into MatMulIntegerToFloat, whose per-row A scale is applied after the fused bias
        # (onnxruntime 1.32 scales the bias too: wrong results); see the module docstring
        em.node(out, "Div", [absmax, em.const(acwl_divisor(w.scale[0] * np.float32(d.alpha)))], [multiplier],
                f"{n}_multiplier")
    acc_f = em.names(f"{y}_int32_float")
    em.node(out, "Cast", [acc], [acc_f], f"{n}_cast", to=onnx.TensorProto.FLOAT)
    has_bias = d.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    rescaled = em.names(f"{y}_rescaled") if has_bias else y
    em.node(out, "Mul", [acc_f, multiplier], [rescaled], f"{n}_rescale")
    if has_bias:
        bias = node.input[2]
        if d.beta != 1.0:
            init = next((t for t in em.graph.initializer if t.name == bias), None)
            if init is not None:
                bias = em.init(f"{bias}_beta", (numpy_helper.to_array(init).astype(np.float32) * np.float32(d.beta)))
            else:
                scaled = em.names(f"{bias}_beta")
                em.node(out, "Mul", [bias, em.const(np.float32(d.beta))], [scaled], f"{n}_beta")
                bias = scaled
        em.node(out, "Add", [rescaled, bias], [y], f"{n}_bias")


def _bias_second(graph: onnx.GraphProto, outputs: set[str]) -> None:
    """``Add(bias, y)`` -> ``Add(y, bias)`` after a quantized MatMul, so onnxruntime folds the bias.

    Its MatMulIntegerToFloat fusion only takes a constant 1-D bias as the Add's second input
    (exporters often write it first). Add is commutative, so the swap changes nothing else.
    """
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    inits = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        first, second = n.input
        if second in outputs and readers.get(second) == 1 and first in inits:
            t = inits[first]
            if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 1 and t.dims[0] > 1:
                n.input[0], n.input[1] = second, first
