"""Process-local reuse of the FP32 model while a sweep runs, so points 2..N do not parse it again.

Every point of a sweep quantizes the same FP32 file: without this each point parsed it for planning,
again for emission and again for the on-disk size, built an onnxruntime session on it for the summary's
FP32 reference outputs, and FULL_QUANT re-ran the onnxruntime BASIC optimization. Inside
:func:`sharing` (the sweep flow enters it) those results are kept per file and handed to the next point;
outside it every call loads afresh, as before, so a single conversion holds nothing extra.

Correctness rules:

* Entries are keyed by the resolved path and checked on every use against the model file's stat
  (size, mtime_ns, ctime_ns, inode) and the stat of each external data file it references; any change,
  e.g. the same path with new bytes, drops the file's entry and loads again. The stat is taken before
  the parse, so a write during a parse makes the next use reload.
* Shared protos are read-only. Consumers that change a model in place get a copy
  (:func:`prepared_copy`, :func:`full_model`); tests check that a sweep leaves the shared protos
  byte-identical (tests/test_sweep_model_cache.py).
* Memory is bounded: at most ``MAX_FILES`` model files are held (least recently used goes first), each
  with only the variants its sweep asked for, and everything is released when the outermost
  :func:`sharing` block ends.
* Thread-safe: points run in parallel threads; one lock per file makes a second point wait for the
  first's load instead of parsing the same file twice.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

MAX_FILES = 2

_lock = threading.Lock()
_depth = 0
_files: OrderedDict[str, "_Entry"] = OrderedDict()
loads: dict[str, int] = {}  # variant -> fresh loads while sharing (read by tests and the benchmark)


@dataclass
class _Entry:
    stamp: tuple
    deps: tuple[tuple[str, tuple], ...] = ()
    values: dict = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


def _stat(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _fresh(entry: _Entry, path: str) -> bool:
    try:
        return _stat(path) == entry.stamp and all(_stat(p) == s for p, s in entry.deps)
    except OSError:
        return False


def active() -> bool:
    return _depth > 0


@contextmanager
def sharing() -> Iterator[None]:
    """Reuse loaded FP32 models inside the block (re-entrant); the outermost exit releases them all."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _files.clear()


def _entry(path: str) -> _Entry:
    """The file's entry, loading the prepared proto (weights left on disk) first when there is none or
    the file changed: it names the external data files whose stat the entry then watches."""
    from ptq_core.onnxgraph.load import _all_tensors, prepare_model

    with _lock:
        entry = _files.get(path)
        if entry is not None and (not entry.stamp or _fresh(entry, path)):  # no stamp yet: being loaded
            _files.move_to_end(path)
            return entry
        entry = _Entry(stamp=())
        _files[path] = entry
        _files.move_to_end(path)
        while len(_files) > MAX_FILES:
            _files.popitem(last=False)
    with entry.lock:
        if not entry.stamp:
            stamp = _stat(path)
            model = prepare_model(path, load_data=False)
            base = Path(path).parent
            locations = {dict((e.key, e.value) for e in t.external_data).get("location", "")
                         for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL}
            entry.deps = tuple((str(base / loc), _stat(str(base / loc))) for loc in sorted(locations) if loc)
            entry.values["prepared"] = model
            _count("prepared")
            entry.stamp = stamp
    return entry


def _count(variant: str) -> None:
    with _lock:
        loads[variant] = loads.get(variant, 0) + 1


def _value(path: str | Path, variant, build: Callable[[_Entry], object]):
    path = str(Path(path).resolve())
    entry = _entry(path)
    with entry.lock:
        if variant not in entry.values:
            entry.values[variant] = build(entry)
            _count(variant if isinstance(variant, str) else variant[0])
        return entry.values[variant]


def _loaded(entry: _Entry, path: str) -> onnx.ModelProto:
    """The prepared proto with its external data read in, as ``prepare_model(path)`` returns it."""
    from ptq_core.errors import ModelError

    model = entry.values["prepared"]
    if not entry.deps:
        return model  # nothing was left on disk: the same proto
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        onnx.load_external_data_for_model(out, str(Path(path).parent.resolve()))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read external data ({exc})") from None
    return out


def prepared_model(path: str | Path, load_data: bool = True) -> onnx.ModelProto:
    """``load.prepare_model(path, load_data)``; shared while sharing, so the caller must not change it."""
    from ptq_core.onnxgraph.load import prepare_model

    if not active():
        return prepare_model(path, load_data)
    if not load_data:
        return _value(path, "prepared", lambda e: e.values["prepared"])
    return _value(path, "loaded", lambda e: _loaded(e, str(Path(path).resolve())))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def prepared_copy(path: str | Path, load_data: bool = True) -> onnx.ModelProto:
    """A model the caller may change: a copy of the shared one while sharing, else a fresh load."""
    from ptq_core.onnxgraph.load import prepare_model

    if not active():
        return prepare_model(path, load_data)
    return _copy(prepared_model(path, load_data))


def full_model(path: str | Path) -> onnx.ModelProto:
    """``full_quant.prepare_full_model(path)`` as a copy the caller may change (FULL_QUANT edits the
    graph it plans on, e.g. added biases); the optimization runs once per file while sharing."""
    from ptq_core.modes.full.prepare import prepare_full_model

    if not active():
        return prepare_full_model(path)
    shared = _value(path, "full", lambda e: prepare_full_model(path, model=prepared_model(path, True)))
    return _copy(shared)


def remembered(path: str | Path, name: str, compute: Callable[[], object]):
    """``compute()`` once per file while sharing (a small derived value such as the size on disk)."""
    if not active():
        return compute()
    return _value(path, ("value", name), lambda e: compute())


def feeds_digest(feeds: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def reference_outputs(path: str | Path, kind: str, feeds: dict[str, np.ndarray], compute: Callable[[], list]) -> list:
    """The FP32 model's outputs on ``feeds``: ``compute()`` once per file, session ``kind`` and inputs while
    sharing. The arrays are made read-only, since the next point gets the same ones."""
    if not active():
        return compute()

    def build(entry):
        outputs = compute()
        for array in outputs:
            if isinstance(array, np.ndarray):
                array.setflags(write=False)
        return outputs

    return _value(path, ("reference", kind, feeds_digest(feeds)), build)
