"""converter_lite's command-line flags as data: which ones act here and what the others are told.

converter_lite documents more flags than an ONNX-to-ONNX quantizer can use. A command line written
for it must run unchanged (docs/converter-lite.md §14), so every documented flag is accepted: those
with a meaning here act on it, the others give one notice each saying why they do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptq_core.config.model import QuantConfig


@dataclass(frozen=True)
class ForeignFlag:
    """A converter_lite flag that is accepted and answered with a notice."""

    camel: str  # converter_lite's spelling, e.g. "saveType"
    choices: tuple[str, ...] = ()  # the values converter_lite allows; empty = any text
    why: str = ""  # completes "--flag=value is ignored: ..."


FOREIGN_FLAGS: tuple[ForeignFlag, ...] = (
    ForeignFlag("weightFile", why="it names a Caffe model's weight file; ONNX models carry their weights"),
    ForeignFlag("fp16", ("on", "off"), "float weights stay float32 in the ONNX output (FP16 storage is a .ms feature)"),
    ForeignFlag("saveType", ("MINDIR", "MINDIR_LITE"), "the output is always an ONNX model"),
    ForeignFlag("exportMindIR", ("MINDIR", "MINDIR_LITE"), "the output is always an ONNX model"),
    ForeignFlag("inputDataType", ("FLOAT32", "INT8", "UINT8", "DEFAULT"),
                "the quantized model keeps float32 inputs (its Q/DQ pairs are inside the graph)"),
    ForeignFlag("outputDataType", ("FLOAT32", "INT8", "UINT8", "DEFAULT"),
                "the quantized model keeps float32 outputs (its Q/DQ pairs are inside the graph)"),
    ForeignFlag("decryptKey", why="encrypted input models are a MindSpore format"),
    ForeignFlag("decryptMode", ("AES-GCM", "AES-CBC"), "encrypted input models are a MindSpore format"),
    ForeignFlag("encryptKey", why="the ONNX output is not encrypted"),
    ForeignFlag("encryption", ("true", "false"), "the ONNX output is not encrypted"),
    ForeignFlag("infer", ("true", "false"), "ptqflow always runs the written model in onnxruntime"),
    ForeignFlag("device", why="[full_quant_param] target_device chooses the target rules"),
    ForeignFlag("optimizeTransformer", ("true", "false"), "graph fusions are left to onnxruntime"),
    ForeignFlag("noFusion", ("true", "false"), "graph fusions are left to onnxruntime"),
    ForeignFlag("trainModel", ("true", "false"), "ptqflow quantizes inference models"),
)

# --optimize: converter_lite's optimization level. ascend_oriented and gpu_oriented say which hardware
# the model is for, so they choose FULL_QUANT's target rules where the config does not.
OPTIMIZE_CHOICES = ("none", "general", "gpu_oriented", "ascend_oriented")
OPTIMIZE_TARGETS = {"ascend_oriented": "ASCEND", "gpu_oriented": "NVGPU"}


def foreign_notices(values: dict[str, str | None]) -> list[str]:
    """One notice per foreign flag given; ``values`` maps converter_lite's flag names to what was passed."""
    return [f"--{flag.camel}={values[flag.camel]} is ignored: {flag.why}"
            for flag in FOREIGN_FLAGS if values.get(flag.camel) is not None]


def apply_optimize(cfg: QuantConfig, optimize: str | None) -> QuantConfig:
    """``--optimize``: a hardware-oriented level selects that target's rules unless the config sets one."""
    if optimize is None or optimize == "general":  # general is converter_lite's default
        return cfg
    flag = f"--optimize={optimize}"
    target = OPTIMIZE_TARGETS.get(optimize)
    if target is None:  # none
        note = f"{flag} is ignored: graph fusions are left to onnxruntime"
    elif cfg.common.quant_type != "FULL_QUANT":
        note = f"{flag} is ignored: it chooses FULL_QUANT's target rules, and quant_type is {cfg.common.quant_type}"
    elif "full_quant_param.target_device" in cfg.given:
        if cfg.full.target_device == target:
            return cfg
        note = (f"{flag} would select target_device={target}; the config's [full_quant_param] "
                f"target_device={cfg.full.target_device} is kept")
    else:
        cfg = cfg.replace(full_quant_param={"target_device": target})
        note = f"{flag}: FULL_QUANT follows the {target} target rules ([full_quant_param] target_device is not set)"
    return cfg.__class__(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "notices": cfg.notices + (note,)})
