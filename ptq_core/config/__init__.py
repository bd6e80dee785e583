"""converter_lite configuration: INI reader, schema table, typed config."""

from ptq_core.config.model import (
    AscendContext,
    CalibrationInput,
    CommonQuantParam,
    DataPreprocessParam,
    DynamicQuantParam,
    FullQuantParam,
    MixedBitWeightQuantParam,
    QuantConfig,
    TransformQuantParam,
    WeightQuantParam,
    load_config,
    parse_config,
)
from ptq_core.config.rules import check_runnable
from ptq_core.config.schema import SECTIONS, KeySpec, SectionSpec

__all__ = [
    "AscendContext", "CalibrationInput", "CommonQuantParam", "DataPreprocessParam", "DynamicQuantParam",
    "FullQuantParam", "MixedBitWeightQuantParam", "QuantConfig", "TransformQuantParam", "WeightQuantParam",
    "check_runnable", "load_config", "parse_config", "SECTIONS", "KeySpec", "SectionSpec",
]
