"""DYNAMIC_QUANT's steps on plain objects: plan and rewrite the model, write it, summarize. The flow
runs the same steps as cached tasks (ptqflow.tasks.dynamic)."""

from __future__ import annotations

from ptq_core.config import QuantConfig
from ptq_core.modes.job import Job
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.save import output_file, save_model_atomic
from ptq_core.summary import summarize_dynamic


def quantize_dynamic_model(model_path, cfg: QuantConfig):
    """DYNAMIC_QUANT: int8 weights now, activations quantized by the model at run time."""
    from ptq_core.modes.dynamic.emit import emit_dynamic
    from ptq_core.modes.dynamic.plan import plan_dynamic

    # a copy: plan_dynamic is only meant to read it, but a shared proto changed by one point would
    # silently change the next; a copy costs far less than the parse it replaces
    model = model_cache.prepared_copy(model_path)
    plan = plan_dynamic(model, cfg)
    return plan, emit_dynamic(model, plan)


class DynamicSteps:
    """DYNAMIC_QUANT in this process."""

    def quantize(self, job: Job, state: dict) -> dict:
        plan, quantized = quantize_dynamic_model(job.model, job.cfg)
        return {"plan": plan, "quantized": quantized}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": save_model_atomic(state["quantized"], output_file(job.output)), "quantized": None}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize_dynamic(job.model, state["out"], job.cfg, job.info, state["plan"], job.inputs)}
