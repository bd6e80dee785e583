"""Entropy coding of mixed-bit weight codes, shared by a group of tensors, decodable by folding.

Mixed-bit quantization gives every tensor the same relative error, so the integer codes of all
tensors of a model follow nearly the same bell-shaped distribution.  converter_lite entropy-codes
them with FSE; we must stay with standard ONNX ops that a plain onnxruntime constant-folds at
session creation.  This module codes a whole group of tensors with ONE canonical Huffman code and
decodes it with 8 small nodes per decode step, vectorized over many independent lanes.

* **Alphabet and outliers.**  The values inside a central range [a, b] (chosen to minimize the
  total size) that occur form the alphabet (S symbols).  Every other value is an *outlier*: it
  is coded as a shortest-code symbol and its exact value is restored from a sparse list
  (gap-coded positions and values, as in ``encoding``'s ``split``), by one ScatterElements.
* **Code.**  One length-limited canonical Huffman code (package-merge, optimal for the limit)
  over the pooled histogram, lengths <= L <= 17.  Only the S (length, symbol) pairs are stored;
  the 2^L-entry decode tables are built inside the graph from them.
* **Lanes.**  The group's codes, concatenated tensor by tensor in C order, are dealt round-robin
  onto ``lanes`` lanes: symbol i is step i // lanes of lane i % lanes, so step t of all lanes
  decodes symbols t*lanes .. t*lanes + lanes - 1 and concatenating the ``steps`` steps restores
  the order.  Lanes are paired into segments: forward lane m writes its codewords from the start
  of segment m on, backward lane lanes/2 + m writes its (bit-mirrored) codewords from the end
  of segment m backwards.  Only each segment's bit length is stored (wl bits), nothing is
  padded: where the last step has no symbol, its lane decodes garbage that is dropped.
* **Decode.**  Lanes start at CumSum of the segment lengths; backward lanes read a bit-mirrored
  copy of the stream, in which they run forwards like the others.  onnxruntime copies every
  input of a node it folds, so the steps must not read the whole stream: every ``chunk`` steps,
  each lane's next ``window`` bytes are gathered (one Gather from the stream) and turned into
  24-bit big-endian words at every byte (one MatMul with a 3-diagonal matrix), and the steps in
  between read only these small windows:
  ``b = q / 8; r = q % 8; x = W[b] / D[r] % 2^L; q += LT[x]`` with D[r] = 2^(24 - r - L).  The
  peeks x of all steps are concatenated and mapped to symbols by one Gather.

Stored arrays (``EntropyGroup.arrays``):

``"_h"`` uint8, the Huffman stream; MSB first (bit p is bit 7 - p % 8 of byte p // 8).
``"_t"`` [2, S] (uint8 / uint16 / int32, whichever holds the offsets): the code lengths in
    canonical order (by length, then value) and their symbols minus a.
``"_l"``, ``"_g"``, ``"_v"`` the segment lengths minus lmin (``lanes / 2`` values of wl bits),
    the outlier gaps - 1 (``nnz`` values of g bits; filler entries every 2^g elements, as in
    ``split``) and the outliers' values minus vmin (``nnz`` values of h bits; fillers hold their
    own in-alphabet value).  Each is its own uint8/uint16/int32 array when that costs fewer file
    bytes than its graph nodes would (meta ``raw_l``, ``raw_g``, ``raw_v`` = 1); otherwise it is
    bit-packed into
``"_s"`` uint8, an LSB-first field stream like ``split``'s, in the order l, g, v (values wider
    than 24 bits as a 16-bit low field, then the high field).

Decode positions are int32 bit addresses in the doubled stream, so a group holds at most 2^29
stream bits (about 90M codes at 6 bits): split larger sets into several groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_core.storage import decode_ops as _od
from ptq_core.storage import encoding as _enc

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
_WINDOW = 24  # bits of the big-endian words a peek is cut from
_MAX_ALPHABET = 4096  # largest central range considered (the in-graph tables stay small)
_MAX_STEPS = 1024  # bounds the node count (8 per step)
_MAX_STREAM_BITS = 2**29  # bit addresses in the doubled, padded stream stay int32
_OUTLIER_FRACTIONS = (0.0, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
_NAME_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True, eq=False)
class EntropyGroup:
    """Stored form of a group of integer code tensors sharing one Huffman code.

    ``arrays`` is what gets written as initializers (see the module docstring for each key);
    ``meta`` holds the small ints the ONNX decoder lays its graph out with; ``shapes`` are the
    tensors' shapes in input order.  ``eq=False``: compare ``decode_group`` results instead.
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
    span: tuple[int, int]  # indices of the first and last distinct value of the alphabet
    estimate_bits: float


def _outlier_entry_bits(n: int, nnz: int, span_bits: int) -> float:
    """Rough bits per outlier entry (gap field + value field), for comparing windows."""
    if nnz == 0:
        return 0.0
    return max(1.0, np.log2(n / nnz) + 1.5) + span_bits


def _plan_code(values: np.ndarray, counts: np.ndarray, n: int) -> _Plan:
    """Central value range, alphabet and code lengths minimizing the estimated total bits.

    Candidate ranges leave a fraction of the elements (split evenly between both tails) outside
    as outliers; their cost is estimated as a gap field plus a value field each.
    """
    cum = np.concatenate([[0], np.cumsum(counts)])
    total_span = _enc._bit_length(int(values[-1] - values[0]))
    candidates: set[tuple[int, int]] = {(int(np.argmax(counts)),) * 2}
    for frac in _OUTLIER_FRACTIONS:
        cut = int(frac * n / 2)
        lo = int(np.searchsorted(cum, cut, side="right")) - 1  # at most cut elements below lo
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
        bits += 16 * s * np.dtype(_raw_dtype(_enc._bit_length(int(values[hi] - values[lo])))).itemsize
        bits += nnz * _outlier_entry_bits(n, nnz, total_span)
        if best is None or bits < best.estimate_bits:
            best = _Plan(_canonical(values[lo : hi + 1], lengths, MAX_CODE_LEN), (lo, hi), bits)
    assert best is not None  # the one-symbol alphabet always qualifies
    # Smallest length limit costing (almost) nothing more: smaller decode tables while folding.
    lo, hi = best.span
    inside = counts[lo : hi + 1].copy()
    inside[int(np.argmax(inside))] += n - int(inside.sum())
    full = float(np.dot(inside, _code_lengths(inside, MAX_CODE_LEN)))
    for max_len in range(_min_len(inside.size), MAX_CODE_LEN + 1):
        lengths = _code_lengths(inside, max_len)
        if float(np.dot(inside, lengths)) <= full + 0.0002 * n + 64:
            code = _canonical(values[lo : hi + 1], lengths, max_len)
            return _Plan(code, best.span, best.estimate_bits)
    return best


def _lane_layout(n: int, steps: int) -> tuple[int, int]:
    """(lanes, steps) for about ``steps`` steps: lanes even, steps = ceil(n / lanes)."""
    lanes = -(-n // max(1, steps))
    lanes += lanes % 2
    return lanes, -(-n // lanes)


def _lane_grid(lens: np.ndarray, lanes: int, steps: int) -> np.ndarray:
    """Code lengths as a [steps, lanes] grid (symbol i at [i // lanes, i % lanes]), 0-padded."""
    grid = np.zeros(lanes * steps, dtype=np.int32)
    grid[: lens.size] = lens
    return grid.reshape(steps, lanes)


def _segment_lengths(grid: np.ndarray) -> np.ndarray:
    """Bit length of every segment (forward lane m + backward lane segments + m)."""
    per_lane = grid.sum(axis=0, dtype=np.int64)
    half = per_lane.size // 2
    return per_lane[:half] + per_lane[half:]


_STEP_OPS = ("Div", "Mod", "Gather", "Gather", "Div", "Mod", "Gather", "Add")
# per chunk: the window nodes and the carry to the next chunk, less the first step's Div and Mod
_CHUNK_OPS = ("Reshape", "Add", "Gather", "Cast", "MatMul", "Reshape", "Add", "Sub", "Div", "Add", "Mod")
_CHUNK_SAVED = ("Div", "Mod")


def _ops_graph_bytes(ops: tuple[str, ...], prefix_len: int) -> int:
    """Serialized bytes of these nodes with two inputs and names of this prefix length."""
    name = "x" * (prefix_len + 2)
    return sum(helper.make_node(op, [name, name], [name]).ByteSize() + 3 for op in ops)


def _lane_sums(lens: np.ndarray, lanes: int, steps: int) -> np.ndarray:
    """Bits of every lane: the sum of lens[j], lens[j + lanes], ... (no padded copy of lens)."""
    full = (steps - 1) * lanes
    sums = lens[:full].reshape(steps - 1, lanes).sum(axis=0, dtype=np.int64)
    tail = lens[full:]
    sums[: tail.size] += tail
    return sums


def _choose_steps(lens: np.ndarray, prefix_len: int) -> int:
    """Steps minimizing stored segment lengths + per-step graph bytes.

    About (n / 2T) segments of ~8 bits against T steps of ``step_bytes`` puts the optimum near
    sqrt(n / (2 step_bytes)); the candidates around it are measured exactly.
    """
    n = lens.size
    chunk_bytes = _ops_graph_bytes(_CHUNK_OPS, prefix_len) - _ops_graph_bytes(_CHUNK_SAVED, prefix_len)
    step_bytes = _ops_graph_bytes(_STEP_OPS, prefix_len) + chunk_bytes / 12
    guess = np.sqrt(n / (2 * step_bytes))
    best_steps, best_cost = 1, None
    for target in sorted({int(np.clip(round(guess * 2 ** (k / 4)), 1, _MAX_STEPS)) for k in range(-8, 9)}):
        lanes, steps = _lane_layout(n, target)
        per_lane = _lane_sums(lens, lanes, steps)
        seg = per_lane[: lanes // 2] + per_lane[lanes // 2 :]
        width = _enc._bit_length(int(seg.max() - seg.min()))
        cost = (lanes // 2) * width / 8 + steps * step_bytes
        if best_cost is None or cost < best_cost:
            best_steps, best_cost = steps, cost
    return best_steps


def _window(rows: np.ndarray, chunk: int) -> int:
    """Bytes each lane's window needs so that every read of every chunk of ``chunk`` steps fits.

    ``rows`` holds every lane's bit position before each step; a chunk's window starts at the
    byte of its first position and must reach 2 bytes past the byte of its last one.
    """
    steps = rows.shape[0]
    first = rows[0:steps:chunk] >> 3
    last = rows[np.minimum(np.arange(chunk - 1, steps + chunk - 1, chunk), steps - 1)] >> 3
    return int((last - first).max()) + 3


def _choose_chunk(rows: np.ndarray, nbytes: int, max_len: int, prefix_len: int) -> tuple[int, int]:
    """(steps per chunk, window bytes) minimizing chunk graph bytes + folding copy volume.

    onnxruntime copies every input of a node it folds, so what the folding costs is about the
    bytes the folded nodes read: each chunk gathers its windows from the whole stream (twice
    nbytes), each step reads its chunk's words (lanes * (window - 2) int32).  One graph byte is
    weighed against 32 KB copied (about 20 us).
    """
    steps, lanes = rows.shape
    chunk_bytes = _ops_graph_bytes(_CHUNK_OPS, prefix_len) - _ops_graph_bytes(_CHUNK_SAVED, prefix_len)
    best: tuple[float, int, int] | None = None
    for chunk in sorted({steps, *(k for k in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k < steps)}):
        window = _window(rows, chunk)
        if not _window_fits(lanes, window):
            continue
        chunks = -(-steps // chunk)
        copied = chunks * (2 * (nbytes + window) + 9 * lanes * window)
        copied += steps * (4 * lanes * (window - 2) + (4 << max_len))
        cost = chunks * chunk_bytes + copied / 32768
        if best is None or cost < best[0]:
            best = (cost, chunk, window)
    if best is None:
        raise ValueError(f"{lanes} lanes are too many for int32 window addresses; use more steps")
    return best[1], best[2]


def _window_fits(lanes: int, window: int) -> bool:
    """Local bit addresses (8 * lanes * window) stay int32 and the window words below 1 GiB."""
    return 8 * lanes * window < 2**31 and 4 * lanes * window < 2**30


# ---------------------------------------------------------------------------------------------
# encoding


def _as_group_codes(codes: list[np.ndarray]) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    if len(codes) == 0:
        raise ValueError("codes is empty: a group needs at least one tensor")
    flats, shapes = [], []
    for i, q in enumerate(codes):
        arr = _enc._as_codes(q, f"codes[{i}]")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
            raise ValueError(f"codes[{i}] span [{lo}, {hi}], outside the int32 range")
        flats.append(arr.reshape(-1))
        shapes.append(tuple(int(d) for d in arr.shape))
    return np.concatenate(flats).astype(np.int64), tuple(shapes)


def _reverse_low_bits(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mirror the low lengths[i] bits of values[i]."""
    out = np.zeros_like(values)
    for j in range(int(lengths.max(initial=0))):
        bit = (values >> j) & 1
        out |= np.where(j < lengths, bit << np.maximum(lengths - 1 - j, 0), 0)
    return out


def _pack_codewords(positions: np.ndarray, words: np.ndarray, lengths: np.ndarray, nbytes: int) -> np.ndarray:
    """Write ``lengths``-bit ``words`` MSB first at bit ``positions`` (disjoint) into nbytes bytes.

    A codeword of <= 17 bits at bit phase r lies in the 24-bit big-endian window of the 3 bytes
    from positions // 8.  Bits of different codewords never overlap, so summing the windows of
    all codewords starting in one byte (one bincount) OR-s them, and so does adding each
    window's three bytes into place.
    """
    wide = words << (_WINDOW - (positions & 7).astype(np.int32) - lengths)
    window = np.bincount(positions >> 3, weights=wide, minlength=nbytes).astype(np.int64)
    out = window >> 16
    out[1:] += (window[:-1] >> 8) & 0xFF
    out[2:] += window[:-2] & 0xFF
    return out.astype(np.uint8)


def _gap_width(gaps: np.ndarray, value_bits: int) -> int:
    """g minimizing entries * (g + value_bits), as ``encoding._split_plan`` chooses it."""
    best_g, best_entries = 0, 0
    for g in range(1, min(_enc.MAX_FIELD_BITS, max(1, _enc._bit_length(int(gaps.max()) - 1))) + 1):
        entries = _enc._entry_count(gaps, g)
        if best_g == 0 or entries * (g + value_bits) < best_entries * (best_g + value_bits):
            best_g, best_entries = g, entries
    return best_g


def _value_layout(h: int) -> list[tuple[int, int]]:
    """(width, shift) of the outlier value fields: one field up to 24 bits, else 16 + the rest."""
    return [(h, 0)] if h <= 24 else [(16, 0), (h - 16, 16)]


_PACKED_GRAPH_BYTES = 450  # about what the nodes and constants of one packed-field read cost
_RAW_GRAPH_BYTES = 40  # an extra initializer's header and its Cast


def _raw_dtype(width: int) -> type:
    return np.uint8 if width <= 8 else np.uint16 if width <= 16 else np.int32


class _FieldWriter:
    """Side fields, each stored either bit-packed in the shared "_s" stream or as its own array.

    A field of ``count`` values of ``width`` bits goes wherever it costs fewer bytes in the file,
    counting the graph nodes each form needs.  ``raw`` records the choice ("raw_l", ... = 0/1).
    """

    def __init__(self) -> None:
        self.packed: list[tuple[np.ndarray, int]] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.raw: dict[str, int] = {}

    def add(self, key: str, values: np.ndarray, width: int) -> None:
        dtype = _raw_dtype(width)
        raw_cost = values.size * np.dtype(dtype).itemsize + _RAW_GRAPH_BYTES
        packed_cost = -(-values.size * width // 8) + _PACKED_GRAPH_BYTES * len(_value_layout(width))
        self.raw[f"raw{key}"] = int(width > 0 and width <= 31 and raw_cost <= packed_cost)
        if width == 0:
            return
        if self.raw[f"raw{key}"]:
            self.arrays[key] = values.astype(dtype)
            return
        for w, shift in _value_layout(width):
            self.packed.append(((values >> shift) & ((1 << w) - 1), w))


def _ranks(flat: np.ndarray, code: _Code) -> tuple[np.ndarray, np.ndarray]:
    """Canonical rank of every element and the outlier mask (outliers get rank 0)."""
    lo_val, hi_val = int(code.values.min()), int(code.values.max())
    lut = np.full(hi_val - lo_val + 1, -1, dtype=np.int32)
    lut[code.values - lo_val] = np.arange(code.values.size, dtype=np.int32)
    rank = lut[np.clip(flat, lo_val, hi_val) - lo_val]
    outlier = (flat < lo_val) | (flat > hi_val) | (rank < 0)
    rank[outlier] = 0
    return rank, outlier


def encode_group(
    codes: list[np.ndarray], *, steps: int | None = None, chunk: int | None = None, prefix_len: int = 4
) -> EntropyGroup:
    """Losslessly entropy-code integer code tensors (any shapes, int32 range) as one group.

    ``steps`` (decode steps) and ``chunk`` (steps per window chunk) override the choices that
    minimize stored bytes plus graph bytes (for chain names of ``prefix_len`` characters plus
    about 3) plus a folding-time allowance.
    """
    flat, shapes = _as_group_codes(codes)
    n = int(flat.size)
    values, counts = _enc._value_counts(flat)
    code = _plan_code(values, counts, n).code
    s, max_len = int(code.values.size), code.max_len
    rank, outlier = _ranks(flat, code)
    lens = code.lengths.astype(np.int32)[rank]
    if int(lens.sum(dtype=np.int64)) > _MAX_STREAM_BITS:
        raise ValueError("the group's stream exceeds 2^29 bits; encode its tensors in several groups")

    lanes, steps = _lane_layout(n, _choose_steps(lens, prefix_len) if steps is None else int(steps))
    half = lanes // 2
    grid = _lane_grid(lens, lanes, steps)
    del lens
    within = np.cumsum(grid, axis=0, dtype=np.int32)
    within -= grid  # bit offset of each symbol inside its lane
    seg = _segment_lengths(grid)
    seg_end = np.cumsum(seg)
    seg_start = seg_end - seg
    nbytes = -(-int(seg_end[-1]) // 8)

    # where every codeword goes: forward lanes from their segment start, backward lanes mirrored
    # from their segment end
    pos = np.empty((steps, lanes), dtype=np.int64)
    pos[:, :half] = seg_start + within[:, :half]
    pos[:, half:] = seg_end - within[:, half:] - grid[:, half:]
    rank_grid = np.zeros(lanes * steps, dtype=np.int32)
    rank_grid[:n] = rank
    rank_grid = rank_grid.reshape(steps, lanes)
    rank_grid[:, half:] += s
    words_of = np.concatenate([code.codewords, _reverse_low_bits(code.codewords, code.lengths)]).astype(np.int32)
    stream = _pack_codewords(pos.reshape(-1)[:n], words_of[rank_grid.reshape(-1)[:n]], grid.reshape(-1)[:n], nbytes)
    del rank_grid

    # the decoder's positions before every step (backward lanes run in the mirrored copy, which
    # starts a whole number of bytes on, so the windows do not depend on where)
    pos[:, :half] = seg_start + within[:, :half]
    pos[:, half:] = (8 * nbytes - seg_end) + within[:, half:]
    del within, grid
    if chunk is None:
        chunk, window = _choose_chunk(pos, nbytes, max_len, prefix_len)
    else:
        chunk = max(1, min(int(chunk), steps))
        window = _window(pos, chunk)
        if not _window_fits(lanes, window):
            raise ValueError(f"chunk {chunk} needs {window}-byte windows for {lanes} lanes: too large")
    del pos

    lo_val = int(code.values.min())
    offsets = code.values - lo_val
    table = np.stack([code.lengths, offsets]).astype(_raw_dtype(_enc._bit_length(int(offsets.max()))))
    lmin = int(seg.min())
    wl = _enc._bit_length(int(seg.max()) - lmin)
    fields = _FieldWriter()
    fields.add("_l", seg - lmin, wl)
    meta = {
        "n": n, "L": max_len, "S": s, "a": lo_val, "steps": steps, "lanes": lanes, "chunk": chunk,
        "window": window, "wl": wl, "lmin": lmin, "nbytes": nbytes, "nnz": 0, "g": 0, "h": 0, "vmin": 0,
    }  # fmt: skip
    positions = np.flatnonzero(outlier)
    if positions.size:
        out_vals = flat[positions]
        vmin = min(int(out_vals.min()), lo_val)
        h = max(1, _enc._bit_length(max(int(out_vals.max()), int(code.values.max())) - vmin))
        g = _gap_width(np.diff(positions, prepend=-1), h)
        gaps, _ = _enc._gap_entries(positions, g, n_tail=None)
        fields.add("_g", gaps, g)
        fields.add("_v", flat[np.cumsum(gaps + 1) - 1] - vmin, h)  # fillers store their own value
        meta.update(nnz=int(gaps.size), g=g, h=h, vmin=vmin)
    meta.update(fields.raw)
    arrays = {"_h": stream, "_t": table, **fields.arrays}
    if fields.packed:
        arrays["_s"] = _enc._bitstream(fields.packed, msb_first=False)
    return EntropyGroup(shapes, arrays, meta)


# ---------------------------------------------------------------------------------------------
# NumPy reference decoder (the same computation the ONNX chain runs)


def _field_reader(group: EntropyGroup, read):
    """take(key, count, width): a side field, from its own array or the next packed fields."""
    m, at = group.meta, 0

    def take(key: str, count: int, width: int):
        nonlocal at
        if m[f"raw{key}"]:
            return read.raw(key)
        parts = []
        for w, shift in _value_layout(width):
            parts.append((read.packed(at, count, w), shift))
            at += count * w
        return read.combine(parts)

    return take


class _NumpyRead:
    def __init__(self, group: EntropyGroup) -> None:
        self.arrays = group.arrays
        self.side = group.arrays.get("_s")

    def raw(self, key: str) -> np.ndarray:
        return self.arrays[key].astype(np.int64)

    def packed(self, at: int, count: int, width: int) -> np.ndarray:
        return _enc._read_fields(self.side, at, count, width, msb_first=False)

    def combine(self, parts: list[tuple[np.ndarray, int]]) -> np.ndarray:
        return sum(values << shift for values, shift in parts)


def _side_fields(group: EntropyGroup) -> dict[str, np.ndarray]:
    m = group.meta
    take = _field_reader(group, _NumpyRead(group))
    table = group.arrays["_t"].astype(np.int64)
    lanes = m["lanes"]
    seg = take("_l", lanes // 2, m["wl"]) if m["wl"] else np.zeros(lanes // 2, dtype=np.int64)
    out = {"lens": table[0], "syms": table[1] + m["a"], "seg": seg + m["lmin"]}
    if m["nnz"]:
        gaps = take("_g", m["nnz"], m["g"])
        out["pos"] = np.cumsum(gaps + 1) - 1
        out["vals"] = take("_v", m["nnz"], m["h"]) + m["vmin"]
    return out


def _tables(lens: np.ndarray, syms: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode tables over all 2^L peeks: (code length, symbol value)."""
    marks = np.zeros(1 << max_len, dtype=np.int64)
    marks[np.cumsum(1 << (max_len - lens))[:-1]] = 1
    rank = np.cumsum(marks)
    return lens[rank], syms[rank]


def _source(stream: np.ndarray, pad: int) -> np.ndarray:
    """[stream, pad zeros, stream mirrored bit by bit, pad zeros] as int64."""
    z = np.zeros(pad, dtype=np.int64)
    return np.concatenate([stream.astype(np.int64), z, _enc._BYTE_REVERSE[stream[::-1]].astype(np.int64), z])


def _divisors(max_len: int) -> np.ndarray:
    """D[r] = 2^(24 - r - L): a word divided by it keeps the bits up to the peek's end."""
    return np.array([1 << (_WINDOW - r - max_len) for r in range(8)], dtype=np.int64)


def decode_group(group: EntropyGroup) -> list[np.ndarray]:
    """Rebuild every tensor's int32 codes (original shapes), exactly as the ONNX chain does."""
    m = group.meta
    f = _side_fields(group)
    max_len, lanes, steps, nbytes = m["L"], m["lanes"], m["steps"], m["nbytes"]
    chunk, window = m["chunk"], m["window"]
    len_table, sym_table = _tables(f["lens"], f["syms"], max_len)
    src = _source(group.arrays["_h"], window)
    divisors = _divisors(max_len)
    ends = np.cumsum(f["seg"])
    p = np.concatenate([ends - f["seg"], 8 * (2 * nbytes + window) - ends])
    lane_base = 8 * (window - 2) * np.arange(lanes, dtype=np.int64)
    peeks = np.empty((steps, lanes), dtype=np.int64)
    for t0 in range(0, steps, chunk):
        base = p >> 3
        win = src[base[:, None] + np.arange(window)]
        words = ((win[:, :-2] << 16) + (win[:, 1:-1] << 8) + win[:, 2:]).reshape(-1)
        q = (p & 7) + lane_base
        for t in range(t0, min(t0 + chunk, steps)):
            peeks[t] = (words[q >> 3] // divisors[q & 7]) & ((1 << max_len) - 1)
            q = q + len_table[peeks[t]]
        p = q - lane_base + 8 * base
    flat = sym_table[peeks.reshape(-1)]
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
    mirrored = bld.op("Gather", [bld.const(_enc._BYTE_REVERSE, np.uint8), index])
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
    m = group.meta
    max_len, s, lanes, steps, nbytes = m["L"], m["S"], m["lanes"], m["steps"], m["nbytes"]
    chunk, window = m["chunk"], m["window"]
    bld = _Builder(prefix)
    take = _field_reader(group, _OnnxRead(bld, group))

    # decode tables from the canonical code lengths and symbols
    table = bld.stored("_t", group.arrays["_t"])
    table = table if group.arrays["_t"].dtype == np.int32 else bld.op("Cast", [table], to=TensorProto.INT32)
    lens = bld.op("Gather", [table, bld.scalar(0)])
    syms = bld.add(bld.op("Gather", [table, bld.scalar(1)]), m["a"])
    len_table, sym_table = _build_tables(bld, lens, syms, s, max_len)

    # every lane's start: forward lanes at their segment start, backward lanes where their
    # segment ends in the mirrored copy
    if m["wl"] == 0:
        seg = bld.op("Expand", [bld.scalar(m["lmin"]), bld.ints([lanes // 2])])
    else:
        seg = bld.add(take("_l", lanes // 2, m["wl"]), m["lmin"])
    ends = bld.op("CumSum", [seg, bld.scalar(0)])
    starts = bld.op("Sub", [ends, seg])
    back = bld.op("Sub", [bld.scalar(8 * (2 * nbytes + window)), ends])
    pos = bld.op("Concat", [starts, back], axis=0)

    source = _source_nodes(bld, group, window)
    matrix = _word_matrix(bld, window)
    offsets = _range(bld, 0, window, 1)
    lane_base = _range(bld, 0, 8 * (window - 2) * lanes, 8 * (window - 2))  # bit 0 of each lane's window
    first_bytes = _range(bld, 0, (window - 2) * lanes, window - 2)
    eight = bld.scalar(8)
    divisors = bld.const(_divisors(max_len), np.int32)
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
    flat = bld.op("Gather", [sym_table, peeks[0] if steps == 1 else bld.op("Concat", peeks, axis=0)])

    if m["nnz"]:
        nnz = m["nnz"]
        positions = _od._positions_from_gaps(bld, take("_g", nnz, m["g"]))
        values = _outlier_values(bld, take("_v", nnz, m["h"]), not m["raw_v"] and m["h"] > 24, m["vmin"])
        flat = bld.op("ScatterElements", [flat, positions, values], axis=0)

    sizes = list(group.sizes)
    outputs = [f"{prefix}_{k}" for k in range(len(sizes))]
    tail = lanes * steps - sum(sizes)
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


# ---------------------------------------------------------------------------------------------
# comparison with per-tensor split coding


@dataclass(frozen=True)
class GroupSizes:
    """Bytes of a group coded together versus each tensor coded alone with ``encode_split``."""

    group_stored: int
    group_graph: int
    split_stored: int
    split_graph: int
    codes: int

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
