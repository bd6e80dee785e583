"""What the calibration data settles about the model inputs before any sample is read: the layout
4-D BIN files are read in (:func:`layout_fact`), and the shapes IMAGE data fixes for dynamic inputs
(:func:`shapes_from_images`, from the image headers and the resize/crop settings)."""

from __future__ import annotations

from pathlib import Path

from ptq_core.config.model import QuantConfig
from ptq_core.data.calibration_files import SECTION, list_input_folder
from ptq_core.errors import DataError


def layout_fact(cfg: QuantConfig, model_inputs, inputs) -> str | None:
    """How 4-D BIN calibration files are read, and whether that was assumed; None when no such files.

    converter_lite's documented --inputDataFormat default is NHWC while ONNX models are NCHW, so the
    layout read is always said, and marked as assumed when the flag was absent.
    """
    if cfg.data.input_type != "BIN" or not cfg.data.has_calibration:
        return None
    ranks = {name: len(dims) for name, _, dims in model_inputs}
    names = [c.input_name for c in cfg.data.calibrate_path if ranks.get(c.input_name) == 4]
    if not names:
        return None
    text = f"BIN files of {', '.join(repr(n) for n in names)} read as {inputs.data_format}"
    if not inputs.format_given:
        text += (" (--inputDataFormat not given: NCHW assumed, as ONNX models are; converter_lite's default is "
                 "NHWC, so pass --inputDataFormat=NHWC for files written that way)")
    return text


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) as decoding will see it (EXIF rotations swap them), from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError):
        raise DataError(f"{path}: not an image Pillow can decode (input_type=IMAGE)") from None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def preprocessed_image_size(cfg: QuantConfig, files: list[Path]) -> tuple[int, int]:
    """(height, width) every image of ``files`` has after preprocessing, or a DataError naming two that differ.

    A center crop fixes it, else a resize (converter_lite resizes only with resize_method), else each
    image's own size, read from the headers.
    """
    p = cfg.data
    if p.center_crop_width > 0 and p.center_crop_height > 0:
        return p.center_crop_height, p.center_crop_width
    if p.resize_method is not None and p.resize_width > 0 and p.resize_height > 0:
        return p.resize_height, p.resize_width
    first = _image_size(files[0])
    for path in files[1:]:
        size = _image_size(path)
        if size != first:
            raise DataError(
                f"{cfg.source}: {SECTION} calibration images differ in size ({files[0].name} is {first[1]}x{first[0]}, "
                f"{path.name} is {size[1]}x{size[0]}, width x height) and nothing resizes them: set resize_method, "
                "resize_width and resize_height (or center_crop_*) so that every image has the model's input size"
            )
    return first


def shapes_from_images(cfg: QuantConfig, model_inputs, inputs):
    """``inputs`` with the shapes IMAGE calibration fixes for 4-D inputs whose dims are dynamic.

    Every preprocessed image of one input has the same size, so --inputShape is needed only when the
    data cannot decide it (BIN files, or images of different sizes with nothing to resize them).
    NCHW when the channel count fits dims[1] (ONNX's usual layout, as ``fit_image`` prefers), else NHWC.
    """
    from dataclasses import replace

    if cfg.data.input_type != "IMAGE" or not cfg.data.has_calibration:
        return inputs
    given = inputs.shape_map
    dims_of = {name: dims for name, _, dims in model_inputs}
    folders = {c.input_name: c.directory for c in cfg.data.calibrate_path}
    found = {}
    for name, dims in dims_of.items():
        if name in given or name not in folders or len(dims) != 4:
            continue
        if all(isinstance(d, int) and d > 0 for d in dims[1:]):
            continue
        channels = 1 if cfg.data.image_to_format == "GRAY" else 3
        height, width = preprocessed_image_size(cfg, list_input_folder(cfg, name, folders[name]))
        nchw = not isinstance(dims[3], int) or dims[3] != channels or dims[1] == channels
        found[name] = (1, channels, height, width) if nchw else (1, height, width, channels)
    if not found:
        return inputs
    return replace(inputs, shapes=tuple(sorted({**given, **found}.items())))
