"""The full-quantization plan: which nodes run in int8 and every scale and zero point they use.

The plan is data only. Planning (calibration statistics, targets, bias correction) builds it;
the QDQ emitter turns it into ONNX. Reports, sweeps and the ``--max-drop`` loop reason about it
without touching a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ActivationQuant:
    """Per-tensor quantization of one activation tensor (a graph input or a node output)."""

    tensor: str
    scale: float
    zero_point: int
    dtype: str  # "int8" | "uint8"


@dataclass(frozen=True)
class WeightQuant:
    """A constant weight input of a quantized node, already quantized to integer codes."""

    node: str
    input_index: int
    tensor: str
    q: np.ndarray  # int8 (or uint8) codes, same shape as the float weight
    scale: np.ndarray  # float32, length 1 (per tensor) or C (per channel)
    zero_point: np.ndarray  # same length as scale, in q's dtype
    axis: int | None  # channel axis in the ONNX weight layout; None = per tensor

    def dequantized(self, dtype=np.float32) -> np.ndarray:
        """(q - zero_point) * scale, per channel along ``axis``, in ``dtype``."""
        shape = [1] * self.q.ndim
        if self.axis is not None:
            shape[self.axis] = -1
        return ((self.q.astype(dtype) - self.zero_point.astype(dtype).reshape(shape))
                * self.scale.astype(dtype).reshape(shape)).astype(dtype)


@dataclass(frozen=True)
class BiasQuant:
    """The bias of a quantized Conv/ConvTranspose/Gemm as int32 with scale s_in * s_w (zero point 0)."""

    node: str
    input_index: int
    tensor: str
    q: np.ndarray  # int32, shape (C,)
    scale: np.ndarray  # float32, length 1 or C


@dataclass
class FullQuantPlan:
    """Everything the QDQ emitter needs.

    ``nodes`` are the compute nodes that run quantized; ``activations`` holds the params of every
    activation tensor that gets a QuantizeLinear/DequantizeLinear pair (inputs and outputs of those
    nodes, and of int8-capable ops between them such as MaxPool or Relu that the target allows).
    """

    target: str
    nodes: tuple[str, ...]
    activations: dict[str, ActivationQuant] = field(default_factory=dict)
    weights: list[WeightQuant] = field(default_factory=list)
    biases: list[BiasQuant] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)  # node -> why it stays FP32
    int8_form: str | None = None  # weight form for onnxruntime's CPU kernels (ptq_core.onnxgraph.cpu); None: n/a
    # nodes the latency guard kept FP32 whose weights are stored as 8-bit codes (ptq_core.modes.full.kept_weights):
    # node -> (bytes stored, weight cosine)
    stored_weights: dict[str, tuple[int, float]] = field(default_factory=dict)
    equalized: tuple[tuple[str, ...], ...] = ()  # cross-layer equalization chains (ptq_core.modes.full.equalization)
    branch_note: str = ""  # If bodies: which branch was quantized, which stays FP32 (ptq_core.onnxgraph.branches)
    equalization_note: str = ""  # cross_layer_equalization=auto: whether it was kept, and the evidence
