"""FULL_QUANT of a two-input model end to end: calibrate_path with two ``name:folder`` items, through the CLI
and through the flow, each input calibrated from its own folder."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper


def two_input_model() -> onnx.ModelProto:
    """image[1,3,12,12] -> Conv -> Relu ; side[1,3,12,12] -> Conv -> Relu ; Add -> Conv -> GlobalAveragePool."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "wb"),
             numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "wc"),
             numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "bc")]
    nodes = [helper.make_node("Conv", ["image", "wa"], ["a"], name="conv_image", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"], name="relu_image"),
             helper.make_node("Conv", ["side", "wb"], ["b"], name="conv_side", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["b"], ["br"], name="relu_side"),
             helper.make_node("Add", ["ar", "br"], ["s"], name="join"),
             helper.make_node("Conv", ["s", "wc", "bc"], ["c"], name="conv_out", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 12, 12])
                                             for n in ("image", "side")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def setup(tmp_path):
    model = save(two_input_model(), tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    for name, scale in (("image", 1.0), ("side", 20.0)):  # the side input's range is 20x the image's
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            (folder / f"{i:02d}.bin").write_bytes((scale * rng.normal(0, 1, (1, 3, 12, 12))).astype(np.float32).tobytes())
    cfg = write_config(tmp_path / "two.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       "[data_preprocess_param]\n"
                       f"calibrate_path=image:{tmp_path / 'image'},side:{tmp_path / 'side'}\ncalibrate_size=6\n"
                       "input_type=BIN\n[ptqflow]\nlatency_guard=false\n")
    return model, cfg, tmp_path


def input_scale(model_path, name: str) -> float:
    """The scale of the QuantizeLinear reading graph input ``name``."""
    model = onnx.load(str(model_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
    return float(inits[q.input[1]])


def test_two_input_full_quant_through_the_cli_calibrates_each_input_from_its_folder(setup, capsys):
    from ptqflow.cli import main

    model, cfg, tmp = setup
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp / 'cli'}",
                 "--inputDataFormat=NCHW", "--no-flow"]) == 0
    out = tmp / "cli.onnx"
    assert input_scale(out, "side") > 10 * input_scale(out, "image")
    rng = np.random.default_rng(2)
    feeds = {"image": rng.normal(0, 1, (1, 3, 12, 12)).astype(np.float32),
             "side": (20 * rng.normal(0, 1, (1, 3, 12, 12))).astype(np.float32)}
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
    assert np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.99
    assert "'image', 'side'" in capsys.readouterr().out  # the calibration layout row names both inputs


@pytest.mark.usefixtures("prefect_harness")
def test_two_input_full_quant_through_the_flow_writes_the_cli_model(setup):
    from ptqflow.api import convert

    model, cfg, tmp = setup
    via_flow = convert(model, cfg, tmp / "flow", input_data_format="NCHW", use_flow=True)
    direct = convert(model, cfg, tmp / "direct", input_data_format="NCHW", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert input_scale(via_flow.output_path, "side") > 10 * input_scale(via_flow.output_path, "image")
