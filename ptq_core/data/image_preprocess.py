"""IMAGE calibration files (docs/converter-lite.md §10.1): converter_lite's preprocessing, in its fixed order.

decode (8-bit, 3 channels, BGR like ``cv::imread``) → image_to_format → normalize → resize
(only if resize_method is set) → center crop (only if both crop sizes are set) → HWC float32.
See :func:`preprocess_image` for the details and the differences from OpenCV. The HWC result
is then fitted to the model input (:func:`fit_image`): an NCHW input gets a transpose, which
converter_lite does not do (it copies HWC bytes into any input of the same size).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptq_core.config.model import DataPreprocessParam
from ptq_core.data.bin_files import shape_text
from ptq_core.data.calibration_files import SECTION
from ptq_core.errors import ConfigError, DataError

if TYPE_CHECKING:  # runtime imports onnx; the data path does not need it
    from ptq_core.onnxgraph.session import InputSpec


def _decode_bgr(path: Path) -> np.ndarray:
    """Decode like ``cv::imread(path)``: EXIF-oriented, 8-bit, 3 channels, **BGR** order (H, W, 3 uint8)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                mode = img.mode
                if mode.startswith("I;16") or mode == "I":
                    # 16-bit grey: OpenCV keeps the high byte (value >> 8); Pillow's convert("L") would clip
                    wide = np.asarray(img).astype(np.int64)
                    grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
                    rgb = np.repeat(grey[:, :, None], 3, axis=2)
                elif mode == "F":
                    raise DataError(f"{path}: 32-bit float images are not supported as IMAGE data; convert it to BIN")
                else:
                    if mode in ("P", "PA"):
                        img = img.convert("RGBA")  # palette, possibly with transparency
                    # RGBA/LA -> RGB drops alpha without blending, like IMREAD_COLOR; 16-bit RGB(A) PNGs
                    # already decode to their high bytes
                    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombWarning as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can decode (input_type=IMAGE)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot decode image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"{path}: decoded to an unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _bgr_to_gray(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's COLOR_BGR2GRAY for 8-bit data: ITU-R 601 luma in 14-bit fixed point, rounded."""
    b, g, r = (bgr[:, :, i].astype(np.int32) for i in range(3))
    y = (b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14
    return y.astype(np.uint8)


def _resize(img: np.ndarray, width: int, height: int, method: str) -> np.ndarray:
    from ptq_core.data.resize import resize

    return resize(img, width, height, method)


def preprocess_image(path: Path, p: DataPreprocessParam) -> np.ndarray:
    """One image through converter_lite's steps, as HWC float32.

    1. Decode with Pillow like ``cv::imread``: EXIF orientation applied; palette, alpha, grey,
       1-bit and 16-bit images become 8-bit, 3 channels (alpha dropped, not blended; 16-bit keeps
       the high byte). Channel order is BGR, as OpenCV's.
    2. image_to_format: ``RGB`` swaps to RGB, ``BGR`` keeps BGR, ``GRAY`` is OpenCV's BGR2GRAY
       (ITU-R 601 luma, 8-bit rounding) with 1 channel. Unset keeps BGR, as converter_lite does.
    3. Normalize if normalize_mean or normalize_std is given: ``(x - mean_c) / std_c`` per channel,
       on 0..255 values (no /255). One list may be left out (mean 0 or std 1 is used), where
       converter_lite fails; each given list needs one value per channel.
    4. Resize to (resize_width, resize_height) only when resize_method is set, on the float image,
       with OpenCV's cv::resize arithmetic (ptq_core.data.resize: NEAREST / LINEAR / CUBIC, no low-pass
       filter when shrinking, as converter_lite does), within float rounding of OpenCV's output.
    5. Center crop when both center_crop_width and center_crop_height are set, at offsets
       ``floor((W - w) / 2)``, ``floor((H - h) / 2)``; a crop bigger than the image is an error.

    converter_lite can only copy float32 images, so it needs normalization or GRAY; here an image
    with neither is accepted too and yields float32 values 0..255.
    """
    path = Path(path)
    bgr = _decode_bgr(path)
    fmt = p.image_to_format
    if fmt == "GRAY":
        img = _bgr_to_gray(bgr)[:, :, None].astype(np.float32)
    elif fmt == "RGB":
        img = bgr[:, :, ::-1].astype(np.float32)
    else:  # BGR or unset
        img = bgr.astype(np.float32)
    channels = img.shape[2]

    if p.normalize_mean or p.normalize_std:
        for key in ("normalize_mean", "normalize_std"):
            values = getattr(p, key)
            if values and len(values) != channels:
                raise ConfigError(
                    f"{SECTION} {key} has {len(values)} value{'s' if len(values) != 1 else ''}, but the image has "
                    f"{channels} channel{'s' if channels != 1 else ''} after image_to_format={fmt or 'unset (BGR)'}; "
                    "give one per channel"
                )
        mean = np.asarray(p.normalize_mean or (0.0,) * channels, dtype=np.float32)
        std = np.asarray(p.normalize_std or (1.0,) * channels, dtype=np.float32)
        img = (img - mean) / std

    if p.resize_method is not None:
        if p.resize_width <= 0 or p.resize_height <= 0:
            raise ConfigError(f"{SECTION} resize_method={p.resize_method} needs resize_width and resize_height")
        img = _resize(img, p.resize_width, p.resize_height, p.resize_method)

    if p.center_crop_width > 0 and p.center_crop_height > 0:
        h, w = img.shape[:2]
        cw, ch = p.center_crop_width, p.center_crop_height
        if cw > w or ch > h:
            raise DataError(
                f"{path}: center crop {cw}x{ch} (width x height) is bigger than the image, which is {w}x{h}"
                f"{' after resize' if p.resize_method else ''}"
            )
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        img = img[y0:y0 + ch, x0:x0 + cw, :]

    return np.ascontiguousarray(img, dtype=np.float32)


def fit_image(hwc: np.ndarray, spec: InputSpec, path: Path | str = "<image>") -> np.ndarray:
    """Put a preprocessed HWC image into the model input's shape and dtype.

    4-D inputs need batch 1 and either NCHW ``(1, C, H, W)`` (transposed, ONNX's usual layout;
    preferred when both would fit) or NHWC ``(1, H, W, C)`` (kept). Other ranks take the HWC
    values in order when the element count matches exactly.
    """
    h, w, c = hwc.shape
    shape = tuple(spec.shape)
    got = f"{path}: image preprocessed to HWC {shape_text(hwc.shape)}"
    if len(shape) == 4:
        if shape[0] != 1:
            raise DataError(
                f"{got}, but model input {spec.name!r} has batch {shape[0]} (shape {shape_text(shape)}); IMAGE data "
                "fills batch 1 only: preprocess the batch yourself and use input_type=BIN"
            )
        if shape[1:] == (c, h, w):
            out = hwc.transpose(2, 0, 1)[None]
        elif shape[1:] == (h, w, c):
            out = hwc[None]
        else:
            raise DataError(
                f"{got} does not fit model input {spec.name!r} of shape {shape_text(shape)} (NCHW would need "
                f"1x{c}x{h}x{w}, NHWC 1x{h}x{w}x{c}); set resize_*/center_crop_* or image_to_format to match"
            )
    elif math.prod(shape) == hwc.size:
        out = hwc.reshape(shape)
    else:
        raise DataError(
            f"{got} ({hwc.size} values) does not fit model input {spec.name!r} of shape {shape_text(shape)} "
            f"({math.prod(shape)} values)"
        )
    return np.ascontiguousarray(out, dtype=spec.dtype)
