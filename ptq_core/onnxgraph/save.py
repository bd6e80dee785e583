"""Where a written model goes and how it gets there: converter_lite's output naming, and a write to a
temporary name renamed into place, so a failed run never leaves half a model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from ptq_core.errors import PtqError

TWO_GB = 2**31 - 1


def save_model_atomic(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write to a temporary name in the target folder, then rename: a crash never leaves half a model.

    Over 2 GB the weights go to ``NAME.onnx.data`` (written and renamed first); ``model`` then refers
    to that file instead of holding the data, as ``onnx.save_model`` leaves it."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PtqError(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise PtqError(f"{folder}: the output folder is not writable")
    size = model.ByteSize()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    data_name = None
    tmp_data = None
    try:
        if size > TWO_GB:
            data_name = path.name + ".data"
            fd_data, tmp_data_name = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=folder)
            os.close(fd_data)  # unique, so two runs writing one output never share a temporary file
            tmp_data = Path(tmp_data_name)
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            os.replace(tmp_data, folder / data_name)
            _relocate_external(tmp, tmp_data.name, data_name)
        else:
            with open(tmp, "wb") as fh:
                fh.write(model.SerializeToString(deterministic=True))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the model is a file like any the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if tmp_data is not None:
            tmp_data.unlink(missing_ok=True)
        raise
    return path


def output_file(output: str | Path) -> Path:
    """converter_lite's --outputFile names the model without extension; ours gets ``.onnx``."""
    path = Path(output)
    return path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")


def _relocate_external(model_path: str, old: str, new: str) -> None:
    model = onnx.load(model_path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(model_path, "wb") as fh:
        fh.write(model.SerializeToString(deterministic=True))


def _umask() -> int:
    """This process's umask. Read from /proc where it can be: the set-and-restore fallback (there is no
    getter before Python 3.13) is not safe while other threads (Dask's, a sweep's points) write files."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
