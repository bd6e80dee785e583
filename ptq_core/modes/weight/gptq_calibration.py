"""GPTQ's calibration pass (docs/gptq.md): the Hessian of the input of every MatMul/Gemm whose weight
GPTQ rounds, and of the input patches of every Conv (``conv_patches``), collected by the
activation-statistics machinery (serially, on Dask, or on a remote scheduler) from the same calibration
rounds FULL_QUANT reads.

Only what GPTQ can use is collected: a weight at input B of a MatMul or Gemm in the main graph, whose
A input is an activation with the contraction along its last axis (Gemm without ``transA``), and a Conv
weight as ``conv_patches`` says. A weight
several nodes read gets the Hessian of all their inputs together (the sum of their output errors is
what its rounding should minimise). Other weights are rounded to nearest, and the summary says why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ptq_core.modes.weight.gptq import GPTQ_OPS
from ptq_core.onnxgraph.sites import WeightSite

METHOD = "GPTQ_HESSIAN"


def gptq_inputs(model: onnx.ModelProto, sites: list[WeightSite]) -> dict[str, tuple[str, ...]]:
    """Weight tensor -> the activation tensors its readers multiply it with (only weights GPTQ can round)."""
    inits = {t.name for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    wanted: dict[str, list[str]] = {}
    refused: set[str] = set()
    for site in sites:
        node = nodes.get(site.node) if not site.graph else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute} if node is not None else {}
        usable = (node is not None and site.op_type in GPTQ_OPS and site.input_index == 1 and len(site.shape) == 2
                  and not attrs.get("transA", 0) and node.input[0] not in inits)
        if not usable:
            refused.add(site.tensor)
            continue
        wanted.setdefault(site.tensor, []).append(node.input[0])
    return {w: tuple(a) for w, a in wanted.items() if w not in refused}


def combined_hessians(wanted: dict[str, tuple[str, ...]], observers: dict) -> dict[str, np.ndarray]:
    """Each weight's H = 2/n · Σ over its readers' input rows of x xᵀ."""
    out = {}
    for weight, acts in wanted.items():
        states = [observers[a].to_state() for a in dict.fromkeys(acts)]
        total = sum(s["sum"] for s in states if s["sum"] is not None)
        rows = sum(int(s["rows"]) for s in states)
        out[weight] = np.asarray(total, np.float64) * (2.0 / rows) if rows else None
    return {w: h for w, h in out.items() if h is not None}


def save_hessians(hessians: dict[str, np.ndarray], path: Path) -> Path:
    from ptq_core.files import write_atomic
    import io

    buf = io.BytesIO()
    names = sorted(hessians)
    np.savez(buf, names=np.array(names), **{f"h{i}": hessians[n] for i, n in enumerate(names)})
    write_atomic(path, buf.getvalue())
    return path


def load_hessians(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {str(n): data[f"h{i}"] for i, n in enumerate(data["names"])}


def collect_hessians(model_path: str, cfg, inputs, work_dir: Path, collector=None,
                     rounds: list | None = None) -> dict[str, np.ndarray]:
    """The Hessian of every weight GPTQ will round (the common filters applied), from the calibration set.

    ``collector`` has ``collect.collect_serial``'s signature (the flow passes its Dask one); ``rounds`` are
    the preprocessed calibration rounds when the caller has them already."""
    from ptq_core.modes.full.pipeline import calibration_rounds, collect_statistics
    from ptq_core.modes.weight.conv_patches import with_conv_patches
    from ptq_core.modes.weight.plan import skip_reason
    from ptq_core.onnxgraph import cache as model_cache
    from ptq_core.onnxgraph.sites import find_weight_sites
    from ptq_core.stats import collect

    model = model_cache.prepared_model(model_path, load_data=True)
    sites = [s for s in find_weight_sites(model) if skip_reason(s, cfg) is None]
    wanted = gptq_inputs(model, sites)
    model, conv_wanted = with_conv_patches(model, sites)  # a Conv's Hessian is over its input patches
    wanted.update(conv_wanted)
    if not wanted:
        return {}
    if rounds is None:
        rounds = calibration_rounds(cfg, model, inputs, Path(work_dir) / "shards")
    tensors = tuple(sorted({a for acts in wanted.values() for a in acts}))
    observers = collect_statistics(model, tensors, rounds, METHOD, Path(work_dir) / "models",
                                   collector or collect.collect_serial)
    return combined_hessians(wanted, observers)
