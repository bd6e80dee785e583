"""Calibration file selection (docs/converter-lite.md §10.3): which files of each input's folder feed
which round, in converter_lite's order, and whether calibrate_path names exactly the model's inputs.

Per ``name:dir`` item of calibrate_path, the folder's entries are sorted by **byte-wise** name
order (hidden files count, as in converter_lite) and the first ``calibrate_size`` are used;
round ``i`` pairs file ``i`` of every input. Relative folders are taken from the current
directory, like converter_lite. Unlike converter_lite, subfolders (and other entries that are
not readable files, e.g. broken links) are skipped with a logged warning instead of being taken
as a sample that fails to read later.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ptq_core.config.model import QuantConfig
from ptq_core.errors import DataError, did_you_mean

if TYPE_CHECKING:  # runtime imports onnx; the data path does not need it
    from ptq_core.onnxgraph.session import InputSpec

log = logging.getLogger(__name__)

#: converter_lite refuses folders with more entries than this (§10.3).
MAX_DIR_ENTRIES = 100_000
#: The config section calibration settings live in, as data errors name it.
SECTION = "[data_preprocess_param]"


def _sort_key(name: str) -> bytes:
    """converter_lite sorts std::string names, i.e. by raw bytes."""
    return os.fsencode(name)


def list_input_folder(cfg: QuantConfig, input_name: str, directory: str) -> list[Path]:
    where = f"{cfg.source}: {SECTION} calibrate_path {input_name}:{directory}"
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
    return {item.input_name: list_input_folder(cfg, item.input_name, item.directory) for item in data.calibrate_path}


def check_inputs(cfg: QuantConfig, specs: list[InputSpec]) -> None:
    """calibrate_path must name exactly the model's inputs: no unknown name, no input left out."""
    model_names = [s.name for s in specs]
    given = [c.input_name for c in cfg.data.calibrate_path]
    for name in given:
        if name not in model_names:
            raise DataError(
                f"{cfg.source}: {SECTION} calibrate_path names input {name!r}, which is not a model input"
                f"{did_you_mean(name, model_names)}; model inputs: {', '.join(model_names) or '(none)'}"
            )
    missing = [n for n in model_names if n not in given]
    if missing:
        raise DataError(
            f"{cfg.source}: {SECTION} calibrate_path has no folder for model input"
            f"{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; every model input needs "
            f"one (calibrate_path={','.join(f'{n}:dir' for n in model_names)})"
        )
