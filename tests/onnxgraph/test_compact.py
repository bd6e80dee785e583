"""An emitted model carries no attribute at its spec default and no import of an unused operator domain;
dropping them changes no output."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ptq_core.onnxgraph.compact import (
    compact_model,
    drop_default_attributes,
    drop_unused_opset_imports,
)

RNG = np.random.default_rng(0)


def conv_pool_gemm(stride: int = 1) -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(RNG.normal(size=(4 * 4 * 4, 5)).astype(np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", auto_pad="NOTSET", dilations=[1, 1], group=1,
                         strides=[stride, stride], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("MaxPool", ["c"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0],
                         ceil_mode=0, storage_order=0),
        helper.make_node("Flatten", ["p"], ["f"], "flat"),
        helper.make_node("Gemm", ["f", "g"], ["y"], "gemm", alpha=1.0, beta=1.0, transA=0, transB=0),
    ]
    side = 8 * stride
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [w, g])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1),
                                                   helper.make_opsetid("ai.onnx.ml", 5)])


def attrs(model: onnx.ModelProto, node: str) -> dict:
    return {a.name: helper.get_attribute_value(a) for n in model.graph.node if n.name == node for a in n.attribute}


def outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_attributes_at_their_default_are_dropped_and_outputs_stay_identical():
    model = conv_pool_gemm()
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    before = outputs(model, x)
    drop_default_attributes(model)
    assert attrs(model, "conv") == {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    assert attrs(model, "pool") == {"kernel_shape": [2, 2], "strides": [2, 2]}
    assert attrs(model, "gemm") == {}
    assert np.array_equal(outputs(model, x), before)


def test_attributes_that_differ_from_the_default_stay():
    model = conv_pool_gemm(stride=2)
    drop_default_attributes(model)
    assert attrs(model, "conv")["strides"] == [2, 2]


def test_imports_of_unused_domains_are_dropped_and_used_ones_stay():
    model = conv_pool_gemm()
    model.graph.node.append(helper.make_node("Gelu", ["y"], ["z"], "gelu", domain="com.microsoft"))
    drop_unused_opset_imports(model)
    assert {imp.domain for imp in model.opset_import} == {"", "com.microsoft"}


def test_compacting_a_model_makes_it_smaller_and_keeps_it_valid():
    model = conv_pool_gemm()
    size = model.ByteSize()
    compact_model(model)
    onnx.checker.check_model(model)
    assert model.ByteSize() < size
