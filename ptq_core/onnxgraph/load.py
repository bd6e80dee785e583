"""Reading a model the way every mode needs it: external data checked and loaded, Constant nodes as
initializers, stable node names, opset at least 13, and ptqflow's metadata."""

from __future__ import annotations

import hashlib
import mmap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_core.errors import ModelError
from ptq_core.onnxgraph.fold import fold_weight_chains
from ptq_core.onnxgraph.walk import graph_at, node_bodies


def file_sha256(path: str | Path, locations: list[str] | None = None) -> str:
    """Content hash of the model file plus any external data files beside it that it references.

    ``locations``: those files' names when the caller already has the parsed model
    (:func:`external_locations`); otherwise the model is parsed, without its data, to find them.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    for location in (_external_locations(path) if locations is None else locations):
        h.update(b"\x00external:" + location.encode())
        with open(Path(path).parent / location, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _external_locations(path: str | Path) -> list[str]:
    # every external tensor carries the key "location": a file without those bytes has none, and a
    # byte search is much cheaper than parsing a large model (a chance match only costs the parse)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"location") < 0:
                return []
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    return external_locations(model)


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The external data files a model's tensors point to, in first-use order."""
    found = []
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            if location and location not in found:
                found.append(location)
    return found


def _check_external(tensor: onnx.TensorProto, base: Path, path: Path) -> None:
    """External data must stay inside the model's folder (no ``..``, no absolute path, no link out)
    and the file must hold the bytes the tensor claims."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    target = (base / location).resolve()
    if base not in target.parents and target != base:
        raise ModelError(
            f"{path}: initializer {tensor.name!r} points to external data {location!r} outside the model's folder"
        )
    if not target.is_file():
        raise ModelError(f"{path}: initializer {tensor.name!r} needs external data file {location!r}, which is missing")
    try:
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
    except ValueError:
        raise ModelError(f"{path}: initializer {tensor.name!r} has a malformed external data offset") from None
    size = target.stat().st_size
    if length is not None and (not length.isdigit() or offset + int(length) > size):
        raise ModelError(f"{path}: initializer {tensor.name!r} needs bytes {offset}..{offset + int(length or 0)} of "
                         f"{location!r}, which has {size} bytes")


def load_model(path: str | Path, load_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data, turning every failure into a one-line error.

    ``load_data=False`` checks the external data but leaves it on disk (tensors stay EXTERNAL):
    analysis and the weight quantizer read one tensor at a time with :func:`initializer_array`, so a
    model over 2 GB is never held in memory whole.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'parse failed'})") from None
    base = path.parent.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external(tensor, base, path)
    if load_data:
        try:
            onnx.load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise ModelError(f"{path}: cannot read external data ({exc})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: the model's graph has no nodes")
    return model


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("the model imports no default ONNX opset")


def assign_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a stable name ``<OpType>_<k>`` (k counts that op type in graph order).

    Names must be stable so that ``skip_quant_node`` and the reports can refer to them across runs;
    a generated name that collides with an existing one gets a ``_<n>`` suffix.
    """
    taken = {n.name for n in model.graph.node if n.name}
    counters: Counter = Counter()
    for node in model.graph.node:
        if node.name:
            continue
        while True:
            candidate = f"{node.op_type}_{counters[node.op_type]}"
            counters[node.op_type] += 1
            if candidate not in taken:
                break
        node.name = candidate
        taken.add(candidate)
    seen: Counter = Counter(n.name for n in model.graph.node)
    dupes = [name for name, count in seen.items() if count > 1]
    if dupes:
        # Duplicate names make skip_quant_node ambiguous; make them unique, deterministically.
        used = set(seen)
        index: Counter = Counter()
        for node in model.graph.node:
            if seen[node.name] > 1:
                index[node.name] += 1
                if index[node.name] > 1:
                    k = index[node.name] - 1
                    while f"{node.name}_{k}" in used:
                        k += 1
                    new = f"{node.name}_{k}"
                    used.add(new)
                    node.name = new
    return model


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn ``Constant`` nodes with a tensor value into initializers, so weights look the same however
    exported; in If/Loop/Scan bodies too (into the body's own initializers)."""
    _constants_to_initializers(model.graph)
    return model


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    keep = []
    moved = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            moved.append(tensor)
        else:
            keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(moved)
    for node in graph.node:  # after the rebuild: references into the old node list would be stale copies
        for _, body in node_bodies(node):
            _constants_to_initializers(body)


def prepare_model(path: str | Path, load_data: bool = True) -> onnx.ModelProto:
    """Load and normalize a model the same way for analysis and emission (see :func:`load_model`)."""
    model = load_model(path, load_data)
    default_opset(model)
    constants_to_initializers(model)
    fold_weight_chains(model)
    assign_node_names(model)
    return model




























def initializer_array(model: onnx.ModelProto, name: str, base_dir: str | Path | None = None,
                      graph: str = "") -> np.ndarray:
    """One initializer (of the main graph, or of the subgraph at path ``graph``) as an array; an EXTERNAL
    one (``load_data=False``) is read from ``base_dir`` without filling the proto, so reading every
    weight in turn holds one at a time."""
    for tensor in graph_at(model, graph).initializer:
        if tensor.name == name:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                array = _read_external(tensor, Path(base_dir or "."))
            else:
                array = numpy_helper.to_array(tensor)
            return array.astype(np.float32) if array.dtype == np.float16 else array
    raise ModelError(f"initializer {name!r} not found")




def _read_external(tensor: onnx.TensorProto, base: Path) -> np.ndarray:
    info = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    path = base / info["location"]
    try:
        array = np.fromfile(path, dtype=dtype, count=count, offset=int(info.get("offset", 0) or 0))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read initializer {tensor.name!r}: {exc}") from None
    if array.size != count:
        raise ModelError(f"{path}: initializer {tensor.name!r} needs {count} values, the file has {array.size}")
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))




def upgrade_opset(model: onnx.ModelProto, minimum: int = 13) -> onnx.ModelProto:
    """Return ``model`` converted to opset ``minimum`` when it is older (per-channel DQ needs 13),
    with names for the nodes the converter adds; a model already new enough is returned as is.

    The ONNX version converter rewrites ops whose meaning changed (Softmax 12->13 coerced to 2-D,
    Squeeze/Unsqueeze/Split axes moved to inputs, ...). Only bumping ``opset_import`` (what
    onnxruntime's quantizer does with per_channel on an opset < 13 model) would silently change
    such ops, so that is never done here.
    """
    opset = default_opset(model)
    if opset >= minimum:
        return model
    source = model
    if model.ir_version < 7:
        # opset 13 needs IR >= 7, and the converter rejects IR < 4 models whose initializers are not
        # all listed as inputs (what onnxruntime's saved optimized models look like). Under IR < 4
        # an initializer listed as an input is a constant, so drop those inputs to keep that meaning.
        source = onnx.ModelProto()
        source.CopyFrom(model)
        if source.ir_version < 4:
            inits = {t.name for t in source.graph.initializer}
            inputs = [i for i in source.graph.input if i.name not in inits]
            del source.graph.input[:]
            source.graph.input.extend(inputs)
        source.ir_version = 7
    try:
        converted = onnx.version_converter.convert_version(source, minimum)
    except Exception as exc:
        raise ModelError(
            f"model opset {opset} is below {minimum} (needed for per-channel DequantizeLinear and the decode ops) and could not "
            f"be upgraded ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); re-export it with opset >= {minimum}"
        ) from None
    converted.ir_version = max(converted.ir_version, 7)  # opset 13 needs IR >= 7
    return assign_node_names(converted)  # adapters add unnamed nodes (Shape/Flatten/Reshape around Softmax)


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set ``metadata_props`` keys in place (replacing any with the same key), sorted for determinism."""
    kept = {p.key: p.value for p in model.metadata_props}
    kept.update(entries)
    del model.metadata_props[:]
    for key in sorted(kept):
        model.metadata_props.add(key=key, value=kept[key])


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
