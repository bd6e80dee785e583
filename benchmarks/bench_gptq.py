"""GPTQ and group-wise low-bit weights on all-MiniLM-L6-v2, beside ONNX Runtime's and NNCF's (issue 18).

    HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_gptq.py
    HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_gptq.py --only "mixed bit"   # those cells alone

MiniLM is exported as in bench_weight_quant.py. Scored on 256 pydoc sentences (seq 128): mean-pooled
embedding cosine against FP32, mean and worst. Calibration: 64 or 256 *other* pydoc sentences, as BIN
files for ptqflow and as a data reader for ORT's GPTQ. Every quantization runs in its own process, timed
from launch to exit, with its peak RSS (polled every 20 ms). Latency: batch 1, one thread, interleaved
medians against FP32.

Rows: ptqflow WEIGHT_QUANT round-to-nearest and GPTQ, per channel and with ``[ptqflow] group_size``;
ORT ``MatMulNBitsQuantizer`` RTN (block 32 and 128, MatMul + Gather) and GPTQ (``GPTQWeightOnlyQuantConfig``,
block 32, the 64 calibration sentences); NNCF ``compress_weights`` INT4_ASYM group 64 (data-free, every
layer). Writes benchmarks/results/gptq.md and .json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

WORK = HERE / "work" / "gptq"
PTQ = Path(sys.executable).parent / "ptq"
SHAPE = ";".join(f"{k}:1,{models.MINILM_SEQ_LEN}" for k in models.MINILM_INPUTS)


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS (this process tree) of one command."""
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty tool would fill a pipe and stall
        proc = psutil.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.02)
        log.seek(0)
        out = log.read()
    return {"ok": proc.returncode == 0, "wall_s": time.perf_counter() - t0, "peak_mb": peak / 2**20,
            "log": out[-2000:]}


def calibration(n: int, exclude: list[str]) -> dict[str, Path]:
    held = [s for s in models._candidate_sentences() if s not in set(exclude)][:n]
    enc = models.tokenize(held, seq_len=models.MINILM_SEQ_LEN)
    dirs = {}
    for name in models.MINILM_INPUTS:
        d = WORK / f"calib_{n}" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"{i:03d}.bin").write_bytes(np.ascontiguousarray(enc[name][i:i + 1], dtype="<i8").tobytes())
        dirs[name] = d
    return dirs


def ours(fp32: Path, bits: int, strategy: str, group: int, calib: dict[str, Path], n: int) -> dict:
    tag = f"ptq_{strategy}_{bits}_g{group}_n{n}"
    cfg = WORK / f"{tag}.cfg"
    cfg.write_text(f"[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\nmin_quant_weight_size=0\n"
                   f"[weight_quant_param]\nquant_strategy={strategy}\n[data_preprocess_param]\ncalibrate_path="
                   + ",".join(f"{k}:{d}" for k, d in calib.items()) + f"\ncalibrate_size={n}\ninput_type=BIN\n"
                   f"[ptqflow]\ngroup_size={group}\n")
    out = WORK / "out" / tag
    res = timed([str(PTQ), "convert", f"--modelFile={fp32}", f"--configFile={cfg}", f"--outputFile={out}",
                 "--no-flow", f"--inputShape={SHAPE}"])
    return {**res, "path": str(out) + ".onnx"}


PEER_CODE = textwrap.dedent('''
    import json, sys
    import numpy as np, onnx
    spec = json.loads(sys.argv[1])
    src, dst, kind = spec["src"], spec["dst"], spec["kind"]
    if kind == "nncf":
        import nncf
        m = nncf.compress_weights(onnx.load(src), mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=64, ratio=1.0,
                                  all_layers=True)
        onnx.save(m, dst)
        sys.exit(0)
    from onnxruntime.quantization.matmul_nbits_quantizer import (GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer,
                                                                 RTNWeightOnlyQuantConfig)
    if kind == "rtn":
        q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=spec["block"], is_symmetric=False,
                                 op_types_to_quantize=("MatMul", "Gather"))
    else:
        from onnxruntime.quantization import CalibrationDataReader
        feeds = [{k: np.fromfile(f"{d}/{i:03d}.bin", "<i8").reshape(1, -1) for k, d in spec["calib"].items()}
                 for i in range(spec["n"])]
        class Reader(CalibrationDataReader):
            def __init__(self): self.it = iter(feeds)
            def get_next(self): return next(self.it, None)
            def rewind(self): self.it = iter(feeds)
        cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), percdamp=0.01, block_size=spec["block"],
                                        actorder=False)
        q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=spec["block"], is_symmetric=False, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(dst, use_external_data_format=False)
''')


def peer(fp32: Path, kind: str, block: int, calib: dict[str, Path], n: int) -> dict:
    dst = WORK / "out" / f"peer_{kind}_{block}.onnx"
    spec = {"src": str(fp32), "dst": str(dst), "kind": kind, "block": block, "n": n,
            "calib": {k: str(v) for k, v in calib.items()}}
    res = timed([sys.executable, "-c", PEER_CODE, json.dumps(spec)], env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return {**res, "path": str(dst)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="run the cells whose label contains this text; results go to "
                                                "gptq_<text>.md instead of gptq.md")
    args = ap.parse_args()
    t_start = time.perf_counter()
    (WORK / "out").mkdir(parents=True, exist_ok=True)
    fp32 = models.export_minilm(HERE / "work" / "int8")
    scored = models.sentences(256)
    batch = models.tokenize(scored, seq_len=models.MINILM_SEQ_LEN)
    ref = harness.embed(fp32, batch, threads=None)
    lat_feeds = {k: v[:1] for k, v in batch.items()}
    calib = {n: calibration(n, scored) for n in (64, 256)}
    cells = [("ptqflow", "4-bit round to nearest, per channel", lambda: ours(fp32, 4, "MAX_MIN", 0, calib[64], 64)),
             ("ptqflow", "4-bit round to nearest, group 64", lambda: ours(fp32, 4, "MAX_MIN", 64, calib[64], 64)),
             ("ptqflow", "4-bit GPTQ, per channel, 64 sentences", lambda: ours(fp32, 4, "GPTQ", 0, calib[64], 64)),
             ("ptqflow", "4-bit GPTQ, group 64, 64 sentences", lambda: ours(fp32, 4, "GPTQ", 64, calib[64], 64)),
             ("ptqflow", "4-bit GPTQ, group 64, 256 sentences", lambda: ours(fp32, 4, "GPTQ", 64, calib[256], 256)),
             ("ptqflow", "3-bit round to nearest, group 64", lambda: ours(fp32, 3, "MAX_MIN", 64, calib[64], 64)),
             ("ptqflow", "3-bit GPTQ, group 64, 64 sentences", lambda: ours(fp32, 3, "GPTQ", 64, calib[64], 64)),
             ("ptqflow", "3-bit GPTQ, group 64, 256 sentences", lambda: ours(fp32, 3, "GPTQ", 64, calib[256], 256)),
             ("ptqflow", "mixed bit (init_scale 0.02), round to nearest", lambda: ours(fp32, 0, "MAX_MIN", 0, calib[64], 64)),
             ("ptqflow", "mixed bit (init_scale 0.02), GPTQ, 64 sentences",
              lambda: ours(fp32, 0, "GPTQ", 0, calib[64], 64)),
             ("ptqflow", "mixed bit (init_scale 0.02) per group of 64, round to nearest",
              lambda: ours(fp32, 0, "MAX_MIN", 64, calib[64], 64)),
             ("ptqflow", "mixed bit (init_scale 0.02) per group of 64, GPTQ, 64 sentences",
              lambda: ours(fp32, 0, "GPTQ", 64, calib[64], 64)),
             ("ORT", "MatMulNBits 4-bit RTN, block 32, MatMul+Gather", lambda: peer(fp32, "rtn", 32, calib[64], 64)),
             ("ORT", "MatMulNBits 4-bit RTN, block 128, MatMul+Gather", lambda: peer(fp32, "rtn", 128, calib[64], 64)),
             ("ORT", "MatMulNBits 4-bit GPTQ, block 32, 64 sentences", lambda: peer(fp32, "gptq", 32, calib[64], 64)),
             ("NNCF", "compress_weights INT4_ASYM, group 64, all layers", lambda: peer(fp32, "nncf", 64, calib[64], 64))]
    cells = [c for c in cells if args.only in c[1]]
    rows = []
    for tool, label, run in cells:
        print(f"{tool}: {label} ...", flush=True)
        row = {"tool": tool, "label": label, **run()}
        if row["ok"]:
            try:
                emb = harness.embed(row["path"], batch, threads=None)
                c = harness.cosine_rows(ref, emb)
                row.update(cos_mean=float(c.mean()), cos_min=float(c.min()),
                           size_ratio=harness.file_size(row["path"]) / harness.file_size(fp32))
                ms = harness.interleaved_latency_ms({"fp32": harness.make_session(fp32),
                                                     "q": harness.make_session(row["path"])}, lat_feeds)
                row["latency_ratio"] = ms["q"] / ms["fp32"]
            except Exception as exc:  # noqa: BLE001  (a model plain onnxruntime cannot run is the cell's finding)
                row.update(ok=False, log=f"onnxruntime: {str(exc).splitlines()[0][:200]}")
        rows.append({k: v for k, v in row.items() if k != "log" or not row["ok"]})
    env = harness.environment(("onnxruntime", "nncf", "numpy"))
    md = render(rows, env, time.perf_counter() - t_start)
    name = "gptq" + ("_" + "".join(ch if ch.isalnum() else "_" for ch in args.only).strip("_") if args.only else "")
    harness.write_results(name, md, {"env": env, "rows": rows})


def render(rows: list[dict], env: dict, wall: float) -> str:
    out = ["# GPTQ and group-wise low-bit weights: all-MiniLM-L6-v2 (issue 18)", "",
           "`HF_HUB_OFFLINE=1 .venv-bench/bin/python benchmarks/bench_gptq.py"
           + "".join(f" {a!r}" if " " in a else f" {a}" for a in sys.argv[1:]) + "`", "",
           f"Machine: {env['cpu']}, {env['cores']} cores; onnxruntime {env['packages'].get('onnxruntime')}, "
           f"nncf {env['packages'].get('nncf')}; git {env['git']}, {env['date']}; wall {wall:.0f} s.", "",
           "Embedding cosine vs FP32 on 256 held-out sentences (seq 128); calibration on 64 or 256 other "
           "sentences. Quantize s and peak RSS: the whole quantizing process.", "",
           "| tool | method | size / FP32 | cosine mean | cosine min | latency / FP32 | quantize s | peak RSS MB | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ok"]:
            out.append(f"| {r['tool']} | {r['label']} | {r['size_ratio']:.3f}x | {r['cos_mean']:.4f} | {r['cos_min']:.4f} "
                       f"| {r['latency_ratio']:.2f}x | {r['wall_s']:.1f} | {r['peak_mb']:.0f} |  |")
        else:
            last = (r.get("log") or "").strip().splitlines()[-1:] or ["?"]
            out.append(f"| {r['tool']} | {r['label']} |  |  |  |  | {r['wall_s']:.1f} |  | failed: "
                       f"{last[0][:160].replace('|', '/')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
