"""WEIGHT_QUANT planning: which weights to quantize, how, and what it costs.

The plan (``LayerDecision`` rows plus the encoded tensors) is separate from editing ONNX, so the
summary, reports and sweeps can reason about it without touching a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ptq_core.config import QuantConfig
from ptq_core.modes.weight.blocks import BLOCK_ELEMENTS, CosineSums, quantize_fixed
from ptq_core.modes.weight.mixed_bit import MixedBitResult, mixed_codes, search_step
from ptq_core.onnxgraph.load import initializer_array
from ptq_core.onnxgraph.sites import WeightSite, check_finite_weight, find_weight_sites
from ptq_core.quant import passes_gain_check
from ptq_core.storage.encoded import EncodedTensor, effective_bits
from ptq_core.storage.fixed_bit import encode_fixed
from ptq_core.storage.split_coding import encode_split


@dataclass(frozen=True)
class LayerDecision:
    """One row of the summary: what happened to one weight and why."""

    node: str
    op_type: str
    tensor: str
    shape: tuple[int, ...]
    quantized: bool
    reason: str  # why it was skipped, or how it was quantized
    bits: int = 0  # 1..16 fixed, 0 mixed
    granularity: str = ""  # "per-channel" | "per-layer"
    encoding: str = ""
    bytes_fp32: int = 0
    bytes_stored: int = 0
    effective_bits: float = 32.0
    step: float | None = None  # mixed bit: the step found
    weight_cosine: float | None = None


@dataclass(frozen=True)
class QuantizedWeight:
    """What the emitter needs to rebuild one float weight from its stored codes.

    w = ((codes - zero_point) * scale) [+ mean_corr], broadcast along ``axis``.
    """

    tensor: str
    shape: tuple[int, ...]
    axis: int | None
    encoded: EncodedTensor
    zero_point: np.ndarray  # float32, per channel (or one value)
    scale: np.ndarray  # float32, already multiplied by varCorr where the runtime applies it
    mean_corr: np.ndarray | None  # float32 or None when the runtime ignores it
    nodes: tuple[str, ...]  # consumer nodes that read the quantized weight
    group_index: int | None = None  # position in the plan's entropy group (then ``encoded`` is unused)
    graph: str = ""  # the subgraph holding the weight ("" = main graph; graph.subgraphs)
    layout: object | None = None  # grouped.GroupedLayout: codes stored as [rows, padded], params per group


class DecisionRows:
    """Views over a plan's ``decisions`` (shared by the weight-only and dynamic plans)."""

    decisions: list[LayerDecision]

    @property
    def quantized(self) -> list[LayerDecision]:
        return [d for d in self.decisions if d.quantized]

    @property
    def skipped(self) -> list[LayerDecision]:
        return [d for d in self.decisions if not d.quantized]


@dataclass
class WeightPlan(DecisionRows):
    decisions: list[LayerDecision] = field(default_factory=list)
    weights: list[QuantizedWeight] = field(default_factory=list)
    init_scale: float | None = None
    group: object | None = None  # ptq_core.storage.entropy_group.EntropyGroup shared by the mixed-bit weights

    def without_codes(self) -> WeightPlan:
        """The rows alone, for the summary once the model is written: the encoded weights (a quarter of
        the FP32 weights at 8 bit) need not stay in memory while onnxruntime runs both models."""
        return WeightPlan(decisions=list(self.decisions), init_scale=self.init_scale)


def _skip(site: WeightSite, reason: str) -> LayerDecision:
    return LayerDecision(site.node, site.op_type, site.tensor, site.shape, False, reason, bytes_fp32=site.size * 4,
                         bytes_stored=site.size * 4)


def skip_reason(site: WeightSite, cfg: QuantConfig) -> str | None:
    """Why a weight stays float under the common filters (skip_quant_node, sizes), or None."""
    common = cfg.common
    if site.node in common.skip_quant_node:
        return "skip_quant_node"
    if site.size <= common.min_quant_weight_size:
        return f"{site.size} elements <= min_quant_weight_size {common.min_quant_weight_size}"
    if site.conv_like and site.channels <= common.min_quant_weight_channel:
        return f"{site.channels} channels <= min_quant_weight_channel {common.min_quant_weight_channel}"
    return None


def _fixed(w: np.ndarray, bits: int, axis: int | None, cfg: QuantConfig, block_elements: int = BLOCK_ELEMENTS):
    """Encoded codes, zero points, scales (times the applied varCorr), meanCorr and the weight cosine.

    ``ptq_core.modes.weight.blocks`` does the float work a block of channels at a time, so a large weight
    costs its codes plus one block, and the result is the same bytes for any ``block_elements``."""
    fixed = quantize_fixed(w, bits, axis, cfg.weight.bias_correction and axis is not None, block_elements)
    params = fixed.params
    enc = encode_fixed(fixed.codes, bits, params.zero_point, enable_encode=cfg.common.enable_encode)
    applied = fixed.var_corr is not None
    scale = (params.scale * (fixed.var_corr if applied else 1.0)).astype(np.float32)
    mean = fixed.mean_corr.astype(np.float32) if applied and np.any(fixed.mean_corr != 0) else None
    return enc, params.zero_point.astype(np.float32), scale, mean, fixed.cosine


GROUPED_OPS = ("MatMul", "Gemm", "Gather")


def _hessian_fits(hessian: np.ndarray, site: WeightSite) -> bool:
    """The Hessian is over the weight's input features (an activation whose last axis is not the
    contraction, e.g. a broadcast MatMul, gives one of another size); a Conv's over its patch columns."""
    if site.op_type == "Conv":
        from ptq_core.modes.weight.conv_patches import conv_columns

        return len(site.shape) >= 3 and hessian.shape == (conv_columns(site),) * 2
    return len(site.shape) == 2 and hessian.shape == (site.shape[1 - site.axis],) * 2


def _grouped(w: np.ndarray, site: WeightSite, bits: int, group: int, cfg: QuantConfig, hessian) -> _Coded:
    """Group-wise codes (``[ptqflow] group_size``), by GPTQ where the weight has a Hessian."""
    from ptq_core.modes.weight import grouped
    from ptq_core.modes.weight.gptq import gptq_or_nearest, rtn
    from ptq_core.quant import code_dtype, cosine, qrange

    layout = grouped.GroupedLayout(tuple(site.shape), site.axis, group)
    rows = grouped.rows_of(w, site.axis).astype(np.float64)
    coded = gptq_or_nearest(rows, hessian, bits, group) if hessian is not None else rtn(rows, bits, group)
    codes = grouped.stored_codes(coded, layout).astype(code_dtype(*qrange(bits)))
    zp, scale = coded.zero_point.reshape(-1), coded.scale.reshape(-1)
    enc = encode_fixed(codes, bits, zp, enable_encode=cfg.common.enable_encode)
    how = f"{bits}-bit group {group}" + (" GPTQ" if hessian is not None else "")
    return _Coded(enc, zp.astype(np.float32), scale.astype(np.float32), None,
                  cosine(w, grouped.dequantized(coded, layout)), bits, how, site.axis, f"group {group}", layout=layout)


def _gptq(w: np.ndarray, site: WeightSite, bits: int, axis: int | None, cfg: QuantConfig, hessian: np.ndarray):
    """GPTQ's codes (docs/gptq.md) in the layout and storage of fixed-bit codes; no variance correction."""
    from ptq_core.modes.weight.gptq import gptq_or_nearest
    from ptq_core.quant import code_dtype, cosine, qrange

    moved = np.moveaxis(w, site.axis, 0)
    rows = moved.reshape(moved.shape[0], -1)  # [output channels, input features]; a Conv's: C·k1·k2 columns
    coded = gptq_or_nearest(rows.astype(np.float64), hessian, bits, per_row=axis is not None)
    codes = np.moveaxis(coded.codes.reshape(moved.shape), 0, site.axis).astype(code_dtype(*qrange(bits)))
    keep = slice(None) if axis is not None else slice(0, 1)
    zp, scale = coded.zero_point[keep, 0], coded.scale[keep, 0]
    enc = encode_fixed(codes, bits, zp, enable_encode=cfg.common.enable_encode)
    decoded = np.moveaxis(coded.dequantized().reshape(moved.shape), 0, site.axis)
    return enc, zp.astype(np.float32), scale.astype(np.float32), None, cosine(w, decoded)


def _grouped_mixed(w: np.ndarray, site: WeightSite, group: int, target: float, hessian) -> _Coded:
    """Mixed bit per group (docs/gptq.md): a float16 step per row and group for a relative error of about
    ``target`` in each group, unbounded codes stored by the mixed-bit coder, by GPTQ where the weight has a
    Hessian (row by row never worse than rounding on the same steps)."""
    from ptq_core.modes.weight import grouped
    from ptq_core.modes.weight.gptq import GroupedCodes, gptq_on_step, row_errors
    from ptq_core.modes.weight.mixed_bit import group_steps
    from ptq_core.quant import cosine

    layout = grouped.GroupedLayout(tuple(site.shape), site.axis, group)
    rows = grouped.rows_of(w, site.axis).astype(np.float32)
    steps = group_steps(rows, group, target)
    index = np.arange(layout.columns) // group
    codes = np.floor(rows / steps[:, index] + np.float32(0.5)).astype(np.int32)
    how = f"mixed bit group {group}"
    if hessian is not None and _hessian_fits(hessian, site) and not site.graph and site.op_type in ("MatMul", "Gemm"):
        ours = gptq_on_step(rows.astype(np.float64), hessian, steps, group_size=group)
        full = steps[:, index].astype(np.float64)
        keep = row_errors(rows - ours * full, hessian) <= row_errors(rows - codes * full, hessian)
        codes = np.where(keep[:, None], ours, codes)
        how += " GPTQ"
    zero = np.zeros(steps.shape, np.int64)
    coded = GroupedCodes(codes, steps.astype(np.float64), zero, group, int(codes.min()), int(codes.max()))
    enc = encode_split(grouped.stored_codes(coded, layout))
    return _Coded(enc, zero.reshape(-1).astype(np.float32), steps.reshape(-1), None,
                  cosine(w, grouped.dequantized(coded, layout)), 0, how, site.axis, f"group {group}", layout=layout)


def _mixed_gptq(w: np.ndarray, site: WeightSite, result: MixedBitResult, hessian: np.ndarray):
    """Mixed bit with GPTQ's rounding: the step the search found, GPTQ's codes on that grid in the rows where
    they leave less output error on the calibration inputs than rounding to nearest on it (docs/gptq.md).
    Decoded as ``codes * step``: no whole-tensor variance correction, which would move what GPTQ minimised."""
    from ptq_core.modes.weight.gptq import gptq_on_step, row_errors

    moved = np.moveaxis(w, site.axis, 0)
    rows = moved.reshape(moved.shape[0], -1).astype(np.float64)  # a Conv's: C·k1·k2 columns
    step = np.float32(result.scale)
    ours = gptq_on_step(rows, hessian, result.scale)
    nearest = np.floor(rows.astype(np.float32) / step + np.float32(0.5)).astype(np.int32)
    keep = row_errors(rows - ours * float(step), hessian) <= row_errors(rows - nearest * float(step), hessian)
    codes = np.where(keep[:, None], ours, nearest).reshape(moved.shape)
    plain = MixedBitResult(result.scale, 1.0, 0.0, result.error, result.iterations, result.converged)
    return _mixed(w, plain, np.moveaxis(codes, 0, site.axis))


def _mixed(w: np.ndarray, result: MixedBitResult, codes: np.ndarray | None = None,
           block_elements: int = BLOCK_ELEMENTS):
    codes = mixed_codes(w, result) if codes is None else codes
    enc = encode_split(codes)
    scale = np.array([result.scale * result.var_corr], np.float32)
    mean = np.array([result.mean_corr], np.float32) if result.mean_corr != 0 else None
    sums, flat, ref = CosineSums(), codes.reshape(-1), w.reshape(-1)
    for start in range(0, flat.size, block_elements):
        part = flat[start : start + block_elements]
        sums.add(ref[start : start + block_elements],
                 part.astype(np.float64) * result.scale * result.var_corr + result.mean_corr)
    return enc, np.zeros(1, np.float32), scale, mean, sums.value()


def plan_weight_quant(
    model: onnx.ModelProto,
    cfg: QuantConfig,
    init_scale: float | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    base_dir: str | Path | None = None,
    hessians: dict[str, np.ndarray] | None = None,
) -> WeightPlan:
    """Decide and quantize every weight site of ``model`` under ``cfg`` (WEIGHT_QUANT).

    ``hessians`` (``quant_strategy=GPTQ``): weight tensor -> the Hessian of its input, for GPTQ's rounding
    (docs/gptq.md); the weights without one are rounded to nearest and say why.

    Weights left on disk (``prepare_model(..., load_data=False)``) are read one at a time from
    ``base_dir``, the model's folder, so memory holds one FP32 weight plus the packed results.
    """
    bits = cfg.common.bit_num
    target = init_scale if init_scale is not None else cfg.mixed.init_scale
    plan = WeightPlan(init_scale=target if bits == 0 else None)
    sites = find_weight_sites(model, inside_subgraphs=True)
    done: dict[tuple[str, str], QuantizedWeight] = {}
    for index, site in enumerate(sites):
        if progress:
            progress(index, len(sites), site.node)
        reason = skip_reason(site, cfg)
        if reason:
            plan.decisions.append(_skip(site, reason))
            continue
        key = (site.graph, site.tensor)
        if key in done:
            done[key] = _share(plan, done[key], site)
            continue
        w = initializer_array(model, site.tensor, base_dir, site.graph).astype(np.float32, copy=False)
        check_finite_weight(w, site.tensor, site.node, site.op_type)
        coded = _code_site(w, site, cfg, target, hessians)
        if isinstance(coded, str):  # the per-channel gain check said no
            plan.decisions.append(_skip(site, coded))
            continue
        done[key] = QuantizedWeight(site.tensor, site.shape, coded.axis, coded.enc, coded.zp, coded.scale, coded.mean,
                                    (site.node,), graph=site.graph, layout=coded.layout)
        plan.decisions.append(_coded_decision(site, coded))
    if progress:
        progress(len(sites), len(sites), "")
    plan.weights = list(done.values())
    if bits == 0:
        _group_mixed(plan)
    return plan


@dataclass
class _Coded:
    """One weight's codes and how they were made (what its LayerDecision reports)."""

    enc: EncodedTensor
    zp: np.ndarray
    scale: np.ndarray
    mean: np.ndarray | None
    weight_cosine: float
    bits: int  # 0: mixed bit
    how: str
    axis: int | None
    granularity: str
    step: float | None = None
    layout: object | None = None  # grouped.GroupedLayout for group-wise codes


def _code_site(w: np.ndarray, site: WeightSite, cfg: QuantConfig, target: float,
               hessians: dict[str, np.ndarray] | None = None) -> _Coded | str:
    """The codes of one weight: mixed bit (``bit_num=0``), GPTQ or fixed bits; a string says why it stays float."""
    bits = cfg.common.bit_num
    shared_matmul = site.users > 1 and site.op_type in ("MatMul", "Gemm")
    per_channel = cfg.weight.per_channel and not shared_matmul
    axis = site.axis if per_channel else None
    granularity = "per-channel" if per_channel else "per-layer"
    if hessians is not None and site.tensor in hessians and not _hessian_fits(hessians[site.tensor], site):
        hessians = {k: v for k, v in hessians.items() if k != site.tensor}  # rounded to nearest, saying why
    group = cfg.ptqflow.group_size
    if bits == 0 and group and len(site.shape) == 2 and site.op_type in GROUPED_OPS:
        return _grouped_mixed(w, site, group, target, None if hessians is None else hessians.get(site.tensor))
    if bits == 0:
        result = search_step(w, target)
        if result is None:
            return _Coded(*_fixed(w, 8, axis, cfg), 0, "mixed-bit search failed; 8-bit fallback", axis, granularity)
        if hessians is None:
            return _Coded(*_mixed(w, result), 0, "mixed bit", None, "per-layer", result.scale)
        if site.graph or site.tensor not in hessians:
            from ptq_core.modes.weight.gptq import why_not_gptq

            return _Coded(*_mixed(w, result), 0, f"mixed bit ({why_not_gptq(site)})", None, "per-layer", result.scale)
        return _Coded(*_mixed_gptq(w, site, result, hessians[site.tensor]), 0, "mixed bit GPTQ", None, "per-layer",
                      result.scale)
    if group and 2 <= bits <= 8 and len(site.shape) == 2 and site.op_type in GROUPED_OPS:
        return _grouped(w, site, bits, group, cfg, None if hessians is None else hessians.get(site.tensor))
    if hessians is not None:
        from ptq_core.modes.weight.gptq import why_not_gptq

        if site.graph or site.tensor not in hessians:
            return _Coded(*_fixed(w, bits, axis, cfg), bits, f"{bits}-bit {granularity} ({why_not_gptq(site)})", axis,
                          granularity)
        return _Coded(*_gptq(w, site, bits, axis, cfg, hessians[site.tensor]), bits, f"{bits}-bit {granularity} GPTQ",
                      axis, granularity)
    if per_channel and cfg.weight.bias_correction:
        per_ch = site.size // max(1, site.channels)
        if not passes_gain_check(bits, per_ch):
            return f"per-channel gain check: {per_ch} elements per channel <= {256 // (32 - bits)}"
    return _Coded(*_fixed(w, bits, axis, cfg), bits, f"{bits}-bit {granularity}", axis, granularity)


def _coded_decision(site: WeightSite, c: _Coded) -> LayerDecision:
    zp_bytes = c.zp.size * (1 if c.bits and c.bits <= 8 else 2) if np.any(c.zp) else 0
    scale_bytes = c.scale.size * 2 if c.layout is not None else c.scale.nbytes  # grouped scales are float16
    stored = c.enc.nbytes + zp_bytes + scale_bytes + (c.mean.nbytes if c.mean is not None else 0)
    return LayerDecision(site.node, site.op_type, site.tensor, site.shape, True, c.how, c.bits, c.granularity,
                         c.enc.kind, site.size * 4, stored, effective_bits(c.enc), c.step, c.weight_cosine)


def _share(plan: WeightPlan, shared: QuantizedWeight, site: WeightSite) -> QuantizedWeight:
    """A second reader of an already quantized weight: the same codes, one more node decoding them."""
    first = next(d for d in plan.decisions if d.tensor == site.tensor and d.quantized and d.node.startswith(site.graph))
    plan.decisions.append(
        LayerDecision(site.node, site.op_type, site.tensor, site.shape, True, f"shares weight with {first.node}",
                      first.bits, first.granularity, first.encoding, 0, 0, first.effective_bits, first.step,
                      first.weight_cosine))
    return QuantizedWeight(**{**shared.__dict__, "nodes": shared.nodes + (site.node,)})


SPLIT_CHAIN_BYTES = 2800  # graph bytes of one per-tensor split decode chain (measured, short prefix)


def _group_mixed(plan: WeightPlan) -> None:
    """Entropy-code all mixed-bit codes together when that beats per-tensor split coding.

    converter_lite entropy-codes mixed-bit weights (FSE); one Huffman group over all tensors
    (their codes share a distribution, since every tensor has the same relative error) gets
    within ~0.07 bit/weight of the entropy and still decodes with constant-folded standard ops.
    """
    from ptq_core.storage.decode_numpy import decode
    from ptq_core.storage.entropy_decode_ops import graph_nbytes, group_nodes
    from ptq_core.storage.entropy_encode import encode_group

    mixed = [i for i, w in enumerate(plan.weights) if w.axis is None and np.all(w.zero_point == 0)
             and w.encoded.kind in ("split", "bitpack", "index", "sparse", "raw")
             and any(d.tensor == w.tensor and d.bits == 0 and d.step is not None for d in plan.decisions)]
    if not mixed:
        return
    codes = [decode(plan.weights[i].encoded) for i in mixed]
    group = encode_group(codes)
    nodes, inits, _ = group_nodes(group, "q_g_", 17)
    group_total = group.nbytes + graph_nbytes(nodes, inits, group.nbytes)
    split_total = sum(plan.weights[i].encoded.nbytes + SPLIT_CHAIN_BYTES for i in mixed)
    if group_total >= split_total:
        return
    plan.group = group
    bits = group.bits_per_code()
    for k, i in enumerate(mixed):
        plan.weights[i] = QuantizedWeight(**{**plan.weights[i].__dict__, "group_index": k})
    grouped = {plan.weights[i].tensor for i in mixed}
    for j, d in enumerate(plan.decisions):
        if d.tensor in grouped and d.quantized and d.bytes_fp32:
            n = d.bytes_fp32 // 4
            overhead = d.bytes_stored - int(np.ceil(d.effective_bits * n / 8))
            plan.decisions[j] = LayerDecision(**{**d.__dict__, "encoding": "huffman group", "effective_bits": bits,
                                                 "bytes_stored": int(np.ceil(bits * n / 8)) + max(0, overhead)})
