"""The config and model tasks every mode starts with, and WEIGHT_QUANT's steps as cached tasks."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from ptqflow.tasks.caching import content_key, file_digest, progress_key

from ptq_core import convert
from ptq_core.config import QuantConfig
from ptq_core.modes.job import Job, PlanFile, StoredResult
from ptq_core.modes.registry import run_labels
from ptq_core.modes.weight import steps as core
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.load import external_locations, file_sha256
from ptq_core.onnxgraph.session import InputOptions, input_specs
from ptq_core.onnxgraph.sites import ModelInfo, analyse_model
from ptq_core.summary import Summary
from ptq_core.summary import summarize as core_summarize
from ptqflow._env import cache_dir
from ptqflow._phases import ours
from ptqflow._progress import report as terminal_report


def _config_key(ctx, params) -> str:
    return content_key("resolve_config", file_digest(params["config_path"]))


def model_digest(model_path: str) -> str:
    """The model file's bytes and those of every external data file it references: a re-export with new
    weights can leave the .onnx byte-identical and change only the data file. Remembered per file (and
    checked against the files' stat) while a sweep runs, so its points do not hash the model again."""
    def compute() -> str:
        if model_cache.active():  # the sweep's shared proto already names the data files: no second parse
            return file_sha256(model_path, external_locations(model_cache.prepared_model(model_path, load_data=False)))
        return file_sha256(model_path)

    return model_cache.remembered(model_path, "sha256", compute)


def _model_key(ctx, params) -> str:
    return content_key("analyse_model", model_digest(params["model_path"]))


def _quant_key(ctx, params) -> str:
    return content_key("quantize_weights", params["info"].sha256, params["cfg"].fingerprint(), params.get("inputs"),
                       _data_digest(params["cfg"], params["info"], params.get("inputs")))


def _data_digest(cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None) -> str | None:
    """auto_tune reads calibration sample 0 and GPTQ every sample, so the calibration files' bytes are
    part of the key."""
    if cfg.weight.quant_strategy == "GPTQ":
        from ptqflow.tasks.full import data_digest

        return data_digest(cfg, info, inputs or InputOptions())
    if not (cfg.common.bit_num == 0 and cfg.mixed.auto_tune and cfg.data.has_calibration):
        return None
    from ptq_core.data.calibration import sample_digest

    inputs = inputs or InputOptions()
    return sample_digest(cfg, input_specs(info.inputs, inputs.shape_map), inputs.data_format)


@task(name="resolve_config", cache_key_fn=_config_key, persist_result=True)
@ours
def resolve_config(config_path: str) -> QuantConfig:
    return convert.resolve_config(config_path)


@task(name="analyse_model", cache_key_fn=_model_key, persist_result=True)
@ours
def analyse(model_path: str) -> ModelInfo:
    return analyse_model(model_path)


@task(name="quantize_weights", cache_key_fn=_quant_key, persist_result=True)
@ours
def quantize_weights(model_path: str, cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None = None,
                     hessians: str | None = None) -> StoredResult:
    """Returns a small record; the plan itself (packed arrays) goes to a content-addressed file."""
    artifact = create_progress_artifact(progress=0.0, key=progress_key("weights", model_path, cfg),
                                        description=f"Weight quantization, layers done: {run_labels(model_path, cfg)[0]}")
    last = [0.0]

    def progress(done: int, total: int, node: str) -> None:
        terminal_report(done, total, node)
        now = time.monotonic()
        if total and (done == total or now - last[0] > 0.5):
            last[0] = now
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)

    if hessians is not None:
        from ptq_core.modes.weight.gptq_calibration import load_hessians

        hessians = load_hessians(hessians)
    plan, tuned, source = core.quantize_weights(model_path, cfg, info, inputs, progress, hessians)
    key = content_key("plan", info.sha256, cfg.fingerprint(), inputs, _data_digest(cfg, info, inputs))
    return StoredResult(PlanFile(plan, tuned).save(cache_dir("plans") / f"{key}.pkl"), reference=source)


@task(name="emit_model")
@ours
def emit_model(model_path: str, plan_path: str, output: str) -> str:
    return str(core.emit_model(model_path, PlanFile.load(plan_path).plan, output))


@task(name="summarize")
@ours
def summarize(model_path: str, output_path: str, cfg: QuantConfig, info: ModelInfo, plan_path: str,
              inputs: InputOptions | None = None) -> Summary:
    stored = PlanFile.load(plan_path)
    return core_summarize(model_path, output_path, cfg, info, stored.plan.without_codes(), stored.tuned, inputs)


class WeightTasks:
    """WEIGHT_QUANT's steps (``ptq_core.modes.registry``) as cached tasks; state holds file records."""

    def __init__(self, dask_address: str | None = None) -> None:
        self.dask_address = dask_address

    def calibrate(self, job: Job, state: dict) -> dict:
        """GPTQ's Hessians (their own cached task); nothing for round-to-nearest weights."""
        if job.cfg.weight.quant_strategy != "GPTQ":
            return {}
        from ptqflow.tasks.full import FullTasks
        from ptqflow.tasks.gptq import gptq_hessians

        data = FullTasks(self.dask_address).calibrate(job, state)  # the cached, preprocessed calibration rounds
        args = (job.model, job.cfg, job.info, job.inputs, data["digest"], data["rounds"], self.dask_address)
        path = gptq_hessians(*args)
        if not Path(path).exists():
            path = gptq_hessians.with_options(refresh_cache=True)(*args)
        return {"hessians": path}

    def quantize(self, job: Job, state: dict) -> dict:
        args = (job.model, job.cfg, job.info, job.inputs, state.get("hessians"))
        record = quantize_weights(*args)
        if not Path(record.plan_path).exists():  # a cache entry can outlive the file it points to
            record = quantize_weights.with_options(refresh_cache=True)(*args)
        return {"plan_path": record.plan_path}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": emit_model(job.model, state["plan_path"], job.output)}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize(job.model, state["out"], job.cfg, job.info, state["plan_path"], job.inputs)}
