"""converter_lite's fixed-bit weight encodings (docs/converter-lite.md §11.1), byte for byte.

``encode_fixed`` is converter_lite's ``enable_encode`` choice: it measures three sizes with
converter_lite's exact formulas (raw bit-packing, INDEXING, SPARSE), picks the smallest (ties:
raw, then indexing, then sparse) and writes that stream byte for byte the way converter_lite does,
so sizes match converter_lite's.  ``encode_kind`` forces one kind.  Fields are packed by
``bitstream``, position lists gap-coded by ``gap_coding``.

Stream layouts (n = number of elements, b = bit width, "field(w)" = a w-bit unsigned integer):

``raw`` (b = 8 or 16)
    ``arrays["data"]``: the codes as int8 / int16 with the tensor's shape.  No compression.

``bitpack`` (converter_lite's raw size for b not in {8, 16})
    ``arrays["packed"]``: uint8, ceil(b*n/8) bytes.  Element i is stored as field(b) holding
    q_i + 2^(b-1); fields are concatenated LSB first (bit j of field i is stream bit i*b + j) and
    stream bit p is bit p % 8 of byte p // 8, i.e. ``np.packbits(bits, bitorder="little")``.
    converter_lite writes uint16 words for 9..15 bits, which is the same byte sequence except that
    it may pad one more zero byte; we keep ceil(b*n/8), the size its chooser measures.

``index`` (converter_lite INDEXING)
    ``arrays["stream"]``: uint8, ceil((b + b*u + ub*n)/8) bytes, an MSB-first bit stream (stream
    bit p is bit 7 - p % 8 of byte p // 8; each field is written most significant bit first):
    field(b) u mod 2^b (u = 2^b wraps to 0), then u sorted distinct values each as field(b)
    v + 2^(b-1), then for every element field(ub) its rank among the sorted values, ub =
    ceil(log2 u) (0 when u = 1), zero padding to a byte.

``sparse`` (converter_lite SPARSE)
    ``arrays["stream"]``: uint8, ceil((8 + 32 + b + b*u + ub*nnz + k*nnz)/8) bytes, MSB-first:
    field(8) k, field(32) nnz, field(b) u mod 2^b, u sorted values as field(b) v + 2^(b-1), nnz
    fields(ub) holding the rank of each kept element's value, nnz fields(k) holding each kept
    element's coordinate, zero padding.  An element is kept when q_i differs from the zero point
    of its channel (channel = i // (n // C)) or when its distance to the previously kept element
    (-1 before the first) reaches 2^k; the stored coordinate is that distance minus 1.  k in 2..10
    minimizes nnz*(k + ub) (smallest k on ties).
    ``arrays["zero_points"]``: the zero points the decoder fills unkept elements with (int16 when
    they fit, else int32), collapsed to one entry when all channels share it.  converter_lite keeps
    these in its quant params; an ONNX file has nowhere else to take them from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_core.storage.bitstream import (
    COUNT_CHUNK,
    bit_length,
    ceil_div,
    pack_fields,
    pack_lsb,
)
from ptq_core.storage.code_arrays import as_codes
from ptq_core.storage.encoded import EncodedTensor
from ptq_core.storage.gap_coding import entry_count, gap_entries

__all__ = ["SPARSE_HEADER_BITS", "encode_fixed", "encode_kind"]

_SPARSE_COORD_BITS = range(2, 11)  # converter_lite's search range for the coordinate width k
SPARSE_HEADER_BITS = 8 + 32  # field(8) k + field(32) nnz


# ---------------------------------------------------------------------------------------------
# input checks and statistics


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 16:
        raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
    return int(bits)


def _check_range(flat: np.ndarray, bits: int) -> None:
    lo, hi = int(flat.min()), int(flat.max())
    if lo < -(1 << (bits - 1)) or hi > (1 << (bits - 1)) - 1:
        raise ValueError(
            f"codes span [{lo}, {hi}], outside the signed {bits}-bit range "
            f"[{-(1 << (bits - 1))}, {(1 << (bits - 1)) - 1}]"
        )


def _check_zero_points(zero_points: np.ndarray, n: int) -> np.ndarray:
    """Zero points as int64; integer-valued floats are accepted since quant params often hold them."""
    zp = np.asarray(zero_points)
    if zp.ndim != 1 or zp.size == 0 or not np.issubdtype(zp.dtype, np.number):
        raise ValueError(f"zero_points must be a non-empty 1-D numeric array, got shape {zp.shape} dtype {zp.dtype}")
    if not np.issubdtype(zp.dtype, np.integer) and not np.array_equal(zp, np.round(zp)):
        raise ValueError(f"zero_points must be integers, got {zp[zp != np.round(zp)][:3].tolist()}")
    if n % zp.size:
        raise ValueError(f"{zp.size} zero points do not divide {n} elements into equal channels")
    return zp.astype(np.int64)


@dataclass(frozen=True)
class _Distinct:
    """Sorted distinct values, and the rank of each possible code among them (ranks are mapped per
    element only by the encoders that store them, so choosing a kind holds no per-element array)."""

    values: np.ndarray  # int64, sorted
    rank_of: np.ndarray  # int64, rank of code c at rank_of[c + offset]
    offset: int

    @property
    def u(self) -> int:
        return int(self.values.size)

    @property
    def ub(self) -> int:
        """ceil(log2 u), 0 when u = 1, as converter_lite computes it."""
        return bit_length(self.u - 1)

    def ranks(self, codes: np.ndarray) -> np.ndarray:
        """The rank (int64) of every element of ``codes`` among the sorted values."""
        return self.rank_of[codes.astype(np.int64) + self.offset]


def _distinct(flat: np.ndarray, bits: int) -> _Distinct:
    """Distinct values by counting over the 2^b possible codes: O(n), no sort, and one chunk of
    ``COUNT_CHUNK`` codes widened to int64 at a time (not the whole tensor)."""
    off = 1 << (bits - 1)
    counts = np.zeros(1 << bits, dtype=np.int64)
    for start in range(0, flat.size, COUNT_CHUNK):
        counts += np.bincount(flat[start : start + COUNT_CHUNK].astype(np.int64) + off, minlength=1 << bits)
    present = counts > 0
    rank_of = np.cumsum(present) - 1
    return _Distinct(np.flatnonzero(present).astype(np.int64) - off, rank_of.astype(np.int64), off)


@dataclass(frozen=True)
class _SparsePlan:
    positions: np.ndarray  # elements that differ from their channel's zero point
    coord_bits: int
    nnz: int


def _sparse_plan(flat: np.ndarray, zp: np.ndarray, ub: int) -> _SparsePlan:
    """converter_lite's CalCoorBestBit: k in 2..10 minimizing nnz*(k + ub), first k on ties."""
    n = flat.size
    differs = (flat.reshape(zp.size, n // zp.size) != zp[:, None]).reshape(-1)
    positions = np.flatnonzero(differs)
    gaps = np.diff(positions, prepend=-1)
    last = int(positions[-1]) if positions.size else -1
    best: _SparsePlan | None = None
    for k in _SPARSE_COORD_BITS:
        nnz = entry_count(gaps, k) + ((n - 1 - last) >> k)
        if best is None or nnz * (k + ub) < best.nnz * (best.coord_bits + ub):
            best = _SparsePlan(positions, k, nnz)
    assert best is not None
    return best


def _sparse_cannot_win(flat: np.ndarray, bits: int, zp: np.ndarray, dist: _Distinct) -> bool:
    """True when even sparse coding's smallest possible size (every differing element one entry at the
    narrowest coordinate width) is not below raw or index coding; ties go to those, so the choice is
    the same as with the full plan, which needs several arrays of 8 bytes per element."""
    n = flat.size
    differing = int(np.count_nonzero(flat.reshape(zp.size, n // zp.size) != zp[:, None]))
    lower = ceil_div(SPARSE_HEADER_BITS + bits + bits * dist.u + (dist.ub + min(_SPARSE_COORD_BITS)) * differing, 8)
    return lower >= min(ceil_div(bits * n, 8), ceil_div(bits + bits * dist.u + dist.ub * n, 8))


def _fixed_bit_sizes(n: int, bits: int, dist: _Distinct, plan: _SparsePlan) -> dict[str, int]:
    u, ub = dist.u, dist.ub
    return {
        "raw": ceil_div(bits * n, 8),
        "index": ceil_div(bits + bits * u + ub * n, 8),
        "sparse": ceil_div(SPARSE_HEADER_BITS + bits + bits * u + ub * plan.nnz + plan.coord_bits * plan.nnz, 8),
    }


# ---------------------------------------------------------------------------------------------
# writers


def _encode_raw(arr: np.ndarray, bits: int) -> EncodedTensor:
    if bits not in (8, 16):
        raise ValueError(f"raw storage needs 8 or 16 bits, got {bits}")
    dtype = np.int8 if bits == 8 else np.int16
    data = np.ascontiguousarray(arr.astype(dtype))
    return EncodedTensor("raw", bits, tuple(arr.shape), {"data": data}, {"n": int(arr.size)})


def _encode_bitpack(arr: np.ndarray, flat: np.ndarray, bits: int) -> EncodedTensor:
    packed = pack_lsb(flat, bits, offset=1 << (bits - 1))
    return EncodedTensor("bitpack", bits, tuple(arr.shape), {"packed": packed}, {"n": int(flat.size)})


def _table_segments(dist: _Distinct, bits: int) -> list[tuple[np.ndarray, int]]:
    """field(b) u mod 2^b, then the sorted values as field(b) v + 2^(b-1)."""
    count = np.array([dist.u % (1 << bits)], dtype=np.int64)
    return [(count, bits), (dist.values + (1 << (bits - 1)), bits)]


def _encode_index(arr: np.ndarray, flat: np.ndarray, bits: int, dist: _Distinct) -> EncodedTensor:
    stream = pack_fields(_table_segments(dist, bits) + [(dist.ranks(flat), dist.ub)], msb_first=True)
    meta = {"n": int(flat.size), "u": dist.u, "ub": dist.ub}
    return EncodedTensor("index", bits, tuple(arr.shape), {"stream": stream}, meta)


def _zero_point_table(zp: np.ndarray) -> np.ndarray:
    """Zero points as stored for SPARSE: one entry if shared, int16 when that holds them."""
    table = zp[:1] if np.all(zp == zp[0]) else zp
    small = np.iinfo(np.int16)
    dtype = np.int16 if small.min <= int(table.min()) and int(table.max()) <= small.max else np.int32
    return table.astype(dtype)


def _encode_sparse(
    arr: np.ndarray, flat: np.ndarray, bits: int, zp: np.ndarray, dist: _Distinct, plan: _SparsePlan
) -> EncodedTensor:
    k, n = plan.coord_bits, flat.size
    coords, _ = gap_entries(plan.positions, k, n_tail=n)
    kept = np.cumsum(coords + 1) - 1
    header = [(np.array([k], dtype=np.int64), 8), (np.array([plan.nnz], dtype=np.int64), 32)]
    segments = header + _table_segments(dist, bits) + [(dist.ranks(flat[kept]), dist.ub), (coords, k)]
    stream = pack_fields(segments, msb_first=True)
    meta = {"n": int(n), "u": dist.u, "ub": dist.ub, "k": k, "nnz": int(plan.nnz)}
    arrays = {"stream": stream, "zero_points": _zero_point_table(zp)}
    return EncodedTensor("sparse", bits, tuple(arr.shape), arrays, meta)


def encode_kind(q: np.ndarray, bits: int, zero_points: np.ndarray | None = None, *, kind: str) -> EncodedTensor:
    """Encode fixed-bit codes with one given kind ("raw", "bitpack", "index" or "sparse").

    ``encode_fixed`` chooses the kind; this entry point exists so callers (and tests) can force
    one, e.g. to compare layouts.  ``zero_points`` is only used by "sparse" (default: one 0).
    """
    bits = _check_bits(bits)
    arr = as_codes(q)
    flat = arr.reshape(-1).astype(np.int64)
    _check_range(flat, bits)
    if kind == "raw":
        return _encode_raw(arr, bits)
    if kind == "bitpack":
        return _encode_bitpack(arr, flat, bits)
    dist = _distinct(flat, bits)
    if kind == "index":
        return _encode_index(arr, flat, bits, dist)
    if kind == "sparse":
        zp = _check_zero_points(np.zeros(1, np.int64) if zero_points is None else zero_points, flat.size)
        return _encode_sparse(arr, flat, bits, zp, dist, _sparse_plan(flat, zp, dist.ub))
    raise ValueError(f"kind must be one of raw, bitpack, index, sparse; got {kind!r}")


def encode_fixed(q: np.ndarray, bits: int, zero_points: np.ndarray, *, enable_encode: bool = True) -> EncodedTensor:
    """Store signed b-bit codes the way converter_lite does (§11.1).

    With ``enable_encode`` the three sizes are measured with converter_lite's formulas and the
    smallest wins (ties: raw, then indexing, then sparse); "raw" becomes int8/int16 storage for
    b = 8/16 and LSB-first bit-packing otherwise.  Without it only 8/16-bit raw storage exists.
    ``zero_points`` (1-D, one per contiguous channel) defines SPARSE's "zero" elements.
    """
    bits = _check_bits(bits)
    arr = as_codes(q)
    flat = arr.reshape(-1)  # kept in its own (narrow) type: the helpers widen a chunk at a time
    _check_range(flat, bits)
    zp = _check_zero_points(zero_points, flat.size)
    if not enable_encode:
        if bits not in (8, 16):
            raise ValueError(f"enable_encode=false stores raw int8/int16 only; bits must be 8 or 16, got {bits}")
        return _encode_raw(arr, bits)
    dist = _distinct(flat, bits)
    if _sparse_cannot_win(flat, bits, zp, dist):  # skips the position arrays (8 bytes per element)
        sizes = {"raw": ceil_div(bits * flat.size, 8), "index": ceil_div(bits + bits * dist.u + dist.ub * flat.size, 8)}
        plan = None
    else:
        plan = _sparse_plan(flat, zp, dist.ub)
        sizes = _fixed_bit_sizes(flat.size, bits, dist, plan)
    best = min(sizes.values())
    if sizes["raw"] == best:
        return _encode_raw(arr, bits) if bits in (8, 16) else _encode_bitpack(arr, flat, bits)
    if sizes["index"] == best:
        return _encode_index(arr, flat, bits, dist)
    return _encode_sparse(arr, flat, bits, zp, dist, plan)
