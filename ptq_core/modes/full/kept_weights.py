"""Weights of the nodes the latency guard keeps in FP32, stored as 8-bit codes all the same.

The guard keeps a node FP32 because onnxruntime's int8 kernel for it is slower on this CPU, not because
its weights cannot take 8 bits. Storing those weights as WEIGHT_QUANT does (8-bit codes and a constant
decode chain that onnxruntime folds back into a float tensor when the session is created) keeps the
FP32 kernel and its speed while the file stays about a quarter of the FP32 size. Nodes kept FP32 for
accuracy (``skip_quant_node``, ``--max-drop``) keep their float weights.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_core.config import QuantConfig
from ptq_core.onnxgraph.load import initializer_array
from ptq_core.onnxgraph.sites import find_weight_sites


@dataclass(frozen=True)
class StoredWeight:
    """One kept node's weight as stored: what the summary says about it."""

    node: str
    tensor: str
    bytes_fp32: int
    bytes_stored: int
    weight_cosine: float


def store_kept_weights(model: onnx.ModelProto, nodes: set[str], cfg: QuantConfig) -> tuple[onnx.ModelProto,
                                                                                             list[StoredWeight]]:
    """``model`` (the emitted QDQ model) with the float weights read only by ``nodes`` stored as 8-bit codes
    (symmetric, per channel on the weight's output axis); unchanged when there are none."""
    from ptq_core.modes.weight.emit import emit_weight_only
    from ptq_core.modes.weight.plan import QuantizedWeight, WeightPlan
    from ptq_core.quant import cosine as _cosine
    from ptq_core.quant import dequantize, quantize, weight_params
    from ptq_core.storage.fixed_bit import encode_fixed

    consumers: dict[str, set[str]] = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].add(node.name)
    plan = WeightPlan()
    stored: list[StoredWeight] = []
    done: set[str] = set()
    for site in find_weight_sites(model):
        if site.node not in nodes or site.tensor in done or not consumers[site.tensor] <= nodes:
            continue
        done.add(site.tensor)
        w = initializer_array(model, site.tensor).astype(np.float32, copy=False)
        if not np.isfinite(w).all():
            continue  # left float: the guard's nodes are not the place to refuse a model
        # symmetric per channel (zero point 0, [-127, 127]) as the int8 weights are: the decode chain is a
        # Cast and a Mul, with no per-channel offset to store
        params = weight_params(w, 8, site.axis, symmetric=True, limits=(-127, 127))
        codes = quantize(w, params)
        zp = np.zeros(len(params.scale), np.float32)
        enc = encode_fixed(codes, 8, zp, enable_encode=cfg.common.enable_encode)
        scale = params.scale.astype(np.float32)
        cosine = _cosine(w, dequantize(codes, params))
        plan.weights.append(QuantizedWeight(site.tensor, site.shape, site.axis, enc, zp, scale, None,
                                            tuple(sorted(consumers[site.tensor]))))
        extra = scale.nbytes
        for user in sorted(consumers[site.tensor]):
            stored.append(StoredWeight(user, site.tensor, site.size * 4, enc.nbytes + extra, float(cosine)))
    if not plan.weights:
        return model, []
    return emit_weight_only(model, plan), stored
