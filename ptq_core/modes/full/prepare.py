"""FULL_QUANT planning: prepare the graph, choose the int8 region, turn statistics into a plan.

Order (each step a pure function the flow caches): ``prepare_full_model`` (load, name, upgrade
opset, fold BatchNorm and constants as converter_lite's fusion passes do) -> ``placement`` ->
calibration statistics of ``placement.source`` tensors -> ``build_plan`` -> optional
``bias_correction`` pass -> ``emit_qdq``.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.config import QuantConfig
from ptq_core.errors import ModelError
from ptq_core.modes.full.placement import QdqPlacement, place_qdq
from ptq_core.modes.full.plan import (
    ActivationQuant,
    BiasQuant,
    FullQuantPlan,
    WeightQuant,
)
from ptq_core.modes.full.targets import BIAS_CORRECTED_OPS, Target, get_target
from ptq_core.onnxgraph.load import assign_node_names, prepare_model, upgrade_opset
from ptq_core.onnxgraph.sites import check_finite_weight
from ptq_core.onnxgraph.walk import node_bodies
from ptq_core.onnxgraph.weight_roles import WEIGHT_OPS
from ptq_core.quant import round_half_away
from ptq_core.stats.observer_base import ActivationRange

INT32_HALF = 0.5 * np.iinfo(np.int32).max


def prepare_full_model(path: str | Path, model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The FP32 graph quantization works on: converter_lite quantizes after its fusion passes.

    ``model``: ``prepare_model(path)`` when the caller already holds it (a sweep's shared copy, which
    is only read here: upgrade_opset converts a copy and the result is a fresh load).

    onnxruntime's BASIC level (only standard ONNX ops) folds BatchNorm into Conv, folds constants
    and removes identities, which is what converter_lite's ConvBatchNormFusion and const-fold
    passes do; node names of the surviving Conv/MatMul nodes are kept, so ``skip_quant_node`` and
    reports still use the user's names.
    """
    from ptq_core.onnxgraph.session import make_session

    model = upgrade_opset(prepare_model(path) if model is None else model)
    with tempfile.TemporaryDirectory(prefix="ptq-prep-") as tmp:
        src = os.path.join(tmp, "in.onnx")
        dst = os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        try:
            make_session(src, optimization="basic", optimized_path=dst)
        except ModelError as exc:
            raise ModelError(f"{path}: {exc}") from None
        optimized = onnx.load(dst)
    restore_fused_names(optimized)
    return assign_node_names(optimized)


_FUSED_NAME = re.compile(r"^[A-Za-z]+Fusion_(?:W_|BN_B_|B_)?(.+)$")


def restore_fused_names(model: onnx.ModelProto) -> None:
    """Give initializers onnxruntime's fusions renamed (``ConvBnFusion_W_conv1_weights``) their own name
    back (``conv1_weights``) where nothing else holds it, in place: summaries and reports show the
    user's tensor names, and the quantized file does not store the prefix in every reference."""
    graph = model.graph
    if any(node_bodies(n) for n in graph.node):
        return  # subgraphs may read the outer names; left as they are
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        taken.update(node.input)
        taken.update(node.output)
    rename = {}
    for tensor in graph.initializer:
        match = _FUSED_NAME.match(tensor.name)
        if match and match.group(1) not in taken:
            rename[tensor.name] = match.group(1)
            taken.add(match.group(1))
    if not rename:
        return
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for value in graph.input:
        value.name = rename.get(value.name, value.name)


def placement(model: onnx.ModelProto, cfg: QuantConfig) -> tuple[Target, QdqPlacement]:
    target = get_target(cfg.full.target_device, cfg.ptqflow.int8_form)
    return target, place_qdq(model, target, skip=skip_names(model, cfg.common.skip_quant_node))


def skip_names(model: onnx.ModelProto, skip: tuple[str, ...]) -> tuple[str, ...]:
    """``skip_quant_node`` in the prepared graph: a node onnxruntime fused keeps the user's name with the
    fusion appended (``MatMul.0/MatMulAddFusion``), and skipping ``MatMul.0`` must still skip it."""
    wanted = set(skip)
    fused = tuple(n.name for n in model.graph.node if "/" in n.name
                  and n.name.rsplit("/", 1)[1].endswith("Fusion") and n.name.rsplit("/", 1)[0] in wanted)
    return tuple(skip) + fused


def observed_tensors(place: QdqPlacement) -> tuple[str, ...]:
    """The tensors whose statistics the plan needs (several Q/DQ tensors can share one source)."""
    return tuple(sorted(set(place.source[t] for t in place.tensors)))


def activation_range(r: ActivationRange, observed: tuple[float, float] | None, target: Target,
                     keep_observed: bool = False) -> tuple[float, float]:
    """The (lo, hi) a tensor's params are encoded from; two deliberate departures from converter_lite's KL.

    * ``keep_observed`` tensors keep their observed min/max (:func:`keeps_observed_range` says which):
      a model input is data the user normalized, and KL's search misfires on bounded, spiky input
      distributions (a binarized text image put the digits example's input threshold at 0.12 of a
      [-1, 1] range and its accuracy at 52 %); a bounded op's output and a tensor with too few values
      for the histogram (an orientation classifier's probabilities were clipped to 0.065 of their range).
    * KL is symmetric in converter_lite; for a tensor that never went negative (post-ReLU) a
      symmetric range wastes half of an asymmetric grid, so we keep KL's threshold from 0.
    """
    lo, hi = r.lo, r.hi
    if observed is None:  # only observers that keep the observed range (KL) pass one
        return lo, hi
    if keep_observed:
        return observed
    if observed[0] >= 0 and not target.activation_symmetric:
        lo = 0.0
    return lo, hi


#: ops whose output range is fixed by definition: clipping it only loses what the op guarantees
BOUNDED_OUTPUT_OPS = frozenset({"Softmax", "Sigmoid", "HardSigmoid", "Tanh"})
#: values per histogram bin (on average) below which KL's threshold is noise: 16 x 2048 values in all
KL_MIN_VALUES_PER_BIN = 16


def keeps_observed_range(observer, tensor: str, graph_inputs: set[str], producers: dict[str, str]) -> bool:
    """Whether a KL tensor is encoded from its observed min/max instead of KL's threshold (departures.md)."""
    from ptq_core.stats.kl_observer import KL_BINS

    if tensor in graph_inputs or producers.get(tensor) in BOUNDED_OUTPUT_OPS:
        return True
    values = getattr(observer, "values", None)
    return values is not None and values < KL_MIN_VALUES_PER_BIN * KL_BINS


def check_weights(model: onnx.ModelProto, target, place) -> None:
    """Every weight the plan will quantize is finite: a NaN weight makes the FP32 statistics pass
    non-finite, and the error would otherwise blame the calibration data."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in place.nodes or node.op_type not in target.compute_ops:
            continue
        for role in WEIGHT_OPS[node.op_type]:
            name = node.input[role.input_index] if role.input_index < len(node.input) else ""
            if name in inits:
                check_finite_weight(numpy_helper.to_array(inits[name]), name, node.name, node.op_type)


def build_plan(model: onnx.ModelProto, cfg: QuantConfig, target: Target, place: QdqPlacement,
               observers: dict) -> FullQuantPlan:
    """Statistics -> activation params, int8 weights (target rules) and int32 biases (§8.5–8.6)."""
    qmin, qmax = target.activation_qrange()
    activations: dict[str, ActivationQuant] = {}
    graph_inputs = {i.name for i in model.graph.input}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for t in place.tensors:
        source = place.source[t]
        obs = observers[source]
        r = obs.finalize(qmin, qmax, target.activation_symmetric)
        state = obs.to_state() if obs.keeps_observed_range else {}
        observed = (float(state["min"]), float(state["max"])) if state else None
        keep = observed is not None and keeps_observed_range(obs, source, graph_inputs, producers)
        lo, hi = activation_range(r, observed, target, keep)
        scale, zp = target.activation_params(lo, hi)
        activations[t] = ActivationQuant(t, scale, zp, target.activation_dtype)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    weights: list[WeightQuant] = []
    biases: list[BiasQuant] = []
    for name in place.nodes:
        node = by_name[name]
        if node.op_type not in target.compute_ops:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        node_weights = {}
        for role in WEIGHT_OPS[node.op_type]:
            idx = role.input_index
            if idx < len(node.input) and node.input[idx] in inits:
                w = inits[node.input[idx]].astype(np.float32)  # finite: check_weights ran before statistics
                q, s, z, axis = target.quantize_weight(w, node.op_type, idx, attrs, cfg.full.per_channel)
                wq = WeightQuant(name, idx, node.input[idx], q, s, z, axis)
                weights.append(wq)
                node_weights[idx] = wq
        bias = _bias(node, inits, activations, node_weights, target)
        if bias is not None:
            bias, fixed_weight = bias
            biases.append(bias)
            if fixed_weight is not None:
                weights = [fixed_weight if (w.node, w.input_index) == (name, 1) else w for w in weights]
    form = target.int8_form
    return FullQuantPlan(target=target.name, nodes=place.nodes, activations=activations, weights=weights,
                         biases=biases, kept_float=dict(place.kept_float), int8_form=form.name if form else None)


def _bias(node, inits, activations, node_weights, target: Target):
    """int32 bias = round(b / (s_in · s_w)), with converter_lite's overflow guard (§8.6)."""
    if not target.quantize_bias or node.op_type not in BIAS_CORRECTED_OPS or len(node.input) < 3:
        return None
    name = node.input[2]
    if name not in inits or node.input[0] not in activations or 1 not in node_weights:
        return None
    b = inits[name].astype(np.float64).reshape(-1)
    wq = node_weights[1]
    s_in = np.float64(np.float32(activations[node.input[0]].scale))
    s_w = wq.scale.astype(np.float64)
    if s_w.size not in (1, b.size):
        raise ModelError(f"node {node.name!r}: bias has {b.size} values but the weight has {s_w.size} scales")
    bias_scale = s_in * s_w
    bias_scale = np.where(bias_scale == 0, 1.0, bias_scale)
    ratio = np.abs(b / bias_scale)
    fixed = None
    if np.any(ratio >= INT32_HALF):
        # Raise the weight scale so the bias fits; unlike converter_lite we requantize the weight
        # ints too (its guard edits the scale only, a latent bug, §8.6/§13.8).
        need = np.abs(b) / (s_in * INT32_HALF)
        s_new = np.maximum(np.broadcast_to(s_w, b.shape) if s_w.size > 1 else np.full(1, s_w[0]),
                           need if s_w.size > 1 else need.max(initial=0))
        w_float = wq.dequantized(np.float64)
        shape = [1] * w_float.ndim
        if wq.axis is not None:
            shape[wq.axis] = -1
        lo, hi = target.weight_qrange(wq.axis is not None)
        q = np.clip(round_half_away(w_float / s_new.reshape(shape)), lo, hi).astype(wq.q.dtype)
        fixed = replace(wq, q=q, scale=s_new.astype(np.float32), zero_point=np.zeros_like(wq.zero_point))
        s_w = s_new
        bias_scale = s_in * s_w
    bias_scale32 = bias_scale.astype(np.float32)
    q = round_half_away(b / bias_scale32.astype(np.float64)).astype(np.int32)
    return BiasQuant(node.name, 2, name, q, bias_scale32), fixed


# ---------------------------------------------------------------------------------------------
# bias correction (§8.7), as a shadow graph run over the calibration set


def correctable_nodes(model: onnx.ModelProto, plan: FullQuantPlan, skip: tuple[str, ...]) -> list[str]:
    """Quantized Conv and Gemm nodes (converter_lite corrects Conv only; Gemm has a bias slot too)."""
    by_name = {n.name: n for n in model.graph.node}
    weighted = {w.node for w in plan.weights if w.input_index == 1}
    return [n for n in plan.nodes if n in weighted and n not in skip and by_name[n].op_type in BIAS_CORRECTED_OPS
            and by_name[n].input[0] in plan.activations]


def apply_bias_correction(model: onnx.ModelProto, plan: FullQuantPlan, diffs: dict[str, np.ndarray]) -> FullQuantPlan:
    """int32 bias_c += round(diff_c / bias_scale_c), skipped where it would leave ±0.6·INT32_MAX (§8.7).

    A node without a bias gets one: the float diff quantized with s_in · s_w.
    """
    by_name = {n.name: n for n in model.graph.node}
    biases = {b.node: b for b in plan.biases}
    weights = {(w.node, w.input_index): w for w in plan.weights}
    new_biases = []
    limit = 0.6 * np.iinfo(np.int32).max
    for b in plan.biases:
        if b.node not in diffs:
            new_biases.append(b)
            continue
        delta = round_half_away(diffs[b.node] / b.scale.astype(np.float64))
        updated = b.q.astype(np.float64) + delta
        ok = np.abs(updated) < limit
        q = np.where(ok, updated, b.q).astype(np.int32)
        new_biases.append(replace(b, q=q))
    if not get_target(plan.target).quantize_bias:
        return replace(plan, biases=new_biases)  # float biases are corrected in the model instead
    for name, diff in diffs.items():
        if name in biases:
            continue
        node = by_name[name]
        w = weights.get((name, 1))
        if w is None or node.input[0] not in plan.activations:
            continue
        s_in = np.float64(np.float32(plan.activations[node.input[0]].scale))
        scale = (s_in * w.scale.astype(np.float64)).astype(np.float32)
        scale = np.where(scale == 0, np.float32(1.0), scale)
        q = round_half_away(diff / scale.astype(np.float64)).astype(np.int32)
        new_biases.append(BiasQuant(name, 2, f"{name}_added_bias", q, scale))
    return replace(plan, biases=new_biases)
