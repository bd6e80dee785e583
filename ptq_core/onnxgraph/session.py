"""Running models in onnxruntime: sample inputs, sessions, output comparison.

Used to measure what quantization did (output cosine vs FP32) and by auto_tune's search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_core.errors import ConfigError, ModelError
from ptq_core.quant import cosine

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}

DEFAULT_DYNAMIC_DIM = 16


def parse_input_shape(text: str) -> dict[str, tuple[int, ...]]:
    """converter_lite's ``--inputShape="name:1,3,48,320;name2:1,128"``."""
    shapes: dict[str, tuple[int, ...]] = {}
    if not text:
        return shapes
    for item in text.split(";"):
        if not item:
            continue
        if ":" not in item:
            raise ConfigError(f"--inputShape item {item!r} has no ':'; write name:d0,d1,...[;name2:...]")
        name, dims = item.rsplit(":", 1)
        if not re.fullmatch(r"\d+(,\d+)*", dims):
            raise ConfigError(f"--inputShape {name}:{dims}: dims must be positive integers separated by ','")
        values = tuple(int(d) for d in dims.split(","))
        if any(v <= 0 for v in values):
            raise ConfigError(f"--inputShape {name}:{dims}: every dim must be > 0")
        shapes[name] = values
    return shapes


@dataclass(frozen=True)
class InputOptions:
    """How to feed the model when the tool runs it: converter_lite's --inputShape and --inputDataFormat."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    data_format: str = "NCHW"
    format_given: bool = True  # False: --inputDataFormat was absent and NCHW is assumed (the summary says so)

    @classmethod
    def from_flags(cls, input_shape: str = "", data_format: str | None = None) -> "InputOptions":
        if data_format is not None and data_format not in ("NCHW", "NHWC"):
            raise ConfigError(f"--inputDataFormat={data_format}: must be NCHW or NHWC")
        return cls(tuple(sorted(parse_input_shape(input_shape).items())), data_format or "NCHW",
                   data_format is not None)

    @property
    def shape_map(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: type
    shape: tuple[int, ...]


def input_specs(inputs, shapes: dict[str, tuple[int, ...]] | None = None) -> list[InputSpec]:
    """Concrete shapes for the model inputs: --inputShape where given, else 1 for the batch and 16 elsewhere."""
    shapes = shapes or {}
    names = [name for name, _, _ in inputs]
    for name in shapes:
        if name not in names:
            from ptq_core.errors import did_you_mean

            raise ConfigError(f"--inputShape names {name!r}, which is not a model input{did_you_mean(name, names)}")
    specs = []
    for name, elem, dims in inputs:
        if elem not in _NP_TYPES:
            raise ModelError(f"model input {name!r} has element type {onnx.TensorProto.DataType.Name(elem)}, which ptqflow cannot feed")
        if name in shapes:
            shape = shapes[name]
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
                raise ConfigError(f"--inputShape {name}:{','.join(map(str, shape))} does not fit the model's shape {list(dims)}")
        else:
            shape = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else DEFAULT_DYNAMIC_DIM) for i, d in enumerate(dims))
        specs.append(InputSpec(name, _NP_TYPES[elem], shape))
    return specs


def random_feeds(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """converter_lite's stand-in data: floats uniform in [0.1, 1.0); integer inputs are all ones.

    (converter_lite draws integers from {0, 1}; ones keep token-id and mask inputs valid.)
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if np.issubdtype(spec.dtype, np.floating):
            feeds[spec.name] = rng.uniform(0.1, 1.0, size=spec.shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.ones(spec.shape, dtype=spec.dtype)
    return feeds


OPTIMIZATION_LEVELS = {"off": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                       "all": "ORT_ENABLE_ALL"}


def make_session(model: onnx.ModelProto | bytes | str, threads: int = 1, lean: bool = False, *,
                 optimization: str = "all", arena: bool = True, profile_prefix: str | None = None,
                 optimized_path: str | None = None, config: dict[str, str] | None = None):
    """The one place an onnxruntime CPU session is made (log silenced: a failure reaches the user as our
    one line, not onnxruntime's log).

    ``lean=True`` is for one run whose outputs are compared (the output cosine of a weight-only model):
    no prepacked copies of the weights, no memory arena, and no graph optimization, so a weight-only
    model's constant decode chains run once instead of being folded (folding holds several float copies
    of every weight at once: 7.6 GiB instead of 1.6 GiB for a 2.25 GiB model, BENCHMARKS.md); and no
    memory reuse plan, whose shared buffers keep every decoded weight alive until the run ends (1.25 GiB
    instead of 0.75 GiB for three 256 MiB weights). The values are the same; only speed and memory differ.
    ``arena=False`` also drops the memory pattern and runs nodes in priority order: for sessions that run
    once per sample on worker threads (statistics), where the arena would keep each run's peak for the
    session's life. ``optimization``:
    "off", "basic" (standard ops only; with ``optimized_path`` the optimized graph is written there),
    "extended" (where the QDQ fusions happen) or "all". ``profile_prefix`` turns onnxruntime's profiler on;
    ``config`` adds session config entries.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    if optimization != "all":
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    if not arena:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        # a node right after the one whose output it reads runs right after it (the statistics models'
        # reductions and probes), so each tensor is freed early: the default order ran them last and
        # held every activation of the sample until then (430 MB instead of 60 on a text recognizer)
        order = getattr(getattr(ort, "ExecutionOrder", None), "PRIORITY_BASED", None)
        if order is not None:
            options.execution_order = order
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.enable_cpu_mem_arena = False
        options.enable_mem_reuse = False
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {first}") from None


def run(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime failed to run the model: {first}") from None


FEW_VALUES = 3  # a float output with this many values or fewer: its cosine on one input says little (1: the sign)


def has_few_values(output) -> bool:
    """A float output of ``FEW_VALUES`` values or fewer, whose cosine on one input is little more than its sign."""
    a = np.asarray(output)
    return np.issubdtype(a.dtype, np.floating) and 0 < a.size <= FEW_VALUES


class PooledOutputCosine:
    """Mean output cosine over many inputs, where an output of ``FEW_VALUES`` values or fewer (a VAD's speech
    probability, a single logit) is scored once, by the cosine of its values from every input together:
    per input its cosine is 1 whenever the signs agree, so a mean of those would never see it move. Other
    outputs get the mean of their per-input cosines, as ``output_cosine`` gives them."""

    def __init__(self) -> None:
        self._sums: dict[int, float] = {}
        self._few: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self._inputs = 0

    def add(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> None:
        for j, (a, b) in enumerate(zip(reference, candidate)):
            a, b = np.asarray(a), np.asarray(b)
            if not np.issubdtype(a.dtype, np.floating):
                continue
            if has_few_values(a):
                ref, got = self._few.setdefault(j, ([], []))
                ref.append(a.astype(np.float64).ravel())
                got.append(b.astype(np.float64).ravel())
            else:
                self._sums[j] = self._sums.get(j, 0.0) + cosine(a, b)
        self._inputs += 1

    def value(self) -> float:
        values = [total / self._inputs for total in self._sums.values()]
        values += [cosine(np.concatenate(ref), np.concatenate(got)) for ref, got in self._few.values()]
        return float(np.mean(values)) if values else 1.0


def output_cosine(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean over model outputs of the cosine similarity (auto_tune's objective)."""
    values = [cosine(a, b) for a, b in zip(reference, candidate) if np.issubdtype(np.asarray(a).dtype, np.floating)]
    return float(np.mean(values)) if values else 1.0


