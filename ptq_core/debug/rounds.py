"""One debug round: run the FP32 and the quantized model on the same input, turn every paired record
into converter_lite's report rows, and keep nothing once the round is written.

Both models run in onnxruntime with graph optimizations off, with every reported tensor exposed as a
graph output: the quantized model then computes its QDQ arithmetic in float (DequantizeLinear
outputs exist as tensors), which is the dequantized data converter_lite's hooks read. A worker
process builds each session once (``_CONTEXTS``) and reuses it for all the rounds it is given.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_core.debug.records import DebugPlan
from ptq_core.debug.stats import (
    STAT_COLUMNS,
    clip_rate,
    cosine,
    histogram,
    tensor_stats,
)
from ptq_core.errors import ModelError

WORST_PER_ROUND = 6  # histograms a round hands back: its lowest-cosine activations
_CONTEXTS: dict[tuple[str, str], "_Context"] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class DebugJob:
    """Everything a worker needs for any round: paths of the exposed models and the record plan."""

    origin_path: str
    quant_path: str
    plan: DebugPlan
    written_path: str = ""  # the quantized model as written: its outputs are measured as onnxruntime runs it


@dataclass
class RoundOutcome:
    """What a round hands back to the driver: small, whatever the model size."""

    index: int
    outputs: list[tuple[int, str, float]]  # output_summary rows (Round, TensorName, CosineSimilarity)
    worst: list[dict]  # histograms of this round's lowest-cosine activations
    rows: int


class _Context:
    def __init__(self, job: DebugJob):
        from ptq_core.onnxgraph.session import make_session

        try:  # exact math, no fusions: the report compares tensors as the graph defines them
            self.origin = make_session(job.origin_path, threads=1, optimization="off")
            self.quant = make_session(job.quant_path, threads=1, optimization="off")
            # the model's outputs as users get them: onnxruntime's default optimizations fuse the Q/DQ pairs
            # into integer kernels, whose rounding the exact-math graph above does not show
            self.written = make_session(job.written_path, threads=1) if job.written_path else None
        except ModelError as exc:
            raise ModelError(f"debug: {exc}") from None
        self.origin_inits = _initializers(job.origin_path, {r.origin for rec in job.plan.records for r in rec.tensors})
        self.quant_inits = _initializers(job.quant_path, {r.quant for rec in job.plan.records for r in rec.tensors})


def _initializers(path: str, wanted: set[str]) -> dict[str, np.ndarray]:
    model = onnx.load(path)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}


def _context(job: DebugJob) -> _Context:
    key = (job.origin_path, job.quant_path)
    with _LOCK:
        ctx = _CONTEXTS.get(key)
        if ctx is None:
            ctx = _CONTEXTS[key] = _Context(job)
        return ctx


def _outputs_as_run(ctx: _Context, plan: DebugPlan, feeds: dict, o_vals: dict) -> dict[str, float]:
    """Cosine of each model output of the written model, run with onnxruntime's default optimizations, against
    FP32: output_summary.csv reports what the model users get computes."""
    if ctx.written is None:
        return {}
    names = [o.name for o in ctx.written.get_outputs() if o.name in plan.origin_outputs and o.name in o_vals]
    if not names:
        return {}
    values = ctx.written.run(names, {i.name: feeds[i.name] for i in ctx.written.get_inputs()})
    return {n: cosine(o_vals[n], v) for n, v in zip(names, values) if np.size(o_vals[n]) == np.size(v)}


def _numeric(a) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    return a if a.dtype.kind in "fiub" and a.size > 0 else None


def round_rows(job: DebugJob, feeds: dict[str, np.ndarray]) -> tuple[list[dict], list[tuple[str, float]], list[dict]]:
    """Report rows of one round, its output-summary pairs, and histograms of its worst activations."""
    ctx = _context(job)
    plan = job.plan
    o_names, q_names = list(plan.origin_tensors), list(plan.quant_tensors)
    o_feeds = {i.name: feeds[i.name] for i in ctx.origin.get_inputs()}
    q_feeds = {i.name: feeds[i.name] for i in ctx.quant.get_inputs()}
    o_vals = dict(zip(o_names, ctx.origin.run(o_names, o_feeds))) if o_names else {}
    q_vals = dict(zip(q_names, ctx.quant.run(q_names, q_feeds))) if q_names else {}
    for k, v in feeds.items():
        o_vals.setdefault(k, v)
        q_vals.setdefault(k, v)
    as_run = _outputs_as_run(ctx, plan, feeds, o_vals)
    rows: list[dict] = []
    outputs: list[tuple[str, float]] = []
    candidates: list[tuple[float, dict]] = []
    index = 0
    # a tensor is the output of one node and the input of the next: compute its figures once per round
    o_stats: dict[str, dict] = {}
    q_stats: dict[str, dict] = {}
    pairs: dict[tuple[str, str], tuple] = {}
    for rec in plan.records:
        for ref in rec.tensors:
            qv = _numeric(q_vals.get(ref.quant, ctx.quant_inits.get(ref.quant)))
            if qv is None:
                continue
            ov = _numeric(o_vals.get(ref.origin, ctx.origin_inits.get(ref.origin))) if ref.origin else None
            if ov is not None and ov.size != qv.size:
                ov = None  # converter_lite aborts; we print the dequantized row alone
            base = {"NodeName": rec.node, "NodeType": rec.op_type, "TensorName": ref.name,
                    "InOutFlag": ref.inout, "TensorTypeFlag": ref.kind}
            if ov is not None:
                if ref.origin not in o_stats:
                    o_stats[ref.origin] = tensor_stats(ov)
                rows.append({"Index": index, **base, "DataTypeFlag": "Origin", **o_stats[ref.origin],
                             "Clip": np.float32(0.0), "CosineSimilarity": 1.0})
                index += 1
                key = (ref.origin, ref.quant)
                if key not in pairs:
                    pairs[key] = (clip_rate(ov, qv), cosine(ov, qv))
                clip, cos = pairs[key]
            else:
                clip, cos = np.float32(0.0), 1.0
            if ref.quant not in q_stats:
                q_stats[ref.quant] = tensor_stats(qv)
            rows.append({"Index": index, **base, "DataTypeFlag": "Dequant", **q_stats[ref.quant],
                         "Clip": clip, "CosineSimilarity": cos})
            index += 1
            if ref.inout == "Output" and ref.name in plan.origin_outputs:
                outputs.append((ref.name, as_run.get(ref.name, cos)))
            if ov is not None and ref.kind == "Activation" and np.issubdtype(qv.dtype, np.floating) \
                    and ref.inout == "Output":  # each activation once: as the output of its producer
                candidates.append((cos, {"node": rec.node, "tensor": ref.name, "inout": ref.inout, "ov": ov, "qv": qv}))
    candidates.sort(key=lambda c: c[0])
    worst = []
    for cos, c in candidates[:WORST_PER_ROUND]:
        lo = float(min(np.nanmin(c["ov"]), np.nanmin(c["qv"])))
        hi = float(max(np.nanmax(c["ov"]), np.nanmax(c["qv"])))
        worst.append({"node": c["node"], "tensor": c["tensor"], "inout": c["inout"], "cosine": cos,
                      "origin": histogram(c["ov"], lo=lo, hi=hi), "dequant": histogram(c["qv"], lo=lo, hi=hi)})
    return rows, outputs, worst


def debug_round(job: DebugJob, index: int, feeds: dict[str, np.ndarray], out_dir: str) -> RoundOutcome:
    """Compute round ``index`` and write its CSV and Parquet partition; return only the small results."""
    from ptq_core.debug.writer import write_round

    rows, outputs, worst = round_rows(job, feeds)
    write_round(Path(out_dir), index, rows)
    for w in worst:
        w["round"] = index
    return RoundOutcome(index, [(index, name, cos) for name, cos in outputs], worst, len(rows))


__all__ = ["STAT_COLUMNS", "DebugJob", "RoundOutcome", "debug_round", "round_rows"]
