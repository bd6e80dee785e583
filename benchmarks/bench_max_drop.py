"""``--max-drop`` benchmark: what the keep-FP32 loop buys and what it costs, on two models.

    .venv-bench/bin/python benchmarks/bench_max_drop.py            # full run
    .venv-bench/bin/python benchmarks/bench_max_drop.py --quick    # fewer images, fewer timing rounds

Models
  * A detection-style head where naive int8 fails (``tests/modelgen.detection_head_model``, 3x32x32
    input): three conv branches whose outputs span ~1e3, ~1 and ~1e-3 meet in one Concat and are split
    into three outputs; one per-tensor scale at the Concat rounds the two small parts away. 64 generated
    BIN calibration samples, 64 held-out generated inputs for the evaluation cosine. latency_guard=false
    (at this size int8 never pays, and the guard would keep every node FP32).
  * PP-OCR text-direction classifier ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (rapidocr-onnxruntime
    wheel) with the README's recommended setting (KL, per_channel=true, latency guard on; and again with
    the guard off, where every convolution starts in int8), calibrated
    on the first ``--calib`` images of ``benchmarks/work/cls/calib`` and scored on the 1000-image
    labelled set of ``ocr_cls_data.py`` (accuracy, and output cosine vs FP32).

Each model is converted without and with ``max_drop`` (``ptqflow.api.convert(..., use_flow=False)``,
the same steps as ``ptq convert --no-flow --max-drop X``); the without-run of the head also writes
the debug reports (``debug_info_save_path``) to show which nodes they rank first. Latency: batch 1,
one thread, FP32 / without / with measured round-robin in one process (2 shared cores: other agents
ran on the machine at the same time, so treat latency differences under ~5 % as noise).

Writes benchmarks/results/max_drop.md and max_drop.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

import harness  # noqa: E402
import numpy as np  # noqa: E402

CLS_SHAPE = "x:1,3,48,192"
HEAD_SIZE = 32


def _mean_cosine(ref_sess, cand_sess, feeds_list) -> float:
    from ptq_core.onnxgraph.session import output_cosine

    return float(np.mean([output_cosine(ref_sess.run(None, f), cand_sess.run(None, f)) for f in feeds_list]))


def _row(summary, path: Path) -> dict:
    md = summary.max_drop.to_dict() if summary.max_drop else {}
    return {
        "output": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "size_bytes": harness.file_size(path),
        "max_drop": md or None,
        "debug_top": [{k: d.get(k) for k in ("node", "op", "score", "output_cosine", "cosine_drop", "range_bits")}
                      for d in (getattr(summary, "debug", None) or {}).get("top", [])[:5]] or None,
        "wall_s": round(summary.wall_time_s, 2),
        "timings": summary.timings,
    }


def _write_cfg(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def _latency(paths: dict[str, Path], feeds: dict, args) -> dict[str, float]:
    sessions = {k: harness.make_session(p, threads=1) for k, p in paths.items()}
    return harness.interleaved_latency_ms(sessions, feeds, rounds=args.lat_rounds, warmup=5, iters=args.lat_iters)


# --------------------------------------------------------------------------- detection head
def bench_head(args, work: Path) -> dict:
    import onnx
    from modelgen import detection_head_model

    from ptqflow.api import convert

    folder = work / "head"
    calib = folder / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    shape = (1, 3, HEAD_SIZE, HEAD_SIZE)
    for i in range(64):
        (calib / f"{i:03d}.bin").write_bytes(rng.normal(0, 1, shape).astype(np.float32).tobytes())
    model = folder / "head.onnx"
    onnx.save(detection_head_model(size=HEAD_SIZE), str(model))
    base = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
            f"debug_info_save_path={folder / 'debug'}\n"
            f"[data_preprocess_param]\ncalibrate_path=x:{calib}\ncalibrate_size=64\ninput_type=BIN\n"
            "[ptqflow]\nlatency_guard=false\n")
    cfg = _write_cfg(folder / "head.cfg", base)
    out = {}
    t0 = time.perf_counter()
    naive = convert(model, cfg, folder / "out" / "head_int8", use_flow=False)
    out["without"] = _row(naive, Path(naive.output))
    plain_cfg = _write_cfg(folder / "head_nodebug.cfg", base.replace(f"debug_info_save_path={folder / 'debug'}\n", ""))
    kept = convert(model, plain_cfg, folder / "out" / "head_maxdrop", use_flow=False, max_drop=args.head_bound)
    out["with"] = _row(kept, Path(kept.output))
    out["convert_s"] = round(time.perf_counter() - t0, 2)

    eval_rng = np.random.default_rng(2)
    feeds = [{"x": eval_rng.normal(0, 1, shape).astype(np.float32)} for _ in range(64)]
    ref = harness.make_session(model, threads=1)
    for key in ("without", "with"):
        out[key]["eval_cosine"] = _mean_cosine(ref, harness.make_session(ROOT / out[key]["output"], threads=1), feeds)
    lat = _latency({"fp32": model, "without": ROOT / out["without"]["output"], "with": ROOT / out["with"]["output"]},
                   feeds[0], args)
    out["latency_ms"] = lat
    out["fp32_size_bytes"] = harness.file_size(model)
    out["bound"] = args.head_bound
    return out


# --------------------------------------------------------------------------- OCR classifier
def bench_cls(args, work: Path) -> dict:
    import models
    import ocr_cls_data

    from ptqflow.api import convert

    root = Path(args.cls_root)
    ocr_cls_data.build(root, n_calib=max(args.calib, 1000), n_eval=1000, seed=0)
    x, y = ocr_cls_data.load_eval(root)
    if args.quick:
        x, y = x[:300], y[:300]
    fp32 = models.rapidocr_models()["cls"]
    folder = work / "cls"
    calib_dir = (root / "calib").resolve()
    cfg = _write_cfg(folder / "cls_kl_pc.cfg", "\n".join([
        "[common_quant_param]", "quant_type=FULL_QUANT", "bit_num=8", "",
        "[data_preprocess_param]", f"calibrate_path=x:{calib_dir}", f"calibrate_size={args.calib}", "input_type=IMAGE",
        "image_to_format=BGR", "normalize_mean=[127.5,127.5,127.5]", "normalize_std=[127.5,127.5,127.5]", "",
        "[full_quant_param]", "activation_quant_method=KL", "per_channel=true", "bias_correction=true", ""]) + "\n")
    # the latency guard keeps most convolutions FP32 on this CPU; with it off every convolution starts int8
    cfg_off = _write_cfg(folder / "cls_kl_pc_noguard.cfg", cfg.read_text() + "[ptqflow]\nlatency_guard=false\n")
    runs = {}
    t0 = time.perf_counter()
    for guard, conf, bounds in (("on", cfg, args.cls_bounds), ("off", cfg_off, args.cls_bounds_noguard)):
        if guard == "off" and not bounds:
            continue
        naive = convert(fp32, conf, folder / "out" / f"cls_int8_guard{guard}", input_shape=CLS_SHAPE, use_flow=False)
        runs[f"guard {guard}, int8, no max_drop"] = _row(naive, Path(naive.output))
        for bound in bounds:
            s = convert(fp32, conf, folder / "out" / f"cls_maxdrop_{bound:g}_guard{guard}", input_shape=CLS_SHAPE,
                        use_flow=False, max_drop=bound)
            runs[f"guard {guard}, int8, max_drop={bound:g}"] = _row(s, Path(s.output))
    convert_s = round(time.perf_counter() - t0, 2)

    ref = harness.make_session(fp32, threads=None)
    ref_prob = np.concatenate([ref.run(None, {"x": x[i:i + 50]})[0] for i in range(0, len(x), 50)])
    fp32_acc = float((ref_prob.argmax(1) == y).mean())
    from ptq_core.debug.stats import cosine

    for r in runs.values():
        sess = harness.make_session(ROOT / r["output"], threads=None)
        prob = np.concatenate([sess.run(None, {"x": x[i:i + 50]})[0] for i in range(0, len(x), 50)])
        r["acc"] = float((prob.argmax(1) == y).mean())
        r["delta_pts"] = 100 * (r["acc"] - fp32_acc)
        r["eval_cosine"] = float(np.mean([cosine(a, b) for a, b in zip(ref_prob, prob)]))
        r["flips_vs_fp32"] = int((prob.argmax(1) != ref_prob.argmax(1)).sum())
    lat = _latency({"fp32": fp32, **{k: ROOT / r["output"] for k, r in runs.items()}},
                   {"x": np.ascontiguousarray(x[:1])}, args)
    return {"fp32_acc": fp32_acc, "fp32_size_bytes": harness.file_size(fp32), "n_eval": int(len(y)),
            "n_calib": args.calib, "runs": runs, "latency_ms": lat, "convert_s": convert_s}


# --------------------------------------------------------------------------- report
def _kb(n) -> str:
    return f"{n / 1024:,.1f}"


def _md_row(name: str, r: dict, lat: float, fp32_lat: float, extra: list[str]) -> str:
    md = r["max_drop"]
    kept = "-" if not md else (", ".join(md["kept"]) if len(md["kept"]) <= 6 else
                               ", ".join(md["kept"][:6]) + f" +{len(md['kept']) - 6}")
    frac = "100.0 (no loop)" if not md else f"{100 * md['int8_weight_fraction']:.1f}"
    calib = "-" if not md else f"{md['cosine_before']:.6f} → {md['cosine_after']:.6f}"
    return "| " + " | ".join([name, *extra, calib, kept, frac, _kb(r["size_bytes"]), f"{lat:.3f}",
                              f"{lat / fp32_lat:.2f}", f"{r['wall_s']:.1f}"]) + " |"


def render(cmd: str, env: dict, head: dict | None, cls: dict | None, wall: float) -> str:
    L = ["# --max-drop benchmark", "", "```", cmd, "```", "",
         f"{env['date']} · git {env['git']} · {env['cpu']} ({env['cores']} cores, shared with other agents "
         "running at the same time) · Python " + env["python"] + " · "
         + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + f" · total wall {wall:.0f} s", "",
         "`max_drop` bounds 1 − mean output cosine vs FP32 over the calibration set. *calib cosine* is the loop's "
         "own figure (all-int8 model → chosen model, every calibration round); *eval* figures are on held-out "
         "inputs. *% int8 weights*: parameters of the quantizable weights (those int8 without the loop; with the "
         "latency guard on, the convolutions it keeps FP32 are not counted) that are still int8. Latency: batch 1, one thread, median of interleaved rounds. *convert s*: wall "
         "time of the whole `convert(..., use_flow=False)` (statistics, latency guard, the loop's builds and "
         "evaluations).", ""]
    if head:
        w, k = head["without"], head["with"]
        lat = head["latency_ms"]
        md = k["max_drop"]
        L += ["## Detection-style head (Concat of ~1e3, ~1 and ~1e-3 branches)", "",
              f"Bound `max_drop={head['bound']:g}`; 64 generated calibration samples, 64 held-out inputs. "
              f"FP32 {_kb(head['fp32_size_bytes'])} KiB, {lat['fp32']:.3f} ms. The run without the loop also "
              "writes the debug reports (in its convert time). Latencies of a 7 KiB model on a loaded 2-core "
              "machine are noise.", "",
              "| model | eval cosine | calib cosine | kept FP32 | % int8 weights | KiB | ms | × FP32 | convert s |",
              "|---|---|---|---|---|---|---|---|---|",
              _md_row("int8, no max_drop", w, lat["without"], lat["fp32"], [f"{w['eval_cosine']:.6f}"]),
              _md_row(f"int8, max_drop={head['bound']:g}", k, lat["with"], lat["fp32"], [f"{k['eval_cosine']:.6f}"]),
              ""]
        if md:
            L += ["The loop's damage ranking (first 8 calibration rounds; own damage = 1 − cosine minus the worst "
                  "input's):", "", "| rank | node | op | output cosine in int8 model | own damage |", "|---|---|---|---|---|"]
            L += [f"| {i} | {d['node']} | {d['op_type']} | {d['cosine']:.4f} | {d['own']:.4g} |"
                  for i, d in enumerate(md["ranking"][:5], start=1)]
            L += ["", "Steps tried (action: calibration drop): "
                  + ", ".join(f"{s['action']}: {s['drop']:.3g}" for s in md["steps"]), ""]
        if w.get("debug_top"):
            L += ["Debug reports of the model without the loop (`debug_info_save_path`, ptq_core.debug.rank), first "
                  "nodes:", "", "| rank | node | op | score | output cosine | cosine drop | range bits |",
                  "|---|---|---|---|---|---|---|"]
            L += [f"| {i} | {d['node']} | {d['op']} | {d['score']} | {d['output_cosine']} | {d['cosine_drop']} | "
                  f"{d['range_bits']} |" for i, d in enumerate(w["debug_top"], start=1)]
            L += [""]
    if cls:
        lat = cls["latency_ms"]
        L += ["## PP-OCR text-direction classifier (KL, per_channel=true; latency guard on, then off)", "",
              f"{cls['n_calib']} calibration images, {cls['n_eval']} evaluation images; FP32 accuracy "
              f"{cls['fp32_acc']:.3f}, {_kb(cls['fp32_size_bytes'])} KiB, {lat['fp32']:.3f} ms.", "",
              "| model | acc | Δ pts | flips vs FP32 | eval cosine | calib cosine | kept FP32 | % int8 weights | KiB | ms "
              "| × FP32 | convert s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in cls["runs"].items():
            L.append(_md_row(name, r, lat[name], lat["fp32"],
                             [f"{r['acc']:.3f}", f"{r['delta_pts']:+.1f}", str(r["flips_vs_fp32"]),
                              f"{r['eval_cosine']:.6f}"]))
        L += [""]
        for name, r in cls["runs"].items():
            md = r["max_drop"]
            if md and md["ranking"]:
                L += [f"`{name}`: damage ranking top 5: " + ", ".join(
                    f"{d['node']} ({d['op_type']}, cos {d['cosine']:.4f}, own {d['own']:.2g})" for d in md["ranking"][:5])
                    + "; steps (action: calibration drop): "
                    + ", ".join(f"{s['action']}: {s['drop']:.3g}" for s in md["steps"])
                    + (f"; notes: {' '.join(md['notes'])}" if md["notes"] else ""), ""]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="300 eval images, fewer latency rounds")
    p.add_argument("--head-bound", type=float, default=0.01)
    p.add_argument("--cls-bounds", type=lambda s: [float(v) for v in s.split(",")], default=[1e-3, 1e-4])
    p.add_argument("--cls-bounds-noguard", type=lambda s: [float(v) for v in s.split(",") if v], default=[1e-3],
                   help="bounds for the runs with latency_guard=false ('' to skip them)")
    p.add_argument("--calib", type=int, default=200, help="OCR calibration images (default 200)")
    p.add_argument("--cls-root", default=str(HERE / "work" / "cls"))
    p.add_argument("--skip-cls", action="store_true")
    p.add_argument("--lat-rounds", type=int, default=5)
    p.add_argument("--lat-iters", type=int, default=40)
    p.add_argument("--out", default=str(HERE / "results" / "max_drop"))
    args = p.parse_args(argv)
    if args.quick:
        args.lat_rounds, args.lat_iters = 3, 20
    cmd = ".venv-bench/bin/python benchmarks/bench_max_drop.py" + (" " + shlex.join(argv if argv is not None
                                                                                      else sys.argv[1:])).rstrip()
    work = HERE / "work" / "max_drop"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    head = bench_head(args, work)
    print(json.dumps({k: head[k] for k in ("bound", "latency_ms")}), flush=True)
    cls = None if args.skip_cls else bench_cls(args, work)
    wall = time.perf_counter() - t0
    env = harness.environment(("onnx", "onnxruntime", "rapidocr-onnxruntime", "numpy", "ptqflow"))
    text = render(cmd, env, head, cls, wall)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "environment": env, "head": head, "cls": cls,
                                                    "wall_s": wall}, indent=1, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
