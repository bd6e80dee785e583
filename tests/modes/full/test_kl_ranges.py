"""Where KL's clipping threshold is not used (docs/departures.md): a bounded op's output (Softmax, Sigmoid,
...) and a tensor whose calibration set is too small for a 2048-bin histogram keep their observed range."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from test_full_quant import calib_folder, cnn_model, full_cfg, run

from modelgen import save
from ptq_core.modes.full.prepare import keeps_observed_range
from ptq_core.modes.full.quantize import quantize_full
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.quant import cosine
from ptq_core.stats.kl_observer import KL_BINS, KLObserver


def classifier() -> onnx.ModelProto:
    """cnn_model's logits through a Softmax: the probabilities are the graph's output."""
    model = cnn_model()
    model.graph.node.append(helper.make_node("Softmax", ["y"], ["prob"], name="softmax", axis=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10]))
    return model


def _scale_of(model: onnx.ModelProto, tensor: str) -> float:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == tensor:
            return float(inits[node.input[1]])
    raise AssertionError(f"{tensor} is not quantized")


def test_kl_keeps_the_observed_range_of_softmax_and_of_small_tensors(tmp_path):
    model_path = save(classifier(), tmp_path / "m.onnx")
    folder = calib_folder(tmp_path)
    kl = quantize_full(model_path, full_cfg(folder, "KL"), InputOptions(), tmp_path / "kl")
    mm = quantize_full(model_path, full_cfg(folder, "MAX_MIN"), InputOptions(), tmp_path / "mm")
    # 12 samples x 10 logits: far too few values for KL's histogram, so no clipping
    assert _scale_of(kl.quantized, "y") == _scale_of(mm.quantized, "y")
    assert _scale_of(kl.quantized, "r1") < _scale_of(mm.quantized, "r1")  # a large tensor is still clipped


def test_a_bounded_op_output_and_a_model_input_keep_the_observed_range():
    big = KLObserver()
    big._values1 = 10**9
    producers = {"p": "Softmax", "s": "Sigmoid", "c": "Conv"}
    assert keeps_observed_range(big, "p", set(), producers) and keeps_observed_range(big, "s", set(), producers)
    assert keeps_observed_range(big, "x", {"x"}, producers)
    assert not keeps_observed_range(big, "c", set(), producers)


def test_kl_classifier_probabilities_stay_close_to_fp32(tmp_path):
    model_path = save(classifier(), tmp_path / "m.onnx")
    result = quantize_full(model_path, full_cfg(calib_folder(tmp_path), "KL"), InputOptions(), tmp_path / "w")
    rng = np.random.default_rng(11)
    xs = [rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    fp32 = onnx.load(str(model_path))
    assert min(cosine(run(fp32, x), run(result.quantized, x)) for x in xs) > 0.99


def test_kl_observer_counts_the_values_of_its_histogram_pass():
    obs = KLObserver()
    obs.update(np.linspace(-1, 1, 100, dtype=np.float32))
    obs.begin_pass(1)
    part = obs.spawn()
    part.update(np.zeros(60, np.float32), 1)  # zeros count too, although they fill no bin
    part.update(np.ones(40, np.float32), 1)
    merged = part.merge(obs.spawn())
    assert merged.values == 100 < KL_BINS
    assert KLObserver.from_state(merged.to_state()).values == 100
