"""Debug-report benchmark (debug_info_save_path): does the report name the broken nodes, and what does it cost?

    .venv-bench/bin/python benchmarks/bench_debug.py            # full run (100 OCR rounds)
    .venv-bench/bin/python benchmarks/bench_debug.py --quick    # 20 OCR rounds

1. Naive int8 fails: a detection-style head (``tests/debug_models.detection_head_model``, two levels,
   3x32x32 input): per level a box branch (~1e3) and a score branch (~1e-2) joined by Concat. One
   output scale per Concat rounds the scores to zero while the model's output cosine stays ~0.9998
   (the boxes dominate it). The report must rank the two Concats first; we then apply its proposed
   ``skip_quant_node`` line and measure the score channels' cosine vs FP32 before and after (64
   held-out inputs). 32 generated BIN calibration samples, latency_guard=false.
2. The OCR classifier (PP-OCR ``ch_ppocr_mobile_v2.0_cls_infer.onnx``, rapidocr-onnxruntime wheel),
   README's recommended setting (KL, per_channel=true), 100 calibration images: the report's top nodes,
   and the cost of debug: each conversion runs in a fresh process (``convert(..., use_flow=False)``,
   i.e. ``ptq convert --no-flow``), wall time and peak RSS (ru_maxrss) without debug, with debug at
   100 rounds, and with debug at 20 rounds (peak RSS must not grow with rounds); then the ranking is
   checked: its top 2 quantized nodes kept in FP32 vs its bottom 2 (control), output cosine and accuracy
   on the 1000 labelled evaluation images of ``ocr_cls_data.py``. The machine's 2
   cores were shared with other agents running at the same time: wall times are noisy.

Writes benchmarks/results/debug.md and debug.json, and a screenshot of the head's page (if chromium
is installed) to benchmarks/results/debug_page.png.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import shutil
import subprocess
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


def child(cfg: str, model: str, out: str, shape: str, flow: str = "") -> None:
    """One conversion in this (fresh) process; prints wall time and peak RSS as JSON."""
    from ptqflow.api import convert

    t0 = time.perf_counter()
    s = convert(model, cfg, out, input_shape=shape, use_flow=flow == "flow")
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    debug = getattr(s, "debug", None) or {}
    print("RESULT " + json.dumps({"wall_s": round(wall, 2), "peak_rss_mb": round(rss_mb, 1),
                                  "debug_s": debug.get("seconds"), "rounds": debug.get("rounds"),
                                  "top": debug.get("top", [])[:8], "skip_line": debug.get("skip_line"),
                                  "output_cosine": s.output_cosine, "output": str(s.output)}))


def run_child(cfg: Path, model: Path, out: Path, shape: str = "", flow: bool = False, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(cfg), str(model), str(out), shape,
                           "flow" if flow else ""], capture_output=True, text=True, cwd=ROOT, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"child failed: {proc.stderr[-2000:]}")
    return json.loads(line[len("RESULT "):])


def _cfg(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- detection head
def bench_head(work: Path) -> dict:
    import debug_models as dm
    import onnx

    from ptq_core.debug.stats import cosine

    folder = work / "head"
    if folder.exists():
        shutil.rmtree(folder)
    model = folder / "head.onnx"
    folder.mkdir(parents=True)
    onnx.save(dm.detection_head_model(levels=2, size=HEAD_SIZE), str(model))
    calib = dm.write_bins(folder / "calib", (1, 3, HEAD_SIZE, HEAD_SIZE), 32, seed=1)
    cfg = dm.full_quant_config(folder / "head.cfg", "x", calib, 32, folder / "debug")
    naive = run_child(cfg, model, folder / "head_int8")
    skip = naive["skip_line"]
    fixed_cfg = folder / "head_fixed.cfg"
    fixed_cfg.write_text(cfg.read_text().replace("[common_quant_param]\n", f"[common_quant_param]\n{skip}\n", 1)
                         .replace(str(folder / "debug"), str(folder / "debug_fixed")))
    fixed = run_child(fixed_cfg, model, folder / "head_fixed") if skip else None

    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(0, 1, (1, 3, HEAD_SIZE, HEAD_SIZE)).astype(np.float32)} for _ in range(64)]
    ref = harness.make_session(model, threads=1)

    def channel_cos(path: str) -> dict:
        sess = harness.make_session(path, threads=1)
        box, score, whole = [], [], []
        for f in feeds:
            for a, b in zip(ref.run(None, f), sess.run(None, f)):
                box.append(cosine(a[:, :4], b[:, :4]))
                score.append(cosine(a[:, 4:], b[:, 4:]))
                whole.append(cosine(a, b))
        return {"output": float(np.mean(whole)), "box": float(np.mean(box)), "score": float(np.mean(score))}

    result = {"naive": naive, "naive_eval": channel_cos(naive["output"]), "skip_line": skip}
    if fixed:
        result["fixed"] = fixed
        result["fixed_eval"] = channel_cos(fixed["output"])
    result["page"] = screenshot(folder / "debug" / "debug_report.html", HERE / "results" / "debug_page.png")
    return result


def screenshot(page: Path, png: Path) -> str | None:
    chromium = shutil.which("chromium")
    if chromium is None or not page.exists():
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,900", page.as_uri()],
                       capture_output=True, timeout=120)
    return str(png.relative_to(ROOT)) if png.exists() else None


# --------------------------------------------------------------------------- OCR classifier
def bench_cls(args, work: Path) -> dict:
    import models
    import ocr_cls_data

    root = Path(args.cls_root)
    ocr_cls_data.build(root, n_calib=max(args.rounds, 1000), n_eval=1000, seed=0)
    fp32 = models.rapidocr_models()["cls"]
    folder = work / "cls"
    calib_dir = (root / "calib").resolve()

    def cfg(name: str, rounds: int, debug: Path | None) -> Path:
        common = ["[common_quant_param]", "quant_type=FULL_QUANT", "bit_num=8"]
        if debug is not None:
            common.append(f"debug_info_save_path={debug}")
        return _cfg(folder / f"{name}.cfg", common + [
            "[data_preprocess_param]", f"calibrate_path=x:{calib_dir}", f"calibrate_size={rounds}", "input_type=IMAGE",
            "image_to_format=BGR", "normalize_mean=[127.5,127.5,127.5]", "normalize_std=[127.5,127.5,127.5]",
            "[full_quant_param]", "activation_quant_method=KL", "per_channel=true", "bias_correction=true"])

    few = max(2, args.rounds // 5)
    runs = {}
    runs["without debug"] = run_child(cfg("nodebug", args.rounds, None), fp32, folder / "out_nodebug", CLS_SHAPE)
    runs[f"debug, {args.rounds} rounds"] = run_child(cfg("debug", args.rounds, folder / "debug"), fp32,
                                                     folder / "out_debug", CLS_SHAPE)
    runs[f"debug, {few} rounds"] = run_child(cfg("debug_few", few, folder / "debug_few"), fp32,
                                             folder / "out_debug_few", CLS_SHAPE)
    report_bytes = sum(p.stat().st_size for p in (folder / "debug").rglob("*") if p.is_file())

    # does the ranking point at the right nodes? keep its top 2 in FP32, vs its bottom 2 (a control)
    from ptq_core.debug.rank import rank_nodes
    from ptq_core.debug.stats import cosine

    ranked = [d for d in rank_nodes(folder / "debug") if d.quantized]
    x, y = ocr_cls_data.load_eval(root)
    x, y = x[:args.eval], y[:args.eval]
    ref = harness.make_session(fp32, threads=None)
    ref_prob = np.concatenate([ref.run(None, {"x": x[i:i + 50]})[0] for i in range(0, len(x), 50)])
    checks = {"all int8": (None, folder / "out_nodebug.onnx")}
    for name, nodes in (("top 2 of the ranking in FP32", ranked[:2]), ("bottom 2 of the ranking in FP32", ranked[-2:])):
        line = "skip_quant_node=" + ",".join(d.node for d in nodes)
        c = cfg(name.split()[0], args.rounds, None)
        c.write_text(c.read_text().replace("bit_num=8\n", f"bit_num=8\n{line}\n", 1))
        out = folder / f"out_{name.split()[0]}"
        run_child(c, fp32, out, CLS_SHAPE)
        checks[name] = (line, out.with_suffix(".onnx"))
    evals = {}
    for name, (line, path) in checks.items():
        sess = harness.make_session(path, threads=None)
        prob = np.concatenate([sess.run(None, {"x": x[i:i + 50]})[0] for i in range(0, len(x), 50)])
        evals[name] = {"skip_line": line, "eval_cosine": float(np.mean([cosine(a, b) for a, b in zip(ref_prob, prob)])),
                       "acc": float((prob.argmax(1) == y).mean()),
                       "flips_vs_fp32": int((prob.argmax(1) != ref_prob.argmax(1)).sum())}
    evals["fp32"] = {"acc": float((ref_prob.argmax(1) == y).mean())}
    return {"rounds": args.rounds, "few": few, "runs": runs, "report_bytes": report_bytes, "checks": evals,
            "n_eval": int(len(y))}


def flow_cost(args, argv) -> int:
    """Debug cost on the flow path: the OCR classifier converted by the quantize flow (temporary Prefect server,
    statistics and debug rounds on a local Dask cluster), without and with debug, each in a fresh process with
    its own empty PTQFLOW_HOME (nothing cached between the two). Writes results/debug_flow_cost.md/.json."""
    import os
    import tempfile

    import models
    import ocr_cls_data

    root = Path(args.cls_root)
    ocr_cls_data.build(root, n_calib=max(args.rounds, 1000), n_eval=1000, seed=0)
    fp32 = models.rapidocr_models()["cls"]
    folder = HERE / "work" / "debug" / "flow"
    calib_dir = (root / "calib").resolve()
    t0 = time.perf_counter()
    runs = {}
    for name, debug in (("without debug", None), (f"debug, {args.rounds} rounds", folder / "debug")):
        common = ["[common_quant_param]", "quant_type=FULL_QUANT", "bit_num=8"]
        if debug is not None:
            common.append(f"debug_info_save_path={debug}")
        cfg = _cfg(folder / f"{'debug' if debug else 'nodebug'}.cfg", common + [
            "[data_preprocess_param]", f"calibrate_path=x:{calib_dir}", f"calibrate_size={args.rounds}",
            "input_type=IMAGE", "image_to_format=BGR", "normalize_mean=[127.5,127.5,127.5]",
            "normalize_std=[127.5,127.5,127.5]", "[full_quant_param]", "activation_quant_method=KL",
            "per_channel=true", "bias_correction=true"])
        with tempfile.TemporaryDirectory(prefix="ptq-bench-home-") as home:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PTQFLOW_HOME=home, PREFECT_HOME=str(Path(home) / "prefect"))
            runs[name] = run_child(cfg, fp32, folder / f"out_{'debug' if debug else 'nodebug'}", CLS_SHAPE,
                                   flow=True, env=env)
    env_info = harness.environment(("onnx", "onnxruntime", "prefect", "dask", "distributed", "ptqflow"))
    cmd = ".venv-bench/bin/python benchmarks/bench_debug.py " + shlex.join(argv)
    base, dbg = runs["without debug"], runs[f"debug, {args.rounds} rounds"]
    lines = ["# Debug cost on the flow path", "", "```", cmd, "```", "",
             f"{env_info['date']} · git {env_info['git']} · {env_info['cpu']} ({env_info['cores']} cores) · "
             + ", ".join(f"{k} {v}" for k, v in env_info["packages"].items() if v)
             + f" · total wall {time.perf_counter() - t0:.0f} s", "",
             f"OCR text-direction classifier, KL per-channel, {args.rounds} calibration images; each row is one "
             "`convert(..., use_flow=True)` in a fresh process with an empty PTQFLOW_HOME: Prefect's temporary server "
             "starts, statistics, bias correction and debug rounds run on a local Dask cluster (2 worker processes). "
             "Peak RSS is the main process only (the workers are separate processes).", "",
             "| run | wall s | × without | of which debug s | main-process peak RSS MB |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['wall_s'] / base['wall_s']:.2f} | "
                     f"{r['debug_s'] if r['debug_s'] is not None else '-'} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Debug added {dbg['wall_s'] - base['wall_s']:.1f} s of wall time "
              f"({(dbg['wall_s'] - base['wall_s']) / args.rounds:.2f} s per round)."]
    out = HERE / "results" / "debug_flow_cost"
    out.with_suffix(".json").write_text(json.dumps({"env": env_info, "runs": runs, "rounds": args.rounds}, indent=1,
                                                   default=str))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------- report
def render(cmd: str, env: dict, head: dict, cls: dict | None, wall: float) -> str:
    L = ["# Debug-report benchmark", "", "```", cmd, "```", "",
         f"{env['date']} · git {env['git']} · {env['cpu']} ({env['cores']} cores, shared with other agents "
         "running at the same time: wall times are noisy) · Python " + env["python"] + " · "
         + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + f" · total wall {wall:.0f} s", ""]
    n, ne = head["naive"], head["naive_eval"]
    L += ["## A model where naive int8 fails: detection head (Concat of ~1e3 boxes and ~1e-2 scores, 2 levels)", "",
          "Ranking from the debug report (32 calibration rounds), top 5:", "",
          "| # | node | op | score | output cosine | cosine drop | range bits | why |", "|---|---|---|---|---|---|---|---|"]
    for i, d in enumerate(n["top"][:5], start=1):
        L.append(f"| {i} | {d['node']} | {d['op']} | {d['score']:.4f} | {d['output_cosine']:.6f} | "
                 f"{d['cosine_drop']:.6f} | {d['range_bits']:.1f} | {d['reason']} |")
    L += ["", f"Proposed line: `{head['skip_line']}`", "",
          "Cosine vs FP32 on 64 held-out inputs (mean over both outputs):", "",
          "| model | whole output | box channels | score channels |", "|---|---|---|---|",
          f"| all int8 (naive) | {ne['output']:.6f} | {ne['box']:.6f} | {ne['score']:.6f} |"]
    if "fixed_eval" in head:
        fe = head["fixed_eval"]
        L.append(f"| with the proposed skip_quant_node | {fe['output']:.6f} | {fe['box']:.6f} | {fe['score']:.6f} |")
    if head.get("page"):
        L += ["", f"Page screenshot: `{head['page']}`"]
    if cls:
        runs = cls["runs"]
        base = runs["without debug"]
        L += ["", f"## OCR text-direction classifier, KL per-channel, {cls['rounds']} calibration rounds", "",
              "Each row: one `convert(..., use_flow=False)` in a fresh process (statistics and debug rounds serial).", "",
              "| run | wall s | × without | of which debug s | peak RSS MB | × without |", "|---|---|---|---|---|---|"]
        for name, r in runs.items():
            L.append(f"| {name} | {r['wall_s']:.1f} | {r['wall_s'] / base['wall_s']:.2f} | "
                     f"{r['debug_s'] if r['debug_s'] is not None else '-'} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
        top = runs[f"debug, {cls['rounds']} rounds"]["top"][:5]
        L += ["", f"Reports for {cls['rounds']} rounds: {cls['report_bytes'] / 2**20:.1f} MiB on disk (CSV + Parquet + page). "
              "Top of the ranking:", "", "| # | node | op | int8 | score | output cosine | cosine drop | clip | why |",
              "|---|---|---|---|---|---|---|---|---|"]
        for i, d in enumerate(top, start=1):
            L.append(f"| {i} | {d['node']} | {d['op']} | {'yes' if d['quantized'] else 'no'} | {d['score']:.4f} | "
                     f"{d['output_cosine']:.6f} | "
                     f"{d['cosine_drop']:.6f} | {100 * d['clip']:.2f}% | {d['reason']} |")
        skip = runs[f"debug, {cls['rounds']} rounds"]["skip_line"]
        L += ["", f"Proposed line: `{skip}`" if skip else "No node reaches the proposal threshold (score 0.01).",
              "", f"Check of the ranking on {cls['n_eval']} labelled evaluation images (FP32 accuracy "
              f"{cls['checks']['fp32']['acc']:.3f}): the top 2 quantized nodes of the ranking kept in FP32, against the "
              "bottom 2 as a control.", "",
              "| model | skip_quant_node | output cosine vs FP32 | accuracy | predictions differing from FP32 |",
              "|---|---|---|---|---|"]
        for name, c in cls["checks"].items():
            if name == "fp32":
                continue
            line = c["skip_line"].split("=", 1)[1] if c["skip_line"] else "-"
            L.append(f"| {name} | {line} | {c['eval_cosine']:.6f} | {c['acc']:.3f} | {c['flips_vs_fp32']} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child(*argv[1:6])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 OCR rounds")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--skip-cls", action="store_true")
    p.add_argument("--eval", type=int, default=1000, help="OCR evaluation images for the ranking check")
    p.add_argument("--cls-root", default=str(HERE / "work" / "cls"))
    p.add_argument("--out", default=str(HERE / "results" / "debug"))
    p.add_argument("--flow-cost", action="store_true",
                   help="only measure the debug step's cost on the flow path (Prefect + local Dask cluster)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 20
    if args.flow_cost:
        return flow_cost(args, argv)
    t0 = time.perf_counter()
    work = HERE / "work" / "debug"
    head = bench_head(work)
    cls = None if args.skip_cls else bench_cls(args, work)
    env = harness.environment(("onnx", "onnxruntime", "pyarrow", "rapidocr-onnxruntime", "numpy", "ptqflow"))
    cmd = ".venv-bench/bin/python benchmarks/bench_debug.py" + ("" if not argv else " " + shlex.join(argv))
    wall = time.perf_counter() - t0
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "head": head, "cls": cls}, indent=1, default=str))
    out.with_suffix(".md").write_text(render(cmd, env, head, cls, wall))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
