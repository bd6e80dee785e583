"""Weights an exporter computes from constants (PyTorch's LSTM: the gates sliced out of weight_ih and
concatenated in ONNX's order) are folded into initializers, so every mode finds and quantizes them; a
chain that reads an activation, or a value used elsewhere, stays as it was."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

from ptq_core.onnxgraph.fold import fold_weight_chains

HIDDEN, INPUT = 16, 12


def torch_style_lstm(extra_reader: bool = False) -> onnx.ModelProto:
    """LSTM whose W and R are Unsqueeze(Concat(Slice(w, gate) for gates i, o, f, g)) of PyTorch-ordered
    (i, f, g, o) initializers; ``extra_reader``: w_ih is also a model output (through an Identity)."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4 * HIDDEN, INPUT)).astype(np.float32), "w_ih"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4 * HIDDEN, HIDDEN)).astype(np.float32), "w_hh"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = []
    for src, out in (("w_ih", "W"), ("w_hh", "R")):
        parts = []
        for gate in (0, 3, 1, 2):  # ONNX's i, o, f, c from PyTorch's i, f, g, o
            for bound, value in (("s", gate * HIDDEN), ("e", (gate + 1) * HIDDEN)):
                inits.append(numpy_helper.from_array(np.array([value], np.int64), f"{src}_{bound}{gate}"))
            nodes.append(helper.make_node("Slice", [src, f"{src}_s{gate}", f"{src}_e{gate}", "axis0"],
                                          [f"{src}_g{gate}"], name=f"{src}_slice{gate}"))
            parts.append(f"{src}_g{gate}")
        nodes.append(helper.make_node("Concat", parts, [f"{out}_2d"], name=f"{out}_concat", axis=0))
        nodes.append(helper.make_node("Unsqueeze", [f"{out}_2d", "axis0"], [out], name=f"{out}_unsqueeze"))
    nodes.append(helper.make_node("LSTM", ["x", "W", "R"], ["y", "y_h"], name="rnn", hidden_size=HIDDEN))
    outputs = [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["w_ih"], ["w_copy"], name="w_copy"))
        outputs.append(helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, None))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, INPUT])
    graph = helper.make_graph(nodes, "torch_lstm", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_an_lstm_weight_computed_by_slices_becomes_an_initializer_and_the_chain_goes():
    model = fold_weight_chains(torch_style_lstm())
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert [n.op_type for n in model.graph.node] == ["LSTM"]
    assert sorted(inits) == ["R", "W"]  # w_ih, w_hh and the slice bounds were read by the chain only
    w_ih = numpy_helper.to_array(torch_style_lstm().graph.initializer[0])
    want = np.concatenate([w_ih[g * HIDDEN:(g + 1) * HIDDEN] for g in (0, 3, 1, 2)])[None]
    np.testing.assert_array_equal(inits["W"], want)


def test_a_source_weight_read_elsewhere_stays_beside_the_folded_one():
    model = fold_weight_chains(torch_style_lstm(extra_reader=True))
    names = {t.name for t in model.graph.initializer}
    assert {"W", "R", "w_ih"} <= names and "w_hh" not in names
    assert [n.op_type for n in model.graph.node] == ["LSTM", "Identity"]


def test_a_weight_computed_from_an_activation_is_not_folded():
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["w"], name="as_weight"),
                               helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([4, 4], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    before = model.SerializeToString()
    assert fold_weight_chains(model).SerializeToString() == before


@pytest.mark.parametrize("quant_type", ["WEIGHT_QUANT", "DYNAMIC_QUANT"])
def test_every_data_free_mode_quantizes_the_folded_lstm(tmp_path, quant_type):
    from ptqflow.api import convert

    path = save(torch_style_lstm(), tmp_path / "lstm.onnx")
    cfg = write_config(tmp_path / "c.cfg", f"[common_quant_param]\nquant_type={quant_type}\nbit_num=8\n"
                       "min_quant_weight_size=0\nmin_quant_weight_channel=0\n")
    result = convert(path, cfg, tmp_path / "q", use_flow=False)
    assert sorted((d.tensor, d.quantized) for d in result.layers) == [("R", True), ("W", True)]
    x = np.random.default_rng(1).normal(0, 1, (5, 1, INPUT)).astype(np.float32)
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].ravel()
                 for p in (path, result.output_path))
    assert np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.999


def test_the_same_weight_folded_in_both_branches_of_an_if_is_stored_once_where_its_source_was():
    """Both branches compute the LSTM weight from one outer tensor (silero-vad's inner If): one folded
    initializer in the outer graph, read by both branches, and the source goes."""
    lstm = torch_style_lstm()
    chain = [n for n in lstm.graph.node if n.op_type != "LSTM"]
    small = [t for t in lstm.graph.initializer if t.name not in ("w_ih", "w_hh")]
    branches = {}
    for side in ("then", "else"):
        nodes = [onnx.NodeProto() for _ in chain]
        for copy, node in zip(nodes, chain):
            copy.CopyFrom(node)
            copy.name = f"{side}_{node.name}"
            copy.output[0] = f"{side}_{node.output[0]}"
            copy.input[:] = [f"{side}_{i}" if i.endswith(("_g0", "_g1", "_g2", "_g3", "_2d")) else i
                             for i in node.input]
        lstm_node = helper.make_node("LSTM", ["x", f"{side}_W", f"{side}_R"], ["", f"{side}_h"], name=f"{side}_rnn",
                                     hidden_size=HIDDEN)
        branches[side] = helper.make_graph(nodes + [lstm_node], side, [],
                                           [helper.make_tensor_value_info(f"{side}_h", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["h"], name="pick", then_branch=branches["then"],
                          else_branch=branches["else"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, INPUT]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
        [t for t in lstm.graph.initializer if t.name in ("w_ih", "w_hh")] + small)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    x = np.random.default_rng(2).normal(0, 1, (5, 1, INPUT)).astype(np.float32)
    want = [ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "flag": np.array(f)})[0] for f in (True, False)]
    folded = fold_weight_chains(model)
    big = [t.name for t in folded.graph.initializer if len(t.dims) == 3]
    assert sorted(big) in (["else_R", "else_W"], ["then_R", "then_W"])  # once each, outside; w_ih, w_hh gone
    assert all(len(b.g.initializer) == 0 for b in folded.graph.node[0].attribute)
    session = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    for f, w in zip((True, False), want):
        np.testing.assert_array_equal(session.run(None, {"x": x, "flag": np.array(f)})[0], w)
