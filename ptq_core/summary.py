"""What a conversion reports: the Summary the CLI prints and Prefect stores, built once per mode from
sizes on disk, the output cosine of the written model against FP32, and the facts the user did not
spell out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ptq_core.config import QuantConfig
from ptq_core.modes.weight.mixed_bit import TuneResult
from ptq_core.modes.weight.plan import LayerDecision, WeightPlan
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.session import (
    InputOptions,
    input_specs,
    make_session,
    output_cosine,
    random_feeds,
    run,
)
from ptq_core.onnxgraph.sites import ModelInfo

if TYPE_CHECKING:
    from ptq_core.modes.full.latency_guard import GuardRecord
    from ptq_core.modes.full.max_drop import MaxDropResult


@dataclass(frozen=True)
class ReferenceInputs:
    feeds: dict
    source: str  # "calibration sample 0" or "generated"


def reference_inputs(cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None = None) -> ReferenceInputs:
    """One input set for measuring output cosine: calibration sample 0 when configured, else generated."""
    inputs = inputs or InputOptions()
    specs = input_specs(info.inputs, inputs.shape_map)
    if cfg.data.has_calibration:
        from ptq_core.data.calibration import load_sample

        feeds = load_sample(cfg, specs, 0, inputs.data_format)
        return ReferenceInputs(feeds, "calibration sample 0")
    return ReferenceInputs(random_feeds(specs), "generated (uniform [0.1, 1) floats, ones for integers)")


def measured_cosine(model_path, output_path, cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None,
                    kind: str) -> tuple[float | None, str]:
    """Output cosine of the written model against FP32, and on which inputs; (None, why) when no input
    set the tool can make runs the FP32 model (ptq_core.data.probe_inputs). Calibration data is the user's:
    a failure on it stays an error."""
    inputs = inputs or InputOptions()
    lean = kind == "lean"
    if cfg.data.has_calibration:
        ref = reference_inputs(cfg, info, inputs)
        before = model_cache.reference_outputs(model_path, kind, ref.feeds,
                                               lambda: run(make_session(str(model_path), lean=lean), ref.feeds))
        return (output_cosine(before, run(make_session(str(output_path), lean=lean), ref.feeds)),
                ref.source + few_values_note(before, info.outputs))
    from ptq_core.data.probe_inputs import candidates, needs_shape_hint
    from ptq_core.errors import ModelError

    sessions: list = []  # the FP32 session, built once and only if some candidate's outputs are not cached

    def fp32_outputs(feeds):
        if not sessions:
            sessions.append(make_session(str(model_path), lean=lean))
        return run(sessions[0], feeds)

    failures: list[str] = []
    silent: list[tuple[str, float]] = []  # inputs on which every FP32 output is ~0: a cosine says nothing there
    for cand in candidates(lambda: model_cache.prepared_model(model_path, load_data=False), info.inputs,
                           inputs.shape_map):
        try:
            before = model_cache.reference_outputs(model_path, kind, cand.feeds, lambda: fp32_outputs(cand.feeds))
        except ModelError as exc:
            failures.append(str(exc).removeprefix("onnxruntime failed to run the model: "))
            continue
        largest = silent_outputs(before)
        if largest is not None:
            silent.append((cand.source, largest))
            continue
        return (output_cosine(before, run(make_session(str(output_path), lean=lean), cand.feeds)),
                cand.source + few_values_note(before, info.outputs))
    if silent:
        return None, (f"not measured: on {silent[0][0]} every FP32 output is ~0 (largest |value| "
                      f"{silent[0][1]:.3g}), so a cosine would say nothing; calibration data gives one")
    hint = needs_shape_hint(info.inputs, inputs.shape_map)
    return None, (f"not measured: the FP32 model ran on none of {len(failures)} generated input sets "
                  f"(onnxruntime: {failures[0][:160]})" + (f"; give --inputShape={hint}" if hint else ""))


def few_values_note(outputs: list[np.ndarray], names: tuple[str, ...]) -> str:
    """What the output cosine cannot see: a float output with only a few values (a VAD's speech probability,
    a classifier's single logit), whose cosine is 1 whenever the signs agree; '' when there is none."""
    from ptq_core.onnxgraph.session import has_few_values

    few = [(name, int(np.asarray(o).size)) for name, o in zip(names, outputs) if has_few_values(o)]
    if not few:
        return ""
    listed = ", ".join(f"'{name}' ({n} value{'s' if n > 1 else ''})" for name, n in few)
    return f"; blind to {listed}: a cosine of so few values hardly moves, compare them on your own data"


def silent_outputs(outputs: list[np.ndarray]) -> float | None:
    """The largest |value| when every float output's squared norm is below DBL_EPSILON (where the tool's
    cosine gives converter_lite's edge-case 0 or 1: a text detector's probability map on noise); else None."""
    floats = [np.asarray(o, np.float64) for o in outputs if np.issubdtype(np.asarray(o).dtype, np.floating)]
    if not floats or any(float(np.sum(o * o)) >= np.finfo(np.float64).eps for o in floats):
        return None
    return max(float(np.max(np.abs(o))) if o.size else 0.0 for o in floats)


@dataclass(frozen=True)
class Summary:
    """What the CLI prints at the end and Prefect stores as an artifact: built once, by the mode's
    summarize step; the debug reports and the wall time are added as new copies (``dataclasses.replace``)."""

    model: str
    output: str
    quant_type: str
    bits: int
    layers: list[LayerDecision]
    size_before: int
    size_after: int
    output_cosine: float | None  # None: not measured (no input set ran the FP32 model; cosine_inputs says why)
    cosine_inputs: str
    wall_time_s: float = 0.0
    init_scale: float | None = None
    auto_tune: dict | None = None
    speed: GuardRecord | None = None  # FULL_QUANT latency guard: demoted nodes, FP32 vs int8 ms
    timings: dict | None = None  # FULL_QUANT seconds per phase (statistics_s, bias_correction_s, ...)
    time_split: dict | None = None  # a flow run's wall time: server start, Prefect and start-up, ptqflow (CLI)
    max_drop: MaxDropResult | None = None  # FULL_QUANT --max-drop: kept nodes, cosine before/after, cost
    debug: dict | None = None  # debug_info_save_path: where the reports went, worst nodes (ptq_core.debug.driver)
    int8_form: str | None = None  # int8 weights for onnxruntime's CPU kernels (ptq_core.onnxgraph.cpu); None: n/a
    notices: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, text) rows: target, assumed layout, ...

    def int8_form_line(self) -> str | None:
        """What the int8 form means for where this model runs, in words."""
        if not self.int8_form:
            return None
        from ptq_core.onnxgraph.cpu import get_form

        form = get_form(self.int8_form)
        return form.summary_line() or f"{form.name}: {form.doc}"

    @property
    def output_path(self) -> Path:
        return Path(self.output)

    @property
    def ratio(self) -> float:
        return self.size_before / max(1, self.size_after)

    def rows(self) -> list[dict]:
        """One JSON-safe dict per layer, for tables and artifacts."""
        rows = []
        for d in self.layers:
            rows.append({
                "node": d.node,
                "op": d.op_type,
                "tensor": d.tensor,
                "shape": "x".join(map(str, d.shape)),
                "status": "quantized" if d.quantized else "skipped",
                "detail": d.reason,
                "bits": d.bits if d.quantized else 32,
                "encoding": d.encoding,
                "effective_bits": round(float(d.effective_bits), 3),
                "step": None if d.step is None else float(d.step),
                "weight_cosine": None if d.weight_cosine is None else round(float(d.weight_cosine), 6),
                "bytes_fp32": int(d.bytes_fp32),
                "bytes_stored": int(d.bytes_stored),
            })
        return rows

    def totals(self) -> dict:
        return {
            "model": self.model,
            "output": self.output,
            "quant_type": self.quant_type,
            "bit_num": self.bits,
            "layers_quantized": sum(1 for d in self.layers if d.quantized),
            "layers_skipped": sum(1 for d in self.layers if not d.quantized),
            "layers_int8_storage": sum(1 for d in self.layers if not d.quantized and d.encoding == "int8 storage"),
            "size_before_bytes": self.size_before,
            "size_after_bytes": self.size_after,
            "compression_ratio": round(self.ratio, 3),
            "output_cosine": None if self.output_cosine is None else round(self.output_cosine, 6),
            "cosine_inputs": self.cosine_inputs,
            "wall_time_s": round(self.wall_time_s, 2),
            "init_scale": self.init_scale,
            "fp32_ms": None if not self.speed else round(self.speed.fp32_ms, 4),
            "int8_ms": None if not self.speed else round(self.speed.int8_ms, 4),
            "max_drop": None if not self.max_drop else self.max_drop.bound,
            "max_drop_kept": None if not self.max_drop else len(self.max_drop.kept),
            "max_drop_int8_weight_fraction": None if not self.max_drop else
            round(self.max_drop.int8_weight_fraction, 4),
            "int8_form": self.int8_form,
            **{label: text for label, text in self.facts},
        }


def summarize(model_path: str | Path, output_path: str | Path, cfg: QuantConfig, info: ModelInfo, plan: WeightPlan,
              tuned: TuneResult | None = None, inputs: InputOptions | None = None) -> Summary:
    """Sizes on disk and the output cosine of the written model against FP32 on a sample input.

    Lean sessions: for a model of a few GB, folding the decode chains would cost far more memory than
    the quantization itself, and one run gives the same values unfolded."""
    cosine, source = measured_cosine(model_path, output_path, cfg, info, inputs, "lean")
    return Summary(
        model=str(model_path),
        output=str(output_path),
        quant_type=cfg.common.quant_type or "",
        bits=cfg.common.bit_num,
        layers=list(plan.decisions),
        size_before=_fp32_size(model_path),
        size_after=_disk_size(output_path),
        output_cosine=cosine,
        cosine_inputs=source,
        facts=already_quantized_fact(info),
        init_scale=plan.init_scale,
        auto_tune=None if tuned is None else {
            "init_scale": tuned.init_scale,
            "cosine": tuned.cosine,
            "steps": [{"init_scale": s.init_scale, "cosine": s.cosine, "ratio": s.ratio} for s in tuned.steps],
        },
        notices=list(cfg.notices),
    )


def _fp32_size(path: str | Path) -> int:
    """The FP32 model's size on disk; in a sweep read off the model the points share (model_cache)
    instead of parsing the file again. Its initializers name the same external files, plus any
    Constant node stored externally, which onnx only writes with convert_attribute=True."""
    if not model_cache.active():
        return _disk_size(path)
    return model_cache.remembered(
        path, "disk_size", lambda: _disk_size(path, model_cache.prepared_model(path, load_data=False)))


def _disk_size(path: str | Path, model: onnx.ModelProto | None = None) -> int:
    """Model file plus external data files it references (``model``: the file's proto, if at hand)."""
    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False) if model is None else model
    seen = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data = path.parent / entry.value
                if data.exists():
                    total += data.stat().st_size
    return total


def summarize_dynamic(model_path, output_path, cfg: QuantConfig, info: ModelInfo, plan,
                      inputs: InputOptions | None = None) -> Summary:
    cosine, source = measured_cosine(model_path, output_path, _without_data(cfg), info, inputs, "default")
    return Summary(
        model=str(model_path), output=str(output_path), quant_type="DYNAMIC_QUANT", bits=8,
        layers=list(plan.decisions), size_before=_fp32_size(model_path), size_after=_disk_size(output_path),
        output_cosine=cosine, cosine_inputs=source, notices=list(cfg.notices), facts=already_quantized_fact(info),
        int8_form=plan.written_form,
    )


def _without_data(cfg: QuantConfig) -> QuantConfig:
    """Dynamic quantization ignores calibration data, so the sample input is generated too."""
    from dataclasses import replace

    from ptq_core.config.model import DataPreprocessParam

    return replace(cfg, data_preprocess_param=DataPreprocessParam())


def summarize_full(model_path, output_path, cfg: QuantConfig, info: ModelInfo, prepared: onnx.ModelProto,
                   plan, inputs: InputOptions | None = None, speed: GuardRecord | None = None, timings: dict | None = None,
                   max_drop: MaxDropResult | None = None) -> Summary:
    from ptq_core.modes.full.pipeline import full_decisions

    cosine, source = measured_cosine(model_path, output_path, cfg, info, inputs, "default")  # calibration sample 0
    return Summary(
        model=str(model_path), output=str(output_path), quant_type="FULL_QUANT", bits=8,
        layers=full_decisions(prepared, plan), size_before=_fp32_size(model_path), size_after=_disk_size(output_path),
        output_cosine=cosine, cosine_inputs=source, notices=list(cfg.notices),
        int8_form=plan.int8_form if plan.weights else None,
        facts=full_facts(cfg, info, inputs, plan) + accuracy_fact(cosine, source, max_drop),
        speed=speed, timings=timings, max_drop=max_drop,
    )


#: below this output cosine a FULL_QUANT summary points at the accuracy bound (1 % of FP32)
ACCURACY_HINT_BELOW = 0.99


def accuracy_fact(cosine: float | None, source: str, max_drop: MaxDropResult | None) -> list[tuple[str, str]]:
    """Where int8 cost more than 1 % of the output and the user set no bound, the summary says what would
    bring it back, instead of leaving the number to speak for itself."""
    if cosine is None or max_drop is not None or cosine >= ACCURACY_HINT_BELOW:
        return []
    return [("accuracy", f"output cosine {cosine:.4f} on {source.split(' (')[0]} is below {ACCURACY_HINT_BELOW}: "
                         "--max-drop 0.01 ([ptqflow] max_drop=0.01) keeps the layers that cost the most FP32 until "
                         "it is within 1 %; [common_quant_param] debug_info_save_path=<folder> reports where it "
                         "went, layer by layer")]


def already_quantized_text(info: ModelInfo) -> str:
    """The integer constructs a model was quantized with before it reached us, with counts."""
    return ", ".join(f"{n} {what}" for what, n in info.quantized_ops)


def already_quantized_fact(info: ModelInfo) -> list[tuple[str, str]]:
    """A model quantized before it reached us is said to be, with what was left to do."""
    if not info.quantized_ops:
        return []
    return [("already quantized", f"{already_quantized_text(info)}; ptqflow quantized only the float weights left")]


def full_facts(cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None, plan) -> list[tuple[str, str]]:
    """FULL_QUANT choices the user did not spell out: the target's rules, the calibration layout and
    cross-layer equalization."""
    from ptq_core.data.input_layout import layout_fact
    from ptq_core.modes.full.targets import get_target

    target = get_target(cfg.full.target_device)
    facts = already_quantized_fact(info) + [("target", f"{target.name}: {target.note}")]
    layout = layout_fact(cfg, info.inputs, inputs or InputOptions())
    if layout:
        facts.append(("calibration layout", layout))
    if plan.branch_note:
        facts.append(("If branches", plan.branch_note))
    equalized, note = plan.equalized, plan.equalization_note
    if equalized:
        pairs = sum(1 for c in equalized if len(c) == 2)
        names = "; ".join(" -> ".join(c) for c in equalized[:3]) + ("; ..." if len(equalized) > 3 else "")
        facts.append(("equalization", f"{pairs} conv pairs and {len(equalized) - pairs} conv -> depthwise -> conv "
                                      f"chains equalized for per-layer weights ({names})" + (f"; {note}" if note else "")))
    elif note:
        facts.append(("equalization", note))
    elif not cfg.full.per_channel and target.cross_layer_equalization:
        facts.append(("equalization", "off ([ptqflow] cross_layer_equalization=false)"
                      if cfg.ptqflow.cross_layer_equalization == "false" else "no conv chain to equalize"))
    return facts
