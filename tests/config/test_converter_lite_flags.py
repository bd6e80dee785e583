"""converter_lite's command lines run unchanged: every documented flag accepted, --optimize acting, and the
choices ptqflow makes for the user (calibration layout, keys that change nothing) said in one line each."""

from pathlib import Path

import pytest
from modelgen import mixed_ops_model, save, write_config
from paths import ROOT

from ptq_core.config import parse_config
from ptq_core.config.flags import FOREIGN_FLAGS, apply_optimize
from ptqflow.cli import main

W8 = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"


def digits_full_cfg(tmp_path, extra: str = "") -> Path:
    text = (ROOT / "examples/configs/full_quant.cfg").read_text().replace("examples/digits/bin",
                                                                          str(ROOT / "examples/digits/bin"))
    return write_config(tmp_path / "full.cfg", text + "\n[ptqflow]\nlatency_guard=false\n" + extra)


def notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ptq: notice: ")]


def test_every_documented_converter_lite_flag_is_accepted_with_one_notice_each(tmp_path, capsys):
    model = save(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", W8)
    flags = [f"--{f.camel}={f.choices[0] if f.choices else 'value'}" for f in FOREIGN_FLAGS]
    rc = main(["convert", "--fmk=ONNX", f"--modelFile={model}", f"--configFile={cfg}",
               f"--outputFile={tmp_path / 'o'}", "--no-flow", *flags])
    assert rc == 0 and (tmp_path / "o.onnx").exists()
    said = notices(capsys.readouterr().err)
    for flag in FOREIGN_FLAGS:
        assert sum(f"--{flag.camel}=" in line and "is ignored" in line for line in said) == 1, flag.camel


def test_a_converter_lite_flag_with_a_value_it_does_not_allow_is_one_line_exit_2(tmp_path, capsys):
    model = save(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", W8)
    rc = main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'o'}",
               "--no-flow", "--saveType=ONNX"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--saveType" in err and "MINDIR" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("o*"))


def test_optimize_ascend_oriented_selects_the_ascend_rules_when_the_config_sets_no_target():
    cfg = apply_optimize(parse_config("[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\n"
                                      "calibrate_path=x:/d\ncalibrate_size=1\ninput_type=BIN\n"), "ascend_oriented")
    assert cfg.full.target_device == "ASCEND"
    assert any("--optimize=ascend_oriented" in n and "ASCEND" in n for n in cfg.notices)


def test_optimize_keeps_the_configs_own_target_device_and_says_so():
    text = ("[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\ncalibrate_path=x:/d\n"
            "calibrate_size=1\ninput_type=BIN\n[full_quant_param]\ntarget_device=DSP\n")
    cfg = apply_optimize(parse_config(text), "ascend_oriented")
    assert cfg.full.target_device == "DSP"
    assert any("target_device=DSP is kept" in n for n in cfg.notices)
    assert apply_optimize(parse_config(text), "general") == parse_config(text)


def test_optimize_outside_full_quant_is_a_notice_and_changes_nothing():
    cfg = parse_config(W8)
    out = apply_optimize(cfg, "gpu_oriented")
    assert out.fingerprint() == cfg.fingerprint() and any("quant_type is WEIGHT_QUANT" in n for n in out.notices)


def test_the_seeds_ascend_command_line_runs(tmp_path, capsys):
    cfg = digits_full_cfg(tmp_path)
    rc = main(["convert", "--fmk=ONNX", f"--modelFile={ROOT / 'examples/digits/digits_cnn.onnx'}",
               f"--outputFile={tmp_path / 'q'}", f"--configFile={cfg}", "--optimize=ascend_oriented",
               "--inputShape=input:1,1,8,8", "--no-flow"])
    out = capsys.readouterr()
    assert rc == 0 and (tmp_path / "q.onnx").exists()
    assert "ASCEND" in out.out.split("target", 1)[1].splitlines()[0]


def test_bin_layout_is_said_when_input_data_format_is_absent(tmp_path, capsys):
    cfg = digits_full_cfg(tmp_path)
    base = ["convert", f"--modelFile={ROOT / 'examples/digits/digits_cnn.onnx'}", f"--configFile={cfg}", "--no-flow"]
    assert main([*base, f"--outputFile={tmp_path / 'a'}"]) == 0
    out = capsys.readouterr()
    said = [n for n in notices(out.err) if "read as NCHW" in n]
    assert len(said) == 1 and "--inputDataFormat=NHWC" in said[0]
    assert "calibration layout" in out.out and "NCHW assumed" in out.out
    assert main([*base, f"--outputFile={tmp_path / 'b'}", "--inputDataFormat=NCHW"]) == 0
    out = capsys.readouterr()
    assert not [n for n in notices(out.err) if "read as NCHW" in n]
    assert "calibration layout" in out.out and "assumed" not in out.out


@pytest.mark.parametrize("lines,expected", [
    ("[common_quant_param]\nworkspace=/scratch\n", "workspace=/scratch is ignored"),
    ("[ascend_context]\nprovider=ge\n", "provider=ge is ignored"),
    ("[ascend_context]\ninput_shape=x:[-1,3,8,8]\ndynamic_dims=[1],[4],[8]\n", "first size only"),
    ("[data_preprocess_param]\nresize_width=32\nresize_height=32\n", "without resize_method"),
])
def test_keys_that_change_nothing_each_get_a_notice_naming_the_line(lines, expected):
    cfg = parse_config(W8 + lines, "w.cfg")
    said = [n for n in cfg.notices if expected in n]
    assert len(said) == 1 and said[0].startswith("w.cfg:")


def test_a_notice_is_one_line_on_a_narrow_terminal(tmp_path, capfd, monkeypatch):
    import subprocess
    import sys

    model = save(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", W8 + "workspace=" + "/very/long/scratch/folder" * 4 + "\n")
    proc = subprocess.run([sys.executable, "-m", "ptqflow.cli", "convert", f"--modelFile={model}", f"--configFile={cfg}",
                           f"--outputFile={tmp_path / 'o'}", "--no-flow"], capture_output=True, text=True,
                          env={**__import__("os").environ, "COLUMNS": "40"}, timeout=120)
    assert proc.returncode == 0
    said = [line for line in proc.stderr.splitlines() if "workspace" in line]
    assert len(said) == 1 and said[0].startswith("ptq: notice: ") and said[0].endswith("scratch folder")


def test_summary_rows_keep_their_config_section_names(tmp_path, capsys):
    cfg = digits_full_cfg(tmp_path, "cross_layer_equalization=false\n").read_text().replace(
        "[full_quant_param]", "[full_quant_param]\nper_channel=false")
    path = write_config(tmp_path / "pl.cfg", cfg)
    assert main(["convert", f"--modelFile={ROOT / 'examples/digits/digits_cnn.onnx'}", f"--configFile={path}",
                 f"--outputFile={tmp_path / 'q'}", "--inputDataFormat=NCHW", "--no-flow"]) == 0
    assert "off ([ptqflow] cross_layer_equalization=false)" in " ".join(capsys.readouterr().out.split())
