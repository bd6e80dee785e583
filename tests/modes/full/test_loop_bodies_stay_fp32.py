"""FULL_QUANT calibrates the main graph only: weights inside Loop/Scan bodies (and Ifs nested in them) stay
FP32, and the summary lists each with the reason instead of a silent "0 quantized, 0 skipped"."""

import numpy as np
from modelgen import recurrent_model, save, write_config


def test_weights_inside_loop_and_scan_bodies_are_listed_as_kept_fp32_with_the_reason(tmp_path):
    from ptqflow.api import convert

    rng = np.random.default_rng(0)
    folders = []
    for name, shape in (("x", (1, 16)), ("s", (4, 1, 16))):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.bin").write_bytes(rng.normal(0, 1, shape).astype(np.float32).tobytes())
        folders.append(f"{name}:{tmp_path / name}")
    cfg = write_config(tmp_path / "f.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       "min_quant_weight_size=0\n[data_preprocess_param]\ncalibrate_path=" + ",".join(folders) +
                       "\ncalibrate_size=3\ninput_type=BIN\n[ptqflow]\nlatency_guard=false\n")
    model = save(recurrent_model(), tmp_path / "rnn.onnx")
    rows = convert(model, cfg, tmp_path / "q", use_flow=False).layers
    assert not any(r.quantized for r in rows)
    kept = {r.node.split("/MatMulAdd")[0]: r.reason for r in rows}  # onnxruntime fuses the Scan's MatMul+Add
    assert sorted(kept) == ["loop/body/mm_loop", "loop/body/pick/else_branch/mm_else",
                            "loop/body/pick/then_branch/mm_then", "scan/body/mm_scan"]
    assert kept["scan/body/mm_scan"].startswith("inside scan/body: FULL_QUANT calibrates the main graph")
