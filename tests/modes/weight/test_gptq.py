"""GPTQ (docs/gptq.md): the same integers as a column-by-column reference, never a larger output error than
rounding to nearest, Gemm with transB, a weight two MatMuls read, Hessians that merge in any split, and a
clear refusal without calibration data; from the CLI and the flow."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

from ptq_core.modes.weight.gptq import (
    code_range,
    gptq,
    gptq_on_step,
    gptq_or_nearest,
    quantize_column,
    row_params,
    rtn,
)
from ptq_core.stats.hessian_observer import HessianObserver


def _reference_obq(w: np.ndarray, h: np.ndarray, round_column, damping: float = 0.01) -> np.ndarray:
    """The algorithm as first written (OBQ form): one column at a time, the explicit inverse Hessian
    updated by Gaussian elimination after each column; no Cholesky factor, no blocks. ``round_column(W, c)``
    gives column c's codes and their dequantized values."""
    W, H = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices_from(H)] += damping * np.mean(np.diag(H))
    Hinv = np.linalg.inv(H)
    codes = np.empty(W.shape, np.int64)
    for c in range(W.shape[1]):
        codes[:, c], deq = round_column(W, c)
        err = (W[:, c] - deq) / Hinv[c, c]
        W[:, c:] -= np.outer(err, Hinv[c, c:])
        Hinv = Hinv - np.outer(Hinv[:, c], Hinv[c, :]) / Hinv[c, c]
    return codes


def reference_gptq(w: np.ndarray, h: np.ndarray, bits: int) -> np.ndarray:
    """Fixed bits, per-row params from the weights before any error feedback."""
    qmin, qmax = code_range(bits)
    W = w.astype(np.float64).copy()
    W[:, np.diag(h) == 0] = 0.0
    scale, zp = row_params(W, qmin, qmax)

    def round_column(W, c):
        q = quantize_column(W[:, c], scale, zp, qmin, qmax)
        return q, (q - zp) * scale

    return _reference_obq(w, h, round_column)


def _layer(seed: int, rows: int = 24, cols: int = 40, n: int = 200):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cols)) * rng.uniform(0.2, 3.0, cols)  # unequal feature scales: GPTQ has work to do
    x[:, 5] = 0.0  # a feature no input ever uses
    obs = HessianObserver()
    obs.update(x)
    return rng.normal(size=(rows, cols)), obs.hessian(), x


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_gptq_gives_the_integers_of_the_column_by_column_reference(bits):
    for seed in range(3):
        w, h, _ = _layer(seed)
        assert np.array_equal(gptq(w, h, bits, block=7).codes, reference_gptq(w, h, bits))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [0, 16])
def test_gptq_output_error_is_never_above_rounding_to_nearest(bits, group_size):
    for seed in range(4):
        w, h, x = _layer(seed)
        ours = np.linalg.norm((w - gptq_or_nearest(w, h, bits, group_size).dequantized()) @ x.T)
        nearest = np.linalg.norm((w - rtn(w, bits, group_size).dequantized()) @ x.T)
        assert ours <= nearest


def reference_gptq_on_step(w: np.ndarray, h: np.ndarray, step: float) -> np.ndarray:
    """Mixed bit's grid (one step, codes floor(x/step + 0.5), unbounded)."""
    s = np.float32(step)

    def round_column(W, c):
        q = np.floor(W[:, c].astype(np.float32) / s + np.float32(0.5))
        return q, q * float(s)

    return _reference_obq(w, h, round_column)


def test_gptq_on_a_mixed_bit_step_gives_the_integers_of_the_column_by_column_reference():
    for seed, step in ((0, 0.05), (1, 0.2), (2, 0.013)):
        w, h, _ = _layer(seed)
        assert np.array_equal(gptq_on_step(w, h, step, block=7), reference_gptq_on_step(w, h, step))


def test_group_sizes_that_do_not_divide_the_columns_leave_a_short_last_group():
    w, h, _ = _layer(1, cols=40)
    g = gptq(w, h, 4, group_size=16)
    assert g.scale.shape == (24, 3) and g.codes.shape == (24, 40)
    assert np.all((g.codes >= -8) & (g.codes <= 7))
    assert np.all(g.codes[:, 5] == g.zero_point[:, 0])  # the dead column is zero: its code is the zero point


def test_hessians_merge_to_the_same_sum_in_any_split():
    x = np.random.default_rng(4).normal(size=(10, 7, 16)).astype(np.float32)
    whole = HessianObserver()
    for part in x:
        whole.update(part)
    halves = [HessianObserver(), HessianObserver()]
    for i, part in enumerate(x):
        halves[i % 2].update(part)
    merged = halves[0].merge(halves[1])
    assert merged.to_state()["rows"] == 70
    np.testing.assert_allclose(merged.hessian(), whole.hessian(), rtol=1e-12)
    assert np.array_equal(HessianObserver.from_state(merged.to_state()).hessian(), merged.hessian())


# ------------------------------------------------------------------------------------------- end to end

def mlp(shared: bool = False) -> onnx.ModelProto:
    """x -> MatMul(w1) -> Relu -> Gemm(w2, transB) ; with ``shared``, a second MatMul reads w1 too."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.normal(0, 0.2, (48, 64)) * rng.uniform(0.1, 2, (48, 1))).astype(np.float32),
                                     "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (16, 64)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])]
    if shared:
        nodes += [helper.make_node("Mul", ["x", "two"], ["x2"], name="double"),
                  helper.make_node("MatMul", ["x2", "w1"], ["h2"], name="fc1b")]
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        outputs.append(helper.make_tensor_value_info("h2", TensorProto.FLOAT, [4, 64]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 48])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def calibration(tmp_path, n: int = 8, seed: int = 8):
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.1, 3.0, 48).astype(np.float32)
    for i in range(n):
        (folder / f"{i:02d}.bin").write_bytes((rng.normal(0, 1, (4, 48)).astype(np.float32) * scales).tobytes())
    return folder


def gptq_cfg(tmp_path, folder, bits: int = 3, strategy: str = "GPTQ"):
    return write_config(tmp_path / f"{strategy}{bits}.cfg",
                        f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\nmin_quant_weight_size=0\n"
                        f"[weight_quant_param]\nquant_strategy={strategy}\n"
                        f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=8\ninput_type=BIN\n")


def _output_error(model_path, quant_path, folder) -> float:
    import onnxruntime as ort

    a = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(quant_path), providers=["CPUExecutionProvider"])
    total = 0.0
    for f in sorted(folder.glob("*.bin")):
        x = {"x": np.fromfile(f, np.float32).reshape(4, 48)}
        total += sum(float(np.sum((p - q) ** 2)) for p, q in zip(a.run(None, x), b.run(None, x)))
    return total


def test_gptq_from_the_cli_rounds_matmul_and_gemm_transb_closer_to_fp32_than_nearest(tmp_path, capsys):
    from ptqflow.cli import main

    model, folder = save(mlp(), tmp_path / "mlp.onnx"), calibration(tmp_path)
    for strategy in ("GPTQ", "MAX_MIN"):
        assert main(["convert", f"--modelFile={model}", f"--configFile={gptq_cfg(tmp_path, folder, 3, strategy)}",
                     f"--outputFile={tmp_path / strategy}", "--no-flow"]) == 0
    out = capsys.readouterr().out
    assert out.count("GPTQ") >= 2  # both layers' rows say how they were rounded
    assert _output_error(model, tmp_path / "GPTQ.onnx", folder) < _output_error(model, tmp_path / "MAX_MIN.onnx", folder)


def test_mixed_bit_with_gptq_leaves_less_output_error_than_mixed_bit_alone(tmp_path, capsys):
    from ptqflow.cli import main

    model, folder = save(mlp(), tmp_path / "mlp.onnx"), calibration(tmp_path)
    for strategy in ("GPTQ", "MAX_MIN"):
        cfg = write_config(tmp_path / f"m{strategy}.cfg", gptq_cfg(tmp_path, folder, 0, strategy).read_text()
                           + "[mixed_bit_weight_quant_param]\ninit_scale=0.06\n")
        assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / strategy}",
                     "--no-flow"]) == 0
    assert capsys.readouterr().out.count("mixed bit GPTQ") >= 2
    assert _output_error(model, tmp_path / "GPTQ.onnx", folder) < _output_error(model, tmp_path / "MAX_MIN.onnx", folder)


def _refusal(tmp_path, capsys, config_text: str) -> str:
    """The one line a config is refused with (exit 2, nothing written)."""
    from ptqflow.cli import main

    model = save(mlp(), tmp_path / "mlp.onnx")
    cfg = write_config(tmp_path / "refused.cfg", config_text)
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not (tmp_path / "q.onnx").exists()
    return err[0]


def test_group_size_with_a_width_it_does_not_serve_is_refused_naming_both_keys(tmp_path, capsys):
    line = _refusal(tmp_path, capsys, "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=12\n"
                                      "[ptqflow]\ngroup_size=32\n")
    assert "group_size=32" in line and "bit_num" in line and "got 12" in line


def test_group_wise_mixed_bit_steps_keep_each_groups_relative_error_near_init_scale():
    from ptq_core.modes.weight.mixed_bit import group_steps

    rows = np.random.default_rng(3).normal(size=(12, 50)).astype(np.float32) * np.linspace(0.01, 3, 50)
    steps = group_steps(rows, 16, 0.05)
    assert steps.shape == (12, 4) and np.array_equal(steps, steps.astype(np.float16).astype(np.float32))
    index = np.arange(50) // 16
    codes = np.floor(rows / steps[:, index] + np.float32(0.5))
    for g in range(4):
        cols = index == g
        d = rows[:, cols] - codes[:, cols] * steps[:, g:g + 1]
        err = np.sqrt((d.astype(np.float64) ** 2).sum(axis=1) / (rows[:, cols].astype(np.float64) ** 2).sum(axis=1))
        assert np.all(err <= 0.05) and np.median(err) > 0.035


def test_group_wise_mixed_bit_runs_in_onnxruntime_and_gptq_leaves_less_output_error(tmp_path, capsys):
    from ptqflow.cli import main

    model, folder = save(mlp(), tmp_path / "mlp.onnx"), calibration(tmp_path)
    errors = {}
    for strategy in ("GPTQ", "MAX_MIN"):
        cfg = write_config(tmp_path / f"gm{strategy}.cfg", gptq_cfg(tmp_path, folder, 0, strategy).read_text()
                           + "[mixed_bit_weight_quant_param]\ninit_scale=0.06\n[ptqflow]\ngroup_size=16\n")
        out = tmp_path / f"gm{strategy}"
        assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={out}",
                     "--no-flow"]) == 0
        errors[strategy] = _output_error(model, out.with_suffix(".onnx"), folder)
    printed = capsys.readouterr().out
    assert printed.count("mixed bit group 16 GPTQ") >= 2 and "mixed bit group 16" in printed
    assert errors["GPTQ"] < errors["MAX_MIN"]


def test_a_weight_two_matmuls_read_takes_both_inputs_into_its_hessian(tmp_path):
    from ptq_core.modes.weight.gptq_calibration import gptq_inputs
    from ptq_core.onnxgraph.sites import find_weight_sites

    model = mlp(shared=True)
    wanted = gptq_inputs(model, find_weight_sites(model))
    assert wanted == {"w1": ("x", "x2"), "w2": ("r",)}


def test_gptq_without_calibration_data_is_refused_naming_the_section(tmp_path, capsys):
    line = _refusal(tmp_path, capsys, "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\n"
                                      "[weight_quant_param]\nquant_strategy=GPTQ\n")
    assert "[data_preprocess_param]" in line and "GPTQ" in line


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_same_gptq_model_as_the_direct_path(tmp_path):
    from ptqflow.api import convert

    model, folder = save(mlp(), tmp_path / "mlp.onnx"), calibration(tmp_path)
    cfg = gptq_cfg(tmp_path, folder, 4)
    via_flow = convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()


@pytest.mark.parametrize("group", [16, 20])  # 48 and 64 input features: 20 leaves a short last group
def test_group_wise_weights_run_in_plain_onnxruntime_closer_to_fp32_than_per_channel(tmp_path, group):
    from ptqflow.cli import main

    model, folder = save(mlp(), tmp_path / "mlp.onnx"), calibration(tmp_path)
    errors = {}
    for strategy in ("GPTQ", "MAX_MIN"):
        for g in (0, group):
            cfg = gptq_cfg(tmp_path, folder, 3, strategy).read_text() + f"[ptqflow]\ngroup_size={g}\n"
            path = write_config(tmp_path / f"{strategy}_{g}.cfg", cfg)
            out = tmp_path / f"{strategy}_{g}"
            assert main(["convert", f"--modelFile={model}", f"--configFile={path}", f"--outputFile={out}",
                         "--no-flow"]) == 0
            errors[strategy, g] = _output_error(model, out.with_suffix(".onnx"), folder)
    assert errors["MAX_MIN", group] < errors["MAX_MIN", 0]
    assert errors["GPTQ", group] < errors["MAX_MIN", group]


@pytest.mark.parametrize("bits", [4, 0])
def test_group_wise_decode_chain_rebuilds_the_planned_weight_exactly(tmp_path, bits):
    import onnxruntime as ort

    from ptq_core.config import parse_config
    from ptq_core.modes.weight import grouped
    from ptq_core.modes.weight.emit import emit_weight_only
    from ptq_core.modes.weight.gptq import rtn
    from ptq_core.modes.weight.plan import plan_weight_quant

    model = mlp()
    cfg = parse_config(f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\nmin_quant_weight_size=0\n"
                       "[ptqflow]\ngroup_size=20\n")
    plan = plan_weight_quant(model, cfg)
    quantized = emit_weight_only(model, plan)
    quantized.graph.output.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, None))  # the decoded weight
    (decoded,) = ort.InferenceSession(quantized.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["w1"], {"x": np.zeros((4, 48), np.float32)})
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    layout = grouped.GroupedLayout(w1.shape, 1, 20)
    if bits:
        expected = grouped.dequantized(rtn(grouped.rows_of(w1, 1).astype(np.float64), 4, 20), layout)
    else:  # mixed bit per group: codes * step, the steps float16 values
        from ptq_core.modes.weight.mixed_bit import group_steps

        rows = grouped.rows_of(w1, 1).astype(np.float32)
        steps = group_steps(rows, 20, cfg.mixed.init_scale)[:, np.arange(rows.shape[1]) // 20]
        expected = np.moveaxis(np.floor(rows / steps + np.float32(0.5)) * steps, 0, 1)
    assert decoded.shape == w1.shape and np.array_equal(decoded, expected)
