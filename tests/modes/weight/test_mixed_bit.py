"""Mixed bit (bit_num=0): the step search meets init_scale, and auto_tune finds the coarsest acceptable scale."""

import numpy as np
import pytest
from modelgen import mlp_model, save, write_config

from ptq_core.config import parse_config
from ptq_core.convert import convert_direct
from ptq_core.modes.weight.mixed_bit import auto_tune, relative_error, search_step
from ptq_core.modes.weight.plan import plan_weight_quant


@pytest.mark.parametrize("target", [0.005, 0.02, 0.1])
def test_step_search_meets_the_relative_error_target(target):
    w = np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32)
    result = search_step(w, target)
    assert result is not None and result.converged
    assert abs(relative_error(w, result.scale)[0] - target) / target < 0.01


def test_constant_tensor_gets_a_step_without_search():
    result = search_step(np.full((4, 4), 0.5, np.float32), 0.02)
    assert result.scale == pytest.approx(0.5 + 1e-5) and result.iterations == 0


def test_larger_init_scale_gives_smaller_weights():
    model = mlp_model(hidden=512, inp=128)
    sizes = []
    for t in (0.005, 0.02, 0.1):
        plan = plan_weight_quant(model, parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"),
                                 init_scale=t)
        sizes.append(sum(d.bytes_stored for d in plan.decisions))
    assert sizes[0] > sizes[1] > sizes[2]


def test_mixed_bit_records_step_and_effective_bits():
    plan = plan_weight_quant(mlp_model(), parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"))
    for d in plan.quantized:
        assert d.step is not None and d.step > 0 and 1 <= d.effective_bits <= 16 and d.bits == 0


def test_auto_tune_picks_the_coarsest_scale_meeting_the_threshold():
    # a synthetic model whose cosine falls as init_scale grows, crossing 0.995 at 0.03
    evaluate = lambda t: (1.0 - 0.005 * t / 0.03, 1 / t)  # noqa: E731
    result = auto_tune(evaluate, budget=12)
    assert 0.028 <= result.init_scale <= 0.03
    assert all(s.cosine >= 0.995 or s.init_scale > result.init_scale for s in result.steps)


def test_auto_tune_end_to_end_says_which_inputs(tmp_path):
    model = save(mlp_model(hidden=256, inp=128), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"
                       "[mixed_bit_weight_quant_param]\nauto_tune=true\n")
    summary = convert_direct(model, cfg, tmp_path / "out")
    assert summary.auto_tune is not None and summary.auto_tune["cosine"] >= 0.995
    assert summary.init_scale == summary.auto_tune["init_scale"]
    assert summary.cosine_inputs.startswith("generated")
    assert summary.output_cosine >= 0.99


def test_auto_tune_uses_calibration_sample_when_configured(tmp_path):
    model = save(mlp_model(hidden=128, inp=64), tmp_path / "m.onnx")
    data = tmp_path / "bins"
    data.mkdir()
    rng = np.random.default_rng(5)
    for i in range(3):
        (data / f"s{i}.bin").write_bytes(rng.normal(size=(1, 64)).astype(np.float32).tobytes())
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"
                       "[mixed_bit_weight_quant_param]\nauto_tune=true\n"
                       f"[data_preprocess_param]\ncalibrate_path=x:{data}\ncalibrate_size=3\ninput_type=BIN\n")
    summary = convert_direct(model, cfg, tmp_path / "out")
    assert summary.cosine_inputs == "calibration sample 0"
    assert summary.auto_tune["cosine"] >= 0.995
