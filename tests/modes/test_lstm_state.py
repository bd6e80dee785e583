"""An LSTM with state inputs (issue 15's stand-in): every mode converts it through the CLI, the written
model runs in plain onnxruntime, and its outputs stay close to FP32."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper


def lstm_model() -> onnx.ModelProto:
    """x[4, 1, 32] with state h0/c0[1, 1, 64] -> LSTM(64) -> MatMul head."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (1, 256, 32)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.2, (1, 256, 64)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.1, (1, 512)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.normal(0, 0.2, (64, 16)).astype(np.float32), "head")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "h", "c"], name="lstm", hidden_size=64),
             helper.make_node("Squeeze", ["h", "axes"], ["h2"], name="squeeze"),
             helper.make_node("MatMul", ["h2", "head"], ["logits"], name="head_mm")]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 1, 32]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, 64]),
              helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, 1, 64])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 16]),
               helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("c", TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph(nodes, "lstm", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def calib(tmp_path):
    rng = np.random.default_rng(1)
    folders = {}
    for name, shape in (("x", (4, 1, 32)), ("h0", (1, 1, 64)), ("c0", (1, 1, 64))):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            (folder / f"{i}.bin").write_bytes(rng.normal(0, 1, shape).astype(np.float32).tobytes())
        folders[name] = folder
    return ",".join(f"{k}:{v}" for k, v in folders.items())


MODES = {
    "WEIGHT_QUANT": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n",
    "DYNAMIC_QUANT": "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n",
    "FULL_QUANT": "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                  "[data_preprocess_param]\ncalibrate_path={calib}\ncalibrate_size=6\ninput_type=BIN\n"
                  "[ptqflow]\nlatency_guard=false\n",
}


@pytest.mark.parametrize("mode", list(MODES))
def test_an_lstm_with_state_inputs_converts_in_every_mode(tmp_path, mode, capsys):
    from ptqflow.cli import main

    model = save(lstm_model(), tmp_path / "lstm.onnx")
    cfg = write_config(tmp_path / "c.cfg", MODES[mode].format(calib=calib(tmp_path)))
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0, capsys.readouterr().err
    rng = np.random.default_rng(2)
    feeds = {"x": rng.normal(0, 1, (4, 1, 32)).astype(np.float32), "h0": np.zeros((1, 1, 64), np.float32),
             "c0": np.zeros((1, 1, 64), np.float32)}
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
    assert np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", list(MODES))
def test_the_flow_writes_the_same_lstm_model_as_the_direct_path_in_every_mode(tmp_path, mode):
    from ptqflow.api import convert

    model = save(lstm_model(), tmp_path / "lstm.onnx")
    cfg = write_config(tmp_path / "c.cfg", MODES[mode].format(calib=calib(tmp_path)))
    via_flow = convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert any(d.quantized for d in via_flow.layers)


def test_weight_quant_gives_each_gate_row_of_an_lstm_its_own_scale(tmp_path):
    """W and R are (directions, 4 * hidden, K): per direction alone would be one scale for the whole tensor."""
    from ptq_core.onnxgraph.sites import find_weight_sites
    from ptqflow.api import convert

    sites = {s.tensor: s for s in find_weight_sites(lstm_model())}
    assert (sites["W"].axis, sites["W"].channels, sites["R"].axis) == (1, 256, 1)
    model = save(lstm_model(), tmp_path / "lstm.onnx")
    cfg = write_config(tmp_path / "w.cfg", MODES["WEIGHT_QUANT"])
    result = convert(model, cfg, tmp_path / "q", use_flow=False)
    q = onnx.load(str(result.output_path))
    scales = [numpy_helper.to_array(t) for t in q.graph.initializer if list(t.dims) == [1, 256, 1]]
    assert len(scales) >= 2 and all(len(np.unique(s)) > 200 for s in scales)  # a scale per gate row, W and R
