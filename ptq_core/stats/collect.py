"""Calibration statistics: run the FP32 model with chosen intermediate tensors exposed, one round at a time.

Each worker process keeps one onnxruntime session per model (built once, single-threaded so
workers do not oversubscribe cores) and folds every round into small mergeable observers; no
activation outlives its round, so memory does not grow with the calibration set. The chunk
function is plain Python so that a Dask worker, a test or a loop can call it alike.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import shape_inference

from ptq_core.errors import DataError
from ptq_core.files import write_atomic
from ptq_core.stats.observers import make_observer, observer_class

_SESSIONS: dict[tuple[str, int], object] = {}
_IN_GRAPH: dict[str, object] = {}  # in-graph statistics model path -> its layout
_LOCK = threading.Lock()


def expose_tensors(model: onnx.ModelProto, tensors: Sequence[str], untyped_as_float: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs also include ``tensors``, typed where shape inference knows.

    A tensor inference cannot type is declared float32 (calibration exposes float activations only),
    or left untyped with ``untyped_as_float=False`` (the debug report exposes integer tensors too and
    lets onnxruntime take the type from the producing node).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        inferred = shape_inference.infer_shapes(out)
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    except Exception:
        known = {}
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name in present:
            continue
        info = known.get(name)
        if info is not None and info.type.tensor_type.elem_type:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(info)
        elif untyped_as_float:
            vi = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        else:
            vi = onnx.ValueInfoProto(name=name)
        out.graph.output.append(vi)
        present.add(name)
    return out


def exposed_model_path(model: onnx.ModelProto, tensors: Sequence[str], folder: Path, key: str,
                       untyped_as_float: bool = True) -> Path:
    """Write the exposed model once under a content key, so workers load it by path.

    ``key`` must cover the model *and* the tensor set: the file is reused whenever it exists.
    """
    return model_file(folder / f"exposed-{key}.onnx", lambda: expose_tensors(model, tensors, untyped_as_float))


def model_file(path: Path, build) -> Path:
    """``build()``'s model written to ``path`` unless it is there already (the name is a content key).

    Written under a temporary name and renamed: concurrent runs and sweep points share the folder.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, build().SerializeToString(deterministic=True))
    return path


def _session(model_path: str):
    """This thread's session of ``model_path``: Dask's worker threads each run their own (two threads
    sharing one session ran 10 % slower on a text recognizer, measured)."""
    key = (model_path, threading.get_ident())
    with _LOCK:
        session = _SESSIONS.get(key)
    if session is None:
        from ptq_core.onnxgraph.session import make_session

        # no arena and no memory pattern: the arena keeps each run's peak activations (about 100 MB on a
        # text recognizer exposing every tensor) for the session's life, and without the arena the
        # pattern planner only slows concurrent runs (31 vs 23 ms a sample on 2 threads, measured)
        session = make_session(model_path, threads=1, arena=False)
        with _LOCK:
            session = _SESSIONS.setdefault(key, session)
    return session


def forget_sessions(model_path: str) -> None:
    """Drop this process's sessions of ``model_path`` once its pass is over (their weights and buffers)."""
    reduced = _in_graph_path(model_path)
    with _LOCK:
        for key in [k for k in _SESSIONS if k[0] == model_path or k[0].startswith(reduced)]:
            del _SESSIONS[key]
        for key in [k for k in _IN_GRAPH if k.startswith(reduced)]:
            del _IN_GRAPH[key]


@dataclass(frozen=True)
class Round:
    """One calibration sample: its index and the .npy shard of each model input."""

    index: int
    shards: tuple[tuple[str, str], ...]  # (input name, path)
    sources: tuple[str, ...] = ()  # the user's calibration files behind the shards, for error messages

    def feeds(self) -> dict[str, np.ndarray]:
        return {name: np.load(path, allow_pickle=False) for name, path in self.shards}


def run_round(model_path: str, tensors: tuple[str, ...], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = _session(model_path)
    values = session.run(list(tensors), feeds)
    return dict(zip(tensors, values))


def accumulate(model_path: str, tensors: tuple[str, ...], rounds: Iterable[Round], method: str,
               pass_index: int = 0, start: dict | None = None, progress=None) -> dict:
    """Fold ``rounds`` into one observer per tensor; ``start`` carries observers from a previous pass.

    A pass that needs only each tensor's min and max (``reads_extremes``) runs the reduced model of
    :mod:`ptq_core.stats.in_graph` instead of handing every activation back.
    """
    observers = {t: (start[t].spawn() if start else make_observer(method)) for t in tensors}
    kind = observer_class(method)
    reduced = binned = None
    if kind.reads_extremes(pass_index):
        reduced = extremes_session(model_path, tensors)
    elif kind.reads_bin_indices(pass_index) and tensors:
        binned = bins_session(model_path, {t: observers[t].interval for t in tensors})
    for done, rnd in enumerate(rounds, start=1):
        if progress:
            progress(done)
        feeds = rnd.feeds()
        if binned is not None:
            _observe_bins(binned, feeds, observers, rnd)
        elif reduced is None or not _observe_extremes(reduced, feeds, observers, pass_index):
            _observe(run_round(model_path, tensors, feeds), observers, pass_index, rnd)
    return observers


def _observe(values: dict[str, np.ndarray], observers: dict, pass_index: int, rnd: Round) -> None:
    for name in list(values):
        # popped as observed, so this round's outputs are freed before the next run allocates its own:
        # holding two rounds at once doubled the pass's peak memory (every exposed tensor of a sample
        # is about 150 MB on a text recognizer)
        x = values.pop(name)
        try:
            # every observer takes the tensor's min and max first, through which NaN and Inf show:
            # no separate finiteness pass over the data
            observers[name].update(x, pass_index)
        except ValueError:
            if np.all(np.isfinite(x)):
                raise
            files = rnd.sources or tuple(p for _, p in rnd.shards)
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise DataError(
                f"calibration sample {rnd.index} ({', '.join(files)}): tensor {name!r} has {bad} NaN or Inf "
                f"value{'s' if bad != 1 else ''} of {x.size}, although the inputs are finite; the FP32 model "
                "overflows on this sample (check the sample's preprocessing and the model)"
            ) from None
        del x


def _observe_extremes(reduced, feeds: dict[str, np.ndarray], observers: dict, pass_index: int) -> bool:
    """One round through the reduced model; False (nothing observed) when a reduction is not finite,
    so that the caller observes the round's tensors themselves and reports exactly what is wrong."""
    session, layout = reduced
    if not layout.outputs():
        return True
    values = dict(zip(layout.outputs(), session.run(layout.outputs(), feeds)))
    triples = {t: tuple(float(values[n]) for n in names) for t, names in layout.reduced.items()}
    if not all(math.isfinite(v) for triple in triples.values() for v in triple):
        return False
    for tensor, (lo, hi, _) in triples.items():
        observers[tensor].update_extremes(lo, hi, pass_index)
    for tensor in layout.raw:
        observers[tensor].update(values.pop(tensor), pass_index)
    return True


def _observe_bins(binned, feeds: dict[str, np.ndarray], observers: dict, rnd: Round) -> None:
    session, layout, bins = binned
    names = layout.outputs()
    values = dict(zip(names, session.run(names, feeds)))
    for tensor, name in layout.indices.items():
        index = values.pop(name).reshape(-1)
        observers[tensor].update_bin_counts(np.bincount(index, minlength=bins + 1), index.size)
        del index
    _observe({t: values.pop(t) for t in layout.raw}, observers, 1, rnd)


def bins_session(model_path: str, intervals: dict[str, float]):
    """This thread's session of the KL bins model beside ``model_path``, its layout and the bin count."""
    from ptq_core.stats.in_graph import bins_model
    from ptq_core.stats.kl_observer import KL_BINS

    key = repr(sorted((t, float(v)) for t, v in intervals.items()))
    session, layout = _in_graph_session(model_path, "bins", key,
                                        lambda exposed: bins_model(exposed, intervals, KL_BINS))
    return session, layout, KL_BINS


def extremes_session(model_path: str, tensors: tuple[str, ...]):
    """This thread's session of the reduced (min/max) model beside ``model_path``, and its layout."""
    from ptq_core.stats.in_graph import extremes_model

    return _in_graph_session(model_path, "extremes", "\n".join(tensors),
                             lambda exposed: extremes_model(exposed, tensors))


def _in_graph_session(model_path: str, kind: str, key: str, build):
    """A statistics model ``build(exposed model)`` makes, written once beside ``model_path`` under a content
    key (``_in_graph_path``), with its layout remembered, and this thread's session of it."""
    path = _in_graph_path(model_path, f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx")
    with _LOCK:
        layout = _IN_GRAPH.get(path)
        if layout is None:
            model, layout = build(onnx.load(model_path))
            model_file(Path(path), lambda: model)
            _IN_GRAPH[path] = layout
    _drop_other_passes(_in_graph_path(model_path), path)
    return _session(path), layout


def _drop_other_passes(prefix: str, keep: str) -> None:
    """This thread's sessions of the other statistics models of one exposed model: a pass's model replaces
    the one before it (KL's min/max sessions, about 40 MB each on a text recognizer, stayed alive through
    its histogram pass and held the statistics phase's peak)."""
    me = threading.get_ident()
    with _LOCK:
        for key in [k for k in _SESSIONS if k[1] == me and k[0] != keep and k[0].startswith(prefix)]:
            del _SESSIONS[key]


def _in_graph_path(model_path: str, suffix: str = "") -> str:
    """Where the in-graph statistics models of ``model_path`` go; ``forget_sessions`` drops them by prefix."""
    return str(Path(model_path).with_name(f"{Path(model_path).stem}-ingraph-{suffix}"))


def merge_all(parts: list[dict]) -> dict:
    """Pairwise tree merge of per-chunk observer dicts (associative, so order does not matter)."""
    if not parts:
        raise ValueError("nothing to merge")
    while len(parts) > 1:
        merged = []
        for i in range(0, len(parts), 2):
            if i + 1 < len(parts):
                a, b = parts[i], parts[i + 1]
                merged.append({k: a[k].merge(b[k]) for k in a})
            else:
                merged.append(parts[i])
        parts = merged
    return parts[0]


def chunks(rounds: list[Round], n: int) -> list[list[Round]]:
    """Split rounds into at most n contiguous chunks of near-equal size."""
    n = max(1, min(n, len(rounds)))
    size, extra = divmod(len(rounds), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(rounds[start:end])
        start = end
    return [c for c in out if c]


def collect_serial(model_path: str, tensors: tuple[str, ...], rounds: list[Round], method: str,
                   passes: int | None = None, progress=None) -> dict:
    """Reference path without Dask: every pass over all rounds in this process.

    ``progress(done, total, label)`` is told after each round (total counts every pass).
    """
    total_passes = observer_class(method).passes
    report = (lambda base: (lambda k: progress(base + k, total_passes * len(rounds), "calibration"))) \
        if progress else (lambda base: None)
    observers = accumulate(model_path, tensors, rounds, method, 0, progress=report(0))
    total = passes or next(iter(observers.values())).passes if observers else 1
    for p in range(1, total):
        for obs in observers.values():
            obs.begin_pass(p)
        observers = accumulate(model_path, tensors, rounds, method, p, observers, progress=report(p * len(rounds)))
    return observers
