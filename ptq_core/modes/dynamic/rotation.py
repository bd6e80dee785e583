"""Block-Hadamard rotation of a MatMul's reduction axis, the data-free cure for activation outliers.

Why: per-tensor activation scales (DYNAMIC_QUANT ALWC) spend the int8 grid on the largest value of
the whole tensor. Transformers carry "massive activations": all-MiniLM-L6-v2's LayerNorm outputs
reach 28 in channel 99 of the [CLS] token while every other value stays below ~10, and its GELU
outputs reach 25 in one channel against a bulk below 5. A rotation ``X @ W = (X H)(H^T W)`` with an
orthonormal H changes nothing in exact arithmetic, but it spreads one large channel over the b
channels of its block (28 becomes about 28 / sqrt(16) = 7 for b = 16), so the quantizer sees a tensor
without the outlier. H is a Sylvester Hadamard matrix scaled by 1/sqrt(b): symmetric, its own
inverse, and for b = 4, 16, 64 every entry (+-1/2, +-1/4, +-1/8) is exact in float32. The weight
side ``H W`` is folded offline; the activation side is one small MatMul at run time on
``(-1, b)`` rows (b/K of a dense K x K rotation's cost). The same idea, with full-size Hadamard
transforms, is QuaRot's (Ashkboos et al., 2024); here blocks keep the run-time cost small.
"""

from __future__ import annotations

import numpy as np

BLOCKS = (0, 2, 4, 8, 16, 32, 64, 128, 256)  # 0: off


def hadamard(block: int) -> np.ndarray:
    """The normalized Sylvester Hadamard matrix of size ``block`` (a power of two), float64."""
    if block < 1 or block & (block - 1):
        raise ValueError(f"Hadamard block {block}: must be a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(block)


def block_for(k: int, block: int) -> int:
    """The block used on a reduction axis of length ``k``: ``block`` if it divides k, else 0 (none)."""
    return block if block > 1 and k % block == 0 else 0


def rotate_activation(x: np.ndarray, block: int) -> np.ndarray:
    """``x @ blockdiag(H, .., H)`` on the last axis (the reference for the emitted Reshape-MatMul-Reshape)."""
    h = hadamard(block)
    shape = x.shape
    return (x.reshape(-1, block).astype(np.float64) @ h).reshape(shape)


def rotate_weight(w: np.ndarray, block: int) -> np.ndarray:
    """``blockdiag(H, .., H)^T @ w`` on the reduction axis (-2), computed in float64, returned float32.

    With ``rotate_activation`` on the other operand the product is unchanged: (X H)(H^T W) = X W.
    """
    h = hadamard(block)
    k, n = w.shape[-2], w.shape[-1]
    grouped = w.astype(np.float64).reshape(w.shape[:-2] + (k // block, block, n))
    return np.einsum("ji,...gjn->...gin", h, grouped).reshape(w.shape).astype(np.float32)
