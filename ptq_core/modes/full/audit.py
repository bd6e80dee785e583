"""Audits of an emitted QDQ model: what onnxruntime made of it, and whether it keeps a target's rules.

The emitter only writes; these functions read a written model back and judge it, so tests,
benchmarks and the pipeline can prove that integer kernels run (``fused_ops``, ``float_paths``)
and that the numbers follow the target (``check_target_rules``) without trusting the writer.
"""

from __future__ import annotations

import collections
import os
import tempfile

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_core.errors import PtqError
from ptq_core.modes.full.targets import COMPUTE_OPS, QDQ_OPS, Target
from ptq_core.modes.weight.emit import MIN_OPSET
from ptq_core.onnxgraph.load import default_opset
from ptq_core.onnxgraph.walk import _attrs, producers, readers

# ---------------------------------------------------------------------------------------------
# what onnxruntime made of it
# ---------------------------------------------------------------------------------------------


def optimized_model(model, level: str = "extended") -> onnx.ModelProto:
    """The graph onnxruntime (CPU EP) runs after its optimizer, loaded back from
    ``SessionOptions.optimized_model_filepath``.

    ``level``: "basic", "extended" (default; all QDQ fusions happen here) or "all" (adds layout
    transforms: NCHWc/NHWC contrib ops, hardware specific). Saving at "all" can fail on some builds
    (compiled or NCHWc nodes); then the extended graph is returned instead.
    """
    from ptq_core.onnxgraph.session import make_session

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else bytes(model)
    levels = ("basic", "extended", "all")
    if level not in levels:
        raise PtqError(f"optimization level {level!r}; allowed: {', '.join(levels)}")
    tries = [level] if level != "all" else ["all", "extended"]
    last: Exception | None = None
    for lv in tries:
        with tempfile.TemporaryDirectory(prefix="ptq-ort-") as tmp:
            path = os.path.join(tmp, "optimized.onnx")
            try:  # big initializers go to a side file never read back: only the graph matters here
                make_session(data, threads=1, optimization=lv, optimized_path=path,
                             config={"session.optimized_model_external_initializers_file_name": "optimized.data"})
                return onnx.load(path, load_external_data=False)
            except Exception as exc:  # saving the optimized graph failed at this level
                last = exc
    raise PtqError(f"onnxruntime could not optimize the model: {str(last).splitlines()[0] if last else '?'}")


def fused_ops(model_bytes, level: str = "extended") -> collections.Counter:
    """Op types in onnxruntime's optimized graph (CPU EP): QLinearConv, QLinearMatMul,
    MatMulIntegerToFloat, QGemm, QLinearAdd, ... prove that integer kernels run."""
    return collections.Counter(n.op_type for n in optimized_model(model_bytes, level).graph.node)


def float_paths(optimized: onnx.ModelProto, op_types=COMPUTE_OPS) -> list[str]:
    """Nodes of ``op_types`` that still read a DequantizeLinear output after optimization: a quantized
    node that onnxruntime did not fuse and runs in float."""
    produced_by_dq = {o for n in optimized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sorted(f"{n.name} ({n.op_type})" for n in optimized.graph.node
                  if n.op_type in op_types and any(i in produced_by_dq for i in n.input))


# ---------------------------------------------------------------------------------------------
# the target's rules
# ---------------------------------------------------------------------------------------------

def check_target_rules(model: onnx.ModelProto, target: Target) -> list[str]:
    """Inspect an emitted QDQ model and list every way it breaks ``target``'s rules (empty = fine).

    Checked: opset >= 13; activation dtype and symmetry (zero point 0) on every Q/DQ pair; weight
    dtype, symmetry, code range, per-channel only on the target's per-channel ops and along the
    expected axis; int32 bias with zero point 0, axis 0, scale = s_in * s_w, and only where the
    target quantizes biases; weighted nodes only of the target's compute ops; no tensor quantized
    twice; no Q/DQ island (a pair with neither an int8 producer nor an int8 consumer).
    """
    problems: list[str] = []
    try:
        opset = default_opset(model)
    except PtqError:
        opset = 0
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: per-channel DequantizeLinear (axis) is not defined")
    audit = _RuleAudit(model.graph, target, problems)
    audit.activations()
    audit.initializer_dqs()
    audit.islands()
    return problems


class _RuleAudit:
    """One graph's lookups (initializers, producers, readers, DQ scales) and the problems found."""

    def __init__(self, graph: onnx.GraphProto, target: Target, problems: list[str]):
        self.graph, self.target, self.problems = graph, target, problems
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = producers(graph.node)
        self.consumers = readers(graph.node)
        self.dq_scale: dict[str, np.ndarray] = {}
        for n in graph.node:
            if n.op_type == "DequantizeLinear" and len(n.input) >= 2 and n.input[1] in self.inits:
                self.dq_scale[n.output[0]] = self.arr(n.input[1]).reshape(-1).astype(np.float64)

    def arr(self, name: str):
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def activations(self) -> None:
        """Every QuantizeLinear: dtype, symmetry, per tensor, and no tensor quantized twice."""
        target, problems = self.target, self.problems
        act_dtype = np.dtype(target.activation_dtype)
        quantized_inputs = collections.Counter()
        for n in self.graph.node:
            if n.op_type != "QuantizeLinear":
                continue
            src = n.input[0]
            quantized_inputs[src] += 1
            p = self.producer.get(src)
            if p is not None and p.op_type == "DequantizeLinear":
                problems.append(f"tensor {src!r} is quantized twice ({p.name} -> {n.name})")
            zp = self.arr(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            dtype = zp.dtype if zp is not None else np.dtype(np.uint8)
            if dtype != act_dtype:
                problems.append(f"{n.name}: activation {src!r} is {dtype} but {target.name} wants {target.activation_dtype}")
            if target.activation_symmetric and zp is not None and np.any(zp != 0):
                problems.append(f"{n.name}: activation {src!r} has zero point {zp.reshape(-1).tolist()} but {target.name} is symmetric (zero point 0)")
            scale = self.arr(n.input[1])
            if scale is not None and scale.size != 1:
                problems.append(f"{n.name}: activation {src!r} is not per-tensor")
        for name, count in sorted(quantized_inputs.items()):
            if count > 1:
                problems.append(f"tensor {name!r} feeds {count} QuantizeLinear nodes")

    def initializer_dqs(self) -> None:
        """Every DequantizeLinear of an initializer: an int32 bias or integer weight codes."""
        for n in self.graph.node:
            if n.op_type != "DequantizeLinear" or n.input[0] not in self.inits:
                continue
            codes = self.arr(n.input[0])
            scale = self.arr(n.input[1]).reshape(-1)
            zp = self.arr(n.input[2]).reshape(-1) if len(n.input) > 2 and n.input[2] else np.zeros(1, codes.dtype)
            axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
            check = self.bias if codes.dtype == np.int32 else self.weight
            for user, idx in self.consumers.get(n.output[0], []):
                check(user, idx, codes, scale, zp, axis)

    def bias(self, user: onnx.NodeProto, idx: int, codes, scale, zp, axis: int) -> None:
        target, problems = self.target, self.problems
        if not target.quantize_bias:
            problems.append(f"{user.name}: bias is int32 but {target.name} keeps biases float")
        if np.any(zp != 0):
            problems.append(f"{user.name}: bias zero point is not 0")
        if scale.size > 1 and axis != 0:
            problems.append(f"{user.name}: per-channel bias DequantizeLinear has axis {axis}, expected 0")
        s_in = self.dq_scale.get(user.input[0])
        s_w = self.dq_scale.get(user.input[1]) if len(user.input) > 1 else None
        if s_in is not None and s_w is not None and s_in.size == 1:
            expected = np.float64(np.float32(s_in[0])) * s_w
            if not np.allclose(scale.astype(np.float64), expected, rtol=1e-5):
                problems.append(f"{user.name}: bias scale differs from input scale x weight scale")

    def weight(self, user: onnx.NodeProto, idx: int, codes, scale, zp, axis: int) -> None:
        target, problems = self.target, self.problems
        where = f"{user.name} ({user.op_type}) input {idx}"
        if user.op_type not in target.compute_ops:
            problems.append(f"{where}: integer weight on an op {target.name} does not quantize")
            return
        if codes.dtype != np.dtype(np.int8 if target.weight_dtype == "int8" else np.uint8):
            problems.append(f"{where}: weight codes are {codes.dtype}, {target.name} wants {target.weight_dtype}")
        per_channel = scale.size > 1
        if per_channel:
            expected_axis = target.weight_axis(user.op_type, idx, codes.shape, _attrs(user))
            if expected_axis is None:
                problems.append(f"{where}: per-channel weight, but {target.name} quantizes this weight per layer")
            elif axis % codes.ndim != expected_axis:
                problems.append(f"{where}: per-channel axis {axis}, expected {expected_axis}")
        symmetric, _ = target.weight_scheme(per_channel)
        qmin, qmax = target.weight_qrange(per_channel)
        if symmetric and np.any(zp != 0):
            problems.append(f"{where}: weight zero point must be 0 ({'per-channel' if per_channel else 'per-layer'} symmetric)")
        if codes.size and (int(codes.min()) < qmin or int(codes.max()) > qmax):
            problems.append(f"{where}: weight codes span [{int(codes.min())}, {int(codes.max())}], allowed [{qmin}, {qmax}]")

    def islands(self) -> None:
        """A Q/DQ pair whose producer and readers all run in float."""
        int8_ops = self.target.int8_ops | QDQ_OPS
        for n in self.graph.node:
            if n.op_type != "QuantizeLinear":
                continue
            dq = [c for c, _ in self.consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
            readers = [c for d in dq for c, _ in self.consumers.get(d.output[0], [])]
            p = self.producer.get(n.input[0])
            producer_int8 = p is not None and p.op_type in int8_ops and self.reads_dq(p)
            reader_int8 = any(r.op_type in int8_ops for r in readers)
            if not producer_int8 and not reader_int8:
                self.problems.append(f"Q/DQ island on {n.input[0]!r}: neither its producer nor a reader is an int8 op "
                                     f"of {self.target.name}")

    def reads_dq(self, node: onnx.NodeProto) -> bool:
        return any((p := self.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input if i)
