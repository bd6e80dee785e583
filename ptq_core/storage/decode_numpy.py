"""NumPy inverse of every ``EncodedTensor`` kind, the codes the ONNX decode chains must reproduce.

The weight plan reads encoded tensors back with it (to entropy-code mixed-bit codes as a group),
and the tests hold ``decode_ops``'s folded chains against it.
"""

from __future__ import annotations

import numpy as np

from ptq_core.storage.bitstream import bit_length, read_fields, read_uint
from ptq_core.storage.encoded import KINDS, EncodedTensor
from ptq_core.storage.fixed_bit import SPARSE_HEADER_BITS
from ptq_core.storage.split_coding import split_correction_bits

__all__ = ["decode"]


def _read_table(stream: np.ndarray, bits: int, offset: int) -> tuple[np.ndarray, int]:
    """Read (u, sorted values) at ``offset``; returns the values and the offset after them."""
    u = read_uint(stream, offset, bits, msb_first=True) or (1 << bits)
    values = read_fields(stream, offset + bits, u, bits, msb_first=True) - (1 << (bits - 1))
    return values, offset + bits + bits * u


def _decode_index(enc: EncodedTensor) -> np.ndarray:
    stream, n = enc.arrays["stream"], enc.size
    values, offset = _read_table(stream, enc.bits, 0)
    ub = bit_length(values.size - 1)
    return values[read_fields(stream, offset, n, ub, msb_first=True)]


def _decode_sparse(enc: EncodedTensor) -> np.ndarray:
    stream, n, bits = enc.arrays["stream"], enc.size, enc.bits
    k = read_uint(stream, 0, 8, msb_first=True)
    nnz = read_uint(stream, 8, 32, msb_first=True)
    values, offset = _read_table(stream, bits, SPARSE_HEADER_BITS)
    ub = bit_length(values.size - 1)
    ranks = read_fields(stream, offset, nnz, ub, msb_first=True)
    coords = read_fields(stream, offset + ub * nnz, nnz, k, msb_first=True)
    zp = enc.arrays["zero_points"].astype(np.int64)
    out = np.repeat(zp, n // zp.size)
    out[np.cumsum(coords + 1) - 1] = values[ranks]
    return out


def _decode_split(enc: EncodedTensor) -> np.ndarray:
    m, stream, n = enc.meta, enc.arrays["stream"], enc.size
    k, nnz, g, h = m["k"], m["nnz"], m["gap_bits"], m["corr_bits"]
    out = read_fields(stream, 0, n, k, msb_first=False) + m["offset"]
    if nnz:
        gaps = read_fields(stream, n * k, nnz, g, msb_first=False) + 1
        low_bits, high_bits = split_correction_bits(h)
        at = n * k + nnz * g
        corr = read_fields(stream, at, nnz, low_bits, msb_first=False)
        corr += read_fields(stream, at + nnz * low_bits, nnz, high_bits, msb_first=False) << low_bits
        out[np.cumsum(gaps) - 1] += (corr + m["corr_min"]) << k
    return out


def decode(enc: EncodedTensor) -> np.ndarray:
    """Rebuild the int32 code tensor (shape ``enc.shape``): the exact inverse of ``encode_*``."""
    if enc.kind == "raw":
        flat = enc.arrays["data"].reshape(-1).astype(np.int64)
    elif enc.kind == "bitpack":
        flat = read_fields(enc.arrays["packed"], 0, enc.size, enc.bits, msb_first=False) - (1 << (enc.bits - 1))
    elif enc.kind == "index":
        flat = _decode_index(enc)
    elif enc.kind == "sparse":
        flat = _decode_sparse(enc)
    elif enc.kind == "split":
        flat = _decode_split(enc)
    else:
        raise ValueError(f"unknown encoding kind {enc.kind!r}; expected one of {', '.join(KINDS)}")
    return flat.astype(np.int32).reshape(enc.shape)
