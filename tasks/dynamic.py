"""DYNAMIC_QUANT's steps as tasks: one cached quantize step, then emit and summarize."""

from __future__ import annotations

from pathlib import Path

import onnx
from prefect import task
from ptqflow.tasks.caching import content_key

from ptq_core.config import QuantConfig
from ptq_core.modes.dynamic.steps import quantize_dynamic_model
from ptq_core.modes.job import Job, PlanFile, StoredResult
from ptq_core.onnxgraph.save import output_file, save_model_atomic
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.onnxgraph.sites import ModelInfo
from ptq_core.summary import summarize_dynamic as core_summarize
from ptqflow._env import cache_dir
from ptqflow._phases import ours


def _key(ctx, params) -> str:
    return content_key("quantize_dynamic", params["info"].sha256, params["cfg"].fingerprint())


@task(name="quantize_dynamic", cache_key_fn=_key, persist_result=True)
@ours
def quantize_dynamic(model_path: str, cfg: QuantConfig, info: ModelInfo) -> StoredResult:
    plan, quantized = quantize_dynamic_model(model_path, cfg)
    key = content_key("dynamic-result", info.sha256, cfg.fingerprint())
    model_file = save_model_atomic(quantized, cache_dir("models") / f"{key}.onnx")
    return StoredResult(PlanFile(plan).save(cache_dir("plans") / f"{key}.pkl"), model_path=str(model_file))


@task(name="emit_model")
@ours
def emit_dynamic(record: StoredResult, output: str) -> str:
    return str(save_model_atomic(onnx.load(record.model_path), output_file(output)))


@task(name="summarize")
@ours
def summarize_dynamic(model_path: str, output_path: str, cfg: QuantConfig, info: ModelInfo, record: StoredResult,
                      inputs: InputOptions):
    return core_summarize(model_path, output_path, cfg, info, PlanFile.load(record.plan_path).plan, inputs)


class DynamicTasks:
    """DYNAMIC_QUANT's steps (``ptq_core.modes.registry``) as cached tasks."""

    def quantize(self, job: Job, state: dict) -> dict:
        record = quantize_dynamic(job.model, job.cfg, job.info)
        if not (Path(record.model_path).exists() and Path(record.plan_path).exists()):
            record = quantize_dynamic.with_options(refresh_cache=True)(job.model, job.cfg, job.info)
        return {"record": record, "plan_path": record.plan_path}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": emit_dynamic(state["record"], job.output)}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize_dynamic(job.model, state["out"], job.cfg, job.info, state["record"], job.inputs)}
