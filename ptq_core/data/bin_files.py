"""BIN calibration files (docs/converter-lite.md §10.2): raw tensor bytes read as a model input.

The file's bytes are the tensor, unchanged (little-endian, the model input's dtype), so its size
must equal the input's byte size exactly. For 4-D inputs ``input_format`` (converter_lite's
``--inputDataFormat``) says which layout the *files* hold. The ONNX input is taken to be in
ONNX's NCHW convention: with ``input_format="NHWC"`` a file is read as ``(N, H, W, C)`` and
transposed to the model's ``(N, C, H, W)``. The default ``"NCHW"`` means the files already
hold the model's own layout, whatever it is: no transpose. Float data must be finite.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptq_core.errors import ConfigError, DataError

if TYPE_CHECKING:  # runtime imports onnx; the data path does not need it
    from ptq_core.onnxgraph.session import InputSpec

#: The layouts --inputDataFormat accepts for 4-D BIN files.
INPUT_FORMATS = ("NCHW", "NHWC")


def check_input_format(input_format: str) -> None:
    """``input_format`` (--inputDataFormat) is one of :data:`INPUT_FORMATS`, else a ConfigError."""
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"--inputDataFormat {input_format!r}: must be NHWC or NCHW")


def shape_text(shape) -> str:
    """A shape as data errors write it: ``1x3x224x224``, or ``scalar``."""
    return "x".join(str(d) for d in shape) if shape else "scalar"


def load_bin(path: Path, spec: InputSpec, input_format: str = "NCHW") -> np.ndarray:
    """One BIN file as the model input ``spec``: raw little-endian bytes, exact size, finite floats."""
    check_input_format(input_format)
    dtype = np.dtype(spec.dtype)
    shape = tuple(spec.shape)
    nhwc = input_format == "NHWC" and len(shape) == 4
    file_shape = (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape
    expected = math.prod(shape) * dtype.itemsize
    try:
        size = path.stat().st_size
        if size != expected:
            layout = f", {input_format} {shape_text(file_shape)}" if nhwc else ""
            raise DataError(
                f"{path}: {size} bytes, but model input {spec.name!r} ({shape_text(shape)} {dtype.name}{layout}) "
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
