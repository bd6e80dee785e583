"""Every section and key converter_lite's quantizer reads, as data.

One table drives parsing, defaults, range checks, error messages and docs/config-reference.md's
table, so the rules live in one place. Numbers and spellings follow MindSpore Lite's parser
(docs/converter-lite.md §1–2); where the user guide (the seed) documents a spelling the parser
rejects, the seed's spelling is accepted as an alias, because the guide is the user's contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class KeySpec:
    """How one key is typed and bounded."""

    name: str
    kind: str  # "int" | "float" | "bool" | "enum" | "str" | "list" | "path_list"
    default: Any = None
    choices: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)  # accepted spelling -> canonical
    lo: float | None = None
    hi: float | None = None
    open_interval: bool = False
    doc: str = ""

    def allowed_text(self) -> str:
        """What the user may write, in words, for error messages and docs."""
        if self.kind == "enum":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind in ("int", "float") and self.lo is not None:
            what = "an integer" if self.kind == "int" else "a number"
            if self.open_interval:
                return f"{what} in ({self.lo:g}, {self.hi:g}), ends excluded"
            return f"{what} in [{self.lo:g}, {self.hi:g}]"
        if self.kind == "int":
            return "an integer"
        if self.kind == "float":
            return "a number"
        if self.kind == "list":
            return "a list like [1.0, 2.0, 3.0]"
        if self.kind == "path_list":
            return "input_name:dir[,input_name:dir...]"
        return "a string"


@dataclass(frozen=True)
class SectionSpec:
    name: str
    keys: tuple[KeySpec, ...]
    strict: bool = True  # unknown keys are errors (converter_lite), else ignored
    doc: str = ""

    def key(self, name: str) -> KeySpec | None:
        for spec in self.keys:
            if spec.name == name:
                return spec
        return None

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.keys]


U16 = dict(lo=0, hi=65535)
POS16 = dict(lo=1, hi=65535)

SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec(
        "common_quant_param",
        (
            KeySpec("quant_type", "enum", None, ("WEIGHT_QUANT", "FULL_QUANT", "DYNAMIC_QUANT"),
                    doc="Which quantization to run."),
            KeySpec("bit_num", "int", 8, lo=0, hi=16,
                    doc="WEIGHT_QUANT: 1-16 fixed bits, 0 = mixed bit. FULL_QUANT and DYNAMIC_QUANT: 8."),
            KeySpec("enable_encode", "bool", True,
                    doc="Pick the smallest of bit packing, index and sparse coding per weight. false only at 8 or 16 bits."),
            KeySpec("min_quant_weight_size", "int", 0, **U16,
                    doc="Quantize a weight only if it has more elements than this (weight quant)."),
            KeySpec("min_quant_weight_channel", "int", 16, **U16,
                    doc="Quantize a Conv/ConvTranspose weight only if it has more channels than this (weight quant)."),
            KeySpec("skip_quant_node", "str", "",
                    doc="Comma-separated ONNX node names to keep in FP32 (exact match, no trimming)."),
            KeySpec("debug_info_save_path", "str", "", doc="Folder for the debug reports."),
            KeySpec("workspace", "str", "", doc="Scratch folder for models over 2 GB."),
        ),
    ),
    SectionSpec(
        "mixed_bit_weight_quant_param",
        (
            KeySpec("init_scale", "float", 0.02, lo=0.0, hi=1.0, open_interval=True,
                    doc="Target relative weight error of the mixed-bit search; larger = smaller model."),
            KeySpec("auto_tune", "bool", False, doc="Search init_scale for output cosine >= 0.995."),
            KeySpec("use_cv_data", "bool", False, doc="auto_tune without calibration data: use built-in images."),
            KeySpec("max_iterations", "int", 40, lo=40, hi=65535, doc="auto_tune search budget."),
        ),
    ),
    SectionSpec(
        "weight_quant_param",
        (
            KeySpec("per_channel", "bool", True, doc="false: one scale per weight tensor."),
            KeySpec("bias_correction", "bool", True,
                    doc="Per-channel variance/mean correction of dequantized weights (and the per-channel gain check)."),
            KeySpec("dequant_strategy", "enum", "DEFAULT", ("ON_THE_FLY",),
                    doc="ON_THE_FLY (Ascend runtime dequant); parsed, not supported for ONNX output."),
            KeySpec("quant_strategy", "enum", "MAX_MIN", ("MAX_MIN", "GPTQ"),
                    doc="Weight rounding: MAX_MIN rounds to nearest; GPTQ (MatMul/Gemm/Conv, needs calibration data, "
                        "bit_num 2-8, or 0: GPTQ on each tensor's mixed-bit step) feeds each column's error "
                        "forward (docs/gptq.md)."),
            KeySpec("max_segments", "int", 1, doc="FSE chunk count (Ascend); parsed, unused for ONNX."),
            KeySpec("update_mindir", "bool", True, doc="MindIR export detail; parsed, unused for ONNX."),
        ),
    ),
    SectionSpec(
        "full_quant_param",
        (
            KeySpec("activation_quant_method", "enum", "MAX_MIN", ("MAX_MIN", "KL", "REMOVAL_OUTLIER"),
                    aliases={"RemovalOutlier": "REMOVAL_OUTLIER"}, doc="Activation range calibration."),
            KeySpec("bias_correction", "bool", True, doc="Fold the mean output error into the bias."),
            KeySpec("per_channel", "bool", True, doc="Per-channel weights for the target's per-channel ops."),
            KeySpec("target_device", "enum", "CPU", ("CPU", "KIRIN", "NVGPU", "DSP", "ASCEND"),
                    doc="Backend whose quantization rules the model follows."),
            KeySpec("smooth_alpha", "float", 0.5, doc="Ascend smoothing; parsed, unused."),
            KeySpec("enable_smooth_shift", "bool", False, doc="Ascend smoothing; parsed, unused."),
        ),
    ),
    SectionSpec(
        "data_preprocess_param",
        (
            KeySpec("calibrate_path", "path_list", (), doc="input_name:dir[,input_name:dir...]"),
            KeySpec("calibrate_size", "int", 0, **POS16, doc="Number of calibration samples per input."),
            KeySpec("input_type", "enum", None, ("IMAGE", "BIN"), doc="Calibration file type."),
            KeySpec("image_to_format", "enum", None, ("RGB", "GRAY", "BGR"), doc="Colour conversion of images."),
            KeySpec("normalize_mean", "list", (), doc="Per-channel mean, e.g. [127.5, 127.5, 127.5]."),
            KeySpec("normalize_std", "list", (), doc="Per-channel std, e.g. [127.5, 127.5, 127.5]."),
            KeySpec("resize_width", "int", -1, **POS16, doc="Resize width."),
            KeySpec("resize_height", "int", -1, **POS16, doc="Resize height."),
            KeySpec("resize_method", "enum", None, ("LINEAR", "NEAREST", "CUBIC"), doc="Resize kernel."),
            KeySpec("center_crop_width", "int", -1, **POS16, doc="Center crop width."),
            KeySpec("center_crop_height", "int", -1, **POS16, doc="Center crop height."),
        ),
    ),
    SectionSpec(
        "dynamic_quant_param",
        (
            KeySpec("quant_strategy", "enum", "ALWC", ("ALWC", "ACWL"),
                    doc="ALWC: activations per layer, weights per channel. ACWL: the reverse."),
        ),
    ),
    SectionSpec(
        "transform_quant_param",
        (KeySpec("export_precision_mode", "enum", "QUANT", ("QUANT", "FLOAT32"), doc="QAT transform; parsed, unused."),),
    ),
    SectionSpec(
        "ascend_context",
        (
            KeySpec("input_shape", "str", "", doc="e.g. input_1:[-1,32,32,4]"),
            KeySpec("dynamic_dims", "str", "", doc="e.g. [1~4],[8],[16]"),
            KeySpec("provider", "str", "", doc="e.g. ge"),
        ),
        strict=False,
        doc="Read by key lookup, as converter_lite does: other keys are ignored.",
    ),
)

SECTIONS = SECTIONS + (
    SectionSpec(
        "ptqflow",
        (
            KeySpec("latency_guard", "bool", True,
                    doc="FULL_QUANT on CPU: keep in FP32 every node whose int8 kernel is not faster on this machine, "
                        "and make sure the whole int8 model is not slower than FP32."),
            KeySpec("max_drop", "float", None, lo=0.0, hi=1.0,
                    doc="FULL_QUANT: keep the most damaging nodes in FP32, worst first, until 1 - mean output cosine "
                        "on the calibration set is at most this (e.g. 0.01). Unset: off. --max-drop overrides."),
            KeySpec("rotation_block", "int", 16, lo=0, hi=256,
                    doc="DYNAMIC_QUANT: before quantizing a MatMul's activation, rotate its channels by an orthonormal "
                        "Hadamard matrix in blocks of this many (a power of two; the weight is rotated back offline, "
                        "so FP32 results are unchanged). Spreads single-channel outliers over the block; 0 = off, "
                        "converter_lite's numerics."),
            KeySpec("int8_form", "enum", "portable", ("portable", "vnni"),
                    doc="FULL_QUANT (CPU target) and DYNAMIC_QUANT: how int8 weights are coded. portable (default): "
                        "codes in [-64, 64], exact on every CPU onnxruntime runs on. vnni: the full int8 range, one "
                        "bit more per weight, but correct only on x86 CPUs with AVX512-VNNI/AVX-VNNI and on Arm64 "
                        "(onnxruntime's x86 kernels saturate without VNNI); the model records this in its metadata."),
            KeySpec("cross_layer_equalization", "enum", "auto", ("auto", "true", "false"),
                    doc="FULL_QUANT with per_channel=false (every target but DSP): equalize the channel ranges of "
                        "adjacent convolutions (conv -> conv, conv -> depthwise -> conv) before quantizing. auto: "
                        "quantize with and without it and keep the model closer to FP32 on the first 32 calibration "
                        "rounds (twice the work); true: always, as converter_lite does; false: never."),
            KeySpec("group_size", "int", 0, lo=0, hi=4096,
                    doc="WEIGHT_QUANT at 2-8 bits or mixed bit: a scale and zero point per group of this many input features of "
                        "each MatMul/Gemm output channel (and of each Gather row), for plain rounding and GPTQ alike; "
                        "scales stored as float16. 0 (default): one per channel. Typical: 32, 64, 128. With bit_num=0 (mixed "
                        "bit): a step per group for init_scale's relative error in each group. Refused with other "
                        "bit_num values."),
        ),
        doc="ptqflow's own settings (converter_lite ignores unknown sections, so a config stays portable).",
    ),
)

# Sections converter_lite parses for non-quantization options. Their keys do not matter for an
# ONNX-to-ONNX quantizer, so they are accepted and ignored rather than rejected.
PASSTHROUGH_SECTIONS = (
    "registry",
    "acl_option_cfg_param",
    "micro_param",
    "cpu_option_cfg_param",
    "graph_kernel_param",
    "om_converter_options",
    "model_param",
    "DEFAULT",
)

SECTION_BY_NAME = {s.name: s for s in SECTIONS}
