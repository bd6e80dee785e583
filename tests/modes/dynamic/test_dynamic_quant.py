"""DYNAMIC_QUANT: numerics against a NumPy simulation, onnxruntime's integer kernels, node selection.

``python tests/test_dynamic_quant.py`` runs ``micro_benchmark`` (one MatMul at MiniLM shapes,
FP32 vs ALWC vs ACWL, 1 thread) and prints the table quoted in ``ptq_core/modes/dynamic/plan.py``.
"""

import json
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import mixed_ops_model
from onnx import TensorProto, helper, numpy_helper

from ptq_core.config import parse_config
from ptq_core.modes.dynamic.emit import emit_dynamic
from ptq_core.modes.dynamic.plan import plan_dynamic
from ptq_core.modes.dynamic.rotation import hadamard, rotate_weight
from ptq_core.modes.full.audit import fused_ops, optimized_model
from ptq_core.quant import round_half_away

ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
NONE = ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def cfg(strategy="ALWC", common="", rotation=None, form=None):
    extra = "" if rotation is None else f"[ptqflow]\nrotation_block={rotation}\n"
    if form is not None:
        extra += ("" if extra else "[ptqflow]\n") + f"int8_form={form}\n"
    return parse_config("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n" + common +
                        f"\n[dynamic_quant_param]\nquant_strategy={strategy}\n" + extra)


def run(model, feeds, level=ALL):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def make(nodes, inputs, outputs, inits, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    return model


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def matmul_model(w, b=None, a_shape=None, bias_first=True, opset=17):
    """x @ W [+ b]; the bias written first, as torch exports it."""
    k = w.shape[-2]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m" if b is not None else "y"], name="mm")]
    inits = {"W": w}
    if b is not None:
        nodes.append(helper.make_node("Add", ["b", "m"] if bias_first else ["m", "b"], ["y"], name="bias_add"))
        inits["b"] = b
    return make(nodes, [vi("x", a_shape or ["batch", "seq", k])], [vi("y", None)], inits, opset)


def weights(plan, node):
    d = next(d for d in plan.nodes if d.node == node)
    return plan.weights[d.weight]


def block_of(plan, node):
    return next(d for d in plan.nodes if d.node == node).rotation


# ---------------------------------------------------------------------------------------------
# NumPy simulation of what the emitted graph computes


def ref_dynamic_quantize_linear(x):
    """ONNX DynamicQuantizeLinear in float32: uint8 over [min(x, 0), max(x, 0)], ties to even."""
    x = x.astype(np.float32)
    lo, hi = np.float32(min(0.0, x.min())), np.float32(max(0.0, x.max()))
    scale = np.float32((hi - lo) / np.float32(255))
    zp = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255)
    q = np.clip(np.rint(x / scale) + zp, 0, 255)
    return q, scale, zp


def ref_rotate(x, block):
    """The emitted Reshape(-1, block) -> MatMul(H) -> Reshape, in float32."""
    if not block:
        return x.astype(np.float32)
    rows = x.astype(np.float32).reshape(-1, block)
    return (rows @ hadamard(block).astype(np.float32)).reshape(x.shape)


def ref_alwc(x, w, bias=None, block=0):
    q, a_scale, zp = ref_dynamic_quantize_linear(ref_rotate(x, block))
    acc = (q.astype(np.int64) - int(zp)) @ w.codes.astype(np.int64)
    y = acc.astype(np.float32) * (a_scale * w.scale.astype(np.float32))
    return y + bias if bias is not None else y


def ref_acwl(x, w, bias=None, alpha=1.0, block=0):
    """Per-row symmetric int8 activation, as emitted: codes = round(x * (127 / absmax_row)), ties to even;
    y = acc * (absmax_row * b_scale * alpha / 127)."""
    x = ref_rotate(x, block)
    amax = np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-30))
    q = np.clip(np.rint(x * (np.float32(127) / amax)), -128, 127)
    acc = (q.astype(np.int64) @ w.codes.astype(np.int64)).astype(np.float32)
    b_scale = (w.scale * np.float32(alpha / 127.0)).astype(np.float32)
    y = acc * (amax * (b_scale if w.axis is not None else b_scale[0]))
    return y + bias if bias is not None else y


def close(actual, expected):
    """Equal up to float32 rounding of the rescale (no integer code may differ)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * float(np.abs(expected).max()))


# ---------------------------------------------------------------------------------------------
# numerics


@pytest.mark.parametrize("block", [0, 16], ids=["converter_lite", "rotated"])
@pytest.mark.parametrize("a_shape", [(7, 48), (2, 9, 48), (1, 48)])
@pytest.mark.parametrize("level", [ALL, NONE], ids=["fused", "reference-ops"])
def test_alwc_matches_numpy(a_shape, level, block):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.1, (48, 40)).astype(np.float32)
    w[:, 3] *= 20  # one large column: per-channel scales must matter
    b = rng.normal(0, 1, 40).astype(np.float32)
    x = (rng.normal(0.3, 1.5, a_shape)).astype(np.float32)
    model = matmul_model(w, b, a_shape=list(a_shape))
    plan = plan_dynamic(model, cfg("ALWC", rotation=block))
    qw = weights(plan, "mm")
    assert qw.axis == 1 and qw.codes.dtype == np.int8 and qw.codes.min() >= -64
    (y,) = run(emit_dynamic(model, plan), {"x": x}, level)
    close(y, ref_alwc(x, qw, b, block))
    # and the int8 weight is converter_lite's rule on the portable grid: symmetric [-64, 64] per
    # column, scale absmax / 64, ties away from zero
    w = rotate_weight(w, block) if block else w
    np.testing.assert_allclose(qw.scale, np.abs(w).max(0).astype(np.float64) / 64, rtol=1e-6)
    assert np.array_equal(qw.codes, np.clip(round_half_away(w / qw.scale.astype(np.float64)), -64, 64))


def test_vnni_form_keeps_converter_lites_full_weight_range_and_says_so():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.1, (48, 40)).astype(np.float32)
    model = matmul_model(w, a_shape=[7, 48])
    plan = plan_dynamic(model, cfg("ALWC", rotation=0, form="vnni"))
    qw = weights(plan, "mm")
    np.testing.assert_allclose(qw.scale, np.abs(w).max(0).astype(np.float64) / 127, rtol=1e-6)
    assert np.array_equal(qw.codes, np.clip(round_half_away(w / qw.scale.astype(np.float64)), -127, 127))
    meta = {p.key: p.value for p in emit_dynamic(model, plan).metadata_props}
    assert meta["ptqflow.int8_form"] == "vnni" and "VNNI" in meta["ptqflow.requires_cpu"]
    portable = {p.key: p.value for p in emit_dynamic(model, plan_dynamic(model, cfg("ALWC"))).metadata_props}
    assert portable == {"ptqflow.int8_form": "portable"}


@pytest.mark.parametrize("block", [0, 16], ids=["converter_lite", "rotated"])
@pytest.mark.parametrize("acwl_weight", ["per-channel", "per-layer"])
@pytest.mark.parametrize("a_shape", [(7, 48), (2, 9, 48), (48,)])
@pytest.mark.parametrize("level", [ALL, NONE], ids=["fused", "reference-ops"])
def test_acwl_matches_numpy(a_shape, acwl_weight, level, block):
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, (48, 40)).astype(np.float32)
    b = rng.normal(0, 1, 40).astype(np.float32)
    x = rng.normal(0, 1, a_shape).astype(np.float32)
    if len(a_shape) > 1:
        x[..., 0, :] *= 30  # one loud token: per-row scales must matter
        x.reshape(-1, 48)[1] = 0  # an all-zero row: no NaN
    model = matmul_model(w, b, a_shape=list(a_shape), bias_first=False)
    plan = plan_dynamic(model, cfg("ACWL", rotation=block), acwl_weight=acwl_weight)
    qw = weights(plan, "mm")
    assert qw.axis == (1 if acwl_weight == "per-channel" else None)
    (y,) = run(emit_dynamic(model, plan), {"x": x}, level)
    close(y, ref_acwl(x, qw, b, block=block))
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
def test_per_row_scale_is_applied_per_row_with_a_bias(strategy):
    """Guards against onnxruntime's MatMulIntegerToFloat scaling a fused bias by a per-row A scale."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.1, (32, 24)).astype(np.float32)
    b = rng.normal(0, 2, 24).astype(np.float32)
    x = rng.normal(0, 1, (1, 6, 32)).astype(np.float32)
    x[0, 0] *= 50
    for bias_first in (True, False):
        model = matmul_model(w, b, a_shape=[1, 6, 32], bias_first=bias_first)
        (ref,) = run(model, {"x": x})
        (y,) = run(emit_dynamic(model, plan_dynamic(model, cfg(strategy))), {"x": x})
        assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
def test_batched_weight_with_bias(strategy):
    """A rank-3 B: per-column scales stored as (.., 1, N), else onnxruntime scales the fused bias."""
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.1, (3, 16, 24)).astype(np.float32)
    b = rng.normal(0, 1, 24).astype(np.float32)
    x = rng.normal(0, 1, (3, 5, 16)).astype(np.float32)
    model = matmul_model(w, b, a_shape=[3, 5, 16], bias_first=False)
    plan = plan_dynamic(model, cfg(strategy))
    emitted = emit_dynamic(model, plan)
    fused, plain = run(emitted, {"x": x})[0], run(emitted, {"x": x}, NONE)[0]
    close(fused, plain)
    qw = weights(plan, "mm")
    block = block_of(plan, "mm")
    assert block == 16
    expected = ref_alwc(x, qw, b, block) if strategy == "ALWC" else ref_acwl(x, qw, b, block=block)
    close(plain, expected)


@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 1, 1.0, 1.0), (0, 0, 0.5, 2.0), (1, 1, 1.5, 0.5)])
def test_gemm(strategy, trans_a, trans_b, alpha, beta):
    rng = np.random.default_rng(5)
    m, k, n = 6, 32, 20
    a = rng.normal(0, 1, (k, m) if trans_a else (m, k)).astype(np.float32)
    w = rng.normal(0, 0.2, (n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.normal(0, 1, n).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="gemm", transA=trans_a, transB=trans_b,
                            alpha=alpha, beta=beta)
    model = make([node], [vi("x", list(a.shape))], [vi("y", [m, n])], {"W": w, "C": c})
    plan = plan_dynamic(model, cfg(strategy))
    qw = weights(plan, "gemm")
    assert qw.codes.shape == (k, n)  # transB handled offline
    emitted = emit_dynamic(model, plan)
    left = {t.name for t in emitted.graph.initializer}
    assert "W" not in left and ("C" in left) == (beta == 1.0)  # beta * C was pre-multiplied: C itself is gone
    x = ref_rotate(a.T if trans_a else a, block_of(plan, "gemm"))
    alpha32 = np.float32(alpha)
    if strategy == "ALWC":
        q, a_scale, zp = ref_dynamic_quantize_linear(x)
        acc = (q.astype(np.int64) - int(zp)) @ qw.codes.astype(np.int64)
        expected = acc.astype(np.float32) * (a_scale * (qw.scale * alpha32).astype(np.float32))
    else:
        expected = ref_acwl(x, qw, alpha=alpha)
    expected = expected + c * np.float32(beta)
    for level in (ALL, NONE):
        close(run(emitted, {"x": a}, level)[0], expected)
    reference = run(model, {"x": a})[0]
    assert np.abs(run(emitted, {"x": a})[0] - reference).max() < 0.03 * np.abs(reference).max()


def embedding_model(table, opset=17, axis=0, ids_shape=(2, 5)):
    node = helper.make_node("Gather", ["emb", "ids"], ["y"], name="embed", axis=axis)
    return make([node], [vi("ids", list(ids_shape), TensorProto.INT64)], [vi("y", None)], {"emb": table}, opset)


@pytest.mark.parametrize("axis", [0, 1])
def test_gather_is_exact(axis):
    rng = np.random.default_rng(6)
    table = rng.normal(0.5, 1, (50, 12)).astype(np.float32)
    ids = np.array([[0, 7, 11, 3, 7], [-1, 2, 10, 0, 5]], np.int64)  # valid on both axes; -1 = last
    model = embedding_model(table, axis=axis)
    plan = plan_dynamic(model, cfg())
    qw = weights(plan, "embed")
    assert qw.codes.dtype == np.int8 and qw.axis == axis and qw.codes.min() == -128  # asymmetric full range
    emitted = emit_dynamic(model, plan)
    codes = np.take(qw.codes, ids, axis=axis).astype(np.float32)
    trailing = (1,) if axis == 0 else ()  # per-slice params broadcast over the gathered slices
    zp = qw.zero_point[ids].astype(np.float32).reshape(ids.shape + trailing)
    scale = qw.scale[ids].reshape(ids.shape + trailing)
    expected = (codes - zp) * scale
    for level in (ALL, NONE):
        (y,) = run(emitted, {"ids": ids}, level)
        assert np.array_equal(y, expected)
    assert np.abs(y - np.take(table, ids, axis=axis)).max() <= 0.5 * float(qw.scale.max()) + 1e-6


def test_gather_table_stays_int8_at_run_time():
    table = np.random.default_rng(7).normal(0, 1, (400, 64)).astype(np.float32)
    emitted = emit_dynamic(embedding_model(table), plan_dynamic(embedding_model(table), cfg()))
    inits = {t.name: t for t in emitted.graph.initializer}
    assert "emb" not in inits and any(t.data_type == TensorProto.INT8 and list(t.dims) == [400, 64] for t in inits.values())
    optimized = optimized_model(emitted, "all")
    tables = [t for t in optimized.graph.initializer if list(t.dims) == [400, 64]]
    assert tables and all(t.data_type == TensorProto.INT8 for t in tables)  # not folded back to float


# ---------------------------------------------------------------------------------------------
# onnxruntime kernels, node selection, determinism


def _two_layer_model():
    rng = np.random.default_rng(8)
    w1, w2 = rng.normal(0, 0.1, (32, 64)).astype(np.float32), rng.normal(0, 0.1, (64, 32)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 64).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="up"),
             helper.make_node("Add", ["b1", "h"], ["hb"], name="up_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="down")]
    return make(nodes, [vi("x", [1, 16, 32])], [vi("y", None)], {"W1": w1, "W2": w2, "b1": b1})


@pytest.mark.parametrize("block", [0, 16], ids=["converter_lite", "rotated"])
def test_integer_kernels_in_optimized_graph(block):
    model = _two_layer_model()
    rotations = 2 if block else 0  # one small float MatMul (rows @ H) per rotated activation
    alwc = fused_ops(emit_dynamic(model, plan_dynamic(model, cfg("ALWC", rotation=block))).SerializeToString())
    assert alwc["DynamicQuantizeMatMul"] + alwc["MatMulIntegerToFloat"] == 2
    assert alwc["MatMul"] == rotations and alwc["Add"] == 0  # the bias was folded into the integer kernel
    acwl = fused_ops(emit_dynamic(model, plan_dynamic(model, cfg("ACWL", rotation=block))).SerializeToString())
    assert acwl["MatMulIntegerToFloat"] == 2 and acwl["MatMul"] == rotations and acwl["MatMulInteger"] == 0
    # the per-row scale runs inside the kernel (no Mul after it); the bias stays out of it, as a Sum
    assert acwl["QuantizeLinear"] == 2 and acwl["Add"] == 0 and acwl["Sum"] == 1 and acwl["Mul"] == 2


def test_standard_ops_only_and_checker_passes():
    model = mixed_ops_model()
    for strategy in ("ALWC", "ACWL"):
        emitted = emit_dynamic(model, plan_dynamic(model, cfg(strategy)))
        onnx.checker.check_model(emitted, full_check=True)
        assert {imp.domain for imp in emitted.opset_import} <= {"", "ai.onnx"}
        assert {n.domain for n in emitted.graph.node} <= {""}


def test_conv_model_is_left_in_fp32():
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", None)],
                 {"w": rng.normal(0, 1, (32, 3, 3, 3)).astype(np.float32), "b": np.zeros(32, np.float32)})
    plan = plan_dynamic(model, cfg())
    assert not plan.nodes and not plan.weights
    (row,) = plan.decisions
    assert row.node == "conv" and not row.quantized and "Conv stays FP32" in row.reason
    emitted = emit_dynamic(model, plan)
    assert [n.SerializeToString() for n in emitted.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert [t.SerializeToString() for t in emitted.graph.initializer] == [t.SerializeToString() for t in model.graph.initializer]


def test_mixed_model_quantizes_matmul_gemm_gather_only():
    model = mixed_ops_model()
    plan = plan_dynamic(model, cfg())
    by_node = {d.node: d for d in plan.decisions}
    assert {n for n, d in by_node.items() if d.quantized} == {"matmul", "gemm", "embed"}
    for conv in ("conv_big", "conv_small", "deconv"):  # no min_quant_weight_channel filter, but Conv stays FP32
        assert not by_node[conv].quantized and "stays FP32" in by_node[conv].reason
    emitted = emit_dynamic(model, plan)
    assert [n.op_type for n in emitted.graph.node].count("Conv") == 2
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32), "ids": np.array([[1, 7, 3, 49]], np.int64)}
    (ref,), (y,) = run(model, feeds), run(emitted, feeds)
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()


def test_skip_quant_node_is_respected():
    model = mixed_ops_model()
    plan = plan_dynamic(model, cfg(common="skip_quant_node=matmul,embed"))
    by_node = {d.node: d for d in plan.decisions}
    assert by_node["matmul"].reason == by_node["embed"].reason == "skip_quant_node"
    assert by_node["gemm"].quantized and [d.node for d in plan.nodes] == ["gemm"]
    emitted = emit_dynamic(model, plan)
    nodes = {n.name: n for n in emitted.graph.node}
    assert nodes["matmul"].op_type == "MatMul" and list(nodes["matmul"].input) == ["flat", "mm_w"]
    assert nodes["embed"].op_type == "Gather" and list(nodes["embed"].input) == ["emb", "ids"]
    assert "gemm" not in nodes and {"mm_w", "emb"} <= {t.name for t in emitted.graph.initializer}


@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
def test_matmul_of_two_activations_stays_float(strategy):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["y"], name="scores")]
    model = make(nodes, [vi("q", [2, 8, 16]), vi("k", [2, 16, 8])], [vi("y", None)], {})
    plan = plan_dynamic(model, cfg(strategy))
    (row,) = plan.decisions
    assert not row.quantized and "both inputs are activations" in row.reason and not plan.nodes
    emitted = emit_dynamic(model, plan)
    assert [n.op_type for n in emitted.graph.node] == ["MatMul"]


def test_shared_weight_goes_per_layer_and_is_stored_once():
    w = np.random.default_rng(10).normal(0, 0.1, (16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y1"], name="first"),
             helper.make_node("MatMul", ["x2", "W"], ["y2"], name="second")]
    model = make(nodes, [vi("x", [4, 16]), vi("x2", [4, 16])], [vi("y1", None), vi("y2", None)], {"W": w})
    plan = plan_dynamic(model, cfg())
    first, second = plan.decisions
    assert first.granularity == second.granularity == "per-layer"
    assert "shares weight with first" in second.reason and second.bytes_stored == 0
    assert first.bytes_stored == 16 * 8 + 4 and first.weight_cosine > 0.999
    emitted = emit_dynamic(model, plan)
    assert [t.name for t in emitted.graph.initializer if t.data_type == TensorProto.INT8] == ["W_int8"]


@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
def test_emit_is_deterministic(strategy):
    blobs = {emit_dynamic(mixed_ops_model(), plan_dynamic(mixed_ops_model(), cfg(strategy))).SerializeToString(deterministic=True)
             for _ in range(2)}
    assert len(blobs) == 1


@pytest.mark.parametrize("opset", [10, 13, 18])
@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
def test_opsets(opset, strategy):
    """Opset 10 is upgraded to 11 (DynamicQuantizeLinear); at 18 ReduceMax takes axes as an input."""
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.1, (24, 16)).astype(np.float32)
    model = matmul_model(w, rng.normal(0, 0.1, 16).astype(np.float32), a_shape=[2, 3, 24], opset=opset)
    emitted = emit_dynamic(model, plan_dynamic(model, cfg(strategy)))
    assert max(imp.version for imp in emitted.opset_import if imp.domain in ("", "ai.onnx")) == max(opset, 11)
    x = rng.normal(0, 1, (2, 3, 24)).astype(np.float32)
    (ref,), (y,) = run(model, {"x": x}), run(emitted, {"x": x})
    assert np.abs(y - ref).max() < 0.03 * np.abs(ref).max()


def test_bad_acwl_weight_option():
    with pytest.raises(Exception, match="acwl_weight"):
        plan_dynamic(mixed_ops_model(), cfg("ACWL"), acwl_weight="per-row")


_RSS = r"""
import json, sys, numpy as np, onnxruntime as ort
def rss(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
base = rss("VmRSS")
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
s.run(None, {"ids": np.arange(128, dtype=np.int64).reshape(1, 128)})
print(json.dumps(rss("VmHWM") - base))
"""


def test_embedding_ram_stays_low(tmp_path):
    """Peak RSS of a process that loads and runs the model: the int8 table is not widened to float."""
    table = np.random.default_rng(12).normal(0, 1, (20000, 256)).astype(np.float32)  # 20.5 MB
    model = embedding_model(table, ids_shape=(1, 128))
    paths = {"fp32": tmp_path / "fp32.onnx", "int8": tmp_path / "int8.onnx"}
    onnx.save(model, str(paths["fp32"]))
    onnx.save(emit_dynamic(model, plan_dynamic(model, cfg())), str(paths["int8"]))
    grow = {k: json.loads(subprocess.run([sys.executable, "-c", _RSS, str(p)], capture_output=True, text=True,
                                         check=True).stdout) for k, p in paths.items()}
    assert grow["int8"] < 0.5 * grow["fp32"], grow


# ---------------------------------------------------------------------------------------------
# micro-benchmark (not a test)


def micro_benchmark(runs: int = 300, threads: int = 1) -> list[dict]:
    """Median ms of one MatMul + bias at MiniLM shapes (A = [1, 128, K]), FP32 vs ALWC vs ACWL, each with
    the default rotation (block 16) and without (converter_lite's numerics, "r0")."""
    rng = np.random.default_rng(0)
    rows = []
    for k, n in [(384, 384), (384, 1536), (1536, 384)]:
        w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
        model = matmul_model(w, rng.normal(0, 0.1, n).astype(np.float32), a_shape=[1, 128, k])
        x = rng.normal(0, 1, (1, 128, k)).astype(np.float32)
        sessions = {"FP32": model}
        for strategy in ("ALWC", "ACWL"):
            sessions[strategy] = emit_dynamic(model, plan_dynamic(model, cfg(strategy)))
            sessions[f"{strategy} r0"] = emit_dynamic(model, plan_dynamic(model, cfg(strategy, rotation=0)))
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = threads
        so.log_severity_level = 3
        sess = {name: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for name, m in sessions.items()}
        times = {name: [] for name in sess}
        for _ in range(10):
            for s in sess.values():
                s.run(None, {"x": x})
        for _ in range(runs):  # interleaved, so load drift hits every variant alike
            for name, s in sess.items():
                t = time.perf_counter()
                s.run(None, {"x": x})
                times[name].append((time.perf_counter() - t) * 1e3)
        rows.append({"shape": f"128x{k} @ {k}x{n}", **{name: float(np.median(v)) for name, v in times.items()}})
    return rows


if __name__ == "__main__":
    names = ("FP32", "ALWC", "ACWL", "ALWC r0", "ACWL r0")
    print(f"{'A @ B':24s} " + " ".join(f"{n:>8s}" for n in names) + "   (median ms, 1 thread)")
    for r in micro_benchmark():
        print(f"{r['shape']:24s} " + " ".join(f"{r[n]:8.3f}" for n in names))


def test_calibration_section_is_accepted_and_ignored_with_a_notice(tmp_path):
    from ptq_core.convert import resolve_config

    cfg_path = tmp_path / "d.cfg"
    cfg_path.write_text("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                        "[data_preprocess_param]\ncalibrate_path=x:/data\ncalibrate_size=10\ninput_type=BIN\n")
    cfg = resolve_config(cfg_path)
    assert any("ignored" in n and "DYNAMIC_QUANT" in n for n in cfg.notices)
