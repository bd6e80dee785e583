"""OpenCV's ``cv::resize`` on float32 images (NEAREST, LINEAR, CUBIC), in NumPy.

converter_lite resizes calibration images with ``cv::resize`` after normalization, i.e. on float32
data (docs/converter-lite.md §10.1). OpenCV does not low-pass filter when it shrinks: LINEAR reads the two
source pixels around each destination pixel's centre, however large the factor, so a photo shrunk 8x
keeps its aliasing. Pillow (and most other libraries) filter over the whole source footprint, which
gives visibly different pixels, hence different calibration statistics, than the converter_lite run
and an OpenCV deployment pipeline would see. This module reproduces OpenCV's arithmetic instead:

* coordinates: ``x_src = (x_dst + 0.5) * (src / dst) - 0.5`` computed in double and rounded to float,
  as ``resizeGeneric`` does; NEAREST uses ``floor(x_dst * src / dst)``;
* LINEAR: weights ``1 - f, f`` (float32); left of the first pixel or right of the last, the weight
  goes wholly to the edge pixel;
* CUBIC: OpenCV's kernel with ``A = -0.75`` over 4 taps, edge pixels repeated (BORDER_REPLICATE);
* separable, the horizontal pass first, then the vertical one, in float32.

Differences from OpenCV are float rounding only (OpenCV's SIMD code may fuse multiply-adds);
tests/test_resize.py compares with arrays OpenCV produced.
"""

from __future__ import annotations

import numpy as np

METHODS = ("NEAREST", "LINEAR", "CUBIC")
CUBIC_A = np.float32(-0.75)


def _centres(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer tap origin and float32 fraction of each destination pixel (OpenCV's sx, fx)."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = dsize / ssize
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    origin = np.floor(f).astype(np.int64)
    return origin, (f - origin.astype(np.float32)).astype(np.float32)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    origin, frac = _centres(src, dst)
    low = origin < 0
    frac[low], origin[low] = 0, 0
    high = origin >= src - 1
    frac[high], origin[high] = 0, src - 1
    index = np.stack([origin, np.minimum(origin + 1, src - 1)], axis=1)
    weight = np.stack([np.float32(1) - frac, frac], axis=1).astype(np.float32)
    return index, weight


def _cubic_weights(x: np.ndarray) -> np.ndarray:
    a = CUBIC_A
    one = np.float32(1)
    w0 = ((a * (x + one) - 5 * a) * (x + one) + 8 * a) * (x + one) - 4 * a
    w1 = ((a + 2) * x - (a + 3)) * x * x + one
    w2 = ((a + 2) * (one - x) - (a + 3)) * (one - x) * (one - x) + one
    w3 = one - w0 - w1 - w2
    return np.stack([w0, w1, w2, w3], axis=1).astype(np.float32)


def _cubic_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    origin, frac = _centres(src, dst)
    index = np.clip(origin[:, None] + np.arange(-1, 3)[None, :], 0, src - 1)
    return index, _cubic_weights(frac)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    scale = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * scale).astype(np.int64), src - 1)


def _apply(img: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """Sum over taps of ``img`` gathered along ``axis`` times the weights, tap by tap in float32."""
    out = None
    for t in range(index.shape[1]):
        shape = [1] * img.ndim
        shape[axis] = -1
        term = np.take(img, index[:, t], axis=axis) * weight[:, t].reshape(shape)
        out = term if out is None else out + term
    return out.astype(np.float32)


def resize(img: np.ndarray, width: int, height: int, method: str) -> np.ndarray:
    """``cv::resize(img, (width, height), interpolation=method)`` for an HWC (or HW) float32 image."""
    if method not in METHODS:
        raise ValueError(f"resize method {method!r}: must be one of {', '.join(METHODS)}")
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    if method == "NEAREST":
        return img[_nearest_index(h, height)][:, _nearest_index(w, width)].copy()
    taps = _linear_taps if method == "LINEAR" else _cubic_taps
    rows = _apply(img, *taps(w, width), axis=1)  # horizontal first, as OpenCV
    return _apply(rows, *taps(h, height), axis=0)
