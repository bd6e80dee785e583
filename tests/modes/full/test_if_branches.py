"""FULL_QUANT inside an If: the branch every calibration round takes is quantized in place, the other
stays FP32, the written model keeps its If and runs both branches, and the summary counts what was done."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config

from tests.modes.weight.test_subgraph_weights import flow_and_direct, two_rate_model

FULL = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
        "[data_preprocess_param]\ncalibrate_path=x:{x},sr:{sr}\ncalibrate_size=8\ninput_type=BIN\n"
        "[ptqflow]\nlatency_guard=false\n")


def calibration(tmp_path, rates):
    rng = np.random.default_rng(5)
    x, sr = tmp_path / "x", tmp_path / "sr"
    x.mkdir()
    sr.mkdir()
    for i, rate in enumerate(rates):
        (x / f"{i}.bin").write_bytes(rng.normal(0, 1, (1, 64)).astype(np.float32).tobytes())
        (sr / f"{i}.bin").write_bytes(np.array(rate, np.int64).tobytes())
    return write_config(tmp_path / "f.cfg", FULL.format(x=x, sr=sr))


def convert(tmp_path, rates, capsys):
    from ptqflow.cli import main

    model = save(two_rate_model(), tmp_path / "vad.onnx")
    cfg = calibration(tmp_path, rates)
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0, capsys.readouterr().err
    return model, tmp_path / "q.onnx", " ".join(capsys.readouterr().out.split())


def branches(path):
    q = onnx.load(str(path))
    (node,) = [n for n in q.graph.node if n.op_type == "If"]
    return {a.name: a.g for a in node.attribute}


def ops(graph):
    return [n.op_type for n in graph.node]


def test_the_branch_every_calibration_round_takes_is_quantized_inside_its_if(tmp_path, capsys):
    _model, out, text = convert(tmp_path, [16000] * 8, capsys)
    assert "by_rate/then_branch: 1 of 1 weight nodes int8" in text
    assert "by_rate/else_branch stays FP32 (no round takes it)" in text
    bodies = branches(out)
    assert "QuantizeLinear" in ops(bodies["then_branch"]) and "DequantizeLinear" in ops(bodies["then_branch"])
    assert ops(bodies["else_branch"]) == ["MatMul"] and bodies["else_branch"].initializer  # untouched FP32


def test_the_written_model_still_runs_both_branches(tmp_path, capsys):
    model, out, _ = convert(tmp_path, [16000] * 8, capsys)
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    quant = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(9).normal(0, 1, (1, 64)).astype(np.float32)
    for rate, exact in ((16000, False), (8000, True)):
        feeds = {"x": x, "sr": np.array(rate, np.int64)}
        a, b = fp32.run(None, feeds)[0].ravel(), quant.run(None, feeds)[0].ravel()
        if exact:
            assert np.array_equal(a, b)  # the FP32 branch
        else:
            assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99 and not np.array_equal(a, b)


def test_an_if_whose_rounds_take_both_branches_stays_whole_and_says_so(tmp_path, capsys):
    _, out, text = convert(tmp_path, [16000, 8000] * 4, capsys)
    assert "by_rate: calibration rounds take both branches, so both stay FP32" in text
    assert all(ops(g) == ["MatMul"] for g in branches(out).values())


def test_inlining_and_restoring_without_quantizing_gives_the_same_graph():
    from ptq_core.onnxgraph.branches import inline_branches, restore_branches

    model = two_rate_model()
    flat, inlined = inline_branches(model, {"by_rate": True})
    assert [n.op_type for n in flat.graph.node] == ["Equal", "MatMul", "Identity"]
    back = restore_branches(flat, model, inlined)
    assert [n.op_type for n in back.graph.node] == ["Equal", "If"]
    x = np.random.default_rng(4).normal(0, 1, (1, 64)).astype(np.float32)
    for rate in (16000, 8000):
        feeds = {"x": x, "sr": np.array(rate, np.int64)}
        want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
                     for m in (two_rate_model(), back))
        assert np.array_equal(want[0], got[0])


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_same_if_model_as_the_direct_path(tmp_path):
    via_flow, direct = flow_and_direct(tmp_path, calibration(tmp_path, [16000] * 8))
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert "QuantizeLinear" in ops(branches(via_flow.output_path)["then_branch"])
