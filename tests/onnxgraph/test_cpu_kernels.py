"""Int8 models right on every CPU: an exact NumPy model of onnxruntime's non-VNNI u8 x s8 arithmetic,
applied to every int8 weight the CPU emitters write, so these tests fail on a VNNI machine too."""


import numpy as np
import onnxruntime as ort
import pytest
from modelgen import save  # noqa: E402
from onnx import TensorProto, helper, numpy_helper
from test_full_quant import calib_folder, cnn_model  # noqa: E402

from ptq_core.config import parse_config  # noqa: E402
from ptq_core.modes.dynamic.emit import emit_dynamic
from ptq_core.modes.dynamic.plan import plan_dynamic  # noqa: E402
from ptq_core.modes.full.quantize import quantize_full  # noqa: E402
from ptq_core.onnxgraph.cpu import (  # noqa: E402
    PAIR_SAFE_LIMIT,
    has_exact_u8s8,
    integer_weights,
    machine_isa,
    saturating_columns,
    saturating_u8s8_matmul,
    saturating_weights,
)
from ptq_core.onnxgraph.session import InputOptions  # noqa: E402

# ---------------------------------------------------------------------------------------------
# the model of the kernel


def test_pairs_that_fit_int16_give_exact_integer_math():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (9, 37)).astype(np.uint8)  # odd K: padded with a zero row, as MLAS does
    w = rng.integers(-PAIR_SAFE_LIMIT, PAIR_SAFE_LIMIT + 1, (37, 11)).astype(np.int8)
    assert np.array_equal(saturating_u8s8_matmul(x, w), x.astype(np.int64) @ w.astype(np.int64))


def test_a_full_range_pair_saturates_at_int16():
    x = np.full((1, 2), 255, np.uint8)
    w = np.array([[127], [127]], np.int8)
    assert saturating_u8s8_matmul(x, w)[0, 0] == 32767  # exact: 64770
    assert saturating_u8s8_matmul(x, -w)[0, 0] == -32768
    assert saturating_columns(w).tolist() == [0]
    # 64 + 64 is the largest pair that always fits
    assert saturating_columns(np.array([[64], [64]], np.int8)).size == 0
    assert saturating_columns(np.array([[65], [64]], np.int8)).tolist() == [0]


def test_opposite_signs_never_saturate():
    w = np.array([[127, -127], [-127, 127]], np.int8)
    assert saturating_columns(w).size == 0


@pytest.mark.skipif(has_exact_u8s8(), reason=f"onnxruntime's u8 x s8 kernels are exact here ({machine_isa()})")
def test_the_numpy_model_is_what_onnxruntime_computes_on_this_cpu():
    """On a CPU without VNNI the model reproduces onnxruntime's MatMulInteger bit for bit, overflow included."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (64, 96)).astype(np.uint8)
    w = rng.integers(-127, 128, (96, 48)).astype(np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [64, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    exact = x.astype(np.int64) @ w.astype(np.int64)
    assert not np.array_equal(y, exact), "full-range weights overflow here"
    assert np.array_equal(y, saturating_u8s8_matmul(x, w))


# ---------------------------------------------------------------------------------------------
# every int8 weight the CPU emitters write


def full_cfg(folder, per_channel=True, form=None, n=12, extra=""):
    extra += f"int8_form={form}\n" if form else ""
    return parse_config("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                        f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size={n}\ninput_type=BIN\n"
                        f"[full_quant_param]\nactivation_quant_method=MAX_MIN\nper_channel={str(per_channel).lower()}\n"
                        f"bias_correction=true\n[ptqflow]\nlatency_guard=false\n{extra}")


def large_weight_cnn(seed=0):
    """cnn_model with a few large weights placed side by side, so full-range codes pair up."""
    model = cnn_model(seed)
    for t in model.graph.initializer:
        if t.name in ("w1", "w2", "wf"):
            a = numpy_helper.to_array(t).copy()
            flat = a.reshape(a.shape[0], -1)
            flat[:, :4] = np.abs(flat[:, :4]) + 3 * np.abs(flat).max(axis=1, keepdims=True)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return model


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-layer"])
def test_full_quant_cpu_weights_never_saturate_without_vnni(tmp_path, per_channel):
    model_path = save(large_weight_cnn(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), per_channel), InputOptions(), tmp_path / "w")
    assert len(integer_weights(result.quantized)) == 3
    assert saturating_weights(result.quantized) == []
    meta = {p.key: p.value for p in result.quantized.metadata_props}
    assert meta["ptqflow.int8_form"] == "portable" and "ptqflow.requires_cpu" not in meta


def test_max_drop_rebuilds_keep_the_portable_form(tmp_path):
    model_path = save(large_weight_cnn(), tmp_path / "m.onnx")
    cfg = full_cfg(calib_folder(tmp_path), extra="max_drop=0.0001\n")
    result = quantize_full(model_path, cfg, InputOptions(), tmp_path / "w")
    assert result.max_drop is not None and integer_weights(result.quantized)
    assert saturating_weights(result.quantized) == []


def test_full_quant_vnni_form_is_the_one_that_saturates_and_says_so(tmp_path):
    """The check above can fail: the opt-in form writes full-range weights that do saturate."""
    model_path = save(large_weight_cnn(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), form="vnni"), InputOptions(), tmp_path / "w")
    assert saturating_weights(result.quantized)
    meta = {p.key: p.value for p in result.quantized.metadata_props}
    assert meta["ptqflow.int8_form"] == "vnni" and "VNNI" in meta["ptqflow.requires_cpu"]


def matmul_gemm_model(seed=0):
    """A MatMul, a Gemm with transB and a Gemm without, with full-scale weights."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1, (64, 48)).astype(np.float32)
    w1[:8] = np.abs(w1[:8]) + 4  # large same-sign rows: pairs along K
    w2 = rng.normal(0, 1, (32, 48)).astype(np.float32)  # transB: (N, K)
    w2[:, :8] = np.abs(w2[:, :8]) + 4
    w3 = rng.normal(0, 1, (32, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm"),
             helper.make_node("Gemm", ["a", "w2"], ["b"], name="gemm_t", transB=1),
             helper.make_node("Gemm", ["b", "w3"], ["y"], name="gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, n) for n, w in (("w1", w1), ("w2", w2), ("w3", w3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("method", ["MAX_MIN", "KL"])
def test_full_quant_matmul_and_gemm_weights_never_saturate(tmp_path, method):
    model_path = save(matmul_gemm_model(), tmp_path / "m.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        (folder / f"{i}.bin").write_bytes(rng.normal(0, 1, (4, 64)).astype(np.float32).tobytes())
    cfg = parse_config("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=6\ninput_type=BIN\n"
                       f"[full_quant_param]\nactivation_quant_method={method}\n[ptqflow]\nlatency_guard=false\n")
    result = quantize_full(model_path, cfg, InputOptions(), tmp_path / "w")
    assert len(integer_weights(result.quantized)) == 3
    assert saturating_weights(result.quantized) == []


@pytest.mark.parametrize("strategy", ["ALWC", "ACWL"])
@pytest.mark.parametrize("rotation", [0, 16])
def test_dynamic_quant_weights_never_saturate_without_vnni(strategy, rotation):
    model = matmul_gemm_model()
    cfg = parse_config("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                       f"[dynamic_quant_param]\nquant_strategy={strategy}\n[ptqflow]\nrotation_block={rotation}\n")
    emitted = emit_dynamic(model, plan_dynamic(model, cfg))
    assert len(integer_weights(emitted)) == 3
    assert saturating_weights(emitted) == []
    vnni = parse_config("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                        f"[dynamic_quant_param]\nquant_strategy={strategy}\n[ptqflow]\nrotation_block={rotation}\n"
                        "int8_form=vnni\n")
    assert saturating_weights(emit_dynamic(model, plan_dynamic(model, vnni)))


def test_portable_model_gives_the_same_numbers_as_exact_integer_math_here(tmp_path):
    """onnxruntime's int8 kernels (ORT_ENABLE_ALL) against DequantizeLinear + float ops (ORT_DISABLE_ALL):
    equal up to the float rounding of the rescale on any CPU."""
    model_path = save(large_weight_cnn(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path)), InputOptions(), tmp_path / "w")
    x = np.random.default_rng(5).normal(0, 1, (1, 3, 16, 16)).astype(np.float32)

    def out(level):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        return ort.InferenceSession(result.quantized.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    fused, exact = out(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), out(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # the int8 region's output is requantized: one code step of the last Q at most
    assert np.abs(fused - exact).max() <= 0.05 * np.abs(exact).max()
