"""Which inputs of which op hold weights, and along which channel axis (docs/converter-lite.md §5.3, in
ONNX layouts): data, kept apart from the graph walks that use it so that loading a model (which folds
weight chains, ptq_core.onnxgraph.fold) and finding its weights (ptq_core.onnxgraph.sites) both read it
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass


# Which inputs of which op hold weights, and how to find their channel axis (docs/converter-lite.md §5.3,
# translated to ONNX layouts). A function gets (node attributes, weight rank) and returns the axis.
def _conv_axis(attrs: dict, rank: int) -> int:
    return 0


def _conv_transpose_axis(attrs: dict, rank: int, shape: tuple[int, ...] = ()) -> int:
    # ONNX ConvTranspose weight is (Cin, Cout/group, kH, kW); depthwise (Cout/group == 1) uses axis 0.
    if shape and len(shape) > 1 and shape[1] == 1 and attrs.get("group", 1) == shape[0]:
        return 0
    return 1


def _matmul_b_axis(attrs: dict, rank: int) -> int:
    return rank - 1  # N axis of (.., K, N)


def _matmul_a_axis(attrs: dict, rank: int) -> int:
    return rank - 2  # M axis of (.., M, K)


def _gemm_b_axis(attrs: dict, rank: int) -> int:
    return 0 if attrs.get("transB", 0) else 1


def _gemm_a_axis(attrs: dict, rank: int) -> int:
    return 1 if attrs.get("transA", 0) else 0


def _gather_axis(attrs: dict, rank: int) -> int:
    axis = attrs.get("axis", 0)
    return axis + rank if axis < 0 else axis


def _gate_row_axis(attrs: dict, rank: int) -> int:
    return 1


@dataclass(frozen=True)
class WeightRole:
    """One weight input of an op type: its input index and how its channel axis is found."""

    input_index: int
    axis_fn: object
    conv_like: bool = False  # min_quant_weight_channel applies
    matmul_like: bool = False  # a weight shared by several nodes goes per-layer


WEIGHT_OPS: dict[str, tuple[WeightRole, ...]] = {
    "Conv": (WeightRole(1, _conv_axis, conv_like=True),),
    "ConvTranspose": (WeightRole(1, _conv_transpose_axis, conv_like=True),),
    "MatMul": (WeightRole(0, _matmul_a_axis, matmul_like=True), WeightRole(1, _matmul_b_axis, matmul_like=True)),
    "Gemm": (WeightRole(0, _gemm_a_axis, matmul_like=True), WeightRole(1, _gemm_b_axis, matmul_like=True)),
    "Gather": (WeightRole(0, _gather_axis),),
    # W and R are (directions, gates * hidden, K): one scale per gate row, shared by the directions of a
    # bidirectional layer (a DequantizeLinear takes one axis); per direction alone would be per tensor
    "LSTM": (WeightRole(1, _gate_row_axis), WeightRole(2, _gate_row_axis)),
    "GRU": (WeightRole(1, _gate_row_axis), WeightRole(2, _gate_row_axis)),
    "RNN": (WeightRole(1, _gate_row_axis), WeightRole(2, _gate_row_axis)),
}
