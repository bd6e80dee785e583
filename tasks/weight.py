"""Tasks of the weight-quantization path; each wraps one ptq_core.convert step."""

from __future__ import annotations

import pickle
import time

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from ptqflow.tasks.caching import content_key, file_digest

from ptq_core import convert as pipeline
from ptq_core.config import QuantConfig
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.graph import (
    ModelInfo,
    analyse_model,
    external_locations,
    file_sha256,
)
from ptq_core.onnxgraph.session import InputOptions, input_specs
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
    """auto_tune reads calibration sample 0, so the calibration files' bytes are part of the key."""
    if not (cfg.common.bit_num == 0 and cfg.mixed.auto_tune and cfg.data.has_calibration):
        return None
    from ptq_core.data.calibration import sample_digest

    inputs = inputs or InputOptions()
    return sample_digest(cfg, input_specs(info.inputs, inputs.shape_map), inputs.data_format)


@task(name="resolve_config", cache_key_fn=_config_key, persist_result=True)
@ours
def resolve_config(config_path: str) -> QuantConfig:
    return pipeline.resolve_config(config_path)


@task(name="analyse_model", cache_key_fn=_model_key, persist_result=True)
@ours
def analyse(model_path: str) -> ModelInfo:
    return analyse_model(model_path)


@task(name="quantize_weights", cache_key_fn=_quant_key, persist_result=True)
@ours
def quantize_weights(model_path: str, cfg: QuantConfig, info: ModelInfo, inputs: InputOptions | None = None) -> dict:
    """Returns a small record; the plan itself (packed arrays) goes to a content-addressed file."""
    artifact = create_progress_artifact(progress=0.0, description="weight quantization: layers done")
    last = [0.0]

    def progress(done: int, total: int, node: str) -> None:
        terminal_report(done, total, node)
        now = time.monotonic()
        if total and (done == total or now - last[0] > 0.5):
            last[0] = now
            update_progress_artifact(artifact_id=artifact, progress=100.0 * done / total)

    plan, tuned, source = pipeline.quantize_weights(model_path, cfg, info, inputs, progress)
    key = content_key("plan", info.sha256, cfg.fingerprint(), inputs, _data_digest(cfg, info, inputs))
    path = cache_dir("plans") / f"{key}.pkl"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump((plan, tuned), fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)
    return {"plan_path": str(path), "reference": source}


def load_plan(plan_path: str):
    with open(plan_path, "rb") as fh:
        return pickle.load(fh)


@task(name="emit_model")
@ours
def emit_model(model_path: str, plan_path: str, output: str) -> str:
    plan, _ = load_plan(plan_path)
    return str(pipeline.emit_model(model_path, plan, output))


@task(name="summarize")
@ours
def summarize(model_path: str, output_path: str, cfg: QuantConfig, info: ModelInfo, plan_path: str,
              inputs: InputOptions | None = None) -> pipeline.Summary:
    plan, tuned = load_plan(plan_path)
    return pipeline.summarize(model_path, output_path, cfg, info, plan.without_codes(), tuned, inputs)
