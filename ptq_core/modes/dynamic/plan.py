"""DYNAMIC_QUANT's plan: which MatMul/Gemm/Gather/LSTM weights become int8 and how (ALWC or ACWL, rotation),
decided at convert time; activations are quantized at run time by what ``emit.py`` writes.

The emitted model uses standard ONNX ops only (DynamicQuantizeLinear, QuantizeLinear, MatMulInteger,
Gather, Cast, Mul, ...), so plain onnxruntime runs it with its integer kernels. Which nodes, the ALWC and
ACWL strategies, the block rotation and where onnxruntime's fusions forced a choice are in
docs/dynamic-quant.md; converter_lite's rules in docs/converter-lite.md §4.3, §9.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ptq_core.config import QuantConfig
from ptq_core.errors import PtqError
from ptq_core.modes.dynamic.rotation import block_for, rotate_weight
from ptq_core.modes.weight.plan import DecisionRows, LayerDecision
from ptq_core.onnxgraph.cpu import get_form
from ptq_core.onnxgraph.load import initializer_array
from ptq_core.onnxgraph.sites import WeightSite, check_finite_weight, find_weight_sites
from ptq_core.quant import cosine, quantize, weight_params

STRATEGIES = ("ALWC", "ACWL")
ACWL_WEIGHTS = ("per-channel", "per-layer")
MATMUL_OPS = ("MatMul", "Gemm")
RECURRENT_OPS = ("LSTM",)  # onnxruntime's DynamicQuantizeLSTM; GRU and RNN have no integer kernel there
LSTM_ZERO_POINT = 128  # portable form: LSTM weights as uint8 around 128 (u8 x u8 kernel, see ``lstm``)
INTEGER_KERNEL_OPS = MATMUL_OPS + RECURRENT_OPS  # weights an integer GEMM reads: the int8 form applies


@dataclass(frozen=True)
class DynamicWeight:
    """One int8 initializer the emitter writes, in the layout its integer op reads.

    MatMul/Gemm (kind "matmul"): ``codes`` is B as (.., K, N), symmetric, ``zero_point`` None,
    ``axis`` rank-1 (per column) or None (per layer). Gather: the table as in the model,
    ``zero_point`` int8 per slice along ``axis`` (the gather axis). LSTM (kind "lstm"): W or R transposed to
    (directions, K, 4 * hidden), as onnxruntime's DynamicQuantizeLSTM reads them, symmetric, ``scale``
    (directions, 4 * hidden): one per gate row of each direction; in the portable form uint8 codes with
    ``zero_point`` 128 (directions, 4 * hidden), else int8 codes and ``zero_point`` None.
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
        if self.kind == "lstm":
            return (self.codes.astype(np.float64) - zp[:, None, :]) * scale[:, None, :]
        if self.axis is None:
            return (self.codes.astype(np.float64) - zp[0]) * scale[0]
        shape = [1] * self.codes.ndim
        shape[self.axis] = -1
        return (self.codes.astype(np.float64) - zp.reshape(shape)) * scale.reshape(shape)


@dataclass(frozen=True)
class DynamicNode:
    """One node the emitter rewrites."""

    node: str
    op_type: str  # MatMul | Gemm | Gather | LSTM
    weight: str  # key into DynamicPlan.weights (an LSTM's W)
    trans_a: bool = False  # Gemm
    alpha: float = 1.0  # Gemm
    beta: float = 1.0  # Gemm
    rotation: int = 0  # Hadamard block on the reduction axis (0: none), ptq_core.modes.dynamic.rotation
    recurrence: str = ""  # LSTM: key of R in DynamicPlan.weights


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
        return self.int8_form if any(d.op_type in INTEGER_KERNEL_OPS for d in self.nodes) else None


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


def _lstm_not_quantized(node: onnx.NodeProto, w_site: WeightSite | None, r_site: WeightSite | None, inits: dict,
                        skip: set) -> str | None:
    """Why an LSTM stays FP32 (None: DynamicQuantizeLSTM takes it)."""
    if node.name in skip:
        return "skip_quant_node"
    if w_site is None or r_site is None:
        return "LSTM: W and R must both be constant weights for DynamicQuantizeLSTM; kept FP32"
    if any(inits[s.tensor].data_type != onnx.TensorProto.FLOAT for s in (w_site, r_site)):
        return "float16 LSTM weights: DynamicQuantizeLSTM needs float32; kept FP32"
    if _attrs(node).get("layout", 0) != 0:
        return "LSTM layout=1 (batch first): DynamicQuantizeLSTM takes layout 0 only; kept FP32"
    return None


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

    def lstm(self, node: onnx.NodeProto, w_site: WeightSite, r_site: WeightSite) -> None:
        """W and R on the full symmetric 8-bit grid [-127, 127], one scale per gate row and direction; X and
        the hidden state are quantized per tensor at run time inside onnxruntime's DynamicQuantizeLSTM (under
        ACWL too).

        In the portable form the codes are stored as uint8 with zero point 128: the kernel then runs MLAS's
        u8 x u8 GEMM, which widens both operands to 16 bits and cannot saturate on any CPU, so the weights
        keep the whole 8-bit grid instead of the [-64, 64] that u8 x s8 kernels need without VNNI
        (docs/int8-portability.md). An LSTM's GEMMs are small, so that kernel's lower peak speed costs
        little, and halving the weight step halves the weight error (silero-vad: docs/dynamic-quant.md)."""
        unsigned = self.form.weight_limit is not None
        how = (("uint8 W and R with zero point 128 (the full symmetric 8-bit grid, exact on every CPU)"
                if unsigned else "int8 per-channel symmetric W and R") +
               " with a scale per gate row and direction, uint8 per-tensor input and hidden state at run time "
               "(com.microsoft DynamicQuantizeLSTM)")
        keys = []
        for site in (w_site, r_site):
            key = f"{site.tensor}|lstm"
            keys.append(key)

            def make(site=site, key=key):
                w = initializer_array(self.model, site.tensor).astype(np.float32)
                check_finite_weight(w, site.tensor, node.name, node.op_type)
                w = np.ascontiguousarray(w.transpose(0, 2, 1))  # (directions, K, 4 * hidden)
                rows = w.transpose(0, 2, 1).reshape(-1, w.shape[1])  # one row per gate row and direction
                params = weight_params(rows, 8, 0, symmetric=True, limits=(-127, 127))  # either form: full grid
                scale = params.scale.astype(np.float32).reshape(w.shape[0], w.shape[2])
                codes = quantize(rows, params).reshape(w.shape[0], w.shape[2], w.shape[1]).transpose(0, 2, 1)
                zero_point = None
                if unsigned:
                    codes = (codes.astype(np.int16) + LSTM_ZERO_POINT).astype(np.uint8)
                    zero_point = np.full(scale.shape, LSTM_ZERO_POINT, np.uint8)
                return DynamicWeight(key, site.tensor, "lstm", np.ascontiguousarray(codes), scale, zero_point, 2), w

            if key in self.plan.weights:
                self.row(node, site, True, f"{how}; shares weight with {self.first_user[key]}", bits=8,
                         granularity="per-channel", encoding="int8", bytes_fp32=0, bytes_stored=0,
                         effective_bits=8.0)
                continue
            weight, original = make()
            self.plan.weights[key] = weight
            self.first_user[key] = node.name
            self.row(node, site, True, how, bits=8, granularity="per-channel", encoding="int8",
                     bytes_stored=weight.nbytes, effective_bits=8.0,
                     weight_cosine=cosine(original, weight.dequantized()))
        self.plan.nodes.append(DynamicNode(node.name, node.op_type, keys[0], recurrence=keys[1]))

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
        elif node.op_type in RECURRENT_OPS and sites:
            w_site = next((s for s in sites if s.input_index == 1), None)
            r_site = next((s for s in sites if s.input_index == 2), None)
            why = _lstm_not_quantized(node, w_site, r_site, inits, skip)
            if why:
                for s in sites:
                    p.row(node, s, False, why)
            else:
                p.lstm(node, w_site, r_site)
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
                p.row(node, s, False, f"DYNAMIC_QUANT quantizes MatMul/Gemm/Gather/LSTM only; {node.op_type} stays FP32")
    return p.plan


# ---------------------------------------------------------------------------------------------
# emission
# ---------------------------------------------------------------------------------------------

















