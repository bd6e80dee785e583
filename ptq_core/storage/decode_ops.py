"""ONNX subgraphs that rebuild integer codes from an ``EncodedTensor``'s stored bytes.

The exported model must run in a plain onnxruntime with nothing of ours installed, yet store
b-bit weights in about b bits.  So the packed bytes go in as initializers and a chain of standard
ai.onnx ops, every input of which is a constant, turns them back into an int32 code tensor.
onnxruntime's constant folding (level BASIC and above, the default) evaluates that chain once at
session creation and replaces it by a plain tensor, so inference pays nothing.

What onnxruntime needs to fold the chain, and how this module meets it:

* Since 1.27 a node is skipped unless its output size is known before it runs, and capped at
  1 GiB (``optimization.constant_folding_max_output_size_in_bytes``).  Every node here has a
  shape that ONNX inference computes from constant inputs (Reshape/Expand/Slice read constant
  shape vectors; the rest is elementwise, Gather, CumSum or ScatterElements), and large
  intermediates are int32 (int64 only for fields wider than 17 bits), so a tensor stays below the
  cap up to ~250M elements.
* Folding copies every node's output into a new initializer, which costs far more than the
  arithmetic (~60 ms per 47 MB tensor).  So the chain is kept short on element-sized tensors: no
  index arithmetic per element at all (positions come from constant 8-entry tables, see below),
  and no node that only renames.

Only ops whose signature and semantics are the same for every default-domain opset 13..21 are
used: Cast, Concat, Reshape, Add, Mul, Div, Mod, Gather, Slice, CumSum, Expand, ScatterElements
(no ``reduction``).  No BitwiseAnd (opset 18), Unsqueeze/Squeeze/ReduceSum (axes moved to inputs).

Bit-field extraction: 8 consecutive fields of width w span exactly w bytes, so after viewing the
stream (from the first field's byte) as a [groups, w] matrix, field j of every group sits in the
same columns T[j].. with the same bit phase.  One Gather along axis 1 with the constant table T
picks those columns for all groups at once; the bytes (or precombined little/big-endian words of
consecutive bytes, whichever needs fewer element-sized nodes) form an integer word, which a
per-phase power-of-two Div and a Mod 2^w reduce to the field.  A field that starts mid-byte can
spill into the next group's first byte, so the matrix gets that byte as an extra column.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_core.storage.bitstream import MAX_FIELD_BITS
from ptq_core.storage.encoded import EncodedTensor
from ptq_core.storage.split_coding import split_correction_bits

__all__ = ["MAX_OPSET", "MIN_OPSET", "decode_nodes"]

MIN_OPSET = 13
# Every op used keeps the signature and integer semantics used here in all later opsets, so any
# opset the installed onnx package knows is accepted.
MAX_OPSET = max(21, onnx.defs.onnx_opset_version())

# Zero bytes appended (via Expand, so they cost nothing on disk) behind every stored stream: the
# last group may read up to 7 padding fields, an extra column and a word window past the data.
_TAIL_PAD = 8 + 2 * MAX_FIELD_BITS + 8


class _GraphBuilder:
    """Collects the nodes and initializers of one decode chain.

    Every name is ``prefix`` plus a short suffix: the stored arrays keep their key ("packed",
    "stream", ...), graph constants are c<i>, intermediates t<i>.  Names are repeated in every
    reference and a chain has dozens, so short suffixes, unnamed nodes and deduplicated
    constants keep the graph's own bytes from swamping small weights.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self.prefix}{kind}{self._count}"

    def stored(self, key: str, array: np.ndarray) -> str:
        """An array of the EncodedTensor, named prefix + key."""
        name = f"{self.prefix}{key}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value: np.ndarray | int, dtype: type = np.int32) -> str:
        """A small constant (scalars become 0-d tensors), shared when the same value recurs."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self._name("c")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: tuple[int, ...] | list[int]) -> str:
        """An int64 vector (shapes for Reshape/Expand, starts/ends/axes/steps for Slice)."""
        return self.const(np.array(list(values), dtype=np.int64), np.int64)

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        out = output or self._name("t")
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def add(self, x: str, value: int, dtype: type = np.int32) -> str:
        """x + value, skipping the node when value is 0."""
        return x if value == 0 else self.op("Add", [x, self.const(value, dtype)])

    def mul(self, x: str, value: int, dtype: type = np.int32) -> str:
        """x * value, skipping the node when value is 1."""
        return x if value == 1 else self.op("Mul", [x, self.const(value, dtype)])

    def slice(self, x: str, start: int, end: int, step: int = 1) -> str:
        inputs = [x, self.ints([start]), self.ints([end]), self.ints([0])]
        if step != 1:
            inputs.append(self.ints([step]))
        return self.op("Slice", inputs)

    def reshape(self, x: str, shape: tuple[int, ...] | list[int], output: str | None = None) -> str:
        return self.op("Reshape", [x, self.ints(shape)], output)


def _onnx_type(dtype: type) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class _Stream:
    """One stored uint8 blob, with its widened and word views built once and shared by all reads."""

    def __init__(self, bld: _GraphBuilder, enc: EncodedTensor, key: str) -> None:
        array = enc.arrays[key]
        self.bld = bld
        self.name = bld.stored(key, array)
        self.length = int(array.size)
        self._bytes: dict[type, str] = {}
        self._words: dict[tuple[type, int, bool], str] = {}

    @property
    def padded_length(self) -> int:
        return self.length + _TAIL_PAD

    def bytes(self, dtype: type) -> str:
        """The blob as ``dtype`` integers followed by _TAIL_PAD zeros."""
        if dtype not in self._bytes:
            bld = self.bld
            wide = bld.op("Cast", [self.name], to=_onnx_type(dtype))
            zero = bld.const(np.zeros(1, dtype=dtype), dtype)
            pad = bld.op("Expand", [zero, bld.ints([_TAIL_PAD])])
            self._bytes[dtype] = bld.op("Concat", [wide, pad], axis=0)
        return self._bytes[dtype]

    def words(self, dtype: type, window: int, msb_first: bool) -> str:
        """W[i] = bytes i..i+window-1 as one little-endian (LSB) / big-endian (MSB) integer."""
        key = (dtype, window, msb_first)
        if key not in self._words:
            bld = self.bld
            count = self.padded_length - window + 1
            word = None
            for t in range(window):
                part = bld.slice(self.bytes(dtype), t, t + count)
                part = bld.mul(part, 1 << (8 * (window - 1 - t) if msb_first else 8 * t), dtype)
                word = part if word is None else bld.op("Add", [word, part])
            assert word is not None
            self._words[key] = word
        return self._words[key]


def _group_matrix(bld: _GraphBuilder, source: str, first_byte: int, groups: int, width: int, extra: bool) -> str:
    """source[first_byte:] viewed as [groups, width] (plus the next group's first entry)."""
    main = bld.reshape(bld.slice(source, first_byte, first_byte + groups * width), (groups, width))
    if not extra:
        return main
    end = first_byte + width + groups * width
    nxt = bld.slice(source, first_byte + width, end, step=width)
    nxt = bld.reshape(nxt, (groups, 1))
    return bld.op("Concat", [main, nxt], axis=1)


def _extract_fields(
    stream: _Stream, count: int, width: int, bit_offset: int, msb_first: bool, flat: bool = True
) -> str:
    """Nodes reading ``count`` unsigned ``width``-bit fields starting at ``bit_offset``.

    LSB-first streams fill bytes from bit 0 up and combine bytes little-endian; MSB-first streams
    start at bit 7 and combine big-endian.  Returns an int32 tensor of ``count`` elements, shaped
    [count] if ``flat`` (or if count is not a multiple of 8), else [count / 8, 8], which saves a
    Reshape where only the element order matters.
    """
    if not 1 <= width <= MAX_FIELD_BITS:
        raise ValueError(f"field width {width} outside 1..{MAX_FIELD_BITS}")
    bld = stream.bld
    groups = -(-count // 8)
    first_byte, first_bit = divmod(bit_offset, 8)
    phases = [j * width + first_bit for j in range(8)]
    columns = [p // 8 for p in phases]
    shifts = [p % 8 for p in phases]
    nbytes = [-(-(s + width) // 8) for s in shifts]  # bytes each field touches
    window = max(nbytes)
    dtype = np.int32 if window <= 3 else np.int64
    if first_byte + (groups + 1) * width + window > stream.padded_length:
        raise AssertionError("stream padding too short for this read")

    if width == 8 and first_bit == 0:
        fields = bld.slice(stream.bytes(np.int32), first_byte, first_byte + count)
        return fields if flat or count % 8 else bld.reshape(fields, (groups, 8))

    # Gathering byte by byte costs 3 element-sized nodes per byte; precombined words cost one
    # Gather plus (3*window - 1) nodes over the stream, which is width/8 of the element count.
    per_byte_cost = 3 * window - 2
    word_cost = (3 * window - 1) * width / 8 + 1
    precombine = window > 1 and word_cost < per_byte_cost
    source = stream.words(dtype, window, msb_first) if precombine else stream.bytes(dtype)
    reads = [0] if precombine else list(range(window))
    needed = columns if precombine else [c + nb - 1 for c, nb in zip(columns, nbytes, strict=True)]
    extra = max(needed) >= width  # a field starting mid-byte reaches into the next group
    last_column = width if extra else width - 1
    matrix = _group_matrix(bld, source, first_byte, groups, width, extra)

    word = None
    for t in reads:
        # Reads past a field's own bytes are clamped to the last column; those bytes land above
        # the field (LSB) or below it (MSB) and the Mod/Div below discard them.
        picks = np.array([min(c + t, last_column) for c in columns], dtype=np.int64)
        part = bld.op("Gather", [matrix, bld.const(picks, np.int64)], axis=1)
        if not precombine:
            part = bld.mul(part, 1 << (8 * (window - 1 - t) if msb_first else 8 * t), dtype)
        word = part if word is None else bld.op("Add", [word, part])
    assert word is not None

    if msb_first:
        divisors = [1 << (8 * window - width - s) for s in shifts]
        needs_mod = any(s > 0 for s in shifts)
    else:
        divisors = [1 << s for s in shifts]
        needs_mod = any(8 * window - s > width for s in shifts)
    if any(d != 1 for d in divisors):
        word = bld.op("Div", [word, bld.const(np.array(divisors), dtype)])
    if needs_mod:
        word = bld.op("Mod", [word, bld.const(1 << width, dtype)])
    if dtype is not np.int32:
        word = bld.op("Cast", [word], to=TensorProto.INT32)
    if count % 8 == 0 and not flat:
        return word
    word = bld.reshape(word, (groups * 8,))
    return word if groups * 8 == count else bld.slice(word, 0, count)


def _value_table(stream: _Stream, bits: int, u: int, offset: int) -> str:
    """The u sorted distinct values (stored as v + 2^(b-1), MSB first) as int32 [u]."""
    stored = _extract_fields(stream, u, bits, offset, msb_first=True)
    return stream.bld.add(stored, -(1 << (bits - 1)))


def _lookup(bld: _GraphBuilder, table: str, ranks: str | None, count: int) -> str:
    """table[ranks]; with ub = 0 (one distinct value) there are no ranks, so broadcast it."""
    if ranks is None:
        return bld.op("Expand", [table, bld.ints([count])])
    return bld.op("Gather", [table, ranks], axis=0)


def _positions_from_gaps(bld: _GraphBuilder, stored_gaps: str) -> str:
    """Element positions from stored (gap - 1) fields: cumsum(field + 1) - 1."""
    gaps = bld.add(stored_gaps, 1)
    total = bld.op("CumSum", [gaps, bld.const(0, np.int64)])
    return bld.add(total, -1)


def _decode_raw(bld: _GraphBuilder, enc: EncodedTensor) -> str:
    return bld.op("Cast", [bld.stored("data", enc.arrays["data"])], to=TensorProto.INT32)


def _decode_bitpack(bld: _GraphBuilder, enc: EncodedTensor) -> str:
    fields = _extract_fields(_Stream(bld, enc, "packed"), enc.size, enc.bits, 0, msb_first=False, flat=False)
    return bld.add(fields, -(1 << (enc.bits - 1)))


def _decode_index(bld: _GraphBuilder, enc: EncodedTensor) -> str:
    stream = _Stream(bld, enc, "stream")
    b, u, ub, n = enc.bits, enc.meta["u"], enc.meta["ub"], enc.size
    table = _value_table(stream, b, u, b)
    ranks = _extract_fields(stream, n, ub, b + b * u, msb_first=True, flat=False) if ub else None
    return _lookup(bld, table, ranks, n)


def _zero_point_base(bld: _GraphBuilder, enc: EncodedTensor) -> str:
    """Every element's channel zero point (contiguous channels of n // C elements), int32 [n]."""
    table = enc.arrays["zero_points"]
    channels, n = int(table.size), enc.size
    zp = bld.op("Cast", [bld.stored("zero_points", table)], to=TensorProto.INT32)
    if channels == 1:
        return bld.op("Expand", [zp, bld.ints([n])])
    col = bld.reshape(zp, (channels, 1))
    grid = bld.op("Expand", [col, bld.ints([channels, n // channels])])
    return bld.reshape(grid, (n,))


def _decode_sparse(bld: _GraphBuilder, enc: EncodedTensor) -> str:
    base = _zero_point_base(bld, enc)
    nnz = enc.meta["nnz"]
    if nnz == 0:
        return base
    stream = _Stream(bld, enc, "stream")
    b, u, ub, k = enc.bits, enc.meta["u"], enc.meta["ub"], enc.meta["k"]
    table_at = 8 + 32 + b
    ranks_at = table_at + b * u
    coords_at = ranks_at + ub * nnz
    table = _value_table(stream, b, u, table_at)
    ranks = _extract_fields(stream, nnz, ub, ranks_at, msb_first=True) if ub else None
    values = _lookup(bld, table, ranks, nnz)
    coords = _extract_fields(stream, nnz, k, coords_at, msb_first=True)
    positions = _positions_from_gaps(bld, coords)
    return bld.op("ScatterElements", [base, positions, values], axis=0)


def _split_corrections(stream: _Stream, nnz: int, h: int, at: int) -> str:
    """hi - corr_min of each split entry, int64 [nnz], from its one or two stored fields.

    Outliers of int32-wide codes can need 2^k * hi beyond int32, so their arithmetic runs in int64
    (nnz elements only; the n-element low part stays int32).
    """
    bld = stream.bld
    low_bits, high_bits = split_correction_bits(h)
    corr = _extract_fields(stream, nnz, low_bits, at, msb_first=False)
    corr = bld.op("Cast", [corr], to=TensorProto.INT64)
    if high_bits == 0:
        return corr
    upper = _extract_fields(stream, nnz, high_bits, at + nnz * low_bits, msb_first=False)
    upper = bld.op("Cast", [upper], to=TensorProto.INT64)
    return bld.op("Add", [corr, bld.mul(upper, 1 << low_bits, np.int64)])


def _decode_split(bld: _GraphBuilder, enc: EncodedTensor) -> str:
    stream = _Stream(bld, enc, "stream")
    m, n = enc.meta, enc.size
    k, nnz, g, h = m["k"], m["nnz"], m["gap_bits"], m["corr_bits"]
    low = _extract_fields(stream, n, k, 0, msb_first=False, flat=nnz > 0)
    low = bld.add(low, m["offset"])
    if nnz == 0:
        return low
    positions = _positions_from_gaps(bld, _extract_fields(stream, nnz, g, n * k, msb_first=False))
    hi = _split_corrections(stream, nnz, h, n * k + nnz * g)
    hi = bld.mul(bld.add(hi, m["corr_min"], np.int64), 1 << k, np.int64)
    current = bld.op("Gather", [low, positions], axis=0)
    current = bld.op("Cast", [current], to=TensorProto.INT64)
    fixed = bld.op("Cast", [bld.op("Add", [current, hi])], to=TensorProto.INT32)
    return bld.op("ScatterElements", [low, positions, fixed], axis=0)


_DECODERS = {
    "raw": _decode_raw,
    "bitpack": _decode_bitpack,
    "index": _decode_index,
    "sparse": _decode_sparse,
    "split": _decode_split,
}


def decode_nodes(
    enc: EncodedTensor, prefix: str, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes and initializers that rebuild ``enc``'s int32 codes (shape ``enc.shape``).

    All names start with ``prefix`` and are unique within the call (use a distinct prefix per
    tensor).  Every node input is an initializer or another node of the chain, so onnxruntime
    folds the whole chain into one constant.  Returns (nodes, initializers, output name).
    """
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ValueError(f"opset {opset} outside the supported {MIN_OPSET}..{MAX_OPSET}")
    decoder = _DECODERS.get(enc.kind)
    if decoder is None:
        raise ValueError(f"unknown encoding kind {enc.kind!r}; expected one of {', '.join(_DECODERS)}")
    bld = _GraphBuilder(prefix)
    codes = bld.reshape(decoder(bld, enc), enc.shape, f"{prefix}codes")

    return bld.nodes, bld.initializers, codes
