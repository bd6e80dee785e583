"""FULL_QUANT's steps on plain objects: calibration rounds, quantization (statistics, parameters, bias
correction, latency guard), write, summarize. The flow runs the same steps as cached tasks with the
statistics on Dask (ptqflow.tasks.full)."""

from __future__ import annotations

from ptq_core.modes.full.pipeline import calibration_rounds
from ptq_core.modes.full.quantize import quantize_full
from ptq_core.modes.job import Job
from ptq_core.onnxgraph import cache as model_cache
from ptq_core.onnxgraph.save import output_file, save_model_atomic
from ptq_core.summary import summarize_full


class FullSteps:
    """FULL_QUANT in this process; ``job.work_dir`` holds the calibration shards and exposed models."""

    def calibrate(self, job: Job, state: dict) -> dict:
        model = model_cache.full_model(job.model)
        return {"rounds": calibration_rounds(job.cfg, model, job.inputs, job.work_dir / "shards")}

    def quantize(self, job: Job, state: dict) -> dict:
        return {"result": quantize_full(job.model, job.cfg, job.inputs, job.work_dir, rounds=state["rounds"],
                                        progress=job.progress)}

    def emit(self, job: Job, state: dict) -> dict:
        return {"out": save_model_atomic(state["result"].quantized, output_file(job.output))}

    def summarize(self, job: Job, state: dict) -> dict:
        r = state["result"]
        return {"summary": summarize_full(job.model, state["out"], job.cfg, job.info, r.model, r.plan, job.inputs,
                                          speed=r.speed, timings=r.timings, max_drop=r.max_drop)}
