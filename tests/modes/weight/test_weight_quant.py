"""WEIGHT_QUANT: filters, skip rules, granularity, storage size and a model plain onnxruntime runs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import mixed_ops_model, mlp_model

from ptq_core.config import parse_config
from ptq_core.modes.weight.emit import emit_weight_only
from ptq_core.modes.weight.plan import plan_weight_quant
from ptq_core.quant import cosine


def cfg(bits=8, extra="", common=""):
    return parse_config(f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\n{common}\n{extra}")


def decisions(plan):
    return {d.node + ":" + d.tensor: d for d in plan.decisions}


def run(model, feeds, optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


FEEDS = {"x": np.random.default_rng(3).normal(size=(1, 3, 8, 8)).astype(np.float32),
         "ids": np.array([[1, 7, 3, 49]], np.int64)}


def test_min_quant_weight_channel_is_strictly_greater():
    d = decisions(plan_weight_quant(mixed_ops_model(), cfg()))
    assert not d["conv_small:small_w"].quantized  # exactly 16 channels: skipped
    assert "min_quant_weight_channel" in d["conv_small:small_w"].reason
    assert d["conv_big:conv_w"].quantized  # 32 > 16


def test_min_quant_weight_channel_does_not_apply_to_gemm():
    d = decisions(plan_weight_quant(mixed_ops_model(), cfg(common="min_quant_weight_channel=1000")))
    assert d["gemm:gemm_w"].quantized and not d["conv_big:conv_w"].quantized


def test_min_quant_weight_size_is_strictly_greater():
    size = 10 * 40  # gemm_w
    d = decisions(plan_weight_quant(mixed_ops_model(), cfg(common=f"min_quant_weight_size={size}")))
    assert not d["gemm:gemm_w"].quantized
    d = decisions(plan_weight_quant(mixed_ops_model(), cfg(common=f"min_quant_weight_size={size - 1}")))
    assert d["gemm:gemm_w"].quantized


def test_skip_quant_node_keeps_weights_float():
    plan = plan_weight_quant(mixed_ops_model(), cfg(common="skip_quant_node=matmul,embed"))
    d = decisions(plan)
    assert not d["matmul:mm_w"].quantized and d["matmul:mm_w"].reason == "skip_quant_node"
    assert not d["embed:emb"].quantized
    out = emit_weight_only(mixed_ops_model(), plan)
    assert any(t.name == "mm_w" and t.data_type == onnx.TensorProto.FLOAT for t in out.graph.initializer)


def test_per_channel_false_gives_one_scale_per_tensor():
    plan = plan_weight_quant(mixed_ops_model(), cfg(extra="[weight_quant_param]\nper_channel=false\n"))
    assert all(w.axis is None and w.scale.size == 1 for w in plan.weights)


def test_gain_check_leaves_small_channels_float():
    # embedding rows have 10 elements: 8-bit per-channel needs >= 11, so converter_lite leaves it float
    d = decisions(plan_weight_quant(mixed_ops_model(), cfg()))
    assert not d["embed:emb"].quantized and "gain check" in d["embed:emb"].reason
    d = decisions(plan_weight_quant(mixed_ops_model(), cfg(extra="[weight_quant_param]\nbias_correction=false\n")))
    assert d["embed:emb"].quantized


def test_shared_matmul_weight_goes_per_layer():
    model = mlp_model(hidden=64)
    model.graph.node.append(onnx.helper.make_node("MatMul", ["hr", "w2"], ["y2"], name="fc2b"))
    model.graph.output.append(onnx.helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, [1, 32]))
    plan = plan_weight_quant(model, cfg())
    w2 = next(w for w in plan.weights if w.tensor == "w2")
    assert w2.axis is None and set(w2.nodes) == {"fc2", "fc2b"}


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_every_width_runs_in_plain_onnxruntime_and_is_close(bits):
    model = mixed_ops_model()
    plan = plan_weight_quant(model, cfg(bits, extra="[weight_quant_param]\nbias_correction=false\n"))
    out = emit_weight_only(model, plan)
    ref, got = run(model, FEEDS)[0], run(out, FEEDS)[0]
    assert np.all(np.isfinite(got))
    if bits >= 8:
        assert cosine(ref, got) > 0.999
    if bits >= 4:
        assert cosine(ref, got) > 0.9


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_stored_size_is_about_bits_over_32(bits):
    model = mlp_model(hidden=1024, inp=256)  # channels of 256 and 1024 weights
    plan = plan_weight_quant(model, cfg(bits, extra="[weight_quant_param]\nbias_correction=false\n"))
    out = emit_weight_only(model, plan)
    ratio = out.ByteSize() / model.ByteSize()
    # per-channel scale (4 B) and zero point (1-2 B) are the only overhead
    assert bits / 32 <= ratio <= bits / 32 + 0.015


def test_decode_is_folded_by_onnxruntime(tmp_path):
    model = mixed_ops_model()
    out = emit_weight_only(model, plan_weight_quant(model, cfg(3)))
    run(out, FEEDS, tmp_path / "opt.onnx")
    optimized = onnx.load(str(tmp_path / "opt.onnx"))
    ops = {n.op_type for n in optimized.graph.node}
    assert not ops & {"Cast", "Div", "Mod", "Gather", "Mul", "Sub"} - {n.op_type for n in model.graph.node}
    assert "Gather" in ops  # only the model's own embedding Gather is left


def test_enable_encode_false_stores_plain_int8():
    model = mlp_model()
    plan = plan_weight_quant(model, cfg(8, common="enable_encode=false"))
    assert all(w.encoded.kind == "raw" for w in plan.weights)
    out = emit_weight_only(model, plan)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in out.graph.initializer)


def test_per_channel_correction_is_applied_in_the_model():
    model = mlp_model()
    plan = plan_weight_quant(model, cfg(3))
    assert any(w.mean_corr is not None for w in plan.weights)
    x = {"x": np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)}
    with_corr = cosine(run(model, x)[0], run(emit_weight_only(model, plan), x)[0])
    plan_nc = plan_weight_quant(model, cfg(3, extra="[weight_quant_param]\nbias_correction=false\n"))
    without = cosine(run(model, x)[0], run(emit_weight_only(model, plan_nc), x)[0])
    assert with_corr > without


def test_emission_is_deterministic():
    model = mixed_ops_model()
    a = emit_weight_only(model, plan_weight_quant(model, cfg(4))).SerializeToString(deterministic=True)
    b = emit_weight_only(model, plan_weight_quant(model, cfg(4))).SerializeToString(deterministic=True)
    assert a == b


def test_old_opset_model_is_upgraded_for_the_decode_ops():
    model = mlp_model()
    model.opset_import[0].version = 11
    out = emit_weight_only(model, plan_weight_quant(model, cfg(4)))
    assert out.opset_import[0].version >= 13
    x = {"x": np.ones((1, 64), np.float32)}
    assert cosine(run(model, x)[0], run(out, x)[0]) > 0.95
