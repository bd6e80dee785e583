"""Weights an If body holds are found, quantized with their channel axis, named by a stable path, and the
written model runs both branches in plain onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

W8 = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"


def two_rate_model() -> onnx.ModelProto:
    """A VAD-like model: an If on sr == 16000 whose branches each hold their own 64x64 MatMul weight."""

    def branch(name: str, seed: int) -> onnx.GraphProto:
        w = np.random.default_rng(seed).normal(0, 0.2, (64, 64)).astype(np.float32)
        return helper.make_graph([helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"], name=f"enc/{name}/mm")],
                                 name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, None)],
                                 [numpy_helper.from_array(w, f"w_{name}")])

    nodes = [helper.make_node("Equal", ["sr", "k16000"], ["is16k"], name="is16k"),
             helper.make_node("If", ["is16k"], ["y"], name="by_rate", then_branch=branch("then", 1),
                              else_branch=branch("else", 2))]
    graph = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
                                            helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(16000, np.int64), "k16000")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_weights_inside_both_if_branches_are_quantized_and_named_by_path(tmp_path, capsys):
    from ptqflow.cli import main

    model = save(two_rate_model(), tmp_path / "vad.onnx")
    cfg = write_config(tmp_path / "w.cfg", W8)
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0
    out = capsys.readouterr().out
    assert "by_rate/then_branch/enc/then/mm" in out and "by_rate/else_branch/enc/else/mm" in out  # "/" in names too
    assert "2 quantized" in out
    q = onnx.load(str(tmp_path / "q.onnx"))
    bodies = {a.name: a.g for n in q.graph.node if n.op_type == "If" for a in n.attribute}
    assert all(not body.initializer for body in bodies.values())  # the float weights left the branches
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * model.stat().st_size
    x = np.random.default_rng(3).normal(0, 1, (1, 64)).astype(np.float32)
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    quant = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    for rate in (16000, 8000):  # both branches
        feeds = {"x": x, "sr": np.array(rate, np.int64)}
        a, b = fp32.run(None, feeds)[0].ravel(), quant.run(None, feeds)[0].ravel()
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999


def test_constant_nodes_inside_nested_bodies_become_their_initializers():
    from ptq_core.onnxgraph.load import constants_to_initializers
    from ptq_core.onnxgraph.walk import subgraphs

    model = two_rate_model()
    for _, body in subgraphs(model.graph):  # weights as Constant nodes, as exporters inline them
        tensor = body.initializer[0]
        body.node.insert(0, helper.make_node("Constant", [], [tensor.name], value=tensor))
        del body.initializer[:]
    constants_to_initializers(model)
    assert all(len(body.initializer) == 1 and not any(n.op_type == "Constant" for n in body.node)
               for _, body in subgraphs(model.graph))


def test_subgraph_sites_carry_their_graph_path_and_output_channel_axis():
    from ptq_core.onnxgraph.sites import find_weight_sites

    model = two_rate_model()
    assert find_weight_sites(model) == []  # the main graph holds no weight
    sites = find_weight_sites(model, inside_subgraphs=True)
    assert sorted((s.node, s.graph, s.axis) for s in sites) == [
        ("by_rate/else_branch/enc/else/mm", "by_rate/else_branch", 1),
        ("by_rate/then_branch/enc/then/mm", "by_rate/then_branch", 1)]


def flow_and_direct(tmp_path, cfg):
    """The two-rate model converted through the flow and without it, with ``cfg``: both summaries."""
    from ptqflow.api import convert

    model = save(two_rate_model(), tmp_path / "vad.onnx")
    return convert(model, cfg, tmp_path / "flow", use_flow=True), convert(model, cfg, tmp_path / "direct", use_flow=False)


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_same_model_as_the_direct_path(tmp_path):
    via_flow, direct = flow_and_direct(tmp_path, write_config(tmp_path / "w.cfg", W8))
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert sum(d.quantized for d in via_flow.layers) == 2


def test_a_weight_a_scan_body_reads_from_the_main_graph_is_found_with_the_graph_it_lives_in():
    from modelgen import recurrent_model

    from ptq_core.onnxgraph.sites import find_weight_sites

    sites = {s.node: s for s in find_weight_sites(recurrent_model(), inside_subgraphs=True)}
    assert sorted(sites) == ["loop/body/mm_loop", "loop/body/pick/else_branch/mm_else",
                             "loop/body/pick/then_branch/mm_then", "scan/body/mm_scan"]
    scan = sites["scan/body/mm_scan"]
    assert (scan.tensor, scan.graph, scan.node_graph, scan.axis, scan.users) == ("w_scan", "", "scan/body", 1, 1)
    assert sites["loop/body/pick/then_branch/mm_then"].graph == "loop/body/pick/then_branch"


def test_weights_in_loop_and_scan_bodies_and_ifs_nested_in_them_are_quantized(tmp_path):
    from modelgen import recurrent_model

    from ptqflow.api import convert

    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    result = convert(model, write_config(tmp_path / "w.cfg", W8), tmp_path / "q", use_flow=False)
    assert sum(d.quantized for d in result.layers) == 4
    q = onnx.load(str(result.output_path))
    onnx.checker.check_model(q, full_check=True)
    assert "w_scan" not in {t.name for t in q.graph.initializer}  # read only by the Scan body: stored int8 too
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(0, 1, (1, 16)).astype(np.float32), "s": rng.normal(0, 1, (4, 1, 16)).astype(np.float32)}
    want, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
                 for p in (model, result.output_path))
    assert np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.999
