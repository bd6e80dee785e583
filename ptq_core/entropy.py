"""Entropy coding of mixed-bit weight codes, shared by a group of tensors, decodable by folding.

Mixed-bit quantization gives every tensor the same relative error, so the integer codes of all
tensors of a model follow nearly the same bell-shaped distribution.  converter_lite entropy-codes
them with FSE; we must stay with standard ONNX ops that plain onnxruntime constant-folds at
session creation.  This module codes a whole group of tensors with ONE canonical Huffman code and
decodes it with a chain of ~7 ops per decode step, vectorized over many independent lanes:

* **Alphabet and outliers.**  Values inside a central window [a, b] (chosen to minimize the
  total size) that occur in the group form the alphabet (S symbols).  Every other value is an
  *outlier*: it is coded as the shortest-code symbol and its exact value is restored from a
  sparse list (gap-coded positions + values, like ``encoding.encode_split``).
* **Code.**  One length-limited (package-merge, optimal) canonical Huffman code over the pooled
  histogram, code lengths <= L <= 17.  Only the S code lengths and symbol values are stored; the
  decode tables (2^L entries) are built inside the graph from them.
* **Lanes.**  All codes of the group are concatenated (tensor by tensor, C order) into one
  sequence of n symbols, which is dealt round-robin onto ``lanes`` = 2 * segments lanes: symbol i
  goes to lane i % lanes as its step i // lanes, so ``steps`` = ceil(n / lanes) decode steps
  emit all symbols in their original order.  Lanes are paired into segments: in segment m the
  forward lane m writes its codewords from the segment start forwards and the backward lane
  segments + m writes its own from the segment end backwards (bit-reversed), so only one bit
  length per segment is stored, and no padding is spent anywhere (the last step's missing
  symbols are simply not stored; their lanes decode garbage that is sliced off).
* **Decode.**  Positions start at the segment starts (CumSum of the stored lengths).  The
  backward lanes read the bit-reversed, byte-reversed copy of the stream, in which they run
  forwards too, so all lanes run the same 7 nodes per step:
  ``b = p / 8; r = p % 8; w = W[b]; x = w / D[r]; len = LX[x]; p += len`` (W = big-endian 24-bit
  words at every byte, D[r] = 2^(24 - r - L)).  ``x`` holds the next L bits below up to r
  already-consumed bits, so x < 2^(L+7) and the tables are simply repeated 128 times instead of
  masking x.  The x of all steps are concatenated, mapped through the symbol table, corrected
  by one ScatterElements for the outliers, and split into the tensors.

Stored arrays (``EntropyGroup.arrays``): ``"_h"`` uint8, the Huffman bit stream (MSB first: bit p
is bit 7 - p % 8 of byte p // 8); ``"_s"`` uint8, an LSB-first field stream (layout of
``encoding``'s ``split``) holding, in order: S fields(5) code lengths in canonical order, S
fields(ws) symbol values minus a, ``segments`` fields(wl) segment bit lengths minus lmin,
``nnz`` fields(g) outlier gap - 1 (fillers as in ``split``), ``nnz`` fields(min(h, 16) or h when
h <= 24) outlier values minus vmin (then fields(h - 16) of the high part when h > 24).

Positions are int32, so one group holds less than 2^31 stream bits (~300M codes); split bigger
sets into several groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptq_core import encoding as _enc
from ptq_core import onnx_decode as _od

__all__ = [
    "MAX_CODE_LEN",
    "EntropyGroup",
    "GroupSizes",
    "compare_sizes",
    "decode_group",
    "encode_group",
    "graph_nbytes",
    "group_nbytes",
    "group_nodes",
    "worth_it",
]

MAX_CODE_LEN = 17  # r + L <= 24: a codeword at any bit phase lies in one 3-byte window
_WINDOW = 24
_LEN_BITS = 5  # field width of a stored code length (1..17)
_PAD = 4  # zero bytes behind each copy of the stream (a 3-byte window read at its very end)
_MAX_ALPHABET = 4096
_MAX_STEPS = 1024
_MAX_STREAM_BITS = 2**31 - 1 - 8 * (2 * _PAD + 8)
_OUTLIER_FRACTIONS = (0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
_NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_BITREV8 = _enc._BYTE_REVERSE.astype(np.int32)


@dataclass(frozen=True, eq=False)
class EntropyGroup:
    """Stored form of a group of integer code tensors sharing one Huffman code.

    ``arrays`` is what gets written as initializers (keys ``"_h"``, ``"_s"``; see the module
    docstring); ``meta`` holds the small ints the ONNX decoder lays its graph out with;
    ``shapes`` are the tensors' shapes in input order.
    """

    shapes: tuple[tuple[int, ...], ...]
    arrays: dict[str, np.ndarray]
    meta: dict[str, int]

    @property
    def nbytes(self) -> int:
        """Bytes of ``arrays`` as stored."""
        return int(sum(int(a.nbytes) for a in self.arrays.values()))

    @property
    def size(self) -> int:
        """Number of codes in the group."""
        return int(self.meta["n"])

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    def bits_per_code(self) -> float:
        return 8.0 * self.nbytes / self.size


def group_nbytes(group: EntropyGroup) -> int:
    """Stored bytes of the group (initializer payloads; graph bytes are ``graph_nbytes``)."""
    return group.nbytes


# ---------------------------------------------------------------------------------------------
# Huffman code


def _package_merge(weights: np.ndarray, max_len: int) -> np.ndarray:
    """Optimal code lengths <= max_len for ascending ``weights`` (m >= 2, 2^max_len >= m).

    Package-merge on weights only: each level's list is the leaves merged with the pairwise
    packages of the level below; the first 2m - 2 items of the top list are selected, and the
    selected items of a list are always a prefix whose leaves are the lightest ones, so a leaf's
    length is the number of levels whose selected prefix holds it.
    """
    m = weights.size
    leaves = weights.astype(np.int64)
    flags = [np.ones(m, dtype=bool)]
    prev = leaves
    for _ in range(max_len - 1):
        half = prev.size // 2
        packages = prev[0 : 2 * half : 2] + prev[1 : 2 * half : 2]
        merged = np.concatenate([leaves, packages])
        order = np.argsort(merged, kind="stable")
        prev = merged[order]
        flags.append(order < m)
    lengths = np.zeros(m, dtype=np.int64)
    take = 2 * m - 2
    for flag in reversed(flags):
        nleaf = int(np.count_nonzero(flag[:take]))
        lengths[:nleaf] += 1
        take = 2 * (take - nleaf)
    return lengths


def _code_lengths(counts: np.ndarray, max_len: int) -> np.ndarray:
    """Length-limited Huffman lengths for ``counts`` (any order, all > 0)."""
    if counts.size == 1:
        return np.ones(1, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    lengths = np.empty(counts.size, dtype=np.int64)
    lengths[order] = _package_merge(counts[order], max_len)
    return lengths


def _min_len(m: int) -> int:
    return max(1, _enc._bit_length(m - 1))


@dataclass(frozen=True)
class _Code:
    """A canonical code: symbols (values) and lengths in canonical order (length, then value)."""

    values: np.ndarray  # int64 [S]
    lengths: np.ndarray  # int64 [S]
    max_len: int

    @property
    def codewords(self) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(1 << (self.max_len - self.lengths))[:-1]])
        return starts >> (self.max_len - self.lengths)


def _canonical(values: np.ndarray, lengths: np.ndarray, max_len: int) -> _Code:
    order = np.lexsort((values, lengths))
    return _Code(values[order], lengths[order], max_len)


# ---------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class _Plan:
    code: _Code
    window: tuple[int, int]
    estimate_bits: float


def _outlier_entry_bits(n: int, nnz: int, span_bits: int) -> float:
    """Rough bits per outlier entry (gap field + value field), for comparing windows."""
    if nnz == 0:
        return 0.0
    return max(1.0, np.log2(n / nnz) + 1.5) + span_bits


def _plan_code(values: np.ndarray, counts: np.ndarray, n: int) -> _Plan:
    """Central window, alphabet and code lengths minimizing the estimated total bits."""
    cum = np.concatenate([[0], np.cumsum(counts)])
    total_span = _enc._bit_length(int(values[-1] - values[0]))
    candidates: set[tuple[int, int]] = {(int(np.argmax(counts)),) * 2}
    for frac in _OUTLIER_FRACTIONS:
        cut = int(frac * n / 2)
        lo = int(np.searchsorted(cum, cut, side="right")) - 1  # first index with cum[lo+1] > cut
        hi = int(np.searchsorted(cum, n - cut, side="left")) - 1
        if lo <= hi:
            candidates.add((lo, hi))
    best: _Plan | None = None
    for lo, hi in sorted(candidates):
        s = hi - lo + 1
        if s > _MAX_ALPHABET or values[hi] - values[lo] >= 1 << 24:
            continue
        inside = counts[lo : hi + 1].copy()
        nnz = n - int(inside.sum())
        # outliers are coded as the most frequent symbol
        inside[int(np.argmax(inside))] += nnz
        lengths = _code_lengths(inside, MAX_CODE_LEN)
        bits = float(np.dot(inside, lengths))
        bits += s * (_LEN_BITS + _enc._bit_length(int(values[hi] - values[lo])))
        bits += nnz * _outlier_entry_bits(n, nnz, total_span)
        if best is None or bits < best.estimate_bits:
            best = _Plan(_canonical(values[lo : hi + 1], lengths, MAX_CODE_LEN), (lo, hi), bits)
    assert best is not None  # the one-symbol window always qualifies
    # Smallest length limit costing (almost) nothing more: smaller decode tables while folding.
    lo, hi = best.window
    inside = counts[lo : hi + 1].copy()
    inside[int(np.argmax(inside))] += n - int(inside.sum())
    full = float(np.dot(inside, _code_lengths(inside, MAX_CODE_LEN)))
    for max_len in range(_min_len(inside.size), MAX_CODE_LEN + 1):
        lengths = _code_lengths(inside, max_len)
        if float(np.dot(inside, lengths)) <= full + 0.0002 * n + 64:
            code = _canonical(values[lo : hi + 1], lengths, max_len)
            return _Plan(code, best.window, best.estimate_bits)
    return best


def _lane_layout(n: int, steps: int) -> tuple[int, int]:
    """(lanes, steps) for about ``steps`` steps: lanes even, steps = ceil(n / lanes)."""
    lanes = -(-n // max(1, steps))
    lanes += lanes % 2
    return lanes, -(-n // lanes)


def _segment_lengths(lens: np.ndarray, lanes: int, steps: int) -> np.ndarray:
    """Bit length of every segment (forward lane m + backward lane segments + m)."""
    grid = np.zeros(lanes * steps, dtype=np.int32)
    grid[: lens.size] = lens
    per_lane = grid.reshape(steps, lanes).sum(axis=0, dtype=np.int64)
    half = lanes // 2
    return per_lane[:half] + per_lane[half:]


def _step_graph_bytes(prefix_len: int) -> int:
    """Serialized bytes of one decode step's 7 nodes with names of this prefix length."""
    name = "x" * (prefix_len + 3)
    nodes = [
        helper.make_node(op, [name, name], [name])
        for op in ("Div", "Mod", "Gather", "Gather", "Div", "Gather", "Add")
    ]
    return sum(node.ByteSize() + 3 for node in nodes)


def _choose_steps(lens: np.ndarray, prefix_len: int) -> int:
    """Steps minimizing stored segment lengths + per-step graph bytes."""
    n = lens.size
    step_bytes = _step_graph_bytes(prefix_len)
    best_steps, best_cost = 1, None
    for steps in sorted({int(round(2 ** (k / 4))) for k in range(0, 41)}):
        lanes, steps = _lane_layout(n, steps)
        if steps > _MAX_STEPS:
            continue
        seg = _segment_lengths(lens, lanes, steps)
        width = _enc._bit_length(int(seg.max() - seg.min()))
        cost = (lanes // 2) * width / 8 + steps * step_bytes
        if best_cost is None or cost < best_cost:
            best_steps, best_cost = steps, cost
    return best_steps


# ---------------------------------------------------------------------------------------------
# encoding


def _as_group_codes(codes: list[np.ndarray]) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    if len(codes) == 0:
        raise ValueError("codes is empty: a group needs at least one tensor")
    flats, shapes = [], []
    for i, q in enumerate(codes):
        arr = _enc._as_codes(q, f"codes[{i}]")
        flat = arr.reshape(-1).astype(np.int64)
        lo, hi = int(flat.min()), int(flat.max())
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise ValueError(f"codes[{i}] span [{lo}, {hi}], outside the int32 range")
        flats.append(flat)
        shapes.append(tuple(int(d) for d in arr.shape))
    return np.concatenate(flats), tuple(shapes)


def _reverse_low_bits(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mirror the low lengths[i] bits of values[i]."""
    out = np.zeros_like(values)
    for j in range(int(lengths.max(initial=0))):
        bit = (values >> j) & 1
        out |= np.where(j < lengths, bit << np.maximum(lengths - 1 - j, 0), 0)
    return out


def _pack_codewords(positions: np.ndarray, words: np.ndarray, lengths: np.ndarray, nbytes: int) -> np.ndarray:
    """Write ``lengths``-bit ``words`` MSB first at bit ``positions`` (disjoint) into nbytes bytes."""
    shift = (_WINDOW - (positions & 7) - lengths).astype(np.int64)
    wide = words.astype(np.int64) << shift
    first = positions >> 3
    out = np.zeros(nbytes + 3, dtype=np.float64)
    for t in range(3):
        part = ((wide >> (8 * (2 - t))) & 0xFF).astype(np.float64)
        out += np.bincount(first + t, weights=part, minlength=nbytes + 3)[: nbytes + 3]
    return out[:nbytes].astype(np.uint8)


def _gap_width(gaps: np.ndarray, value_bits: int) -> tuple[int, int]:
    """(g, entries) minimizing entries * (g + value_bits), as ``encoding._split_plan`` does."""
    best_g, best_entries = 0, 0
    for g in range(1, min(_enc.MAX_FIELD_BITS, max(1, _enc._bit_length(int(gaps.max()) - 1))) + 1):
        entries = _enc._entry_count(gaps, g)
        if best_g == 0 or entries * (g + value_bits) < best_entries * (best_g + value_bits):
            best_g, best_entries = g, entries
    return best_g, best_entries


def _value_fields(values: np.ndarray, h: int) -> list[tuple[np.ndarray, int]]:
    """Unsigned values of width h as one field (h <= 24) or a 16-bit low and a high field."""
    if h <= 24:
        return [(values, h)]
    return [(values & 0xFFFF, 16), (values >> 16, h - 16)]


def encode_group(codes: list[np.ndarray], *, steps: int | None = None, prefix_len: int = 4) -> EntropyGroup:
    """Losslessly entropy-code integer code tensors (any shapes, int32 range) as one group.

    ``steps`` forces the number of decode steps (default: the one minimizing stored segment
    lengths plus graph bytes for chain names of ``prefix_len`` characters plus 3).
    """
    flat, shapes = _as_group_codes(codes)
    n = int(flat.size)
    values, counts = _enc._value_counts(flat)
    plan = _plan_code(values, counts, n)
    code = plan.code
    lo_val, hi_val = int(code.values.min()), int(code.values.max())

    # rank of every element in canonical order; outliers take rank 0 (a shortest codeword)
    lut = np.full(hi_val - lo_val + 1, -1, dtype=np.int32)
    lut[code.values - lo_val] = np.arange(code.values.size, dtype=np.int32)
    inside = (flat >= lo_val) & (flat <= hi_val)
    rank = np.zeros(n, dtype=np.int32)
    rank[inside] = lut[flat[inside] - lo_val]
    outlier = rank < 0
    outlier[~inside] = True
    rank[outlier] = 0
    lens_of_rank = code.lengths.astype(np.int32)
    lens = lens_of_rank[rank]
    if int(lens.sum(dtype=np.int64)) > _MAX_STREAM_BITS:
        raise ValueError("the group's stream exceeds 2^31 bits; encode its tensors in several groups")

    steps = _choose_steps(lens, prefix_len) if steps is None else int(steps)
    lanes, steps = _lane_layout(n, steps)
    half = lanes // 2
    grid = np.zeros(lanes * steps, dtype=np.int32)
    grid[:n] = lens
    grid = grid.reshape(steps, lanes)
    within = np.cumsum(grid, axis=0, dtype=np.int64) - grid  # bit offset inside its lane
    per_lane = within[-1] + grid[-1]
    seg = per_lane[:half] + per_lane[half:]
    seg_end = np.cumsum(seg)
    seg_start = seg_end - seg
    total_bits = int(seg_end[-1])
    nbytes = -(-total_bits // 8)

    lane = np.arange(n, dtype=np.int64) % lanes
    offs = within.reshape(-1)[:n]
    forward = lane < half
    pos = np.where(forward, seg_start[np.minimum(lane, half - 1)] + offs, 0)
    back_end = seg_end[np.maximum(lane - half, 0)]
    pos = np.where(forward, pos, back_end - offs - lens)
    words_of_rank = code.codewords
    mirrored_of_rank = _reverse_low_bits(words_of_rank, code.lengths)
    words = np.where(forward, words_of_rank[rank], mirrored_of_rank[rank])
    stream = _pack_codewords(pos, words, lens, nbytes)
    del pos, words, offs, lane, within, grid

    # side stream: code, segment lengths, outliers
    ws = _enc._bit_length(hi_val - lo_val)
    lmin = int(seg.min())
    wl = _enc._bit_length(int(seg.max()) - lmin)
    segments = [(code.lengths, _LEN_BITS), (code.values - lo_val, ws), (seg - lmin, wl)]
    positions = np.flatnonzero(outlier)
    meta = {
        "n": n, "L": code.max_len, "S": int(code.values.size), "ws": ws, "a": lo_val,
        "steps": steps, "lanes": lanes, "wl": wl, "lmin": lmin, "nbytes": nbytes,
        "nnz": 0, "g": 0, "h": 0, "vmin": 0,
    }  # fmt: skip
    if positions.size:
        out_vals = flat[positions]
        vmin = min(int(out_vals.min()), lo_val)
        h = max(1, _enc._bit_length(max(int(out_vals.max()), hi_val) - vmin))
        g, _ = _gap_width(np.diff(positions, prepend=-1), h)
        gaps, _ = _enc._gap_entries(positions, g, n_tail=None)
        entry_pos = np.cumsum(gaps + 1) - 1
        segments += [(gaps, g)] + _value_fields(flat[entry_pos] - vmin, h)
        meta.update(nnz=int(gaps.size), g=g, h=h, vmin=vmin)
    side = _enc._bitstream(segments, msb_first=False)
    return EntropyGroup(shapes, {"_h": stream, "_s": side}, meta)


# ---------------------------------------------------------------------------------------------
# NumPy reference decoder (the same computation the ONNX chain runs)


def _side_fields(group: EntropyGroup) -> dict[str, np.ndarray]:
    m, side = group.meta, group.arrays["_s"]
    s, ws, lanes, wl = m["S"], m["ws"], m["lanes"], m["wl"]
    at = 0

    def take(count: int, width: int) -> np.ndarray:
        nonlocal at
        vals = _enc._read_fields(side, at, count, width, msb_first=False)
        at += count * width
        return vals

    out = {"lens": take(s, _LEN_BITS), "syms": take(s, ws) + m["a"], "seg": take(lanes // 2, wl) + m["lmin"]}
    if m["nnz"]:
        gaps = take(m["nnz"], m["g"])
        vals = sum((take(m["nnz"], w) << shift) for w, shift in _value_layout(m["h"]))
        out["pos"] = np.cumsum(gaps + 1) - 1
        out["vals"] = vals + m["vmin"]
    return out


def _value_layout(h: int) -> list[tuple[int, int]]:
    """(width, shift) of the outlier value fields."""
    return [(h, 0)] if h <= 24 else [(16, 0), (h - 16, 16)]


def _tables(lens: np.ndarray, syms: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode tables over all 2^L peeks: (code length, symbol value)."""
    span = (1 << (max_len - lens))
    rank = np.zeros(1 << max_len, dtype=np.int64)
    rank[np.cumsum(span)[:-1]] = 1
    rank = np.cumsum(rank)
    return lens[rank], syms[rank]


def _words(stream: np.ndarray) -> np.ndarray:
    """Big-endian 24-bit words at every byte of stream + pad + reversed stream + pad."""
    z = np.zeros(_PAD, dtype=np.int64)
    rev = _BITREV8[stream[::-1]].astype(np.int64)
    all_bytes = np.concatenate([stream.astype(np.int64), z, rev, z])
    m = all_bytes.size - 2
    return (all_bytes[:m] << 16) + (all_bytes[1 : m + 1] << 8) + all_bytes[2 : m + 2]


def decode_group(group: EntropyGroup) -> list[np.ndarray]:
    """Rebuild every tensor's int32 codes (original shapes), exactly as the ONNX chain does."""
    m = group.meta
    f = _side_fields(group)
    max_len, lanes, steps, nbytes = m["L"], m["lanes"], m["steps"], m["nbytes"]
    len_table, sym_table = _tables(f["lens"], f["syms"], max_len)
    words = _words(group.arrays["_h"])
    divisor = np.array([1 << (_WINDOW - r - max_len) for r in range(8)], dtype=np.int64)
    ends = np.cumsum(f["seg"])
    p = np.concatenate([ends - f["seg"], 8 * (2 * nbytes + _PAD) - ends])
    xs = np.empty((steps, lanes), dtype=np.int64)
    for t in range(steps):
        x = words[p >> 3] // divisor[p & 7]
        xs[t] = x
        p = p + len_table[x & ((1 << max_len) - 1)]
    flat = sym_table[xs.reshape(-1) & ((1 << max_len) - 1)]
    if m["nnz"]:
        flat[f["pos"]] = f["vals"]
    out, at = [], 0
    for shape, size in zip(group.shapes, group.sizes, strict=True):
        out.append(flat[at : at + size].astype(np.int32).reshape(shape))
        at += size
    return out


# ---------------------------------------------------------------------------------------------
# ONNX chain


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


def _side_reader(bld: _Builder, group: EntropyGroup):
    holder = SimpleNamespace(arrays=group.arrays)
    stream = _od._Stream(bld, holder, "_s")
    at = 0

    def take(count: int, width: int) -> str | None:
        nonlocal at
        if width == 0:
            return None
        name = _od._extract_fields(stream, count, width, at, msb_first=False)
        at += count * width
        return name

    return take


def _build_tables(bld: _Builder, lens: str, syms: str, s: int, max_len: int) -> tuple[str, str]:
    """(length table, symbol table) over 2^L peeks, from the canonical lengths and symbols."""
    size = 1 << max_len
    if s == 1:
        return bld.op("Expand", [lens, bld.ints([size])]), bld.op("Expand", [syms, bld.ints([size])])
    spans = bld.op("Gather", [bld.const(np.array([1 << (max_len - k) for k in range(max_len + 1)])), lens])
    starts = bld.op("CumSum", [bld.slice(spans, 0, s - 1), bld.const(0)])
    zeros = bld.op("Expand", [bld.const(0), bld.ints([size])])
    ones = bld.op("Expand", [bld.const(1), bld.ints([s - 1])])
    marks = bld.op("ScatterElements", [zeros, starts, ones])
    rank = bld.op("CumSum", [marks, bld.const(0)])
    return bld.op("Gather", [lens, rank]), bld.op("Gather", [syms, rank])


def _repeat_table(bld: _Builder, table: str, max_len: int) -> str:
    """The table repeated 128 times: entry x is table[x mod 2^L] for every x < 2^(L+7)."""
    grid = bld.op("Expand", [table, bld.ints([128, 1 << max_len])])
    return bld.reshape(grid, (128 << max_len,))


def _stream_words(bld: _Builder, group: EntropyGroup) -> str:
    """W: big-endian 24-bit words at every byte of [stream, pad, reversed stream, pad]."""
    nbytes = group.meta["nbytes"]
    wide = bld.op("Cast", [bld.stored("_h", group.arrays["_h"])], to=TensorProto.INT32)
    backwards = bld.op("Slice", [wide, bld.ints([nbytes - 1]), bld.ints([-nbytes - 1]), bld.ints([0]), bld.ints([-1])])
    mirrored = bld.op("Gather", [bld.const(_BITREV8), backwards])
    pad = bld.op("Expand", [bld.const(np.zeros(1, np.int32)), bld.ints([_PAD])])
    all_bytes = bld.op("Concat", [wide, pad, mirrored, pad], axis=0)
    count = 2 * (nbytes + _PAD) - 2
    word = None
    for t, scale in enumerate((1 << 16, 1 << 8, 1)):
        part = bld.mul(bld.slice(all_bytes, t, t + count), scale)
        word = part if word is None else bld.op("Add", [word, part])
    assert word is not None
    return word


def group_nodes(
    group: EntropyGroup, prefix: str, opset: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[str]]:
    """Nodes and initializers decoding ``group``; returns the int32 output name of each tensor.

    All names start with ``prefix`` (use one no other name of the model starts with).  Every
    node input is an initializer or another node's output, so onnxruntime folds the whole chain.
    """
    if not _od.MIN_OPSET <= int(opset) <= _od.MAX_OPSET:
        raise ValueError(f"opset {opset} outside the supported {_od.MIN_OPSET}..{_od.MAX_OPSET}")
    m = group.meta
    max_len, s, lanes, steps, nbytes = m["L"], m["S"], m["lanes"], m["steps"], m["nbytes"]
    bld = _Builder(prefix)
    take = _side_reader(bld, group)

    lens = take(s, _LEN_BITS)
    sym_fields = take(s, m["ws"])
    syms = bld.const(np.array([m["a"]])) if sym_fields is None else bld.add(sym_fields, m["a"])
    len_table, sym_table = _build_tables(bld, lens, syms, s, max_len)
    seg_fields = take(lanes // 2, m["wl"])
    if seg_fields is None:
        seg = bld.op("Expand", [bld.const(m["lmin"]), bld.ints([lanes // 2])])
    else:
        seg = bld.add(seg_fields, m["lmin"])
    ends = bld.op("CumSum", [seg, bld.const(0)])
    starts = bld.op("Sub", [ends, seg])
    back = bld.op("Sub", [bld.const(8 * (2 * nbytes + _PAD)), ends])
    pos = bld.op("Concat", [starts, back], axis=0)

    words = _stream_words(bld, group)
    len_big = _repeat_table(bld, len_table, max_len)
    eight = bld.const(8)
    divisors = bld.const(np.array([1 << (_WINDOW - r - max_len) for r in range(8)]))
    xs = []
    for t in range(steps):
        byte = bld.op("Div", [pos, eight])
        phase = bld.op("Mod", [pos, eight])
        word = bld.op("Gather", [words, byte])
        x = bld.op("Div", [word, bld.op("Gather", [divisors, phase])])
        xs.append(x)
        if t + 1 < steps:
            pos = bld.op("Add", [pos, bld.op("Gather", [len_big, x])])
    peeks = xs[0] if steps == 1 else bld.op("Concat", xs, axis=0)
    if (128 << max_len) <= lanes * steps:
        flat = bld.op("Gather", [_repeat_table(bld, sym_table, max_len), peeks])
    else:
        flat = bld.op("Gather", [sym_table, bld.op("Mod", [peeks, bld.const(1 << max_len)])])

    if m["nnz"]:
        nnz = m["nnz"]
        positions = _od._positions_from_gaps(bld, take(nnz, m["g"]))
        values = _outlier_values(bld, take, nnz, m["h"], m["vmin"])
        flat = bld.op("ScatterElements", [flat, positions, values])

    sizes = list(group.sizes)
    outputs = [f"{prefix}_{k}" for k in range(len(sizes))]
    tail = lanes * steps - sum(sizes)
    parts_out = [o if len(shape) == 1 else bld._name("t") for o, shape in zip(outputs, group.shapes, strict=True)]
    if len(sizes) == 1 and tail == 0:
        parts = [flat]
    else:
        split = sizes + ([tail] if tail else [])
        extra = [bld._name("t")] if tail else []
        bld.nodes.append(helper.make_node("Split", [flat, bld.ints(split)], parts_out + extra, axis=0))
        parts = parts_out
    for part, out, shape in zip(parts, outputs, group.shapes, strict=True):
        if part != out:
            bld.reshape(part, shape, out)
    return bld.nodes, bld.initializers, outputs


def _outlier_values(bld: _Builder, take, nnz: int, h: int, vmin: int) -> str:
    if h <= 24:
        return bld.add(take(nnz, h), vmin)
    low = bld.op("Cast", [take(nnz, 16)], to=TensorProto.INT64)
    high = bld.op("Cast", [take(nnz, h - 16)], to=TensorProto.INT64)
    value = bld.op("Add", [low, bld.mul(high, 1 << 16, np.int64)])
    return bld.op("Cast", [bld.add(value, vmin, np.int64)], to=TensorProto.INT32)


def graph_nbytes(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], stored: int) -> int:
    """Protobuf bytes a chain adds to a graph beyond its ``stored`` payload bytes."""
    graph = onnx.GraphProto()
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    return graph.ByteSize() - stored


# ---------------------------------------------------------------------------------------------
# comparison with per-tensor split coding


@dataclass(frozen=True)
class GroupSizes:
    """Bytes of a group coded together versus each tensor coded alone with ``encode_split``."""

    group_stored: int
    group_graph: int
    split_stored: int
    split_graph: int
    codes: int = field(default=0)

    @property
    def group_total(self) -> int:
        return self.group_stored + self.group_graph

    @property
    def split_total(self) -> int:
        return self.split_stored + self.split_graph


def compare_sizes(codes: list[np.ndarray], opset: int = 17, prefix: str = "q0_") -> GroupSizes:
    """Encode both ways and measure stored and graph bytes (same name prefix length)."""
    group = encode_group(codes, prefix_len=len(prefix))
    nodes, inits, _ = group_nodes(group, prefix, opset)
    split_stored = split_graph = 0
    for q in codes:
        enc = _enc.encode_split(np.asarray(q))
        s_nodes, s_inits, _ = _od.decode_nodes(enc, prefix, opset)
        split_stored += enc.nbytes
        split_graph += graph_nbytes(s_nodes, s_inits, enc.nbytes)
    return GroupSizes(group.nbytes, graph_nbytes(nodes, inits, group.nbytes), split_stored, split_graph, group.size)


def worth_it(codes: list[np.ndarray]) -> bool:
    """True when group coding (stored + graph bytes) beats per-tensor split coding."""
    sizes = compare_sizes(codes)
    return sizes.group_total < sizes.split_total
