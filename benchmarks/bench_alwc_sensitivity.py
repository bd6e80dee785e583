"""Why per-tensor ALWC (converter_lite's numerics, ``rotation_block=0``) stops below cosine 0.995 on
all-MiniLM-L6-v2: the embedding cosine when exactly one MatMul is kept FP32 (every other MatMul dynamic
ALWC), on 96 pydoc sentences. Then what fixes it: the cosine of ALWC and ACWL for each
``[ptqflow] rotation_block`` (block-Hadamard rotation of the quantized activations).

    HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_alwc_sensitivity.py

Writes benchmarks/results/alwc_sensitivity.md and .json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import models  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from ptq_core.config import parse_config  # noqa: E402
from ptq_core.modes.dynamic.emit import emit_dynamic
from ptq_core.modes.dynamic.plan import plan_dynamic  # noqa: E402

N_SENTENCES = 96


BLOCKS = (0, 4, 8, 16, 32, 64)


def config(skip: tuple[str, ...] = (), strategy: str = "ALWC", block: int = 0):
    text = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
    if skip:
        text += "skip_quant_node=" + ",".join(skip) + "\n"
    text += f"[dynamic_quant_param]\nquant_strategy={strategy}\n[ptqflow]\nrotation_block={block}\n"
    return parse_config(text, "sensitivity.cfg")


def embeddings(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = []
    for i in range(0, len(feeds["input_ids"]), 32):
        batch = {n: feeds[n][i:i + 32] for n in names}
        hidden = sess.run(None, batch)[0]
        mask = batch["attention_mask"][..., None].astype(np.float32)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return np.concatenate(out)


def main() -> int:
    start = time.time()
    src = onnx.load(models.export_minilm(HERE / "work"))
    feeds = models.tokenize(models.sentences(N_SENTENCES))
    ref = embeddings(src, feeds)

    def cosine(model) -> float:
        e = embeddings(model, feeds)
        return float(np.mean((e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)))

    inits = {t.name for t in src.graph.initializer}
    matmuls = [n.name for n in src.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    all_int8 = cosine(emit_dynamic(src, plan_dynamic(src, config())))
    rows = [{"fp32_node": n, "cosine": cosine(emit_dynamic(src, plan_dynamic(src, config((n,)))))} for n in matmuls]
    ffn_out = tuple(n for n in matmuls if n.endswith("output/dense/MatMul") and "attention" not in n)
    all_ffn_out = cosine(emit_dynamic(src, plan_dynamic(src, config(ffn_out))))
    rows.sort(key=lambda r: -r["cosine"])
    rotation = [{"block": b, **{s: cosine(emit_dynamic(src, plan_dynamic(src, config(strategy=s, block=b))))
                                for s in ("ALWC", "ACWL")}} for b in BLOCKS]
    result = {"sentences": N_SENTENCES, "all_int8": all_int8, "all_ffn_out_fp32": all_ffn_out, "one_fp32": rows,
              "rotation": rotation, "wall_s": round(time.time() - start, 1)}
    out = HERE / "results"
    (out / "alwc_sensitivity.json").write_text(json.dumps(result, indent=1))
    lines = ["# ALWC sensitivity on all-MiniLM-L6-v2", "", "```",
             "HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_alwc_sensitivity.py", "```", "",
             f"Mean-pooled embedding cosine vs FP32 on {N_SENTENCES} pydoc sentences (seq 128). "
             f"All 36 MatMuls ALWC without rotation (`rotation_block=0`): **{all_int8:.5f}**; the six FFN-output "
             f"MatMuls FP32: **{all_ffn_out:.5f}**.", "",
             "Rotation instead (every quantized activation rotated, no MatMul kept FP32; default block 16):", "",
             "| rotation_block | ALWC cosine | ACWL cosine |", "|---:|---:|---:|"]
    lines += [f"| {r['block']} | {r['ALWC']:.5f} | {r['ACWL']:.5f} |" for r in rotation]
    lines += ["", "| MatMul kept FP32 (all others ALWC, no rotation) | cosine | gain |", "|---|---:|---:|"]
    lines += [f"| `{r['fp32_node']}` | {r['cosine']:.5f} | {r['cosine'] - all_int8:+.5f} |" for r in rows]
    (out / "alwc_sensitivity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:18]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
