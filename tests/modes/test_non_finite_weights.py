"""A weight holding NaN or Inf is refused in every mode with one line naming it, never quantized into garbage;
a calibration folder's looping symlink is named."""

import os
import subprocess
import sys

import numpy as np
import pytest
from modelgen import mlp_model, save, write_config
from onnx import numpy_helper

MODES = {
    "WEIGHT_QUANT": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n",
    "WEIGHT_QUANT per-layer": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                              "[weight_quant_param]\nper_channel=false\n",
    "DYNAMIC_QUANT": "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n",
    "FULL_QUANT": "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                  "[data_preprocess_param]\ncalibrate_path=x:{calib}\ncalibrate_size=4\ninput_type=BIN\n"
                  "[ptqflow]\nlatency_guard=false\n",
}


def model_with_bad_weight(tmp_path):
    model = mlp_model(hidden=64)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()  # w1, 64x64, read by fc1
    w[3, 5], w[10, 7] = np.nan, np.inf
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    return save(model, tmp_path / "bad.onnx")


def calib(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        (folder / f"{i}.bin").write_bytes(rng.normal(0, 1, (1, 64)).astype(np.float32).tobytes())
    return folder


@pytest.mark.parametrize("mode", list(MODES))
def test_a_weight_with_nan_or_inf_is_refused_in_one_line_naming_it(tmp_path, mode):
    model = model_with_bad_weight(tmp_path)
    cfg = write_config(tmp_path / "c.cfg", MODES[mode].format(calib=calib(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "ptqflow.cli", "convert", f"--modelFile={model}",
                           f"--configFile={cfg}", f"--outputFile={tmp_path / 'out'}", "--no-flow"],
                          capture_output=True, text=True, timeout=180)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Warning" not in err and "Traceback" not in err
    assert "'w1'" in err and "'fc1'" in err and "2 non-finite values (1 NaN, 1 +Inf)" in err
    assert "skip_quant_node=fc1" in err
    assert not list(tmp_path.glob("out*"))


def test_skip_quant_node_lets_a_model_with_a_nan_weight_through(tmp_path):
    from ptqflow.cli import main

    model = model_with_bad_weight(tmp_path)
    cfg = write_config(tmp_path / "c.cfg", MODES["WEIGHT_QUANT"] + "skip_quant_node=fc1\n")
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'o'}",
                 "--no-flow"]) == 0


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_looping_symlink_in_the_calibration_folder_is_named(tmp_path):
    from ptq_core.config import parse_config
    from ptq_core.data.calibration_files import list_calibration_files
    from ptq_core.errors import DataError

    folder = calib(tmp_path)
    os.symlink("self", folder / "self")
    cfg = parse_config(f"[common_quant_param]\nquant_type=FULL_QUANT\n[data_preprocess_param]\ncalibrate_path=x:{folder}\n"
                       "calibrate_size=4\ninput_type=BIN\n", "c.cfg")
    with pytest.raises(DataError, match=r"self is a symbolic link that loops \(-> self\)"):
        list_calibration_files(cfg)
