"""Group-wise weight storage (``[ptqflow] group_size``; docs/gptq.md "Group-wise params").

A 2-D weight is stored as rows of codes, one row per output channel (a MatMul's [K, N] weight is stored
transposed, [N, K]), each row cut into groups of ``group_size`` input features with a float16 scale and
an int8 zero point per group. The last group is padded with its zero point's code when ``group_size``
does not divide the row. Codes are packed by the fixed-bit encoders with one zero point per group, which
is exactly their "one zero point per contiguous channel" layout, so every packing they choose applies.

The decode chain is standard ONNX on constants, folded by onnxruntime when the session is created:
codes -> Cast -> Reshape [rows, groups, size] -> Sub zero points -> Mul scales -> Reshape -> Slice
(padding) -> Transpose (a [K, N] weight). Inference then runs the original float kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.modes.weight.gptq import GroupedCodes


@dataclass(frozen=True)
class GroupedLayout:
    """How a weight of ``shape`` sits in its stored rows: which axis the rows are, and the group size."""

    shape: tuple[int, int]
    rows_axis: int
    group_size: int

    @property
    def rows(self) -> int:
        return self.shape[self.rows_axis]

    @property
    def columns(self) -> int:
        return self.shape[1 - self.rows_axis]

    @property
    def groups(self) -> int:
        return -(-self.columns // self.group_size)

    @property
    def padded(self) -> int:
        return self.groups * self.group_size


def rows_of(w: np.ndarray, rows_axis: int) -> np.ndarray:
    """The weight as [output channels, input features]."""
    return np.moveaxis(w, rows_axis, 0)


def stored_codes(coded: GroupedCodes, layout: GroupedLayout) -> np.ndarray:
    """[rows, padded] codes: the padding holds the last group's zero point (it decodes to 0)."""
    pad = layout.padded - layout.columns
    if not pad:
        return coded.codes
    fill = np.repeat(coded.zero_point[:, -1:], pad, axis=1).astype(coded.codes.dtype)
    return np.concatenate([coded.codes, fill], axis=1)


def dequantized(coded: GroupedCodes, layout: GroupedLayout) -> np.ndarray:
    """The float weight the decode chain rebuilds, in the weight's own layout (float32 arithmetic)."""
    index = np.arange(layout.columns) // layout.group_size
    zp = coded.zero_point[:, index].astype(np.float32)
    scale = coded.scale[:, index].astype(np.float32)
    rows = (coded.codes.astype(np.float32) - zp) * scale
    return np.moveaxis(rows, 0, layout.rows_axis)


def decode_chain(codes: str, scale: np.ndarray, zero_point: np.ndarray, layout: GroupedLayout, prefix: str,
                 output: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers from ``codes`` ([rows, padded] integers) to the float weight ``output``."""
    rows, groups, size = layout.rows, layout.groups, layout.group_size
    inits = [numpy_helper.from_array(np.array([rows, groups, size], np.int64), f"{prefix}gs"),
             numpy_helper.from_array(np.array([rows, layout.padded], np.int64), f"{prefix}rs"),
             numpy_helper.from_array(np.asarray(zero_point, np.int8).reshape(rows, groups, 1), f"{prefix}z"),
             numpy_helper.from_array(np.asarray(scale, np.float16).reshape(rows, groups, 1), f"{prefix}s")]
    nodes = [helper.make_node("Cast", [codes], [f"{prefix}f"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Reshape", [f"{prefix}f", f"{prefix}gs"], [f"{prefix}g"]),
             helper.make_node("Cast", [f"{prefix}z"], [f"{prefix}zf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Sub", [f"{prefix}g", f"{prefix}zf"], [f"{prefix}c"]),
             helper.make_node("Cast", [f"{prefix}s"], [f"{prefix}sf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", [f"{prefix}c", f"{prefix}sf"], [f"{prefix}m"])]
    last = f"{prefix}m"
    steps = ["Reshape"] + (["Slice"] if layout.padded != layout.columns else []) + \
        (["Transpose"] if layout.rows_axis != 0 else [])
    for i, op in enumerate(steps):
        out = output if i == len(steps) - 1 else f"{prefix}{op[0].lower()}{i}"
        if op == "Reshape":
            nodes.append(helper.make_node("Reshape", [last, f"{prefix}rs"], [out]))
        elif op == "Slice":
            inits += [numpy_helper.from_array(np.array([0], np.int64), f"{prefix}b"),
                      numpy_helper.from_array(np.array([layout.columns], np.int64), f"{prefix}e"),
                      numpy_helper.from_array(np.array([1], np.int64), f"{prefix}a")]
            nodes.append(helper.make_node("Slice", [last, f"{prefix}b", f"{prefix}e", f"{prefix}a"], [out]))
        else:
            nodes.append(helper.make_node("Transpose", [last], [out], perm=[1, 0]))
        last = out
    return nodes, inits
