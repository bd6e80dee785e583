"""Small ONNX models built in code, so tests never download anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def mixed_ops_model(seed: int = 0, unnamed: bool = False) -> onnx.ModelProto:
    """Conv -> ConvTranspose -> Flatten -> MatMul -> Gemm, plus a Gather embedding branch.

    Channel counts are chosen around the default filters: conv_small has 16 out-channels (skipped by
    min_quant_weight_channel=16), the rest are larger.
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init("conv_w", rng.normal(0, 0.2, (32, 3, 3, 3)).astype(np.float32)),
        _init("conv_b", rng.normal(0, 0.1, (32,)).astype(np.float32)),
        _init("small_w", rng.normal(0, 0.2, (16, 32, 1, 1)).astype(np.float32)),
        _init("deconv_w", rng.normal(0, 0.2, (16, 24, 2, 2)).astype(np.float32)),
        _init("mm_w", rng.normal(0, 0.05, (24 * 16 * 16, 40)).astype(np.float32)),
        _init("gemm_w", rng.normal(0, 0.2, (10, 40)).astype(np.float32)),
        _init("gemm_b", rng.normal(0, 0.1, (10,)).astype(np.float32)),
        _init("emb", rng.normal(0, 1.0, (50, 10)).astype(np.float32)),
        _init("shape2d", np.array([1, -1], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c1"], name="conv_big", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "small_w"], ["c2"], name="conv_small"),
        helper.make_node("ConvTranspose", ["c2", "deconv_w"], ["d1"], name="deconv", strides=[2, 2]),
        helper.make_node("Reshape", ["d1", "shape2d"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "mm_w"], ["m1"], name="matmul"),
        helper.make_node("Gemm", ["m1", "gemm_w", "gemm_b"], ["g1"], name="gemm", transB=1),
        helper.make_node("Gather", ["emb", "ids"], ["e1"], name="embed", axis=0),
        helper.make_node("ReduceMean", ["e1"], ["e2"], name="pool_emb", axes=[1], keepdims=0),
        helper.make_node("Add", ["g1", "e2"], ["y"], name="add_out"),
    ]
    if unnamed:
        for n in nodes:
            n.name = ""
    graph = helper.make_graph(
        nodes, "mixed_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp_model(hidden: int = 256, seed: int = 1, dynamic_batch: bool = False, inp: int = 64) -> onnx.ModelProto:
    """x[N,inp] -> MatMul(inp,hidden) -> Relu -> MatMul(hidden,32)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.1, (inp, hidden)).astype(np.float32)),
        _init("w2", rng.normal(0, 0.1, (hidden, 32)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="act"),
        helper.make_node("MatMul", ["hr", "w2"], ["y"], name="fc2"),
    ]
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, inp])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def detection_head_model(seed: int = 0, size: int = 16) -> onnx.ModelProto:
    """A detection-style head where naive int8 fails: three conv branches whose outputs span ~1e3, ~1
    and ~1e-3 are joined by one Concat (boxes, objectness, class scores) and split again into the
    model's three outputs. One per-tensor scale at the Concat output rounds the two small parts away.

    Planted failure: node ``head_concat``. Everything else quantizes well.
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init("stem_w", rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32)),
        _init("stem_b", rng.normal(0, 0.1, (16,)).astype(np.float32)),
        _init("box_w", (rng.normal(0, 0.3, (4, 16, 3, 3)) * 300).astype(np.float32)),
        _init("box_b", np.full(4, 500.0, np.float32)),
        _init("obj_w", rng.normal(0, 0.3, (1, 16, 3, 3)).astype(np.float32)),
        _init("cls_w", (rng.normal(0, 0.3, (3, 16, 3, 3)) * 1e-3).astype(np.float32)),
        _init("split", np.array([4, 1, 3], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["sr"], name="stem_relu"),
        helper.make_node("Conv", ["sr", "box_w", "box_b"], ["boxes_raw"], name="box_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["sr", "obj_w"], ["obj_raw"], name="obj_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["sr", "cls_w"], ["cls_raw"], name="cls_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["boxes_raw", "obj_raw", "cls_raw"], ["head"], name="head_concat", axis=1),
        helper.make_node("Split", ["head", "split"], ["boxes", "objectness", "classes"], name="head_split", axis=1),
    ]
    shape = [1, 3, size, size]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, size, size])
               for n, c in (("boxes", 4), ("objectness", 1), ("classes", 3))]
    graph = helper.make_graph(nodes, "detection_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def recurrent_model(seed: int = 3) -> onnx.ModelProto:
    """Weights inside loops, as exporters write them: x[1, 16] -> Loop ``loop`` (3 iterations) whose body
    holds MatMul ``mm_loop`` (a body initializer) and an If ``pick`` on the iteration number with a MatMul in
    each branch (``mm_then``, ``mm_else``) -> Scan ``scan`` over s[4, 1, 16] whose body's MatMul ``mm_scan``
    reads ``w_scan``, an initializer of the main graph (outer scope)."""
    rng = np.random.default_rng(seed)
    f = TensorProto.FLOAT

    def weight(name):
        return _init(name, rng.normal(0, 0.25, (16, 16)).astype(np.float32))

    branch = {}
    for side in ("then", "else"):
        branch[side] = helper.make_graph([helper.make_node("MatMul", ["z", f"w_{side}"], [f"b_{side}"], name=f"mm_{side}")],
                                         side, [], [helper.make_tensor_value_info(f"b_{side}", f, [1, 16])],
                                         [weight(f"w_{side}")])
    loop_body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w_loop"], ["y"], name="mm_loop"),
         helper.make_node("Tanh", ["y"], ["z"], name="tanh"),
         helper.make_node("Greater", ["i", "zero"], ["later"], name="later"),
         helper.make_node("If", ["later"], ["picked"], name="pick", then_branch=branch["then"],
                          else_branch=branch["else"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going")],
        "loop_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h", f, [1, 16])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("picked", f, [1, 16])],
        [weight("w_loop"), _init("zero", np.array(0, np.int64))])
    scan_body = helper.make_graph(
        [helper.make_node("MatMul", ["st", "w_scan"], ["p"], name="mm_scan"),
         helper.make_node("Add", ["p", "carry"], ["carry_out"], name="accumulate"),
         helper.make_node("Identity", ["carry_out"], ["seen"], name="emit")],
        "scan_body",
        [helper.make_tensor_value_info("carry", f, [1, 16]), helper.make_tensor_value_info("st", f, [1, 16])],
        [helper.make_tensor_value_info("carry_out", f, [1, 16]), helper.make_tensor_value_info("seen", f, [1, 16])])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["h_final"], name="loop", body=loop_body),
             helper.make_node("Scan", ["h_final", "s"], ["total", "steps"], name="scan", body=scan_body,
                              num_scan_inputs=1)]
    graph = helper.make_graph(
        nodes, "recurrent",
        [helper.make_tensor_value_info("x", f, [1, 16]), helper.make_tensor_value_info("s", f, [4, 1, 16])],
        [helper.make_tensor_value_info("total", f, [1, 16]), helper.make_tensor_value_info("steps", f, [4, 1, 16])],
        [_init("trips", np.array(3, np.int64)), weight("w_scan")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
