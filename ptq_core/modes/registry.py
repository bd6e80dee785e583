"""The quantization modes, each declared once: its steps in order and what it needs.

A conversion is the same list of steps whether it runs in this process (``ptq convert --no-flow``,
``ptq_core.convert.convert_direct``) or as a Prefect flow: :func:`run_steps` walks ``Mode.steps`` and asks
an implementation for each step by name. The core's implementations (``modes/<mode>/steps.py``) pass
objects in memory; the flow's (``ptqflow.tasks``) wrap each step in a content-keyed cached task and pass
records of files. Nothing outside this registry and the config package compares ``quant_type``
strings: code asks the mode what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.modes.job import Job, Steps


@dataclass(frozen=True)
class Mode:
    """One ``quant_type``: its steps and the facts the rest of the code asks about it."""

    quant_type: str
    steps: tuple[str, ...]  # run in order; the last one leaves ``state["summary"]``
    calibrates: Callable[[QuantConfig], bool]  # reads the calibration set (a sweep shares one Dask cluster)
    max_drop: bool  # ``--max-drop`` / ``[ptqflow] max_drop`` applies
    debug_reads_plan: bool  # debug reports read the plan (weights, dynamic) rather than calibration rounds
    uses_calibration_for_reference: bool  # calibration sample 0 is the reference input, when configured
    check: Callable[[QuantConfig], QuantConfig]  # mode-specific config checks before any model is read
    prepared: Callable[[str], Any]  # the FP32 graph the mode quantizes (what debug reports compare with)
    settings: Callable[[QuantConfig], str]  # its key settings in a few words, for run names
    tags: Callable[[QuantConfig], tuple[str, ...]] = lambda cfg: ()  # dashboard tags beyond mode and model


def _check_weight(cfg: QuantConfig) -> QuantConfig:
    if cfg.weight.quant_strategy == "GPTQ":
        if not (2 <= cfg.common.bit_num <= 8 or cfg.common.bit_num == 0):
            raise ConfigError(f"{cfg.source}: [weight_quant_param] quant_strategy=GPTQ needs [common_quant_param] "
                              f"bit_num between 2 and 8, or 0 (mixed bit), got {cfg.common.bit_num}")
        if not cfg.data.has_calibration:
            raise ConfigError(f"{cfg.source}: [weight_quant_param] quant_strategy=GPTQ needs calibration data: add "
                              "[data_preprocess_param] calibrate_path, calibrate_size and input_type, as for FULL_QUANT")
    if cfg.ptqflow.group_size and not (2 <= cfg.common.bit_num <= 8 or cfg.common.bit_num == 0):
        raise ConfigError(f"{cfg.source}: [ptqflow] group_size={cfg.ptqflow.group_size} needs [common_quant_param] "
                          f"bit_num between 2 and 8, or 0 (mixed bit), got {cfg.common.bit_num}. Set group_size=0 "
                          "or another bit_num")
    if cfg.weight.dequant_strategy == "ON_THE_FLY":
        raise ConfigError(f"{cfg.source}: [weight_quant_param] dequant_strategy=ON_THE_FLY targets Ascend's runtime "
                          "and has no ONNX equivalent; remove the key")
    return cfg


def _check_full(cfg: QuantConfig) -> QuantConfig:
    from ptq_core.modes.full.targets import get_target

    get_target(cfg.full.target_device)  # unsupported targets fail before any model or data is read
    return cfg


def _check_dynamic(cfg: QuantConfig) -> QuantConfig:
    if not cfg.data.calibrate_path:
        return cfg
    return replace(cfg, notices=cfg.notices + (
        f"{cfg.source}: [data_preprocess_param] is ignored: DYNAMIC_QUANT quantizes activations at run time "
        "and needs no calibration data",))


def _prepare_plain(path: str):
    from ptq_core.onnxgraph.load import prepare_model

    return prepare_model(path)


def _prepare_full(path: str):
    from ptq_core.modes.full.prepare import prepare_full_model

    return prepare_full_model(path)


def _weight_settings(cfg: QuantConfig) -> str:
    bits = cfg.common.bit_num
    if bits == 0:
        return f"mixed bit {cfg.mixed.init_scale:g}"
    return f"{bits} bit {'pc' if cfg.weight.per_channel else 'pl'}{' GPTQ' if _gptq(cfg) else ''}"


def _full_settings(cfg: QuantConfig) -> str:
    target = "" if cfg.full.target_device == "CPU" else f" {cfg.full.target_device}"
    return f"{cfg.full.activation_quant_method} {'pc' if cfg.full.per_channel else 'pl'}{target}"


def _gptq(cfg: QuantConfig) -> bool:
    return cfg.weight.quant_strategy == "GPTQ"


WEIGHT = Mode("WEIGHT_QUANT", ("calibrate", "quantize", "emit", "summarize"), calibrates=_gptq, max_drop=False,
              debug_reads_plan=True, uses_calibration_for_reference=True, check=_check_weight,
              prepared=_prepare_plain, settings=_weight_settings)
FULL = Mode("FULL_QUANT", ("calibrate", "quantize", "emit", "summarize"), calibrates=lambda cfg: True, max_drop=True,
            debug_reads_plan=False, uses_calibration_for_reference=True, check=_check_full, prepared=_prepare_full,
            settings=_full_settings, tags=lambda cfg: (f"target:{cfg.full.target_device}",))
DYNAMIC = Mode("DYNAMIC_QUANT", ("quantize", "emit", "summarize"), calibrates=lambda cfg: False, max_drop=False,
               debug_reads_plan=True, uses_calibration_for_reference=False, check=_check_dynamic,
               prepared=_prepare_plain, settings=lambda cfg: cfg.dynamic_quant_param.quant_strategy)
MODES: dict[str, Mode] = {m.quant_type: m for m in (WEIGHT, FULL, DYNAMIC)}


def mode_of(cfg: QuantConfig) -> Mode:
    """The mode a config asks for; a quant_type the registry lacks is a one-line error."""
    mode = MODES.get(cfg.common.quant_type)
    if mode is None:
        raise ConfigError(f"{cfg.source}: [common_quant_param] quant_type={cfg.common.quant_type} is not yet supported "
                          f"by ptqflow; supported now: {', '.join(MODES)}")
    return mode


def direct_steps(mode: Mode) -> Steps:
    """The core's in-process implementation of ``mode``'s steps."""
    from ptq_core.modes.dynamic.steps import DynamicSteps
    from ptq_core.modes.full.steps import FullSteps
    from ptq_core.modes.weight.steps import WeightSteps

    return {WEIGHT: WeightSteps, FULL: FullSteps, DYNAMIC: DynamicSteps}[mode]()


def run_steps(mode: Mode, impl: Steps, job: Job, state: dict | None = None) -> dict:
    """Run ``mode``'s steps in order with ``impl``; returns the state, whose ``summary`` is the result."""
    state = dict(state or {})
    for step in mode.steps:
        state.update(getattr(impl, step)(job, state))
    return state


def run_labels(model: str, cfg: QuantConfig) -> tuple[str, tuple[str, ...]]:
    """A flow run's name and tags: what tells one run from another on the dashboard
    (``digits_cnn FULL_QUANT KL pc``; ``mode:FULL_QUANT``, ``model:digits_cnn``, ``target:CPU``)."""
    mode = mode_of(cfg)
    stem = Path(model).stem
    return f"{stem} {mode.quant_type} {mode.settings(cfg)}", (f"mode:{mode.quant_type}", f"model:{stem}",
                                                               *mode.tags(cfg))
