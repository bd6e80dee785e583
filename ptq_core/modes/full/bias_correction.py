"""Bias correction (docs/converter-lite.md §8.7) from patch means, without running the layers twice.

converter_lite's correction of a Conv is, per output channel c, the mean over samples and output
positions of ``conv(x, W) - conv(fq(x), Wq)``: the FP32 layer against the same layer fed with its
input fake-quantized by its own input parameters and carrying the dequantized int8 weight. Both
are linear in their input, so that mean is

    sum over (ci, kh, kw) of  W[c, ci, kh, kw] * Mx[ci, kh, kw]  -  Wq[c, ci, kh, kw] * Mq[ci, kh, kw]

where ``Mx[ci, kh, kw]`` is the mean of the zero-padded input at the positions that kernel tap
(kh, kw) reads, over every output position: the mean row of the im2col matrix, a "patch mean". The
model that gathers statistics for it therefore keeps the FP32 layers only and adds, per corrected
node, a strided Slice and a GlobalAveragePool per kernel tap (of ``x`` and of ``DQ(Q(x))``): a few
copies of the input instead of a second convolution, on shapes that may be dynamic. For Gemm the
patch mean is the mean row of A. The final contraction with W and Wq is done here in float64.

A node whose padding cannot be written down without the input's size (``auto_pad=SAME_*`` on a
tensor without a static shape) is corrected the direct way instead: a shadow copy of the layer,
fed ``DQ(Q(x))`` with the dequantized weight, and the mean of the two outputs' difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.modes.full.plan import FullQuantPlan

_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class PatchProbe:
    """Where one node's patch means come out of the statistics model, and how to contract them."""

    node: str
    x_output: str  # (N, C, taps, 1) means of the FP32 input, tap-major as the weight's trailing dims
    q_output: str  # the same for DQ(Q(x))
    kind: str  # "conv" | "gemm"


@dataclass(frozen=True)
class ShadowProbe:
    """The direct way for one node: its FP32 output and its shadow's output."""

    node: str
    reference: str
    shadow: str


class PatchMeans:
    """Running sum over rounds of the per-round (batch-mean) patch means of x and DQ(Q(x)); merges by
    addition, so workers fold their rounds and the tree merge adds them up."""

    def __init__(self) -> None:
        self.x: np.ndarray | None = None
        self.q: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray, q: np.ndarray) -> None:
        mx, mq = x.astype(np.float64).mean(axis=0), q.astype(np.float64).mean(axis=0)
        self.x = mx if self.x is None else self.x + mx
        self.q = mq if self.q is None else self.q + mq
        self.count += 1

    def merge(self, other: "PatchMeans") -> "PatchMeans":
        out = PatchMeans()
        for name in ("x", "q"):
            parts = [v for v in (getattr(self, name), getattr(other, name)) if v is not None]
            setattr(out, name, sum(parts) if parts else None)
        out.count = self.count + other.count
        return out


class ChannelMeanDiff:
    """Running per-channel sum of (FP32 - shadow) over rounds (batch-mean per round); merges by addition."""

    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.count = 0

    def update(self, reference: np.ndarray, shadow: np.ndarray) -> None:
        diff = reference.astype(np.float64) - shadow.astype(np.float64)
        axis = 1 if diff.ndim >= 2 else 0
        per_channel = np.moveaxis(diff, axis, 0).reshape(diff.shape[axis], -1).mean(axis=1)
        self.sum = per_channel if self.sum is None else self.sum + per_channel
        self.count += 1

    def merge(self, other: "ChannelMeanDiff") -> "ChannelMeanDiff":
        out = ChannelMeanDiff()
        parts = [x for x in (self.sum, other.sum) if x is not None]
        out.sum = sum(parts) if parts else None
        out.count = self.count + other.count
        return out


def new_accumulator(probe) -> PatchMeans | ChannelMeanDiff:
    return PatchMeans() if isinstance(probe, PatchProbe) else ChannelMeanDiff()


def probe_outputs(probe) -> tuple[str, str]:
    return (probe.x_output, probe.q_output) if isinstance(probe, PatchProbe) else (probe.reference, probe.shadow)


# ---------------------------------------------------------------------------------------------
# the statistics model


def _auto_pad(attrs: dict) -> str:
    value = attrs.get("auto_pad", b"NOTSET")
    return value.decode() if isinstance(value, bytes) else value


def _same_padding(attrs: dict) -> bool:
    return _auto_pad(attrs) in ("SAME_UPPER", "SAME_LOWER")


def _conv_pads(node: onnx.NodeProto, spatial: int, in_shape: tuple[int, ...] | None,
               kernel: list[int], strides: list[int], dilations: list[int]) -> list[int] | None:
    """Explicit begin/end pads of a Conv, or None when they depend on an unknown input size."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = _auto_pad(attrs)
    if auto_pad in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * spatial)))
    if auto_pad == "VALID":
        return [0] * (2 * spatial)
    if in_shape is None or len(in_shape) != spatial + 2:
        return None
    begin, end = [], []
    for i in range(spatial):
        size = in_shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(large if auto_pad == "SAME_LOWER" else small)
        end.append(small if auto_pad == "SAME_LOWER" else large)
    return begin + end


def _const(graph: onnx.GraphProto, name: str, values, dtype=np.int64) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
    return name


def _fake_quant(graph: onnx.GraphProto, x: str, aq, prefix: str) -> str:
    qtype = onnx.TensorProto.UINT8 if aq.dtype == "uint8" else onnx.TensorProto.INT8
    graph.initializer.extend([numpy_helper.from_array(np.array(aq.scale, np.float32), prefix + "s"),
                              helper.make_tensor(prefix + "z", qtype, [], [aq.zero_point])])
    graph.node.extend([helper.make_node("QuantizeLinear", [x, prefix + "s", prefix + "z"], [prefix + "q"]),
                       helper.make_node("DequantizeLinear", [prefix + "q", prefix + "s", prefix + "z"], [prefix + "fq"])])
    return prefix + "fq"


def _conv_patch_means(graph, x: str, prefix: str, pads: list[int], kernel, strides, dilations) -> str:
    """(N, C, taps, 1): for each kernel tap, the mean of the padded input at the positions it reads."""
    spatial = len(kernel)
    if any(pads):
        pad_all = [0, 0, *pads[:spatial], 0, 0, *pads[spatial:]]
        graph.node.append(helper.make_node("Pad", [x, _const(graph, prefix + "pads", pad_all)], [prefix + "pad"]))
        x = prefix + "pad"
    taps = []
    for t, offset in enumerate(np.ndindex(*kernel)):
        starts = [o * d for o, d in zip(offset, dilations)]
        ends = [-(k - 1 - o) * d or _INT64_MAX for o, k, d in zip(offset, kernel, dilations)]
        src = x
        if any(starts) or any(e != _INT64_MAX for e in ends) or any(s != 1 for s in strides):
            src = f"{prefix}slice{t}"
            graph.node.append(helper.make_node(
                "Slice", [x, _const(graph, f"{prefix}st{t}", starts), _const(graph, f"{prefix}en{t}", ends),
                          _const(graph, f"{prefix}ax{t}", list(range(2, 2 + spatial))),
                          _const(graph, f"{prefix}sp{t}", strides)], [src]))
        graph.node.append(helper.make_node("GlobalAveragePool", [src], [f"{prefix}gap{t}"]))
        taps.append(f"{prefix}gap{t}")
    flat = [_flatten_tap(graph, tap, spatial) for tap in taps]
    out = prefix + "means"
    graph.node.append(helper.make_node("Concat", flat, [out], axis=2))
    return out


def _flatten_tap(graph, tap: str, spatial: int) -> str:
    """(N, C, 1, ..., 1) -> (N, C, 1, 1): taps of 1-D and 3-D convolutions concatenate alike."""
    if spatial == 2:
        return tap
    graph.node.append(helper.make_node("Reshape", [tap, _const(graph, tap + "_shape", [0, 0, 1, 1])], [tap + "_2d"]))
    return tap + "_2d"


def _gemm_row_means(graph, a: str, prefix: str, trans_a: bool, k: int) -> str:
    """(1, K, 1, 1): the mean row of Gemm's A (of A transposed with transA)."""
    src = a
    if not trans_a:
        graph.node.append(helper.make_node("Transpose", [a], [prefix + "t"], perm=[1, 0]))
        src = prefix + "t"
    graph.node.append(helper.make_node("Reshape", [src, _const(graph, prefix + "shape", [1, k, -1, 1])], [prefix + "r"]))
    graph.node.append(helper.make_node("GlobalAveragePool", [prefix + "r"], [prefix + "means"]))
    return prefix + "means"


def _shadow(graph, node, plan: FullQuantPlan, fq: str, prefix: str) -> str:
    wq = {(w.node, w.input_index): w for w in plan.weights}
    inputs = [fq]
    for idx in range(1, len(node.input)):
        w = wq.get((node.name, idx))
        if w is None:
            inputs.append(node.input[idx])
            continue
        graph.initializer.append(numpy_helper.from_array(w.dequantized(), prefix + f"w{idx}"))
        inputs.append(prefix + f"w{idx}")
    shadow = helper.make_node(node.op_type, inputs, [prefix + "y"])
    shadow.attribute.extend(node.attribute)
    graph.node.append(shadow)
    return prefix + "y"


def statistics_model(model: onnx.ModelProto, plan: FullQuantPlan, nodes: list[str],
                     input_shapes: dict[str, tuple[int, ...]] | None = None,
                     direct: bool = False) -> tuple[onnx.ModelProto, list]:
    """The FP32 model plus the probes of ``nodes``; returns it and one probe per node.

    ``input_shapes`` (the graph inputs' shapes in the calibration rounds) lets ``auto_pad=SAME_*``
    convolutions, whose pads depend on their input's size, use patch means too; shape inference runs
    only for them. ``direct=True`` makes every probe a shadow layer (the reference the tests hold patch
    means to).
    """
    from ptq_core.onnxgraph.load import default_opset

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_name = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    patch_ok = not direct and default_opset(model) >= 11  # Pad and Slice take inputs from opset 11 on
    shapes: dict[str, tuple[int, ...]] | None = None
    probes = []
    for k, name in enumerate(nodes):
        node = by_name[name]
        prefix = f"bc{k}_"
        fq = _fake_quant(graph, node.input[0], plan.activations[node.input[0]], prefix)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w_shape = list(inits[node.input[1]].dims)
        probe = None
        if patch_ok and node.op_type == "Conv":
            kernel = w_shape[2:]
            spatial = len(kernel)
            strides = list(attrs.get("strides", [1] * spatial))
            dilations = list(attrs.get("dilations", [1] * spatial))
            if shapes is None and input_shapes and _same_padding(attrs):
                from ptq_core.modes.full.latency_guard import tensor_shapes

                shapes = tensor_shapes(model, input_shapes)
            pads = _conv_pads(node, spatial, (shapes or {}).get(node.input[0]), kernel, strides, dilations)
            if pads is not None:
                probe = PatchProbe(name, _conv_patch_means(graph, node.input[0], prefix + "x_", pads, kernel, strides,
                                                           dilations),
                                   _conv_patch_means(graph, fq, prefix + "q_", pads, kernel, strides, dilations), "conv")
        elif patch_ok and node.op_type == "Gemm":
            trans_a = bool(attrs.get("transA", 0))
            k_dim = w_shape[1] if attrs.get("transB", 0) else w_shape[0]
            probe = PatchProbe(name, _gemm_row_means(graph, node.input[0], prefix + "x_", trans_a, k_dim),
                               _gemm_row_means(graph, fq, prefix + "q_", trans_a, k_dim), "gemm")
        if probe is None:
            probe = ShadowProbe(name, node.output[0], _shadow(graph, node, plan, fq, prefix))
        for tensor in probe_outputs(probe):
            if tensor not in outputs:
                graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
                outputs.add(tensor)
        probes.append(probe)
    return out, probes


# ---------------------------------------------------------------------------------------------
# from statistics to per-channel errors


def mean_errors(model: onnx.ModelProto, plan: FullQuantPlan, probes: list, stats: dict) -> dict[str, np.ndarray]:
    """Per node, per output channel: mean FP32 output minus mean output of the quantized layer."""
    by_name = {n.name: n for n in model.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {(w.node, w.input_index): w for w in plan.weights}
    errors = {}
    for probe in probes:
        acc = stats[probe.node]
        if isinstance(probe, ShadowProbe):
            errors[probe.node] = acc.sum / max(1, acc.count)
            continue
        node = by_name[probe.node]
        w = inits[node.input[1]].astype(np.float64)
        wq = weights[(probe.node, 1)].dequantized().astype(np.float64)
        mx, mq = acc.x / max(1, acc.count), acc.q / max(1, acc.count)  # (C_in, taps, 1)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if probe.kind == "gemm":
            mx, mq = mx.reshape(-1), mq.reshape(-1)
            if attrs.get("transB", 0):
                w, wq = w.T, wq.T
            errors[probe.node] = float(attrs.get("alpha", 1.0)) * (mx @ w - mq @ wq)
            continue
        groups = int(attrs.get("group", 1))
        c_out, c_in_g = w.shape[0], w.shape[1]
        w, wq = w.reshape(c_out, c_in_g, -1), wq.reshape(c_out, c_in_g, -1)
        mx, mq = mx.reshape(groups, c_in_g, -1), mq.reshape(groups, c_in_g, -1)
        per_group = c_out // groups
        err = np.empty(c_out)
        for g in range(groups):
            rows = slice(g * per_group, (g + 1) * per_group)
            err[rows] = (np.einsum("oit,it->o", w[rows], mx[g]) - np.einsum("oit,it->o", wq[rows], mq[g]))
        errors[probe.node] = err
    return errors
