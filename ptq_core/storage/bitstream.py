"""Fixed-width unsigned fields packed into byte streams and read back, vectorized in NumPy.

Every stream we store (bit-packing, INDEXING, SPARSE, split coding, an entropy group's side
fields) is a run of fixed-width fields in LSB-first or MSB-first bit order; this is the one packer
and reader they share.  No Python loop touches single elements, so ~10M-element tensors encode in
seconds.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BYTE_REVERSE",
    "COUNT_CHUNK",
    "MAX_FIELD_BITS",
    "bit_length",
    "ceil_div",
    "pack_fields",
    "pack_lsb",
    "read_fields",
    "read_uint",
]

# Widest packed field any stream may hold (other than the SPARSE header).  A field of w bits at any
# bit phase spans ceil((7 + w) / 8) bytes; the ONNX decoder reads at most a 4-byte window, so
# w <= 25.
MAX_FIELD_BITS = 25

BYTE_REVERSE = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)
COUNT_CHUNK = 1 << 18  # codes widened to int64 at a time while counting or packing


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def bit_length(x: int) -> int:
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


def pack_lsb(values: np.ndarray, width: int, offset: int = 0) -> np.ndarray:
    """Pack unsigned ``values + offset`` as ``width``-bit fields, LSB first, into ceil(m*width/8) bytes.

    8 consecutive fields fill exactly ``width`` bytes, so the work runs over groups of 8 with
    8 * (<= 5) vector operations, a chunk of groups at a time: memory stays near the output size
    even for narrow codes of a large tensor.
    """
    m = values.size
    groups = ceil_div(m, 8)
    out = np.zeros((groups, width), dtype=np.uint8)
    step = COUNT_CHUNK // 8
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
            for t in range(ceil_div(shift + width, 8)):
                block[:, first + t] |= ((x >> np.uint64(8 * t)) & np.uint64(0xFF)).astype(np.uint8)
    return out.reshape(-1)[: ceil_div(m * width, 8)]


def _or_at_bit(out: np.ndarray, bit_offset: int, packed: np.ndarray) -> None:
    """OR an LSB-first byte string into ``out`` starting at an arbitrary bit offset."""
    byte, r = divmod(bit_offset, 8)
    if r == 0:
        out[byte : byte + packed.size] |= packed
        return
    wide = packed.astype(np.uint16) << np.uint16(r)
    out[byte : byte + packed.size] |= (wide & np.uint16(0xFF)).astype(np.uint8)
    out[byte + 1 : byte + 1 + packed.size] |= (wide >> np.uint16(8)).astype(np.uint8)


def pack_fields(segments: list[tuple[np.ndarray, int]], msb_first: bool) -> np.ndarray:
    """Concatenate segments of fixed-width unsigned fields into one byte-padded stream.

    Each segment is (values, width); values must lie in [0, 2^width).
    """
    total = sum(int(v.size) * w for v, w in segments)
    out = np.zeros(ceil_div(total, 8) + 2, dtype=np.uint8)
    offset = 0
    for values, width in segments:
        if values.size == 0 or width == 0:
            continue
        vals = np.asarray(values).reshape(-1).astype(np.uint64)
        if int(vals.max()) >> width:
            raise AssertionError(f"field value does not fit in {width} bits")
        if msb_first:
            vals = _reverse_bits(vals, width)
        _or_at_bit(out, offset, pack_lsb(vals, width))
        offset += int(values.size) * width
    out = out[: ceil_div(total, 8)]
    return BYTE_REVERSE[out] if msb_first else out


def read_fields(stream: np.ndarray, bit_offset: int, count: int, width: int, msb_first: bool) -> np.ndarray:
    """Read ``count`` unsigned ``width``-bit fields (width <= MAX_FIELD_BITS) as int64."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    if width > MAX_FIELD_BITS:
        raise ValueError(f"field width {width} exceeds {MAX_FIELD_BITS}")
    src = BYTE_REVERSE[stream] if msb_first else stream
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


def read_uint(stream: np.ndarray, bit_offset: int, width: int, msb_first: bool) -> int:
    """Read one header field of any width (the SPARSE nnz is 32 bits wide)."""
    value = 0
    done = 0
    while done < width:
        part = min(16, width - done)
        chunk = int(read_fields(stream, bit_offset + done, 1, part, msb_first)[0])
        if msb_first:
            value = (value << part) | chunk
        else:
            value |= chunk << done
        done += part
    return value
