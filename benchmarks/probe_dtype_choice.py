"""Which activation dtype CPU int8 models use: S8S8 against U8S8 QDQ models timed in onnxruntime.

``python benchmarks/probe_dtype_choice.py`` prints the timings as JSON. The CPU target's choice of
uint8 activations (ptq_core/modes/full/targets.py) rests on them; docs/int8-portability.md says why.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptq_core.modes.full.targets import TARGETS, Target  # noqa: E402
from ptq_core.onnxgraph.cpu import machine_isa  # noqa: E402


def measure_dtype_choice(repeats: int = 30, threads: int = 1, conv_shape=(1, 64, 56, 56), conv_out: int = 64,
                         matmul_shape=(128, 768), matmul_out: int = 768, seed: int = 0) -> dict:
    """Time one QDQ Conv model and one QDQ MatMul model under S8S8 and U8S8 with onnxruntime (CPU EP).

    Both models come out of ``emit_qdq`` with per-channel symmetric int8 weights and an int32 bias;
    only the activation dtype differs (int8 zero point z vs uint8 zero point z+128: the same grid,
    so accuracy is identical). ``s8s8_kept`` times the S8S8 model with the session option
    ``session.qdqisint8allowed=1``, i.e. with onnxruntime keeping int8 activations as they are.
    Returns ``{"conv": {"fp32": ms, "s8s8": ms, "s8s8_kept": ms, "u8s8": ms, "ops_s8s8": {...},
    "ops_u8s8": {...}}, "matmul": {...}, "cpu": flags, "onnxruntime": version}`` (median of
    ``repeats`` runs after two warm-ups). Why this decides CPU's activation dtype:
    docs/int8-portability.md; the figures it measured: BENCHMARKS.md.
    """
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ptq_core.modes.full.audit import fused_ops
    from ptq_core.modes.full.emit_qdq import emit_qdq
    from ptq_core.modes.full.plan import (
        ActivationQuant,
        BiasQuant,
        FullQuantPlan,
        WeightQuant,
    )

    rng = np.random.default_rng(seed)
    cases = {}
    conv_w = rng.normal(0, 0.1, (conv_out, conv_shape[1], 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (conv_out,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(conv_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(conv_w, "w"), numpy_helper.from_array(conv_b, "b")])
    cases["conv"] = (graph, "conv", "w", "b", rng.normal(0, 1, conv_shape).astype(np.float32))
    mm_w = rng.normal(0, 0.05, (matmul_shape[1], matmul_out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(matmul_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(mm_w, "w")])
    cases["matmul"] = (graph, "mm", "w", None, rng.normal(0, 1, matmul_shape).astype(np.float32))

    def session(model_bytes, int8_allowed=None):
        so = ort.SessionOptions()
        if int8_allowed is not None:
            so.add_session_config_entry("session.qdqisint8allowed", int8_allowed)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.log_severity_level = 3
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    def median_ms(sess, feed):
        sess.run(None, feed)
        sess.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)

    result: dict = {}
    for key, (graph, node, wname, bname, x) in cases.items():
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        y = session(model.SerializeToString()).run(None, {"x": x})[0]
        row = {"fp32": median_ms(session(model.SerializeToString()), {"x": x})}
        wf = numpy_helper.to_array(next(t for t in graph.initializer if t.name == wname))
        for act in ("int8", "uint8"):
            target = TARGETS["CPU"] if act == "uint8" else _with_activation(TARGETS["CPU"], "int8")
            sx, zx = target.activation_params(float(x.min()), float(x.max()))
            sy, zy = target.activation_params(float(y.min()), float(y.max()))
            op_type = "Conv" if key == "conv" else "MatMul"
            q, s, z, axis = target.quantize_weight(wf, op_type, 1)
            biases = []
            if bname:
                bf = numpy_helper.to_array(next(t for t in graph.initializer if t.name == bname))
                bs = (np.float64(sx) * s.astype(np.float64)).astype(np.float32)
                biases = [BiasQuant(node, 2, bname, np.round(bf / bs).astype(np.int32), bs)]
            plan = FullQuantPlan(
                target="CPU", nodes=(node,),
                activations={"x": ActivationQuant("x", sx, zx, act), "y": ActivationQuant("y", sy, zy, act)},
                weights=[WeightQuant(node, 1, wname, q, s, z, axis)], biases=biases)
            qbytes = emit_qdq(model, plan).SerializeToString()
            tag = "s8s8" if act == "int8" else "u8s8"
            row[tag] = median_ms(session(qbytes), {"x": x})
            row["ops_" + tag] = dict(fused_ops(qbytes))
            if act == "int8":  # what S8S8 costs when onnxruntime keeps it (its default on Arm only)
                row["s8s8_kept"] = median_ms(session(qbytes, "1"), {"x": x})
        result[key] = row
    result["cpu"] = machine_isa()
    result["onnxruntime"] = ort.__version__
    return result


def _with_activation(target: Target, dtype: str) -> Target:
    return replace(target, name=f"{target.name}-{dtype}", activation_dtype=dtype)


if __name__ == "__main__":
    print(json.dumps(measure_dtype_choice(), indent=1))
