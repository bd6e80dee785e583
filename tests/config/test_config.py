"""The config reader follows converter_lite's INI rules and the seed's keys, defaults and ranges."""


import pytest
from paths import FIXTURES

from ptq_core.config import QuantConfig, check_runnable, load_config, parse_config
from ptq_core.errors import ConfigError

SEED_DIR = FIXTURES / "seed_configs"
SEED_CONFIGS = sorted(SEED_DIR.glob("*.cfg"))


def test_seed_fixtures_are_present():
    assert len(SEED_CONFIGS) >= 15


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: p.name)
def test_every_seed_example_parses_as_written(path):
    cfg = load_config(path)
    assert isinstance(cfg, QuantConfig)


def test_seed_full_quant_profile_values():
    cfg = load_config(SEED_DIR / "08_full_quant_profile.cfg")
    assert cfg.common.quant_type == "FULL_QUANT"
    assert [c.input_name for c in cfg.data.calibrate_path] == ["input_name_1", "input_name_2"]
    assert cfg.data.calibrate_path[0].directory == "/mnt/image/input_1_dir"
    assert cfg.data.normalize_mean == (127.5, 127.5, 127.5)
    assert cfg.data.resize_method == "LINEAR"
    assert cfg.full.activation_quant_method == "MAX_MIN"


def test_seed_mixed_bit_example():
    cfg = load_config(SEED_DIR / "04_mixed_bit_weight_quant.cfg")
    assert cfg.common.bit_num == 0
    assert cfg.common.min_quant_weight_size == 5000
    assert cfg.common.min_quant_weight_channel == 5
    assert cfg.mixed.init_scale == 0.02


def test_seed_ascend_dynamic_context_is_read():
    cfg = load_config(SEED_DIR / "11_full_quant_ascend_dynamic.cfg")
    assert cfg.full.target_device == "ASCEND"
    assert cfg.ascend_context.input_shape == "input_1:[-1,32,32,4]"
    assert cfg.ascend_context.dynamic_dims == "[1~4],[8],[16]"


def test_defaults_match_converter_lite():
    cfg = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\n")
    assert cfg.common.bit_num == 8
    assert cfg.common.enable_encode is True
    assert cfg.common.min_quant_weight_size == 0
    assert cfg.common.min_quant_weight_channel == 16
    assert cfg.mixed.init_scale == 0.02 and cfg.mixed.max_iterations == 40
    assert cfg.weight.per_channel and cfg.weight.bias_correction
    assert cfg.full.activation_quant_method == "MAX_MIN" and cfg.full.target_device == "CPU"
    assert cfg.dynamic_quant_param.quant_strategy == "ALWC"


def test_only_first_column_hash_is_a_comment():
    with pytest.raises(ConfigError, match="first column"):
        parse_config("[common_quant_param]\n  # indented comment\n")


def test_double_quotes_are_deleted_and_spaces_trimmed():
    cfg = parse_config('[common_quant_param]\n  quant_type = "WEIGHT_QUANT"  \nbit_num="4"\n')
    assert cfg.common.quant_type == "WEIGHT_QUANT" and cfg.common.bit_num == 4


def test_tab_is_not_trimmed():
    with pytest.raises(ConfigError, match="bit_num"):
        parse_config("[common_quant_param]\nbit_num=4\t\n")


def test_two_equals_signs_are_an_error():
    with pytest.raises(ConfigError, match="more than one '='"):
        parse_config("[common_quant_param]\nskip_quant_node=a=b\n")


def test_empty_value_is_an_error():
    with pytest.raises(ConfigError, match=r"cfg:2: \[common_quant_param\] bit_num= has an empty value"):
        parse_config("[common_quant_param]\nbit_num=\n", "cfg")


def test_repeated_key_last_wins_with_notice():
    cfg = parse_config("[common_quant_param]\nbit_num=4\nbit_num=6\n")
    assert cfg.common.bit_num == 6
    assert any("more than once" in n for n in cfg.notices)


def test_unknown_key_is_an_error_with_closest_key():
    with pytest.raises(ConfigError) as err:
        parse_config("[common_quant_param]\nquant_typ=WEIGHT_QUANT\n", "w.cfg")
    msg = str(err.value)
    assert "w.cfg:2" in msg and "[common_quant_param]" in msg and "quant_typ" in msg
    assert "did you mean 'quant_type'" in msg
    assert "\n" not in msg


def test_unknown_section_is_ignored_with_notice():
    cfg = parse_config("[comon_quant_param]\nquant_type=WEIGHT_QUANT\n")
    assert cfg.common.quant_type is None
    assert any("common_quant_param" in n for n in cfg.notices)


def test_ascend_context_ignores_unknown_keys():
    cfg = parse_config("[ascend_context]\nprecision_mode=force_fp16\ninput_shape=x:[1,2]\n")
    assert cfg.ascend_context.input_shape == "x:[1,2]"


def test_enum_is_case_sensitive_with_hint():
    with pytest.raises(ConfigError, match="did you mean 'WEIGHT_QUANT'"):
        parse_config("[common_quant_param]\nquant_type=weight_quant\n")


def test_seed_spelling_removal_outlier_is_accepted():
    cfg = parse_config("[full_quant_param]\nactivation_quant_method=RemovalOutlier\n")
    assert cfg.full.activation_quant_method == "REMOVAL_OUTLIER"


def test_bool_accepts_only_true_false_any_case():
    assert parse_config("[weight_quant_param]\nper_channel=FALSE\n").weight.per_channel is False
    with pytest.raises(ConfigError, match="true or false"):
        parse_config("[weight_quant_param]\nper_channel=0\n")


@pytest.mark.parametrize("bits", [-1, 17])
def test_weight_bit_num_range(bits):
    with pytest.raises(ConfigError, match=r"bit_num=.*\[0, 16\]"):
        parse_config(f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\n")


@pytest.mark.parametrize("qt", ["FULL_QUANT", "DYNAMIC_QUANT"])
def test_full_and_dynamic_need_8_bits(qt):
    with pytest.raises(ConfigError, match="supports only 8"):
        parse_config(f"[common_quant_param]\nquant_type={qt}\nbit_num=4\n")


def test_enable_encode_false_only_at_8_and_16_bits():
    parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=16\nenable_encode=false\n")
    for bits in (0, 4, 9):
        with pytest.raises(ConfigError, match="enable_encode=false"):
            parse_config(f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\nenable_encode=false\n")


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "1.5", "abc"])
def test_init_scale_open_interval(value):
    with pytest.raises(ConfigError, match="init_scale"):
        parse_config(f"[mixed_bit_weight_quant_param]\ninit_scale={value}\n")


def test_max_iterations_minimum_40():
    with pytest.raises(ConfigError, match=r"\[40, 65535\]"):
        parse_config("[mixed_bit_weight_quant_param]\nmax_iterations=39\n")


@pytest.mark.parametrize("key", ["min_quant_weight_size", "min_quant_weight_channel"])
def test_weight_filters_range(key):
    with pytest.raises(ConfigError, match=r"\[0, 65535\]"):
        parse_config(f"[common_quant_param]\n{key}=70000\n")


def test_skip_quant_node_is_split_without_trimming():
    cfg = parse_config("[common_quant_param]\nskip_quant_node=a, b\n")
    assert cfg.common.skip_quant_node == ("a", " b")


def test_calibrate_path_items_need_colon():
    with pytest.raises(ConfigError, match="has no ':'"):
        parse_config("[data_preprocess_param]\ncalibrate_path=/data/images\ncalibrate_size=1\ninput_type=BIN\n")


def test_calibrate_path_name_may_contain_colon():
    cfg = parse_config("[data_preprocess_param]\ncalibrate_path=ns:input:/d\ncalibrate_size=1\ninput_type=BIN\n")
    assert cfg.data.calibrate_path[0].input_name == "ns:input"
    assert cfg.data.calibrate_path[0].directory == "/d"


def test_normalize_list_needs_brackets():
    with pytest.raises(ConfigError, match="brackets"):
        parse_config("[data_preprocess_param]\nnormalize_mean=1,2,3\n")


def test_calibration_needs_input_type():
    with pytest.raises(ConfigError, match="input_type is not set"):
        parse_config("[data_preprocess_param]\ncalibrate_path=x:/d\ncalibrate_size=3\n")


def test_full_quant_without_data_parses_but_cannot_run():
    cfg = load_config(SEED_DIR / "14_skip_quant_node.cfg")
    with pytest.raises(ConfigError, match="calibrate_path is missing"):
        check_runnable(cfg)


def test_missing_quant_type_cannot_run():
    with pytest.raises(ConfigError, match="quant_type is not set"):
        check_runnable(parse_config("[common_quant_param]\nbit_num=8\n"))


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(ConfigError, match="nope.cfg: config file not found"):
        load_config(tmp_path / "nope.cfg")


def test_binary_file_is_rejected(tmp_path):
    p = tmp_path / "x.cfg"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="x.cfg"):
        load_config(p)


def test_fingerprint_changes_with_values_only():
    a = parse_config("[mixed_bit_weight_quant_param]\ninit_scale=0.02\n", "a.cfg")
    b = parse_config("# comment\n[mixed_bit_weight_quant_param]\ninit_scale = 0.02\n", "b.cfg")
    c = parse_config("[mixed_bit_weight_quant_param]\ninit_scale=0.05\n", "a.cfg")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_replace_validates():
    cfg = parse_config("[common_quant_param]\nquant_type=WEIGHT_QUANT\n")
    assert cfg.replace(mixed_bit_weight_quant_param={"init_scale": 0.05}).mixed.init_scale == 0.05
    with pytest.raises(ConfigError, match="did you mean 'init_scale'"):
        cfg.replace(mixed_bit_weight_quant_param={"init_scal": 0.05})
