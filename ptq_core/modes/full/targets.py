"""Quantization targets (``[full_quant_param] target_device``) as data, not if-chains.

A :class:`Target` says what a backend runs in int8 and how its numbers must look: activation
dtype and symmetry, weight granularity and ranges, which ONNX op types may sit in the int8
region, which of them keep the scale of their input, where per-channel weights are allowed and
along which axis, and whether biases are int32 and bias correction is allowed. Planning reads it
to choose params, the QDQ emitter's placement helper reads it to choose Q/DQ positions, and
``emit_qdq.check_target_rules`` reads it to audit an emitted model.

Sources: docs/converter-lite.md §4.2 (marked ops, per-channel ops), §8.5 (weight ranges), §8.9
(device table), docs/converter-lite.md §A (TensorRT Q/DQ rules), and what onnxruntime 1.32's CPU graph optimizer
actually fuses (measured with ``emit_qdq.fused_ops``; see ``ORT_CPU_FUSIONS``).

Where the ONNX world forces a choice that MindSpore Lite does not make, the choice is recorded
here, next to the field, so it is visible in one place:

* **CPU activations are uint8 (U8S8).** See :func:`measure_dtype_choice` for the numbers: on x86
  S8S8 and U8S8 QDQ models run equally fast only because onnxruntime rewrites int8 activations to
  uint8 at load time, and that rewrite misses fanned-out tensors (such Convs then run in float);
  U8S8 is the native kernel there and fast on Arm as well. MSL's CPU kernels use int8 asymmetric
  activations; uint8 asymmetric with zero point z is the same grid as int8 with zero point z-128,
  so accuracy is identical and only kernel speed differs.
* **CPU weights are coded in [-64, 64] by default** (``[ptqflow] int8_form=portable``): onnxruntime's
  x86 U8S8 kernels saturate pairs of products in int16 on CPUs without VNNI, and no pair of codes
  within +-64 can overflow, whatever order the kernel pairs them in (ptq_core.onnxgraph.cpu,
  docs/int8-portability.md). ``int8_form=vnni`` keeps the full ranges below for VNNI/Arm-only fleets.
  Only targets with ``ort_cpu_kernels`` follow the form; the others run on their own runtimes.
* **CPU does not quantize ConvTranspose**: ORT 1.32's CPU EP has no QDQ fusion for it, so
  DQ->ConvTranspose->Q runs the float kernel plus two extra conversions (slower and less exact).
* **NVGPU quantizes weights** (per-channel, symmetric, narrow, output axis) although MSL's NVGPU
  path keeps them fp32: TensorRT's explicit-quantization mode needs Q/DQ on weights to pick int8
  kernels (docs/converter-lite.md §A). Biases stay float for TensorRT.
* **DSP activations are uint8** (as the issue asks; Hexagon/QNN-style backends take uint8
  asymmetric activations); weights follow MSL's DSP row: per-channel only for Conv/ConvTranspose,
  everything else per-layer asymmetric int8.
* **KIRIN is listed but unsupported**: MSL emits a float graph plus params for the NPU compiler;
  there is no ONNX equivalent to write.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ptq_core.errors import PtqError, did_you_mean
from ptq_core.onnxgraph.cpu import INT8_FORMS, Int8Form, get_form, machine_isa
from ptq_core.onnxgraph.graph import _conv_transpose_axis, _gemm_b_axis
from ptq_core.quant import encode_range, qrange, quantize, weight_params

# Op families. A target picks from these; nothing else in the code lists op types.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # carry weights; int8 GEMM/conv kernels
# Ops that move or select values without changing them: their output reuses the input's params, so
# onnxruntime drops the DQ/Q around them and runs them on int8 (verified for all of these on 1.32).
SAME_SCALE_OPS = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice")
# Clamps that an asymmetric Q with the clamp's output range reproduces: the producer's output takes
# the activation's output params and emit_qdq drops the op (as onnxruntime's QDQ quantizer does).
# Symmetric targets cannot clamp at zero with a Q, so they list none.
REMOVABLE_ACTIVATIONS = ("Relu", "Clip")
# Ops with their own integer kernel and their own output params (QLinearAdd, QLinearConcat, ...).
REQUANT_OPS = ("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Softmax")

# What onnxruntime 1.32's CPU EP (x86-64) turned each QDQ pattern into at ORT_ENABLE_EXTENDED, with
# uint8 activations, int8 weights and int32 bias, measured with emit_qdq.fused_ops (int8 activations
# give the same except for the last entry):
ORT_CPU_FUSIONS = {
    "Conv": "QLinearConv (needs Q on the output; without it the Conv stays float)",
    "ConvTranspose": "none: float ConvTranspose between DQ and Q",
    "Gemm": "QGemm (with or without Q on the output)",
    "MatMul": "QLinearMatMul with Q on the output, MatMulIntegerToFloat without; but MatMul -> Add(const) "
              "without the Q is merged first into a float Gemm (MatMulAddFusion) reading the DQ outputs",
    "Add": "QLinearAdd", "Mul": "QLinearMul", "Concat": "QLinearConcat",
    "AveragePool": "QLinearAveragePool", "GlobalAveragePool": "QLinearGlobalAveragePool",
    "Sigmoid": "QLinearSigmoid", "LeakyRelu": "QLinearLeakyRelu", "Softmax": "QLinearSoftmax",
    "MaxPool/Reshape/Flatten/Transpose/Squeeze/Unsqueeze/Slice": "run on int8 when input and output params are equal",
    "Relu/Clip": "removed (ReluQuantFusion/ClipQuantFusion) when the following Q's range starts at the clamp",
    "Pad/Tanh/Resize(linear)": "not fused: float op between DQ and Q",
    "int8 activations": "rewritten to uint8 at load (QDQS8ToU8Transformer), except a tensor read by several "
                        "nodes: its producing Conv then stays float",
}


@dataclass(frozen=True)
class Target:
    """One backend's int8 rules. All op-type sets are ONNX op types."""

    name: str
    supported: bool
    # activations: always per tensor
    activation_dtype: str  # "int8" | "uint8"
    activation_symmetric: bool  # zero point 0
    activation_narrow: bool  # int8 [-127, 127] instead of [-128, 127]
    # weights: int8 codes
    weight_dtype: str
    per_channel_ops: frozenset  # op types whose weights may go per-channel (when per_channel=true)
    weight_per_channel_symmetric: bool
    weight_per_channel_narrow: bool
    weight_per_layer_symmetric: bool
    weight_per_layer_narrow: bool
    # what may run in int8
    compute_ops: frozenset  # weighted ops quantized with their weights
    same_scale_ops: frozenset  # run int8 inside the region, output reuses the input params
    removable_activations: frozenset  # folded into the producer's output Q (asymmetric targets only)
    requant_ops: frozenset  # int8 kernels with their own output params
    quantize_outputs_of: frozenset  # op types whose output gets Q/DQ even when no consumer is int8
    # biases and corrections
    quantize_bias: bool  # int32 bias with scale s_in * s_w; False keeps the float bias
    bias_correction: bool  # [full_quant_param] bias_correction may run
    cross_layer_equalization: bool  # §8.8 (per_channel=false only)
    # node-level restrictions
    transposed_gemm: bool = True  # Gemm transA/transB allowed (Ascend: no)
    shared_weights: bool = True  # a weight read by several nodes may be quantized (Ascend: no)
    min_channel_filter: bool = False  # min_quant_weight_channel applies to convs (Ascend)
    # onnxruntime's CPU kernels run this target's models: their u8 x s8 pairs saturate on x86 without
    # VNNI, so weights follow ``form`` (ptq_core.onnxgraph.cpu; [ptqflow] int8_form)
    ort_cpu_kernels: bool = False
    form: Int8Form = INT8_FORMS["portable"]
    note: str = ""

    # ---- op sets -----------------------------------------------------------------------------
    @property
    def int8_ops(self) -> frozenset:
        """Every op type that may sit inside the int8 region."""
        return self.compute_ops | self.same_scale_ops | self.removable_activations | self.requant_ops

    def allows(self, op_type: str) -> bool:
        return op_type in self.int8_ops

    # ---- ranges ------------------------------------------------------------------------------
    def activation_qrange(self) -> tuple[int, int]:
        return qrange(8, narrow=self.activation_narrow and self.activation_dtype == "int8",
                      unsigned=self.activation_dtype == "uint8")

    def weight_scheme(self, per_channel: bool) -> tuple[bool, bool]:
        """(symmetric, narrow) for a per-channel or a per-layer weight."""
        if per_channel:
            return self.weight_per_channel_symmetric, self.weight_per_channel_narrow
        return self.weight_per_layer_symmetric, self.weight_per_layer_narrow

    def weight_qrange(self, per_channel: bool) -> tuple[int, int]:
        _, narrow = self.weight_scheme(per_channel)
        qmin, qmax = qrange(8, narrow=narrow, unsigned=self.weight_dtype == "uint8")
        return self.form.clamp(qmin, qmax) if self.ort_cpu_kernels else (qmin, qmax)

    @property
    def int8_form(self) -> Int8Form | None:
        """The int8 form the emitted weights follow, or None where it does not apply (other runtimes)."""
        return self.form if self.ort_cpu_kernels else None

    # ---- per-channel axis --------------------------------------------------------------------
    def weight_axis(self, op_type: str, input_index: int, shape: tuple[int, ...], attrs: dict | None = None) -> int | None:
        """Channel axis of a weight quantized per channel on this target, or None for per-layer.

        Output-channel axes in ONNX layouts: Conv W (M, C/g, kH, kW) -> 0; ConvTranspose W
        (C, M/g, kH, kW) -> 1 (0 for depthwise); Gemm B -> 0 with transB=1, else 1; MatMul B
        (K, N) -> 1. Only the B input of Gemm/MatMul goes per channel (onnxruntime's integer
        GEMMs take a per-tensor A), MatMul only for a 2-D B, and never a tensor with < 2 dims.
        """
        attrs = attrs or {}
        shape = tuple(shape)
        if op_type not in self.per_channel_ops or len(shape) < 2 or input_index != 1:
            return None
        if op_type == "Conv":
            return 0
        if op_type == "ConvTranspose":
            return _conv_transpose_axis(attrs, len(shape), shape)
        if op_type == "Gemm":
            return _gemm_b_axis(attrs, len(shape))
        if op_type == "MatMul":
            return 1 if len(shape) == 2 else None
        return None

    # ---- params ------------------------------------------------------------------------------
    def activation_params(self, lo: float, hi: float) -> tuple[float, int]:
        """Observed range -> (scale, zero point) of a per-tensor activation (docs/converter-lite.md §5.2)."""
        qmin, qmax = self.activation_qrange()
        scale, zp = encode_range(np.array([lo]), np.array([hi]), qmin, qmax, self.activation_symmetric)
        return float(np.float32(scale[0])), int(zp[0])

    def quantize_weight(self, w: np.ndarray, op_type: str, input_index: int, attrs: dict | None = None,
                        per_channel: bool = True):
        """A float weight -> (codes, float32 scale, zero point in the codes' dtype, axis or None)."""
        axis = self.weight_axis(op_type, input_index, w.shape, attrs) if per_channel else None
        symmetric, _ = self.weight_scheme(axis is not None)
        qmin, qmax = self.weight_qrange(axis is not None)
        w = np.asarray(w, np.float32)
        params = weight_params(w, 8, axis, symmetric=symmetric, limits=(qmin, qmax))
        codes = quantize(w, params)
        dtype = np.uint8 if self.weight_dtype == "uint8" else np.int8
        scale = params.scale.astype(np.float32)
        return codes.astype(dtype), scale, params.zero_point.astype(dtype), axis


def _ops(*names: str) -> frozenset:
    return frozenset(names)


TARGETS: dict[str, Target] = {
    "CPU": Target(
        name="CPU", supported=True,
        activation_dtype="uint8", activation_symmetric=False, activation_narrow=False,
        weight_dtype="int8",
        per_channel_ops=_ops("Conv", "ConvTranspose", "Gemm", "MatMul"),
        weight_per_channel_symmetric=True, weight_per_channel_narrow=True,
        weight_per_layer_symmetric=False, weight_per_layer_narrow=False,
        compute_ops=_ops("Conv", "Gemm", "MatMul"),
        same_scale_ops=frozenset(SAME_SCALE_OPS),
        removable_activations=frozenset(REMOVABLE_ACTIVATIONS),
        requant_ops=frozenset(REQUANT_OPS),
        # QLinearConv needs a Q after the Conv; the requant ops need one to be integer at all.
        # MatMul would become MatMulIntegerToFloat without one, but a MatMul followed by Add(bias)
        # (every exported Linear on 3-D input) is merged by ORT's level-1 MatMulAddFusion into a
        # float Gemm reading the DQ outputs before the QDQ fusions run; a Q after the MatMul keeps
        # it QLinearMatMul. Gemm becomes QGemm with float output, so it needs none.
        quantize_outputs_of=_ops("Conv", "MatMul", *REQUANT_OPS),
        quantize_bias=True, bias_correction=True, cross_layer_equalization=True,
        ort_cpu_kernels=True,
        note="onnxruntime CPU EP: U8S8, per-channel symmetric int8 weights (zero point 0 enables MLAS's symmetric conv kernels)",
    ),
    "NVGPU": Target(
        name="NVGPU", supported=True,
        activation_dtype="int8", activation_symmetric=True, activation_narrow=True,
        weight_dtype="int8",
        per_channel_ops=_ops("Conv", "ConvTranspose", "Gemm", "MatMul"),
        weight_per_channel_symmetric=True, weight_per_channel_narrow=True,
        weight_per_layer_symmetric=True, weight_per_layer_narrow=True,
        compute_ops=_ops("Conv", "ConvTranspose", "Gemm", "MatMul"),
        same_scale_ops=frozenset(SAME_SCALE_OPS),
        removable_activations=frozenset(),  # symmetric Q cannot clamp at 0; TensorRT fuses Conv+ReLU itself
        requant_ops=_ops("Add", "Mul", "AveragePool", "GlobalAveragePool"),
        quantize_outputs_of=frozenset(),  # TensorRT placement: Q/DQ on the inputs of int8 layers
        # converter_lite forces bias correction off for NVGPU; we correct the float bias TensorRT adds
        quantize_bias=False, bias_correction=True, cross_layer_equalization=True,
        note="TensorRT explicit quantization: symmetric int8, zero points 0, per-channel weights on the output axis, float bias",
    ),
    "DSP": Target(
        name="DSP", supported=True,
        activation_dtype="uint8", activation_symmetric=False, activation_narrow=False,
        weight_dtype="int8",
        per_channel_ops=_ops("Conv", "ConvTranspose"),
        weight_per_channel_symmetric=True, weight_per_channel_narrow=True,
        weight_per_layer_symmetric=False, weight_per_layer_narrow=False,
        compute_ops=_ops("Conv", "ConvTranspose", "Gemm", "MatMul"),
        same_scale_ops=frozenset(SAME_SCALE_OPS),
        removable_activations=frozenset(REMOVABLE_ACTIVATIONS),
        requant_ops=_ops("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "Softmax"),
        quantize_outputs_of=_ops("Conv", "ConvTranspose", "Gemm", "MatMul",
                                 "Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "Softmax"),
        quantize_bias=True, bias_correction=True, cross_layer_equalization=False,
        note="DSP: uint8 asymmetric activations per tensor; per-channel weights only for Conv/ConvTranspose",
    ),
    "ASCEND": Target(
        name="ASCEND", supported=True,
        activation_dtype="int8", activation_symmetric=False, activation_narrow=False,
        weight_dtype="int8",
        per_channel_ops=_ops("Conv", "Gemm", "MatMul"),
        weight_per_channel_symmetric=True, weight_per_channel_narrow=True,
        weight_per_layer_symmetric=True, weight_per_layer_narrow=True,
        compute_ops=_ops("Conv", "Gemm", "MatMul"),
        same_scale_ops=frozenset(SAME_SCALE_OPS),
        removable_activations=frozenset(REMOVABLE_ACTIVATIONS),
        requant_ops=frozenset(),
        quantize_outputs_of=_ops("Conv", "Gemm", "MatMul"),
        quantize_bias=True, bias_correction=True, cross_layer_equalization=True,
        transposed_gemm=False, shared_weights=False, min_channel_filter=True,
        note="Ascend: int8 asymmetric activations, symmetric int8 weights (per-channel or per-layer)",
    ),
    "KIRIN": Target(
        name="KIRIN", supported=False,
        activation_dtype="uint8", activation_symmetric=False, activation_narrow=False,
        weight_dtype="int8",
        per_channel_ops=_ops("Conv"),
        weight_per_channel_symmetric=True, weight_per_channel_narrow=True,
        weight_per_layer_symmetric=False, weight_per_layer_narrow=False,
        compute_ops=_ops("Conv", "Gemm", "MatMul"),
        same_scale_ops=frozenset(), removable_activations=frozenset(), requant_ops=frozenset(),
        quantize_outputs_of=_ops("Conv", "Gemm", "MatMul"),
        quantize_bias=True, bias_correction=False, cross_layer_equalization=True,
        note="KIRIN NPU takes a float graph plus params; no ONNX form to emit",
    ),
}


def get_target(name: str | None, int8_form: str | None = None) -> Target:
    """The target for a ``target_device`` value (None or empty = CPU); unknown or unsupported -> PtqError.

    ``int8_form`` ([ptqflow] int8_form) picks the weight form of targets run by onnxruntime's CPU
    kernels; the default is the portable one.
    """
    key = (name or "CPU").strip().upper()
    target = TARGETS.get(key)
    if target is None:
        raise PtqError(f"target_device {name!r} is not a known target; choose one of "
                       f"{', '.join(sorted(TARGETS))}{did_you_mean(key, TARGETS)}")
    if not target.supported:
        supported = ", ".join(k for k, t in TARGETS.items() if t.supported)
        raise PtqError(f"target_device {key} is not supported for ONNX output ({target.note}); use one of {supported}")
    form = get_form(int8_form)
    if target.ort_cpu_kernels and target.form != form:
        target = replace(target, form=form)
    return target


# ---------------------------------------------------------------------------------------------
# CPU dtype measurement
# ---------------------------------------------------------------------------------------------

def measure_dtype_choice(repeats: int = 30, threads: int = 1, conv_shape=(1, 64, 56, 56), conv_out: int = 64,
                         matmul_shape=(128, 768), matmul_out: int = 768, seed: int = 0) -> dict:
    """Time one QDQ Conv model and one QDQ MatMul model under S8S8 and U8S8 with onnxruntime (CPU EP).

    Both models come out of ``emit_qdq`` with per-channel symmetric int8 weights and an int32 bias;
    only the activation dtype differs (int8 zero point z vs uint8 zero point z+128: the same grid,
    so accuracy is identical). ``s8s8_kept`` times the S8S8 model with the session option
    ``session.qdqisint8allowed=1``, i.e. with onnxruntime keeping int8 activations as they are.
    Returns ``{"conv": {"fp32": ms, "s8s8": ms, "s8s8_kept": ms, "u8s8": ms, "ops_s8s8": {...},
    "ops_u8s8": {...}}, "matmul": {...}, "cpu": flags, "onnxruntime": version}`` (median of
    ``repeats`` runs after two warm-ups).

    Measured on the development machine (AMD EPYC Zen 4: AVX2, AVX-512, AVX512-VNNI, no
    AVX-VNNI-INT8), onnxruntime 1.32.0, 1 thread, median of 50, four runs on a shared 2-core VM
    (range shown):

    =============================  ===========  ============  ============  ===================
    model                          fp32 ms      S8S8 ms       U8S8 ms       S8S8 kept int8 ms
    =============================  ===========  ============  ============  ===================
    Conv 64->64 3x3, 1x64x56x56    2.52 - 2.63  0.611 - 0.626 0.611 - 0.656 7.1 - 11.6
    MatMul 128x768 @ 768x768       1.32 - 1.37  0.387 - 0.391 0.386 - 0.387 4.7 - 8.9
    =============================  ===========  ============  ============  ===================

    Both dtypes fuse to the same ops (QLinearConv, QLinearMatMul). S8S8 and U8S8 tie because on
    x86 onnxruntime rewrites int8 Q/DQ pairs to uint8 at load time (``QDQS8ToU8Transformer``;
    ``QDQIsInt8Allowed()`` is false unless MLAS targets Arm), so both run MLAS's U8S8 kernels
    (VPDPBUSD with VNNI, VPMADDUBSW on AVX2, which saturates int16 on non-VNNI CPUs unless the weights
    follow the portable int8 form, ptq_core.onnxgraph.cpu; the
    symmetric-weight MlasConvSym kernels exist only for U8S8 on x86). Kept as int8, S8S8 falls to
    the portable GEMM: 10-23x slower than U8S8 and 3-6x slower than fp32 (a native x86 S8S8 GEMM
    exists only with AVX-VNNI-INT8).

    On Arm64 (read from MLAS, not measured here) onnxruntime keeps int8 Q/DQ as is and has native
    kernels for both: S8S8 with SDOT/SMMLA and S8 MlasConvSym kernels (no zero-point fixup), U8S8
    with UDOT/UMMLA and U8 MlasConvSym kernels (which add a -128 input zero-point fixup); with I8MM
    MLAS marks signed activations as preferred. onnxruntime's docs name "S8S8 with QDQ" the default
    that balances performance and accuracy.

    The rewrite is also incomplete: when an int8 Q/DQ'd Conv output fans out to two readers (a
    hardswish ``x * clip(x + 3, 0, 6) / 6``, a residual branch), onnxruntime 1.32 on x86 leaves the
    Conv in float between DQ and Q; with uint8 the same graph fuses to QLinearConv. On PP-OCR's
    mobile classifier (53 Convs, BN folded) 23 Convs stayed float with int8 activations, none with
    uint8 (``tests/test_targets.py::test_int8_fan_out_is_not_fused_on_x86`` keeps the small case).

    Choice: **uint8 activations, int8 weights (U8S8)** for CPU: the native x86 kernel without
    depending on a load-time rewrite (whose absence costs 10-23x and which misses fan-outs), and a
    fast path on Arm too; an Arm-only deployment could use int8 activations at the same accuracy.
    """
    import time

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ptq_core.modes.full.emit_qdq import emit_qdq, fused_ops
    from ptq_core.modes.full.plan import (
        ActivationQuant,
        BiasQuant,
        FullQuantPlan,
        WeightQuant,
    )

    rng = np.random.default_rng(seed)
    cases = {}
    conv_w = rng.normal(0, 0.1, (conv_out, conv_shape[1], 3, 3)).astype(np.float32)
    conv_b = rng.normal(0, 0.1, (conv_out,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(conv_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(conv_w, "w"), numpy_helper.from_array(conv_b, "b")])
    cases["conv"] = (graph, "conv", "w", "b", rng.normal(0, 1, conv_shape).astype(np.float32))
    mm_w = rng.normal(0, 0.05, (matmul_shape[1], matmul_out)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(matmul_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(mm_w, "w")])
    cases["matmul"] = (graph, "mm", "w", None, rng.normal(0, 1, matmul_shape).astype(np.float32))

    def session(model_bytes, int8_allowed=None):
        so = ort.SessionOptions()
        if int8_allowed is not None:
            so.add_session_config_entry("session.qdqisint8allowed", int8_allowed)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.log_severity_level = 3
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    def median_ms(sess, feed):
        sess.run(None, feed)
        sess.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)

    result: dict = {}
    for key, (graph, node, wname, bname, x) in cases.items():
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        y = session(model.SerializeToString()).run(None, {"x": x})[0]
        row = {"fp32": median_ms(session(model.SerializeToString()), {"x": x})}
        wf = numpy_helper.to_array(next(t for t in graph.initializer if t.name == wname))
        for act in ("int8", "uint8"):
            target = TARGETS["CPU"] if act == "uint8" else _with_activation(TARGETS["CPU"], "int8")
            sx, zx = target.activation_params(float(x.min()), float(x.max()))
            sy, zy = target.activation_params(float(y.min()), float(y.max()))
            op_type = "Conv" if key == "conv" else "MatMul"
            q, s, z, axis = target.quantize_weight(wf, op_type, 1)
            biases = []
            if bname:
                bf = numpy_helper.to_array(next(t for t in graph.initializer if t.name == bname))
                bs = (np.float64(sx) * s.astype(np.float64)).astype(np.float32)
                biases = [BiasQuant(node, 2, bname, np.round(bf / bs).astype(np.int32), bs)]
            plan = FullQuantPlan(
                target="CPU", nodes=(node,),
                activations={"x": ActivationQuant("x", sx, zx, act), "y": ActivationQuant("y", sy, zy, act)},
                weights=[WeightQuant(node, 1, wname, q, s, z, axis)], biases=biases)
            qbytes = emit_qdq(model, plan).SerializeToString()
            tag = "s8s8" if act == "int8" else "u8s8"
            row[tag] = median_ms(session(qbytes), {"x": x})
            row["ops_" + tag] = dict(fused_ops(qbytes))
            if act == "int8":  # what S8S8 costs when onnxruntime keeps it (its default on Arm only)
                row["s8s8_kept"] = median_ms(session(qbytes, "1"), {"x": x})
        result[key] = row
    result["cpu"] = machine_isa()
    result["onnxruntime"] = ort.__version__
    return result


def _with_activation(target: Target, dtype: str) -> Target:
    return replace(target, name=f"{target.name}-{dtype}", activation_dtype=dtype)
