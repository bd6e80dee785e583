"""A detector whose feature maps are concatenated across scales (issue 15's stand-in): it runs on no 1x1
input, so the output check must find a size that runs. Every mode converts it through the CLI without
--inputShape, the written model runs in plain onnxruntime and stays close to FP32, and the flow writes the
same bytes as the direct path."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper
from PIL import Image


def multiscale_detector() -> onnx.ModelProto:
    """x[N, 3, H, W] -> three stride-2 convs (H/2, H/4, H/8); the H/8 map is upsampled x2 and concatenated
    with the H/4 map (a feature pyramid), and both scales' heads are flattened and concatenated into one
    [N, 6, H/4 * W/4 + H/8 * W/8] output (a YOLO-style anchor list). On a 1x1 input every map is 1x1 and
    the upsampled one 2x2: the first Concat fails."""
    rng = np.random.default_rng(0)

    def conv_w(name, c_out, c_in, k=3):
        return numpy_helper.from_array(rng.normal(0, (2.0 / (c_in * k * k)) ** 0.5, (c_out, c_in, k, k))
                                       .astype(np.float32), name)

    inits = [conv_w("w1", 16, 3), conv_w("w2", 32, 16), conv_w("w3", 32, 32), conv_w("w_fuse", 32, 64, 1),
             conv_w("w_head4", 6, 32, 1), conv_w("w_head8", 6, 32, 1),
             numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up2"),
             numpy_helper.from_array(np.array([0, 6, -1], np.int64), "flat")]
    stride2 = {"pads": [1, 1, 1, 1], "strides": [2, 2]}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c2"], name="stem", **stride2),
             helper.make_node("Relu", ["c2"], ["r2"], name="stem_relu"),
             helper.make_node("Conv", ["r2", "w2"], ["c4"], name="down4", **stride2),
             helper.make_node("Relu", ["c4"], ["r4"], name="down4_relu"),
             helper.make_node("Conv", ["r4", "w3"], ["c8"], name="down8", **stride2),
             helper.make_node("Relu", ["c8"], ["r8"], name="down8_relu"),
             helper.make_node("Resize", ["r8", "", "up2"], ["r8_up"], name="upsample", mode="nearest"),
             helper.make_node("Concat", ["r4", "r8_up"], ["pyramid"], name="across_scales", axis=1),
             helper.make_node("Conv", ["pyramid", "w_fuse"], ["fused"], name="fuse"),
             helper.make_node("Conv", ["fused", "w_head4"], ["h4"], name="head4"),
             helper.make_node("Conv", ["r8", "w_head8"], ["h8"], name="head8"),
             helper.make_node("Reshape", ["h4", "flat"], ["h4_flat"], name="flat4"),
             helper.make_node("Reshape", ["h8", "flat"], ["h8_flat"], name="flat8"),
             helper.make_node("Concat", ["h4_flat", "h8_flat"], ["anchors"], name="anchor_list", axis=2)]
    graph = helper.make_graph(nodes, "multiscale",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("anchors", TensorProto.FLOAT, ["N", 6, "A"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def photos(folder):
    """Smooth random images (blurred noise blocks): closer to photographs than white noise."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((48, 40), Image.BILINEAR).save(folder / f"{i:02d}.png")
    return folder


MODES = {
    "WEIGHT_QUANT": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                    "min_quant_weight_channel=0\n",
    "DYNAMIC_QUANT": "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n",
    "FULL_QUANT": "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                  "[data_preprocess_param]\ncalibrate_path=x:{images}\ncalibrate_size=6\ninput_type=IMAGE\n"
                  "normalize_mean=[127.5,127.5,127.5]\nnormalize_std=[127.5,127.5,127.5]\n"
                  "resize_width=64\nresize_height=64\nresize_method=LINEAR\n"
                  "[full_quant_param]\nper_channel=true\n[ptqflow]\nlatency_guard=false\n",
}


#: convolutions int8 per mode: DYNAMIC_QUANT quantizes MatMul/Gemm/Gather only and names each Conv it keeps
QUANTIZED = {"WEIGHT_QUANT": 6, "DYNAMIC_QUANT": 0, "FULL_QUANT": 6}


def cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_the_stand_in_fails_on_a_1x1_input():
    session = ort.InferenceSession(multiscale_detector().SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="across_scales"):
        session.run(None, {"x": np.ones((1, 3, 1, 1), np.float32)})


@pytest.mark.parametrize("mode", list(MODES))
def test_a_detector_concatenating_across_scales_converts_in_every_mode(tmp_path, mode, capsys):
    from ptqflow.cli import main

    model = save(multiscale_detector(), tmp_path / "det.onnx")
    cfg = write_config(tmp_path / "c.cfg", MODES[mode].format(images=photos(tmp_path / "img")))
    assert main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={tmp_path / 'q'}",
                 "--no-flow"]) == 0, capsys.readouterr().err
    said = capsys.readouterr()
    summary = " ".join(said.out.split())
    assert "output cosine vs FP32 0.99" in summary or "output cosine vs FP32 1.000" in summary, summary
    assert "not measured" not in summary and "Traceback" not in said.err and "onnxruntime:" not in said.err
    assert f"layers {QUANTIZED[mode]} quantized, {6 - QUANTIZED[mode]} skipped" in summary
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 64, 96)).astype(np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape == (1, 6, 16 * 24 + 8 * 12)
    assert cosine(want, got) > 0.99


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", list(MODES))
def test_the_flow_writes_the_same_detector_model_as_the_direct_path_in_every_mode(tmp_path, mode):
    from ptqflow.api import convert

    model = save(multiscale_detector(), tmp_path / "det.onnx")
    cfg = write_config(tmp_path / "c.cfg", MODES[mode].format(images=photos(tmp_path / "img")))
    via_flow = convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
    assert sum(d.quantized for d in via_flow.layers) == QUANTIZED[mode]
    assert all(d.quantized or "Conv stays FP32" in d.reason for d in via_flow.layers)
