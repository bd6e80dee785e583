"""The ONNX chain that decodes an ``EntropyGroup``, in standard ops onnxruntime folds at session creation.

Decode tables from the stored code, lane starts, windowed peeks chunk by chunk, the outlier
scatter and the split into tensors; the algorithm is described in ``entropy_group``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_core.storage import decode_ops as _od
from ptq_core.storage.bitstream import BYTE_REVERSE
from ptq_core.storage.entropy_group import WINDOW, EntropyGroup, field_reader

__all__ = ["graph_nbytes", "group_nodes", "peek_divisors"]

_NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def peek_divisors(max_len: int) -> np.ndarray:
    """D[r] = 2^(24 - r - L): a word divided by it keeps the bits up to the peek's end."""
    return np.array([1 << (WINDOW - r - max_len) for r in range(8)], dtype=np.int64)


class _Builder(_od._GraphBuilder):
    """``onnx_decode``'s builder with the shortest names: prefix + base-62 counter."""

    def _name(self, kind: str) -> str:
        k = self._count
        self._count += 1
        digits = ""
        while True:
            k, d = divmod(k, len(_NAME_CHARS))
            digits = _NAME_CHARS[d] + digits
            if k == 0:
                return self.prefix + digits

    def scalar(self, value: int) -> str:
        """A 0-d int32 constant (``const`` makes [1] tensors; Range needs true scalars)."""
        key = ("scalar", (), int(value).to_bytes(8, "little", signed=True))
        if key not in self._consts:
            name = self._name("c")
            self.initializers.append(numpy_helper.from_array(np.array(value, dtype=np.int32), name))
            self._consts[key] = name
        return self._consts[key]


class _OnnxRead:
    """Field reads as nodes: own arrays are cast to int32, packed ones extracted from "_s"."""

    def __init__(self, bld: _Builder, group: EntropyGroup) -> None:
        self.bld = bld
        self.arrays = group.arrays
        self.stream = _od._Stream(bld, SimpleNamespace(arrays=group.arrays), "_s") if "_s" in group.arrays else None

    def raw(self, key: str) -> str:
        array = self.arrays[key]
        name = self.bld.stored(key, array)
        return name if array.dtype == np.int32 else self.bld.op("Cast", [name], to=TensorProto.INT32)

    def packed(self, at: int, count: int, width: int) -> str:
        return _od._extract_fields(self.stream, count, width, at, msb_first=False)

    def combine(self, parts: list[tuple[str, int]]) -> str:
        if len(parts) == 1:
            return parts[0][0]
        bld = self.bld
        total = None
        for name, shift in parts:
            part = bld.mul(bld.op("Cast", [name], to=TensorProto.INT64), 1 << shift, np.int64)
            total = part if total is None else bld.op("Add", [total, part])
        return total


def _build_tables(bld: _Builder, lens: str, syms: str, s: int, max_len: int) -> tuple[str, str]:
    """(length table, symbol table) over all 2^L peeks, from the canonical lengths and symbols."""
    size = 1 << max_len
    if s == 1:
        return bld.op("Expand", [lens, bld.ints([size])]), bld.op("Expand", [syms, bld.ints([size])])
    spans = bld.op("Gather", [bld.const(np.array([1 << (max_len - k) for k in range(max_len + 1)])), lens])
    starts = bld.op("CumSum", [bld.slice(spans, 0, s - 1), bld.scalar(0)])
    zeros = bld.op("Expand", [bld.scalar(0), bld.ints([size])])
    ones = bld.op("Expand", [bld.scalar(1), bld.ints([s - 1])])
    rank = bld.op("CumSum", [bld.op("ScatterElements", [zeros, starts, ones]), bld.scalar(0)])
    return bld.op("Gather", [lens, rank]), bld.op("Gather", [syms, rank])


def _source_nodes(bld: _Builder, group: EntropyGroup, pad: int) -> str:
    """uint8 [stream, pad, stream mirrored bit by bit, pad], the bytes every window is cut from."""
    nbytes = group.meta["nbytes"]
    stream = bld.stored("_h", group.arrays["_h"])
    ends = [bld.ints([nbytes - 1]), bld.ints([-nbytes - 1]), bld.ints([0]), bld.ints([-1])]
    backwards = bld.op("Slice", [stream, *ends])
    index = bld.op("Cast", [backwards], to=TensorProto.INT32)
    mirrored = bld.op("Gather", [bld.const(BYTE_REVERSE, np.uint8), index])
    zeros = bld.op("Expand", [bld.const(np.zeros(1, np.uint8), np.uint8), bld.ints([pad])])
    return bld.op("Concat", [stream, zeros, mirrored, zeros], axis=0)


def _word_matrix(bld: _Builder, window: int) -> str:
    """[window, window - 2] int32 with 2^16, 2^8, 1 on three diagonals: bytes @ it = 24-bit words."""
    shape = bld.op("Expand", [bld.scalar(0), bld.ints([window, window - 2])])
    total = None
    for d, scale in enumerate((1 << 16, 1 << 8, 1)):
        part = bld.mul(bld.op("EyeLike", [shape], k=-d, dtype=TensorProto.INT32), scale)
        total = part if total is None else bld.op("Add", [total, part])
    assert total is not None
    return total


def _range(bld: _Builder, start: int, limit: int, delta: int) -> str:
    return bld.op("Range", [bld.scalar(start), bld.scalar(limit), bld.scalar(delta)])


def _decode_tables(bld: _Builder, group: EntropyGroup) -> tuple[str, str]:
    """(length table, symbol table) from the stored canonical code lengths and symbols."""
    m = group.meta
    table = bld.stored("_t", group.arrays["_t"])
    table = table if group.arrays["_t"].dtype == np.int32 else bld.op("Cast", [table], to=TensorProto.INT32)
    lens = bld.op("Gather", [table, bld.scalar(0)])
    syms = bld.add(bld.op("Gather", [table, bld.scalar(1)]), m["a"])
    return _build_tables(bld, lens, syms, m["S"], m["L"])


def _lane_starts(bld: _Builder, group: EntropyGroup, take) -> str:
    """Every lane's start: forward lanes at their segment start, backward lanes where their
    segment ends in the mirrored copy."""
    m = group.meta
    lanes, nbytes, window = m["lanes"], m["nbytes"], m["window"]
    if m["wl"] == 0:
        seg = bld.op("Expand", [bld.scalar(m["lmin"]), bld.ints([lanes // 2])])
    else:
        seg = bld.add(take("_l", lanes // 2, m["wl"]), m["lmin"])
    ends = bld.op("CumSum", [seg, bld.scalar(0)])
    starts = bld.op("Sub", [ends, seg])
    back = bld.op("Sub", [bld.scalar(8 * (2 * nbytes + window)), ends])
    return bld.op("Concat", [starts, back], axis=0)


def _peek_nodes(bld: _Builder, group: EntropyGroup, pos: str, len_table: str) -> list[str]:
    """The peek of every step.  Every ``chunk`` steps, each lane's next ``window`` bytes of the
    doubled stream become 24-bit words; the steps in between read only those."""
    m = group.meta
    max_len, lanes, steps, chunk, window = m["L"], m["lanes"], m["steps"], m["chunk"], m["window"]
    source = _source_nodes(bld, group, window)
    matrix = _word_matrix(bld, window)
    offsets = _range(bld, 0, window, 1)
    lane_base = _range(bld, 0, 8 * (window - 2) * lanes, 8 * (window - 2))  # bit 0 of each lane's window
    first_bytes = _range(bld, 0, (window - 2) * lanes, window - 2)
    eight = bld.scalar(8)
    divisors = bld.const(peek_divisors(max_len), np.int32)
    mask = bld.scalar(1 << max_len)
    base, phase = bld.op("Div", [pos, eight]), bld.op("Mod", [pos, eight])
    peeks = []
    for t0 in range(0, steps, chunk):
        # this chunk's windows: the bytes from each lane's current byte on, as 24-bit words
        starts = bld.reshape(base, (lanes, 1))
        window_bytes = bld.op("Gather", [source, bld.op("Add", [starts, offsets])])
        words = bld.op("MatMul", [bld.op("Cast", [window_bytes], to=TensorProto.INT32), matrix])
        words = bld.reshape(words, (lanes * (window - 2),))
        local = bld.op("Add", [phase, lane_base])  # bit address in the flattened windows
        last = min(t0 + chunk, steps)
        for t in range(t0, last):
            if t > t0:
                phase = bld.op("Mod", [local, eight])
            byte = first_bytes if t == t0 else bld.op("Div", [local, eight])
            word = bld.op("Gather", [words, byte])
            peek = bld.op("Mod", [bld.op("Div", [word, bld.op("Gather", [divisors, phase])]), mask])
            peeks.append(peek)
            if t + 1 < steps:
                local = bld.op("Add", [local, bld.op("Gather", [len_table, peek])])
        if last < steps:
            advanced = bld.op("Div", [bld.op("Sub", [local, lane_base]), eight])
            base, phase = bld.op("Add", [base, advanced]), bld.op("Mod", [local, eight])
    return peeks


def _restore_outliers(bld: _Builder, group: EntropyGroup, take, flat: str) -> str:
    """The decoded codes with every outlier's exact value scattered over the symbol it was coded as."""
    m = group.meta
    nnz = m["nnz"]
    positions = _od._positions_from_gaps(bld, take("_g", nnz, m["g"]))
    values = _outlier_values(bld, take("_v", nnz, m["h"]), not m["raw_v"] and m["h"] > 24, m["vmin"])
    return bld.op("ScatterElements", [flat, positions, values], axis=0)


def _split_outputs(bld: _Builder, group: EntropyGroup, flat: str, prefix: str) -> list[str]:
    """Cut the decoded codes into the group's tensors, named prefix + "_0", "_1", ..."""
    m = group.meta
    sizes = list(group.sizes)
    outputs = [f"{prefix}_{k}" for k in range(len(sizes))]
    tail = m["lanes"] * m["steps"] - sum(sizes)
    if len(sizes) == 1 and tail == 0:
        parts = [flat]
    else:
        # 1-D tensors come straight out of the Split; the rest need a Reshape
        parts = [out if len(shape) == 1 else bld._name("t") for out, shape in zip(outputs, group.shapes, strict=True)]
        extra = [bld._name("t")] if tail else []
        split = bld.ints(sizes + ([tail] if tail else []))
        bld.nodes.append(helper.make_node("Split", [flat, split], parts + extra, axis=0))
    for part, out, shape in zip(parts, outputs, group.shapes, strict=True):
        if part != out:
            bld.reshape(part, shape, out)
    return outputs


def group_nodes(
    group: EntropyGroup, prefix: str, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """Nodes and initializers decoding ``group``; returns the int32 output name of each tensor.

    All names start with ``prefix`` (choose one no other name of the model starts with): the
    stored arrays are prefix + "_h" / "_s", the outputs prefix + "_0", "_1", ..., everything
    else prefix + a base-62 counter.  Every node input is an initializer or another node's
    output, so onnxruntime folds the whole chain at session creation.
    """
    if not _od.MIN_OPSET <= int(opset) <= _od.MAX_OPSET:
        raise ValueError(f"opset {opset} outside the supported {_od.MIN_OPSET}..{_od.MAX_OPSET}")
    bld = _Builder(prefix)
    take = field_reader(group, _OnnxRead(bld, group))
    len_table, sym_table = _decode_tables(bld, group)
    pos = _lane_starts(bld, group, take)
    peeks = _peek_nodes(bld, group, pos, len_table)
    flat = bld.op("Gather", [sym_table, peeks[0] if group.meta["steps"] == 1 else bld.op("Concat", peeks, axis=0)])
    if group.meta["nnz"]:
        flat = _restore_outliers(bld, group, take, flat)
    outputs = _split_outputs(bld, group, flat, prefix)
    return bld.nodes, bld.initializers, outputs


def _outlier_values(bld: _Builder, stored: str, wide: bool, vmin: int) -> str:
    """The exact values of the outlier entries, int32 [nnz], from the stored value - vmin.

    ``wide``: the stored values came as two packed fields combined in int64 (h > 24); adding
    vmin there and casting back is exact.  Otherwise they are int32 and the sum, being the
    original int32 value, cannot overflow.
    """
    if not wide:
        return bld.add(stored, vmin)
    return bld.op("Cast", [bld.add(stored, vmin, np.int64)], to=TensorProto.INT32)


def graph_nbytes(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], stored: int) -> int:
    """Protobuf bytes a chain adds to a graph beyond its ``stored`` payload bytes."""
    graph = onnx.GraphProto()
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    return graph.ByteSize() - stored
