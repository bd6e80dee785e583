"""Bias correction from patch means gives the shadow layer's mean error, for every Conv and Gemm shape."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_core.config import parse_config
from ptq_core.modes.full.bias_correction import (
    PatchProbe,
    ShadowProbe,
    mean_errors,
    statistics_model,
)
from ptq_core.modes.full.pipeline import accumulate_bias
from ptq_core.modes.full.prepare import build_plan, correctable_nodes, placement
from ptq_core.stats import collect
from ptq_core.stats.observers import make_observer

CFG = parse_config("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                   "min_quant_weight_size=0\nmin_quant_weight_channel=0\n")

CONVS = {
    "3x3 pad 1": dict(kernel=(3, 3), pads=[1, 1, 1, 1]),
    "stride 2, uneven pads": dict(kernel=(3, 3), strides=[2, 2], pads=[0, 1, 1, 0]),
    "dilation 2": dict(kernel=(3, 3), dilations=[2, 2], pads=[2, 2, 2, 2]),
    "5x1 stride (2, 1)": dict(kernel=(5, 1), strides=[2, 1], pads=[2, 0, 2, 0]),
    "1x1": dict(kernel=(1, 1)),
    "depthwise": dict(kernel=(3, 3), pads=[1, 1, 1, 1], group=8),
    "grouped": dict(kernel=(3, 3), pads=[1, 1, 1, 1], group=2),
    "SAME_UPPER stride 2": dict(kernel=(3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    "SAME_LOWER": dict(kernel=(4, 4), auto_pad="SAME_LOWER"),
    "VALID": dict(kernel=(3, 3), auto_pad="VALID"),
}


def conv_model(kernel, group=1, **attrs) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (8, 8 // group, *kernel)).astype(np.float32)
    b = rng.normal(0, 0.1, 8).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Conv", ["r", "w", "b"], ["y"], name="conv", group=group, **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 13, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def gemm_model(trans_a: int, trans_b: int, alpha: float) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.3, (6, 10) if trans_b else (10, 6)).astype(np.float32)
    a_shape = [10, 5] if trans_a else [5, 10]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
             helper.make_node("Gemm", ["r", "w", "c"], ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, a_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(6, np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def errors(model: onnx.ModelProto, tmp_path, direct: bool, shape_of_x) -> tuple[dict, list]:
    cfg = CFG
    target, place = placement(model, cfg)
    rng = np.random.default_rng(5)
    samples = [rng.normal(0, 1, shape_of_x).astype(np.float32) for _ in range(3)]
    observers = {}
    session = collect.expose_tensors(model, ("x", "r", "y"), True)
    import onnxruntime as ort

    sess = ort.InferenceSession(session.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in samples:
        for name, value in zip(("x", "r", "y"), sess.run(["x", "r", "y"], {"x": x})):
            observers.setdefault(name, make_observer("MAX_MIN")).update(value, 0)
    plan = build_plan(model, cfg, target, place, observers)
    nodes = correctable_nodes(model, plan, ())
    probe_model, probes = statistics_model(model, plan, nodes, {"x": tuple(shape_of_x)}, direct=direct)
    path = tmp_path / f"probe-{direct}.onnx"
    path.write_bytes(probe_model.SerializeToString())
    rounds = []
    for i, x in enumerate(samples):
        np.save(tmp_path / f"s{i}.npy", x)
        rounds.append(collect.Round(i, (("x", str(tmp_path / f"s{i}.npy")),)))
    return mean_errors(model, plan, probes, accumulate_bias(str(path), probes, rounds)), probes


@pytest.mark.parametrize("case", list(CONVS), ids=list(CONVS))
def test_conv_patch_means_give_the_shadow_layers_mean_error(case, tmp_path):
    model = conv_model(**CONVS[case])
    fast, probes = errors(model, tmp_path, False, [2, 8, 13, 11])
    slow, reference = errors(model, tmp_path, True, [2, 8, 13, 11])
    assert all(isinstance(p, PatchProbe) for p in probes) and all(isinstance(p, ShadowProbe) for p in reference)
    assert np.abs(fast["conv"]).max() > 1e-4  # there is an error to correct
    np.testing.assert_allclose(fast["conv"], slow["conv"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("trans_a,trans_b,alpha", [(0, 0, 1.0), (0, 1, 1.0), (1, 0, 0.5), (1, 1, 2.0)])
def test_gemm_row_means_give_the_shadow_layers_mean_error(trans_a, trans_b, alpha, tmp_path):
    model = gemm_model(trans_a, trans_b, alpha)
    shape = [10, 5] if trans_a else [5, 10]
    fast, probes = errors(model, tmp_path, False, shape)
    slow, _ = errors(model, tmp_path, True, shape)
    assert isinstance(probes[0], PatchProbe)
    np.testing.assert_allclose(fast["gemm"], slow["gemm"], rtol=1e-4, atol=1e-6)


def test_same_padding_without_a_known_input_size_uses_the_shadow_layer(tmp_path):
    model = conv_model(**CONVS["SAME_UPPER stride 2"])
    target, place = placement(model, CFG)
    plan = build_plan(model, CFG, target, place, {t: _obs() for t in ("x", "r", "y")})
    _, probes = statistics_model(model, plan, correctable_nodes(model, plan, ()), input_shapes=None)
    assert isinstance(probes[0], ShadowProbe)


def _obs():
    obs = make_observer("MAX_MIN")
    obs.update(np.linspace(-1, 1, 16, dtype=np.float32), 0)
    return obs
