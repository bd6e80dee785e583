"""Models where naive int8 quantization fails, built in code for the debug-report tests and benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def detection_head_model(levels: int = 2, seed: int = 0, size: int = 16) -> onnx.ModelProto:
    """A detection-style head: per level, a box branch (outputs ~1e3) and a score branch (~1e-2) joined by Concat.

    The box and score convs each quantize fine on their own; every ``concat_<k>`` shares one output
    scale across both branches, so the scores fall below one int8 level and are lost, while the
    Concat's own output cosine stays ~1 (the boxes dominate it). The planted broken nodes are the
    ``concat_<k>`` nodes.
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "stem_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "stem_b")]
    nodes = [helper.make_node("Conv", ["x", "stem_w", "stem_b"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["stem"], ["stem_r"], name="stem_relu")]
    outputs = []
    feat = "stem_r"
    for k in range(levels):
        inits += [
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), f"neck{k}_w"),
            numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32) * 300.0, f"box{k}_w"),
            numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32) * 0.003, f"cls{k}_w"),
        ]
        nodes += [
            helper.make_node("Conv", [feat, f"neck{k}_w"], [f"neck{k}"], name=f"neck_{k}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"neck{k}"], [f"neck{k}_r"], name=f"neck_relu_{k}"),
            helper.make_node("Conv", [f"neck{k}_r", f"box{k}_w"], [f"box{k}"], name=f"box_{k}"),
            helper.make_node("Conv", [f"neck{k}_r", f"cls{k}_w"], [f"cls{k}"], name=f"cls_{k}"),
            helper.make_node("Concat", [f"box{k}", f"cls{k}"], [f"det{k}"], name=f"concat_{k}", axis=1),
        ]
        outputs.append(helper.make_tensor_value_info(f"det{k}", TensorProto.FLOAT, [1, 8, size, size]))
        feat = f"neck{k}_r"
    graph = helper.make_graph(nodes, "detection_head",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_bins(folder: Path, shape: tuple[int, ...], count: int, seed: int = 0) -> Path:
    """``count`` float32 .bin calibration samples of ``shape`` (normal noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        rng.normal(0, 1, shape).astype(np.float32).tofile(folder / f"sample_{i:04d}.bin")
    return folder


def full_quant_config(path: Path, input_name: str, data: Path, count: int, debug: Path | None,
                      guard: bool = False) -> Path:
    """A FULL_QUANT config on BIN data; the latency guard off so tiny test models stay int8."""
    lines = ["[common_quant_param]", "quant_type=FULL_QUANT", "bit_num=8"]
    if debug is not None:
        lines.append(f"debug_info_save_path={debug}")
    lines += ["[data_preprocess_param]", f"calibrate_path={input_name}:{data}", f"calibrate_size={count}",
              "input_type=BIN", "[ptqflow]", f"latency_guard={'true' if guard else 'false'}"]
    path.write_text("\n".join(lines) + "\n")
    return path
