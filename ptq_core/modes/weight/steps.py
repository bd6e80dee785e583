"""WEIGHT_QUANT's steps on plain objects: plan (fixed bits, or the mixed-bit search), emit, summarize.
The flow runs the same steps as cached tasks (ptqflow.tasks.weight)."""

from __future__ import annotations

from pathlib import Path

import onnx

from ptq_core.config import QuantConfig
from ptq_core.modes.job import Job, Progress
from ptq_core.modes.weight.emit import emit_weight_only
from ptq_core.modes.weight.mixed_bit import TuneResult, auto_tune
from ptq_core.modes.weight.plan import WeightPlan, plan_weight_quant
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.save import output_file, save_model_atomic
from ptq_core.onnxgraph.session import (
    InputOptions,
    make_session,
    output_cosine,
    run,
)
from ptq_core.onnxgraph.sites import ModelInfo, check_skip_nodes
from ptq_core.summary import reference_inputs, summarize


def quantize_weights(model_path: str | Path, cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None = None,
                     progress: Progress | None = None, hessians: dict | None = None
                     ) -> tuple[WeightPlan, TuneResult | None, str | None]:
    """Plan weight quantization; with bit_num=0 and auto_tune, search init_scale against output cosine;
    with ``hessians`` (``quant_strategy=GPTQ``), GPTQ's rounding where a weight has one."""
    check_skip_nodes(info, cfg.common.skip_quant_node, cfg.source)
    tuning = cfg.common.bit_num == 0 and cfg.mixed.auto_tune
    # without auto_tune, weights are read one at a time; shared with the next sweep point (read only here)
    model = model_cache.prepared_model(model_path, load_data=tuning)
    if tuning:
        ref = reference_inputs(cfg, info, inputs)
        fp32_out = run(make_session(model), ref.feeds)

        def evaluate(t: float) -> tuple[float, float]:
            plan = plan_weight_quant(model, cfg, init_scale=t)
            quant = emit_weight_only(model, plan)
            cos = output_cosine(fp32_out, run(make_session(quant), ref.feeds))
            return cos, model.ByteSize() / max(1, quant.ByteSize())

        tuned = auto_tune(evaluate, budget=max(4, cfg.mixed.max_iterations // 4))
        plan = plan_weight_quant(model, cfg, init_scale=tuned.init_scale, progress=progress)
        return plan, tuned, ref.source
    return plan_weight_quant(model, cfg, progress=progress, base_dir=Path(model_path).parent,
                             hessians=hessians), None, None


def emit_model(model_path: str | Path, plan: WeightPlan, output: str | Path) -> Path:
    """Write the weight-only model. The FP32 weights the plan replaces are never read again: only the
    tensors that stay as they are come off disk, so a model over 2 GB is not held twice."""
    base = Path(model_path).parent
    model = model_cache.prepared_copy(model_path, load_data=False)  # load_external fills it in place
    load_external(model, base, skip={qw.tensor for qw in plan.weights})
    quantized = emit_weight_only(model, plan)
    del model
    load_external(quantized, base)  # a replaced weight that another op still reads stays, with its data
    return save_model_atomic(quantized, output_file(output))


def load_external(model: onnx.ModelProto, base_dir: Path, skip: set[str] = frozenset()) -> None:
    """Fill in the external data of every tensor not named in ``skip``, in place."""
    from onnx.external_data_helper import load_external_data_for_tensor

    from ptq_core.onnxgraph.load import _all_tensors

    replaced = skip
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.name not in replaced:
            load_external_data_for_tensor(tensor, str(base_dir))
            tensor.ClearField("data_location")  # as if it had been stored inline: same bytes out
            del tensor.external_data[:]


class WeightSteps:
    """WEIGHT_QUANT in this process: the plan stays in memory between steps."""

    def calibrate(self, job: Job, state: dict) -> dict:
        """GPTQ's Hessians (docs/gptq.md); nothing for round-to-nearest weights."""
        if job.cfg.weight.quant_strategy != "GPTQ":
            return {}
        from ptq_core.modes.weight.gptq_calibration import collect_hessians

        return {"hessians": collect_hessians(job.model, job.cfg, job.inputs, job.work_dir)}

    def quantize(self, job: Job, state: dict) -> dict:
        plan, tuned, _ = quantize_weights(job.model, job.cfg, job.info, job.inputs, job.progress,
                                          state.get("hessians"))
        return {"plan": plan, "tuned": tuned}

    def emit(self, job: Job, state: dict) -> dict:
        out = emit_model(job.model, state["plan"], job.output)
        # the debug reports read the codes; nothing after this does otherwise, so they go before the summary
        plan = state["plan"] if job.cfg.common.debug_info_save_path else state["plan"].without_codes()
        return {"out": out, "plan": plan}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize(job.model, state["out"], job.cfg, job.info, state["plan"], state["tuned"],
                                     job.inputs)}
