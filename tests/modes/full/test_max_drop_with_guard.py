"""``--max-drop`` with the latency guard on: the bound holds on the model as written.

A node the guard keeps FP32 for speed stores its weights as 8-bit codes, and that weight error is part of
the model's drop. The loop therefore judges the written model (stored weights included), ranks those nodes
with the int8 ones, and keeping one means keeping its float weights.

The model: ``slow_conv`` (kept FP32 by a stubbed guard) reads a near-silent input channel with a large tap
and two loud channels with small taps that 8-bit per-channel codes round to 0; ``fast_conv`` runs int8.
"""

import numpy as np
import onnx
import pytest
from modelgen import save
from onnx import TensorProto, helper, numpy_helper

from ptq_core.config import parse_config
from ptq_core.modes.full.max_drop import Evaluator
from ptq_core.modes.full.pipeline import calibration_rounds, full_decisions
from ptq_core.modes.full.prepare import prepare_full_model
from ptq_core.modes.full.quantize import quantize_full
from ptq_core.onnxgraph.session import InputOptions

BOUND = 0.01


def stored_weights_hurt_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    wa = np.zeros((4, 3, 1, 1), np.float32)
    wa[:, 0] = 50.0  # the large tap on the near-silent channel sets each channel's 8-bit scale (50 / 127)
    wa[:, 1, 0, 0] = [0.1, -0.1, 0.12, -0.08]  # small taps on the loud channels: 8-bit codes round them to 0
    wa[:, 2, 0, 0] = [0.05, 0.09, -0.11, 0.07]
    wb = (rng.normal(size=(8, 4, 3, 3)) * 0.2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="slow_conv"),
             helper.make_node("Conv", ["a", "wb"], ["y"], name="fast_conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "stored", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def case(tmp_path, monkeypatch):
    from ptq_core.modes.full import latency_guard
    from ptq_core.onnxgraph import timing

    monkeypatch.setenv("PTQFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(latency_guard, "int8_losers",
                        lambda model, cfg, target, nodes, shapes, table:
                        ({n: "int8 kernel not faster here (test)" for n in nodes if n == "slow_conv"}, {}))
    monkeypatch.setattr(timing, "paired_latency_ms", lambda models, feeds, *a: (1.0, 0.5)[:len(models)])  # int8 pays
    model = save(stored_weights_hurt_model(), tmp_path / "m.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
        x[:, 0] *= 1e-3
        (folder / f"{i:03d}.bin").write_bytes(x.tobytes())
    return model, folder


def _cfg(folder, max_drop=None):
    return parse_config("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                        f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=8\ninput_type=BIN\n"
                        "[ptqflow]\nlatency_guard=true\n" + (f"max_drop={max_drop}\n" if max_drop is not None else ""))


def _written_cosine(model_path, folder, quantized, tmp_path) -> float:
    rounds = calibration_rounds(_cfg(folder), prepare_full_model(model_path), InputOptions(), tmp_path / "check")
    return Evaluator(onnx.load(str(model_path)), rounds).cosine(quantized)


def _float_initializers(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}


def test_stored_8bit_weights_of_a_guarded_node_can_break_the_bound(case, tmp_path):
    model, folder = case
    result = quantize_full(model, _cfg(folder), InputOptions(), tmp_path / "w")
    assert "slow_conv" in result.plan.stored_weights and "wa" not in _float_initializers(result.quantized)
    assert 1 - _written_cosine(model, folder, result.quantized, tmp_path) > 10 * BOUND


def test_max_drop_holds_on_the_written_model_by_keeping_the_guarded_nodes_float_weights(case, tmp_path):
    model, folder = case
    result = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "w")
    md = result.max_drop
    written = _written_cosine(model, folder, result.quantized, tmp_path)
    assert md.reached and 1 - written <= BOUND
    assert written == pytest.approx(md.cosine_after, abs=1e-6)  # what the loop judged is what was written
    assert "slow_conv" in md.kept and "wa" in _float_initializers(result.quantized)
    assert "slow_conv" not in result.plan.stored_weights and "fast_conv" in result.plan.nodes


def test_a_guarded_node_kept_by_max_drop_says_so_in_the_layer_table(case, tmp_path):
    model, folder = case
    result = quantize_full(model, _cfg(folder, BOUND), InputOptions(), tmp_path / "w")
    rows = {d.node: d for d in full_decisions(result.model, result.plan)}
    assert rows["slow_conv"].reason.startswith("max_drop: float weights kept (FP32 for speed; rank 1, ")
    assert "with 8-bit stored weights" in rows["slow_conv"].reason
