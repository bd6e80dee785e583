"""Group entropy coding (ptq_core.storage.entropy_*): lossless, near the entropy, folded by onnxruntime."""

from __future__ import annotations

import heapq
import itertools
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from storage_reference import decode_group

from ptq_core.storage.entropy_code import code_lengths
from ptq_core.storage.entropy_compare import compare_sizes, worth_it
from ptq_core.storage.entropy_decode_ops import graph_nbytes, group_nodes
from ptq_core.storage.entropy_encode import encode_group
from ptq_core.storage.entropy_group import EntropyGroup, group_nbytes
from ptq_core.storage.split_coding import encode_split

ALLOWED_OPS = {
    "Cast", "Concat", "Reshape", "Add", "Sub", "Mul", "Div", "Mod", "Gather", "Slice", "CumSum",
    "Expand", "ScatterElements", "Range", "EyeLike", "MatMul", "Split",
}  # fmt: skip


def _gaussian(shape, std: float = 14.0, seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).normal(0, std, size=shape)).astype(np.int32)


def _entropy(codes: list[np.ndarray]) -> float:
    _, counts = np.unique(np.concatenate([c.reshape(-1) for c in codes]), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _mixed_set() -> list[np.ndarray]:
    """Gaussian and Laplacian tensors of odd shapes, with int16- and int32-range outliers."""
    rng = np.random.default_rng(7)
    big = _gaussian((37, 101), seed=1)
    big[3, 4], big[20, 100], big[0, 0] = 32767, -32768, 900
    lap = np.round(rng.laplace(0, 10, size=(3, 5, 7))).astype(np.int32)
    lap[1, 2, 3] = -2**31
    lap[2, 4, 6] = 2**31 - 1
    return [big, np.array([[5]], np.int32), np.array(-7, np.int32), lap, _gaussian(1000, seed=2), _gaussian(1, seed=3)]


def _check_round_trip(codes: list[np.ndarray], **kw) -> EntropyGroup:
    group = encode_group(codes, **kw)
    out = decode_group(group)
    assert len(out) == len(codes)
    for q, d in zip(codes, out, strict=True):
        assert d.dtype == np.int32 and d.shape == q.shape
        np.testing.assert_array_equal(d, q)
    return group


def _model(group: EntropyGroup, prefix: str, opset: int) -> onnx.ModelProto:
    """codes = group chain -> Identity -> one int32 graph output per tensor (exact comparison)."""
    nodes, inits, outs = group_nodes(group, prefix, opset)
    outputs = []
    for k, (name, shape) in enumerate(zip(outs, group.shapes, strict=True)):
        nodes.append(helper.make_node("Identity", [name], [f"y{k}"]))
        outputs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.INT32, list(shape)))
    graph = helper.make_graph(nodes, "entropy", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 10
    return model


def _session(model: onnx.ModelProto, optimized: Path | None = None) -> tuple[ort.InferenceSession, float]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    start = time.perf_counter()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - start


def _assert_folded(optimized: Path) -> None:
    """The optimized graph keeps no decode op: every output is a constant (maybe via Identity)."""
    left = {n.op_type for n in onnx.load(str(optimized), load_external_data=False).graph.node}
    assert left <= {"Identity"}, left


def _check_onnx(group: EntropyGroup, opset: int, tmp_path: Path, prefix: str = "e") -> float:
    model = _model(group, prefix, opset)
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in model.graph.node} - {"Identity"} <= ALLOWED_OPS
    optimized = tmp_path / f"opt{opset}.onnx"
    sess, seconds = _session(model, optimized)
    for out, ref in zip(sess.run(None, {}), decode_group(group), strict=True):
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, ref)
    _assert_folded(optimized)
    return seconds


# ---------------------------------------------------------------------------------------------
# the code


def _huffman_cost(counts: np.ndarray) -> int:
    tie = itertools.count()
    heap = [(int(c), next(tie)) for c in counts]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, _ = heapq.heappop(heap)
        b, _ = heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, (a + b, next(tie)))
    return cost


def test_length_limited_code_is_optimal_and_complete() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        counts = rng.integers(1, 1000, size=int(rng.integers(2, 80))) ** int(rng.integers(1, 4))
        free = code_lengths(counts, 40)
        assert int((free * counts).sum()) == _huffman_cost(counts)
        for limit in range(int(np.ceil(np.log2(counts.size))), 13):
            lengths = code_lengths(counts, limit)
            assert lengths.max() <= limit
            assert (2.0 ** -lengths).sum() == pytest.approx(1.0, abs=1e-12)  # complete: no gap in the tables
            assert (lengths * counts).sum() >= (free * counts).sum()


# ---------------------------------------------------------------------------------------------
# NumPy round trip


def test_round_trip_shapes_outliers_and_layouts() -> None:
    codes = _mixed_set()
    group = _check_round_trip(codes)
    assert group.meta["nnz"] >= 4 and group.meta["h"] == 32  # full int32 span of outlier values
    for steps, chunk in [(1, None), (3, 1), (7, 2), (40, 7), (200, None), (None, 1000)]:
        _check_round_trip(codes, steps=steps, chunk=chunk)


def test_round_trip_degenerate_groups() -> None:
    _check_round_trip([np.full((4, 4), 3, np.int32)])  # one symbol
    _check_round_trip([np.array([0, 1] * 9, np.int32), np.array([1])])  # two symbols
    _check_round_trip([np.array(2**31 - 1, np.int32)])  # a single element at the int32 edge
    _check_round_trip([np.array([-(2**31), 2**31 - 1, 0], np.int64)])  # int64 input holding int32 values
    wide = np.random.default_rng(4).integers(-(2**31), 2**31, size=20000, dtype=np.int64)
    group = _check_round_trip([wide, _gaussian(5000)])  # outliers everywhere: packed 2-field values
    assert group.meta["raw_v"] == 0 and group.meta["h"] > 24


def test_round_trip_laplacian_and_int16_codes() -> None:
    rng = np.random.default_rng(11)
    lap = np.round(rng.laplace(0, 40, size=(257, 129))).astype(np.int16)
    lap.flat[rng.choice(lap.size, 50, replace=False)] = rng.integers(-32768, 32767, 50).astype(np.int16)
    _check_round_trip([lap, _gaussian((3, 3, 3), std=2)])


def test_rejects_what_it_cannot_code() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_group([])
    with pytest.raises(ValueError, match="integer"):
        encode_group([np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="empty"):
        encode_group([np.zeros((0, 3), np.int32)])
    with pytest.raises(ValueError, match="int32"):
        encode_group([np.array([2**31], np.int64)])
    with pytest.raises(ValueError, match="opset"):
        group_nodes(encode_group([np.arange(5)]), "e", 12)


# ---------------------------------------------------------------------------------------------
# ONNX decode


@pytest.mark.parametrize("opset", [13, 21])
def test_onnx_decode_matches_and_folds(opset: int, tmp_path: Path) -> None:
    codes = _mixed_set()
    _check_onnx(encode_group(codes), opset, tmp_path)
    _check_onnx(encode_group(codes, steps=9, chunk=2), opset, tmp_path)  # several chunks
    _check_onnx(encode_group(codes, steps=1), opset, tmp_path)
    wide = np.random.default_rng(4).integers(-(2**31), 2**31, size=20000, dtype=np.int64)
    _check_onnx(encode_group([wide, _gaussian(5000)]), opset, tmp_path)  # 2-field outlier values
    _check_onnx(encode_group([np.full((2, 3), -4, np.int32)]), opset, tmp_path)  # one symbol


def test_every_opset_13_to_21_is_valid() -> None:
    group = encode_group(_mixed_set(), steps=5, chunk=2)
    for opset in range(13, 22):
        onnx.checker.check_model(_model(group, "e", opset), full_check=True)


def test_two_groups_in_one_model_keep_their_names(tmp_path: Path) -> None:
    a, b = encode_group([_gaussian((30, 20))]), encode_group([_gaussian(77, seed=5), np.arange(6)])
    nodes, inits, outs = [], [], []
    for prefix, group in (("g0_", a), ("g1_", b)):
        n, i, o = group_nodes(group, prefix, 17)
        names = [x for node in n for x in [*node.input, *node.output]] + [t.name for t in i]
        assert all(x.startswith(prefix) for x in names) and all(not node.name for node in n)
        nodes, inits, outs = nodes + n, inits + i, outs + list(zip(o, group.shapes, strict=True))
    produced = [x for node in nodes for x in node.output] + [t.name for t in inits]
    assert len(produced) == len(set(produced))
    outputs = [helper.make_tensor_value_info(o, TensorProto.INT32, list(s)) for o, s in outs]
    graph = helper.make_graph(nodes, "two", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess, _ = _session(model)
    expected = decode_group(a) + decode_group(b)
    for got, ref in zip(sess.run(None, {}), expected, strict=True):
        np.testing.assert_array_equal(got, ref)


# ---------------------------------------------------------------------------------------------
# sizes


def test_two_million_gaussian_codes_near_the_entropy(tmp_path: Path) -> None:
    codes = [_gaussian((1000, 2000), seed=21)]
    group = encode_group(codes, prefix_len=3)
    seconds = _check_onnx(group, 17, tmp_path, prefix="q0_")  # a multi-chunk chain folds whole
    nodes, inits, _ = group_nodes(group, "q0_", 17)
    entropy = _entropy(codes)
    stored = group.bits_per_code()
    total = 8 * (group_nbytes(group) + graph_nbytes(nodes, inits, group.nbytes)) / group.size
    split = 8 * encode_split(codes[0]).nbytes / group.size
    print(
        f"\n2M N(0,14) codes: entropy {entropy:.4f}, stored {stored:.4f} (+{stored - entropy:.4f}), "
        f"with graph {total:.4f}, split {split:.4f} bits/code; steps {group.meta['steps']}, "
        f"{len(nodes)} nodes, session {seconds:.2f} s"
    )
    assert stored <= entropy + 0.12
    assert total < split


def test_stored_plus_graph_bytes_beat_split_per_tensor() -> None:
    codes = [_gaussian((256, 1024), seed=k) for k in range(3)] + [_gaussian((256, 256), seed=9), _gaussian(64, seed=8)]
    sizes = compare_sizes(codes)
    n = sum(c.size for c in codes)
    print(
        f"\n{n} codes: group {sizes.group_stored} + {sizes.group_graph} graph = {sizes.group_total} B "
        f"({8 * sizes.group_total / n:.3f} b/code); split {sizes.split_stored} + {sizes.split_graph} graph "
        f"= {sizes.split_total} B ({8 * sizes.split_total / n:.3f} b/code)"
    )
    assert sizes.group_total < sizes.split_total
    assert worth_it(codes)
    assert worth_it([_gaussian(50)])  # even alone: split's per-tensor chain is no smaller
    uniform = np.random.default_rng(0).integers(-128, 128, size=100_000)  # 8 bits of entropy
    assert not worth_it([uniform])  # int8 storage: no chain at all


def test_bert_sized_group_folds_in_time() -> None:
    """~22M codes: one 30522x384, twelve 384x1536, twenty-four 384x384 (MiniLM-L6's matrices).

    The limit is on the CPU seconds of session creation (folding), which a busy machine
    disturbs less than wall time; both are printed.
    """
    rng = np.random.default_rng(3)
    shapes = [(30522, 384)] + [(384, 1536)] * 12 + [(384, 384)] * 24
    codes = [np.round(rng.normal(0, 14, size=s)).astype(np.int32) for s in shapes]
    start = time.perf_counter()
    group = encode_group(codes, prefix_len=1)
    encode_s = time.perf_counter() - start
    model = _model(group, "e", 17)
    cpu = time.process_time()
    sess, seconds = _session(model)
    cpu = time.process_time() - cpu
    for out, q in zip(sess.run(None, {}), codes, strict=True):
        assert np.array_equal(out, q)
    n = group.size
    graph = graph_nbytes(*group_nodes(group, "e", 17)[:2], group.nbytes)
    print(
        f"\n{n} codes: encode {encode_s:.2f} s, session creation {seconds:.2f} s ({cpu:.2f} s CPU); "
        f"entropy {_entropy(codes):.4f}, stored {group.bits_per_code():.4f}, with graph "
        f"{8 * (group.nbytes + graph) / n:.4f} bits/code ({graph} graph bytes, "
        f"{len(model.graph.node)} nodes, steps {group.meta['steps']}, chunk {group.meta['chunk']})"
    )
    assert cpu < 10.0
