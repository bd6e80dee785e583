"""GPTQ on Conv weights (docs/gptq.md): the Hessian is over the input patches each output position sees,
collected through a depthwise one-hot Conv in the statistics model; the codes leave less output error on
the calibration inputs than rounding to nearest, in the CLI and in the flow alike. Grouped Convs are
rounded to nearest, saying why."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper

from ptq_core.modes.weight.conv_patches import one_hot_kernels, with_conv_patches
from ptq_core.onnxgraph.sites import find_weight_sites
from ptq_core.stats.collect import expose_tensors

SHAPE = (1, 6, 12, 10)


def conv_net() -> onnx.ModelProto:
    """x[1, 6, 12, 10] -> Conv 3x3 (stride 2, pads 1, dilation 1) -> Relu -> Conv 3x2 (dilation 2, no pads)
    -> depthwise Conv 3x3 (group 8, pads 1)."""
    rng = np.random.default_rng(3)
    w1 = (rng.normal(0, 0.3, (8, 6, 3, 3)) * rng.uniform(0.2, 2, (8, 1, 1, 1))).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 8, 3, 2)).astype(np.float32)
    w3 = rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv_s2", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["b"], name="conv_d2", dilations=[2, 2]),
             helper.make_node("Conv", ["b", "w3"], ["y"], name="conv_dw", group=8, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def im2col(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """Reference: rows [positions, C·kh·kw] in the weight's column order."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    xp = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    rows = [xp[:, i * sh:i * sh + (kh - 1) * dh + 1:dh, j * sw:j * sw + (kw - 1) * dw + 1:dw].reshape(-1)
            for i in range(oh) for j in range(ow)]
    return np.stack(rows)


def test_one_hot_kernels_copy_each_channel_at_each_kernel_position():
    k = one_hot_kernels(2, (2, 3))
    assert k.shape == (12, 1, 2, 3)
    assert [tuple(np.argwhere(k[c, 0])[0]) for c in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert k.sum() == 12


def test_the_patch_rows_are_the_im2col_of_each_conv_input_and_grouped_convs_get_none():
    model = conv_net()
    augmented, wanted = with_conv_patches(model, find_weight_sites(model))
    assert set(wanted) == {"w1", "w2"}  # the depthwise Conv is grouped
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    names = ["a", "r", wanted["w1"][0], wanted["w2"][0]]
    s = ort.InferenceSession(expose_tensors(augmented, names).SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(names, s.run(names, {"x": x})))
    rows1 = got[wanted["w1"][0]].reshape(-1, 6 * 9)
    np.testing.assert_array_equal(rows1, im2col(x, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)))
    rows2 = got[wanted["w2"][0]].reshape(-1, 8 * 6)
    np.testing.assert_array_equal(rows2, im2col(got["r"], (3, 2), (1, 1), (0, 0, 0, 0), (2, 2)))


def _calibration(tmp_path, n: int = 8):
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(9)
    for i in range(n):
        x = rng.normal(size=SHAPE).astype(np.float32)
        x[:, 1:3] = x[:, 0:1] * 0.9 + 0.1 * x[:, 1:3]  # correlated channels: where GPTQ has room to gain
        (folder / f"{i:02d}.bin").write_bytes(x.tobytes())
    return folder


def _cfg(tmp_path, folder, strategy):
    return write_config(tmp_path / f"{strategy}.cfg",
                        "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=3\nmin_quant_weight_size=0\n"
                        f"min_quant_weight_channel=0\n[weight_quant_param]\nquant_strategy={strategy}\n"
                        f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=8\ninput_type=BIN\n")


def _output_error(model_path, quant_path, folder) -> float:
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (model_path, quant_path))
    total = 0.0
    for f in sorted(folder.glob("*.bin")):
        x = {"x": np.fromfile(f, np.float32).reshape(SHAPE)}
        total += float(np.sum((a.run(None, x)[0] - b.run(None, x)[0]) ** 2))
    return total


def test_gptq_rounds_convs_closer_to_fp32_than_nearest_and_says_why_not_for_the_grouped_one(tmp_path):
    from ptqflow.api import convert

    model, folder = save(conv_net(), tmp_path / "convs.onnx"), _calibration(tmp_path)
    results = {s: convert(model, _cfg(tmp_path, folder, s), tmp_path / s, use_flow=False) for s in ("GPTQ", "MAX_MIN")}
    how = {d.node: d.reason for d in results["GPTQ"].layers}
    assert "GPTQ" in how["conv_s2"] and "GPTQ" in how["conv_d2"] and "rounded to nearest" in how["conv_dw"]
    errors = {s: _output_error(model, r.output_path, folder) for s, r in results.items()}
    assert errors["GPTQ"] < 0.8 * errors["MAX_MIN"]


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_writes_the_same_conv_gptq_model_as_the_direct_path(tmp_path):
    from ptqflow.api import convert

    model, folder = save(conv_net(), tmp_path / "convs.onnx"), _calibration(tmp_path)
    cfg = _cfg(tmp_path, folder, "GPTQ")
    assert (convert(model, cfg, tmp_path / "flow", use_flow=True).output_path.read_bytes() ==
            convert(model, cfg, tmp_path / "direct", use_flow=False).output_path.read_bytes())
