"""Calibration samples: each round's model input arrays, the digest that keys them, and their shards.

Follows converter_lite's ``[data_preprocess_param]`` (docs/converter-lite.md §10, §2.5): the files
come from :mod:`ptq_core.data.calibration_files` (§10.3) and are read by
:mod:`ptq_core.data.bin_files` (BIN, §10.2) or :mod:`ptq_core.data.image_preprocess` (IMAGE, §10.1).

Everything is deterministic: the same files and settings give the same arrays, bit for bit.
Nothing holds all samples at once: :func:`load_sample` reads one round, :func:`write_shards` writes one
content-addressed ``.npy`` per (input, sample) so tasks can pass paths instead of arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ptq_core.config.model import DataPreprocessParam, QuantConfig
from ptq_core.data.bin_files import check_input_format, load_bin
from ptq_core.data.calibration_files import (
    SECTION,
    check_inputs,
    list_calibration_files,
)
from ptq_core.data.image_preprocess import fit_image, preprocess_image
from ptq_core.errors import ConfigError, DataError
from ptq_core.files import write_atomic

if TYPE_CHECKING:  # runtime imports onnx; the data path does not need it
    from ptq_core.onnxgraph.session import InputSpec

#: Bump when the meaning of any preprocessing step changes, so old shards and digests go stale.
PREPROCESS_VERSION = 1


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


# ---------------------------------------------------------------------------------------------
# samples


def _load_one(path: Path, spec: InputSpec, p: DataPreprocessParam, input_format: str) -> np.ndarray:
    if p.input_type == "BIN":
        return load_bin(path, spec, input_format)
    if p.input_type == "IMAGE":
        return fit_image(preprocess_image(path, p), spec, path)
    raise ConfigError(f"{SECTION} input_type is {p.input_type!r}; it must be IMAGE or BIN")


def _prepared(cfg: QuantConfig, specs: list[InputSpec], input_format: str) -> dict[str, list[Path]]:
    check_input_format(input_format)
    if not cfg.data.has_calibration:
        raise DataError(
            f"{cfg.source}: {SECTION} no calibration data configured (needs calibrate_path and calibrate_size)"
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
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, arr, allow_pickle=False)

    write_atomic(path, save)


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
