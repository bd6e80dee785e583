"""Block-Hadamard rotation (``[ptqflow] rotation_block``) under DYNAMIC_QUANT."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from test_dynamic_quant import make, matmul_model, vi

from ptq_core.config import parse_config
from ptq_core.errors import ConfigError
from ptq_core.modes.dynamic.emit import emit_dynamic
from ptq_core.modes.dynamic.plan import plan_dynamic
from ptq_core.modes.dynamic.rotation import (
    block_for,
    hadamard,
    rotate_activation,
    rotate_weight,
)


def cfg(strategy="ALWC", block=16, common="", form="portable"):
    return parse_config("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n" + common +
                        f"\n[dynamic_quant_param]\nquant_strategy={strategy}\n[ptqflow]\nrotation_block={block}\n"
                        f"int8_form={form}\n")


def run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("block", [2, 4, 16, 64, 256])
def test_hadamard_is_orthonormal_and_symmetric(block):
    h = hadamard(block)
    np.testing.assert_allclose(h @ h.T, np.eye(block), atol=1e-12)
    assert np.array_equal(h, h.T)


@pytest.mark.parametrize("block", [4, 16, 64])
def test_hadamard_entries_are_exact_in_float32_for_even_powers(block):
    h = hadamard(block)
    assert np.array_equal(h.astype(np.float32).astype(np.float64), h)


def test_rotation_preserves_the_product():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(5, 7, 48)), rng.normal(size=(48, 11)).astype(np.float32)
    np.testing.assert_allclose(rotate_activation(x, 16) @ rotate_weight(w, 16), x @ w, atol=1e-5)


def test_rotation_preserves_a_batched_weight_product():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(3, 5, 32)), rng.normal(size=(3, 32, 6)).astype(np.float32)
    np.testing.assert_allclose(rotate_activation(x, 8) @ rotate_weight(w, 8), x @ w, atol=1e-5)


def test_rotation_spreads_one_outlier_channel_over_its_block():
    x = np.zeros((1, 64))
    x[0, 5] = 28.0
    rotated = rotate_activation(x, 16)
    assert np.abs(rotated).max() == pytest.approx(28.0 / 4)
    assert np.count_nonzero(rotated) == 16


def test_block_applies_only_where_it_divides_the_reduction_axis():
    assert block_for(384, 16) == 16 and block_for(100, 16) == 0 and block_for(384, 0) == 0


def outlier_case(seed=0):
    """Activations like a transformer's LayerNorm output: one channel of one token 10x the rest."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (1, 32, 64)).astype(np.float32)
    x[0, 0, 7] = 60.0
    w = rng.normal(0, 0.1, (64, 48)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("strategy,tokens", [("ALWC", slice(1, None)), ("ACWL", slice(0, 1))],
                         ids=["ALWC-quiet-tokens", "ACWL-loud-token"])
def test_rotation_cuts_the_error_of_an_outlier_channel(strategy, tokens):
    """ALWC: one scale per tensor, so the loud channel coarsens every token's grid; ACWL: one scale per
    token, so it coarsens the loud token's own row. Rotation spreads the channel over its block."""
    x, w = outlier_case()
    model = matmul_model(w, a_shape=[1, 32, 64])
    exact = x.astype(np.float64) @ w
    errors = {}
    for block in (0, 16):
        y = run(emit_dynamic(model, plan_dynamic(model, cfg(strategy, block))), {"x": x})
        errors[block] = float(np.sqrt(np.mean((y[0, tokens] - exact[0, tokens]) ** 2)))
    assert errors[16] < 0.6 * errors[0], errors


def test_decision_rows_say_which_nodes_are_rotated():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fits"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="odd")]
    model = make(nodes, [vi("x", [1, 4, 32])], [vi("y", None)],
                 {"W1": rng.normal(size=(32, 20)).astype(np.float32), "W2": rng.normal(size=(20, 8)).astype(np.float32)})
    plan = plan_dynamic(model, cfg())
    rows = {r.node: r for r in plan.decisions}
    assert "rotated in 16-channel Hadamard blocks" in rows["fits"].reason
    assert "not rotated (reduction axis 20" in rows["odd"].reason
    assert {d.node: d.rotation for d in plan.nodes} == {"fits": 16, "odd": 0}


def test_readers_of_one_activation_share_one_rotation_and_a_skipped_reader_reads_it_unrotated():
    rng = np.random.default_rng(3)
    ws = {f"W{i}": rng.normal(0, 0.1, (32, 16)).astype(np.float32) for i in range(3)}
    nodes = [helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"], name=f"mm{i}") for i in range(3)]
    model = make(nodes, [vi("x", [1, 8, 32])], [vi(f"y{i}", None) for i in range(3)], ws)
    emitted = emit_dynamic(model, plan_dynamic(model, cfg(common="skip_quant_node=mm2")))
    hadamards = [n for n in emitted.graph.node if n.op_type == "MatMul" and n.name.endswith("_hadamard")]
    assert len(hadamards) == 1
    skipped = next(n for n in emitted.graph.node if n.name == "mm2")
    assert skipped.input[0] == "x"
    x = rng.normal(size=(1, 8, 32)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    outs = ort.InferenceSession(emitted.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(outs[2], x @ ws["W2"], rtol=1e-5, atol=1e-5)
    for i in (0, 1):
        assert np.abs(outs[i] - x @ ws[f"W{i}"]).max() < 0.05


def test_rotation_off_is_converter_lite_bytes():
    """rotation_block=0 with int8_form=vnni emits converter_lite's weights: symmetric [-127, 127]."""
    x, w = outlier_case()
    model = matmul_model(w, a_shape=[1, 32, 64])
    emitted = emit_dynamic(model, plan_dynamic(model, cfg(block=0, form="vnni")))
    assert not any(n.name.endswith("_hadamard") for n in emitted.graph.node)
    q = next(t for t in emitted.graph.initializer if t.name == "W_int8")
    from onnx import numpy_helper

    from ptq_core.quant import round_half_away
    codes = numpy_helper.to_array(q)
    scale = np.abs(w).max(0).astype(np.float64) / 127
    assert np.array_equal(codes, np.clip(round_half_away(w / scale.astype(np.float32).astype(np.float64)), -127, 127))


@pytest.mark.parametrize("value", ["12", "1", "512", "-16"])
def test_rotation_block_must_be_zero_or_a_power_of_two(value):
    with pytest.raises(ConfigError, match=r"\[ptqflow\] rotation_block"):
        parse_config(f"[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n[ptqflow]\nrotation_block={value}\n")
