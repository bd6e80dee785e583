"""Models with external data: weight quantization reads weights one at a time and never loads the
whole model, and gives the same bytes as the same model stored inline."""

from __future__ import annotations

import onnx
import pytest
from modelgen import mixed_ops_model, write_config

from ptq_core.convert import convert_direct

W8 = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"


def _save_external(model: onnx.ModelProto, path) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


@pytest.mark.parametrize("bits", [8, 3])
def test_external_data_model_gives_the_same_bytes_as_the_inline_model(tmp_path, bits):
    cfg = write_config(tmp_path / "w.cfg", W8.replace("=8", f"={bits}"))
    (tmp_path / "inline").mkdir()
    (tmp_path / "ext").mkdir()
    onnx.save(mixed_ops_model(), str(tmp_path / "inline" / "m.onnx"))
    _save_external(mixed_ops_model(), tmp_path / "ext" / "m.onnx")
    assert (tmp_path / "ext" / "m.onnx.data").stat().st_size > 100_000  # the weights really are outside
    convert_direct(tmp_path / "inline" / "m.onnx", cfg, tmp_path / "a")
    convert_direct(tmp_path / "ext" / "m.onnx", cfg, tmp_path / "b")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_weight_quant_never_loads_the_whole_model(tmp_path, monkeypatch):
    """Loading all external data at once is what would hold a > 2 GB model twice; it must not happen."""
    _save_external(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", W8)

    def refuse(*args, **kwargs):
        raise AssertionError("the whole model was loaded into memory")

    monkeypatch.setattr(onnx, "load_external_data_for_model", refuse)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", refuse)
    summary = convert_direct(tmp_path / "m.onnx", cfg, tmp_path / "q")
    assert summary.output_cosine > 0.99
    assert sum(d.quantized for d in summary.layers) >= 3


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.2, 0.5, 1.0])
def test_skipping_the_sparse_plan_never_changes_the_chosen_encoding(bits, fraction):
    """The cheap bound that skips sparse coding's position arrays picks what the full comparison picks."""
    import numpy as np
    from storage_reference import fixed_sizes

    from ptq_core.storage.fixed_bit import encode_fixed

    rng = np.random.default_rng(int(fraction * 100) + bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = np.zeros((8, 512), np.int64)
    mask = rng.random(q.shape) < fraction
    q[mask] = rng.integers(lo, hi + 1, size=int(mask.sum()))
    zp = np.zeros(8, np.int64)
    sizes = fixed_sizes(q, bits, zp)
    best = min(sizes[k] for k in ("raw", "index", "sparse"))
    expected = next(k for k in ("raw", "index", "sparse") if sizes[k] == best)
    kind = encode_fixed(q, bits, zp).kind
    assert {"bitpack": "raw"}.get(kind, kind) == expected


def test_an_output_over_the_protobuf_limit_gets_external_data_and_no_temporary_file(tmp_path, monkeypatch):
    import threading

    import numpy as np
    import onnxruntime as ort

    from ptq_core.onnxgraph import save

    monkeypatch.setattr(save, "TWO_GB", 1000)  # any model is "over 2 GB" now
    model = mixed_ops_model()
    # separate protos, as separate runs have (saving with external data moves the data out of the proto)
    threads = [threading.Thread(target=save.save_model_atomic, args=(mixed_ops_model(), tmp_path / "o.onnx"))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx", "o.onnx.data"]
    session = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "ids": np.zeros((1, 4), np.int64)}
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, feeds)[0], reference.run(None, feeds)[0])
