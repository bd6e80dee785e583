"""``--max-drop`` sees an output of a few values (a VAD's speech probability): such an output is scored by the
cosine of its values from every calibration round together, because per round its cosine is 1 whenever the
signs agree. Outputs with more values are scored as before: the mean of their per-round cosines."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptq_core.modes.full.max_drop import Evaluator
from ptq_core.onnxgraph.session import PooledOutputCosine, output_cosine


class _Round:
    def __init__(self, x: np.ndarray):
        self.x = x

    def feeds(self) -> dict:
        return {"x": self.x}


def probability_model(offset: float = 0.0) -> onnx.ModelProto:
    """x[1, 8] -> y = x (8 values) and p = Sigmoid(ReduceMean(x)) + offset (1 value)."""
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="copy"),
             helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[1], keepdims=1),
             helper.make_node("Sigmoid", ["m"], ["s"], name="prob"),
             helper.make_node("Add", ["s", "offset"], ["p"], name="shift")]
    graph = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8]),
                               helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor("offset", TensorProto.FLOAT, [], [offset])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _rounds(n: int = 12):
    rng = np.random.default_rng(0)
    return [_Round(rng.normal(0, 2, (1, 8)).astype(np.float32)) for _ in range(n)]


def test_a_one_value_output_shifted_by_0_3_is_seen_by_the_bound_but_not_per_round():
    rounds = _rounds()
    fp32, shifted = probability_model(), probability_model(0.3)
    per_round = []
    from ptq_core.onnxgraph.session import make_session

    a, b = make_session(fp32), make_session(shifted)
    for r in rounds:
        per_round.append(output_cosine(a.run(None, r.feeds()), b.run(None, r.feeds())))
    assert min(per_round) > 0.999999  # y is unchanged and p's sign agrees: a per-round mean sees nothing
    assert Evaluator(fp32, rounds).cosine(shifted) < 0.999  # pooled over the rounds, p's shift shows


def test_outputs_with_many_values_score_the_mean_of_their_per_round_cosines():
    rng = np.random.default_rng(1)
    pooled, means = PooledOutputCosine(), []
    for _ in range(5):
        ref = [rng.normal(size=(2, 16)), rng.normal(size=(4,))]
        got = [r + rng.normal(scale=0.3, size=r.shape) for r in ref]
        pooled.add(ref, got)
        means.append(output_cosine(ref, got))
    assert abs(pooled.value() - float(np.mean(means))) < 1e-12
