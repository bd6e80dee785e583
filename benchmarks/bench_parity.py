"""converter_lite parity, round two (issue 14): equalization, shapes from images, the seed's Ascend command
line, and the size of a latency-guarded FULL_QUANT model. One run, one machine.

    .venv-bench/bin/python benchmarks/bench_parity.py            # ~6 min on 2 cores
    .venv-bench/bin/python benchmarks/bench_parity.py --quick    # smaller sets, a smoke run

1. Per-layer weights (``per_channel=false``) with cross-layer equalization always on (converter_lite's
   behaviour), off, and ``auto`` (the default: both, keep the closer), beside per-channel, on the PP-OCR
   text-direction classifier (IMAGE calibration, top-1 accuracy on rendered lines) and the
   PP-OCRv4 recognizer (BIN calibration, mean output cosine and CTC text agreement with FP32). KL, bias
   correction on, latency guard off (so every convolution the target allows runs int8 and the weights'
   granularity shows).
2. ``ptq convert`` processes as a user runs them (``--no-flow``): the classifier (input ``[?, 3, ?, ?]``)
   from IMAGE calibration with resize and no ``--inputShape``; the seed's Ascend command line
   (``--optimize=ascend_oriented --inputShape=...``).
3. FULL_QUANT with the latency guard on (the default) on the classifier and the digits demo: file size and
   batch-1 latency against FP32 (interleaved sessions, median), and which layers run int8.

Writes benchmarks/results/parity.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_full_quant as bfq  # noqa: E402
import harness  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402
import ocr_cls_data  # noqa: E402

PTQ = Path(sys.executable).parent / "ptq"
SETTINGS = (("per_channel=true", True, "auto"), ("per_channel=false, equalization on", False, "true"),
            ("per_channel=false, equalization off", False, "false"),
            ("per_channel=false, equalization auto (default)", False, "auto"))
CLS_RESIZE = "resize_width=192\nresize_height=48\nresize_method=LINEAR\n"


def cls_cfg(path: Path, calib_dir: Path, n: int, per_channel: bool, cle, guard: bool, method: str = "KL") -> Path:
    text = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n[data_preprocess_param]\n"
            f"calibrate_path=x:{calib_dir}\ncalibrate_size={n}\ninput_type=IMAGE\nimage_to_format=BGR\n"
            "normalize_mean=[127.5,127.5,127.5]\nnormalize_std=[127.5,127.5,127.5]\n" + CLS_RESIZE +
            f"[full_quant_param]\nactivation_quant_method={method}\nper_channel={str(per_channel).lower()}\n"
            "bias_correction=true\n"
            f"[ptqflow]\nlatency_guard={str(guard).lower()}\ncross_layer_equalization={cle if isinstance(cle, str) else str(cle).lower()}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rec_cfg(path: Path, bindir: Path, n: int, per_channel: bool, cle, method: str = "KL") -> Path:
    text = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n[data_preprocess_param]\n"
            f"calibrate_path=x:{bindir}\ncalibrate_size={n}\ninput_type=BIN\n"
            f"[full_quant_param]\nactivation_quant_method={method}\nper_channel={str(per_channel).lower()}\n"
            "bias_correction=true\n"
            f"[ptqflow]\nlatency_guard=false\ncross_layer_equalization={cle if isinstance(cle, str) else str(cle).lower()}\n")
    path.write_text(text)
    return path


def convert(model: Path, cfg: Path, out: Path, *flags: str) -> dict:
    """One ``ptq convert --no-flow`` process; its exit code, wall time and summary lines."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(PTQ), "convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={out}",
                           "--no-flow", *flags], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "COLUMNS": "250"})
    lines = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    keep = ("layers", "size", "target", "equalization", "latency guard", "output cosine")
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "path": str(out) + ".onnx",
            "summary": [ln for ln in lines if ln.startswith(keep)], "err": proc.stderr.strip()[-600:]}


def cls_predictions(path: str, x: np.ndarray) -> np.ndarray:
    sess = harness.make_session(path, threads=None)
    return np.argmax(bfq.batched_run(sess, "x", x), axis=1)


def cls_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(cls_predictions(path, x) == y))


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test on the discordant pairs."""
    n, k = better + worse, min(better, worse)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def paired_note(on_right: np.ndarray, off_right: np.ndarray, what: str) -> str:
    """Equalization on vs off on the same items: how many each wins, and the sign test's p."""
    better, worse = int(np.sum(on_right & ~off_right)), int(np.sum(~on_right & off_right))
    return f"{what}: equalization better on {better}, worse on {worse} (sign test p = {sign_test(better, worse):.2f})"


def section_equalization(args, work: Path) -> list[dict]:
    rows = []
    cls = models.rapidocr_models()["cls"]
    root = HERE / "work" / "cls"
    ocr_cls_data.build(root, n_calib=max(args.cls_calib, 100), n_eval=args.cls_eval, seed=0)
    x, y = ocr_cls_data.load_eval(root)
    x, y = x[:args.cls_eval], y[:args.cls_eval]
    calib = (root / "calib").resolve()
    fp32_acc = cls_accuracy(str(cls), x, y)
    rows.append({"model": "classifier", "setting": "FP32", "accuracy": fp32_acc})
    for label, pc, cle in SETTINGS:
        cfg = cls_cfg(work / "cfg" / f"cls_{pc}_{cle}.cfg", calib, args.cls_calib, pc, cle, guard=False)
        res = convert(cls, cfg, work / "out" / f"cls_{pc}_{cle}")
        row = {"model": "classifier", "setting": label, "rc": res["rc"], "summary": res["summary"]}
        if res["rc"] == 0:
            row["right"] = cls_predictions(res["path"], x) == y
            row["accuracy"] = float(np.mean(row["right"]))
        else:
            row["error"] = res["err"]
        rows.append(row)
        print(f"  classifier {label}: {row.get('accuracy')}", flush=True)
    rec = models.rapidocr_models()["rec"]
    bindir = work / "rec_calib"
    bfq.rec_calibration(bindir, args.rec_calib)
    lines, _ = bfq.rec_eval_lines(args.rec_eval)
    fp32 = harness.make_session(rec, threads=None)
    chars = ["blank"] + fp32.get_modelmeta().custom_metadata_map.get("character", "").splitlines() + [" "]
    ref = [fp32.run(None, {"x": t})[0] for t in lines]
    rows.append({"model": "recognizer", "setting": "FP32", "cos_mean": 1.0, "text_agree": 1.0})
    n = len(list(bindir.glob("*.bin")))
    for label, pc, cle in SETTINGS:
        cfg = rec_cfg(work / "cfg" / f"rec_{pc}_{cle}.cfg", bindir.resolve(), n, pc, cle)
        res = convert(rec, cfg, work / "out" / f"rec_{pc}_{cle}", "--inputShape=x:1,3,48,320")
        row = {"model": "recognizer", "setting": label, "rc": res["rc"], "summary": res["summary"]}
        if res["rc"] == 0:
            s = harness.make_session(res["path"], threads=None)
            got = [s.run(None, {"x": t})[0] for t in lines]
            row["cos"] = np.array([harness.cosine(a[None], b[None]) for a, b in zip(ref, got)])
            row["same_text"] = np.array([bfq._ctc(a, chars) == bfq._ctc(b, chars) for a, b in zip(ref, got)])
            row["cos_mean"] = float(row["cos"].mean())
            row["text_agree"] = float(row["same_text"].mean())
        else:
            row["error"] = res["err"]
        rows.append(row)
        print(f"  recognizer {label}: {row.get('cos_mean')} {row.get('text_agree')}", flush=True)
    on_off = {(r["model"], r["setting"]): r for r in rows}
    for model in ("classifier", "recognizer"):
        on = on_off.get((model, "per_channel=false, equalization on"), {})
        off = on_off.get((model, "per_channel=false, equalization off"), {})
        if model == "classifier" and "right" in on and "right" in off:
            on["paired"] = paired_note(on["right"], off["right"], "images classified right")
        if model == "recognizer" and "cos" in on and "cos" in off:
            on["paired"] = (paired_note(on["cos"] > off["cos"], on["cos"] < off["cos"], "lines' output cosine") + "; "
                            + paired_note(on["same_text"], off["same_text"], "lines read as FP32 reads them"))
    for r in rows:
        for key in ("right", "cos", "same_text"):
            r.pop(key, None)
    return rows


def section_commands(args, work: Path) -> list[dict]:
    cls = models.rapidocr_models()["cls"]
    calib = (HERE / "work" / "cls" / "calib").resolve()
    rows = []
    cfg = cls_cfg(work / "cfg" / "cls_images.cfg", calib, args.cls_calib, True, True, guard=True)
    res = convert(cls, cfg, work / "out" / "cls_no_shape")
    rows.append({"command": "classifier, IMAGE calibration with resize, no --inputShape", "rc": res["rc"],
                 "wall_s": res["wall_s"], "note": res["err"] if res["rc"] else "; ".join(res["summary"][:1])})
    seed_cfg = cls_cfg(work / "cfg" / "full_quant_ascend.cfg", calib, args.cls_calib, True, True, guard=True)
    res = convert(cls, seed_cfg, work / "out" / "cls_ascend", "--fmk=ONNX", "--optimize=ascend_oriented",
                  "--inputShape=x:1,3,48,192")
    target = next((ln for ln in res["summary"] if ln.startswith("target")), "")
    rows.append({"command": "the seed's Ascend line: --fmk=ONNX ... --optimize=ascend_oriented --inputShape=x:1,3,48,192",
                 "rc": res["rc"], "wall_s": res["wall_s"], "note": res["err"] if res["rc"] else target})
    return rows


def section_size(args, work: Path) -> list[dict]:
    rows = []
    cls = models.rapidocr_models()["cls"]
    calib = (HERE / "work" / "cls" / "calib").resolve()
    digits = ROOT / "examples" / "digits" / "digits_cnn.onnx"
    digits_cfg = work / "cfg" / "digits_full.cfg"
    digits_cfg.write_text((ROOT / "examples/configs/full_quant.cfg").read_text().replace(
        "examples/digits/bin", str(ROOT / "examples/digits/bin")))
    cases = [("classifier (KL, per_channel)", cls, cls_cfg(work / "cfg" / "cls_guard.cfg", calib, args.cls_calib, True,
                                                           True, guard=True), "x:1,3,48,192",
              {"x": np.zeros((1, 3, 48, 192), np.float32) + 0.1}),
             ("digits demo (MAX_MIN, per_channel)", digits, digits_cfg, "input:1,1,8,8",
              {"input": np.full((1, 1, 8, 8), 0.1, np.float32)})]
    for label, model, cfg, shape, feeds in cases:
        res = convert(model, cfg, work / "out" / f"guard_{model.stem}", "--inputDataFormat=NCHW",
                      f"--inputShape={shape}")
        row = {"model": label, "rc": res["rc"], "summary": res["summary"]}
        if res["rc"] == 0:
            row["size_ratio"] = harness.file_size(res["path"]) / harness.file_size(model)
            sessions = {"fp32": harness.make_session(model, threads=1), "ours": harness.make_session(res["path"], threads=1)}
            lat = harness.interleaved_latency_ms(sessions, feeds, rounds=args.lat_rounds, warmup=5, iters=args.lat_iters)
            row["fp32_ms"], row["ours_ms"] = lat["fp32"], lat["ours"]
            row["latency_ratio"] = lat["ours"] / lat["fp32"]
            row["layers"] = next((ln for ln in res["summary"] if ln.startswith("layers")), "")
        else:
            row["error"] = res["err"]
        rows.append(row)
        print(f"  {label}: size {row.get('size_ratio')}, latency {row.get('latency_ratio')}", flush=True)
    return rows


def render(cmd: str, env: dict, eq: list[dict], cmds: list[dict], size: list[dict], wall: float) -> str:
    out = ["# converter_lite parity, round two (issue 14)", "", f"`{cmd}`", "",
           f"Machine: {env['cpu']}, {env['cores']} cores, onnxruntime {env['packages']['onnxruntime']}; "
           f"git {env['git']}, {env['date']}; wall {wall:.0f} s.", "",
           "## 1. Per-layer weights with and without cross-layer equalization (KL, bias correction, guard off)", "",
           "| model | setting | top-1 accuracy | mean output cosine | CTC text = FP32 | equalization row |",
           "|---|---|---|---|---|---|"]
    for r in eq:
        eqrow = next((s for s in r.get("summary", []) if s.startswith("equalization")), "")
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else ""
        cos = f"{r['cos_mean']:.5f}" if "cos_mean" in r else ""
        text = f"{r['text_agree']:.3f}" if "text_agree" in r else ""
        out.append(f"| {r['model']} | {r['setting']}{' (error: ' + r['error'] + ')' if 'error' in r else ''} | {acc} | "
                   f"{cos} | {text} | {eqrow[len('equalization '):][:160]} |")
    out += [""] + [f"- {r['model']}: {r['paired']}" for r in eq if r.get("paired")]
    out += ["", "## 2. Command lines", "", "| command | exit | wall s | what it said |", "|---|---|---|---|"]
    for r in cmds:
        out.append(f"| {r['command']} | {r['rc']} | {r['wall_s']:.1f} | {r['note'][:200]} |")
    out += ["", "## 3. Latency-guarded FULL_QUANT: size and latency vs FP32 (batch 1, one thread, interleaved medians)",
            "", "| model | size / FP32 | FP32 ms | ours ms | latency / FP32 | layers |", "|---|---|---|---|---|---|"]
    for r in size:
        if "size_ratio" in r:
            out.append(f"| {r['model']} | {r['size_ratio']:.3f}x | {r['fp32_ms']:.3f} | {r['ours_ms']:.3f} | "
                       f"{r['latency_ratio']:.3f}x | {r['layers'][len('layers '):]} |")
        else:
            out.append(f"| {r['model']} | error: {r.get('error', '')[:200]} | | | | |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cls-calib", type=int, default=300)
    ap.add_argument("--cls-eval", type=int, default=1000)
    ap.add_argument("--rec-calib", type=int, default=32)
    ap.add_argument("--rec-eval", type=int, default=100)
    ap.add_argument("--lat-rounds", type=int, default=5)
    ap.add_argument("--lat-iters", type=int, default=40)
    args = ap.parse_args()
    if args.quick:
        args.cls_calib, args.cls_eval, args.rec_calib, args.rec_eval, args.lat_rounds = 50, 200, 8, 12, 3
    work = HERE / "work" / "parity"
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "cfg").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print("1. equalization ...", flush=True)
    eq = section_equalization(args, work)
    print("2. command lines ...", flush=True)
    cmds = section_commands(args, work)
    print("3. guarded size ...", flush=True)
    size = section_size(args, work)
    env = harness.environment(("onnxruntime",))
    md = render(" ".join([".venv-bench/bin/python", "benchmarks/bench_parity.py", *sys.argv[1:]]), env, eq, cmds, size,
                time.perf_counter() - t0)
    (HERE / "results" / "parity.md").write_text(md)
    (HERE / "results" / "parity.json").write_text(json.dumps({"env": env, "equalization": eq, "commands": cmds,
                                                              "size": size}, indent=1, default=str))
    print(md)


if __name__ == "__main__":
    main()
