"""The ONNX layer finds the weights a user expects, with converter_lite's channel axes and stable names."""

import onnx
import pytest
from modelgen import mixed_ops_model, save

from ptq_core.errors import ModelError
from ptq_core.onnxgraph.load import assign_node_names, prepare_model
from ptq_core.onnxgraph.sites import analyse_model, check_skip_nodes, find_weight_sites


def _sites(model):
    return {(s.node, s.tensor): s for s in find_weight_sites(model)}


def test_weight_sites_and_channel_axes():
    sites = _sites(mixed_ops_model())
    assert sites[("conv_big", "conv_w")].axis == 0
    assert sites[("deconv", "deconv_w")].axis == 1  # ONNX ConvTranspose (Cin, Cout/g, kH, kW)
    assert sites[("matmul", "mm_w")].axis == 1  # N axis of (K, N)
    assert sites[("gemm", "gemm_w")].axis == 0  # transB=1: (N, K)
    assert sites[("embed", "emb")].axis == 0  # gather axis
    assert ("conv_big", "conv_b") not in sites  # 1-D biases stay float


def test_conv_like_flag_only_on_convolutions():
    sites = _sites(mixed_ops_model())
    assert sites[("conv_small", "small_w")].conv_like
    assert not sites[("gemm", "gemm_w")].conv_like


def test_unnamed_nodes_get_stable_generated_names():
    a = assign_node_names(mixed_ops_model(unnamed=True))
    b = assign_node_names(mixed_ops_model(unnamed=True))
    names = [n.name for n in a.graph.node]
    assert names == [n.name for n in b.graph.node]
    assert names[:3] == ["Conv_0", "Relu_0", "Conv_1"]
    assert len(set(names)) == len(names)


def test_generated_names_avoid_existing_names():
    model = mixed_ops_model(unnamed=True)
    model.graph.node[1].name = "Conv_0"
    names = [n.name for n in assign_node_names(model).graph.node]
    assert len(set(names)) == len(names)


def test_constant_node_weights_are_found(tmp_path):
    model = mixed_ops_model()
    w = next(t for t in model.graph.initializer if t.name == "gemm_w")
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["gemm_w"], value=w, name="const_w"))
    sites = _sites(prepare_model(save(model, tmp_path / "m.onnx")))
    assert ("gemm", "gemm_w") in sites


def test_external_data_is_loaded(tmp_path):
    model = mixed_ops_model()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    info = analyse_model(tmp_path / "ext.onnx")
    assert any(s.tensor == "mm_w" for s in info.sites)


def test_external_data_outside_model_folder_is_refused(tmp_path):
    model = mixed_ops_model()
    sub = tmp_path / "m"
    sub.mkdir()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    loaded = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    for t in loaded.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../ext.data"
    onnx.save(loaded, str(sub / "evil.onnx"))
    with pytest.raises(ModelError, match="outside the model's folder"):
        analyse_model(sub / "evil.onnx")


def test_corrupt_model_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelError, match="bad.onnx"):
        analyse_model(path)


def test_truncated_model_is_a_clear_error(tmp_path):
    good = save(mixed_ops_model(), tmp_path / "good.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        analyse_model(path)


def test_unknown_skip_node_lists_closest_names(tmp_path):
    info = analyse_model(save(mixed_ops_model(), tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="did you mean 'conv_big'"):
        check_skip_nodes(info, ("conv_bg",), "w.cfg")
