"""Calibration data: which files feed which round, and how each becomes a model input array.

Follows converter_lite's ``[data_preprocess_param]`` (docs/converter-lite.md §10, §2.5), with a few
deliberate, documented differences where converter_lite fails late or silently:

File selection (§10.3)
    Per ``name:dir`` item of calibrate_path, the folder's entries are sorted by **byte-wise** name
    order (hidden files count, as in converter_lite) and the first ``calibrate_size`` are used;
    round ``i`` pairs file ``i`` of every input. Relative folders are taken from the current
    directory, like converter_lite. Unlike converter_lite, subfolders (and other entries that are
    not readable files, e.g. broken links) are skipped with a logged warning instead of being taken
    as a sample that fails to read later.

BIN (§10.2)
    The file's bytes are the tensor, unchanged (little-endian, the model input's dtype), so its size
    must equal the input's byte size exactly. For 4-D inputs ``input_format`` (converter_lite's
    ``--inputDataFormat``) says which layout the *files* hold. The ONNX input is taken to be in
    ONNX's NCHW convention: with ``input_format="NHWC"`` a file is read as ``(N, H, W, C)`` and
    transposed to the model's ``(N, C, H, W)``. The default ``"NCHW"`` means the files already
    hold the model's own layout, whatever it is: no transpose. Float data must be finite.

IMAGE (§10.1), in converter_lite's fixed order
    decode (8-bit, 3 channels, BGR like ``cv::imread``) → image_to_format → normalize → resize
    (only if resize_method is set) → center crop (only if both crop sizes are set) → HWC float32.
    See :func:`preprocess_image` for the details and the differences from OpenCV. The HWC result
    is then fitted to the model input (:func:`fit_image`): an NCHW input gets a transpose, which
    converter_lite does not do (it copies HWC bytes into any input of the same size).

Everything is deterministic: the same files and settings give the same arrays, bit for bit.
Nothing holds all samples at once: :func:`iter_samples` streams, :func:`write_shards` writes one
content-addressed ``.npy`` per (input, sample) so tasks can pass paths instead of arrays.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ptq_core.config.model import DataPreprocessParam, QuantConfig
from ptq_core.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:  # runtime imports onnx; the data path does not need it
    from ptq_core.onnxgraph.session import InputSpec

log = logging.getLogger(__name__)

#: converter_lite refuses folders with more entries than this (§10.3).
MAX_DIR_ENTRIES = 100_000
#: Bump when the meaning of any preprocessing step changes, so old shards and digests go stale.
PREPROCESS_VERSION = 1
INPUT_FORMATS = ("NCHW", "NHWC")

_SECTION = "[data_preprocess_param]"


# ---------------------------------------------------------------------------------------------
# file selection


def _sort_key(name: str) -> bytes:
    """converter_lite sorts std::string names, i.e. by raw bytes."""
    return os.fsencode(name)


def _list_folder(cfg: QuantConfig, input_name: str, directory: str) -> list[Path]:
    where = f"{cfg.source}: {_SECTION} calibrate_path {input_name}:{directory}"
    folder = Path(directory)
    shown = str(folder) if folder.is_absolute() else f"{folder} (= {folder.absolute()})"
    if not folder.exists():
        raise DataError(f"{where}: folder {shown} does not exist")
    if not folder.is_dir():
        raise DataError(f"{where}: {shown} is not a folder; give one folder of samples per input")
    files: list[tuple[bytes, str]] = []
    skipped: list[str] = []
    count = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                count += 1
                if count > MAX_DIR_ENTRIES:
                    raise DataError(f"{where}: more than {MAX_DIR_ENTRIES} entries in the folder (converter_lite's limit)")
                try:
                    is_file = entry.is_file()  # follows links; a broken link is not a file
                    is_dir = not is_file and entry.is_dir()
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise DataError(f"{where}: {entry.name} is a symbolic link that loops (-> "
                                        f"{os.readlink(entry.path)}); remove it or point it at a sample file") from None
                    is_file = is_dir = False
                if is_file:
                    files.append((_sort_key(entry.name), entry.name))
                else:
                    skipped.append(entry.name + ("/" if is_dir else ""))
    except PermissionError:
        raise DataError(f"{where}: folder {shown} cannot be read (permission denied)") from None
    except OSError as exc:
        raise DataError(f"{where}: folder {shown} cannot be read: {exc.strerror}") from None
    skipped.sort(key=_sort_key)
    if skipped:
        log.warning(
            "%s: skipped %d entr%s that %s not files: %s (converter_lite would count them as samples)",
            where, len(skipped), "y" if len(skipped) == 1 else "ies", "is" if len(skipped) == 1 else "are",
            ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""),
        )
    size = cfg.data.calibrate_size
    not_counted = f" ({len(skipped)} subfolders or other non-files not counted)" if skipped else ""
    if not files:
        raise DataError(f"{where}: folder {shown} has no files{not_counted}; calibrate_size is {size}")
    if len(files) < size:
        raise DataError(f"{shown}: {len(files)} files, calibrate_size is {size}{not_counted}")
    files.sort()
    return [folder / name for _, name in files[:size]]


def list_calibration_files(cfg: QuantConfig) -> dict[str, list[Path]]:
    """Per input name, the ``calibrate_size`` files of its folder that converter_lite would use, in order.

    Empty when calibration is not configured (converter_lite collects files only when both
    calibrate_path and calibrate_size are set). Whether the names are model inputs is checked by
    :func:`check_inputs`.
    """
    data = cfg.data
    if not data.has_calibration:
        return {}
    return {item.input_name: _list_folder(cfg, item.input_name, item.directory) for item in data.calibrate_path}


def check_inputs(cfg: QuantConfig, specs: list[InputSpec]) -> None:
    """calibrate_path must name exactly the model's inputs: no unknown name, no input left out."""
    model_names = [s.name for s in specs]
    given = [c.input_name for c in cfg.data.calibrate_path]
    for name in given:
        if name not in model_names:
            raise DataError(
                f"{cfg.source}: {_SECTION} calibrate_path names input {name!r}, which is not a model input"
                f"{did_you_mean(name, model_names)}; model inputs: {', '.join(model_names) or '(none)'}"
            )
    missing = [n for n in model_names if n not in given]
    if missing:
        raise DataError(
            f"{cfg.source}: {_SECTION} calibrate_path has no folder for model input"
            f"{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; every model input needs "
            f"one (calibrate_path={','.join(f'{n}:dir' for n in model_names)})"
        )


# ---------------------------------------------------------------------------------------------
# BIN


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


def _check_format(input_format: str) -> None:
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"--inputDataFormat {input_format!r}: must be NHWC or NCHW")


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def load_bin(path: Path, spec: InputSpec, input_format: str = "NCHW") -> np.ndarray:
    """One BIN file as the model input ``spec``: raw little-endian bytes, exact size, finite floats."""
    _check_format(input_format)
    dtype = np.dtype(spec.dtype)
    shape = tuple(spec.shape)
    nhwc = input_format == "NHWC" and len(shape) == 4
    file_shape = (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape
    expected = math.prod(shape) * dtype.itemsize
    try:
        size = path.stat().st_size
        if size != expected:
            layout = f", {input_format} {_shape_text(file_shape)}" if nhwc else ""
            raise DataError(
                f"{path}: {size} bytes, but model input {spec.name!r} ({_shape_text(shape)} {dtype.name}{layout}) "
                f"needs exactly {expected} bytes"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) != expected:  # changed between stat and read
        raise DataError(f"{path}: {len(raw)} bytes, but model input {spec.name!r} needs exactly {expected} bytes")
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True).reshape(file_shape)
    if np.issubdtype(dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            flat = int(np.argmin(finite.reshape(-1)))
            value = arr.reshape(-1)[flat]
            index = tuple(int(i) for i in np.unravel_index(flat, file_shape))
            raise DataError(
                f"{path}: element {flat} (index {index}) is {value}; calibration data must be finite"
            )
    if nhwc:
        arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    return arr


# ---------------------------------------------------------------------------------------------
# IMAGE


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
                f"{cfg.source}: {_SECTION} calibration images differ in size ({files[0].name} is {first[1]}x{first[0]}, "
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
        height, width = preprocessed_image_size(cfg, _list_folder(cfg, name, folders[name]))
        nchw = not isinstance(dims[3], int) or dims[3] != channels or dims[1] == channels
        found[name] = (1, channels, height, width) if nchw else (1, height, width, channels)
    if not found:
        return inputs
    return replace(inputs, shapes=tuple(sorted({**given, **found}.items())))


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
                    f"{_SECTION} {key} has {len(values)} value{'s' if len(values) != 1 else ''}, but the image has "
                    f"{channels} channel{'s' if channels != 1 else ''} after image_to_format={fmt or 'unset (BGR)'}; "
                    "give one per channel"
                )
        mean = np.asarray(p.normalize_mean or (0.0,) * channels, dtype=np.float32)
        std = np.asarray(p.normalize_std or (1.0,) * channels, dtype=np.float32)
        img = (img - mean) / std

    if p.resize_method is not None:
        if p.resize_width <= 0 or p.resize_height <= 0:
            raise ConfigError(f"{_SECTION} resize_method={p.resize_method} needs resize_width and resize_height")
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
    got = f"{path}: image preprocessed to HWC {_shape_text(hwc.shape)}"
    if len(shape) == 4:
        if shape[0] != 1:
            raise DataError(
                f"{got}, but model input {spec.name!r} has batch {shape[0]} (shape {_shape_text(shape)}); IMAGE data "
                "fills batch 1 only: preprocess the batch yourself and use input_type=BIN"
            )
        if shape[1:] == (c, h, w):
            out = hwc.transpose(2, 0, 1)[None]
        elif shape[1:] == (h, w, c):
            out = hwc[None]
        else:
            raise DataError(
                f"{got} does not fit model input {spec.name!r} of shape {_shape_text(shape)} (NCHW would need "
                f"1x{c}x{h}x{w}, NHWC 1x{h}x{w}x{c}); set resize_*/center_crop_* or image_to_format to match"
            )
    elif math.prod(shape) == hwc.size:
        out = hwc.reshape(shape)
    else:
        raise DataError(
            f"{got} ({hwc.size} values) does not fit model input {spec.name!r} of shape {_shape_text(shape)} "
            f"({math.prod(shape)} values)"
        )
    return np.ascontiguousarray(out, dtype=spec.dtype)


# ---------------------------------------------------------------------------------------------
# samples


def _load_one(path: Path, spec: InputSpec, p: DataPreprocessParam, input_format: str) -> np.ndarray:
    if p.input_type == "BIN":
        return load_bin(path, spec, input_format)
    if p.input_type == "IMAGE":
        return fit_image(preprocess_image(path, p), spec, path)
    raise ConfigError(f"{_SECTION} input_type is {p.input_type!r}; it must be IMAGE or BIN")


def _prepared(cfg: QuantConfig, specs: list[InputSpec], input_format: str) -> dict[str, list[Path]]:
    _check_format(input_format)
    if not cfg.data.has_calibration:
        raise DataError(
            f"{cfg.source}: {_SECTION} no calibration data configured (needs calibrate_path and calibrate_size)"
        )
    check_inputs(cfg, specs)
    return list_calibration_files(cfg)


def _round(files: dict[str, list[Path]], cfg: QuantConfig, specs: list[InputSpec], index: int,
           input_format: str) -> dict[str, np.ndarray]:
    return {s.name: _load_one(files[s.name][index], s, cfg.data, input_format) for s in specs}


def load_sample(cfg: QuantConfig, specs: list[InputSpec], index: int, input_format: str = "NCHW") -> dict[str, np.ndarray]:
    """The feeds of round ``index``: one array per model input, with exactly the spec's shape and dtype."""
    files = _prepared(cfg, specs, input_format)
    size = cfg.data.calibrate_size
    if not 0 <= index < size:
        raise IndexError(f"calibration round {index} does not exist; calibrate_size is {size}")
    return _round(files, cfg, specs, index, input_format)


def iter_samples(cfg: QuantConfig, specs: list[InputSpec], input_format: str = "NCHW") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(round, feeds)`` for every round in order; one round in memory at a time."""
    files = _prepared(cfg, specs, input_format)
    for i in range(cfg.data.calibrate_size):
        yield i, _round(files, cfg, specs, i, input_format)


# ---------------------------------------------------------------------------------------------
# digests and shards


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror}") from None
    return h.hexdigest()


def _settings(p: DataPreprocessParam, input_format: str) -> dict:
    """Only the settings that change the arrays, so unrelated edits keep caches valid."""
    if p.input_type == "BIN":
        return {"v": PREPROCESS_VERSION, "input_type": "BIN", "input_format": input_format}
    import PIL

    return {
        "v": PREPROCESS_VERSION,
        "input_type": p.input_type,
        "image_to_format": p.image_to_format,
        "normalize_mean": list(p.normalize_mean),
        "normalize_std": list(p.normalize_std),
        "resize": [p.resize_method, p.resize_width, p.resize_height] if p.resize_method else None,
        "crop": [p.center_crop_width, p.center_crop_height]
        if p.center_crop_width > 0 and p.center_crop_height > 0 else None,
        "pillow": PIL.__version__.split(".")[0] if p.resize_method else None,
    }


def _spec_key(spec: InputSpec) -> list:
    return [_dtype_name(spec.dtype), list(spec.shape)]


def sample_digest(cfg: QuantConfig, specs: list[InputSpec], input_format: str = "NCHW") -> str:
    """SHA-256 of the selected files' bytes (in round order, per input), the input specs and the
    preprocessing settings: equal digests mean equal arrays. File names and folders do not count,
    so a copied folder keeps its digest."""
    files = _prepared(cfg, specs, input_format)
    h = hashlib.sha256()
    h.update(json.dumps({"settings": _settings(cfg.data, input_format),
                         "inputs": [[s.name, *_spec_key(s)] for s in specs]}, sort_keys=True).encode())
    for s in specs:
        h.update(b"\x00input:" + s.name.encode())
        for path in files[s.name]:
            h.update(bytes.fromhex(_file_sha256(path)))
    return h.hexdigest()


def _shard_name(file_hash: str, spec: InputSpec, settings_text: str) -> str:
    key = hashlib.sha256(json.dumps([file_hash, _spec_key(spec), settings_text]).encode()).hexdigest()
    return f"calib-{key[:24]}.npy"


def _shard_ok(path: Path, spec: InputSpec) -> bool:
    """A present shard is reused when its header has the expected shape and dtype."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            data_bytes = path.stat().st_size - f.tell()
    except (OSError, ValueError):
        return False
    expected = np.dtype(spec.dtype)
    return (tuple(shape) == tuple(spec.shape) and dtype == expected and not fortran
            and data_bytes == math.prod(spec.shape) * expected.itemsize)


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_shards(cfg: QuantConfig, specs: list[InputSpec], out_dir: Path, input_format: str = "NCHW") -> list[Path]:
    """Preprocess every (input, round) into ``out_dir/calib-<hash>.npy``, named by the file's bytes,
    the input's shape and dtype and the preprocessing settings; a shard already there is reused.

    Returns the paths round-major: ``paths[i * len(specs) + k]`` is round ``i`` of ``specs[k]``.
    Two identical files share one shard. Files are written atomically (temp file + rename), so
    concurrent writers and interrupted runs never leave a partial shard under its final name.
    """
    files = _prepared(cfg, specs, input_format)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot create the shard folder: {exc.strerror}") from None
    settings_text = json.dumps(_settings(cfg.data, input_format), sort_keys=True)
    paths: list[Path] = []
    for i in range(cfg.data.calibrate_size):
        for spec in specs:
            source = files[spec.name][i]
            shard = out_dir / _shard_name(_file_sha256(source), spec, settings_text)
            if not _shard_ok(shard, spec):
                arr = _load_one(source, spec, cfg.data, input_format)
                try:
                    _save_atomic(shard, arr)
                except OSError as exc:
                    raise DataError(f"{shard}: cannot write calibration shard: {exc.strerror}") from None
            paths.append(shard)
    return paths


__all__ = [
    "INPUT_FORMATS", "MAX_DIR_ENTRIES", "check_inputs", "fit_image", "iter_samples", "list_calibration_files",
    "load_bin", "load_sample", "preprocess_image", "sample_digest", "write_shards",
]
