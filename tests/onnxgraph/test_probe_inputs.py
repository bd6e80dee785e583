"""Data-free modes never need the model to run: the output-cosine check tries plausible inputs, and when
none runs the model is still written and the summary says why; onnxruntime's own log never shows."""

import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

W8 = ("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
      "min_quant_weight_channel=0\n")
DYN = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"


def fixed_size_detector(side: int) -> onnx.ModelProto:
    """Two stride-2 convs whose output is concatenated with a constant map of side x side: the model runs
    only on inputs of 4 * side pixels a side, as a detector's anchor grid would."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros((1, 2, side, side), np.float32), "grid")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Concat", ["b", "grid"], ["y"], name="with_grid", axis=1)]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def selector_model() -> onnx.ModelProto:
    """y = MatMul(x, W) when sr == 16000, else an error-raising branch (a Reshape to an impossible shape)."""
    rng = np.random.default_rng(1)
    then_graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"], name="mm16k")], "then", [],
                                   [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Reshape", ["x", "bad"], ["e"], name="bad_reshape")], "else", [],
                                   [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Equal", ["sr", "k16000"], ["is16k"], name="is16k"),
             helper.make_node("If", ["is16k"], ["y"], name="by_rate", then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32]),
                                            helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.normal(0, 0.2, (32, 32)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.array(16000, np.int64), "k16000"),
                               numpy_helper.from_array(np.array([7, 7, 7], np.int64), "bad")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def convert(model, cfg, out, *flags):
    return subprocess.run([sys.executable, "-m", "ptqflow.cli", "convert", f"--modelFile={model}",
                           f"--configFile={cfg}", f"--outputFile={out}", "--no-flow", *flags],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("cfg_text", [W8, DYN], ids=["WEIGHT_QUANT", "DYNAMIC_QUANT"])
def test_a_model_that_only_runs_at_an_image_size_is_checked_at_that_size(tmp_path, cfg_text):
    model = save(fixed_size_detector(56), tmp_path / "det.onnx")  # runs on 224 x 224 only
    proc = convert(model, write_config(tmp_path / "c.cfg", cfg_text), tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert re.search(r"output cosine vs FP32 (0\.99|1\.000)", text) and "x:1,3,224,224" in text
    assert "onnxruntime:" not in proc.stderr and "[E:" not in proc.stderr  # no raw onnxruntime log line


def test_a_model_no_generated_input_runs_is_written_and_the_summary_says_why(tmp_path):
    model = save(fixed_size_detector(57), tmp_path / "det.onnx")  # 228 x 228 only: no size tried fits
    proc = convert(model, write_config(tmp_path / "c.cfg", W8), tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "q.onnx").exists()
    text = " ".join(proc.stdout.split())
    assert "not measured" in text and "--inputShape=x:1,3,<h>,<w>" in text and "Concat" in text
    assert "[E:" not in proc.stderr and "Traceback" not in proc.stderr
    proc = convert(model, write_config(tmp_path / "c.cfg", W8), tmp_path / "q2", "--inputShape=x:1,3,228,228")
    assert proc.returncode == 0 and "output cosine vs FP32 0.99" in " ".join(proc.stdout.split())


def silent_detector() -> onnx.ModelProto:
    """A probability map that stays ~0 on anything but its own kind of input: Sigmoid(conv(x) - 40)."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (1, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-40.0], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["z"], ["p"], name="prob")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_an_output_that_is_zero_on_generated_inputs_gives_no_cosine_and_says_why(tmp_path):
    model = save(silent_detector(), tmp_path / "det.onnx")
    proc = convert(model, write_config(tmp_path / "c.cfg", W8), tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "not measured" in text and "every FP32 output is ~0" in text and "0.000000" not in text


def test_an_integer_selector_input_gets_the_value_the_graph_compares_it_with(tmp_path):
    from ptq_core.data.probe_inputs import compared_constants

    assert compared_constants(selector_model()) == {"sr": [16000]}
    model = save(selector_model(), tmp_path / "vad.onnx")
    proc = convert(model, write_config(tmp_path / "c.cfg", DYN), tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    assert "output cosine vs FP32" in proc.stdout and "not measured" not in proc.stdout


def test_a_model_quantized_before_is_said_to_be(tmp_path):
    from modelgen import mlp_model
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = save(mlp_model(hidden=64), tmp_path / "mlp.onnx")
    quantize_dynamic(str(fp32), str(tmp_path / "ort_dyn.onnx"), weight_type=QuantType.QInt8)
    proc = convert(tmp_path / "ort_dyn.onnx", write_config(tmp_path / "c.cfg", W8), tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "already quantized" in line]
    assert len(said) == 1 and "MatMulInteger" in said[0]
    assert "already quantized" in proc.stdout and "only the float weights left" in " ".join(proc.stdout.split())


def test_an_audio_window_with_a_state_input_is_probed_at_512_samples_and_batch_1(tmp_path):
    """x[1, T] needs T = 512 (a MatMul), and state[2, b, 8] is joined with it, so b must be 1."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Unsqueeze", ["h", "axis0"], ["h3"], name="as_state"),
             helper.make_node("Concat", ["state", "h3"], ["y"], name="join", axis=0)]
    graph = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T"]),
                                            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "b", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.normal(0, 0.1, (512, 8)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.array([0], np.int64), "axis0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    proc = convert(save(model, tmp_path / "vad.onnx"), write_config(tmp_path / "c.cfg", W8), tmp_path / "q")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "x:1,512; state:2,1,8" in text and "not measured" not in text


def probability_head() -> onnx.ModelProto:
    """x[1, 32] -> MatMul -> y [1, 32] and p = Sigmoid(ReduceMean(y)) [1, 1]: a VAD-style one-value output."""
    w = numpy_helper.from_array(np.random.default_rng(4).normal(0, 0.2, (32, 32)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("ReduceMean", ["y"], ["m"], name="mean", axes=[1], keepdims=1),
             helper.make_node("Sigmoid", ["m"], ["p"], name="prob")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
                               helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_the_summary_says_the_cosine_is_blind_to_a_one_value_output(tmp_path):
    model = save(probability_head(), tmp_path / "head.onnx")
    proc = convert(model, write_config(tmp_path / "c.cfg", W8), tmp_path / "q")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "blind to 'p' (1 value)" in text and "'y'" not in text
