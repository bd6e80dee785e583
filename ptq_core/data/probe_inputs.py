"""Inputs to run a model on when the user gave no data: the output-cosine check of the data-free modes.

WEIGHT_QUANT and DYNAMIC_QUANT need no data, so the check that the written model still computes what the
FP32 one does is best effort. With ``--inputShape`` (or calibration data) the inputs are the user's; for
dynamic dims nobody fixed, a few plausible sizes are tried in turn (the generic 16, then common image
sizes for image-shaped inputs, longer sequences for token inputs), and integer scalar inputs take the
values the graph compares them with (``sr == 16000`` in a VAD's ``If``) before ones. When none of them
runs, the model is written anyway and the summary says the check was skipped, why, and which input
needs ``--inputShape``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_core.onnxgraph.session import (
    DEFAULT_DYNAMIC_DIM,
    InputSpec,
    input_specs,
    random_feeds,
)

IMAGE_SIZES = (224, 320, 640, 32)  # square spatial sizes tried for [N, C, H, W] inputs, in order
SEQUENCE_LENGTHS = (128, 512)  # tried for [N, T] token or audio-window inputs after the generic size
MAX_TRIES = 6


@dataclass(frozen=True)
class Candidate:
    feeds: dict[str, np.ndarray]
    source: str  # how the summary names these inputs


def compared_constants(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Per graph input, the integer constants the graph compares it with (Equal / Greater / Less ...)."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer  # scalars only, never external data
              if t.data_location != onnx.TensorProto.EXTERNAL and int(np.prod(t.dims)) <= 1}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                consts[node.output[0]] = numpy_helper.to_array(value.t)
    inputs = {i.name for i in model.graph.input}
    found: dict[str, list[int]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"):
            continue
        for a, b in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            if a in inputs and b in consts and consts[b].size == 1 and consts[b].dtype.kind in "iu":
                value = int(consts[b].reshape(-1)[0])
                if value not in found.setdefault(a, []):
                    found[a].append(value)
    return found


def _dynamic(dims) -> list[int]:
    return [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]


def _shape_tries(dims, given: tuple[int, ...] | None) -> list[tuple[int, ...]]:
    if given is not None:
        return [given]
    base = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else DEFAULT_DYNAMIC_DIM) for i, d in enumerate(dims))
    tries = [base]
    dynamic = [i for i in _dynamic(dims) if i > 0]
    if len(dims) == 4 and dynamic:
        channels_first = isinstance(dims[1], int) and dims[1] in (1, 3, 4) or not isinstance(dims[3], int)
        spatial = (2, 3) if channels_first else (1, 2)
        for size in IMAGE_SIZES:
            shape = list(base)
            for i in spatial:
                if i in dynamic:
                    shape[i] = size
            for i in dynamic:
                if i not in spatial:
                    shape[i] = 3
            tries.append(tuple(shape))
    elif len(dims) == 2 and dynamic:
        tries += [tuple(n if i in dynamic else d for i, d in enumerate(base)) for n in SEQUENCE_LENGTHS]
    elif dynamic:  # a state or mask beside the main input: its free dims are most often a batch of 1
        tries.append(tuple(1 if i in dynamic else d for i, d in enumerate(base)))
    return list(dict.fromkeys(tries))


def candidates(graph, model_inputs, shapes: dict[str, tuple[int, ...]]) -> Iterator[Candidate]:
    """Input sets to try, most plausible first, at most ``MAX_TRIES``. ``graph()`` gives the model (read
    only when an input is an integer, to find the values the graph compares it with)."""
    specs = input_specs(model_inputs, shapes)
    integers = any(not np.issubdtype(s.dtype, np.floating) for s in specs)
    compared = compared_constants(graph()) if integers else {}
    per_input: list[list[InputSpec]] = []
    for spec, (name, _, dims) in zip(specs, model_inputs):
        tries = _shape_tries(dims, shapes.get(name))
        per_input.append([InputSpec(spec.name, spec.dtype, s) for s in tries])
    # the inputs' tries advance together: the k-th candidate takes each input's k-th shape (or its last)
    count = max(len(t) for t in per_input) if per_input else 1
    yielded = 0
    for k in range(count):
        chosen = [t[min(k, len(t) - 1)] for t in per_input]
        feeds = random_feeds(chosen)
        for spec in chosen:
            values = compared.get(spec.name)
            if values and not np.issubdtype(spec.dtype, np.floating):
                feeds[spec.name] = np.full(spec.shape, values[0], dtype=spec.dtype)
        shapes_text = "; ".join(f"{s.name}:{','.join(map(str, s.shape))}" if s.shape else
                                f"{s.name}={feeds[s.name].item()}" for s in chosen)
        yield Candidate(feeds, f"generated inputs ({shapes_text}; uniform [0.1, 1) floats, integers "
                               "as the graph compares them, else ones)")
        yielded += 1
        if yielded >= MAX_TRIES:
            return


def needs_shape_hint(model_inputs, shapes: dict[str, tuple[int, ...]]) -> str:
    """The ``--inputShape`` a user would give, with placeholders for the dims nobody fixed."""
    parts = []
    for name, _, dims in model_inputs:
        if name in shapes or not _dynamic(dims):
            continue
        parts.append(f"{name}:" + ",".join("1" if i == 0 and not (isinstance(d, int) and d > 0) else
                                           str(d) if isinstance(d, int) and d > 0 else f"<{d}>"
                                           for i, d in enumerate(dims)))
    return ";".join(parts)
