"""Cross-layer equalization (per_channel=false): the FP32 function is unchanged, the channel ranges of each
chain are evened out, only converter_lite's patterns are touched, and per-layer int8 gets better."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from modelgen import save
from onnx import TensorProto, helper, numpy_helper

from ptq_core.modes.full.equalization import equalize, find_chains


def chain_model(middle: str = "relu", depthwise: bool = False, spread: float = 50.0) -> onnx.ModelProto:
    """x -> conv_a (channel ranges spread by `spread`) -> [Relu] -> [depthwise -> Relu] -> conv_b -> y."""
    rng = np.random.default_rng(0)
    wa = rng.normal(0, 0.2, (8, 3, 3, 3)) * np.geomspace(1 / spread, 1, 8)[:, None, None, None]
    inits = [numpy_helper.from_array(wa.astype(np.float32), "wa"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "ba"),
             numpy_helper.from_array(rng.normal(0, 0.2, (6, 8, 3, 3)).astype(np.float32), "wb")]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1])]
    src = "a"
    if middle == "relu":
        nodes.append(helper.make_node("Relu", ["a"], ["ar"], name="relu_a"))
        src = "ar"
    elif middle == "relu6":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["a", "lo", "hi"], ["ar"], name="relu6_a"))
        src = "ar"
    if depthwise:
        inits.append(numpy_helper.from_array((rng.normal(0, 0.5, (8, 1, 3, 3))).astype(np.float32), "wd"))
        nodes += [helper.make_node("Conv", [src, "wd"], ["d"], name="conv_d", pads=[1, 1, 1, 1], group=8),
                  helper.make_node("Relu", ["d"], ["dr"], name="relu_d")]
        src = "dr"
    nodes.append(helper.make_node("Conv", [src, "wb"], ["y"], name="conv_b", pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def weight(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


X = np.random.default_rng(1).normal(0, 1, (1, 3, 10, 10)).astype(np.float32)


@pytest.mark.parametrize("middle", ["relu", "none"])
def test_a_conv_pair_keeps_its_fp32_function_and_gets_even_ranges(middle):
    model = chain_model(middle)
    out, chains = equalize(model)
    assert [c.nodes for c in chains] == [("conv_a", "conv_b")]
    np.testing.assert_allclose(run(out, X), run(model, X), rtol=1e-4, atol=1e-5)
    r1 = np.abs(weight(out, "wa")).reshape(8, -1).max(axis=1)
    r2 = np.abs(weight(out, "wb")).transpose(1, 0, 2, 3).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)  # sqrt(r1 r2) on both sides
    before = np.abs(weight(model, "wa")).reshape(8, -1).max(axis=1)
    assert r1.max() / r1.min() < before.max() / before.min() / 5


def test_conv_depthwise_conv_is_equalized_as_one_chain_of_three():
    model = chain_model("relu", depthwise=True)
    out, chains = equalize(model)
    assert [c.nodes for c in chains] == [("conv_a", "conv_d", "conv_b")]
    np.testing.assert_allclose(run(out, X), run(model, X), rtol=1e-4, atol=1e-5)
    r1 = np.abs(weight(out, "wa")).reshape(8, -1).max(axis=1)
    r2 = np.abs(weight(out, "wd")).reshape(8, -1).max(axis=1)
    r3 = np.abs(weight(out, "wb")).transpose(1, 0, 2, 3).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    np.testing.assert_allclose(r2, r3, rtol=1e-5)


def test_relu6_a_shared_output_or_a_graph_output_breaks_the_chain():
    assert find_chains(chain_model("relu6")) == []
    model = chain_model("relu")
    model.graph.output.append(helper.make_tensor_value_info("ar", TensorProto.FLOAT, None))  # Relu output also used
    assert find_chains(model) == []


def test_per_layer_full_quant_is_closer_to_fp32_with_equalization(tmp_path):
    from ptq_core.modes.full.quantize import quantize_full
    from ptq_core.onnxgraph.session import InputOptions

    model_path, folder, rng = _chain_and_calibration(tmp_path)  # rng goes on past the calibration samples

    def cosine(per_channel: str, cle: str) -> tuple[float, tuple]:
        cfg = _per_layer_config(folder, f"per_channel={per_channel}\nbias_correction=false\n",
                                f"cross_layer_equalization={cle}\n")
        res = quantize_full(model_path, cfg, InputOptions(), tmp_path / f"w{per_channel}{cle}")
        xs = rng.normal(0, 1, (16, 1, 3, 10, 10)).astype(np.float32)
        want = np.concatenate([run(onnx.load(str(model_path)), x).ravel() for x in xs])
        got = np.concatenate([run(res.quantized, x).ravel() for x in xs])
        return float(np.dot(want, got) / (np.linalg.norm(want) * np.linalg.norm(got))), res.plan.equalized

    with_cle, chains = cosine("false", "true")
    without, none = cosine("false", "false")
    per_channel, pc_chains = cosine("true", "true")
    assert chains == (("conv_a", "conv_b"),) and none == () and pc_chains == ()  # per_channel: no equalization
    assert 1 - with_cle < 0.7 * (1 - without)  # measured: 0.00059 vs 0.00117


def _chain_and_calibration(tmp_path):
    """The 200x-spread conv pair, 8 calibration samples for it, and the generator that drew them."""
    model_path = save(chain_model("relu", spread=200.0), tmp_path / "m.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(8):
        (folder / f"{i}.bin").write_bytes(rng.normal(0, 1, (1, 3, 10, 10)).astype(np.float32).tobytes())
    return model_path, folder, rng


def _per_layer_config(folder, full: str = "per_channel=false\n", ptqflow: str = ""):
    from ptq_core.config import parse_config

    return parse_config("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                        f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=8\ninput_type=BIN\n"
                        f"[full_quant_param]\n{full}[ptqflow]\nlatency_guard=false\n{ptqflow}")


def _per_layer_setup(tmp_path):
    model_path, folder, _ = _chain_and_calibration(tmp_path)
    return model_path, _per_layer_config(folder)


def test_auto_keeps_equalization_where_it_brings_the_outputs_closer_to_fp32(tmp_path):
    from ptq_core.modes.full.quantize import quantize_full
    from ptq_core.onnxgraph.session import InputOptions

    model_path, cfg = _per_layer_setup(tmp_path)
    res = quantize_full(model_path, cfg, InputOptions(), tmp_path / "w")
    assert res.plan.equalized == (("conv_a", "conv_b"),) and res.plan.equalization_note.startswith("kept")


def test_auto_leaves_equalization_out_where_it_does_worse(tmp_path, monkeypatch):
    from ptq_core.modes.full import quantize as full_quantize
    from ptq_core.onnxgraph.session import InputOptions

    model_path, cfg = _per_layer_setup(tmp_path)
    scores = iter([0.90, 0.95])  # with equalization, then without
    monkeypatch.setattr(full_quantize, "calibration_cosine", lambda *a: next(scores))
    res = full_quantize.quantize_full(model_path, cfg, InputOptions(), tmp_path / "w")
    assert res.plan.equalized == () and res.plan.equalization_note.startswith("tried and left out")
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_path)).graph.initializer}
    assert "wa" in weights  # the written model computes with the file's own (unequalized) weights
    forced = full_quantize.quantize_full(model_path, cfg.replace(ptqflow={"cross_layer_equalization": "true"}),
                                         InputOptions(), tmp_path / "w2")
    assert forced.plan.equalized and forced.plan.equalization_note == ""
