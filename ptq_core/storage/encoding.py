"""Compact storage of quantized integer weight codes.

Weight-only quantization leaves each weight as integer codes.  An N-bit weight must cost about
N/32 of its FP32 bytes on disk, yet the exported .onnx has to run in a stock onnxruntime.  So the
codes are stored as small byte blobs that standard ONNX ops can decode from constants alone
(see ``ptq_core.storage.decode_ops``); onnxruntime folds that decode once at session creation.

Two families of encodings live here:

* ``encode_fixed``: converter_lite's ``enable_encode`` choice for fixed-bit weights (doc
  docs/converter-lite.md §11.1).  It measures three sizes with converter_lite's exact formulas (raw
  bit-packing, INDEXING, SPARSE), picks the smallest (ties: raw, then indexing, then sparse) and
  writes that stream byte for byte the way converter_lite does, so sizes match converter_lite's.
* ``encode_split``: our stand-in for converter_lite's FSE coding of mixed-bit codes (§11.3),
  which no standard ONNX op can decode.  It stores a k-bit low part for every element plus a
  sparse list of corrections for the few elements that do not fit.

Every stream is built and read with vectorized NumPy (no Python loop over elements), so tensors
of ~10M elements encode in seconds.  Nothing here imports Prefect, Dask or onnx.

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

``split`` (ours, for unbounded mixed-bit codes)
    ``arrays["stream"]``: uint8, ceil((n*k + nnz*(g + h))/8) bytes, an LSB-first stream like
    ``bitpack``: n fields(k) holding (q_i - offset) mod 2^k, then nnz fields(g) holding gap - 1 of
    each correction entry (gap = distance to the previous entry, -1 before the first), then the
    corrections c = hi - corr_min, where hi = floor((q_i - offset) / 2^k): nnz fields(min(h, 16))
    holding c mod 2^16, then, only when h > 16, nnz fields(h - 16) holding c >> 16 (the split keeps
    every field decodable in int32 even for int32-wide codes).  Every element whose hi is not 0
    has an entry; when a gap would exceed 2^g a filler entry with hi = 0 is inserted 2^g after
    the previous one.  Decoding: q_i = offset + low_i + 2^k * hi_i.  The offset is chosen so that
    offset + 2^k - 1 fits in int32.  With no outliers this is plain bit-packing at width k.
    ``meta`` holds k, offset, nnz, g ("gap_bits"), h ("corr_bits") and corr_min.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "KINDS",
    "MAX_FIELD_BITS",
    "EncodedTensor",
    "decode",
    "effective_bits",
    "encode_fixed",
    "encode_kind",
    "encode_split",
    "fixed_sizes",
    "split_correction_bits",
]

KINDS = ("raw", "bitpack", "index", "sparse", "split")

# Widest packed field any stream may hold (other than the SPARSE header).  A field of w bits at any
# bit phase spans ceil((7 + w) / 8) bytes; the ONNX decoder reads at most a 4-byte window, so
# w <= 25.
MAX_FIELD_BITS = 25

_SPARSE_COORD_BITS = range(2, 11)  # converter_lite's search range for the coordinate width k
_SPARSE_HEADER_BITS = 8 + 32  # field(8) k + field(32) nnz
_SPLIT_LOW_BITS = range(1, 17)
_SPLIT_CORR_LOW_BITS = 16  # split corrections wider than this into two fields
_INT32_MAX = int(np.iinfo(np.int32).max)
_BYTE_REVERSE = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)
_BINCOUNT_MAX_SPAN = 1 << 22  # counting distinct values by bincount beats sorting below this span
_COUNT_CHUNK = 1 << 18  # codes widened to int64 at a time while counting or packing


@dataclass(frozen=True, eq=False)
class EncodedTensor:
    """Stored form of one integer code tensor.

    ``arrays`` is exactly what gets written as initializers; ``meta`` holds the few small ints the
    ONNX decoder needs to lay out its graph (they end up as graph constants).  ``eq=False``
    because the arrays make field-wise equality ambiguous; compare ``decode`` results instead.
    """

    kind: str
    bits: int
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]
    meta: dict[str, int]

    @property
    def nbytes(self) -> int:
        """Total bytes of ``arrays`` as stored."""
        return int(sum(int(a.nbytes) for a in self.arrays.values()))

    @property
    def size(self) -> int:
        """Number of code elements."""
        return int(np.prod(self.shape, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# bit streams


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _bit_length(x: int) -> int:
    """Bits needed for the unsigned value x (0 for 0)."""
    return int(x).bit_length()


def _reverse_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Mirror the low ``width`` bits of each value.

    An MSB-first stream equals an LSB-first stream of mirrored fields whose bytes are then
    mirrored, so one packer and one reader serve both bit orders.
    """
    v = values.astype(np.uint64, copy=False)
    out = np.zeros(v.shape, dtype=np.uint64)
    for j in range(width):
        out |= ((v >> np.uint64(j)) & np.uint64(1)) << np.uint64(width - 1 - j)
    return out


def _pack_lsb(values: np.ndarray, width: int, offset: int = 0) -> np.ndarray:
    """Pack unsigned ``values + offset`` as ``width``-bit fields, LSB first, into ceil(m*width/8) bytes.

    8 consecutive fields fill exactly ``width`` bytes, so the work runs over groups of 8 with
    8 * (<= 5) vector operations, a chunk of groups at a time: memory stays near the output size
    even for narrow codes of a large tensor.
    """
    m = values.size
    groups = _ceil_div(m, 8)
    out = np.zeros((groups, width), dtype=np.uint8)
    step = _COUNT_CHUNK // 8
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        part = values[g0 * 8 : g1 * 8]
        v = np.zeros((g1 - g0) * 8, dtype=np.uint64)
        v[: part.size] = part.astype(np.int64) + offset if offset else part
        v = v.reshape(g1 - g0, 8)
        block = out[g0:g1]
        for j in range(8):
            first, shift = divmod(j * width, 8)
            x = v[:, j] << np.uint64(shift)
            for t in range(_ceil_div(shift + width, 8)):
                block[:, first + t] |= ((x >> np.uint64(8 * t)) & np.uint64(0xFF)).astype(np.uint8)
    return out.reshape(-1)[: _ceil_div(m * width, 8)]


def _or_at_bit(out: np.ndarray, bit_offset: int, packed: np.ndarray) -> None:
    """OR an LSB-first byte string into ``out`` starting at an arbitrary bit offset."""
    byte, r = divmod(bit_offset, 8)
    if r == 0:
        out[byte : byte + packed.size] |= packed
        return
    wide = packed.astype(np.uint16) << np.uint16(r)
    out[byte : byte + packed.size] |= (wide & np.uint16(0xFF)).astype(np.uint8)
    out[byte + 1 : byte + 1 + packed.size] |= (wide >> np.uint16(8)).astype(np.uint8)


def _bitstream(segments: list[tuple[np.ndarray, int]], msb_first: bool) -> np.ndarray:
    """Concatenate segments of fixed-width unsigned fields into one byte-padded stream.

    Each segment is (values, width); values must lie in [0, 2^width).
    """
    total = sum(int(v.size) * w for v, w in segments)
    out = np.zeros(_ceil_div(total, 8) + 2, dtype=np.uint8)
    offset = 0
    for values, width in segments:
        if values.size == 0 or width == 0:
            continue
        vals = np.asarray(values).reshape(-1).astype(np.uint64)
        if int(vals.max()) >> width:
            raise AssertionError(f"field value does not fit in {width} bits")
        if msb_first:
            vals = _reverse_bits(vals, width)
        _or_at_bit(out, offset, _pack_lsb(vals, width))
        offset += int(values.size) * width
    out = out[: _ceil_div(total, 8)]
    return _BYTE_REVERSE[out] if msb_first else out


def _read_fields(stream: np.ndarray, bit_offset: int, count: int, width: int, msb_first: bool) -> np.ndarray:
    """Read ``count`` unsigned ``width``-bit fields (width <= MAX_FIELD_BITS) as int64."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    if width > MAX_FIELD_BITS:
        raise ValueError(f"field width {width} exceeds {MAX_FIELD_BITS}")
    src = _BYTE_REVERSE[stream] if msb_first else stream
    padded = np.concatenate([src, np.zeros(4, dtype=np.uint8)]).astype(np.uint64)
    pos = bit_offset + np.arange(count, dtype=np.int64) * width
    byte = pos >> 3
    word = padded[byte]
    for t in range(1, 4):
        word |= padded[byte + t] << np.uint64(8 * t)
    vals = (word >> (pos & 7).astype(np.uint64)) & np.uint64((1 << width) - 1)
    if msb_first:
        vals = _reverse_bits(vals, width)
    return vals.astype(np.int64)


def _read_uint(stream: np.ndarray, bit_offset: int, width: int, msb_first: bool) -> int:
    """Read one header field of any width (the SPARSE nnz is 32 bits wide)."""
    value = 0
    done = 0
    while done < width:
        part = min(16, width - done)
        chunk = int(_read_fields(stream, bit_offset + done, 1, part, msb_first)[0])
        if msb_first:
            value = (value << part) | chunk
        else:
            value |= chunk << done
        done += part
    return value


# ---------------------------------------------------------------------------------------------
# input checks and statistics


def _as_codes(q: np.ndarray, name: str = "q") -> np.ndarray:
    arr = np.asarray(q)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer codes, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; there is nothing to encode")
    return arr


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
        return _bit_length(self.u - 1)

    def ranks(self, codes: np.ndarray) -> np.ndarray:
        """The rank (int64) of every element of ``codes`` among the sorted values."""
        return self.rank_of[codes.astype(np.int64) + self.offset]


def _distinct(flat: np.ndarray, bits: int) -> _Distinct:
    """Distinct values by counting over the 2^b possible codes: O(n), no sort, and one chunk of
    ``_COUNT_CHUNK`` codes widened to int64 at a time (not the whole tensor)."""
    off = 1 << (bits - 1)
    counts = np.zeros(1 << bits, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        counts += np.bincount(flat[start : start + _COUNT_CHUNK].astype(np.int64) + off, minlength=1 << bits)
    present = counts > 0
    rank_of = np.cumsum(present) - 1
    return _Distinct(np.flatnonzero(present).astype(np.int64) - off, rank_of.astype(np.int64), off)


def _gap_entries(positions: np.ndarray, width: int, n_tail: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Gap-code sorted positions with filler entries for long gaps.

    Returns (stored fields = gap - 1, entry index of each real position).  A filler entry is
    emitted wherever the distance to the previous entry reaches 2^width.  If ``n_tail`` is given,
    fillers also continue through the tail up to element n_tail - 1 (converter_lite's SPARSE
    does this; the split coding does not need it).
    """
    span = 1 << width
    prev = np.concatenate([[-1], positions[:-1]]).astype(np.int64)
    gaps = positions.astype(np.int64) - prev
    per_gap = (gaps + span - 1) >> width
    ends = np.cumsum(per_gap) - 1
    body = int(ends[-1]) + 1 if ends.size else 0
    last = int(positions[-1]) if positions.size else -1
    tail = ((n_tail - 1 - last) >> width) if n_tail is not None else 0
    stored = np.full(body + tail, span - 1, dtype=np.int64)
    stored[ends] = gaps - (per_gap - 1) * span - 1
    return stored, ends


def _entry_count(gaps: np.ndarray, width: int) -> int:
    """Number of entries _gap_entries emits for these gaps (without tail)."""
    return int(((gaps + (1 << width) - 1) >> width).sum())


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
        nnz = _entry_count(gaps, k) + ((n - 1 - last) >> k)
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
    lower = _ceil_div(_SPARSE_HEADER_BITS + bits + bits * dist.u + (dist.ub + min(_SPARSE_COORD_BITS)) * differing, 8)
    return lower >= min(_ceil_div(bits * n, 8), _ceil_div(bits + bits * dist.u + dist.ub * n, 8))


def _fixed_bit_sizes(n: int, bits: int, dist: _Distinct, plan: _SparsePlan) -> dict[str, int]:
    u, ub = dist.u, dist.ub
    return {
        "raw": _ceil_div(bits * n, 8),
        "index": _ceil_div(bits + bits * u + ub * n, 8),
        "sparse": _ceil_div(_SPARSE_HEADER_BITS + bits + bits * u + ub * plan.nnz + plan.coord_bits * plan.nnz, 8),
    }


def fixed_sizes(q: np.ndarray, bits: int, zero_points: np.ndarray) -> dict[str, int]:
    """converter_lite's three candidate sizes in bytes (§11.1) plus what they were derived from.

    Keys: raw, index, sparse (bytes), unique (u), index_bits (ub), coord_bits (k), nnz.
    """
    bits = _check_bits(bits)
    flat = _as_codes(q).reshape(-1).astype(np.int64)
    _check_range(flat, bits)
    zp = _check_zero_points(zero_points, flat.size)
    dist = _distinct(flat, bits)
    plan = _sparse_plan(flat, zp, dist.ub)
    sizes = _fixed_bit_sizes(flat.size, bits, dist, plan)
    sizes.update(unique=dist.u, index_bits=dist.ub, coord_bits=plan.coord_bits, nnz=plan.nnz)
    return sizes


# ---------------------------------------------------------------------------------------------
# fixed-bit writers


def _encode_raw(arr: np.ndarray, bits: int) -> EncodedTensor:
    if bits not in (8, 16):
        raise ValueError(f"raw storage needs 8 or 16 bits, got {bits}")
    dtype = np.int8 if bits == 8 else np.int16
    data = np.ascontiguousarray(arr.astype(dtype))
    return EncodedTensor("raw", bits, tuple(arr.shape), {"data": data}, {"n": int(arr.size)})


def _encode_bitpack(arr: np.ndarray, flat: np.ndarray, bits: int) -> EncodedTensor:
    packed = _pack_lsb(flat, bits, offset=1 << (bits - 1))
    return EncodedTensor("bitpack", bits, tuple(arr.shape), {"packed": packed}, {"n": int(flat.size)})


def _table_segments(dist: _Distinct, bits: int) -> list[tuple[np.ndarray, int]]:
    """field(b) u mod 2^b, then the sorted values as field(b) v + 2^(b-1)."""
    count = np.array([dist.u % (1 << bits)], dtype=np.int64)
    return [(count, bits), (dist.values + (1 << (bits - 1)), bits)]


def _encode_index(arr: np.ndarray, flat: np.ndarray, bits: int, dist: _Distinct) -> EncodedTensor:
    stream = _bitstream(_table_segments(dist, bits) + [(dist.ranks(flat), dist.ub)], msb_first=True)
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
    coords, _ = _gap_entries(plan.positions, k, n_tail=n)
    kept = np.cumsum(coords + 1) - 1
    header = [(np.array([k], dtype=np.int64), 8), (np.array([plan.nnz], dtype=np.int64), 32)]
    segments = header + _table_segments(dist, bits) + [(dist.ranks(flat[kept]), dist.ub), (coords, k)]
    stream = _bitstream(segments, msb_first=True)
    meta = {"n": int(n), "u": dist.u, "ub": dist.ub, "k": k, "nnz": int(plan.nnz)}
    arrays = {"stream": stream, "zero_points": _zero_point_table(zp)}
    return EncodedTensor("sparse", bits, tuple(arr.shape), arrays, meta)


def encode_kind(q: np.ndarray, bits: int, zero_points: np.ndarray | None = None, *, kind: str) -> EncodedTensor:
    """Encode fixed-bit codes with one given kind ("raw", "bitpack", "index" or "sparse").

    ``encode_fixed`` chooses the kind; this entry point exists so callers (and tests) can force
    one, e.g. to compare layouts.  ``zero_points`` is only used by "sparse" (default: one 0).
    """
    bits = _check_bits(bits)
    arr = _as_codes(q)
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
    arr = _as_codes(q)
    flat = arr.reshape(-1)  # kept in its own (narrow) type: the helpers widen a chunk at a time
    _check_range(flat, bits)
    zp = _check_zero_points(zero_points, flat.size)
    if not enable_encode:
        if bits not in (8, 16):
            raise ValueError(f"enable_encode=false stores raw int8/int16 only; bits must be 8 or 16, got {bits}")
        return _encode_raw(arr, bits)
    dist = _distinct(flat, bits)
    if _sparse_cannot_win(flat, bits, zp, dist):  # skips the position arrays (8 bytes per element)
        sizes = {"raw": _ceil_div(bits * flat.size, 8), "index": _ceil_div(bits + bits * dist.u + dist.ub * flat.size, 8)}
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


# ---------------------------------------------------------------------------------------------
# split coding (mixed-bit codes)


@dataclass(frozen=True)
class _SplitPlan:
    low_bits: int
    offset: int
    positions: np.ndarray  # elements whose hi part is not 0
    hi: np.ndarray  # their hi parts
    gap_bits: int
    corr_bits: int
    corr_min: int
    nnz: int

    def stream_bits(self, n: int) -> int:
        return n * self.low_bits + self.nnz * (self.gap_bits + self.corr_bits)


def _value_counts(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts (bincount for narrow spans, sort otherwise)."""
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < _BINCOUNT_MAX_SPAN:
        counts = np.bincount(flat - lo)
        present = np.flatnonzero(counts)
        return present.astype(np.int64) + lo, counts[present].astype(np.int64)
    values, counts = np.unique(flat, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _best_window(values: np.ndarray, cumulative: np.ndarray, low_bits: int) -> int:
    """Start of the 2^k-wide value window holding the most elements (fewest outliers).

    The start is pulled down so the window ends inside int32 (covering no fewer elements, as no
    value lies above), which keeps offset + low in int32 for the ONNX decoder.
    """
    ends = np.searchsorted(values, values + (1 << low_bits), side="left")
    covered = cumulative[ends] - cumulative[: values.size]
    start = int(values[int(np.argmax(covered))])
    return min(start, _INT32_MAX - (1 << low_bits) + 1)


def _split_plan(flat: np.ndarray, low_bits: int, offset: int) -> _SplitPlan | None:
    """Outliers, correction width and best gap width for one low width; None if unstorable."""
    hi_all = (flat - offset) >> low_bits
    positions = np.flatnonzero(hi_all)
    if positions.size == 0:
        return _SplitPlan(low_bits, offset, positions, positions.astype(np.int64), 0, 0, 0, 0)
    hi = hi_all[positions]
    corr_min = min(int(hi.min()), 0)
    corr_bits = _bit_length(max(int(hi.max()), 0) - corr_min)
    if corr_bits > _SPLIT_CORR_LOW_BITS + MAX_FIELD_BITS:
        return None
    gaps = np.diff(positions, prepend=-1)
    best_g, best_nnz = 0, 0
    for g in range(1, min(MAX_FIELD_BITS, max(1, _bit_length(int(gaps.max()) - 1))) + 1):
        nnz = _entry_count(gaps, g)
        if best_g == 0 or nnz * (g + corr_bits) < best_nnz * (best_g + corr_bits):
            best_g, best_nnz = g, nnz
    return _SplitPlan(low_bits, offset, positions, hi, best_g, corr_bits, corr_min, best_nnz)


def _best_split_plan(flat: np.ndarray) -> _SplitPlan:
    """Scan k = 1..16, keeping the plan with the fewest stream bits.

    The low part alone costs n*k bits, so the scan stops once that exceeds the best total, or once
    a k leaves no outliers (wider k can only cost more).
    """
    n = flat.size
    values, counts = _value_counts(flat)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    best: _SplitPlan | None = None
    for k in _SPLIT_LOW_BITS:
        if best is not None and n * k >= best.stream_bits(n):
            break
        plan = _split_plan(flat, k, _best_window(values, cumulative, k))
        if plan is None:
            continue
        if best is None or plan.stream_bits(n) < best.stream_bits(n):
            best = plan
        if plan.nnz == 0:
            break
    if best is None:
        raise ValueError("no low width 1..16 can store these codes")
    return best


def _encode_split_plan(arr: np.ndarray, flat: np.ndarray, plan: _SplitPlan) -> EncodedTensor:
    k = plan.low_bits
    low = (flat - plan.offset) & ((1 << k) - 1)
    segments = [(low, k)]
    if plan.nnz:
        gaps, ends = _gap_entries(plan.positions, plan.gap_bits, n_tail=None)
        corr = np.full(gaps.size, -plan.corr_min, dtype=np.int64)
        corr[ends] = plan.hi - plan.corr_min
        low_bits, high_bits = split_correction_bits(plan.corr_bits)
        segments += [(gaps, plan.gap_bits), (corr & ((1 << low_bits) - 1), low_bits), (corr >> low_bits, high_bits)]
    stream = _bitstream(segments, msb_first=False)
    meta = {
        "n": int(flat.size),
        "k": k,
        "offset": plan.offset,
        "nnz": plan.nnz,
        "gap_bits": plan.gap_bits,
        "corr_bits": plan.corr_bits,
        "corr_min": plan.corr_min,
    }
    return EncodedTensor("split", k, tuple(arr.shape), {"stream": stream}, meta)


def split_correction_bits(corr_bits: int) -> tuple[int, int]:
    """Widths of the two correction fields of a split stream: (min(h, 16), max(h - 16, 0))."""
    return min(corr_bits, _SPLIT_CORR_LOW_BITS), max(corr_bits - _SPLIT_CORR_LOW_BITS, 0)


def _signed_width(lo: int, hi: int) -> int:
    """Smallest b with [lo, hi] inside [-2^(b-1), 2^(b-1) - 1]."""
    return max(_bit_length(-lo - 1) if lo < 0 else 0, _bit_length(hi) if hi > 0 else 0) + 1


def encode_split(q: np.ndarray) -> EncodedTensor:
    """Store unbounded signed codes (mixed-bit quantization) compactly.

    converter_lite entropy-codes these with FSE, which standard ONNX ops cannot undo.  Instead
    each tensor gets the low width k (1..16) and value window that minimize the total bytes of a
    k-bit low part plus gap-coded corrections for the outliers (layout in the module docstring).
    When the codes fit a signed 16-bit range, converter_lite's fixed kinds (bit-packing at the
    full needed width, indexing, sparse around 0) compete too; on ties those win.
    """
    arr = _as_codes(q)
    flat = arr.reshape(-1).astype(np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
        raise ValueError(f"codes span [{lo}, {hi}], outside the int32 range")
    candidates = []
    width = _signed_width(lo, hi)
    if width <= 16:
        candidates.append(encode_fixed(arr, width, np.zeros(1, dtype=np.int64)))
    candidates.append(_encode_split_plan(arr, flat, _best_split_plan(flat)))
    return min(candidates, key=lambda enc: enc.nbytes)


# ---------------------------------------------------------------------------------------------
# decoding


def _read_table(stream: np.ndarray, bits: int, offset: int) -> tuple[np.ndarray, int]:
    """Read (u, sorted values) at ``offset``; returns the values and the offset after them."""
    u = _read_uint(stream, offset, bits, msb_first=True) or (1 << bits)
    values = _read_fields(stream, offset + bits, u, bits, msb_first=True) - (1 << (bits - 1))
    return values, offset + bits + bits * u


def _decode_index(enc: EncodedTensor) -> np.ndarray:
    stream, n = enc.arrays["stream"], enc.size
    values, offset = _read_table(stream, enc.bits, 0)
    ub = _bit_length(values.size - 1)
    return values[_read_fields(stream, offset, n, ub, msb_first=True)]


def _decode_sparse(enc: EncodedTensor) -> np.ndarray:
    stream, n, bits = enc.arrays["stream"], enc.size, enc.bits
    k = _read_uint(stream, 0, 8, msb_first=True)
    nnz = _read_uint(stream, 8, 32, msb_first=True)
    values, offset = _read_table(stream, bits, _SPARSE_HEADER_BITS)
    ub = _bit_length(values.size - 1)
    ranks = _read_fields(stream, offset, nnz, ub, msb_first=True)
    coords = _read_fields(stream, offset + ub * nnz, nnz, k, msb_first=True)
    zp = enc.arrays["zero_points"].astype(np.int64)
    out = np.repeat(zp, n // zp.size)
    out[np.cumsum(coords + 1) - 1] = values[ranks]
    return out


def _decode_split(enc: EncodedTensor) -> np.ndarray:
    m, stream, n = enc.meta, enc.arrays["stream"], enc.size
    k, nnz, g, h = m["k"], m["nnz"], m["gap_bits"], m["corr_bits"]
    out = _read_fields(stream, 0, n, k, msb_first=False) + m["offset"]
    if nnz:
        gaps = _read_fields(stream, n * k, nnz, g, msb_first=False) + 1
        low_bits, high_bits = split_correction_bits(h)
        at = n * k + nnz * g
        corr = _read_fields(stream, at, nnz, low_bits, msb_first=False)
        corr += _read_fields(stream, at + nnz * low_bits, nnz, high_bits, msb_first=False) << low_bits
        out[np.cumsum(gaps) - 1] += (corr + m["corr_min"]) << k
    return out


def decode(enc: EncodedTensor) -> np.ndarray:
    """Rebuild the int32 code tensor (shape ``enc.shape``): the exact inverse of ``encode_*``."""
    if enc.kind == "raw":
        flat = enc.arrays["data"].reshape(-1).astype(np.int64)
    elif enc.kind == "bitpack":
        flat = _read_fields(enc.arrays["packed"], 0, enc.size, enc.bits, msb_first=False) - (1 << (enc.bits - 1))
    elif enc.kind == "index":
        flat = _decode_index(enc)
    elif enc.kind == "sparse":
        flat = _decode_sparse(enc)
    elif enc.kind == "split":
        flat = _decode_split(enc)
    else:
        raise ValueError(f"unknown encoding kind {enc.kind!r}; expected one of {', '.join(KINDS)}")
    return flat.astype(np.int32).reshape(enc.shape)


def effective_bits(enc: EncodedTensor) -> float:
    """Stored bits per element (8 * bytes / elements)."""
    return 8.0 * enc.nbytes / enc.size
