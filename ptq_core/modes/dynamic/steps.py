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
    return quantize_if_bodies(plan, emit_dynamic(model, plan), cfg)


def quantize_if_bodies(plan, quantized, cfg: QuantConfig):
    """Both branches of each top-level If with weights, one at a time: DYNAMIC_QUANT needs no data, so
    every branch is quantized, not only the one calibration would take. Each is inlined into the main
    graph, planned and emitted there, and put back (ptq_core.onnxgraph.branches); its rows in the layer
    table carry the branch's path (``If_0/then_branch/...``)."""
    from dataclasses import replace

    from ptq_core.modes.dynamic.emit import emit_dynamic
    from ptq_core.modes.dynamic.plan import plan_dynamic
    from ptq_core.onnxgraph.branches import (
        BRANCHES,
        inline_branches,
        restore_branches,
        weighted_ifs,
    )

    for name in [n.name for n in weighted_ifs(quantized, with_tables=True)]:
        for taken in (True, False):
            flat, inlined = inline_branches(quantized, {name: taken})
            own = set(inlined[0].nodes)
            sub = plan_dynamic(flat, cfg)
            sub.nodes = [d for d in sub.nodes if d.node in own]
            sub.decisions = [d for d in sub.decisions if d.node in own]
            quantized = restore_branches(emit_dynamic(flat, sub), quantized, inlined)
            path = f"{name}/{BRANCHES[taken]}/"
            plan.decisions.extend(replace(d, node=path + d.node) for d in sub.decisions)
            plan.nodes.extend(sub.nodes)
            plan.weights.update(sub.weights)
    return plan, quantized


class DynamicSteps:
    """DYNAMIC_QUANT in this process."""

    def quantize(self, job: Job, state: dict) -> dict:
        plan, quantized = quantize_dynamic_model(job.model, job.cfg)
        return {"plan": plan, "quantized": quantized}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": save_model_atomic(state["quantized"], output_file(job.output)), "quantized": None}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize_dynamic(job.model, state["out"], job.cfg, job.info, state["plan"], job.inputs)}
