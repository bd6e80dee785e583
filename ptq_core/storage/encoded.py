"""The stored form of one integer code tensor, the type every encoder returns and both decoders read.

Weight-only quantization leaves each weight as integer codes.  An N-bit weight must cost about
N/32 of its FP32 bytes on disk, yet the exported .onnx has to run in a stock onnxruntime.  So the
codes are stored as small byte blobs that standard ONNX ops can decode from constants alone
(see ``ptq_core.storage.decode_ops``); onnxruntime folds that decode once at session creation.
``fixed_bit`` writes converter_lite's fixed-bit kinds, ``split_coding`` our stand-in for its FSE
coding of mixed-bit codes, and ``decode_numpy`` reads every kind back.  Nothing here imports
Prefect, Dask or onnx.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KINDS", "EncodedTensor", "StoredArrays", "effective_bits"]

KINDS = ("raw", "bitpack", "index", "sparse", "split")


class StoredArrays:
    """The byte count of ``arrays``, the initializer payloads of every stored form.

    A plain mixin, not a dataclass, so ``EncodedTensor`` and ``EntropyGroup`` keep their own
    fields in their own order.
    """

    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Total bytes of ``arrays`` as stored."""
        return int(sum(int(a.nbytes) for a in self.arrays.values()))


@dataclass(frozen=True, eq=False)
class EncodedTensor(StoredArrays):
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
    def size(self) -> int:
        """Number of code elements."""
        return int(np.prod(self.shape, dtype=np.int64))


def effective_bits(enc: EncodedTensor) -> float:
    """Stored bits per element (8 * bytes / elements)."""
    return 8.0 * enc.nbytes / enc.size
