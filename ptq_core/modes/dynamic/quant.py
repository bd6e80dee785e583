"""DYNAMIC_QUANT: int8 weights stored at convert time, activations quantized at run time.

The emitted model uses **standard ONNX ops only** (DynamicQuantizeLinear, QuantizeLinear,
MatMulInteger, Gather, Cast, Mul, ...); plain onnxruntime runs it with its integer kernels. The
semantics follow converter_lite's dynamic quantizer (docs/converter-lite.md §4.3, §9), adapted to what
onnxruntime runs fast and correctly.

Which nodes
    MatMul and Gemm with a constant float32 weight B of rank >= 2 (hence, by the op's type rule, a
    float32 activation A); Gather with a constant float32 table of rank >= 2. ``skip_quant_node``
    nodes are untouched. min_quant_weight_size / min_quant_weight_channel do not apply (converter_lite
    forces both to 0 in this mode). Conv, RNNs and every other op stay FP32.
    A MatMul whose two inputs are both activations stays float under both strategies. converter_lite's
    ACWL skips it too; its ALWC would quantize both sides at run time, but in onnxruntime that is two
    DynamicQuantizeLinear passes plus an int8 GEMM whose B cannot be pre-packed: at MiniLM's
    attention shape (12 x 128x32 @ 32x128) 0.125 ms vs 0.132 ms float, no real gain for the extra
    error in front of the softmax.

Rotation (``[ptqflow] rotation_block``, default 16; 0 = converter_lite's numerics exactly)
    Before an activation is quantized (either strategy) its channels are rotated by an orthonormal
    block-Hadamard matrix, ``A H``, and the weight rows are rotated back offline, ``H^T B``, so the
    FP32 product is unchanged (ptq_core.modes.dynamic.rotation). A transformer's "massive activations" (one
    channel of one token far above the rest) no longer set the whole grid: on all-MiniLM-L6-v2 (256
    sentences) the per-tensor ALWC cosine rises from 0.9933 to 0.9985 at block 16, ACWL's from 0.9973
    to 0.9995, for 0.7-0.8 ms of the 30 ms FP32 latency.
    Run time: ``Shape, Reshape(-1, b), MatMul(H), Reshape`` per quantized activation, shared by all
    its readers. Only readers whose reduction axis is a multiple of the block are rotated (the
    decision row says so). The weights are quantized after rotation, with converter_lite's rules.

ALWC (activation per-layer, weight per-channel) -- the default
    Weight: symmetric int8 [-127, 127], one scale per output column (the N axis; a Gemm transB=1
    weight is transposed offline to (K, N)); a weight read by several nodes gets one per-layer
    scale (converter_lite's shared-MatMul rule). Rounding half away from zero (``quant.quantize``).
    Run time: ``DynamicQuantizeLinear(A) -> MatMulInteger(A_u8, B_s8, a_zp) -> Cast -> Mul(a_scale *
    b_scale)`` [-> Add bias]. onnxruntime fuses this into ``DynamicQuantizeMatMul`` (through
    ``MatMulIntegerToFloat``): per-column B scales are applied inside the kernel, the following
    constant 1-D bias Add is folded in whichever side the bias is on, and when several MatMuls read
    the same A its common-subexpression pass merges their DynamicQuantizeLinear nodes (then they run
    as one DynamicQuantizeLinear + ``MatMulIntegerToFloat`` each). For a batched weight (rank > 2)
    the scale is stored as (.., 1, N): with a plain (N,) scale onnxruntime 1.32 applies it after the
    fused bias, i.e. it scales the bias too (wrong results).
    Difference from converter_lite: DynamicQuantizeLinear is uint8 asymmetric over
    [min(x, 0), max(x, 0)] -- zero always inside the range -- rounding half to even, while
    converter_lite's runtime is int8 over [min(x), max(x)] without forcing zero, rounding half away.
    Where the range already spans zero (LayerNorm outputs, GELU outputs, most hidden states) the grids
    are the same up to tie rounding; for a one-signed tensor onnxruntime's grid is coarser by the gap
    to zero.

ACWL (activation per-channel, weight per-layer)
    Activation: symmetric per row (token), scale_row = absmax_row / 127 (converter_lite writes
    2 * absmax / 254, the same number), zero point 0, computed at run time with standard ops:
    ``Abs -> ReduceMax(last axis, keepdims) -> Max(., 1e-30)`` gives absmax_row, then
    ``QuantizeLinear(A * (127 / absmax_row), scale 1, zero point 128)`` -- multiplying by the
    reciprocal as converter_lite's runtime does. The int8 codes are stored shifted by +128 as uint8
    with a scalar zero point 128 (the same codes; zero point 0 in int8 terms) because onnxruntime's
    x86 MatMulInteger is u8 x s8 on VNNI/AVX2 and 8-20x slower for s8 x s8 (measured 0.15 vs 1.2 ms
    at 128x384 @ 384x384, 0.43 vs 8.7 ms at 128x384 @ 384x1536). The spec lets MatMulInteger take a per-row a_zero_point, but
    every symmetric row has 128, so the scalar form suffices. The chain is shared by all quantized
    MatMuls reading the same tensor (Q, K and V quantize their input once).
    Rounding: QuantizeLinear rounds half to even, converter_lite half away from zero; they differ
    only when x * 127 / absmax_row is exactly k + 0.5, by one code. We keep the single QuantizeLinear
    (emulating half-away would cost five more full-size elementwise passes).
    Output: ``MatMulInteger -> Cast -> Mul(absmax_row * b_scale / 127)`` [-> bias]. onnxruntime
    fuses this into ``MatMulIntegerToFloat`` with a per-row A scale (.., M, 1), applied inside the
    kernel. That kernel gets a *fused* bias wrong: given a non-scalar A scale, onnxruntime 1.32 adds the
    bias before applying the A scale, so the bias is multiplied by each row's scale. So the bias is
    added with ``Sum`` instead of ``Add`` (the same broadcast addition, which the fusion does not
    match): a Gemm's C, and any model ``Add`` of a constant to an ACWL output (``_unfusable_bias_adds``;
    ``test_per_row_scale_is_applied_per_row_with_a_bias`` guards this). The unfused bias pass and the
    per-row quantization chain are why ACWL is slower than ALWC.
    Weight: converter_lite's ACWL uses one per-layer scale. On all-MiniLM-L6-v2 that is far worse
    than per-channel (layer 0's FFN output weight has an outlier column: weight cosine 0.930 per
    layer vs 0.9998 per channel; embedding cosine 0.968 vs 0.997), so ``plan_dynamic`` defaults to
    per-channel weights for ACWL too (per-row x per-column scales factor out of the integer dot
    product exactly, at no extra run-time cost) and ``acwl_weight="per-layer"`` gives
    converter_lite's choice.

Gather (both strategies)
    Weight-only int8, asymmetric [-128, 127], one (scale, zero point) per slice along the gather
    axis (per row/token for an embedding). The int8 table stays int8 in memory: the graph gathers
    int8 rows with the run-time ids, gathers their scales and zero points too, and dequantizes only
    the gathered rows: ``Gather -> Cast -> Sub(zp) -> Mul(scale)``, bit-exact with
    ``(q - zp) * scale`` in float32.

Gemm: alpha is folded into the B scale, ``beta * C`` is added after the rescale (C stays float; a
constant C is pre-multiplied). transA=1 inserts a Transpose before the quantizer. Models below
opset 11 (DynamicQuantizeLinear) are upgraded to 11; at opset >= 18 ReduceMax takes its axes as an
input. No shape information is added: with value_info onnxruntime 1.32 fuses SkipLayerNormalization,
which made MiniLM slower (ALWC 0.48x instead of 0.39x of FP32).

Measured on all-MiniLM-L6-v2 (benchmarks/bench_dynamic_quant.py, 2026-11-30 03:27 UTC; AMD EPYC Zen 4,
2 shared cores, onnxruntime 1.32; latency batch 1, seq 128, 1 thread, interleaved rounds, FP32 = 30.2
ms; RAM = peak RSS of a process that loads the model and runs 100 inferences; cosine of mean-pooled
embeddings vs FP32 on 256 sentences):

    model                            size     latency   RAM     cosine mean / min
    FP32                             1.000x   1.00x     1.00x   1
    ORT quantize_dynamic (pt)        0.253x   0.43x     0.50x   0.9633 / 0.9274
    ORT quantize_dynamic (pc)        0.254x   0.43x     0.53x   0.9931 / 0.9843
    ALWC, rotation_block=16          0.255x   0.41x     0.52x   0.9985 / 0.9960
    ACWL, rotation_block=16          0.255x   0.46x     0.52x   0.9995 / 0.9987
    ALWC, rotation_block=0           0.255x   0.39x     0.51x   0.9933 / 0.9836
    ACWL, rotation_block=0           0.255x   0.43x     0.51x   0.9973 / 0.9926

Without rotation ALWC cannot reach 0.995 on MiniLM: the [CLS] token carries one activation 3-10x
larger than any other token's (e.g. 28 in channel 99 vs <= 11 elsewhere after layer 0's attention
LayerNorm, 24.5 vs <= 5.6 after its GELU), and a per-tensor scale spends the int8 grid on it;
keeping any single MatMul FP32 lifts the cosine by at most 0.0011 (benchmarks/bench_alwc_sensitivity.py).
Rotation spreads that channel over its block. Under converter_lite's ACWL (per-layer weights) one
outlier weight column of layer 0's FFN output cost 3 points (0.968 vs 0.997, session 1).

One MatMul + bias at MiniLM shapes (median ms, A = [1, 128, K], 1 thread; ``micro_benchmark`` in
tests/test_dynamic_quant.py; r0 = rotation_block=0):

    A @ B                       FP32    ALWC    ACWL    ALWC r0  ACWL r0
    128x384  @ 384x384          0.36    0.14    0.17    0.12     0.15
    128x384  @ 384x1536         1.55    0.48    0.58    0.45     0.55
    128x1536 @ 1536x384         1.39    0.47    0.55    0.41     0.49
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.config import QuantConfig
from ptq_core.errors import PtqError
from ptq_core.modes.dynamic.rotation import block_for, hadamard, rotate_weight
from ptq_core.modes.weight.plan import DecisionRows, LayerDecision
from ptq_core.onnxgraph.cpu import get_form
from ptq_core.onnxgraph.graph import (
    WeightSite,
    check_finite_weight,
    default_opset,
    find_weight_sites,
    initializer_array,
    set_metadata,
)
from ptq_core.quant import cosine, quantize, weight_params

PRODUCER = "ptqflow"
MIN_OPSET = 11  # DynamicQuantizeLinear
STRATEGIES = ("ALWC", "ACWL")
ACWL_WEIGHTS = ("per-channel", "per-layer")
MATMUL_OPS = ("MatMul", "Gemm")
ROW_SCALE_FLOOR = 1e-30  # absmax floor: an all-zero row would give 127 / 0 = inf, and 0 * inf = NaN
ACT_ZERO_POINT = 128  # ACWL int8 codes stored as uint8 + 128


@dataclass(frozen=True)
class DynamicWeight:
    """One int8 initializer the emitter writes, in the layout its integer op reads.

    MatMul/Gemm (kind "matmul"): ``codes`` is B as (.., K, N), symmetric, ``zero_point`` None,
    ``axis`` rank-1 (per column) or None (per layer). Gather: the table as in the model,
    ``zero_point`` int8 per slice along ``axis`` (the gather axis).
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
        zp = self.zero_point.nbytes if self.zero_point is not None else 0
        return int(self.codes.nbytes + self.scale.nbytes + zp)

    def dequantized(self) -> np.ndarray:
        """The float weight this stands for (float64), in the stored layout."""
        scale = self.scale.astype(np.float64)
        zp = self.zero_point.astype(np.float64) if self.zero_point is not None else np.zeros_like(scale)
        if self.axis is None:
            return (self.codes.astype(np.float64) - zp[0]) * scale[0]
        shape = [1] * self.codes.ndim
        shape[self.axis] = -1
        return (self.codes.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)


@dataclass(frozen=True)
class DynamicNode:
    """One node the emitter rewrites."""

    node: str
    op_type: str  # MatMul | Gemm | Gather
    weight: str  # key into DynamicPlan.weights
    trans_a: bool = False  # Gemm
    alpha: float = 1.0  # Gemm
    beta: float = 1.0  # Gemm
    rotation: int = 0  # Hadamard block on the reduction axis (0: none), ptq_core.modes.dynamic.rotation


@dataclass
class DynamicPlan(DecisionRows):
    strategy: str
    decisions: list[LayerDecision] = field(default_factory=list)
    weights: dict[str, DynamicWeight] = field(default_factory=dict)
    nodes: list[DynamicNode] = field(default_factory=list)
    int8_form: str = "portable"  # MatMul weights read by onnxruntime's u8 x s8 kernels (ptq_core.onnxgraph.cpu)

    @property
    def written_form(self) -> str | None:
        """The int8 form of the integer-kernel weights the model will hold; None when it holds none."""
        return self.int8_form if any(d.op_type in MATMUL_OPS for d in self.nodes) else None


# ---------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------

def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _not_a_site_reason(node: onnx.NodeProto, index: int, inits: dict, graph_inputs: set) -> str | None:
    """Why input ``index`` is a constant that is not a weight site (None: it is an activation)."""
    if index >= len(node.input) or not node.input[index]:
        return None
    name = node.input[index]
    if name not in inits or name in graph_inputs:
        return None
    t = inits[name]
    if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        return f"constant {onnx.TensorProto.DataType.Name(t.data_type).lower()} input, not a float weight"
    return f"{len(t.dims)}-D constant input (only weights with >= 2 dims are quantized)"


class _Planner:
    def __init__(self, model: onnx.ModelProto, cfg: QuantConfig, acwl_weight: str):
        strategy = cfg.dynamic_quant_param.quant_strategy
        if strategy not in STRATEGIES:
            raise PtqError(f"[dynamic_quant_param] quant_strategy={strategy}: must be one of {', '.join(STRATEGIES)}")
        if acwl_weight not in ACWL_WEIGHTS:
            raise PtqError(f"acwl_weight={acwl_weight!r}: must be one of {', '.join(ACWL_WEIGHTS)}")
        self.model = model
        self.strategy = strategy
        self.acwl_weight = acwl_weight
        self.rotation_block = cfg.ptqflow.rotation_block
        self.form = get_form(cfg.ptqflow.int8_form)
        self.plan = DynamicPlan(strategy=strategy, int8_form=self.form.name)
        self.first_user: dict[str, str] = {}

    def row(self, node: onnx.NodeProto, site: WeightSite | None, quantized: bool, reason: str, **kw) -> None:
        size = site.size * 4 if site else 0
        kw.setdefault("bytes_fp32", size)
        kw.setdefault("bytes_stored", size)
        self.plan.decisions.append(LayerDecision(node.name, node.op_type, site.tensor if site else "",
                                                 site.shape if site else (), quantized, reason, **kw))

    def add(self, node: onnx.NodeProto, site: WeightSite, dyn: DynamicNode, how: str, granularity: str, make) -> None:
        """Record ``dyn``; quantize its weight with ``make()`` unless an earlier node already did."""
        self.plan.nodes.append(dyn)
        if dyn.weight in self.plan.weights:
            self.row(node, site, True, f"{how}; shares weight with {self.first_user[dyn.weight]}", bits=8,
                     granularity=granularity, encoding="int8", bytes_fp32=0, bytes_stored=0, effective_bits=8.0)
            return
        weight, original = make()
        self.plan.weights[dyn.weight] = weight
        self.first_user[dyn.weight] = node.name
        self.row(node, site, True, how, bits=8, granularity=granularity, encoding="int8",
                 bytes_stored=weight.nbytes, effective_bits=8.0, weight_cosine=cosine(original, weight.dequantized()))

    def matmul(self, node: onnx.NodeProto, site: WeightSite) -> None:
        attrs = _attrs(node)
        gemm = node.op_type == "Gemm"
        trans_b = gemm and bool(attrs.get("transB", 0))
        k = site.shape[-1] if trans_b else site.shape[-2]
        block = block_for(k, self.rotation_block)
        key = f"{site.tensor}|matmul{'T' if trans_b else ''}" + (f"|H{block}" if block else "")
        wants_channel = self.strategy == "ALWC" or self.acwl_weight == "per-channel"
        per_channel = wants_channel and site.users == 1  # a shared MatMul weight goes per-layer (§4.1)
        granularity = "per-channel" if per_channel else "per-layer"
        if self.strategy == "ALWC":
            how = f"ALWC: int8 {granularity} symmetric weight, uint8 per-tensor activation at run time"
        else:
            how = f"ACWL: int8 {granularity} symmetric weight, int8 per-row symmetric activation at run time"
        if wants_channel and not per_channel:
            how += f" (weight read by {site.users} nodes: per-layer)"
        if block:
            how += f"; activation rotated in {block}-channel Hadamard blocks"
        elif self.rotation_block:
            how += f"; not rotated (reduction axis {k} is not a multiple of rotation_block={self.rotation_block})"
        dyn = DynamicNode(node.name, node.op_type, key, trans_a=gemm and bool(attrs.get("transA", 0)),
                          alpha=float(attrs.get("alpha", 1.0)) if gemm else 1.0,
                          beta=float(attrs.get("beta", 1.0)) if gemm else 1.0, rotation=block)

        def make():
            w = initializer_array(self.model, site.tensor).astype(np.float32)
            check_finite_weight(w, site.tensor, node.name, node.op_type)
            if trans_b:
                w = np.ascontiguousarray(w.T)
            if block:  # H^T W: the activation side gets X H at run time
                w = rotate_weight(w, block)
            axis = w.ndim - 1 if per_channel else None
            # symmetric, zero point 0: [-64, 64] in the portable form, [-127, 127] in the vnni one
            params = weight_params(w, 8, axis, symmetric=True, limits=self.form.clamp(-127, 127))
            return DynamicWeight(key, site.tensor, "matmul", quantize(w, params), params.scale.astype(np.float32),
                                 None, axis), w

        self.add(node, site, dyn, how, granularity, make)

    def gather(self, node: onnx.NodeProto, site: WeightSite) -> None:
        key = f"{site.tensor}|gather{site.axis}"
        how = f"int8 asymmetric table, one scale per slice on axis {site.axis}; rows dequantized after the lookup"

        def make():
            w = initializer_array(self.model, site.tensor).astype(np.float32)
            check_finite_weight(w, site.tensor, node.name, node.op_type)
            params = weight_params(w, 8, site.axis)  # [-128, 127]
            return DynamicWeight(key, site.tensor, "gather", quantize(w, params), params.scale.astype(np.float32),
                                 params.zero_point.astype(np.int8), site.axis), w

        self.add(node, site, DynamicNode(node.name, node.op_type, key), how, "per-channel", make)


def plan_dynamic(model: onnx.ModelProto, cfg: QuantConfig, acwl_weight: str = "per-channel") -> DynamicPlan:
    """Decide and quantize the weights of ``model`` for DYNAMIC_QUANT under ``cfg``.

    ``model`` is a prepared model (``graph.prepare_model``: Constant nodes as initializers, every
    node named). Returns the int8 tensors, the nodes to rewrite, and one ``LayerDecision`` per
    weighted node and per activation x activation MatMul, with the reason when it stays float.
    ``acwl_weight``: weight granularity under ACWL, "per-channel" (default, see the module doc) or
    "per-layer" (converter_lite's).
    """
    p = _Planner(model, cfg, acwl_weight)
    skip = set(cfg.common.skip_quant_node)
    by_node: dict[str, list[WeightSite]] = {}
    for site in find_weight_sites(model):
        by_node.setdefault(site.node, []).append(site)
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    for node in model.graph.node:
        sites = by_node.get(node.name, [])
        if node.op_type in MATMUL_OPS:
            b_site = next((s for s in sites if s.input_index == 1), None)
            a_site = next((s for s in sites if s.input_index == 0), None)
            if b_site is None and a_site is None:
                why = _not_a_site_reason(node, 1, inits, graph_inputs) or _not_a_site_reason(node, 0, inits, graph_inputs)
                if why is None:
                    why = ("both inputs are activations: kept float (converter_lite's ACWL skips these too; its ALWC "
                           "would quantize both at run time, which onnxruntime does not run faster)")
                p.row(node, None, False, why)
            elif node.name in skip:
                for s in (b_site, a_site):
                    if s:
                        p.row(node, s, False, "skip_quant_node")
            elif b_site is None:
                p.row(node, a_site, False, "constant A with an activation B: only a constant B weight is quantized")
            elif a_site is not None:
                p.row(node, b_site, False, "both inputs are constant: onnxruntime folds this node at load time")
            elif inits[b_site.tensor].data_type != onnx.TensorProto.FLOAT:
                p.row(node, b_site, False, "float16 weight: run-time activation quantization needs float32")
            else:
                p.matmul(node, b_site)
        elif node.op_type == "Gather":
            site = next((s for s in sites if s.input_index == 0), None)
            if site is None:
                continue  # a Gather on shapes or ids: nothing to quantize, no row
            if node.name in skip:
                p.row(node, site, False, "skip_quant_node")
            elif inits[site.tensor].data_type != onnx.TensorProto.FLOAT:
                p.row(node, site, False, "float16 table: kept as is")
            else:
                p.gather(node, site)
        else:
            for s in sites:
                p.row(node, s, False, f"DYNAMIC_QUANT quantizes MatMul/Gemm/Gather only; {node.op_type} stays FP32")
    return p.plan


# ---------------------------------------------------------------------------------------------
# emission
# ---------------------------------------------------------------------------------------------

class _Emitter:
    """Builds the new nodes and initializers; every new name is checked against all existing ones."""

    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.graph = graph
        self.opset = opset
        self.taken = {n.name for n in graph.node} | {t.name for t in graph.initializer}
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
        codes = self.init(f"{base}_int8", w.codes)
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


def emit_dynamic(model: onnx.ModelProto, plan: DynamicPlan) -> onnx.ModelProto:
    """Return a copy of ``model`` with the planned nodes rewritten (int8 weights, run-time activation quantization)."""
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
        else:
            _emit_matmul(em, new_nodes, node, d, w, plan.strategy)
    if plan.strategy == "ACWL":
        _unfusable_bias_adds(new_nodes, set(_outputs(graph, todo)), {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
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
