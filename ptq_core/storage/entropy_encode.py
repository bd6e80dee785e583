"""Encoding code tensors into one ``EntropyGroup`` (the format is described in ``entropy_group``).

Ties the pieces together: the Huffman code (``entropy_code``), the lane layout
(``entropy_lanes``), the codeword stream, and the side fields (segment lengths, gap-coded
outliers), each stored packed or as its own array, whichever costs fewer file bytes.
"""

from __future__ import annotations

import numpy as np

from ptq_core.storage.bitstream import bit_length, pack_fields
from ptq_core.storage.code_arrays import as_codes, value_counts
from ptq_core.storage.entropy_code import Code, plan_code
from ptq_core.storage.entropy_group import WINDOW, EntropyGroup, raw_dtype, value_layout
from ptq_core.storage.entropy_lanes import (
    choose_chunk,
    choose_steps,
    lane_grid,
    lane_layout,
    segment_lengths,
    window_bytes,
    window_fits,
)
from ptq_core.storage.gap_coding import best_gap_width, gap_entries

__all__ = ["encode_group"]

_MAX_STREAM_BITS = 2**29  # bit addresses in the doubled, padded stream stay int32


def _as_group_codes(codes: list[np.ndarray]) -> tuple[np.ndarray, tuple[tuple[int, ...], ...]]:
    if len(codes) == 0:
        raise ValueError("codes is empty: a group needs at least one tensor")
    flats, shapes = [], []
    for i, q in enumerate(codes):
        arr = as_codes(q, f"codes[{i}]")
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
    wide = words << (WINDOW - (positions & 7).astype(np.int32) - lengths)
    window = np.bincount(positions >> 3, weights=wide, minlength=nbytes).astype(np.int64)
    out = window >> 16
    out[1:] += (window[:-1] >> 8) & 0xFF
    out[2:] += window[:-2] & 0xFF
    return out.astype(np.uint8)


_PACKED_GRAPH_BYTES = 450  # about what the nodes and constants of one packed-field read cost
_RAW_GRAPH_BYTES = 40  # an extra initializer's header and its Cast


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
        dtype = raw_dtype(width)
        raw_cost = values.size * np.dtype(dtype).itemsize + _RAW_GRAPH_BYTES
        packed_cost = -(-values.size * width // 8) + _PACKED_GRAPH_BYTES * len(value_layout(width))
        self.raw[f"raw{key}"] = int(width > 0 and width <= 31 and raw_cost <= packed_cost)
        if width == 0:
            return
        if self.raw[f"raw{key}"]:
            self.arrays[key] = values.astype(dtype)
            return
        for w, shift in value_layout(width):
            self.packed.append(((values >> shift) & ((1 << w) - 1), w))


def _ranks(flat: np.ndarray, code: Code) -> tuple[np.ndarray, np.ndarray]:
    """Canonical rank of every element and the outlier mask (outliers get rank 0)."""
    lo_val, hi_val = int(code.values.min()), int(code.values.max())
    lut = np.full(hi_val - lo_val + 1, -1, dtype=np.int32)
    lut[code.values - lo_val] = np.arange(code.values.size, dtype=np.int32)
    rank = lut[np.clip(flat, lo_val, hi_val) - lo_val]
    outlier = (flat < lo_val) | (flat > hi_val) | (rank < 0)
    rank[outlier] = 0
    return rank, outlier


def _lane_words(code: Code, rank: np.ndarray, lanes: int, steps: int) -> np.ndarray:
    """The codeword of every symbol, in input order; backward lanes get the bit-mirrored ones."""
    n = rank.size
    rank_grid = np.zeros(lanes * steps, dtype=np.int32)
    rank_grid[:n] = rank
    rank_grid = rank_grid.reshape(steps, lanes)
    rank_grid[:, lanes // 2 :] += int(code.values.size)
    words_of = np.concatenate([code.codewords, _reverse_low_bits(code.codewords, code.lengths)]).astype(np.int32)
    return words_of[rank_grid.reshape(-1)[:n]]


def _write_lanes(
    code: Code, rank: np.ndarray, grid: np.ndarray, seg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(Huffman stream, every lane's bit position before each step as the decoder sees it, bytes).

    Forward lanes write their codewords from their segment start, backward lanes mirrored from
    their segment end.  The decoder reads backward lanes in the mirrored copy, which starts a
    whole number of bytes on, so the windows do not depend on where.
    """
    steps, lanes = grid.shape
    half = lanes // 2
    n = rank.size
    within = np.cumsum(grid, axis=0, dtype=np.int32)
    within -= grid  # bit offset of each symbol inside its lane
    seg_end = np.cumsum(seg)
    seg_start = seg_end - seg
    nbytes = -(-int(seg_end[-1]) // 8)
    pos = np.empty((steps, lanes), dtype=np.int64)
    pos[:, :half] = seg_start + within[:, :half]
    pos[:, half:] = seg_end - within[:, half:] - grid[:, half:]
    words = _lane_words(code, rank, lanes, steps)
    stream = _pack_codewords(pos.reshape(-1)[:n], words, grid.reshape(-1)[:n], nbytes)
    del words
    pos[:, :half] = seg_start + within[:, :half]
    pos[:, half:] = (8 * nbytes - seg_end) + within[:, half:]
    return stream, pos, nbytes


def _chunk_and_window(
    pos: np.ndarray, nbytes: int, max_len: int, prefix_len: int, chunk: int | None
) -> tuple[int, int]:
    """(steps per chunk, window bytes): the cheapest, or the given chunk with the window it needs."""
    if chunk is None:
        return choose_chunk(pos, nbytes, max_len, prefix_len)
    steps, lanes = pos.shape
    chunk = max(1, min(int(chunk), steps))
    window = window_bytes(pos, chunk)
    if not window_fits(lanes, window):
        raise ValueError(f"chunk {chunk} needs {window}-byte windows for {lanes} lanes: too large")
    return chunk, window


def _code_table(code: Code) -> np.ndarray:
    """[2, S]: the code lengths in canonical order and their symbols minus the smallest one."""
    offsets = code.values - int(code.values.min())
    return np.stack([code.lengths, offsets]).astype(raw_dtype(bit_length(int(offsets.max()))))


def _add_outliers(fields: _FieldWriter, flat: np.ndarray, outlier: np.ndarray, code: Code) -> dict[str, int]:
    """Add the outliers' gap and value fields; returns their meta (nothing when there are none)."""
    positions = np.flatnonzero(outlier)
    if not positions.size:
        return {}
    lo_val = int(code.values.min())
    out_vals = flat[positions]
    vmin = min(int(out_vals.min()), lo_val)
    h = max(1, bit_length(max(int(out_vals.max()), int(code.values.max())) - vmin))
    g, _ = best_gap_width(np.diff(positions, prepend=-1), h)
    gaps, _ = gap_entries(positions, g, n_tail=None)
    fields.add("_g", gaps, g)
    fields.add("_v", flat[np.cumsum(gaps + 1) - 1] - vmin, h)  # fillers store their own value
    return {"nnz": int(gaps.size), "g": g, "h": h, "vmin": vmin}


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
    values, counts = value_counts(flat)
    code = plan_code(values, counts, n).code
    rank, outlier = _ranks(flat, code)
    lens = code.lengths.astype(np.int32)[rank]
    if int(lens.sum(dtype=np.int64)) > _MAX_STREAM_BITS:
        raise ValueError("the group's stream exceeds 2^29 bits; encode its tensors in several groups")

    lanes, steps = lane_layout(n, choose_steps(lens, prefix_len) if steps is None else int(steps))
    grid = lane_grid(lens, lanes, steps)
    del lens
    seg = segment_lengths(grid)
    stream, pos, nbytes = _write_lanes(code, rank, grid, seg)
    del grid, rank
    chunk, window = _chunk_and_window(pos, nbytes, code.max_len, prefix_len, chunk)
    del pos

    lmin = int(seg.min())
    wl = bit_length(int(seg.max()) - lmin)
    fields = _FieldWriter()
    fields.add("_l", seg - lmin, wl)
    meta = {
        "n": n, "L": code.max_len, "S": int(code.values.size), "a": int(code.values.min()), "steps": steps,
        "lanes": lanes, "chunk": chunk, "window": window, "wl": wl, "lmin": lmin, "nbytes": nbytes, "nnz": 0,
        "g": 0, "h": 0, "vmin": 0,
    }  # fmt: skip
    meta.update(_add_outliers(fields, flat, outlier, code))
    meta.update(fields.raw)
    arrays = {"_h": stream, "_t": _code_table(code), **fields.arrays}
    if fields.packed:
        arrays["_s"] = pack_fields(fields.packed, msb_first=False)
    return EntropyGroup(shapes, arrays, meta)
