"""Checks of a ``FullQuantPlan`` against the model, before ``emit_qdq`` writes anything.

A plan can come from the planner or be written by hand; either way a wrong field (a scale of 0,
codes of the wrong shape, a bias scale that is not s_in * s_w, int8 codes that x86 CPUs without
VNNI would saturate on) must stop emission with a ``PtqError`` that names it, instead of a model
that onnxruntime runs wrongly. Kept apart from the emitter so that the writing code reads as
writing.
"""

from __future__ import annotations

import numpy as np
import onnx

from ptq_core.errors import PtqError
from ptq_core.modes.full.plan import (
    ActivationQuant,
    BiasQuant,
    FullQuantPlan,
    WeightQuant,
)
from ptq_core.modes.full.targets import TARGETS
from ptq_core.onnxgraph.cpu import get_form

# activation dtype -> (numpy dtype, ONNX element type, qmin, qmax)
QUANT_DTYPES = {"int8": (np.int8, onnx.TensorProto.INT8, -128, 127), "uint8": (np.uint8, onnx.TensorProto.UINT8, 0, 255)}


def planned_node(by_name: dict, name: str) -> onnx.NodeProto:
    node = by_name.get(name)
    if node is None:
        raise PtqError(f"plan: node {name!r} is not in the model")
    return node


def check_activation(t: str, aq: ActivationQuant) -> None:
    if aq.tensor != t:
        raise PtqError(f"plan: activations[{t!r}] describes tensor {aq.tensor!r}")
    if aq.dtype not in QUANT_DTYPES:
        raise PtqError(f"plan: activation {t!r} has dtype {aq.dtype!r}; allowed: int8, uint8")
    _, _, lo, hi = QUANT_DTYPES[aq.dtype]
    if not (np.isfinite(aq.scale) and aq.scale > 0):
        raise PtqError(f"plan: activation {t!r} has scale {aq.scale!r}; it must be finite and > 0")
    if not lo <= int(aq.zero_point) <= hi:
        raise PtqError(f"plan: activation {t!r} has zero point {aq.zero_point} outside the {aq.dtype} range [{lo}, {hi}]")


def _planned_initializer(node: onnx.NodeProto, item: WeightQuant | BiasQuant, inits: dict, where: str) -> onnx.TensorProto:
    """The initializer a planned weight or bias replaces, once the node is seen to read it there."""
    if item.input_index >= len(node.input) or node.input[item.input_index] != item.tensor:
        raise PtqError(f"{where}: input {item.input_index} of the node is not {item.tensor!r}")
    init = inits.get(item.tensor)
    if init is None:
        raise PtqError(f"{where}: not an initializer of the model")
    return init


def check_weight(node: onnx.NodeProto, wq: WeightQuant, inits: dict) -> None:
    where = f"plan: weight {wq.tensor!r} of node {wq.node!r}"
    init = _planned_initializer(node, wq, inits, where)
    if init.data_type != onnx.TensorProto.FLOAT:
        raise PtqError(f"{where}: the weight is {onnx.TensorProto.DataType.Name(init.data_type)}; only float32 weights are quantized")
    q = np.asarray(wq.q)
    if q.dtype not in (np.int8, np.uint8):
        raise PtqError(f"{where}: codes have dtype {q.dtype}; allowed: int8, uint8")
    shape = tuple(int(d) for d in init.dims)
    if q.shape != shape:
        raise PtqError(f"{where}: codes have shape {q.shape}, the weight has {shape}")
    scale = np.asarray(wq.scale).reshape(-1)
    zero = np.asarray(wq.zero_point).reshape(-1)
    if len(zero) != len(scale):
        raise PtqError(f"{where}: {len(scale)} scales but {len(zero)} zero points")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise PtqError(f"{where}: scales must be finite and > 0")
    info = np.iinfo(q.dtype)
    if np.any(zero < info.min) or np.any(zero > info.max):
        raise PtqError(f"{where}: zero points outside the {q.dtype} range")
    if len(scale) > 1:
        if wq.axis is None or not -len(shape) <= wq.axis < len(shape):
            raise PtqError(f"{where}: {len(scale)} scales need a valid channel axis, got {wq.axis!r}")
        if shape[wq.axis] != len(scale):
            raise PtqError(f"{where}: {len(scale)} scales for axis {wq.axis} of size {shape[wq.axis]}")


def check_bias(node, bq: BiasQuant, inits: dict, plan: FullQuantPlan, weight_scale: dict) -> None:
    where = f"plan: bias {bq.tensor!r} of node {bq.node!r}"
    init = _planned_initializer(node, bq, inits, where)
    q = np.asarray(bq.q)
    shape = tuple(int(d) for d in init.dims)
    if q.shape != shape or len(shape) != 1:
        raise PtqError(f"{where}: codes have shape {q.shape}, the bias has {shape}")
    if q.dtype != np.int32:
        raise PtqError(f"{where}: codes have dtype {q.dtype}; a bias is int32")
    scale = np.asarray(bq.scale, np.float64).reshape(-1)
    if len(scale) not in (1, shape[0]):
        raise PtqError(f"{where}: {len(scale)} scales for {shape[0]} channels")
    # onnxruntime's fused kernels ignore the bias DQ's scale and use s_in * s_w: they must agree
    act = plan.activations.get(node.input[0])
    ws = weight_scale.get((bq.node, 1))
    if act is not None and ws is not None:
        expected = np.float64(np.float32(act.scale)) * ws.astype(np.float64)
        if len(expected) != len(scale) and len(scale) != 1 and len(expected) != 1:
            raise PtqError(f"{where}: {len(scale)} bias scales but {len(expected)} weight scales")
        if not np.allclose(scale, expected, rtol=1e-5, atol=0):
            raise PtqError(f"{where}: scale must equal input scale x weight scale (onnxruntime's integer kernels assume it)")


def plan_form(plan: FullQuantPlan):
    """The int8 form a plan's weights must follow: its own, or the portable one for a target that
    onnxruntime's CPU kernels run (a hand-written plan); None for other targets."""
    target = TARGETS.get(plan.target)
    if target is None or not target.ort_cpu_kernels:
        return None
    return get_form(plan.int8_form)


def check_form(wq: WeightQuant, plan: FullQuantPlan) -> None:
    """Refuse int8 codes that onnxruntime's non-VNNI kernels would saturate on (ptq_core.onnxgraph.cpu)."""
    form = plan_form(plan)
    q = np.asarray(wq.q)
    if form is None or form.weight_limit is None or q.dtype != np.int8 or not q.size:
        return
    lo, hi = int(q.min()), int(q.max())
    if max(-lo, hi) > form.weight_limit:
        raise PtqError(f"plan: weight {wq.tensor!r} of node {wq.node!r} has int8 codes in [{lo}, {hi}]; the "
                       f"{form.name} int8 form allows [-{form.weight_limit}, {form.weight_limit}] (larger codes are "
                       f"wrong on x86 CPUs without VNNI); set [ptqflow] int8_form=vnni to write them anyway")
