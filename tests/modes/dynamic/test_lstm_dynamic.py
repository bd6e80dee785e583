"""DYNAMIC_QUANT of an LSTM: W and R stored 8-bit for onnxruntime's DynamicQuantizeLSTM (directions x K x
4*hidden, one scale per gate row and direction): in the portable form uint8 around 128 (the full grid, exact on
every CPU), in the vnni form int8 around 0; close to FP32 in every direction; an LSTM the kernel cannot take
stays FP32 with the reason."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

DYNAMIC = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
HIDDEN, INPUT, STEPS = 24, 16, 5


def lstm(direction: str = "forward", layout: int = 0) -> onnx.ModelProto:
    """x -> LSTM(hidden 24) -> Y; gate rows of W scaled unevenly, so one scale per gate row matters."""
    rng = np.random.default_rng(11)
    d = 2 if direction == "bidirectional" else 1
    w = rng.normal(0, 0.3, (d, 4 * HIDDEN, INPUT)) * rng.uniform(0.05, 2.0, (d, 4 * HIDDEN, 1))
    r = rng.normal(0, 0.2, (d, 4 * HIDDEN, HIDDEN))
    b = rng.normal(0, 0.1, (d, 8 * HIDDEN))
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w, "W"), (r, "R"), (b, "B"))]
    x_shape = [1, STEPS, INPUT] if layout else [STEPS, 1, INPUT]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h"], name="rnn", hidden_size=HIDDEN,
                            direction=direction, layout=layout)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def convert(tmp_path, model):
    from ptqflow.api import convert as api_convert

    path = save(model, tmp_path / "lstm.onnx")
    return path, api_convert(path, write_config(tmp_path / "d.cfg", DYNAMIC), tmp_path / "q", use_flow=False)


def test_an_lstm_becomes_dynamic_quantize_lstm_with_uint8_w_and_r_around_128_in_its_layout(tmp_path):
    _, result = convert(tmp_path, lstm())
    q = onnx.load(str(result.output_path))
    (node,) = q.graph.node
    assert (node.op_type, node.domain) == ("DynamicQuantizeLSTM", "com.microsoft")
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    w, r = inits[node.input[1]], inits[node.input[2]]
    assert w.dtype == r.dtype == np.uint8 and w.shape == (1, INPUT, 4 * HIDDEN) and r.shape == (1, HIDDEN, 4 * HIDDEN)
    for codes, scale, zero in ((w, node.input[8], node.input[9]), (r, node.input[10], node.input[11])):
        assert inits[scale].shape == (1, 4 * HIDDEN) and (inits[zero] == 128).all()
        # the portable form keeps the whole symmetric 8-bit grid: every gate row reaches +-127 around 128
        assert (np.abs(codes.astype(int) - 128).max(axis=1) == 127).all()
    assert [d.quantized for d in result.layers] == [True, True]


def test_the_vnni_form_stores_int8_lstm_weights_around_0(tmp_path):
    from ptqflow.api import convert as api_convert

    path = save(lstm(), tmp_path / "lstm.onnx")
    cfg = write_config(tmp_path / "v.cfg", DYNAMIC + "[ptqflow]\nint8_form=vnni\n")
    q = onnx.load(str(api_convert(path, cfg, tmp_path / "q", use_flow=False).output_path))
    (node,) = q.graph.node
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert inits[node.input[1]].dtype == np.int8 and not inits[node.input[9]].any()
    assert np.abs(inits[node.input[1]]).max() == 127


def test_uint8_lstm_weights_do_not_saturate_where_int8_pairs_would(tmp_path):
    """Each gate row: a pair of weights at the top of the grid, then four at minus half of it, and every input
    at the top of its range. u8 x s8 kernels without VNNI clip the first pair's sum (255 * 127 * 2 > 32767):
    the vnni form is off by 0.86 on an AVX2 CPU. The u8 x u8 kernel the portable form uses cannot clip."""
    model = lstm()
    row = np.resize(np.array([0.5, 0.5, -0.25, -0.25, -0.25, -0.25], np.float32), INPUT)
    w = next(t for t in model.graph.initializer if t.name == "W")
    w.CopyFrom(numpy_helper.from_array(np.tile(row, (1, 4 * HIDDEN, 1)), "W"))
    path, result = convert(tmp_path, model)
    x = np.full((STEPS, 1, INPUT), 2.0, np.float32)
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for p in (path, result.output_path))
    assert np.abs(want - got).max() < 0.1


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_the_quantized_lstm_stays_close_to_fp32_in_every_direction(tmp_path, direction):
    path, result = convert(tmp_path, lstm(direction))
    x = np.random.default_rng(3).normal(0, 1, (STEPS, 1, INPUT)).astype(np.float32)
    for want, got in zip(*(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})
                           for p in (path, result.output_path))):
        cos = float(np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)))
        assert cos > 0.999 and not np.array_equal(want, got)


def test_a_batch_first_lstm_stays_fp32_and_says_why(tmp_path):
    _, result = convert(tmp_path, lstm(layout=1))
    assert [n.op_type for n in onnx.load(str(result.output_path)).graph.node] == ["LSTM"]
    assert all(not d.quantized and "layout=1" in d.reason for d in result.layers)


def test_debug_mode_lists_a_scale_per_gate_row_of_w_and_of_r(tmp_path):
    import csv

    from ptqflow.api import convert as api_convert

    path = save(lstm("bidirectional"), tmp_path / "lstm.onnx")
    cfg = write_config(tmp_path / "d.cfg", DYNAMIC + f"debug_info_save_path={tmp_path / 'debug'}\n")
    api_convert(path, cfg, tmp_path / "q", use_flow=False)
    with open(tmp_path / "debug" / "quant_param.csv") as f:
        rows = list(csv.DictReader(f))
    assert [sum(r["TensorName"] == t for r in rows) for t in ("W", "R")] == [2 * 4 * HIDDEN, 2 * 4 * HIDDEN]
