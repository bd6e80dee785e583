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
    return quantize_bodies(plan, emit_dynamic(model, plan), cfg)


def quantize_bodies(plan, quantized, cfg: QuantConfig):
    """Every If branch and Loop/Scan body, at any depth, planned and emitted as a model of its own
    (ptq_core.onnxgraph.scopes). DYNAMIC_QUANT needs no data, so both branches of an If are quantized,
    not only the one calibration would take, and a loop body's weights serve every iteration alike. The
    layer table names each row by its body's path (``If_0/then_branch/...``, ``Loop_0/body/...``)."""
    from dataclasses import replace

    from ptq_core.modes.dynamic.emit import MIN_OPSET, emit_dynamic
    from ptq_core.modes.dynamic.plan import plan_dynamic
    from ptq_core.onnxgraph.load import default_opset, set_metadata
    from ptq_core.onnxgraph.scopes import (
        as_model,
        drop_unread_initializers,
        hoist_shared_initializers,
        outer_reads,
        put_back,
        scopes_deepest_first,
    )
    from ptq_core.onnxgraph.walk import all_names, node_label

    borrowed_anywhere: set[str] = set()
    opset = default_opset(quantized)
    for scope in scopes_deepest_first(quantized):
        body = as_model(scope, quantized)
        for index, node in enumerate(body.graph.node):
            node.name = node_label(node, index)  # rows and new nodes need a name; a body's may have none
        sub = plan_dynamic(body, _skips_inside(cfg, scope.path))
        if sub.nodes and opset < MIN_OPSET:  # the emitter would upgrade the body alone
            why = f"model opset {opset} is below {MIN_OPSET}: re-export it to quantize inside bodies"
            sub.decisions = [replace(d, quantized=False, reason=why) if d.quantized else d for d in sub.decisions]
            sub.nodes = []
        plan.decisions.extend(replace(d, node=f"{scope.path}/{d.node}") for d in sub.decisions)
        if not sub.nodes:
            continue
        borrowed = outer_reads(scope)
        put_back(scope, emit_dynamic(body, sub, frozenset(all_names(quantized.graph))), borrowed)
        borrowed_anywhere.update(borrowed)
        plan.nodes.extend(sub.nodes)
        plan.weights.update(sub.weights)
    drop_unread_initializers(quantized, borrowed_anywhere)
    if borrowed_anywhere:  # sibling bodies that quantized one outer weight each hold identical codes
        hoist_shared_initializers(quantized)
    if plan.written_form:
        from ptq_core.onnxgraph.cpu import get_form

        set_metadata(quantized, get_form(plan.written_form).metadata())
    return plan, quantized


def _skips_inside(cfg: QuantConfig, path: str) -> QuantConfig:
    """``cfg`` with skip_quant_node as a body's own node names: the user names body nodes by path."""
    from dataclasses import replace

    prefix = path + "/"
    local = tuple(name[len(prefix):] for name in cfg.common.skip_quant_node if name.startswith(prefix))
    return replace(cfg, common_quant_param=replace(cfg.common, skip_quant_node=local))


class DynamicSteps:
    """DYNAMIC_QUANT in this process."""

    def quantize(self, job: Job, state: dict) -> dict:
        plan, quantized = quantize_dynamic_model(job.model, job.cfg)
        return {"plan": plan, "quantized": quantized}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": save_model_atomic(state["quantized"], output_file(job.output)), "quantized": None}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize_dynamic(job.model, state["out"], job.cfg, job.info, state["plan"], job.inputs)}
