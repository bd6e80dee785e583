"""DYNAMIC_QUANT inside Loop and Scan bodies and Ifs nested in them: every MatMul with a constant weight is
quantized where it sits, whether the body holds the weight or reads it from the main graph; rows are
named by the body's path, and the written model is valid ONNX that stays close to FP32."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import recurrent_model, save, write_config

DYNAMIC = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
BODY_MATMULS = ["loop/body/mm_loop", "loop/body/pick/else_branch/mm_else", "loop/body/pick/then_branch/mm_then",
                "scan/body/mm_scan"]


def bodies(graph: onnx.GraphProto):
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield f"{node.name}/{attr.name}", attr.g
                yield from ((f"{node.name}/{attr.name}/{p}", g) for p, g in bodies(attr.g))


@pytest.fixture
def converted(tmp_path):
    from ptqflow.api import convert

    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    result = convert(model, write_config(tmp_path / "d.cfg", DYNAMIC), tmp_path / "q", use_flow=False)
    return model, result


def test_every_matmul_in_a_loop_scan_or_nested_if_body_is_quantized_and_named_by_path(converted):
    _, result = converted
    assert sorted(d.node for d in result.layers if d.quantized) == BODY_MATMULS


def test_each_body_runs_its_matmul_on_int8_weights(converted):
    _, result = converted
    q = onnx.load(str(result.output_path))
    found = dict(bodies(q.graph))
    for path in ("loop/body", "loop/body/pick/then_branch", "loop/body/pick/else_branch", "scan/body"):
        assert "MatMulInteger" in [n.op_type for n in found[path].node], path
        read = {name for n in found[path].node for name in n.input}
        assert not {name for name in read if name.startswith("w_") and not name.endswith(("_int8", "_scale"))}, path


def test_a_weight_the_body_reads_from_the_main_graph_is_replaced_there(converted):
    _, result = converted
    q = onnx.load(str(result.output_path))
    assert "w_scan" not in {t.name for t in q.graph.initializer}  # the float weight is gone
    onnx.checker.check_model(q, full_check=True)  # no body redefines an outer name


def test_the_quantized_loop_model_stays_close_to_fp32(converted):
    model, result = converted
    rng = np.random.default_rng(5)
    feeds = {"x": rng.normal(0, 1, (1, 16)).astype(np.float32), "s": rng.normal(0, 1, (4, 1, 16)).astype(np.float32)}
    for want, got in zip(*(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)
                           for p in (model, result.output_path))):
        cos = float(np.dot(want.ravel(), got.ravel()) / (np.linalg.norm(want) * np.linalg.norm(got)))
        assert cos > 0.999 and not np.array_equal(want, got)


def test_the_cli_summary_counts_the_body_matmuls(tmp_path, capsys):
    from ptqflow.cli import main

    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    cfg = write_config(tmp_path / "d.cfg", DYNAMIC)
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0, capsys.readouterr().err
    assert "layers 4 quantized, 0 skipped" in " ".join(capsys.readouterr().out.split())


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_same_loop_model_as_the_direct_path(tmp_path):
    from ptqflow.api import convert

    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    cfg = write_config(tmp_path / "d.cfg", DYNAMIC)
    via_flow = convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()


@pytest.mark.parametrize("quant_type", ["WEIGHT_QUANT", "DYNAMIC_QUANT"])
def test_skip_quant_node_takes_a_body_node_by_its_path(tmp_path, quant_type):
    from ptqflow.api import convert

    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    cfg = write_config(tmp_path / "s.cfg", DYNAMIC.replace("DYNAMIC_QUANT", quant_type) +
                       "skip_quant_node=loop/body/pick/then_branch/mm_then\n")
    rows = {d.node: d for d in convert(model, cfg, tmp_path / "q", use_flow=False).layers}
    assert not rows["loop/body/pick/then_branch/mm_then"].quantized
    assert rows["loop/body/pick/then_branch/mm_then"].reason == "skip_quant_node"
    assert rows["loop/body/pick/else_branch/mm_else"].quantized


def test_an_unknown_body_path_in_skip_quant_node_names_the_closest_one(tmp_path, capsys):
    from ptqflow.cli import main

    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    cfg = write_config(tmp_path / "s.cfg", DYNAMIC + "skip_quant_node=loop/body/pick/then_branch/mm_thn\n")
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'loop/body/pick/then_branch/mm_then'" in err


def test_below_opset_11_body_matmuls_stay_fp32_and_say_why(tmp_path):
    from ptqflow.api import convert

    old = recurrent_model()
    old.opset_import[0].version = 10  # no DynamicQuantizeLinear; the bodies cannot be upgraded on their own
    model = save(old, tmp_path / "rnn10.onnx")
    rows = convert(model, write_config(tmp_path / "d.cfg", DYNAMIC), tmp_path / "q", use_flow=False).layers
    assert sorted(d.node for d in rows) == BODY_MATMULS
    assert all(not d.quantized and d.reason.startswith("model opset 10 is below 11") for d in rows)
