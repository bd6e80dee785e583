"""converter_lite's cross-key rules for a parsed config (what one key's range cannot say), and the
requirements of a run, checked before any model or data is read (docs/converter-lite.md §1-2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptq_core.errors import ConfigError

if TYPE_CHECKING:  # the dataclasses call these rules (QuantConfig.replace): no run-time import back
    from ptq_core.config.model import CommonQuantParam, DataPreprocessParam, QuantConfig


def validate(config: QuantConfig, source: str | None = None, lines: dict | None = None) -> None:
    """converter_lite's cross-key rules, in its order: preprocess, common, then ptqflow's own keys."""
    source = source or config.source
    lines = lines or {}

    def at(section: str, key: str) -> str:
        line = lines.get((section, key))
        return f"{source}:{line}: " if line else f"{source}: "

    if config.data.has_calibration:
        _check_calibration(config.data, at, source)
        if config.data.input_type == "IMAGE":
            _check_image_preprocessing(config.data, at, source)
    _check_bit_num(config.common, at)
    _check_rotation_block(config.ptqflow.rotation_block, at)


def _check_calibration(data: DataPreprocessParam, at, source: str) -> None:
    names = [c.input_name for c in data.calibrate_path]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"{at('data_preprocess_param', 'calibrate_path')}[data_preprocess_param] calibrate_path names input "
            f"{dupes[0]!r} more than once; give one folder per model input"
        )
    if data.input_type is None:
        raise ConfigError(
            f"{source}: [data_preprocess_param] input_type is not set; it must be IMAGE or BIN when calibrate_path "
            "and calibrate_size are given"
        )


def _check_image_preprocessing(data: DataPreprocessParam, at, source: str) -> None:
    for key in ("normalize_mean", "normalize_std"):
        vals = getattr(data, key)
        if vals and len(vals) not in (1, 3):
            raise ConfigError(
                f"{at('data_preprocess_param', key)}[data_preprocess_param] {key} has {len(vals)} values; "
                "give one per channel (1 for GRAY, 3 for RGB/BGR)"
            )
    if data.normalize_mean and data.normalize_std and len(data.normalize_mean) != len(data.normalize_std):
        raise ConfigError(
            f"{at('data_preprocess_param', 'normalize_std')}[data_preprocess_param] normalize_mean has "
            f"{len(data.normalize_mean)} values but normalize_std has {len(data.normalize_std)}; they must match"
        )
    if any(s == 0 for s in data.normalize_std):
        raise ConfigError(
            f"{at('data_preprocess_param', 'normalize_std')}[data_preprocess_param] normalize_std contains 0; "
            "every std must be non-zero"
        )
    if data.resize_method is not None and (data.resize_width <= 0 or data.resize_height <= 0):
        raise ConfigError(
            f"{at('data_preprocess_param', 'resize_method')}[data_preprocess_param] resize_method="
            f"{data.resize_method} needs resize_width and resize_height (each in [1, 65535])"
        )
    if (data.center_crop_width > 0) != (data.center_crop_height > 0):
        raise ConfigError(
            f"{source}: [data_preprocess_param] center crop needs both center_crop_width and center_crop_height"
        )


def _check_bit_num(common: CommonQuantParam, at) -> None:
    qt = common.quant_type
    if qt == "WEIGHT_QUANT":
        if not 0 <= common.bit_num <= 16:
            raise ConfigError(
                f"{at('common_quant_param', 'bit_num')}[common_quant_param] bit_num={common.bit_num}: "
                "WEIGHT_QUANT takes 0 (mixed bit) to 16"
            )
        if not common.enable_encode and common.bit_num not in (8, 16):
            raise ConfigError(
                f"{at('common_quant_param', 'enable_encode')}[common_quant_param] enable_encode=false: only allowed "
                f"with bit_num 8 or 16 (bit_num is {common.bit_num}); other widths must be encoded to save space"
            )
    elif qt in ("FULL_QUANT", "DYNAMIC_QUANT") and common.bit_num != 8:
        raise ConfigError(
            f"{at('common_quant_param', 'bit_num')}[common_quant_param] bit_num={common.bit_num}: {qt} supports only 8"
        )


def _check_rotation_block(block: int, at) -> None:
    if block and block & (block - 1) or block == 1:
        raise ConfigError(
            f"{at('ptqflow', 'rotation_block')}[ptqflow] rotation_block={block}: must be 0 (off) or a power of two "
            "from 2 to 256, e.g. 16"
        )


def check_runnable(config: QuantConfig) -> None:
    """Requirements of a run (not of the file's syntax), checked before any model or data is read.

    The seed's own snippets are fragments (a FULL_QUANT block without data, say), so they must
    parse; they fail here, at run time, as they do in converter_lite.
    """
    source = config.source
    qt = config.common.quant_type
    data = config.data
    if qt is None:
        raise ConfigError(
            f"{source}: [common_quant_param] quant_type is not set; set it to WEIGHT_QUANT, FULL_QUANT or "
            "DYNAMIC_QUANT"
        )
    if qt == "FULL_QUANT" and not data.calibrate_path:
        raise ConfigError(
            f"{source}: [data_preprocess_param] calibrate_path is missing: FULL_QUANT needs calibration data "
            "(calibrate_path=input_name:dir, calibrate_size=N, input_type=IMAGE|BIN)"
        )
    if qt == "FULL_QUANT" and data.calibrate_size <= 0:
        raise ConfigError(
            f"{source}: [data_preprocess_param] calibrate_size is missing: FULL_QUANT needs it in [1, 65535]"
        )
