"""A dynamic-shape model calibrated with images takes its input shape from the preprocessed images; only data
that cannot decide it (images of different sizes with nothing resizing them) asks for --inputShape."""

import numpy as np
import onnx
import pytest
from modelgen import save, write_config
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ptqflow.cli import main


def dynamic_cnn(channels_last: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    dims = ["N", "H", "W", 3] if channels_last else ["N", 3, "H", "W"]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw")] if channels_last else []
    src = "xt" if channels_last else "x"
    nodes += [helper.make_node("Conv", [src, "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"], name="relu"),
              helper.make_node("GlobalAveragePool", ["r"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def images(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def config(tmp_path, folder, n, resize=""):
    return write_config(tmp_path / "c.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                        f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size={n}\ninput_type=IMAGE\n"
                        "normalize_mean=[127.5,127.5,127.5]\nnormalize_std=[127.5,127.5,127.5]\n" + resize +
                        "[ptqflow]\nlatency_guard=false\n")


def convert(model, cfg, out):
    return main(["convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={out}", "--no-flow"])


def test_resized_images_fix_the_shape_of_a_dynamic_input(tmp_path, capsys):
    model = save(dynamic_cnn(), tmp_path / "m.onnx")
    folder = images(tmp_path / "img", [(40, 30), (50, 20), (33, 33)])
    cfg = config(tmp_path, folder, 3, "resize_width=24\nresize_height=16\nresize_method=LINEAR\n")
    assert convert(model, cfg, tmp_path / "q") == 0, capsys.readouterr().err
    out = onnx.load(str(tmp_path / "q.onnx"))
    assert [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim] == ["N", 3, "H", "W"]


def test_images_of_one_size_need_no_resize(tmp_path, capsys):
    model = save(dynamic_cnn(), tmp_path / "m.onnx")
    folder = images(tmp_path / "img", [(20, 12)] * 3)
    assert convert(model, config(tmp_path, folder, 3), tmp_path / "q") == 0, capsys.readouterr().err


def test_an_nhwc_input_gets_an_nhwc_shape(tmp_path, capsys):
    model = save(dynamic_cnn(channels_last=True), tmp_path / "m.onnx")
    folder = images(tmp_path / "img", [(20, 12)] * 2)
    assert convert(model, config(tmp_path, folder, 2), tmp_path / "q") == 0, capsys.readouterr().err


def test_images_of_different_sizes_without_resize_name_the_files_that_disagree(tmp_path, capsys):
    model = save(dynamic_cnn(), tmp_path / "m.onnx")
    folder = images(tmp_path / "img", [(20, 12), (20, 12), (18, 12)])
    assert convert(model, config(tmp_path, folder, 3), tmp_path / "q") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "00.png is 20x12" in err and "02.png is 18x12" in err
    assert "resize_method" in err and not list(tmp_path.glob("q*"))


def test_the_given_input_shape_wins_over_the_images(tmp_path):
    from ptq_core.config import load_config
    from ptq_core.data.input_layout import shapes_from_images
    from ptq_core.onnxgraph.session import InputOptions
    from ptq_core.onnxgraph.sites import analyse_model

    model = save(dynamic_cnn(), tmp_path / "m.onnx")
    folder = images(tmp_path / "img", [(20, 12)] * 2)
    cfg = load_config(config(tmp_path, folder, 2))
    info = analyse_model(model)
    assert shapes_from_images(cfg, info.inputs, InputOptions()).shape_map == {"x": (1, 3, 12, 20)}
    given = InputOptions.from_flags("x:1,3,12,20")
    assert shapes_from_images(cfg, info.inputs, given) is given


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_takes_the_shape_from_the_images_too(tmp_path):
    from ptqflow.api import convert as api_convert

    model = save(dynamic_cnn(), tmp_path / "m.onnx")
    folder = images(tmp_path / "img", [(40, 30), (50, 20)])
    cfg = config(tmp_path, folder, 2, "resize_width=24\nresize_height=16\nresize_method=LINEAR\n")
    via_flow = api_convert(model, cfg, tmp_path / "flow", use_flow=True)
    direct = api_convert(model, cfg, tmp_path / "direct", use_flow=False)
    assert via_flow.output_path.read_bytes() == direct.output_path.read_bytes()
