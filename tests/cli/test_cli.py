"""``ptq convert``: converter_lite flags, a model plain onnxruntime runs, and one-line errors with exit 2."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from modelgen import mixed_ops_model, save, write_config

from ptqflow.cli import main

W8 = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"


@pytest.fixture
def model(tmp_path):
    return save(mixed_ops_model(), tmp_path / "model.onnx")


def convert(*flags):
    return main(["convert", *flags, "--no-flow"])


def test_converter_lite_flags_write_model_onnx(tmp_path, model, capsys):
    cfg = write_config(tmp_path / "w.cfg", W8)
    rc = convert("--fmk=ONNX", f"--modelFile={model}", f"--outputFile={tmp_path / 'out' / 'model'}", f"--configFile={cfg}")
    assert rc == 0
    out = tmp_path / "out" / "model.onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32), "ids": np.zeros((1, 4), np.int64)})[0]
    assert y.shape == (1, 10)
    text = capsys.readouterr().out
    assert "output cosine vs FP32" in text and "compression" not in text.lower() or "smaller" in text


def test_kebab_case_flags_work_too(tmp_path, model):
    cfg = write_config(tmp_path / "w.cfg", W8)
    assert convert("--model-file", str(model), "--output-file", str(tmp_path / "o.onnx"), "--config-file", str(cfg)) == 0
    assert (tmp_path / "o.onnx").exists() and not (tmp_path / "o.onnx.onnx").exists()


def test_same_inputs_give_byte_identical_models(tmp_path, model):
    cfg = write_config(tmp_path / "w.cfg", W8.replace("bit_num=8", "bit_num=3"))
    convert(f"--modelFile={model}", f"--outputFile={tmp_path / 'a'}", f"--configFile={cfg}")
    convert(f"--modelFile={model}", f"--outputFile={tmp_path / 'b'}", f"--configFile={cfg}")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.parametrize("cfg_text,expected", [
    (W8 + "bit_num=20\n", "bit_num=20"),
    ("[common_quant_param]\nquant_typ=WEIGHT_QUANT\n", "did you mean 'quant_type'"),
    (W8 + "skip_quant_node=gemmm\n", "did you mean 'gemm'"),
    ("[common_quant_param]\nquant_type=FULL_QUANT\n", "calibrate_path is missing"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, model, capsys, cfg_text, expected):
    cfg = write_config(tmp_path / "w.cfg", cfg_text)
    rc = convert(f"--modelFile={model}", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}")
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("o*"))


def test_config_is_checked_before_the_model_is_read(tmp_path, capsys):
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=99\n")
    rc = convert("--modelFile=/nonexistent.onnx", f"--outputFile={tmp_path / 'o'}", f"--configFile={cfg}")
    assert rc == 2 and "bit_num=99" in capsys.readouterr().err


def test_missing_model_and_wrong_fmk(tmp_path, capsys):
    cfg = write_config(tmp_path / "w.cfg", W8)
    assert convert("--modelFile=/nonexistent.onnx", "--outputFile=o", f"--configFile={cfg}") == 2
    assert "file not found" in capsys.readouterr().err
    assert convert("--fmk=TFLITE", "--modelFile=x", "--outputFile=o", f"--configFile={cfg}") == 2
    assert "ONNX" in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, model, capsys):
    cfg = write_config(tmp_path / "w.cfg", W8)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert convert(f"--modelFile={model}", f"--outputFile={blocker / 'sub' / 'o'}", f"--configFile={cfg}") == 2
    assert "output folder" in capsys.readouterr().err


def test_console_script_exit_code_and_no_traceback(tmp_path, model):
    ptq = shutil.which("ptq", path=str(Path(sys.executable).parent))
    assert ptq, "the ptq console script is installed with the package"
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=x\n")
    proc = subprocess.run([ptq, "convert", f"--modelFile={model}", "--outputFile=o", f"--configFile={cfg}", "--no-flow"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ptq: error:") and "Traceback" not in proc.stderr


def _ephemeral_env(tmp_path):
    """The console script as a user runs it: no Prefect API URL, so Prefect starts its temporary server."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PTQFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "home" / "prefect"))
    return env


def test_successful_sweep_on_the_temporary_server_prints_no_traceback(tmp_path, model):
    """Prefect stops its temporary server with SIGTERM at exit; a task-run event still being written then
    made the server print "Error flushing 1 events" and two tracebacks after a successful run (3 of 9 runs
    of this sweep from a shell). The CLI now waits until the server has recorded the call's task runs
    (ptqflow._settle; its logic is tested in test_settle.py, since the race itself is timing-dependent)."""
    ptq = shutil.which("ptq", path=str(Path(sys.executable).parent))
    cfg = write_config(tmp_path / "d.cfg", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n")
    grid = tmp_path / "g.json"
    grid.write_text('{"ptqflow.rotation_block": [0, 16], "dynamic_quant_param.quant_strategy": ["ALWC", "ACWL"]}')
    out = tmp_path / "sweep"
    proc = subprocess.run([ptq, "sweep", "--fmk=ONNX", f"--modelFile={model}", f"--configFile={cfg}",
                           "--grid", str(grid), "--outputDir", str(out)],
                          capture_output=True, text=True, timeout=300, env=_ephemeral_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and "Error flushing" not in text, text[-3000:]
    assert (out / "best.cfg").exists()


def test_settling_starts_no_server_when_no_flow_ran():
    from prefect.server.api.server import SubprocessASGIServer

    from ptqflow._settle import now, settle_task_runs

    before = {k: v.running for k, v in SubprocessASGIServer._instances.items()}
    assert settle_task_runs(now(), timeout=1.0)
    assert {k: v.running for k, v in SubprocessASGIServer._instances.items()} == before


@pytest.mark.parametrize("form", ["portable", "vnni"])
def test_summary_and_metadata_say_which_cpus_the_int8_model_is_right_on(tmp_path, model, capsys, form):
    import onnx

    cfg = write_config(tmp_path / "d.cfg", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                                           f"[ptqflow]\nint8_form={form}\n")
    assert convert(f"--modelFile={model}", f"--outputFile={tmp_path / 'q'}", f"--configFile={cfg}") == 0
    text = " ".join(capsys.readouterr().out.split())
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}
    assert meta["ptqflow.int8_form"] == form
    assert "int8 form" in text
    if form == "vnni":
        assert "correct only on" in text and "without VNNI" in text and "ptqflow.requires_cpu" in meta
    else:
        assert "exact on every CPU" in text and "ptqflow.requires_cpu" not in meta
