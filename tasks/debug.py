"""The debug-report task: rounds on Dask, each worker writing its own round; artifacts for Prefect.

One task owns the whole pass (like the statistics), submitting at most ``2 x workers`` rounds at a
time: a worker loads its round's input, runs both models, writes ``report_<r>.csv`` and its Parquet
partition, and returns only the output-summary rows and a few histograms. Memory on the driver is
bounded by the in-flight futures, not by the number of rounds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from ptqflow.tasks.dask_stats import dask_client, worker_threads

from ptq_core.debug import driver
from ptq_core.modes.job import PlanFile
from ptq_core.modes.registry import mode_of
from ptq_core.onnxgraph.session import InputOptions
from ptqflow._env import cache_dir
from ptqflow._phases import ours
from ptqflow._progress import report as terminal_report


def map_rounds(client, job, rounds: list, folder: str, progress=None) -> tuple[list, list]:
    """Bounded in-flight map of ``driver.run_round`` over ``rounds``; folds the small results as they land."""
    from distributed import as_completed

    width = 2 * worker_threads(client)
    pending = iter(rounds)
    outputs, worst, done = [], [], 0
    job_future = client.scatter(job, broadcast=True)
    futures = as_completed([client.submit(driver.run_round, job_future, r, folder, pure=False)
                            for r in _take(pending, width)])
    for future in futures:
        outcome = future.result()
        outputs += outcome.outputs
        worst = driver.keep_worst(worst, outcome.worst)
        done += 1
        if progress:
            progress(done, len(rounds))
        for nxt in _take(pending, 1):
            futures.add(client.submit(driver.run_round, job_future, nxt, folder, pure=False))
    return outputs, worst


def _take(it, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


@task(name="debug_reports")
@ours
def debug_reports(model_path: str, output_path: str, cfg, inputs: InputOptions, rounds: list | None = None,
                  plan_path: str | None = None, dask_address: str | None = None) -> dict:
    """converter_lite's debug reports for a written model, the ranking and the HTML page.

    ``rounds``: FULL_QUANT's calibration shards (already preprocessed by the flow); otherwise the
    calibration samples or one generated input. ``plan_path``: the weight/dynamic plan pickle.
    """
    started = time.perf_counter()
    folder = driver.debug_folder(cfg)
    origin, quant = driver.debug_models(cfg, model_path, output_path)
    plan = None
    if plan_path and mode_of(cfg).debug_reads_plan:
        plan = PlanFile.load(plan_path).plan
    with tempfile.TemporaryDirectory(prefix="ptq-debug-") as tmp:
        if rounds is None:
            rounds = driver.debug_rounds(cfg, origin, inputs, Path(tmp))
        job = driver.prepare_debug(origin, quant, cache_dir("work"))

        def progress(done: int, total: int) -> None:
            terminal_report(done, total, "debug rounds")

        with dask_client(dask_address) as client:
            outputs, worst = map_rounds(client, job, rounds, str(folder), progress)
        params = driver.param_rows(cfg, origin, quant, job, plan)
        result = driver.finish_debug(folder, job, params, outputs, worst, len(rounds), started, driver.title_for(cfg, model_path))
    publish_debug(result)
    return driver.result_record(result)


def publish_debug(result: driver.DebugResult, top: int = 25) -> None:
    """The ranked table and the page's summary as Prefect artifacts."""
    from ptqflow.report import lead_columns

    lead = ("node", "op", "quantized", "score", "output_cosine", "cosine_drop", "clip")
    create_table_artifact(key="debug-ranking", table=lead_columns(result.ranking[:top], lead),
                          description=f"Nodes ranked by quantization damage ({result.folder})")
    create_markdown_artifact(key="debug-summary", markdown=result.summary_markdown + f"\n\nPage: `{result.page}`",
                             description=f"Debug report summary ({result.folder})")
