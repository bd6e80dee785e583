"""Reference decoders and size calculators that the storage tests hold the shipped code against.

Nothing shipped calls them: ``fixed_sizes`` recomputes converter_lite's three candidate sizes the
way ``encode_fixed`` chooses among them, and ``decode_group`` runs an entropy group's decode in
NumPy, step for step as its ONNX chain (``entropy_decode_ops.group_nodes``) does.
"""

from __future__ import annotations

import numpy as np

from ptq_core.storage.bitstream import BYTE_REVERSE, read_fields
from ptq_core.storage.code_arrays import as_codes
from ptq_core.storage.entropy_decode_ops import peek_divisors
from ptq_core.storage.entropy_group import EntropyGroup, field_reader
from ptq_core.storage.fixed_bit import (
    _check_bits,
    _check_range,
    _check_zero_points,
    _distinct,
    _fixed_bit_sizes,
    _sparse_plan,
)

__all__ = ["decode_group", "fixed_sizes"]


def fixed_sizes(q: np.ndarray, bits: int, zero_points: np.ndarray) -> dict[str, int]:
    """converter_lite's three candidate sizes in bytes (§11.1) plus what they were derived from.

    Keys: raw, index, sparse (bytes), unique (u), index_bits (ub), coord_bits (k), nnz.
    """
    bits = _check_bits(bits)
    flat = as_codes(q).reshape(-1).astype(np.int64)
    _check_range(flat, bits)
    zp = _check_zero_points(zero_points, flat.size)
    dist = _distinct(flat, bits)
    plan = _sparse_plan(flat, zp, dist.ub)
    sizes = _fixed_bit_sizes(flat.size, bits, dist, plan)
    sizes.update(unique=dist.u, index_bits=dist.ub, coord_bits=plan.coord_bits, nnz=plan.nnz)
    return sizes


class _NumpyRead:
    def __init__(self, group: EntropyGroup) -> None:
        self.arrays = group.arrays
        self.side = group.arrays.get("_s")

    def raw(self, key: str) -> np.ndarray:
        return self.arrays[key].astype(np.int64)

    def packed(self, at: int, count: int, width: int) -> np.ndarray:
        return read_fields(self.side, at, count, width, msb_first=False)

    def combine(self, parts: list[tuple[np.ndarray, int]]) -> np.ndarray:
        return sum(values << shift for values, shift in parts)


def _side_fields(group: EntropyGroup) -> dict[str, np.ndarray]:
    m = group.meta
    take = field_reader(group, _NumpyRead(group))
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
    return np.concatenate([stream.astype(np.int64), z, BYTE_REVERSE[stream[::-1]].astype(np.int64), z])


def decode_group(group: EntropyGroup) -> list[np.ndarray]:
    """Rebuild every tensor's int32 codes (original shapes), exactly as the ONNX chain does."""
    m = group.meta
    f = _side_fields(group)
    max_len, lanes, steps, nbytes = m["L"], m["lanes"], m["steps"], m["nbytes"]
    chunk, window = m["chunk"], m["window"]
    len_table, sym_table = _tables(f["lens"], f["syms"], max_len)
    src = _source(group.arrays["_h"], window)
    divisors = peek_divisors(max_len)
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
