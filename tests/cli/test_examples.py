"""Checks for the bundled example in examples/ (digits CNN, sample data, configs).

Only numpy, onnxruntime, pillow and pytest are needed: the model is shipped,
these tests never retrain it (see examples/build_digits_model.py for that).
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")

from paths import ROOT as REPO

EXAMPLES = REPO / "examples"
DIGITS = EXAMPLES / "digits"
MODEL = DIGITS / "digits_cnn.onnx"
SIZE_BUDGET = int(1.5 * 1024 * 1024)
N_SAMPLES = 64
NAME_RE = re.compile(r"^digit_(\d{4})_label(\d)\.(png|bin)$")


def normalize(pixels: np.ndarray) -> np.ndarray:
    """The documented preprocessing: uint8 grey pixel -> (p - 127.5) / 127.5 float32."""
    return (pixels.astype(np.float32) - np.float32(127.5)) / np.float32(127.5)


@pytest.fixture(scope="module")
def session():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def evalset():
    with np.load(DIGITS / "eval.npz") as z:
        return z["inputs"], z["labels"]


def _sample_files(sub: str, ext: str) -> list[Path]:
    return sorted((DIGITS / sub).glob(f"*.{ext}"))


def test_model_io(session):
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.name == "input"
    assert list(inp.shape) == [1, 1, 8, 8]
    assert inp.type == "tensor(float)"
    assert out.name == "logits"
    assert list(out.shape) == [1, 10]
    assert out.type == "tensor(float)"


def test_model_graph():
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    m = onnx.load(str(MODEL))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [13]
    names = {n.name for n in m.graph.node}
    assert {"conv1", "conv2", "conv3", "fc1", "fc2"} <= names
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    conv_out = [inits[n.input[1]].shape[0] for n in m.graph.node if n.op_type == "Conv"]
    assert len(conv_out) == 3
    # converter_lite's default min_quant_weight_channel=16 skips convs with <= 16 out-channels
    assert sum(c <= 16 for c in conv_out) <= 1


def test_accuracy(session, evalset):
    x, y = evalset
    assert x.dtype == np.float32 and x.shape == (len(y), 1, 8, 8)
    preds = np.array([np.argmax(session.run(["logits"], {"input": x[i : i + 1]})[0]) for i in range(len(y))])
    acc = float(np.mean(preds == y))
    assert acc >= 0.95, acc


def test_sample_names_and_counts(evalset):
    _, y = evalset
    pngs, bins = _sample_files("images", "png"), _sample_files("bin", "bin")
    assert len(pngs) == N_SAMPLES and len(bins) == N_SAMPLES
    assert [p.stem for p in pngs] == [b.stem for b in bins]
    for p in pngs:
        m = NAME_RE.match(p.name)
        assert m, p.name
        row, label = int(m.group(1)), int(m.group(2))
        assert label == y[row], p.name


def test_png_samples_match_eval(evalset):
    x, _ = evalset
    for p in _sample_files("images", "png"):
        row = int(NAME_RE.match(p.name).group(1))
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (8, 8)
            pixels = np.asarray(im, dtype=np.uint8)
        tensor = normalize(pixels).reshape(1, 1, 8, 8)
        np.testing.assert_allclose(tensor, x[row : row + 1], rtol=0, atol=1e-6, err_msg=p.name)


def test_bin_samples_match_eval(evalset, session):
    x, _ = evalset
    for b in _sample_files("bin", "bin"):
        row = int(NAME_RE.match(b.name).group(1))
        raw = b.read_bytes()
        assert len(raw) == 1 * 1 * 8 * 8 * 4, b.name
        tensor = np.frombuffer(raw, dtype="<f4").reshape(1, 1, 8, 8)
        np.testing.assert_array_equal(tensor, x[row : row + 1], err_msg=b.name)
    # a .bin file is directly a valid model input
    out = session.run(["logits"], {"input": tensor.astype(np.float32)})[0]
    assert out.shape == (1, 10)


def test_size_budget():
    files = [f for f in EXAMPLES.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
    total = sum(f.stat().st_size for f in files)
    assert total < SIZE_BUDGET, f"examples/ is {total} bytes (budget {SIZE_BUDGET})"


@pytest.mark.parametrize(
    "name, quant_type, bit_num",
    [
        ("weight_fixed_bit.cfg", "WEIGHT_QUANT", "8"),
        ("weight_mixed_bit.cfg", "WEIGHT_QUANT", "0"),
        ("full_quant.cfg", "FULL_QUANT", "8"),
        ("dynamic_quant.cfg", "DYNAMIC_QUANT", "8"),
    ],
)
def test_configs(name, quant_type, bit_num):
    cp = configparser.ConfigParser(comment_prefixes=("#",), inline_comment_prefixes=None)
    cp.read(EXAMPLES / "configs" / name, encoding="utf-8")
    assert cp["common_quant_param"]["quant_type"] == quant_type
    assert cp["common_quant_param"]["bit_num"] == bit_num
    if quant_type == "FULL_QUANT":
        pre = cp["data_preprocess_param"]
        assert pre["input_type"] == "BIN"
        assert int(pre["calibrate_size"]) == N_SAMPLES
        input_name, path = pre["calibrate_path"].split(":", 1)
        assert input_name == "input"
        assert len(list((REPO / path).glob("*.bin"))) == N_SAMPLES
        assert "full_quant_param" in cp
