"""DYNAMIC_QUANT of one outer weight read in both branches of an If (silero-vad's nested LSTMs): each branch
is quantized as a model of its own, and the identical int8 copies they make are stored once, in the graph
that holds the If, where both branches read them."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

DYNAMIC = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"


def shared_weight_model() -> onnx.ModelProto:
    """x[1, 32], k (int64 scalar) -> If(k == 16000): then MatMul(x, w_shared), else MatMul(Neg(x), w_shared)."""
    w = np.random.default_rng(7).normal(0, 0.2, (32, 32)).astype(np.float32)
    f = TensorProto.FLOAT
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w_shared"], ["y_then"], name="mm_then")], "then", [],
                             [helper.make_tensor_value_info("y_then", f, [1, 32])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["nx"], name="neg"),
                               helper.make_node("MatMul", ["nx", "w_shared"], ["y_else"], name="mm_else")], "else", [],
                              [helper.make_tensor_value_info("y_else", f, [1, 32])])
    nodes = [helper.make_node("Equal", ["k", "k16"], ["is16"], name="is16"),
             helper.make_node("If", ["is16"], ["y"], name="pick", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "shared",
                              [helper.make_tensor_value_info("x", f, [1, 32]),
                               helper.make_tensor_value_info("k", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", f, [1, 32])],
                              [numpy_helper.from_array(w, "w_shared"),
                               numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def converted(tmp_path):
    from ptqflow.api import convert

    model = save(shared_weight_model(), tmp_path / "shared.onnx")
    return model, convert(model, write_config(tmp_path / "d.cfg", DYNAMIC), tmp_path / "q", use_flow=False)


def _int8(graph: onnx.GraphProto) -> list[str]:
    return [t.name for t in graph.initializer if t.data_type == TensorProto.INT8]


def test_both_branches_are_quantized(converted):
    _, result = converted
    assert sorted(d.node for d in result.layers if d.quantized) == ["pick/else_branch/mm_else",
                                                                    "pick/then_branch/mm_then"]


def test_the_int8_codes_of_the_shared_weight_are_stored_once_where_both_branches_read_them(converted):
    _, result = converted
    q = onnx.load(str(result.output_path))
    (pick,) = [n for n in q.graph.node if n.op_type == "If"]
    branches = {a.name: a.g for a in pick.attribute}
    assert [_int8(b) for b in branches.values()] == [[], []]  # no copy left in a branch
    (codes,) = _int8(q.graph)
    for branch in branches.values():
        assert codes in {name for node in branch.node for name in node.input}
    assert "w_shared" not in {t.name for t in q.graph.initializer}
    onnx.checker.check_model(q, full_check=True)


@pytest.mark.parametrize("k", [16000, 8000])
def test_each_branch_stays_close_to_fp32(converted, k):
    model, result = converted
    feeds = {"x": np.random.default_rng(2).normal(0, 1, (1, 32)).astype(np.float32), "k": np.array(k, np.int64)}
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
                 for p in (model, result.output_path))
    assert float(np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got))) > 0.999
    assert not np.array_equal(want, got)
