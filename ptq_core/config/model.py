"""The typed, validated configuration: frozen dataclasses built from the INI through the schema.

All validation happens here, before any model or data is read, so a bad config fails in
milliseconds with a message that names the file, line, section, key, value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ptq_core.config.ini import RawConfig, RawEntry, parse_ini
from ptq_core.config.rules import validate
from ptq_core.config.schema import (
    PASSTHROUGH_SECTIONS,
    SECTION_BY_NAME,
    SECTIONS,
    KeySpec,
)
from ptq_core.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class CommonQuantParam:
    quant_type: str | None = None
    bit_num: int = 8
    enable_encode: bool = True
    min_quant_weight_size: int = 0
    min_quant_weight_channel: int = 16
    skip_quant_node: tuple[str, ...] = ()
    debug_info_save_path: str = ""
    workspace: str = ""


@dataclass(frozen=True)
class MixedBitWeightQuantParam:
    init_scale: float = 0.02
    auto_tune: bool = False
    use_cv_data: bool = False
    max_iterations: int = 40


@dataclass(frozen=True)
class WeightQuantParam:
    per_channel: bool = True
    bias_correction: bool = True
    dequant_strategy: str = "DEFAULT"
    quant_strategy: str = "MAX_MIN"
    max_segments: int = 1
    update_mindir: bool = True


@dataclass(frozen=True)
class FullQuantParam:
    activation_quant_method: str = "MAX_MIN"
    bias_correction: bool = True
    per_channel: bool = True
    target_device: str = "CPU"
    smooth_alpha: float = 0.5
    enable_smooth_shift: bool = False


@dataclass(frozen=True)
class CalibrationInput:
    """One ``name:dir`` item of calibrate_path."""

    input_name: str
    directory: str


@dataclass(frozen=True)
class DataPreprocessParam:
    calibrate_path: tuple[CalibrationInput, ...] = ()
    calibrate_size: int = 0
    input_type: str | None = None
    image_to_format: str | None = None
    normalize_mean: tuple[float, ...] = ()
    normalize_std: tuple[float, ...] = ()
    resize_width: int = -1
    resize_height: int = -1
    resize_method: str | None = None
    center_crop_width: int = -1
    center_crop_height: int = -1

    @property
    def has_calibration(self) -> bool:
        """converter_lite collects files only when both calibrate_path and calibrate_size are set."""
        return bool(self.calibrate_path) and self.calibrate_size > 0


@dataclass(frozen=True)
class DynamicQuantParam:
    quant_strategy: str = "ALWC"


@dataclass(frozen=True)
class TransformQuantParam:
    export_precision_mode: str = "QUANT"


@dataclass(frozen=True)
class AscendContext:
    input_shape: str = ""
    dynamic_dims: str = ""
    provider: str = ""


@dataclass(frozen=True)
class PtqflowParam:
    latency_guard: bool = True
    max_drop: float | None = None  # FULL_QUANT: bound on 1 - mean output cosine (ptq_core.modes.full.max_drop)
    rotation_block: int = 16  # DYNAMIC_QUANT: Hadamard block on each MatMul's reduction axis (ptq_core.modes.dynamic.rotation)
    int8_form: str = "portable"  # int8 weights read by onnxruntime's u8 x s8 kernels (ptq_core.onnxgraph.cpu)
    cross_layer_equalization: str = "auto"  # FULL_QUANT per_channel=false: §8.8 (ptq_core.modes.full.equalization); auto|true|false
    group_size: int = 0  # WEIGHT_QUANT: params per group of input features (ptq_core.modes.weight.grouped); 0 = per channel


@dataclass(frozen=True)
class QuantConfig:
    """Everything the quantizer needs from the config file, typed and checked."""

    source: str = "<defaults>"
    common_quant_param: CommonQuantParam = field(default_factory=CommonQuantParam)
    mixed_bit_weight_quant_param: MixedBitWeightQuantParam = field(default_factory=MixedBitWeightQuantParam)
    weight_quant_param: WeightQuantParam = field(default_factory=WeightQuantParam)
    full_quant_param: FullQuantParam = field(default_factory=FullQuantParam)
    data_preprocess_param: DataPreprocessParam = field(default_factory=DataPreprocessParam)
    dynamic_quant_param: DynamicQuantParam = field(default_factory=DynamicQuantParam)
    transform_quant_param: TransformQuantParam = field(default_factory=TransformQuantParam)
    ascend_context: AscendContext = field(default_factory=AscendContext)
    ptqflow: PtqflowParam = field(default_factory=PtqflowParam)
    notices: tuple[str, ...] = ()
    given: tuple[str, ...] = ()  # "section.key" of every key the file sets: which defaults a flag may change

    @property
    def common(self) -> CommonQuantParam:
        return self.common_quant_param

    @property
    def mixed(self) -> MixedBitWeightQuantParam:
        return self.mixed_bit_weight_quant_param

    @property
    def weight(self) -> WeightQuantParam:
        return self.weight_quant_param

    @property
    def full(self) -> FullQuantParam:
        return self.full_quant_param

    @property
    def data(self) -> DataPreprocessParam:
        return self.data_preprocess_param

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form; notices, the set keys and the source path are left out so they do not change hashes."""
        d = asdict(self)
        d.pop("notices")
        d.pop("given")
        d.pop("source")
        return d

    def fingerprint(self) -> str:
        """Content hash of the resolved settings (used in cache keys)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **section_updates: dict[str, Any]) -> "QuantConfig":
        """A copy with some keys changed, e.g. ``cfg.replace(mixed_bit_weight_quant_param={"init_scale": 0.05})``.

        The result is validated like a parsed file, so sweeps cannot build an invalid config.
        """
        from dataclasses import replace as dc_replace

        kwargs = {}
        for section, updates in section_updates.items():
            if section not in SECTION_BY_NAME:
                raise ConfigError(f"unknown section [{section}]{did_you_mean(section, SECTION_BY_NAME)}")
            current = getattr(self, section)
            for key, value in updates.items():
                spec = SECTION_BY_NAME[section].key(key)
                if spec is None or not hasattr(current, key):
                    raise ConfigError(
                        f"[{section}] {key} is not a key of this section{did_you_mean(key, SECTION_BY_NAME[section].key_names)}"
                    )
                if spec.kind in ("int", "float"):
                    _check_range(f"[{section}] {key}={value}", spec, value)
                if spec.kind == "enum" and value not in spec.choices:
                    raise ConfigError(f"[{section}] {key}={value}: must be {spec.allowed_text()}")
            kwargs[section] = dc_replace(current, **updates)
        new = QuantConfig(**{**{f: getattr(self, f) for f in self.__dataclass_fields__}, **kwargs})
        validate(new)
        return new


# ---------------------------------------------------------------------------------------------
# value conversion

_LIST_RE = re.compile(r"^\[(.*)\]$")


def _where(raw: RawConfig, section: str, key: str, entry: RawEntry) -> str:
    return f"{raw.source}:{entry.line}: [{section}] {key}={entry.value}"


def _convert(raw: RawConfig, section: str, spec: KeySpec, entry: RawEntry) -> Any:
    """Turn one raw string into its typed value with converter_lite's converters."""
    value = entry.value
    where = _where(raw, section, spec.name, entry)
    if spec.kind == "bool":
        low = value.lower()
        if low not in ("true", "false"):
            raise ConfigError(f"{where}: must be true or false (converter_lite accepts no 1/0/yes/no)")
        return low == "true"
    if spec.kind == "int":
        if not re.fullmatch(r"[+-]?\d+", value):
            raise ConfigError(f"{where}: must be {spec.allowed_text()}")
        number = int(value)
        _check_range(where, spec, number)
        return number
    if spec.kind == "float":
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: must be {spec.allowed_text()}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: must be a finite number")
        _check_range(where, spec, number)
        return number
    if spec.kind == "enum":
        if value in spec.aliases:
            return spec.aliases[value]
        if value not in spec.choices:
            hint = did_you_mean(value, spec.choices)
            raise ConfigError(f"{where}: must be {spec.allowed_text()} (case-sensitive){hint}")
        return value
    if spec.kind == "list":
        match = _LIST_RE.match(value)
        if not match:
            raise ConfigError(f"{where}: must be {spec.allowed_text()} (with the brackets)")
        items = [p.strip(" ") for p in match.group(1).split(",")]
        try:
            numbers = tuple(float(p) for p in items if p != "" or len(items) > 1)
        except ValueError:
            raise ConfigError(f"{where}: every item must be a number, as in {spec.allowed_text()}") from None
        if any(not math.isfinite(n) for n in numbers):
            raise ConfigError(f"{where}: every item must be a finite number")
        return numbers
    if spec.kind == "path_list":
        result = []
        for item in value.split(","):
            if ":" not in item:
                raise ConfigError(f"{where}: item {item!r} has no ':'; write {spec.allowed_text()}")
            name, directory = item.rsplit(":", 1)
            if not name or not directory:
                raise ConfigError(f"{where}: item {item!r} needs both an input name and a folder: {spec.allowed_text()}")
            result.append(CalibrationInput(name, directory))
        return tuple(result)
    return value


def _check_range(where: str, spec: KeySpec, number: float) -> None:
    if spec.lo is None:
        return
    if spec.open_interval:
        ok = spec.lo < number < spec.hi
    else:
        ok = spec.lo <= number <= spec.hi
    if not ok:
        raise ConfigError(f"{where}: must be {spec.allowed_text()}")


# ---------------------------------------------------------------------------------------------
# building and validating


_DATACLASS_BY_SECTION = {
    "common_quant_param": CommonQuantParam,
    "mixed_bit_weight_quant_param": MixedBitWeightQuantParam,
    "weight_quant_param": WeightQuantParam,
    "full_quant_param": FullQuantParam,
    "data_preprocess_param": DataPreprocessParam,
    "dynamic_quant_param": DynamicQuantParam,
    "transform_quant_param": TransformQuantParam,
    "ascend_context": AscendContext,
    "ptqflow": PtqflowParam,
}


def build_config(raw: RawConfig) -> QuantConfig:
    """Type every known key, reject unknown keys in strict sections, then apply cross-key rules."""
    notices: list[str] = []
    sections: dict[str, Any] = {}
    lines: dict[tuple[str, str], int] = {}
    known_names = [s.name for s in SECTIONS]
    for section, entries in raw.sections.items():
        spec = SECTION_BY_NAME.get(section)
        if spec is None:
            if section not in PASSTHROUGH_SECTIONS and entries:
                notices.append(
                    f"{raw.source}:{raw.section_lines.get(section, 0)}: section [{section}] is not used by "
                    f"quantization and was ignored{did_you_mean(section, known_names)}"
                )
            continue
        values: dict[str, Any] = {}
        for key, entry in entries.items():
            key_spec = spec.key(key)
            if key_spec is None:
                if not spec.strict:
                    continue
                raise ConfigError(
                    f"{raw.source}:{entry.line}: [{section}] {key} is not a key of this section"
                    f"{did_you_mean(key, spec.key_names)}; allowed: {', '.join(spec.key_names)}"
                )
            values[key] = _convert(raw, section, key_spec, entry)
            lines[(section, key)] = entry.line
        if section == "common_quant_param" and "skip_quant_node" in values:
            values["skip_quant_node"] = tuple(n for n in values["skip_quant_node"].split(",") if n != "")
        sections[section] = _DATACLASS_BY_SECTION[section](**values)
    for section, key, line in raw.duplicates:
        notices.append(f"{raw.source}:{line}: [{section}] {key} is set more than once; the last value wins")
    data = sections.get("data_preprocess_param")
    if data is not None and data.calibrate_path and data.calibrate_size <= 0 and \
            sections.get("common_quant_param", CommonQuantParam()).quant_type != "FULL_QUANT":
        notices.append(
            f"{raw.source}: [data_preprocess_param] calibrate_size is not set, so calibrate_path is ignored "
            "(converter_lite needs both)"
        )
    notices.extend(_ignored_key_notices(raw.source, sections, lines))
    config = QuantConfig(source=raw.source, notices=tuple(notices), given=tuple(sorted(f"{s}.{k}" for s, k in lines)),
                         **sections)
    validate(config, raw.source, lines)
    return config


def _ignored_key_notices(source, sections: dict, lines: dict) -> list[str]:
    """Keys converter_lite reads that change nothing here, each said once, where the file sets them."""
    notes = []

    def where(section: str, key: str) -> str:
        return f"{source}:{lines.get((section, key), 0)}: [{section}] {key}"

    common = sections.get("common_quant_param")
    if common is not None and common.workspace:
        notes.append(f"{where('common_quant_param', 'workspace')}={common.workspace} is ignored: models over 2 GB "
                     "are read and written as ONNX external data, without a scratch folder")
    asc = sections.get("ascend_context")
    if asc is not None and asc.provider:
        notes.append(f"{where('ascend_context', 'provider')}={asc.provider} is ignored: the output is an ONNX model "
                     "for onnxruntime")
    if asc is not None and asc.dynamic_dims:
        choices = re.findall(r"\[([^\]]*)\]", asc.dynamic_dims)
        if len(choices) > 1 or any(sep in (choices[0] if choices else "") for sep in ("~", ",")):
            notes.append(f"{where('ascend_context', 'dynamic_dims')}={asc.dynamic_dims}: calibration uses the first "
                         "size only; the other values are ignored (the output keeps the ONNX model's own dynamic dims)")
    data = sections.get("data_preprocess_param")
    if data is not None and data.resize_method is None and (data.resize_width > 0 or data.resize_height > 0):
        keys = [k for k in ("resize_width", "resize_height") if getattr(data, k) > 0]
        notes.append(f"{where('data_preprocess_param', keys[0])}: {' and '.join(keys)} without resize_method: "
                     "converter_lite does not resize then, and neither does ptqflow (set resize_method=LINEAR, "
                     "NEAREST or CUBIC to resize)")
    return notes







def load_config(path: str | Path) -> QuantConfig:
    """Read and validate a converter_lite config file."""
    if not str(path).strip():
        raise ConfigError("--configFile is empty; give the path of a converter_lite config file")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start} is invalid)") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: contains NUL bytes; a config file is plain text")
    if text.startswith("\ufeff"):
        raise ConfigError(f"{path}: starts with a byte-order mark, which converter_lite reads as part of the first "
                          "line; save the file as UTF-8 without BOM")
    return parse_config(text, str(path))


def parse_config(text: str, source: str = "<config>") -> QuantConfig:
    return build_config(parse_ini(text, source))
