"""``--max-drop`` / ``[ptqflow] max_drop``: keep the damaging nodes FP32 until the output cosine is within a bound.

The model is a detection-style head (tests/modelgen.py) whose three branches (~1e3, ~1, ~1e-3) meet in
one Concat: naive int8 rounds two of its three outputs away, and keeping the Concat alone in FP32 fixes it.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from modelgen import detection_head_model, save, write_config

from ptq_core.config import parse_config
from ptq_core.errors import ConfigError
from ptq_core.modes.full.max_drop import Evaluator, weight_params
from ptq_core.modes.full.pipeline import calibration_rounds, full_decisions
from ptq_core.modes.full.prepare import prepare_full_model
from ptq_core.modes.full.quantize import quantize_full
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.stats import collect
from ptqflow.cli import main

BOUND = 0.01


@pytest.fixture
def head(tmp_path):
    model = save(detection_head_model(), tmp_path / "head.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(10):
        (folder / f"{i:03d}.bin").write_bytes(rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32).tobytes())
    return model, folder


def _text(folder, max_drop=None, quant_type="FULL_QUANT") -> str:
    text = f"[common_quant_param]\nquant_type={quant_type}\nbit_num=8\n"
    if quant_type == "FULL_QUANT":
        text += f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=10\ninput_type=BIN\n"
    text += "[ptqflow]\nlatency_guard=false\n"
    if max_drop is not None:
        text += f"max_drop={max_drop}\n"
    return text


def _cfg(folder, max_drop=None):
    return parse_config(_text(folder, max_drop))


def _calibration_cosine(model_path, folder, quantized: onnx.ModelProto, tmp_path) -> float:
    """Mean output cosine over every calibration round, measured independently of the loop's own numbers."""
    cfg = _cfg(folder)
    fp32 = prepare_full_model(model_path)
    rounds = calibration_rounds(cfg, fp32, InputOptions(), tmp_path / "check-shards")
    return Evaluator(onnx.load(str(model_path)), rounds).cosine(quantized)


def test_naive_int8_misses_the_bound_on_the_concat_head(head, tmp_path):
    model, folder = head
    result = quantize_full(model, _cfg(folder), InputOptions(), tmp_path / "work")
    assert result.max_drop is None
    assert 1 - _calibration_cosine(model, folder, result.quantized, tmp_path) > 0.3


def test_max_drop_meets_the_bound_by_keeping_the_planted_concat(head, tmp_path):
    model, folder = head
    result = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "work")
    md = result.max_drop
    assert md.reached and md.kept == ("head_concat",)
    assert md.drop_before > 0.3 and md.drop_after <= BOUND
    assert 1 - _calibration_cosine(model, folder, result.quantized, tmp_path) <= BOUND
    assert md.int8_weight_fraction >= 0.8
    assert weight_params(result.plan) == md.weights_int8_after == md.weights_int8_before


def test_damage_ranking_names_the_broken_concat_first(head, tmp_path):
    model, folder = head
    md = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "work").max_drop
    first = md.ranking[0]
    assert first.node == "head_concat" and first.cosine < 0.5
    assert all(d.own < 0.01 for d in md.ranking[1:])
    assert md.damage_rounds == tuple(range(8))


def test_kept_nodes_appear_in_the_layer_table_with_reason_max_drop(head, tmp_path):
    model, folder = head
    result = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "work")
    rows = {d.node: d for d in full_decisions(result.model, result.plan)}
    assert not rows["head_concat"].quantized and rows["head_concat"].reason.startswith("max_drop: kept FP32 (rank 1")
    assert all(rows[n].quantized for n in ("stem", "box_conv", "obj_conv", "cls_conv"))


def test_statistics_are_collected_once_whatever_the_loop_tries(head, tmp_path):
    model, folder = head
    calls = []

    def counting(*args, **kw):
        calls.append(args[1])
        return collect.collect_serial(*args, **kw)

    quantize_full(model, _cfg(folder, 0.0), InputOptions(), tmp_path / "work", collector=counting)
    assert len(calls) == 1


def test_zero_bound_keeps_going_until_nothing_is_int8_and_says_so(head, tmp_path):
    model, folder = head
    result = quantize_full(model, _cfg(folder, 0.0), InputOptions(), tmp_path / "work")
    md = result.max_drop
    assert md.reached and md.kept[0] == "head_concat"
    assert md.weights_int8_after == 0 and not result.plan.nodes
    assert any("only with no node left in int8" in n for n in md.notes)
    assert [s.kept for s in md.steps][:4] == [0, 1, 2, 4]  # doubling, then bisection


def test_same_inputs_give_the_same_bytes(head, tmp_path):
    model, folder = head
    a = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "w1").quantized
    b = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "w2").quantized
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_config_value_out_of_range_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[ptqflow\] max_drop=1.5: must be a number in \[0, 1\]"):
        parse_config(_text(tmp_path, 1.5))


def test_cli_flag_converts_within_the_bound_and_prints_what_it_kept(head, tmp_path, capsys):
    model, folder = head
    cfg = write_config(tmp_path / "full.cfg", _text(folder))
    out = tmp_path / "out" / "head"
    rc = main(["convert", f"--modelFile={model}", f"--outputFile={out}", f"--configFile={cfg}", "--max-drop", "0.01",
               "--no-flow"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "max_drop kept FP32" in text and "head_concat" in text and "100.0 % of quantizable weight" in text
    quantized = onnx.load(str(out) + ".onnx")
    assert 1 - _calibration_cosine(model, folder, quantized, tmp_path) <= BOUND


@pytest.mark.parametrize("value", ["1.5", "abc", "-0.1", "nan"])
def test_cli_bad_flag_value_exits_2_with_one_line(head, tmp_path, capsys, value):
    model, folder = head
    cfg = write_config(tmp_path / "full.cfg", _text(folder))
    rc = main(["convert", f"--modelFile={model}", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}",
               f"--max-drop={value}", "--no-flow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--max-drop" in err and "must be a number in [0, 1]" in err


def test_weight_quant_refuses_max_drop_with_one_line(head, tmp_path, capsys):
    model, folder = head
    cfg = write_config(tmp_path / "w.cfg", _text(folder, quant_type="WEIGHT_QUANT"))
    rc = main(["convert", f"--modelFile={model}", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}",
               "--maxDrop=0.01", "--no-flow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "max_drop=0.01" in err and "FULL_QUANT only" in err and "WEIGHT_QUANT" in err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_flow_parameter_overrides_the_config_and_reports_the_kept_nodes(head, tmp_path):
    from ptqflow.api import convert

    model, folder = head
    cfg = write_config(tmp_path / "full.cfg", _text(folder, max_drop=0.5))
    summary = convert(model, cfg, tmp_path / "flow-out", max_drop=BOUND)
    assert summary.max_drop.bound == BOUND and summary.max_drop.kept == ("head_concat",)
    assert summary.totals()["max_drop_kept"] == 1
    assert any(r["node"] == "head_concat" and r["detail"].startswith("max_drop") for r in summary.rows())
    assert Path(summary.output).exists()


def test_kept_nodes_with_weights_go_back_to_int8_when_the_bound_holds_without_them(monkeypatch):
    """The ranking is greedy: a heavy node ranked first but not needed is given back, largest first."""
    from types import SimpleNamespace

    from ptq_core.modes.full import max_drop

    def model(kept: tuple[str, ...]) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.doc_string = ",".join(kept)
        return m

    class FakeEvaluator:  # within the bound exactly when "b" is FP32
        def __init__(self, fp32, rounds):
            self.rounds = list(rounds)

        def cosine(self, m):
            return 1.0 if "b" in m.doc_string.split(",") else 0.9

    damage = [max_drop.NodeDamage("a", "Conv", 0.5, 0.5), max_drop.NodeDamage("b", "Conv", 0.6, 0.4),
              max_drop.NodeDamage("c", "Conv", 0.9, 0.1)]
    monkeypatch.setattr(max_drop, "Evaluator", FakeEvaluator)
    monkeypatch.setattr(max_drop, "node_damage", lambda *a, **k: damage)

    def plan(int8: tuple[str, ...]):
        sizes = {"a": 1000, "b": 10, "c": 10}
        return SimpleNamespace(weights=[SimpleNamespace(node=n, tensor=f"w_{n}", q=np.zeros(sizes[n])) for n in int8])

    def build(kept: tuple[str, ...]) -> max_drop.Build:
        int8 = tuple(n for n in "abc" if n not in kept)
        return max_drop.Build(SimpleNamespace(nodes=int8), plan(int8), {}, model(kept))

    result, final = max_drop.keep_until_within(onnx.ModelProto(), build(()), [], 0.01, lambda extra, why: build(extra))
    assert result.kept == ("b",) and final.quantized.doc_string == "b"
    assert [s.action for s in result.steps] == ["all int8", "keep first 1", "keep first 2", "give back a"]
    assert result.weights_int8_after == 1010 and result.weights_int8_before == 1020


def test_a_summary_below_0_99_without_a_bound_says_how_to_get_it_back(head, tmp_path, capsys):
    model, folder = head
    cfg = write_config(tmp_path / "c.cfg", _text(folder))
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "accuracy output cosine 0." in text and "is below 0.99: --max-drop 0.01" in text
    bounded = write_config(tmp_path / "b.cfg", _text(folder, BOUND))
    assert main(["convert", f"--modelFile={model}", f"--configFile={bounded}", f"--outputFile={tmp_path / 'b'}",
                 "--no-flow"]) == 0
    assert "--max-drop 0.01 (" not in " ".join(capsys.readouterr().out.split())  # bound set: nothing to suggest


@pytest.mark.parametrize("int8_ms, said", [(2.0, True), (0.5, False)])
def test_a_kept_model_slower_than_fp32_is_said_to_be(head, tmp_path, monkeypatch, int8_ms, said):
    from ptq_core.onnxgraph import timing

    def fake_latency(model, feeds, runs=60, warmup=10):  # FP32 1 ms; a model with Q/DQ pairs int8_ms
        return int8_ms if any(n.op_type == "QuantizeLinear" for n in model.graph.node) else 1.0

    monkeypatch.setattr(timing, "median_latency_ms", fake_latency)
    model, folder = head
    md = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "work").max_drop
    assert md.kept and md.ms_fp32 == 1.0 and md.ms_after == int8_ms
    assert any("slower than FP32 on this CPU (2.000 vs 1.000 ms" in n for n in md.notes) == said
