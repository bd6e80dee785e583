"""Targets as data: the registry, per-target ranges and axes, and the CPU dtype measurement."""

from __future__ import annotations

import platform
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_core.config.schema import SECTIONS
from ptq_core.errors import PtqError
from ptq_core.modes.full.audit import fused_ops
from ptq_core.modes.full.emit_qdq import emit_qdq
from ptq_core.modes.full.plan import ActivationQuant, FullQuantPlan, WeightQuant
from ptq_core.modes.full.targets import (
    COMPUTE_OPS,
    TARGETS,
    Target,
    get_target,
)


def test_registry_matches_the_config_enum():
    spec = next(s for s in SECTIONS if s.name == "full_quant_param")
    key = next(k for k in spec.keys if k.name == "target_device")
    assert set(TARGETS) == set(key.choices) | {"CPU"} == set(key.choices)
    assert all(isinstance(t, Target) and t.name == name for name, t in TARGETS.items())


def test_get_target_defaults_and_errors():
    assert get_target(None) is TARGETS["CPU"] and get_target("") is TARGETS["CPU"]
    assert get_target("nvgpu") is TARGETS["NVGPU"]
    with pytest.raises(PtqError, match="did you mean 'NVGPU'"):
        get_target("NVGPUU")
    with pytest.raises(PtqError, match="KIRIN is not supported"):
        get_target("KIRIN")


def test_targets_are_frozen():
    with pytest.raises(Exception):
        TARGETS["CPU"].activation_dtype = "int8"  # type: ignore[misc]


def test_device_table():
    cpu, nv, dsp, asc = (TARGETS[k] for k in ("CPU", "NVGPU", "DSP", "ASCEND"))
    assert (cpu.activation_dtype, cpu.activation_symmetric, cpu.weight_dtype) == ("uint8", False, "int8")
    assert (nv.activation_dtype, nv.activation_symmetric) == ("int8", True)
    assert nv.weight_per_channel_symmetric and nv.weight_per_layer_symmetric and not nv.quantize_bias
    assert nv.bias_correction and not nv.quantize_bias  # float bias, corrected in float
    assert not nv.removable_activations
    assert dsp.activation_dtype == "uint8" and dsp.per_channel_ops == {"Conv", "ConvTranspose"}
    assert not dsp.cross_layer_equalization
    assert asc.activation_dtype == "int8" and not asc.activation_symmetric
    assert asc.weight_per_channel_symmetric and asc.weight_per_layer_symmetric
    assert not cpu.weight_per_layer_symmetric and not dsp.weight_per_layer_symmetric
    assert "ConvTranspose" not in cpu.compute_ops  # onnxruntime CPU has no integer ConvTranspose
    for t in (cpu, nv, dsp, asc):
        assert t.compute_ops <= set(COMPUTE_OPS) and {"Conv", "MatMul"} <= t.compute_ops
        assert {"MaxPool", "Reshape", "Flatten", "Transpose"} <= t.same_scale_ops
        assert t.allows("Conv") and not t.allows("LSTM")


def test_activation_ranges():
    assert TARGETS["CPU"].activation_qrange() == (0, 255)
    assert TARGETS["NVGPU"].activation_qrange() == (-127, 127)
    assert TARGETS["ASCEND"].activation_qrange() == (-128, 127)
    s, z = TARGETS["CPU"].activation_params(-1.0, 3.0)
    assert 0 <= z <= 255 and abs(s - 4 / 255) < 1e-6 and abs(-z * s + 1.0) < s  # -1 representable
    s, z = TARGETS["NVGPU"].activation_params(-1.0, 3.0)
    assert z == 0 and abs(s - 3 / 127) < 1e-6
    s, z = TARGETS["DSP"].activation_params(0.0, 6.0)
    assert z == 0  # a Relu range starts at qmin
    s, z = TARGETS["ASCEND"].activation_params(0.0, 6.0)
    assert z == -128


@pytest.mark.parametrize("op,index,shape,attrs,axis", [
    ("Conv", 1, (8, 3, 3, 3), {}, 0),
    ("ConvTranspose", 1, (8, 4, 2, 2), {}, 1),
    ("ConvTranspose", 1, (8, 1, 3, 3), {"group": 8}, 0),  # depthwise
    ("Gemm", 1, (10, 32), {"transB": 1}, 0),
    ("Gemm", 1, (32, 10), {}, 1),
    ("Gemm", 0, (4, 32), {}, None),  # A never per channel
    ("MatMul", 1, (64, 48), {}, 1),
    ("MatMul", 1, (2, 64, 48), {}, None),  # batched weights: per layer
    ("MatMul", 0, (4, 64), {}, None),
    ("Conv", 1, (8,), {}, None),
])
def test_weight_axis_rules(op, index, shape, attrs, axis):
    assert TARGETS["NVGPU"].weight_axis(op, index, shape, attrs) == axis


def test_per_channel_op_sets():
    assert TARGETS["DSP"].weight_axis("Gemm", 1, (10, 32), {"transB": 1}) is None
    assert TARGETS["DSP"].weight_axis("Conv", 1, (8, 3, 3, 3)) == 0
    assert TARGETS["KIRIN"].weight_axis("MatMul", 1, (64, 48)) is None
    assert TARGETS["CPU"].weight_axis("MatMul", 1, (64, 48)) == 1


def test_quantize_weight_schemes():
    w = np.random.default_rng(0).normal(0, 1, (6, 3, 3, 3)).astype(np.float32)
    q, s, z, axis = TARGETS["CPU"].quantize_weight(w, "Conv", 1)
    assert axis == 0 and q.dtype == np.int8 and s.shape == (6,) and not z.any()
    # the portable int8 form: symmetric [-64, 64], exact on x86 CPUs without VNNI too
    assert np.abs(q).reshape(6, -1).max(axis=1).tolist() == [64] * 6
    np.testing.assert_allclose(q * s[:, None, None, None], w, atol=float(s.max()) / 2 + 1e-7)
    q, s, z, axis = TARGETS["CPU"].quantize_weight(w + 0.5, "Conv", 1, per_channel=False)
    assert axis is None and s.shape == (1,) and z[0] != 0 and q.min() == -64 and q.max() <= 64  # per-layer asymmetric
    vnni = get_target("CPU", "vnni")
    q, s, z, axis = vnni.quantize_weight(w, "Conv", 1)
    assert np.abs(q).reshape(6, -1).max(axis=1).tolist() == [127] * 6  # converter_lite's [-127, 127]
    q, s, z, axis = vnni.quantize_weight(w + 0.5, "Conv", 1, per_channel=False)
    assert q.min() == -128
    q, s, z, axis = TARGETS["ASCEND"].quantize_weight(w + 0.5, "Conv", 1, per_channel=False)
    assert axis is None and z[0] == 0 and q.min() >= -127  # Ascend per-layer is symmetric
    q, s, z, axis = TARGETS["DSP"].quantize_weight(np.ones((8, 4), np.float32), "MatMul", 1)
    assert axis is None  # DSP: MatMul per layer


def test_measure_dtype_choice_small():
    from paths import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from probe_dtype_choice import measure_dtype_choice

    r = measure_dtype_choice(repeats=2, conv_shape=(1, 16, 12, 12), conv_out=16, matmul_shape=(8, 64), matmul_out=32)
    for key, fused in (("conv", "QLinearConv"), ("matmul", "QLinearMatMul")):
        row = r[key]
        assert row["ops_s8s8"] == row["ops_u8s8"] and row["ops_u8s8"][fused] == 1
        assert all(row[k] > 0 for k in ("fp32", "s8s8", "u8s8", "s8s8_kept"))
    assert r["onnxruntime"]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 onnxruntime behaviour")
def test_int8_fan_out_is_not_fused_on_x86():
    """Why CPU activations are uint8: a Conv whose int8 output feeds two readers stays float on x86."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c", "three"], ["a"], name="add"),
         helper.make_node("Mul", ["c", "a"], ["y"], name="mul")], "fan_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.float32), "three")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    q, s, z, axis = TARGETS["CPU"].quantize_weight(w, "Conv", 1)
    counts = {}
    for dtype, zp in (("uint8", 128), ("int8", 0)):
        acts = {t: ActivationQuant(t, sc, zp, dtype) for t, sc in (("x", 0.02), ("c", 0.05))}
        plan = FullQuantPlan("CPU", ("conv",), acts, [WeightQuant("conv", 1, "w", q, s, z, axis)])
        counts[dtype] = fused_ops(emit_qdq(model, plan).SerializeToString())
    assert counts["uint8"]["QLinearConv"] == 1
    if ort.__version__.startswith("1.32."):  # the measured behaviour; re-check the CPU choice when it changes
        assert counts["int8"]["QLinearConv"] == 0 and counts["int8"]["Conv"] == 1
