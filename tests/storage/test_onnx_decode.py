"""ONNX decode chains (ptq_core.storage.decode_ops): exact codes in onnxruntime, folded at session creation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ptq_core.storage.decode_numpy import decode
from ptq_core.storage.decode_ops import decode_nodes
from ptq_core.storage.encoded import EncodedTensor
from ptq_core.storage.fixed_bit import encode_fixed, encode_kind
from ptq_core.storage.split_coding import encode_split

ALLOWED_OPS = {
    "Cast", "Concat", "Range", "Reshape", "Add", "Mul", "Div", "Mod", "Gather", "Slice", "CumSum",
    "Expand", "ScatterElements",
}  # fmt: skip


def _model(encs: dict[str, EncodedTensor], opset: int) -> onnx.ModelProto:
    """codes = decode chain -> Cast(float) -> Identity -> graph output, one output per tensor."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs = []
    for prefix, enc in encs.items():
        chain, tensors, codes = decode_nodes(enc, prefix, opset)
        nodes += chain + [
            helper.make_node("Cast", [codes], [f"{prefix}float"], to=TensorProto.FLOAT),
            helper.make_node("Identity", [f"{prefix}float"], [f"{prefix}out"]),
        ]
        inits += tensors
        outputs.append(helper.make_tensor_value_info(f"{prefix}out", TensorProto.FLOAT, list(enc.shape)))
    graph = helper.make_graph(nodes, "decode", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 10
    return model


def _session(model: onnx.ModelProto, optimized: Path | None = None) -> tuple[ort.InferenceSession, float]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    start = time.perf_counter()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - start


def _check(enc: EncodedTensor, opset: int, tmp_path: Path) -> float:
    """Run the chain in onnxruntime, compare with decode(), prove it folded; returns creation s."""
    model = _model({"w/": enc}, opset)
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in model.graph.node} - {"Identity"} <= ALLOWED_OPS
    optimized = tmp_path / f"opt_{opset}.onnx"
    sess, seconds = _session(model, optimized)
    (out,) = sess.run(None, {})
    np.testing.assert_array_equal(out, decode(enc).astype(np.float32))
    _assert_folded(optimized, "w/out")
    return seconds


def _assert_folded(optimized: Path, output: str) -> None:
    """The optimized graph holds no decode op: the output is a constant (possibly via Identity)."""
    graph = onnx.load(str(optimized), load_external_data=False).graph
    left = [n.op_type for n in graph.node]
    assert set(left) <= {"Identity"}, left
    constants = {t.name for t in graph.initializer}
    feeding = {i for n in graph.node for i in n.input} | {output}
    assert feeding & constants


def _codes(bits: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=shape, dtype=np.int32)


@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("bits", [1, 3, 8, 9, 16])
def test_fixed_kinds_decode_and_fold(bits: int, opset: int, tmp_path: Path) -> None:
    q = _codes(bits, (5, 13), bits)
    kinds = ["bitpack", "index", "sparse"] + (["raw"] if bits in (8, 16) else [])
    for kind in kinds:
        enc = encode_kind(q, bits, np.array([q[0, 0]]), kind=kind)
        assert enc.kind == kind
        _check(enc, opset, tmp_path)


@pytest.mark.parametrize("opset", [13, 21])
def test_special_shapes_of_streams_decode_and_fold(opset: int, tmp_path: Path) -> None:
    zps = np.array([-3, 0, 5, 1])
    per_channel = np.repeat(zps, 50).reshape(4, 50)
    per_channel[2, 7] = -8
    per_channel[0, 49] = 7
    cases = [
        encode_fixed(per_channel, 4, zps),  # sparse with several channel zero points
        encode_kind(np.zeros((3, 3), np.int32), 4, kind="sparse"),  # nothing kept: nnz = 0
        encode_kind(np.full(20, 2), 3, np.array([0]), kind="sparse"),  # u = 1: no rank fields
        encode_kind(np.full(20, -1), 5, kind="index"),  # u = 1, ub = 0
        encode_kind(np.arange(-8, 8), 4, kind="index"),  # u = 2^b wraps to 0
        encode_kind(np.array([[6]]), 4, kind="bitpack"),  # single element
        encode_kind(np.array(3), 8, kind="raw"),  # 0-d
    ]
    assert cases[0].kind == "sparse"
    for enc in cases:
        _check(enc, opset, tmp_path)


@pytest.mark.parametrize("opset", [13, 21])
def test_split_decodes_and_folds(opset: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    laplace = np.round(rng.laplace(0, 300, size=(40, 70))).astype(np.int32)
    narrow = np.arange(100, 116).repeat(4).reshape(8, 8)
    wide = rng.integers(-3, 4, size=5000).astype(np.int32)
    wide[[5, 2500, 4999]] = [2**30, -(2**31), 2**31 - 1]  # int32 outliers: two correction fields
    for q in (laplace, narrow, wide):
        enc = encode_split(q)
        assert enc.kind == "split"
        _check(enc, opset, tmp_path)
    assert enc.meta["corr_bits"] > 16


def test_every_opset_13_to_21_is_valid() -> None:
    enc = encode_split(np.round(np.random.default_rng(0).laplace(0, 50, size=300)).astype(np.int32))
    sparse = encode_kind(_codes(5, (30,), 1), 5, np.array([0]), kind="sparse")
    for opset in range(13, 22):
        onnx.checker.check_model(_model({"a/": enc, "b/": sparse}, opset), full_check=True)
    with pytest.raises(ValueError, match="opset"):
        decode_nodes(enc, "x/", 12)


def test_names_carry_the_prefix_and_do_not_clash(tmp_path: Path) -> None:
    encs = {
        "layer0.w/": encode_kind(_codes(3, (40,), 0), 3, kind="index"),
        "layer1.w/": encode_split(_codes(9, (40,), 1)),
    }
    names = []
    for prefix, enc in encs.items():
        nodes, inits, out = decode_nodes(enc, prefix, 17)
        own = [name for n in nodes for name in [*n.input, *n.output]] + [t.name for t in inits] + [out]
        assert all(name.startswith(prefix) for name in own)
        assert all(not n.name or n.name.startswith(prefix) for n in nodes)
        names += [o for n in nodes for o in n.output] + [t.name for t in inits]
    assert len(names) == len(set(names))
    model = _model(encs, 17)
    sess, _ = _session(model, tmp_path / "two.onnx")
    for enc, out in zip(encs.values(), sess.run(None, {}), strict=True):
        np.testing.assert_array_equal(out, decode(enc))


def test_one_megaweight_3_bit_folds_fast(tmp_path: Path) -> None:
    q = _codes(3, (1024, 1024), 11)
    enc = encode_fixed(q, 3, np.zeros(1))
    assert enc.kind == "bitpack"
    seconds = _check(enc, 21, tmp_path)
    fp32 = q.size * 4
    print(f"\n1024x1024 3-bit: {enc.nbytes} bytes = {enc.nbytes / fp32:.4f} x FP32, session {seconds:.3f} s")
    assert seconds < 2.0


def test_bert_embedding_4_bit_folds(tmp_path: Path) -> None:
    q = _codes(4, (30522, 384), 12)
    start = time.perf_counter()
    enc = encode_fixed(q, 4, np.zeros(1))
    encode_s = time.perf_counter() - start
    assert enc.kind == "bitpack"
    model = _model({"w/": enc}, 17)
    optimized = tmp_path / "bert.onnx"
    sess, seconds = _session(model, optimized)
    (out,) = sess.run(None, {})
    assert np.array_equal(out, q)
    _assert_folded(optimized, "w/out")
    file_bytes = len(model.SerializeToString())
    print(
        f"\n30522x384 4-bit: encode {encode_s:.2f} s, file {file_bytes} bytes "
        f"= {file_bytes / (q.size * 4):.4f} x FP32, session (fold + save) {seconds:.2f} s"
    )
    assert seconds < 10.0


def test_field_extraction_every_width_phase_and_order(tmp_path: Path) -> None:
    """All extraction paths (byte reads, precombined words, spill column, int64 words, aligned
    bytes) against the NumPy reader, for widths 1..25, several bit phases and both bit orders."""
    from ptq_core.storage import decode_ops as od
    from ptq_core.storage.bitstream import read_fields as _read_fields

    rng = np.random.default_rng(9)
    blob = rng.integers(0, 256, size=200, dtype=np.uint8)
    holder = EncodedTensor("bitpack", 8, (blob.size,), {"stream": blob}, {})
    bld = od._GraphBuilder("x/")
    stream = od._Stream(bld, holder, "stream")
    outputs, expected = [], []
    for width in range(1, 26):
        for bit_offset in (0, 3, 13):
            for count in (1, 16, (blob.size * 8 - bit_offset) // width):
                for msb in (False, True):
                    name = od._extract_fields(stream, count, width, bit_offset, msb, flat=True)
                    outputs.append(helper.make_tensor_value_info(name, TensorProto.INT32, [count]))
                    expected.append(_read_fields(blob, bit_offset, count, width, msb))
    graph = helper.make_graph(bld.nodes, "fields", [], outputs, bld.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    sess, _ = _session(model)
    for got, want in zip(sess.run(None, {}), expected, strict=True):
        np.testing.assert_array_equal(got, want)
