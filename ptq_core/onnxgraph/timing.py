"""Latency as the tool measures it everywhere (the latency guard, --max-drop, sweeps): median wall time of
one inference on one onnxruntime thread, models interleaved so that a shared machine's drift hits all
of them alike."""

from __future__ import annotations

import statistics
import time

import onnx

from ptq_core.onnxgraph.session import make_session


def median_latency_ms(model: onnx.ModelProto | str, feeds: dict, runs: int = 60, warmup: int = 10) -> float:
    """Median wall time of one inference (batch as fed, one thread)."""
    return paired_latency_ms([model], feeds, runs, warmup)[0]


def paired_latency_ms(models: list[onnx.ModelProto | str], feeds: dict, runs: int = 60, warmup: int = 3,
                      settle_runs: int = 10, clear: float = 0.15) -> list[float]:
    """Median wall time of each model, run in turn (one inference each, order alternating).

    Timing the models one after another lets a change of load on a shared machine land on one of
    them only (a 50 µs model measured 0.97x FP32 at convert time and 1.18x in the next minute);
    interleaved, drift hits all of them alike and only the ratio matters.

    With two or more models it stops after ``settle_runs`` rounds (then every 5) once every model's
    median is more than ``clear`` away from the first's: the guard only asks which is faster, and a
    recognizer's 60 rounds cost seconds where the answer (int8 at 0.6x) was plain after ten.
    """
    sessions = [make_session(m, threads=1) for m in models]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    order = list(range(len(sessions)))
    for i in range(runs):
        for k in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append(time.perf_counter() - t0)
        done = i + 1
        if len(sessions) > 1 and done >= settle_runs and (done - settle_runs) % 5 == 0:
            medians = [statistics.median(t) for t in times]
            if all(abs(m / medians[0] - 1.0) > clear for m in medians[1:]):
                break
    return [1000 * statistics.median(t) for t in times]
