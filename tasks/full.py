"""Tasks of the full-quantization path: calibration shards, then one Dask-backed quantization task."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from ptqflow.tasks.caching import content_key, progress_key
from ptqflow.tasks.dask_stats import collect_distributed, dask_client, worker_threads
from ptqflow.tasks.locks import ProcessLockManager

from ptq_core.config import QuantConfig
from ptq_core.data.calibration import sample_digest
from ptq_core.modes.full import pipeline as full_pipeline
from ptq_core.modes.full.pipeline import accumulate_bias, calibration_shapes
from ptq_core.modes.full.quantize import quantize_full as core_quantize_full
from ptq_core.modes.job import Job, PlanFile, StoredResult
from ptq_core.modes.registry import run_labels
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.save import output_file, save_model_atomic
from ptq_core.onnxgraph.session import InputOptions, input_specs
from ptq_core.onnxgraph.sites import ModelInfo
from ptq_core.stats import collect
from ptqflow._env import cache_dir
from ptqflow._phases import ours
from ptqflow._progress import report as terminal_report


def data_digest(cfg: QuantConfig, info: ModelInfo, inputs: InputOptions) -> str:
    specs = input_specs(info.inputs, calibration_shapes(cfg, inputs))
    return sample_digest(cfg, specs, inputs.data_format)


def locked_policy(key_fn) -> CacheKeyFnPolicy:
    """A content-key policy whose concurrent runs with one key wait for each other (sweep points run in
    parallel): the first computes, the others then read its cache record instead of repeating the work."""
    locks = cache_dir("locks")
    return CacheKeyFnPolicy(cache_key_fn=key_fn).configure(
        isolation_level="SERIALIZABLE", lock_manager=ProcessLockManager(lock_files_directory=locks))


def _shards_key(ctx, params) -> str:
    return content_key("calibration_shards", params["digest"])


@task(name="preprocess_calibration", cache_policy=locked_policy(_shards_key), persist_result=True)
@ours
def preprocess_calibration(model_path: str, cfg: QuantConfig, inputs: InputOptions, digest: str) -> list[collect.Round]:
    """Decode and preprocess the calibration set once into content-addressed .npy shards."""
    model = model_cache.full_model(model_path)  # shared with the points' quantize_full in a sweep
    return full_pipeline.calibration_rounds(cfg, model, inputs, cache_dir("shards"))


def _stats_key(ctx, params) -> str:
    # Activation statistics depend on the model that ran (the exposed model's name is its content key: a
    # model equalized for per_channel=false has other activations than the file's), the calibration samples
    # (digest covers files and shapes), the method and the observed tensors; not on bias_correction or target.
    return content_key("statistics", params["model_sha"], Path(params["exposed_path"]).name, params["method"],
                       params["digest"], sorted(params["tensors"]))


@task(name="collect_statistics", cache_policy=locked_policy(_stats_key), persist_result=True)
@ours
def collect_statistics(model_sha: str, digest: str, exposed_path: str, tensors: tuple[str, ...],
                       rounds: list[collect.Round], method: str, collector) -> dict:
    """One statistics pass, cached on its own so a sweep collects once per method, not once per point."""
    return collector(exposed_path, tensors, rounds, method)


def cached_collector(model_sha: str, digest: str, collector):
    """A ``collector`` for ptq_core's quantize_full that goes through the cached statistics task."""

    def run(exposed_path, tensors, rounds, method):
        return collect_statistics(model_sha, digest, exposed_path, tuple(tensors), rounds, method, collector)

    return run


def _full_key(ctx, params) -> str:
    return content_key("quantize_full", params["info"].sha256, params["cfg"].fingerprint(), params["inputs"],
                       params["digest"])


@task(name="quantize_full", cache_key_fn=_full_key, persist_result=True)
@ours
def quantize_full(model_path: str, cfg: QuantConfig, info: ModelInfo, inputs: InputOptions, digest: str,
                  rounds: list[collect.Round], dask_address: str | None = None) -> StoredResult:
    """Statistics and bias correction run on Dask; the quantized model goes to a content-addressed file."""
    artifact = create_progress_artifact(progress=0.0, key=progress_key("calibration", model_path, cfg),
                                        description=f"Calibration rounds processed: {run_labels(model_path, cfg)[0]}")

    def progress(done: int, total: int) -> None:
        terminal_report(done, total, "calibration")
        update_progress_artifact(artifact_id=artifact, progress=100.0 * done / max(1, total))

    with dask_client(dask_address) as client:
        def collector(model, tensors, rnds, method):
            return collect_distributed(client, model, tensors, rnds, method, progress)

        def bias_runner(model, pairs, rnds):
            parts = collect.chunks(rnds, worker_threads(client) * 2)
            futures = [client.submit(accumulate_bias, model, pairs, part, pure=False) for part in parts]
            results = client.gather(futures)
            merged = results[0]
            for other in results[1:]:
                merged = {k: merged[k].merge(other[k]) for k in merged}
            return merged

        result = core_quantize_full(model_path, cfg, inputs, cache_dir("work"),
                                    cached_collector(info.sha256, digest, collector), bias_runner, rounds)
    update_progress_artifact(artifact_id=artifact, progress=100.0)  # statistics from the cache report nothing
    key = content_key("full-result", info.sha256, cfg.fingerprint(), inputs, digest)
    model_file = cache_dir("models") / f"{key}.onnx"
    save_model_atomic(result.quantized, model_file)
    stored = PlanFile(result.plan, prepared=result.model, speed=result.speed, timings=result.timings,
                      max_drop=result.max_drop)
    return StoredResult(stored.save(cache_dir("plans") / f"{key}.pkl"), model_path=str(model_file))


@task(name="emit_model")
@ours
def emit_full(record: StoredResult, output: str) -> str:
    import onnx

    return str(save_model_atomic(onnx.load(record.model_path), output_file(output)))


@task(name="summarize")
@ours
def summarize_full(model_path: str, output_path: str, cfg: QuantConfig, info: ModelInfo, record: StoredResult,
                   inputs: InputOptions):
    from ptq_core.summary import summarize_full as core_summarize

    s = PlanFile.load(record.plan_path)
    return core_summarize(model_path, output_path, cfg, info, s.prepared, s.plan, inputs, speed=s.speed,
                          timings=s.timings, max_drop=s.max_drop)


class FullTasks:
    """FULL_QUANT's steps (``ptq_core.modes.registry``) as cached tasks; statistics and bias correction run
    on the Dask cluster at ``dask_address`` (a local one when None)."""

    def __init__(self, dask_address: str | None = None):
        self.dask_address = dask_address

    def calibrate(self, job: Job, state: dict) -> dict:
        digest = data_digest(job.cfg, job.info, job.inputs)
        rounds = preprocess_calibration(job.model, job.cfg, job.inputs, digest)
        if not all(Path(p).exists() for r in rounds for _, p in r.shards):
            rounds = preprocess_calibration.with_options(refresh_cache=True)(job.model, job.cfg, job.inputs, digest)
        return {"digest": digest, "rounds": rounds}

    def quantize(self, job: Job, state: dict) -> dict:
        args = (job.model, job.cfg, job.info, job.inputs, state["digest"], state["rounds"], self.dask_address)
        record = quantize_full(*args)
        if not (Path(record.model_path).exists() and Path(record.plan_path).exists()):
            record = quantize_full.with_options(refresh_cache=True)(*args)
        return {"record": record}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": emit_full(state["record"], job.output)}

    def summarize(self, job: Job, state: dict) -> dict:
        return {"summary": summarize_full(job.model, state["out"], job.cfg, job.info, state["record"], job.inputs)}
