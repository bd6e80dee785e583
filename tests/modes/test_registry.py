"""Each quant_type is declared once in the registry: its steps, and what the rest of the code asks of it."""

import pytest

from ptq_core.config import parse_config
from ptq_core.errors import ConfigError
from ptq_core.modes.registry import DYNAMIC, FULL, MODES, WEIGHT, mode_of, run_labels

FULL_CFG = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n[data_preprocess_param]\ncalibrate_path=x:/d\n"
            "calibrate_size=4\ninput_type=BIN\n[full_quant_param]\nactivation_quant_method=KL\nper_channel=false\n"
            "target_device=NVGPU\n")


def test_every_mode_ends_with_a_summary_and_only_full_quant_and_gptq_calibrate():
    from ptq_core.config import parse_config

    assert set(MODES) == {"WEIGHT_QUANT", "FULL_QUANT", "DYNAMIC_QUANT"}
    assert all(m.steps[-1] == "summarize" for m in MODES.values())
    plain = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n")
    gptq = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\n[weight_quant_param]\n"
                        "quant_strategy=GPTQ\n")
    assert [m.quant_type for m in MODES.values() if m.calibrates(plain)] == ["FULL_QUANT"]
    assert WEIGHT.calibrates(gptq) and not DYNAMIC.calibrates(gptq)
    assert FULL.steps[0] == "calibrate" and FULL.max_drop and not (WEIGHT.max_drop or DYNAMIC.max_drop)


@pytest.mark.parametrize("text,name,tags", [
    ("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n", "m WEIGHT_QUANT mixed bit 0.02",
     {"mode:WEIGHT_QUANT", "model:m"}),
    ("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n[dynamic_quant_param]\nquant_strategy=ACWL\n",
     "m DYNAMIC_QUANT ACWL", {"mode:DYNAMIC_QUANT", "model:m"}),
    (FULL_CFG, "m FULL_QUANT KL pl NVGPU", {"mode:FULL_QUANT", "model:m", "target:NVGPU"}),
])
def test_run_labels_name_the_model_mode_and_key_settings(text, name, tags):
    got_name, got_tags = run_labels("/models/m.onnx", parse_config(text))
    assert got_name == name and set(got_tags) == tags


def test_a_quant_type_the_registry_lacks_is_one_line_naming_the_supported_ones():
    cfg = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n")
    cfg = cfg.__class__(**{**cfg.__dict__, "common_quant_param": cfg.common.__class__(
        **{**cfg.common.__dict__, "quant_type": "KIRIN_QUANT"})})
    with pytest.raises(ConfigError, match="supported now: WEIGHT_QUANT, FULL_QUANT, DYNAMIC_QUANT"):
        mode_of(cfg)
