"""Quantization targets (``[full_quant_param] target_device``) as data, not if-chains.

A :class:`Target` says what a backend runs in int8 and how its numbers must look: activation
dtype and symmetry, weight granularity and ranges, which ONNX op types may sit in the int8
region, which of them keep the scale of their input, where per-channel weights are allowed and
along which axis, and whether biases are int32 and bias correction is allowed. Planning reads it
to choose params, ``placement.place_qdq`` reads it to choose Q/DQ positions, and
``audit.check_target_rules`` reads it to audit an emitted model. The per-op facts that placement,
the emitter and the audit need (which inputs carry activations, where the bias sits, which ops
onnxruntime moves Q/DQ across) are listed here too.

Sources: docs/converter-lite.md §4.2 (marked ops, per-channel ops), §8.5 (weight ranges), §8.9
(device table), docs/converter-lite.md §A (TensorRT Q/DQ rules), and what onnxruntime 1.32's CPU graph optimizer
actually fuses (measured with ``audit.fused_ops``; see ``ORT_CPU_FUSIONS``).

Where the ONNX world forces a choice that MindSpore Lite does not make, the choice is recorded
here, next to the field, so it is visible in one place:

* **CPU activations are uint8 (U8S8).** See docs/int8-portability.md ("Why uint8 activations") and
  ``benchmarks/probe_dtype_choice.py`` for the numbers: on x86
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
from ptq_core.onnxgraph.cpu import INT8_FORMS, Int8Form, get_form
from ptq_core.onnxgraph.weight_roles import _conv_transpose_axis, _gemm_b_axis
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

# Per-op facts (ONNX operator signatures and onnxruntime behaviour) that placement, the emitter and
# the audit read.
BIAS_CORRECTED_OPS = ("Conv", "Gemm")  # bias correction (converter_lite: Conv; Gemm has a bias slot too)
CONV_OPS = ("Conv", "ConvTranspose")  # weight at input 1, data at input 0 (a constant data input is refused)
QDQ_OPS = frozenset(("QuantizeLinear", "DequantizeLinear"))
# Inputs that carry activations (the others are shapes, axes, bounds or weights); ops not listed: all.
ACTIVATION_INPUTS = {"Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Slice": (0,), "Clip": (0,),
                     "Conv": (0,), "ConvTranspose": (0,), "Gemm": (0, 1), "MatMul": (0, 1)}
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}  # index of the optional bias input
# Ops onnxruntime's QDQ propagation moves a DequantizeLinear across (forward) or a Q across (backward).
ORT_QDQ_TRANSPARENT_OPS = frozenset(("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice",
                                     "Relu", "Clip", "Resize", "Gather", "Split", "Expand"))

# What onnxruntime 1.32's CPU EP (x86-64) turned each QDQ pattern into at ORT_ENABLE_EXTENDED, with
# uint8 activations, int8 weights and int32 bias, measured with audit.fused_ops (int8 activations
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


@dataclass(frozen=True, kw_only=True)
class Target:
    """One backend's int8 rules. All op-type sets are ONNX op types.

    Defaults are what most targets share: int8 weights, symmetric narrow per-channel weights,
    full-range activations, every same-scale op and (asymmetric targets) every removable clamp.
    """

    name: str
    supported: bool
    # activations: always per tensor
    activation_dtype: str  # "int8" | "uint8"
    activation_symmetric: bool  # zero point 0
    activation_narrow: bool = False  # int8 [-127, 127] instead of [-128, 127]
    # weights: int8 codes
    weight_dtype: str = "int8"
    per_channel_ops: frozenset  # op types whose weights may go per-channel (when per_channel=true)
    weight_per_channel_symmetric: bool = True
    weight_per_channel_narrow: bool = True
    weight_per_layer_symmetric: bool
    weight_per_layer_narrow: bool
    # what may run in int8
    compute_ops: frozenset  # weighted ops quantized with their weights
    # run int8 inside the region, output reuses the input params
    same_scale_ops: frozenset = frozenset(SAME_SCALE_OPS)
    # folded into the producer's output Q (asymmetric targets only)
    removable_activations: frozenset = frozenset(REMOVABLE_ACTIVATIONS)
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


_ALL_COMPUTE = frozenset(COMPUTE_OPS)
_NO_CONV_TRANSPOSE = _ops("Conv", "Gemm", "MatMul")
_DSP_REQUANT = _ops("Add", "Mul", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "Softmax")

TARGETS: dict[str, Target] = {
    "CPU": Target(
        name="CPU", supported=True, activation_dtype="uint8", activation_symmetric=False,
        per_channel_ops=_ALL_COMPUTE, weight_per_layer_symmetric=False, weight_per_layer_narrow=False,
        compute_ops=_NO_CONV_TRANSPOSE,
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
        name="NVGPU", supported=True, activation_dtype="int8", activation_symmetric=True, activation_narrow=True,
        per_channel_ops=_ALL_COMPUTE, weight_per_layer_symmetric=True, weight_per_layer_narrow=True,
        compute_ops=_ALL_COMPUTE,
        removable_activations=frozenset(),  # symmetric Q cannot clamp at 0; TensorRT fuses Conv+ReLU itself
        requant_ops=_ops("Add", "Mul", "AveragePool", "GlobalAveragePool"),
        quantize_outputs_of=frozenset(),  # TensorRT placement: Q/DQ on the inputs of int8 layers
        # converter_lite forces bias correction off for NVGPU; we correct the float bias TensorRT adds
        quantize_bias=False, bias_correction=True, cross_layer_equalization=True,
        note="TensorRT explicit quantization: symmetric int8, zero points 0, per-channel weights on the output axis, float bias",
    ),
    "DSP": Target(
        name="DSP", supported=True, activation_dtype="uint8", activation_symmetric=False,
        per_channel_ops=_ops(*CONV_OPS), weight_per_layer_symmetric=False, weight_per_layer_narrow=False,
        compute_ops=_ALL_COMPUTE,
        requant_ops=_DSP_REQUANT,
        quantize_outputs_of=_ALL_COMPUTE | _DSP_REQUANT,
        quantize_bias=True, bias_correction=True, cross_layer_equalization=False,
        note="DSP: uint8 asymmetric activations per tensor; per-channel weights only for Conv/ConvTranspose",
    ),
    "ASCEND": Target(
        name="ASCEND", supported=True, activation_dtype="int8", activation_symmetric=False,
        per_channel_ops=_NO_CONV_TRANSPOSE, weight_per_layer_symmetric=True, weight_per_layer_narrow=True,
        compute_ops=_NO_CONV_TRANSPOSE,
        requant_ops=frozenset(),
        quantize_outputs_of=_NO_CONV_TRANSPOSE,
        quantize_bias=True, bias_correction=True, cross_layer_equalization=True,
        transposed_gemm=False, shared_weights=False, min_channel_filter=True,
        note="Ascend: int8 asymmetric activations, symmetric int8 weights (per-channel or per-layer)",
    ),
    "KIRIN": Target(
        name="KIRIN", supported=False, activation_dtype="uint8", activation_symmetric=False,
        per_channel_ops=_ops("Conv"), weight_per_layer_symmetric=False, weight_per_layer_narrow=False,
        compute_ops=_NO_CONV_TRANSPOSE,
        same_scale_ops=frozenset(), removable_activations=frozenset(), requant_ops=frozenset(),
        quantize_outputs_of=_NO_CONV_TRANSPOSE,
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
