"""QDQ emitter: plain onnxruntime runs the result close to FP32 and fuses it into integer kernels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_core.errors import PtqError
from ptq_core.modes.full.audit import (
    check_target_rules,
    float_paths,
    fused_ops,
    optimized_model,
)
from ptq_core.modes.full.emit_qdq import emit_qdq
from ptq_core.modes.full.placement import place_qdq
from ptq_core.modes.full.plan import (
    ActivationQuant,
    BiasQuant,
    FullQuantPlan,
    WeightQuant,
)
from ptq_core.modes.full.targets import TARGETS, get_target
from ptq_core.onnxgraph.load import default_opset, upgrade_opset
from ptq_core.onnxgraph.weight_roles import WEIGHT_OPS
from ptq_core.quant import cosine, round_half_away

RNG = np.random.default_rng(7)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inputs, outputs, inits, opset=13, ir=8):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def cnn_model(seed=0, opset=13, ir=8):
    """Conv -> Relu -> MaxPool -> Conv -> Flatten -> Gemm(transB) -> logits."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)),
        _init("b1", rng.normal(0, 0.1, (16,)).astype(np.float32)),
        _init("w2", rng.normal(0, 0.15, (8, 16, 3, 3)).astype(np.float32)),
        _init("b2", rng.normal(0, 0.1, (8,)).astype(np.float32)),
        _init("wg", rng.normal(0, 0.2, (10, 8 * 4 * 4)).astype(np.float32)),
        _init("bg", rng.normal(0, 0.1, (10,)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_vi("x", [2, 3, 8, 8])], [_vi("y", [2, 10])], inits, opset, ir)


def matmul_chain_model(seed=1):
    """x -> MatMul -> Relu -> MatMul -> Add(residual of the first MatMul) -> MatMul -> y."""
    rng = np.random.default_rng(seed)
    inits = [_init("m1", rng.normal(0, 0.15, (64, 48)).astype(np.float32)),
             _init("m2", rng.normal(0, 0.15, (48, 48)).astype(np.float32)),
             _init("m3", rng.normal(0, 0.15, (48, 16)).astype(np.float32))]
    nodes = [
        helper.make_node("MatMul", ["x", "m1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["a1"], name="act1"),
        helper.make_node("MatMul", ["a1", "m2"], ["h2"], name="mm2"),
        helper.make_node("Add", ["h2", "a1"], ["s"], name="res"),
        helper.make_node("MatMul", ["s", "m3"], ["y"], name="mm3"),
    ]
    return _model(nodes, [_vi("x", [4, 64])], [_vi("y", [4, 16])], inits)


def deconv_model(seed=2):
    rng = np.random.default_rng(seed)
    inits = [_init("wc", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
             _init("wd", rng.normal(0, 0.3, (8, 4, 2, 2)).astype(np.float32)),
             _init("bd", rng.normal(0, 0.1, (4,)).astype(np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wd", "bd"], ["y"], name="deconv", strides=[2, 2]),
    ]
    return _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 4, 12, 12])], inits)


def output_also_consumed_model(seed=3):
    """The first Conv's output is a graph output *and* feeds the second Conv; plus a Gemm(transB=0)."""
    rng = np.random.default_rng(seed)
    inits = [_init("wa", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
             _init("wb", rng.normal(0, 0.2, (4, 8, 1, 1)).astype(np.float32)),
             _init("wg", rng.normal(0, 0.2, (4 * 6 * 6, 5)).astype(np.float32)),
             _init("shape", np.array([1, -1], np.int64))]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["feat"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["feat", "wb"], ["cb"], name="conv_b"),
        helper.make_node("Reshape", ["cb", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "wg"], ["logits"], name="fc"),
    ]
    return _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("feat", [1, 8, 6, 6]), _vi("logits", [1, 5])], inits)


def opset11_model(seed=4):
    """Opset 11: Conv -> Squeeze(axes attribute) -> Softmax(axis=1 on 3-D: 'coerce to 2-D' semantics)."""
    rng = np.random.default_rng(seed)
    inits = [_init("w", rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)),
             _init("b", rng.normal(0, 0.1, (6,)).astype(np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Squeeze", ["c"], ["sq"], name="squeeze", axes=[0]),
        helper.make_node("Softmax", ["sq"], ["y"], name="softmax", axis=1),
    ]
    return _model(nodes, [_vi("x", [1, 3, 5, 5])], [_vi("y", [6, 5, 5])], inits, opset=11, ir=6)


def inputs_for(model, seed=0, n=1):
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


# ---------------------------------------------------------------------------------------------
# running and planning
# ---------------------------------------------------------------------------------------------

def session(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model, feeds, level=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED):
    s = session(model, level)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def tensor_ranges(model, feeds_list):
    """Min/max of every float tensor over the samples (a plain MAX_MIN calibration)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in known:
                probe.graph.output.append(helper.make_empty_tensor_value_info(name))
                known.add(name)
    s = session(probe, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    names = [o.name for o in s.get_outputs()]
    ranges: dict[str, list[float]] = {}
    for feeds in feeds_list:
        values = dict(zip(names, s.run(None, feeds)))
        values.update(feeds)
        for name, v in values.items():
            if not np.issubdtype(np.asarray(v).dtype, np.floating):
                continue
            lo, hi = float(np.min(v)), float(np.max(v))
            old = ranges.get(name)
            ranges[name] = [min(lo, old[0]), max(hi, old[1])] if old else [lo, hi]
    return ranges


def minmax_plan(model, target_name="CPU", feeds_list=None, per_channel=True, skip=(), activation_dtype=None):
    """A full-quant plan built by hand: place_qdq picks the tensors, MAX_MIN gives the ranges."""
    model = upgrade_opset(model)
    target = get_target(target_name)
    if activation_dtype:
        from dataclasses import replace

        target = replace(target, activation_dtype=activation_dtype)
    feeds_list = feeds_list or [inputs_for(model, s) for s in range(4)]
    ranges = tensor_ranges(model, feeds_list)
    placement = place_qdq(model, target, skip=skip)
    activations = {}
    for t in placement.tensors:
        lo, hi = ranges[placement.source[t]]
        scale, zp = target.activation_params(lo, hi)
        activations[t] = ActivationQuant(t, scale, zp, target.activation_dtype)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    weights, biases = [], []
    for name in placement.nodes:
        node = by_name[name]
        if node.op_type not in target.compute_ops:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for role in WEIGHT_OPS[node.op_type]:
            idx = role.input_index
            if idx < len(node.input) and node.input[idx] in inits:
                q, s, z, axis = target.quantize_weight(inits[node.input[idx]], node.op_type, idx, attrs, per_channel)
                weights.append(WeightQuant(name, idx, node.input[idx], q, s, z, axis))
        if target.quantize_bias and len(node.input) > 2 and node.input[2] in inits and node.input[0] in activations:
            s_in = np.float64(np.float32(activations[node.input[0]].scale))
            s_w = next(w.scale for w in weights if w.node == name and w.input_index == 1).astype(np.float64)
            bias_scale = (s_in * s_w).astype(np.float32)
            q = round_half_away(inits[node.input[2]] / bias_scale.astype(np.float64)).astype(np.int32)
            biases.append(BiasQuant(name, 2, node.input[2], q, bias_scale))
    plan = FullQuantPlan(target=target_name, nodes=placement.nodes, activations=activations,
                         weights=weights, biases=biases, kept_float=dict(placement.kept_float))
    return plan, placement


def assert_close(reference, quantized, names=None, floor=0.99):
    for name in names or reference:
        c = cosine(reference[name], quantized[name])
        assert c > floor, f"{name}: cosine {c:.5f}"


def dq_nodes_feeding(model, node_name):
    by_out = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return {i: by_out[name] for i, name in enumerate(node.input) if name in by_out and by_out[name].op_type == "DequantizeLinear"}


def axis_of(node):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)


def init_array(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def test_cnn_cpu_runs_close_to_fp32_and_fuses_to_integer_kernels():
    model = cnn_model()
    plan, placement = minmax_plan(model, "CPU")
    assert placement.nodes == ("conv1", "relu1", "pool1", "conv2", "flat", "fc")
    # Relu folded into conv1's output Q; MaxPool/Flatten reuse their input's params
    assert placement.source["c1"] == "r1" and placement.source["p1"] == "r1" and placement.source["f"] == "c2"
    assert "y" not in placement.tensors  # QGemm produces float logits directly
    qdq = emit_qdq(model, plan)
    onnx.checker.check_model(qdq)
    feeds = inputs_for(model, 11)
    assert_close(run(model, feeds), run(qdq, feeds))
    ops = fused_ops(qdq.SerializeToString())
    assert ops["QLinearConv"] == 2 and ops["QGemm"] == 1, ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 0, ops  # one Q at the input, nothing else
    assert "Conv" not in ops and "Relu" not in ops and "Gemm" not in ops
    assert float_paths(optimized_model(qdq.SerializeToString())) == []
    assert check_target_rules(qdq, get_target("CPU")) == []


def test_graph_io_names_and_types_unchanged():
    for model in (cnn_model(), output_also_consumed_model(), matmul_chain_model()):
        plan, _ = minmax_plan(model, "CPU")
        qdq = emit_qdq(model, plan)
        assert [o.name for o in qdq.graph.output] == [o.name for o in model.graph.output]
        assert [i.name for i in qdq.graph.input] == [i.name for i in model.graph.input]
        assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in qdq.graph.output)
        s = session(qdq)
        assert [o.type for o in s.get_outputs()] == ["tensor(float)"] * len(model.graph.output)


def test_graph_output_also_consumed_internally():
    model = output_also_consumed_model()
    plan, placement = minmax_plan(model, "CPU")
    assert "feat" in plan.activations  # graph output that conv_b reads
    qdq = emit_qdq(model, plan)
    by_out = {o: n for n in qdq.graph.node for o in n.output}
    assert by_out["feat"].op_type == "DequantizeLinear"  # the output is the dequantized tensor
    conv_a = next(n for n in qdq.graph.node if n.name == "conv_a")
    assert conv_a.output[0].startswith("ptq_")  # the internal tensor was renamed, not the output
    conv_b = next(n for n in qdq.graph.node if n.name == "conv_b")
    assert conv_b.input[0] == "feat"
    feeds = inputs_for(model, 5)
    assert_close(run(model, feeds), run(qdq, feeds))
    ops = fused_ops(qdq.SerializeToString())
    assert ops["QLinearConv"] == 2 and ops["QGemm"] == 1, ops
    q_inputs = [n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_inputs) == len(set(q_inputs)) == len(plan.activations)  # nothing quantized twice
    assert check_target_rules(qdq, get_target("CPU")) == []


def test_matmul_chain_fuses_to_integer_matmuls():
    model = matmul_chain_model()
    plan, placement = minmax_plan(model, "CPU")
    assert set(placement.nodes) == {"mm1", "act1", "mm2", "res", "mm3"}
    qdq = emit_qdq(model, plan)
    feeds = inputs_for(model, 3)
    assert_close(run(model, feeds), run(qdq, feeds))
    ops = fused_ops(qdq.SerializeToString())
    assert ops["QLinearMatMul"] == 3 and ops["QLinearAdd"] == 1, ops
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 1, ops  # x in, y out
    assert "MatMul" not in ops and "Relu" not in ops
    assert float_paths(optimized_model(qdq)) == []
    assert check_target_rules(qdq, get_target("CPU")) == []


def test_per_channel_axes():
    cases = [
        (cnn_model(), "CPU", {"conv1": 0, "conv2": 0, "fc": 0}),  # Conv 0, Gemm transB=1 -> 0
        (output_also_consumed_model(), "CPU", {"conv_a": 0, "fc": 1}),  # Gemm transB=0 -> 1
        (matmul_chain_model(), "CPU", {"mm1": 1, "mm2": 1, "mm3": 1}),  # MatMul (K, N) -> 1
        (deconv_model(), "NVGPU", {"conv": 0, "deconv": 1}),  # ConvTranspose (C, M/g, kH, kW) -> 1
    ]
    for model, target, expected in cases:
        plan, _ = minmax_plan(model, target)
        qdq = emit_qdq(model, plan)
        for node, axis in expected.items():
            wdq = dq_nodes_feeding(qdq, node)[1]
            assert axis_of(wdq) == axis, (node, axis_of(wdq))
            scale = init_array(qdq, wdq.input[1])
            assert scale.ndim == 1 and scale.size == init_array(qdq, wdq.input[0]).shape[axis]
        assert check_target_rules(qdq, get_target(target)) == []


def test_per_layer_weights_have_no_axis():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU", per_channel=False)
    qdq = emit_qdq(model, plan)
    for node in ("conv1", "conv2", "fc"):
        wdq = dq_nodes_feeding(qdq, node)[1]
        assert axis_of(wdq) is None and init_array(qdq, wdq.input[1]).ndim == 0
    feeds = inputs_for(model, 2)
    assert_close(run(model, feeds), run(qdq, feeds), floor=0.98)
    assert fused_ops(qdq.SerializeToString())["QLinearConv"] == 2
    assert check_target_rules(qdq, get_target("CPU")) == []


def test_bias_is_int32_with_scale_of_input_times_weight():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    for node, bias, inp in (("conv1", "b1", "x"), ("conv2", "b2", "p1"), ("fc", "bg", "f")):
        dqs = dq_nodes_feeding(qdq, node)
        codes = init_array(qdq, dqs[2].input[0])
        scale = init_array(qdq, dqs[2].input[1]).astype(np.float64)
        assert codes.dtype == np.int32 and not np.any(init_array(qdq, dqs[2].input[2]))
        assert axis_of(dqs[2]) == 0
        s_in = plan.activations[inp].scale
        s_w = init_array(qdq, dqs[1].input[1]).astype(np.float64)
        np.testing.assert_allclose(scale, s_in * s_w, rtol=1e-6)
        b = init_array(model, bias).astype(np.float64)
        np.testing.assert_array_equal(codes, round_half_away(b / (np.float64(np.float32(s_in)) * s_w)))
    assert "b1" not in {t.name for t in qdq.graph.initializer}  # float bias replaced


def test_bias_scale_mismatch_is_rejected():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    b = plan.biases[0]
    plan.biases[0] = BiasQuant(b.node, b.input_index, b.tensor, b.q, b.scale * 2)
    with pytest.raises(PtqError, match="input scale x weight scale"):
        emit_qdq(model, plan)


def test_nvgpu_is_symmetric_with_zero_points_zero():
    model = cnn_model()
    plan, placement = minmax_plan(model, "NVGPU")
    assert not plan.biases  # TensorRT keeps biases float
    assert all(a.zero_point == 0 and a.dtype == "int8" for a in plan.activations.values())
    # Q/DQ only on inputs of int8 layers: no pair between conv1 and relu1, none on the logits
    assert "c1" not in placement.tensors and "y" not in placement.tensors
    qdq = emit_qdq(model, plan)
    assert check_target_rules(qdq, get_target("NVGPU")) == []
    for n in qdq.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = init_array(qdq, n.input[2])
            assert not np.any(zp), n.name
            if n.op_type == "DequantizeLinear" and n.input[0] in {t.name for t in qdq.graph.initializer}:
                codes = init_array(qdq, n.input[0])
                assert codes.dtype == np.int8 and codes.min() >= -127  # narrow symmetric weights
    feeds = inputs_for(model, 4)
    assert_close(run(model, feeds), run(qdq, feeds))
    # the CPU audit flags what NVGPU does differently
    problems = check_target_rules(qdq, get_target("CPU"))
    assert any("int8 but CPU wants uint8" in p for p in problems)


def test_dsp_has_uint8_activations_and_per_layer_gemm():
    model = cnn_model()
    plan, _ = minmax_plan(model, "DSP")
    assert {a.dtype for a in plan.activations.values()} == {"uint8"}
    qdq = emit_qdq(model, plan)
    assert check_target_rules(qdq, get_target("DSP")) == []
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear":
            assert init_array(qdq, n.input[2]).dtype == np.uint8
    assert axis_of(dq_nodes_feeding(qdq, "conv1")[1]) == 0
    assert init_array(qdq, dq_nodes_feeding(qdq, "fc")[1].input[1]).ndim == 0  # Gemm per layer on DSP
    feeds = inputs_for(model, 6)
    assert_close(run(model, feeds), run(qdq, feeds))
    assert fused_ops(qdq.SerializeToString())["QLinearConv"] == 2


def test_conv_transpose_is_float_on_cpu_and_flagged_when_forced():
    model = deconv_model()
    plan, placement = minmax_plan(model, "CPU")
    assert "deconv" in placement.kept_float and "deconv" not in placement.nodes
    qdq = emit_qdq(model, plan)
    feeds = inputs_for(model, 1)
    assert_close(run(model, feeds), run(qdq, feeds))
    assert check_target_rules(qdq, get_target("CPU")) == []
    # a DSP plan quantizes it; onnxruntime has no integer ConvTranspose, the CPU audit says so
    plan, _ = minmax_plan(model, "DSP")
    qdq = emit_qdq(model, plan)
    assert_close(run(model, feeds), run(qdq, feeds))
    assert any("deconv (ConvTranspose)" in p and "does not quantize" in p for p in check_target_rules(qdq, TARGETS["CPU"]))
    assert float_paths(optimized_model(qdq)) == ["deconv (ConvTranspose)"]


def test_opset11_model_is_converted_not_just_relabelled():
    model = opset11_model()
    assert default_opset(model) == 11
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    assert default_opset(qdq) == 13 and qdq.ir_version >= 7
    onnx.checker.check_model(qdq)
    squeeze = next(n for n in qdq.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2  # axes moved to an input by the converter
    feeds = inputs_for(model, 9)
    ref = run(model, feeds)
    assert_close(ref, run(qdq, feeds))
    # the trap: relabelling opset 11 as 13 changes Softmax(axis=1) from "coerce to 2-D" to per-axis
    relabelled = onnx.ModelProto()
    relabelled.CopyFrom(model)
    relabelled.opset_import[0].version = 13
    relabelled.ir_version = 8
    del relabelled.graph.node[1].attribute[:]
    relabelled.graph.node[1].input.append("axes")
    relabelled.graph.initializer.append(_init("axes", np.array([0], np.int64)))
    assert not np.allclose(run(relabelled, feeds)["y"], ref["y"], atol=1e-3)
    assert axis_of(dq_nodes_feeding(qdq, "conv")[1]) == 0
    assert fused_ops(qdq.SerializeToString())["QLinearConv"] == 1
    assert check_target_rules(qdq, get_target("CPU")) == []
    with pytest.raises(PtqError, match="upgrade_opset first"):
        place_qdq(model, get_target("CPU"))


def test_upgrade_keeps_models_at_13_or_newer_untouched():
    model = cnn_model()
    assert upgrade_opset(model) is model


def test_same_plan_gives_byte_identical_models():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    a = emit_qdq(model, plan).SerializeToString(deterministic=True)
    b = emit_qdq(model, plan).SerializeToString(deterministic=True)
    reordered = FullQuantPlan(target=plan.target, nodes=plan.nodes,
                              activations=dict(reversed(list(plan.activations.items()))),
                              weights=list(reversed(plan.weights)), biases=list(reversed(plan.biases)))
    c = emit_qdq(model, reordered).SerializeToString(deterministic=True)
    assert a == b == c
    plan2, _ = minmax_plan(cnn_model(), "CPU")
    assert emit_qdq(cnn_model(), plan2).SerializeToString(deterministic=True) == a


def test_input_model_is_not_modified_and_names_are_unique_and_prefixed():
    model = cnn_model()
    before = model.SerializeToString()
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    assert model.SerializeToString() == before
    original = {n.name for n in model.graph.node}
    new_nodes = [n.name for n in qdq.graph.node if n.name not in original]
    assert new_nodes and all(n.startswith("ptq_") for n in new_nodes)
    assert len({n.name for n in qdq.graph.node}) == len(qdq.graph.node)
    outputs = [o for n in qdq.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    assert {t.name for t in qdq.graph.initializer}.isdisjoint(outputs)


def test_name_collisions_get_suffixes():
    model = cnn_model()
    # a tensor already called like the emitter's DQ output for 'x'
    model.graph.node[0].output[0] = "ptq_dq_x"
    model.graph.node[1].input[0] = "ptq_dq_x"
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    onnx.checker.check_model(qdq)
    feeds = inputs_for(model, 0)
    assert_close(run(model, feeds), run(qdq, feeds))


def test_explicit_hand_written_plan():
    """No placement helper: a MatMul with a per-tensor asymmetric int8 plan written out by hand (on the
    portable grid [-64, 64])."""
    w = np.linspace(-1, 1, 8 * 4, dtype=np.float32).reshape(8, 4)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [2, 8])], [_vi("y", [2, 4])],
                   [_init("w", w)])
    s_w = np.float32(2 / 128)
    q = np.clip(np.round(w / s_w), -64, 64).astype(np.int8)
    plan = FullQuantPlan(target="CPU", nodes=("mm",),
                         activations={"x": ActivationQuant("x", 4 / 255, 128, "uint8"),
                                      "y": ActivationQuant("y", 8 / 255, 128, "uint8")},
                         weights=[WeightQuant("mm", 1, "w", q, np.array([s_w]), np.array([0], np.int8), None)])
    qdq = emit_qdq(model, plan)
    x = np.linspace(-1.5, 1.5, 16, dtype=np.float32).reshape(2, 8)
    y = run(qdq, {"x": x})["y"]
    xq = (np.clip(np.round(x / (4 / 255)) + 128, 0, 255) - 128) * (4 / 255)
    expect = xq @ (q.astype(np.float32) * s_w)
    expect = (np.clip(np.round(expect / (8 / 255)) + 128, 0, 255) - 128) * (8 / 255)
    np.testing.assert_allclose(y, expect, atol=8 / 255 + 1e-6)
    assert fused_ops(qdq.SerializeToString())["QLinearMatMul"] == 1
    assert "w" not in {t.name for t in qdq.graph.initializer}


def test_plan_errors_are_one_line_ptq_errors():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    bad = FullQuantPlan(target="CPU", nodes=plan.nodes, activations={"nope": ActivationQuant("nope", 0.1, 0, "int8")})
    with pytest.raises(PtqError, match="nope"):
        emit_qdq(model, bad)
    bad = FullQuantPlan(target="CPU", nodes=plan.nodes, activations={"x": ActivationQuant("x", 0.1, 300, "uint8")})
    with pytest.raises(PtqError, match="zero point"):
        emit_qdq(model, bad)
    w = plan.weights[0]
    bad = FullQuantPlan(target="CPU", nodes=plan.nodes, weights=[WeightQuant(w.node, w.input_index, w.tensor, w.q[:1], w.scale, w.zero_point, w.axis)])
    with pytest.raises(PtqError, match="shape"):
        emit_qdq(model, bad)


def test_already_quantized_model_is_rejected():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    again = FullQuantPlan(target="CPU", nodes=(), activations={"ptq_dq_x": ActivationQuant("ptq_dq_x", 0.1, 0, "uint8")})
    with pytest.raises(PtqError, match="already"):
        emit_qdq(qdq, again)


def test_check_target_rules_reports_violations():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    nv = check_target_rules(qdq, get_target("NVGPU"))
    assert any("symmetric" in p for p in nv)  # asymmetric activations
    assert any("keeps biases float" in p for p in nv)
    # break the per-channel axis by hand
    broken = onnx.ModelProto()
    broken.CopyFrom(qdq)
    wdq = dq_nodes_feeding(broken, "conv1")[1]
    for a in wdq.attribute:
        if a.name == "axis":
            a.i = 1
    assert any("axis 1, expected 0" in p for p in check_target_rules(broken, get_target("CPU")))


def test_skip_list_keeps_node_float_without_islands():
    model = cnn_model()
    plan, placement = minmax_plan(model, "CPU", skip=("conv2",))
    assert placement.kept_float == {"conv2": "skip_quant_node"}
    qdq = emit_qdq(model, plan)
    feeds = inputs_for(model, 8)
    assert_close(run(model, feeds), run(qdq, feeds))
    ops = fused_ops(qdq.SerializeToString())
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 1 and ops["QGemm"] == 1, ops
    assert check_target_rules(qdq, get_target("CPU")) == []


def residual_model(seed=5):
    """Conv -> Clip(0, 6) -> Conv -> Add(skip) -> Relu -> Concat(skip) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [_init("w1", rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)),
             _init("w2", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)),
             _init("b2", rng.normal(0, 0.1, (8,)).astype(np.float32)),
             _init("wg", rng.normal(0, 0.3, (5, 16)).astype(np.float32)),
             _init("lo", np.array(0, np.float32)), _init("hi", np.array(6, np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r"], name="relu6"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["t"], name="relu"),
        helper.make_node("Concat", ["t", "r"], ["k"], name="concat", axis=1),
        helper.make_node("GlobalAveragePool", ["k"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 5])], inits)


def test_residual_cnn_runs_fully_integer_on_cpu():
    model = residual_model()
    plan, placement = minmax_plan(model, "CPU")
    assert set(placement.nodes) == {n.name for n in model.graph.node}
    assert placement.source["c1"] == "r" and placement.source["s"] == "t"
    qdq = emit_qdq(model, plan)
    kinds = [n.op_type for n in qdq.graph.node]
    assert "Clip" not in kinds and "Relu" not in kinds  # folded into the Q of their producers
    feeds = inputs_for(model, 4)
    assert_close(run(model, feeds), run(qdq, feeds))
    ops = fused_ops(qdq.SerializeToString())
    for op, count in (("QLinearConv", 2), ("QLinearAdd", 1), ("QLinearConcat", 1),
                      ("QLinearGlobalAveragePool", 1), ("QGemm", 1), ("QuantizeLinear", 1)):
        assert ops[op] == count, ops
    assert ops["DequantizeLinear"] == 0, ops
    assert check_target_rules(qdq, get_target("CPU")) == []


def test_msl_style_op_subset_keeps_requant_ops_float():
    model = residual_model()
    placement = place_qdq(model, get_target("CPU"), op_types={"Conv", "Gemm", "MatMul", "Relu", "Clip", "Flatten"})
    assert {"conv1", "relu6", "conv2", "fc"} <= set(placement.nodes)
    assert "add" not in placement.nodes and "concat" not in placement.nodes and "gap" not in placement.nodes
    assert "relu" not in placement.nodes  # its input comes from a float Add
    assert "flat" not in placement.nodes  # nothing quantized around it


def test_clamp_with_other_params_is_kept():
    """A Relu whose input and output carry different params stays in the graph (exact semantics)."""
    w = np.random.default_rng(0).normal(0, 0.5, (4, 2, 1, 1)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("Relu", ["c"], ["y"], name="relu")],
                   [_vi("x", [1, 2, 3, 3])], [_vi("y", [1, 4, 3, 3])], [_init("w", w)])
    q, s, z, axis = TARGETS["CPU"].quantize_weight(w, "Conv", 1)
    acts = {"x": ActivationQuant("x", 0.02, 128, "uint8"), "c": ActivationQuant("c", 0.03, 120, "uint8"),
            "y": ActivationQuant("y", 0.02, 0, "uint8")}
    plan = FullQuantPlan("CPU", ("conv", "relu"), acts, [WeightQuant("conv", 1, "w", q, s, z, axis)])
    qdq = emit_qdq(model, plan)
    assert [n.op_type for n in qdq.graph.node].count("Relu") == 1
    acts["c"] = ActivationQuant("c", 0.02, 0, "uint8")  # same params as y: folded
    qdq = emit_qdq(model, FullQuantPlan("CPU", ("conv", "relu"), acts, [WeightQuant("conv", 1, "w", q, s, z, axis)]))
    assert "Relu" not in [n.op_type for n in qdq.graph.node]
    assert [o.name for o in qdq.graph.output] == ["y"]
    x = np.random.default_rng(1).normal(0, 1, (1, 2, 3, 3)).astype(np.float32)
    ref = np.maximum(run(model, {"x": x})["y"], 0)
    np.testing.assert_allclose(run(qdq, {"x": x})["y"], ref, atol=0.02 * 1.5 + 0.02)


def test_fused_ops_at_level_all():
    model = cnn_model()
    plan, _ = minmax_plan(model, "CPU")
    ops = fused_ops(emit_qdq(model, plan).SerializeToString(), level="all")
    assert ops["QLinearConv"] == 2
    with pytest.raises(PtqError, match="level"):
        fused_ops(b"", level="max")


@pytest.mark.parametrize("shape", [[4, 64], [2, 4, 64]])
def test_matmul_add_bias_stays_integer(shape):
    """MatMul -> Add(const bias): without a Q after the MatMul, ORT merges both into a float Gemm."""
    rng = np.random.default_rng(0)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                    helper.make_node("Add", ["h", "b"], ["y"], name="bias")],
                   [_vi("x", shape)], [_vi("y", shape[:-1] + [32])],
                   [_init("w", rng.normal(0, 0.1, (64, 32)).astype(np.float32)),
                    _init("b", rng.normal(0, 0.1, (32,)).astype(np.float32))])
    plan, placement = minmax_plan(model, "CPU")
    assert "h" in placement.tensors and "bias" not in placement.nodes
    qdq = emit_qdq(model, plan)
    assert fused_ops(qdq.SerializeToString())["QLinearMatMul"] == 1
    assert float_paths(optimized_model(qdq)) == []
    # the trap, for the record: the same plan without the output pair
    del plan.activations["h"]
    trap = optimized_model(emit_qdq(model, plan))
    assert float_paths(trap) == ["mm/MatMulAddFusion (Gemm)"]
    feeds = inputs_for(model, 2)
    assert_close(run(model, feeds), run(qdq, feeds))


def test_ir3_opset9_model_with_initializers_as_inputs():
    """Old exports (IR 3) list every initializer as a graph input; those are constants there."""
    base = cnn_model()
    graph = onnx.GraphProto()
    graph.CopyFrom(base.graph)
    for t in base.graph.initializer:
        graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    up = upgrade_opset(model)
    assert up.ir_version >= 7 and default_opset(up) == 13
    assert [i.name for i in up.graph.input] == ["x"]  # no longer overridable inputs
    plan, _ = minmax_plan(model, "CPU")
    qdq = emit_qdq(model, plan)
    feeds = inputs_for(model, 3)
    assert_close(run(up, feeds), run(qdq, feeds))
    assert fused_ops(qdq.SerializeToString())["QLinearConv"] == 2


def test_cpu_plan_with_codes_beyond_the_portable_form_is_refused_unless_it_says_vnni():
    """Full-range int8 codes saturate on x86 CPUs without VNNI: the emitter writes them only on request."""
    w = np.linspace(-1, 1, 8 * 4, dtype=np.float32).reshape(8, 4)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [2, 8])], [_vi("y", [2, 4])],
                   [_init("w", w)])
    s_w = np.float32(1 / 127)
    q = np.clip(np.round(w / s_w), -127, 127).astype(np.int8)
    acts = {"x": ActivationQuant("x", 4 / 255, 128, "uint8"), "y": ActivationQuant("y", 8 / 255, 128, "uint8")}
    weights = [WeightQuant("mm", 1, "w", q, np.array([s_w]), np.array([0], np.int8), None)]
    with pytest.raises(PtqError, match=r"'w' of node 'mm' has int8 codes in \[-127, 127\].*int8_form=vnni"):
        emit_qdq(model, FullQuantPlan(target="CPU", nodes=("mm",), activations=acts, weights=weights))
    vnni = emit_qdq(model, FullQuantPlan(target="CPU", nodes=("mm",), activations=acts, weights=weights,
                                         int8_form="vnni"))
    assert {p.key: p.value for p in vnni.metadata_props}["ptqflow.int8_form"] == "vnni"
