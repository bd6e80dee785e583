"""Models with external data: weight quantization reads weights one at a time and never loads the
whole model, and gives the same bytes as the same model stored inline."""

from __future__ import annotations

import onnx
import pytest

from modelgen import mixed_ops_model, write_config
from ptq_core.pipeline import convert_direct

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
