"""The ONNX graph layer: loading, stable node names, and the table of weights a quantizer may touch.

Everything outside this module sees a model as a list of ``WeightSite`` records (which node,
which input, which initializer, which channel axis); only the emitters edit ONNX protos.
"""

from __future__ import annotations

import hashlib
import mmap
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_core.errors import ModelError, did_you_mean


# Which inputs of which op hold weights, and how to find their channel axis (docs/converter-lite.md §5.3,
# translated to ONNX layouts). A function gets (node attributes, weight rank) and returns the axis.
def _conv_axis(attrs: dict, rank: int) -> int:
    return 0


def _conv_transpose_axis(attrs: dict, rank: int, shape: tuple[int, ...] = ()) -> int:
    # ONNX ConvTranspose weight is (Cin, Cout/group, kH, kW); depthwise (Cout/group == 1) uses axis 0.
    if shape and len(shape) > 1 and shape[1] == 1 and attrs.get("group", 1) == shape[0]:
        return 0
    return 1


def _matmul_b_axis(attrs: dict, rank: int) -> int:
    return rank - 1  # N axis of (.., K, N)


def _matmul_a_axis(attrs: dict, rank: int) -> int:
    return rank - 2  # M axis of (.., M, K)


def _gemm_b_axis(attrs: dict, rank: int) -> int:
    return 0 if attrs.get("transB", 0) else 1


def _gemm_a_axis(attrs: dict, rank: int) -> int:
    return 1 if attrs.get("transA", 0) else 0


def _gather_axis(attrs: dict, rank: int) -> int:
    axis = attrs.get("axis", 0)
    return axis + rank if axis < 0 else axis


def _first_axis(attrs: dict, rank: int) -> int:
    return 0


@dataclass(frozen=True)
class WeightRole:
    """One weight input of an op type: its input index and how its channel axis is found."""

    input_index: int
    axis_fn: object
    conv_like: bool = False  # min_quant_weight_channel applies
    matmul_like: bool = False  # a weight shared by several nodes goes per-layer


WEIGHT_OPS: dict[str, tuple[WeightRole, ...]] = {
    "Conv": (WeightRole(1, _conv_axis, conv_like=True),),
    "ConvTranspose": (WeightRole(1, _conv_transpose_axis, conv_like=True),),
    "MatMul": (WeightRole(0, _matmul_a_axis, matmul_like=True), WeightRole(1, _matmul_b_axis, matmul_like=True)),
    "Gemm": (WeightRole(0, _gemm_a_axis, matmul_like=True), WeightRole(1, _gemm_b_axis, matmul_like=True)),
    "Gather": (WeightRole(0, _gather_axis),),
    "LSTM": (WeightRole(1, _first_axis), WeightRole(2, _first_axis)),
    "GRU": (WeightRole(1, _first_axis), WeightRole(2, _first_axis)),
    "RNN": (WeightRole(1, _first_axis), WeightRole(2, _first_axis)),
}


@dataclass(frozen=True)
class WeightSite:
    """A constant float tensor feeding a quantizable op input."""

    node: str
    op_type: str
    input_index: int
    tensor: str
    shape: tuple[int, ...]
    axis: int
    conv_like: bool
    users: int  # how many node inputs read this tensor
    graph: str = ""  # "" for the main graph, else the subgraph's path ("If_0/then_branch"; see subgraphs())

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def channels(self) -> int:
        return self.shape[self.axis] if self.shape else 1


@dataclass(frozen=True)
class ModelInfo:
    """What analysis learned about a model; small and picklable, so tasks can cache it."""

    path: str
    sha256: str
    opset: int
    node_names: tuple[str, ...]
    node_types: tuple[str, ...]
    sites: tuple[WeightSite, ...]
    inputs: tuple[tuple[str, int, tuple], ...]  # (name, onnx elem type, dims with str for symbolic)
    outputs: tuple[str, ...]
    float_bytes: int  # bytes of all float32 initializers
    quantized_ops: tuple[tuple[str, int], ...] = ()  # already-quantized constructs found: (what, count)


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
    assign_node_names(model)
    return model


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or ``<op>@<index>`` for the unnamed nodes of If/Loop/Scan bodies (which
    assign_node_names does not name): the label that subgraph paths and body rewiring agree on."""
    return node.name or f"{node.op_type}@{index}"


def node_bodies(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """The graphs a node holds (If's branches, a Loop or Scan body), each with its attribute name."""
    bodies = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            bodies.append((attr.name, attr.g))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            bodies.extend((f"{attr.name}[{k}]", g) for k, g in enumerate(attr.graphs))
    return bodies


def all_names(graph: onnx.GraphProto, taken: set[str] | None = None) -> set[str]:
    """Every node, tensor and value name in ``graph`` and the bodies nested in it: what a new name must avoid."""
    taken = set() if taken is None else taken
    taken.update(n.name for n in graph.node)
    taken.update(t.name for t in graph.initializer)
    taken.update(i.name for i in graph.input)
    taken.update(o.name for o in graph.output)
    taken.update(v.name for v in graph.value_info)
    for node in graph.node:
        taken.update(node.input)
        taken.update(node.output)
        for _, body in node_bodies(node):
            all_names(body, taken)
    return taken


def subgraphs(graph: onnx.GraphProto, prefix: str = "") -> list[tuple[str, onnx.GraphProto]]:
    """Every graph nested in ``graph``'s nodes (If branches, Loop and Scan bodies, at any depth), with a
    stable path: ``<node name>/<attribute>`` (``If_0/then_branch``), nested paths joined by ``/``."""
    found = []
    for index, node in enumerate(graph.node):
        for name, body in node_bodies(node):
            path = f"{prefix}{node_label(node, index)}/{name}"
            found.append((path, body))
            found.extend(subgraphs(body, path + "/"))
    return found


def graph_at(model: onnx.ModelProto, path: str) -> onnx.GraphProto:
    """The graph a WeightSite's ``graph`` path names ("" = the main graph)."""
    if not path:
        return model.graph
    for found, graph in subgraphs(model.graph):
        if found == path:
            return graph
    raise ModelError(f"no subgraph {path!r} in the model")


def find_weight_sites(model: onnx.ModelProto, inside_subgraphs: bool = False) -> list[WeightSite]:
    """Every float initializer with ≥ 2 dims at a weight input of a known op, in node order.

    ``inside_subgraphs``: also the weights that If/Loop/Scan bodies hold as their own initializers; their
    nodes are named by path (``If_0/then_branch/MatMul_3``) and their site's ``graph`` says where.
    """
    graphs = [("", model.graph)] + (subgraphs(model.graph) if inside_subgraphs else [])
    sites = []
    for path, graph in graphs:
        sites.extend(_graph_sites(graph, path))
    return sites


def _graph_sites(graph: onnx.GraphProto, path: str) -> list[WeightSite]:
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    users: Counter = Counter()
    for node in graph.node:
        for name in node.input:
            if name:
                users[name] += 1
    sites = []
    for index, node in enumerate(graph.node):
        roles = WEIGHT_OPS.get(node.op_type)
        if not roles:
            continue
        attrs = _attrs(node)
        for role in roles:
            if role.input_index >= len(node.input):
                continue
            name = node.input[role.input_index]
            tensor = inits.get(name)
            if tensor is None:
                continue
            if name in graph_inputs:
                continue  # an initializer overridable as an input is not a constant
            if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                continue
            shape = tuple(int(d) for d in tensor.dims)
            if len(shape) < 2:
                continue
            if role.axis_fn is _conv_transpose_axis:
                axis = _conv_transpose_axis(attrs, len(shape), shape)
            else:
                axis = role.axis_fn(attrs, len(shape))
            sites.append(
                WeightSite(
                    node=f"{path}/{node_label(node, index)}" if path else node.name,
                    op_type=node.op_type,
                    input_index=role.input_index,
                    tensor=name,
                    shape=shape,
                    axis=axis,
                    conv_like=role.conv_like,
                    users=users[name],
                    graph=path,
                )
            )
    return sites


def _dims(value_info: onnx.ValueInfoProto) -> tuple:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return tuple(dims)


def analyse_model(path: str | Path) -> ModelInfo:
    """Load a model and describe it: names, quantizable weights, inputs and outputs."""
    from ptq_core.onnxgraph.preflight import check_graph

    model = prepare_model(path, load_data=False)  # names, dims and types only: weights stay on disk
    check_graph(model, path)
    inits = {t.name for t in model.graph.initializer}
    float_bytes = sum(
        int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    inputs = tuple(
        (i.name, i.type.tensor_type.elem_type, _dims(i)) for i in model.graph.input if i.name not in inits
    )
    return ModelInfo(
        path=str(path),
        sha256=file_sha256(path),
        opset=default_opset(model),
        node_names=tuple(n.name for n in model.graph.node),
        node_types=tuple(n.op_type for n in model.graph.node),
        sites=tuple(find_weight_sites(model)),
        inputs=inputs,
        outputs=tuple(o.name for o in model.graph.output),
        float_bytes=float_bytes,
        quantized_ops=quantized_constructs(model),
    )


#: onnxruntime's and ONNX's integer kernels: a model holding them was quantized before it reached us
QUANTIZED_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits", "QGemm",
                 "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "QLinearAdd", "QLinearMul",
                 "MatMulIntegerToFloat", "QLinearConcat", "QLinearGlobalAveragePool")


def quantized_constructs(model: onnx.ModelProto) -> tuple[tuple[str, int], ...]:
    """Integer kernels, and DequantizeLinear nodes decoding integer weights (a QDQ model), with counts."""
    counts = Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS)
    integer_inits = {t.name for t in model.graph.initializer
                     if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4,
                                        onnx.TensorProto.UINT4, onnx.TensorProto.INT16, onnx.TensorProto.INT32)}
    dq = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in integer_inits)
    if dq:
        counts["DequantizeLinear of integer weights"] = dq
    return tuple(sorted(counts.items()))


def check_skip_nodes(info: ModelInfo, skip: tuple[str, ...], source: str) -> None:
    """An unknown name in skip_quant_node is an error listing the closest node names."""
    names = set(info.node_names)
    for name in skip:
        if name not in names:
            raise ModelError(
                f"{source}: [common_quant_param] skip_quant_node names {name!r}, which is not a node of "
                f"{Path(info.path).name}{did_you_mean(name, info.node_names)}"
            )


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


def check_finite_weight(w: np.ndarray, tensor: str, node: str, op_type: str) -> None:
    """Refuse a weight holding NaN or Inf before it is quantized: its channels' ranges would be
    non-finite and every code of them garbage (and NumPy would warn on the way)."""
    if w.dtype.kind != "f" or np.isfinite(w).all():
        return
    nan = int(np.count_nonzero(np.isnan(w)))
    pinf = int(np.count_nonzero(w == np.inf))
    ninf = int(np.count_nonzero(w == -np.inf))
    seen = ", ".join(f"{c} {name}" for c, name in ((nan, "NaN"), (pinf, "+Inf"), (ninf, "-Inf")) if c)
    raise ModelError(f"weight {tensor!r} of node {node!r} ({op_type}) has {nan + pinf + ninf} non-finite value"
                     f"{'s' if nan + pinf + ninf != 1 else ''} ({seen}) among {w.size}; it cannot be quantized: fix the "
                     f"model, or keep the node FP32 with skip_quant_node={node}")


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


def consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """tensor name -> [(node, input index)]"""
    result: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                result[name].append((node, i))
    return result


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
