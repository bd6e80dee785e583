"""Min/max statistics reduced inside the model run (ptq_core.stats.in_graph) give the observers the same
bits as the exposed tensors, never hand activations back, and still name a NaN anywhere in a tensor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_core.errors import DataError
from ptq_core.stats import collect
from ptq_core.stats.in_graph import extremes_model


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _rounds(tmp_path, n=6, poison: tuple[int, int] | None = None) -> list[collect.Round]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
        if poison and poison[0] == i:
            x[0, 0, 4:6, poison[1]] = 3e38  # finite, but their sum is not
        path = tmp_path / f"{i}.npy"
        np.save(path, x)
        out.append(collect.Round(i, (("x", str(path)),), (f"sample{i}.bin",)))
    return out


def _exposed(tmp_path, model, tensors) -> str:
    return str(collect.exposed_model_path(model, tensors, tmp_path / "work", "k"))


TENSORS = ("x", "c", "r")


@pytest.mark.parametrize("method", ["MAX_MIN", "KL"])
def test_reduced_statistics_equal_the_exposed_tensors_bit_for_bit(tmp_path, method):
    path = _exposed(tmp_path, _model(), TENSORS)
    rounds = _rounds(tmp_path)
    reduced = collect.accumulate(path, TENSORS, rounds, method)
    direct = {t: collect.make_observer(method) for t in TENSORS}
    for rnd in rounds:
        for name, x in collect.run_round(path, TENSORS, rnd.feeds()).items():
            direct[name].update(x)
    for t in TENSORS:
        assert reduced[t].to_state() == direct[t].to_state()


def test_min_max_pass_hands_back_no_activation(tmp_path, monkeypatch):
    path = _exposed(tmp_path, _model(), TENSORS)

    def no_exposed_run(*args):
        raise AssertionError("the exposed model ran")

    monkeypatch.setattr(collect, "run_round", no_exposed_run)
    observers = collect.accumulate(path, TENSORS, _rounds(tmp_path), "MAX_MIN")
    assert all(o.rounds == 6 for o in observers.values())


def test_reduced_model_outputs_only_scalars_placed_after_each_producer():
    exposed = collect.expose_tensors(_model(), TENSORS)
    model, layout = extremes_model(exposed, TENSORS)
    assert [o.type.tensor_type.shape.dim for o in model.graph.output] == [[]] * 9
    ops = [n.op_type for n in model.graph.node]
    assert ops[:3] == ["ReduceMin", "ReduceMax", "ReduceSum"]  # the graph input, before anything runs
    assert ops[3:7] == ["Conv", "ReduceMin", "ReduceMax", "ReduceSum"]
    assert layout.raw == ()


def test_tensor_that_is_not_float32_is_observed_as_it_is(tmp_path):
    exposed = collect.expose_tensors(_model(), ("c", "s"))
    _, layout = extremes_model(exposed, ("c", "s"))
    assert layout.raw == ("s",) and set(layout.reduced) == {"c"}


def test_nan_inside_a_tensor_is_still_named(tmp_path):
    # one negative input in the middle of Sqrt's: onnxruntime's ReduceMin and ReduceMax skip a NaN that
    # is not the first element, the ReduceSum sentinel does not
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = _exposed(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), ("r",))
    x = np.abs(np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8))).astype(np.float32) + 0.5
    x[0, 1, 4, 4] = -1.0
    np.save(tmp_path / "s.npy", x)
    rnd = collect.Round(0, (("x", str(tmp_path / "s.npy")),), ("sample0.bin",))
    with pytest.raises(DataError, match=r"sample 0 \(sample0.bin\): tensor 'r' has 1 NaN or Inf value of 192"):
        collect.accumulate(path, ("r",), [rnd], "MAX_MIN")


def test_sum_that_overflows_on_finite_values_falls_back_to_the_tensors(tmp_path):
    path = _exposed(tmp_path, _model(), TENSORS)
    reduced = collect.accumulate(path, ("x",), _rounds(tmp_path, poison=(2, 3)), "MAX_MIN")
    assert reduced["x"].to_state()["max"] == np.float32(3e38) and reduced["x"].rounds == 6


def test_kl_histogram_pass_counts_the_same_bins_inside_the_graph(tmp_path, monkeypatch):
    path = _exposed(tmp_path, _model(), TENSORS)
    rounds = _rounds(tmp_path)
    first = collect.merge_all([collect.accumulate(path, TENSORS, rounds, "KL")])
    for obs in first.values():
        obs.begin_pass(1)
    direct = {t: first[t].spawn() for t in TENSORS}
    for rnd in rounds:
        for name, x in collect.run_round(path, TENSORS, rnd.feeds()).items():
            direct[name].update(x, 1)

    def no_exposed_run(*args):
        raise AssertionError("the exposed model ran")

    monkeypatch.setattr(collect, "run_round", no_exposed_run)
    binned = collect.accumulate(path, TENSORS, rounds, "KL", 1, first)
    for t in TENSORS:
        assert binned[t].to_state().keys() == direct[t].to_state().keys()
        assert all(np.array_equal(binned[t].to_state()[k], direct[t].to_state()[k]) for k in direct[t].to_state())


def test_a_pass_drops_the_previous_passs_session_in_its_thread(tmp_path):
    import threading

    path = _exposed(tmp_path, _model(), TENSORS)
    rounds = _rounds(tmp_path)
    first = collect.merge_all([collect.accumulate(path, TENSORS, rounds, "KL")])
    for obs in first.values():
        obs.begin_pass(1)
    collect.accumulate(path, TENSORS, rounds, "KL", 1, first)
    mine = [p for p, thread in collect._SESSIONS if thread == threading.get_ident() and p.startswith(path[:-5])]
    assert len(mine) == 1 and "-ingraph-bins-" in mine[0]
    collect.forget_sessions(path)


def test_values_on_bin_edges_fall_in_the_bins_numpy_gives_them(tmp_path):
    from ptq_core.stats.in_graph import bins_model
    from ptq_core.stats.kl_observer import KL_BINS, histogram_counts

    interval = np.float32(0.0137)
    rng = np.random.default_rng(2)
    x = (rng.integers(-2100, 2100, 4096).astype(np.float32) * interval)  # on the edges, and past the last bin
    x[:5] = [0.0, -0.0, 1e-17, -1e-300, np.float32(2.0) ** -52]  # values in no bin
    x = np.concatenate([x, rng.normal(0, 5, 4096).astype(np.float32)]).reshape(1, 1, 1, -1)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    exposed = collect.expose_tensors(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), ("x",))
    model, layout = bins_model(exposed, {"x": float(interval)}, KL_BINS)
    from ptq_core.onnxgraph.session import make_session

    (index,) = make_session(model, arena=False).run(layout.outputs(), {"x": x})
    counts = np.bincount(index.reshape(-1), minlength=KL_BINS + 1)
    assert np.array_equal(counts[1:], histogram_counts(x, interval))
    assert counts[0] == 5
