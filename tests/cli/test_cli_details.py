"""The small things a user meets on the command line (issue 17): the version flag, help without repeated
flags, an empty or folder-like path refused in one line, written models readable like any file the user
writes, nothing left behind by a failed run, and the report's proposal printed as it must be pasted."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from modelgen import mixed_ops_model, save, write_config

import ptqflow
from ptqflow.cli import build_parser, main

W8 = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"


@pytest.fixture
def model(tmp_path):
    return save(mixed_ops_model(), tmp_path / "model.onnx")


def test_version_flag_prints_the_version_and_exits_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ptqflow {ptqflow.__version__}"


def test_help_names_each_flag_once():
    text = build_parser()._subparsers._group_actions[0].choices["convert"].format_help()
    assert "--fmk FMK, --fmk FMK" not in text and "--fmk FMK" in text


def test_an_empty_config_path_is_named_as_empty(tmp_path, model, capsys):
    rc = main(["convert", f"--modelFile={model}", f"--outputFile={tmp_path / 'o'}", "--configFile=", "--no-flow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("ptq: error:") and "--configFile" in err and "empty" in err
    assert "is a folder" not in err


@pytest.mark.parametrize("make_folder", [True, False])
def test_an_output_path_naming_a_folder_is_refused(tmp_path, model, capsys, make_folder):
    cfg = write_config(tmp_path / "w.cfg", W8)
    (tmp_path / "out").mkdir(exist_ok=True)
    output = str(tmp_path / "out") if make_folder else str(tmp_path / "out") + os.sep
    rc = main(["convert", f"--modelFile={model}", f"--outputFile={output}", f"--configFile={cfg}", "--no-flow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--outputFile" in err and "folder" in err
    assert not (tmp_path / "out.onnx").exists() and list((tmp_path / "out").iterdir()) == []


def test_a_written_model_has_the_permissions_of_any_file_the_user_writes(tmp_path, model):
    cfg = write_config(tmp_path / "w.cfg", W8)
    old = os.umask(0o022)
    try:
        assert main(["convert", f"--modelFile={model}", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}",
                     "--no-flow"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.onnx").stat().st_mode & 0o777 == 0o644


def test_a_failed_run_leaves_no_empty_debug_folder(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    cfg = write_config(tmp_path / "w.cfg", W8 + f"debug_info_save_path={tmp_path / 'dbg'}\n")
    rc = main(["convert", f"--modelFile={broken}", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}", "--no-flow"])
    assert rc == 2 and not (tmp_path / "dbg").exists()


def test_the_report_prints_its_proposal_with_the_section_name(capsys):
    from ptqflow.debug_report import print_ranking

    print_ranking([], "skip_quant_node=conv1,conv2", "dbg")
    out = capsys.readouterr().out
    assert "Proposed for [common_quant_param]:" in out and "skip_quant_node=conv1,conv2" in out


def test_the_config_reference_is_printed_unless_asked_to_write_the_readme(tmp_path):
    readme = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"
    before = readme.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "ptq_core.config.reference"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "| `quant_type` |" in proc.stdout
    assert readme.read_bytes() == before


def test_a_folder_named_ptqflow_beside_a_script_is_named_in_one_line(tmp_path):
    (tmp_path / "ptqflow").mkdir()
    (tmp_path / "ptqflow" / "README.md").write_text("a clone of the repository\n")
    (tmp_path / "script.py").write_text("from ptqflow.api import convert\n")
    proc = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("ImportError:") and str(tmp_path / "ptqflow") in last


def test_an_interrupt_a_library_wrapped_ends_as_an_interrupt(tmp_path, model, capsys, monkeypatch):
    """Ctrl-C while Prefect serializes (pydantic re-raises it as a serialization error naming it) is an
    interrupt: one line and exit 130, not an internal error."""
    import ptqflow.cli as cli

    def wrapped(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise ValueError("Error calling function `ser`: KeyboardInterrupt") from inner

    monkeypatch.setattr(cli, "_convert", wrapped)
    cfg = write_config(tmp_path / "w.cfg", W8)
    rc = main(["convert", f"--modelFile={model}", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}"])
    err = capsys.readouterr().err.strip()
    assert rc == 130 and err == "ptq: interrupted; nothing was written"


@pytest.mark.parametrize("make,expected", [
    (lambda d: d.write_text("a file"), "is not a folder"),
    (lambda d: (d.parent / "blocker").write_text("a file"), "cannot create the folder"),
])
def test_a_debug_folder_that_cannot_be_one_is_refused_before_the_model_is_read(tmp_path, capsys, make, expected):
    debug = tmp_path / "dbg" if expected == "is not a folder" else tmp_path / "blocker" / "dbg"
    make(tmp_path / "dbg")
    cfg = write_config(tmp_path / "w.cfg", W8 + f"debug_info_save_path={debug}\n")
    rc = main(["convert", f"--modelFile={tmp_path / 'missing.onnx'}", f"--outputFile={tmp_path / 'o'}",
               f"--configFile={cfg}", "--no-flow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "debug_info_save_path" in err and expected in err and "missing.onnx" not in err
