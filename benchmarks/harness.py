"""Measurement helpers for the weight-quantization benchmark (ONNX Runtime, CPU)."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


def session_options(threads: int | None = 1):
    """SessionOptions with intra/inter-op threads pinned (None = ORT's default)."""
    ort = _ort()
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def make_session(path: str | Path, threads: int | None = 1):
    ort = _ort()
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- size
def external_data_files(path: str | Path) -> list[Path]:
    """Files holding the model's external data (initializers and Constant nodes)."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    locs: set[str] = set()

    def scan_tensor(t):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    locs.add(e.value)

    def scan_graph(g):
        for t in g.initializer:
            scan_tensor(t)
        for st in g.sparse_initializer:
            scan_tensor(st.values)
            scan_tensor(st.indices)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    scan_tensor(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    scan_graph(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        scan_graph(sg)

    scan_graph(m.graph)
    for f in m.functions:
        for n in f.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    scan_tensor(a.t)
    return [path.parent / loc for loc in sorted(locs)]


def file_size(path: str | Path) -> int:
    """Bytes on disk of the .onnx file plus every external-data file it references."""
    path = Path(path)
    total = path.stat().st_size
    for f in external_data_files(path):
        total += f.stat().st_size
    return total


# --------------------------------------------------------------------------- timing
def session_creation_time(path: str | Path, repeats: int = 5, threads: int | None = 1) -> float:
    """Median seconds for ort.InferenceSession(path) (graph optimizations ORT_ENABLE_ALL)."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        s = make_session(path, threads)
        times.append(time.perf_counter() - t0)
        del s
    return statistics.median(times)


def latency_ms(
    path_or_session,
    feeds: Mapping[str, np.ndarray],
    threads: int = 1,
    warmup: int = 10,
    iters: int = 50,
) -> float:
    """Median wall time (ms) of one session.run(feeds), intra/inter-op threads = `threads`."""
    sess = path_or_session if hasattr(path_or_session, "run") else make_session(path_or_session, threads)
    return statistics.median(_run_times(sess, feeds, warmup, iters))


def _run_times(sess, feeds, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        sess.run(None, feeds)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def interleaved_latency_ms(
    sessions: Mapping[str, object],
    feeds: Mapping[str, np.ndarray] | None,
    rounds: int = 5,
    warmup: int = 5,
    iters: int = 20,
    feeds_of: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, float]:
    """Median latency per session, measured round-robin: every round runs `iters`
    timed calls of each session in turn, so load drift on a shared machine hits all
    rows alike (ratios vs FP32 stay meaningful). ``feeds_of`` gives a session its own
    inputs (models with different input dtypes). Returns {name: median ms}."""
    def inputs(k):
        return feeds_of[k] if feeds_of and k in feeds_of else feeds

    times: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, inputs(k))
    for r in range(rounds):
        names = list(sessions)
        if r % 2:
            names.reverse()
        for k in names:
            times[k] += _run_times(sessions[k], inputs(k), 0, iters)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------- accuracy
def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    m = attention_mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)


def embed(path_or_session, batch: Mapping[str, np.ndarray], chunk: int = 32, threads: int | None = None) -> np.ndarray:
    """Mean-pooled (attention-masked) last_hidden_state, [n, 384], in chunks of `chunk` rows."""
    sess = path_or_session if hasattr(path_or_session, "run") else make_session(path_or_session, threads)
    names = {i.name for i in sess.get_inputs()}
    n = len(batch["input_ids"])
    outs = []
    for i in range(0, n, chunk):
        feeds = {k: v[i : i + chunk] for k, v in batch.items() if k in names}
        h = sess.run(None, feeds)[0]
        outs.append(mean_pool(h, batch["attention_mask"][i : i + chunk]))
    return np.concatenate(outs).astype(np.float64)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine similarity between a[i] and b[i] (flattened rows)."""
    return float(np.mean(cosine_rows(a, b)))


# --------------------------------------------------------------------------- memory
_RSS_SNIPPET = r"""
import json, sys, time
import onnxruntime as ort

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    return float("nan")

so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.log_severity_level = 3
base = status("VmRSS")
t0 = time.perf_counter()
s = ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
dt = time.perf_counter() - t0
print(json.dumps({"base_rss_mb": base, "peak_rss_mb": status("VmHWM"), "create_s": dt}))
"""


def peak_rss_mb(path: str | Path, python: str | None = None) -> dict:
    """Memory of loading `path` in a fresh process (after `import onnxruntime`):
    {'base_rss_mb': RSS before the session, 'peak_rss_mb': high-water mark after creating it,
     'load_rss_mb': the difference}. Read from /proc/self/status (VmRSS / VmHWM), which, unlike
    getrusage's ru_maxrss, is not inherited from the parent across fork+exec."""
    out = subprocess.run(
        [python or sys.executable, "-c", _RSS_SNIPPET, str(path)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    d = json.loads(out.stdout.strip().splitlines()[-1])
    d["load_rss_mb"] = d["peak_rss_mb"] - d["base_rss_mb"]
    return d


def timed(fn: Callable, *a, **kw):
    """(result, seconds)"""
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t0


def environment(packages: tuple[str, ...]) -> dict:
    """Python, CPU and ISA, package versions, git commit (and whether tool sources were modified), UTC date."""
    import datetime as _dt
    import importlib.metadata as md
    import platform

    ROOT = Path(__file__).resolve().parent.parent

    vers = {}
    for p in packages:
        try:
            vers[p] = md.version(p)
        except md.PackageNotFoundError:
            vers[p] = None
    from ptq_core.onnxgraph.cpu import machine_isa

    cpu = machine_isa()  # CPU model and the int8 ISA flags: a figure from one kind says nothing of another
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=str(ROOT)).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "ptq_core", "ptqflow", "flows", "tasks"],
                                    capture_output=True, text=True, cwd=str(ROOT)).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    return {"python": platform.python_version(), "cpu": cpu, "cores": os.cpu_count(), "packages": vers,
            "git": commit + (" (tool sources modified)" if dirty else ""),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write_results(name: str, md: str, data: dict) -> None:
    """``benchmarks/results/<name>.md`` and ``.json`` (the table and the data behind it), and the table on stdout."""
    import json

    results = Path(__file__).resolve().parent / "results"
    (results / f"{name}.md").write_text(md)
    (results / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))
    print(md)
