"""What an entropy-coded group of code tensors stores (``EntropyGroup``), and its side-field layout.

Mixed-bit quantization gives every tensor the same relative error, so the integer codes of all
tensors of a model follow nearly the same bell-shaped distribution.  converter_lite entropy-codes
them with FSE; we must stay with standard ONNX ops that a plain onnxruntime constant-folds at
session creation.  An entropy group codes a whole group of tensors with ONE canonical Huffman code and
decodes it with 8 small nodes per decode step, vectorized over many independent lanes.

* **Alphabet and outliers.**  The values inside a central range [a, b] (chosen to minimize the
  total size) that occur form the alphabet (S symbols).  Every other value is an *outlier*: it
  is coded as a shortest-code symbol and its exact value is restored from a sparse list
  (gap-coded positions and values, as in ``split_coding``), by one ScatterElements.
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

import numpy as np

from ptq_core.storage.encoded import StoredArrays

__all__ = ["MAX_CODE_LEN", "WINDOW", "EntropyGroup", "field_reader", "group_nbytes", "raw_dtype", "value_layout"]

MAX_CODE_LEN = 17  # r + L <= 24: a codeword at any bit phase lies in one 3-byte window
WINDOW = 24  # bits of the big-endian words a peek is cut from


@dataclass(frozen=True, eq=False)
class EntropyGroup(StoredArrays):
    """Stored form of a group of integer code tensors sharing one Huffman code.

    ``arrays`` is what gets written as initializers (see the module docstring for each key);
    ``meta`` holds the small ints the ONNX decoder lays its graph out with; ``shapes`` are the
    tensors' shapes in input order.  ``eq=False``: compare decoded codes instead.
    """

    shapes: tuple[tuple[int, ...], ...]
    arrays: dict[str, np.ndarray]
    meta: dict[str, int]

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


def value_layout(h: int) -> list[tuple[int, int]]:
    """(width, shift) of the outlier value fields: one field up to 24 bits, else 16 + the rest."""
    return [(h, 0)] if h <= 24 else [(16, 0), (h - 16, 16)]


def raw_dtype(width: int) -> type:
    return np.uint8 if width <= 8 else np.uint16 if width <= 16 else np.int32


def field_reader(group: EntropyGroup, read):
    """take(key, count, width): a side field, from its own array or the next packed fields."""
    m, at = group.meta, 0

    def take(key: str, count: int, width: int):
        nonlocal at
        if m[f"raw{key}"]:
            return read.raw(key)
        parts = []
        for w, shift in value_layout(width):
            parts.append((read.packed(at, count, w), shift))
            at += count * w
        return read.combine(parts)

    return take
