"""DYNAMIC_QUANT inside an If: it needs no data, so the MatMul weights of both branches are quantized,
the layer table names them by their branch's path, and the written model runs both branches."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config

from tests.modes.weight.test_subgraph_weights import flow_and_direct, two_rate_model

DYNAMIC = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"


def convert(tmp_path, capsys):
    from ptqflow.cli import main

    model = save(two_rate_model(), tmp_path / "vad.onnx")
    cfg = write_config(tmp_path / "d.cfg", DYNAMIC)
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0, capsys.readouterr().err
    return model, tmp_path / "q.onnx", " ".join(capsys.readouterr().out.split())


def test_matmul_weights_of_both_if_branches_are_quantized_and_named_by_path(tmp_path, capsys):
    _, out, text = convert(tmp_path, capsys)
    assert "2 quantized, 0 skipped" in text
    q = onnx.load(str(out))
    (node,) = [n for n in q.graph.node if n.op_type == "If"]
    for attr in node.attribute:
        assert "MatMulInteger" in [n.op_type for n in attr.g.node], attr.name


def test_the_layer_rows_carry_the_branch_path(tmp_path):
    from ptqflow.api import convert as api_convert

    model = save(two_rate_model(), tmp_path / "vad.onnx")
    result = api_convert(model, write_config(tmp_path / "d.cfg", DYNAMIC), tmp_path / "q", use_flow=False)
    assert sorted(d.node for d in result.layers if d.quantized) == [
        "by_rate/else_branch/enc/else/mm", "by_rate/then_branch/enc/then/mm"]


@pytest.mark.parametrize("rate", [16000, 8000])
def test_both_branches_of_the_dynamic_model_stay_close_to_fp32(tmp_path, capsys, rate):
    model, out, _ = convert(tmp_path, capsys)
    x = np.random.default_rng(7).normal(0, 1, (1, 64)).astype(np.float32)
    feeds = {"x": x, "sr": np.array(rate, np.int64)}
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0].ravel()
            for p in (model, out))
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999 and not np.array_equal(a, b)


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_same_dynamic_if_model_as_the_direct_path(tmp_path):
    via_flow, direct = flow_and_direct(tmp_path, write_config(tmp_path / "d.cfg", DYNAMIC))
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert sum(d.quantized for d in via_flow.layers) == 2
