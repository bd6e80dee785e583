"""Nodes the latency guard keeps in FP32 still store their weights as 8-bit codes, decoded once when the
session is created: a guarded FULL_QUANT model stays small and runs the FP32 kernels."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save
from test_full_quant import calib_folder, cnn_model, full_cfg

from ptq_core.modes.full.quantize import quantize_full
from ptq_core.onnxgraph.session import InputOptions

X = {"x": np.random.default_rng(3).normal(size=(1, 3, 16, 16)).astype(np.float32)}


@pytest.fixture
def guard_keeps_the_convs(monkeypatch, tmp_path):
    from ptq_core.modes.full import latency_guard as speed

    monkeypatch.setenv("PTQFLOW_HOME", str(tmp_path / "home"))

    def convs_lose(model, cfg, target, nodes, shapes, table):
        return {n: "int8 kernel not faster here (test)" for n in nodes if n.startswith("conv")}, {}

    monkeypatch.setattr(speed, "int8_losers", convs_lose)


def float_weights(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2}


def run(model, feeds, path=None):
    options = ort.SessionOptions()
    if path:
        options.optimized_model_filepath = str(path)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()


def test_guarded_nodes_store_8bit_weights_that_load_as_float_convs(tmp_path, guard_keeps_the_convs):
    model_path = save(cnn_model(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), guard=True), InputOptions(), tmp_path / "w")
    assert {"conv1", "conv2"} <= set(result.speed.demoted) and "conv1" not in result.plan.nodes
    assert not float_weights(result.quantized) & {"w1", "w2"}  # no FP32 copy of the convs' weights is stored
    assert set(result.plan.stored_weights) == {"conv1", "conv2"}
    fp32 = run(onnx.load(str(model_path)), X)
    got = run(result.quantized, X, tmp_path / "optimized.onnx")
    assert np.dot(fp32, got) / (np.linalg.norm(fp32) * np.linalg.norm(got)) > 0.999
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    convs = [n for n in optimized.graph.node if n.op_type in ("Conv", "FusedConv")]
    inits = {t.name for t in optimized.graph.initializer}
    assert len(convs) == 2 and all(n.input[1] in inits for n in convs)  # the decode chain folded at load


def test_a_guarded_model_is_about_a_quarter_of_the_fp32_size(tmp_path, guard_keeps_the_convs):
    from ptq_core.onnxgraph.save import save_model_atomic

    model_path = save(cnn_model(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), guard=True), InputOptions(), tmp_path / "w")
    out = save_model_atomic(result.quantized, tmp_path / "q.onnx")
    assert out.stat().st_size <= 0.32 * model_path.stat().st_size


def test_nodes_kept_fp32_by_the_user_keep_their_float_weights(tmp_path, guard_keeps_the_convs):
    model_path = save(cnn_model(), tmp_path / "m.onnx")
    cfg = full_cfg(calib_folder(tmp_path), guard=True, extra="").replace(common_quant_param={"skip_quant_node": ("conv2",)})
    result = quantize_full(model_path, cfg, InputOptions(), tmp_path / "w")
    assert "w2" in float_weights(result.quantized) and "w1" not in float_weights(result.quantized)
    assert set(result.plan.stored_weights) == {"conv1"}


def test_without_the_guard_nothing_is_stored_that_way(tmp_path):
    model_path = save(cnn_model(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), guard=False), InputOptions(), tmp_path / "w")
    assert result.plan.stored_weights == {}


def test_the_written_model_carries_no_shape_annotations_onnxruntime_infers_itself(tmp_path):
    model = cnn_model()
    model = onnx.shape_inference.infer_shapes(model)
    assert len(model.graph.value_info) > 0
    model_path = save(model, tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), guard=False), InputOptions(), tmp_path / "w")
    assert len(result.quantized.graph.value_info) == 0
    run(result.quantized, X)
