"""DYNAMIC_QUANT benchmark: ptqflow's dynamic ALWC / ACWL vs FP32, ptqflow 8-bit weight quant and
ONNX Runtime's ``quantize_dynamic``, all in one run.

    .venv-bench/bin/python benchmarks/bench_dynamic_quant.py            # full run (~4-6 min on 2 cores)
    .venv-bench/bin/python benchmarks/bench_dynamic_quant.py --quick    # smoke run

all-MiniLM-L6-v2 (exported by ``models.export_minilm``, as the weight-quant benchmark does) in the seed's
tinybert table layout: model size, RAM (peak RSS of a fresh process that loads the model and runs 100
inferences at batch 1, sequence 128, one thread), latency (batch 1, sequence 128, one and two threads),
cosine of the mean-pooled embedding vs FP32 on >= 200 real sentences (``pydoc_data.topics``),
compression ratio, memory and latency vs FP32. Then the issue's targets, pass/fail.

PP-OCR text-direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``, a convolution net) on the
labelled evaluation set of ``ocr_cls_data.py``: accuracy and latency under ptqflow's dynamic mode
(convolutions stay FP32) and under ORT's ``quantize_dynamic`` (ConvInteger).

ORT profiler (batch 1, one thread), mean kernel time per op type, for the main rows of both models.

ptqflow conversions run in a child process each (``bench_weight_quant.run_ours``); a failed conversion
reads "error" in its row and the rest still runs.

Writes benchmarks/results/dynamic_quant.md (command line on top) and dynamic_quant.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_weight_quant as bwq  # noqa: E402
import harness  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

CLS_SHAPE = "x:1,3,48,192"
MINILM_SHAPE = bwq.MINILM_SHAPE

# Targets (issue). Ratios vs the FP32 row of the same run; latency = batch 1, seq 128, one thread.
ALWC_T = {"lat_ratio": 0.5, "size_ratio": 0.27, "ram_ratio": 0.6, "cos_mean": 0.995}
ACWL_LAT = 0.7
# "Convolution nets must not collapse", made measurable here: accuracy within 1 point of FP32 and no
# slowdown beyond the latency noise (<= 1.10x FP32 at one thread).
CLS_ACC_DROP_PTS = 1.0
CLS_LAT_MAX = 1.10

# ORT kernels (after its graph optimizations) that show which arithmetic runs.
INT_KERNELS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger", "ConvInteger",
               "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv", "QGemm")
FLOAT_KERNELS = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Conv", "FusedConv", "Attention")


# --------------------------------------------------------------------------- configs
def write_dyn_cfg(path: Path, strategy: str, rotation: int | None = None) -> Path:
    """A DYNAMIC_QUANT config; ``rotation`` sets ``[ptqflow] rotation_block`` (None: the default, 16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = "" if rotation is None else f"\n[ptqflow]\nrotation_block={rotation}\n"
    path.write_text("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n\n"
                    f"[dynamic_quant_param]\nquant_strategy={strategy}\n" + extra)
    return path


def _row(model: str, method: str, group: str, path=None, **kw) -> dict:
    r = {"model": model, "method": method, "group": group, "path": str(path) if path else None,
         "status": "ok", "notes": ""}
    r.update(kw)
    return r


def convert_ours(model_name: str, label: str, tag: str, src: Path, cfg: Path, out: Path, shape: str,
                 args) -> dict:
    """One ptqflow conversion in a child process -> a row (ok / not available / error)."""
    work = Path(args.workdir)
    print(f"  ptqflow {model_name} {tag} ...", flush=True)
    res = bwq.run_ours(src, cfg, out, shape, args.ours_timeout, work / "logs")
    if res.get("ok"):
        return _row(model_name, label, "ours", Path(res["output_path"]), tag=tag, quant_s=res["quant_s"],
                    cfg=str(cfg), info=_slim_info(res.get("info", {})))
    err = res.get("error", "?")
    if "not yet supported" in err:  # convert() refuses DYNAMIC_QUANT (yet): the row reads "not available"
        return _row(model_name, label, "ours", tag=tag, status="not available", cfg=str(cfg), error=err,
                    notes="ptqflow.api.convert: quant_type=DYNAMIC_QUANT is not yet supported")
    return _row(model_name, label, "ours", tag=tag, status="error", notes=err.splitlines()[0][:300], cfg=str(cfg),
                error=err, traceback=res.get("traceback"))


def _slim_info(info: dict) -> dict:
    out = {k: v for k, v in info.items() if k != "layers"}
    layers = info.get("layers")
    if isinstance(layers, list):
        out["n_layers"] = len(layers)
        out["n_quantized"] = sum(1 for r in layers if isinstance(r, dict) and r.get("status") == "quantized")
        out["layers"] = [{k: r.get(k) for k in ("name", "op_type", "status", "granularity", "reason", "weight_cosine")}
                         for r in layers if isinstance(r, dict)]
    return out


def ort_dynamic(src: Path, dst: Path, per_channel: bool, pre_process: bool = False) -> Path:
    """onnxruntime.quantization.quantize_dynamic (int8 weights), optionally after quant_pre_process."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-dq-") as tmp:
        model_in = str(src)
        if pre_process:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_in = str(Path(tmp) / "pre.onnx")
            # symbolic shape inference asserts on the classifier's Concat; ORT's optimizer still runs
            quant_pre_process(str(src), model_in, skip_symbolic_shape=True)
        quantize_dynamic(model_in, str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    return dst


def add_ort(rows: list, model_name: str, label: str, fn, *a) -> None:
    print(f"  {label} ...", flush=True)
    t0 = time.perf_counter()
    try:
        p = fn(*a)
        rows.append(_row(model_name, label, "ort", p, quant_s=time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001
        rows.append(_row(model_name, label, "ort", status="error", notes=f"{type(e).__name__}: {str(e)[:200]}"))


# --------------------------------------------------------------------------- measurements
_RSS_SNIPPET = r"""
import json, sys
import numpy as np
import onnxruntime as ort

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # kB -> MiB
    return float("nan")

ort.set_default_logger_severity(3)
feeds = dict(np.load(sys.argv[2]))
n = int(sys.argv[3])
out = {"base_rss_mb": status("VmRSS"), "base_hwm_mb": status("VmHWM")}
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL; so.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
out["load_hwm_mb"] = status("VmHWM")
for _ in range(n):
    s.run(None, feeds)
out["peak_mb"] = status("VmHWM")
out["end_rss_mb"] = status("VmRSS")
print(json.dumps(out))
"""


def rss_run(path: str, feeds_npz: Path, n: int, repeats: int) -> dict:
    """Peak RSS (VmHWM) of a fresh python: import onnxruntime, load feeds, create the session (1 thread),
    run n inferences. Median over `repeats` processes. VmHWM is per process (not inherited over exec)."""
    runs = []
    for _ in range(repeats):
        p = subprocess.run([sys.executable, "-c", _RSS_SNIPPET, str(path), str(feeds_npz), str(n)],
                           capture_output=True, text=True, check=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def kernels(path: str) -> dict:
    """Op types of ORT's optimized graph (CPU EP, extended level), integer and float compute only."""
    try:
        from ptq_core.modes.full.audit import fused_ops

        c = fused_ops(Path(path).read_bytes())
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)[:200]}
    return {"int": {k: c[k] for k in INT_KERNELS if c.get(k)}, "float": {k: c[k] for k in FLOAT_KERNELS if c.get(k)}}


def kernels_text(k: dict | None) -> str:
    if not k:
        return "—"
    if "error" in k:
        return "?"
    short = {"DynamicQuantizeMatMul": "DQMatMul", "MatMulIntegerToFloat": "MMIntToFloat",
             "DynamicQuantizeLinear": "DQL"}
    i = ", ".join(f"{short.get(a, a)} {n}" for a, n in k["int"].items())
    f = ", ".join(f"{a} {n}" for a, n in k["float"].items())
    return f"int8: {i or 'none'}; float: {f or 'none'}"


def profile_ops(path: str, feeds: dict, warmup: int = 5, iters: int = 30) -> dict:
    """ORT profiler, batch 1, one thread: mean µs per run by op type (warm-up runs excluded)."""
    import onnxruntime as ort

    so = harness.session_options(1)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="bench-dq-prof-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        for _ in range(warmup + iters):
            s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    t_cut = runs[warmup] if len(runs) > warmup else 0
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < t_cut:
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
    n = max(1, len(runs) - warmup)
    return {"total_us": sum(by_op.values()) / n,
            "by_op": {k: v / n for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def latencies(rows: list[dict], feeds: dict, args, threads: int) -> float:
    """Interleaved median latency of every ok row at `threads`; returns the noise floor
    (a second FP32 session's latency / the first's)."""
    live = {i: r for i, r in enumerate(rows) if r["status"] == "ok"}
    sessions = {i: harness.make_session(r["path"], threads=threads) for i, r in live.items()}
    sessions["fp32-again"] = harness.make_session(rows[0]["path"], threads=threads)
    lat = harness.interleaved_latency_ms(sessions, feeds, rounds=args.lat_rounds, warmup=args.lat_warmup,
                                         iters=args.lat_iters)
    del sessions
    noise = lat.pop("fp32-again") / lat[0]
    for i, ms in lat.items():
        rows[i][f"lat{threads}_ms"] = ms
        rows[i][f"lat{threads}_ratio"] = ms / lat[0]
    return noise


# --------------------------------------------------------------------------- MiniLM
def bench_minilm(args, ours_ok: bool, ours_why: str) -> tuple[list[dict], dict]:
    work = Path(args.workdir)
    out = work / "out"
    fp32 = models.export_minilm(work)
    sents = models.sentences(args.sentences)
    batch = models.tokenize(sents, seq_len=models.MINILM_SEQ_LEN)
    n_tok = batch["attention_mask"].sum(1)
    feeds = {k: np.ascontiguousarray(v[:1]) for k, v in batch.items()}

    rows = [_row("MiniLM", "FP32 (torch.onnx.export, opset 17)", "anchor", fp32, tag="fp32",
                 n_params=bwq.n_params(fp32))]
    plan = [("ptqflow weight quant 8 bit", "w8", None, None),
            ("ptqflow dynamic ALWC", "alwc", "ALWC", None), ("ptqflow dynamic ACWL", "acwl", "ACWL", None),
            ("ptqflow dynamic ALWC, rotation_block=0 (converter_lite numerics)", "alwc-r0", "ALWC", 0),
            ("ptqflow dynamic ACWL, rotation_block=0 (converter_lite numerics)", "acwl-r0", "ACWL", 0)]
    for label, tag, strategy, rotation in plan:
        if not ours_ok:
            rows.append(_row("MiniLM", label, "ours", tag=tag, status="not available", notes=ours_why))
            continue
        if strategy is None:
            cfg = bwq.write_cfg(work / "cfg" / f"dq_minilm_{tag}.cfg", 8)
            dst = out / f"dq_minilm_{tag}"
        else:
            cfg = write_dyn_cfg(work / "cfg" / f"minilm_{tag}.cfg", strategy, rotation)
            dst = out / f"minilm_{tag}"
        rows.append(convert_ours("MiniLM", label, tag, fp32, cfg, dst, MINILM_SHAPE, args))
    if not args.skip_ort:
        add_ort(rows, "MiniLM", "ORT quantize_dynamic, per_channel=False", ort_dynamic, fp32,
                out / "dq_minilm_ort_pt.onnx", False)
        rows[-1]["tag"] = "ort-pt"
        add_ort(rows, "MiniLM", "ORT quantize_dynamic, per_channel=True", ort_dynamic, fp32,
                out / "dq_minilm_ort_pc.onnx", True)
        rows[-1]["tag"] = "ort-pc"

    # accuracy (2 threads: ORT default here) and size
    print("  MiniLM: embeddings ...", flush=True)
    ref = harness.embed(fp32, batch, threads=None)
    for r in rows:
        if r["status"] != "ok":
            continue
        r["size_bytes"] = harness.file_size(r["path"])
        try:
            c = harness.cosine_rows(ref, harness.embed(r["path"], batch, threads=None))
            r["cos_mean"], r["cos_min"] = float(c.mean()), float(c.min())
        except Exception as e:  # noqa: BLE001
            r["status"] = "error"
            r["notes"] = (r["notes"] + "; " if r["notes"] else "") + f"run failed: {type(e).__name__}: {str(e)[:200]}"
        r["kernels"] = kernels(r["path"])
        r["create_s"] = harness.session_creation_time(r["path"], repeats=args.create_repeats)

    # RAM: fresh processes
    print("  MiniLM: RAM ...", flush=True)
    npz = work / "logs" / "dq_minilm_feeds.npz"
    npz.parent.mkdir(parents=True, exist_ok=True)
    np.savez(npz, **feeds)
    for r in rows:
        if r["status"] == "ok":
            m = rss_run(r["path"], npz, args.rss_iters, args.rss_repeats)
            r.update(ram_mb=m["peak_mb"], ram_load_mb=m["load_hwm_mb"], ram_base_mb=m["base_hwm_mb"])

    print("  MiniLM: latency 1 and 2 threads ...", flush=True)
    noise = {t: latencies(rows, feeds, args, t) for t in (1, 2)}

    base = rows[0]
    baseline = statistics.median(r["ram_base_mb"] for r in rows if r.get("ram_base_mb") is not None)
    for r in rows:
        if r["status"] != "ok":
            continue
        r["size_ratio"] = r["size_bytes"] / base["size_bytes"]
        r["compression"] = base["size_bytes"] / r["size_bytes"]
        r["ram_ratio"] = r["ram_mb"] / base["ram_mb"]
        r["ram_net_ratio"] = (r["ram_mb"] - baseline) / (base["ram_mb"] - baseline)
        r["create_ratio"] = r["create_s"] / base["create_s"]

    profiles = {}
    if not args.no_profile:
        print("  MiniLM: ORT profiles ...", flush=True)
        for r in rows:
            if r["status"] == "ok" and r["tag"] in ("fp32", "alwc", "acwl", "ort-pt", "ort-pc"):
                try:
                    profiles[r["method"]] = profile_ops(r["path"], feeds)
                except Exception as e:  # noqa: BLE001
                    profiles[r["method"]] = {"error": repr(e)[:200]}
    meta = {"n_sentences": len(sents), "seq_len": models.MINILM_SEQ_LEN, "mean_tokens": float(n_tok.mean()),
            "max_tokens": int(n_tok.max()), "truncated": int((n_tok >= models.MINILM_SEQ_LEN).sum()),
            "latency_input": f"batch 1, seq {models.MINILM_SEQ_LEN} (one sentence, {int(n_tok[0])} real tokens, padded)",
            "lat_noise": noise, "ram_baseline_mb": baseline, "profiles": profiles,
            "export": json.loads((work / "minilm_fp32.json").read_text())}
    return rows, meta


# --------------------------------------------------------------------------- OCR classifier
def _cls_data(root: Path):
    import ocr_cls_data

    params = {"n_calib": 1000, "n_eval": 1000}
    man = root / "manifest.json"
    if man.is_file():  # reuse the set bench_full_quant built (its n_calib), never rebuild it smaller
        try:
            p = json.loads(man.read_text())["params"]
            params = {"n_calib": int(p["n_calib"]), "n_eval": max(int(p["n_eval"]), 1000)}
        except (ValueError, KeyError):
            pass
    info = ocr_cls_data.build(root, seed=0, **params)
    x, y = ocr_cls_data.load_eval(root)
    return x, y, info


def bench_cls(args, ours_ok: bool, ours_why: str) -> tuple[list[dict], dict]:
    work = Path(args.workdir)
    out = work / "out"
    root = Path(args.cls_root)
    x, y, info = _cls_data(root)
    fp32 = models.rapidocr_models()["cls"]
    rows = [_row("PP-OCR cls", f"FP32 ({fp32.name}, opset 11)", "anchor", fp32, tag="fp32")]
    for label, tag, strategy in (("ptqflow dynamic ALWC", "alwc", "ALWC"), ("ptqflow dynamic ACWL", "acwl", "ACWL")):
        if not ours_ok:
            rows.append(_row("PP-OCR cls", label, "ours", tag=tag, status="not available", notes=ours_why))
            continue
        cfg = write_dyn_cfg(work / "cfg" / f"cls_dyn_{tag}.cfg", strategy)
        rows.append(convert_ours("PP-OCR cls", label, tag, fp32, cfg, out / f"cls_dyn_{tag}", CLS_SHAPE, args))
    if not args.skip_ort:
        for pre, pc in ((False, False), (False, True), (True, False), (True, True)):
            tag = f"ort-{'pre-' if pre else ''}{'pc' if pc else 'pt'}"
            label = f"ORT quantize_dynamic, per_channel={pc}, {'after quant_pre_process' if pre else 'as shipped'}"
            add_ort(rows, "PP-OCR cls", label, ort_dynamic, fp32, out / f"cls_dyn_{tag}.onnx", pc, pre)
            rows[-1]["tag"] = tag
            if not pre:
                rows[-1]["notes"] = ("weights are Constant-node outputs: ORT quantizes them with "
                                     "DynamicQuantizeLinear at run time, like activations")

    print("  cls: accuracy ...", flush=True)
    ref_pred = None
    for r in rows:
        if r["status"] != "ok":
            continue
        try:
            s = harness.make_session(r["path"], threads=None)
            prob = np.concatenate([s.run(None, {"x": x[i:i + 50]})[0] for i in range(0, len(x), 50)])
            del s
        except Exception as e:  # noqa: BLE001
            r["status"] = "error"
            r["notes"] = (r["notes"] + "; " if r["notes"] else "") + f"run failed: {type(e).__name__}: {str(e)[:200]}"
            continue
        pred = prob.argmax(1)
        if ref_pred is None:
            ref_pred = pred
        r["acc"] = float((pred == y).mean())
        r["agree"] = float((pred == ref_pred).mean())
        r["delta_pts"] = 100.0 * (r["acc"] - rows[0]["acc"])
        r["size_bytes"] = harness.file_size(r["path"])
        r["size_ratio"] = r["size_bytes"] / rows[0]["size_bytes"]
        r["kernels"] = kernels(r["path"])
    feeds = {"x": np.ascontiguousarray(x[:1])}
    print("  cls: latency 1 and 2 threads ...", flush=True)
    noise = {t: latencies(rows, feeds, args, t) for t in (1, 2)}
    profiles = {}
    if not args.no_profile:
        print("  cls: ORT profiles ...", flush=True)
        ort_rows = [r for r in rows if r["status"] == "ok" and r["group"] == "ort"]
        slowest_ort = max(ort_rows, key=lambda r: r.get("lat1_ms", 0.0), default=None)
        for r in rows:
            if r["status"] == "ok" and (r["tag"] in ("fp32", "alwc", "acwl") or r is slowest_ort):
                try:
                    profiles[r["method"]] = profile_ops(r["path"], feeds)
                except Exception as e:  # noqa: BLE001
                    profiles[r["method"]] = {"error": repr(e)[:200]}
    meta = {"n_eval": int(len(y)), "n_180": int(y.sum()), "data": info.get("params", {}), "lat_noise": noise,
            "profiles": profiles, "root": os.path.relpath(root, ROOT)}
    return rows, meta


# --------------------------------------------------------------------------- targets
def check_targets(mrows: list[dict], crows: list[dict] | None) -> list[dict]:
    T = []

    def get(rows, tag):
        return next((r for r in rows if r.get("tag") == tag and r["status"] == "ok"), None)

    def add(row, what, limit, val, ok):
        T.append({"row": row, "metric": what, "target": limit, "value": val, "pass": None if val is None else bool(ok)})

    alwc, acwl = get(mrows, "alwc"), get(mrows, "acwl")
    ort = [r for r in mrows if r["group"] == "ort" and r["status"] == "ok"]
    ort_lat = min((r["lat1_ms"] for r in ort), default=None)
    ort_cos = max((r["cos_mean"] for r in ort), default=None)
    v = lambda r, k: None if r is None else r.get(k)  # noqa: E731
    add("ALWC", "latency 1 thread / FP32", f"≤ {ALWC_T['lat_ratio']}", v(alwc, "lat1_ratio"),
        alwc and alwc["lat1_ratio"] <= ALWC_T["lat_ratio"])
    add("ALWC", "size / FP32", f"≤ {ALWC_T['size_ratio']}", v(alwc, "size_ratio"),
        alwc and alwc["size_ratio"] <= ALWC_T["size_ratio"])
    add("ALWC", "RAM (raw peak RSS) / FP32", f"≤ {ALWC_T['ram_ratio']}", v(alwc, "ram_ratio"),
        alwc and alwc["ram_ratio"] <= ALWC_T["ram_ratio"])
    add("ALWC", "cosine (mean)", f"≥ {ALWC_T['cos_mean']}", v(alwc, "cos_mean"),
        alwc and alwc["cos_mean"] >= ALWC_T["cos_mean"])
    add("ACWL", "cosine (mean) vs ALWC's", "≥ " + ("—" if alwc is None else f"{alwc['cos_mean']:.5f}"),
        v(acwl, "cos_mean") if alwc else None, acwl and alwc and acwl["cos_mean"] >= alwc["cos_mean"])
    add("ACWL", "latency 1 thread / FP32", f"≤ {ACWL_LAT}", v(acwl, "lat1_ratio"),
        acwl and acwl["lat1_ratio"] <= ACWL_LAT)
    for name, r in (("ALWC", alwc), ("ACWL", acwl)):
        add(name, "latency 1 thread (ms) vs ORT's best", "≤ " + ("—" if ort_lat is None else f"{ort_lat:.2f}"),
            v(r, "lat1_ms") if ort_lat is not None else None, r and ort_lat is not None and r["lat1_ms"] <= ort_lat)
        add(name, "cosine (mean) vs ORT's best", "≥ " + ("—" if ort_cos is None else f"{ort_cos:.5f}"),
            v(r, "cos_mean") if ort_cos is not None else None, r and ort_cos is not None and r["cos_mean"] >= ort_cos)
    if crows:
        for tag, name in (("alwc", "cls ALWC"), ("acwl", "cls ACWL")):
            r = get(crows, tag)
            add(name, "accuracy vs FP32 (points)", f"≥ −{CLS_ACC_DROP_PTS}", v(r, "delta_pts"),
                r and r.get("delta_pts") is not None and r["delta_pts"] >= -CLS_ACC_DROP_PTS)
            add(name, "latency 1 thread / FP32", f"≤ {CLS_LAT_MAX}", v(r, "lat1_ratio"),
                r and r.get("lat1_ratio") is not None and r["lat1_ratio"] <= CLS_LAT_MAX)
    return T


# --------------------------------------------------------------------------- report
def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def _pct(ratio):
    if ratio is None:
        return "—"
    v = round(100.0 * (ratio - 1.0))
    return "±0 %" if v == 0 else f"{'+' if v > 0 else '−'}{abs(v)} %"


def minilm_table(rows: list[dict]) -> str:
    head = ["method", "MB", "RAM MB", "latency 1T ms", "latency 2T ms", "cosine mean (min)", "compression",
            "memory vs FP32", "latency vs FP32 (1T / 2T)"]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        if r["status"] != "ok":
            out.append(f"| {r['method']} | " + " | ".join(["—"] * (len(head) - 2)) + f" | **{r['status']}**: {r['notes']} |")
            continue
        out.append("| " + " | ".join([
            r["method"], f"{r['size_bytes'] / 1e6:.2f}", f"{r['ram_mb']:.0f}", f"{r['lat1_ms']:.2f}",
            f"{r['lat2_ms']:.2f}", f"{r['cos_mean']:.4f} ({r['cos_min']:.4f})", f"{r['compression']:.2f}×",
            _pct(r["ram_ratio"]), f"{_pct(r['lat1_ratio'])} / {_pct(r['lat2_ratio'])}"]) + " |")
    return "\n".join(out)


def minilm_detail(rows: list[dict], baseline: float) -> str:
    head = ["method", "size × FP32", "RAM × FP32", f"RAM − baseline ({baseline:.0f} MB) × FP32",
            "peak after load MB", "session s", "quantize s", "ORT kernels after optimization", "notes"]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 3) + "---|---|"]
    for r in rows:
        if r["status"] != "ok":
            continue
        out.append("| " + " | ".join([
            r["method"], f"{r['size_ratio']:.3f}", f"{r['ram_ratio']:.3f}", f"{r['ram_net_ratio']:.3f}",
            f"{r['ram_load_mb']:.0f}", f"{r['create_s']:.3f}", _f(r.get("quant_s"), ".1f"),
            kernels_text(r.get("kernels")), r.get("notes", "")]) + " |")
    return "\n".join(out)


def cls_table(rows: list[dict]) -> str:
    head = ["method", "MB", "accuracy", "Δ pts vs FP32", "same label as FP32", "latency 1T ms", "× FP32",
            "latency 2T ms", "× FP32", "ORT kernels after optimization", "notes"]
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 3) + "---|---|"]
    for r in rows:
        if r["status"] != "ok" or r.get("acc") is None:
            out.append(f"| {r['method']} | " + " | ".join(["—"] * (len(head) - 2)) + f" | **{r['status']}**: {r['notes']} |")
            continue
        out.append("| " + " | ".join([
            r["method"], f"{r['size_bytes'] / 1e6:.2f}", f"{r['acc']:.3f}", f"{r['delta_pts']:+.1f}",
            f"{r['agree']:.3f}", _f(r.get("lat1_ms"), ".3f"), _f(r.get("lat1_ratio"), ".2f"),
            _f(r.get("lat2_ms"), ".3f"), _f(r.get("lat2_ratio"), ".2f"), kernels_text(r.get("kernels")),
            r.get("notes", "")]) + " |")
    return "\n".join(out)


def profile_table(profs: dict, top: int = 18) -> str:
    """Op types ranked by their largest time in any column; the rest summed in one row."""
    peak: dict[str, float] = {}
    for p in profs.values():
        for k, v in p.get("by_op", {}).items():
            peak[k] = max(peak.get(k, 0.0), v)
    ops = sorted(peak, key=lambda k: -peak[k])
    shown, rest = ops[:top], ops[top:]
    head = ["op type (µs / run)"] + list(profs)
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(profs)]
    out.append("| **total kernel time** | " + " | ".join(f"**{_f(p.get('total_us'), '.0f')}**" for p in profs.values()) + " |")
    for op in shown:
        out.append(f"| {op} | " + " | ".join(_f(p.get("by_op", {}).get(op), ".0f") for p in profs.values()) + " |")
    if rest:
        out.append(f"| {len(rest)} other op types | " + " | ".join(
            _f(sum(p.get("by_op", {}).get(op, 0.0) for op in rest), ".0f") for p in profs.values()) + " |")
    return "\n".join(out)


def targets_table(T: list[dict]) -> str:
    out = ["| row | metric | target | value | pass |", "|---|---|---|---:|---|"]
    for t in T:
        v = "—" if t["value"] is None else f"{t['value']:.4f}"
        p = "—" if t["pass"] is None else ("yes" if t["pass"] else "**no**")
        out.append(f"| {t['row']} | {t['metric']} | {t['target']} | {v} | {p} |")
    return "\n".join(out)


def render(cmd, env, minilm, cls, T, wall, args) -> str:
    L = ["# Dynamic-quantization benchmark", "", "```", cmd, "```", "",
         f"{env['date']} · git {env['git']} · {env['cpu']} ({env['cores']} cores) · Python {env['python']} · "
         + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + f" · total wall {wall:.0f} s · 1-min load average {env['loadavg_1m']['start']} at start, "
         f"{env['loadavg_1m']['end']} at end (the 2 cores are shared: at 2 threads the second one competes "
         "with other processes)", ""]
    if minilm:
        rows, meta = minilm
        L += ["## all-MiniLM-L6-v2", "",
              "ptqflow's ALWC and ACWL rows use the default `[ptqflow] rotation_block=16` (block-Hadamard "
              "rotation of each quantized activation, `ptq_core/modes/dynamic/rotation.py`); the `rotation_block=0` rows are "
              "converter_lite's numerics. "
              f"Cosine: mean-pooled (attention-masked) embedding vs FP32, per sentence, mean (min) over "
              f"{meta['n_sentences']} sentences from `pydoc_data.topics` padded to {meta['seq_len']} tokens "
              f"(mean {meta['mean_tokens']:.1f}, max {meta['max_tokens']} real tokens, {meta['truncated']} truncated). "
              f"Latency: {meta['latency_input']}; median of {args.lat_rounds} interleaved rounds × {args.lat_iters} runs, "
              "`intra_op_num_threads = inter_op_num_threads` = 1 (1T) or 2 (2T), ORT_ENABLE_ALL; the machine has "
              f"2 shared cores. Noise floor: a second FP32 session measured {meta['lat_noise'][1]:.3f}× the first at 1T, "
              f"{meta['lat_noise'][2]:.3f}× at 2T. RAM: peak RSS (VmHWM) of a fresh process that imports onnxruntime, "
              f"creates the session (1 thread) and runs {args.rss_iters} inferences (batch 1, seq 128), nothing subtracted; "
              f"median of {args.rss_repeats} process(es). Interpreter + numpy + onnxruntime baseline (VmHWM before the "
              f"session): **{meta['ram_baseline_mb']:.0f} MB**. Compression = FP32 bytes / bytes; memory and latency vs "
              f"FP32 are changes (−54 % = 0.46×).", "", minilm_table(rows), "",
              "Details (ratios vs FP32; kernels = op types in ORT's optimized graph):", "",
              minilm_detail(rows, meta["ram_baseline_mb"]), ""]
    if T:
        L += ["## Targets (issue)", "",
              "Latency targets at batch 1, seq 128, one thread. \"ORT's best\": the lowest latency and the highest "
              "cosine among the ORT `quantize_dynamic` rows. For the classifier, \"must not collapse\" is checked as "
              f"accuracy within {CLS_ACC_DROP_PTS:g} point of FP32 and latency ≤ {CLS_LAT_MAX}× FP32.", "",
              targets_table(T), ""]
    if cls:
        rows, meta = cls
        L += ["## PP-OCR text-direction classifier (convolution net)", "",
              f"`ch_ppocr_mobile_v2.0_cls_infer.onnx` from rapidocr-onnxruntime 1.4.4 on {meta['n_eval']} rendered "
              f"English text lines ({meta['n_180']} rotated 180°, `ocr_cls_data.py`, `{meta['root']}/eval`), "
              "rapidocr's preprocessing; accuracy = argmax vs the true 0/180 label. Latency: batch 1 (3×48×192), "
              f"interleaved, 1 and 2 threads (noise floor {meta['lat_noise'][1]:.3f}× / {meta['lat_noise'][2]:.3f}×). "
              "ptqflow's dynamic mode quantizes MatMul/Gemm/Gather only; convolutions stay FP32.", "",
              cls_table(rows), ""]
    if minilm and minilm[1]["profiles"]:
        L += ["## ORT profiler: MiniLM, batch 1, seq 128, one thread", "",
              "Mean kernel time per run by op type (30 runs after 5 warm-up runs).", "",
              profile_table(minilm[1]["profiles"]), ""]
    if cls and cls[1]["profiles"]:
        L += ["## ORT profiler: classifier, batch 1, one thread", "", profile_table(cls[1]["profiles"], top=12), ""]
    return "\n".join(L)


def _public(obj):
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(HERE / "work"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--cls-root", default=None, help="classifier data set (default WORKDIR/cls)")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--skip-ocr", action="store_true")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--no-ours", action="store_true", help="report ptqflow rows as not available")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--ours-timeout", type=int, default=300, help="seconds per ptqflow conversion")
    ap.add_argument("--lat-rounds", type=int, default=5)
    ap.add_argument("--lat-warmup", type=int, default=5)
    ap.add_argument("--lat-iters", type=int, default=20)
    ap.add_argument("--rss-iters", type=int, default=100)
    ap.add_argument("--rss-repeats", type=int, default=1)
    ap.add_argument("--create-repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 sentences, 2 latency rounds of 10")
    args = ap.parse_args(argv)
    if args.quick:
        args.sentences, args.lat_rounds, args.lat_iters, args.create_repeats = 200, 2, 10, 1
    if args.sentences < 200:
        ap.error("--sentences must be >= 200")
    if args.cls_root is None:
        args.cls_root = str(Path(args.workdir) / "cls")

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    exe = Path(sys.executable)
    exe_s = os.path.relpath(exe, ROOT) if str(exe).startswith(str(ROOT)) else str(exe)
    given = sys.argv[1:] if argv is None else list(argv)
    cmd = "HF_HUB_OFFLINE=1 " + shlex.join([exe_s, os.path.relpath(Path(__file__).resolve(), ROOT), *given])
    ours_ok, ours_why = (False, "--no-ours") if args.no_ours else bwq.ptqflow_available()
    print(f"ptqflow: {'available' if ours_ok else 'not available (' + ours_why + ')'}", flush=True)

    minilm = bench_minilm(args, ours_ok, ours_why)
    print(minilm_table(minilm[0]), flush=True)
    cls = None
    if not args.skip_ocr:
        cls = bench_cls(args, ours_ok, ours_why)
        print(cls_table(cls[0]), flush=True)
    T = check_targets(minilm[0], cls[0] if cls else None)
    wall = time.perf_counter() - t0
    env = bwq.environment()
    env["loadavg_1m"] = {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)}
    md = render(cmd, env, minilm, cls, T, wall, args)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "dynamic_quant.md").write_text(md + "\n")
    raw = {"command": cmd, "environment": env, "wall_s": wall, "targets": T,
           "minilm": {"rows": minilm[0], "meta": minilm[1]},
           "cls": {"rows": cls[0], "meta": cls[1]} if cls else None}
    (res / "dynamic_quant.json").write_text(json.dumps(_public(raw), indent=1, default=repr) + "\n")
    print("\n" + md)
    print(f"\nwrote {res / 'dynamic_quant.md'} and {res / 'dynamic_quant.json'} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
