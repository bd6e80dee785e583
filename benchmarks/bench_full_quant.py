"""FULL_QUANT benchmark: ptqflow vs FP32, ONNX Runtime's quantize_static and NNCF, in one run.

    .venv-bench/bin/python benchmarks/bench_full_quant.py            # full run (`make bench`)
    .venv-bench/bin/python benchmarks/bench_full_quant.py --quick    # smoke run (~3 min)

Models
  * PP-OCR text-direction classifier ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (rapidocr-onnxruntime
    1.4.4 wheel) on a labelled set built by ``ocr_cls_data.py`` (rendered English text lines, half
    rotated 180 degrees, rapidocr's own preprocessing): accuracy on >= 1000 evaluation images,
    500 calibration images (ptqflow reads them as an IMAGE folder through its config).
  * The digits example (examples/digits): eval split eval.npz, BIN calibration examples/digits/bin.
  * PP-OCRv4 recognizer ``ch_PP-OCRv4_rec_infer.onnx`` (same wheel), a convolution/GEMM-heavy model:
    FP32 vs int8 latency and output agreement (CTC-decoded text, cosine).

Every quantizer runs in a fresh child process of its own (this file with ``--_child SPEC``): the
wall time of the quantization call (ptqflow: the whole ``convert``; ORT: ``quantize_static``,
including reading and preprocessing the calibration images, as ptqflow does) and the process's
peak RSS (VmHWM from /proc/self/status, plus the peak of any grandchild) are measured there.

Writes benchmarks/results/full_quant.md (command line at the top, tables, pass/fail against the
issue's targets) and benchmarks/results/full_quant.json; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

CLS_SHAPE = "x:1,3,48,192"
REC_SHAPE = (1, 3, 48, 320)
OUR_METHODS = ("MAX_MIN", "KL", "REMOVAL_OUTLIER")
OTHER_TARGETS = ("NVGPU", "DSP", "ASCEND")
DEFAULT_RECOMMENDED = "KL:pc"  # the README's recommendation (method:pc|pt); --recommended overrides
INT8_OPS_PREFIX = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize")
FLOAT_COMPUTE = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose")


# =========================================================================== child side
def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _calib_reader(files: list[str], kind: str, input_name: str, shape=None):
    """An ORT CalibrationDataReader that loads each file when asked (PNG via rapidocr's
    preprocessing, or a raw float32 .bin)."""
    from onnxruntime.quantization import CalibrationDataReader

    def load(f):
        if kind == "png":
            import ocr_cls_data

            return ocr_cls_data.load_tensor(Path(f))[None]
        return np.fromfile(f, dtype="<f4").reshape(shape)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(files):
                return None
            self.i += 1
            return {input_name: load(files[self.i - 1])}

        def __len__(self):
            return len(files)

        def set_range(self, start_index, end_index):  # CalibStridedMinMax (unused)
            self.i = start_index

    return Reader(), load


def _child_ours(spec: dict, out: dict) -> None:
    from ptqflow.api import convert

    out["base_rss_mb"] = _status_mb("VmRSS")
    t0 = time.perf_counter()
    res = convert(model=spec["model"], config=spec["config"], output=spec["output"],
                  input_shape=spec.get("input_shape", ""), use_flow=False)
    out["quant_s"] = time.perf_counter() - t0
    out["output_path"] = str(res.output_path)
    try:
        rows = res.rows()
        out["layers_int8"] = sum(r["status"] == "quantized" for r in rows)
        out["layers_total"] = len(rows)
        reasons: dict[str, int] = {}
        for r in rows:
            if r["status"] != "quantized":
                key = r["detail"].split(" (")[0]
                reasons[key] = reasons.get(key, 0) + 1
        out["kept_float_reasons"] = reasons
        out["output_cosine"] = res.output_cosine
    except Exception as e:  # noqa: BLE001
        out["summary_error"] = repr(e)


def _prepare_ort_input(src: str, prep: str, tmp: Path) -> str:
    """raw: the file as shipped. pre11: ORT's quant_pre_process on it (opset kept). careful: opset
    upgraded to 13 with onnx's version converter, then quant_pre_process. Symbolic shape inference
    is skipped: it asserts on this model's Concat (axis != 0)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if prep == "raw":
        return src
    model_in = src
    if prep == "careful":
        m = onnx.version_converter.convert_version(onnx.load(src), 13)
        model_in = str(tmp / "opset13.onnx")
        onnx.save(m, model_in)
    pre = str(tmp / "pre.onnx")
    quant_pre_process(model_in, pre, skip_symbolic_shape=True)
    return pre


def _child_ort(spec: dict, out: dict) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    ort.set_default_logger_severity(3)
    out["base_rss_mb"] = _status_mb("VmRSS")
    methods = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy,
               "Percentile": CalibrationMethod.Percentile, "Entropy2048": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmpd:
        tmp = Path(tmpd)
        t0 = time.perf_counter()
        model_in = _prepare_ort_input(spec["model"], spec["prep"], tmp)
        out["prep_s"] = time.perf_counter() - t0
        reader, _ = _calib_reader(spec["files"], spec["file_kind"], spec["input_name"], spec.get("shape"))
        kw = dict(quant_format=QuantFormat.QDQ, per_channel=spec["per_channel"], activation_type=QuantType.QUInt8,
                  weight_type=QuantType.QInt8, reduce_range=False, calibrate_method=methods[spec["method"]])
        t1 = time.perf_counter()
        if spec["method"] == "Entropy2048":
            # quantize_static forwards no bin counts to the Entropy calibrator, whose defaults
            # (128 bins, 128 quantized bins) leave one candidate threshold = the max (= MinMax). A
            # careful user calls the calibrator with TensorRT's 2048/128 and hands the ranges over.
            from onnxruntime.quantization.calibrate import (
                create_calibrator,
                save_tensors_data,
            )

            cal = create_calibrator(Path(model_in), None, augmented_model_path=str(tmp / "aug.onnx"),
                                    calibrate_method=CalibrationMethod.Entropy,
                                    extra_options={"num_bins": 2048, "num_quantized_bins": 128})
            cal.collect_data(reader)
            ranges = cal.compute_data()
            del cal
            cache = tmp / "ranges.json"
            save_tensors_data(ranges, cache)
            quantize_static(model_in, spec["output"], None, calibration_cache_path=str(cache), **kw)
        else:
            quantize_static(model_in, spec["output"], reader, **kw)
        out["quant_s"] = time.perf_counter() - t1
    out["output_path"] = spec["output"]


def _child_nncf(spec: dict, out: dict) -> None:
    import nncf
    import onnx

    out["base_rss_mb"] = _status_mb("VmRSS")
    t0 = time.perf_counter()
    _, load = _calib_reader(spec["files"], spec["file_kind"], spec["input_name"], spec.get("shape"))
    name = spec["input_name"]
    ds = nncf.Dataset(spec["files"], lambda f: {name: load(f)})
    model = onnx.load(spec["model"])
    if spec.get("opset13"):  # NNCF quantizes per-tensor only below opset 13 (it says so in a warning)
        model = onnx.version_converter.convert_version(model, 13)
    q = nncf.quantize(model, ds, subset_size=len(spec["files"]))
    onnx.save(q, spec["output"])
    out["quant_s"] = time.perf_counter() - t0
    out["output_path"] = spec["output"]
    out["opset"] = [(o.domain, o.version) for o in q.opset_import]


def child_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out: dict = {"ok": False}
    try:
        {"ours": _child_ours, "ort": _child_ort, "nncf": _child_nncf}[spec["kind"]](spec, out)
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        out["traceback"] = traceback.format_exc()[-3000:]
    out["peak_rss_mb"] = _status_mb("VmHWM")
    out["grandchildren_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    Path(spec["result"]).write_text(json.dumps(out, default=repr))


# =========================================================================== parent side
def run_child(spec: dict, name: str, work: Path, timeout: int) -> dict:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec = dict(spec, result=str(logs / f"{name}.result.json"))
    spec_path = logs / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec))
    Path(spec["result"]).unlink(missing_ok=True)
    log = logs / f"{name}.log"
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        with open(log, "w") as lf:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", str(spec_path)],
                           stdout=lf, stderr=subprocess.STDOUT, cwd=str(ROOT), timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout}s (log: {log})"}
    wall = time.perf_counter() - t0
    if not Path(spec["result"]).is_file():
        tail = log.read_text()[-400:] if log.is_file() else ""
        return {"ok": False, "error": f"child died after {wall:.0f}s (killed for memory?): {tail!r}"}
    res = json.loads(Path(spec["result"]).read_text())
    res["child_wall_s"] = wall
    if res.get("peak_rss_mb") is not None:
        res["peak_mb"] = max(res["peak_rss_mb"], res.get("grandchildren_peak_mb") or 0.0)
    return res


def ptqflow_available() -> tuple[bool, str]:
    p = subprocess.run([sys.executable, "-c", "from ptqflow.api import convert"],
                       capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    if p.returncode == 0:
        return True, ""
    return False, ((p.stderr.strip().splitlines() or ["import failed"])[-1])[:200]


def write_full_cfg(path: Path, calib: str, size: int, method: str, per_channel: bool, target: str | None,
                   input_type: str = "IMAGE", image: bool = True) -> Path:
    lines = ["[common_quant_param]", "quant_type=FULL_QUANT", "bit_num=8", "", "[data_preprocess_param]",
             f"calibrate_path={calib}", f"calibrate_size={size}", f"input_type={input_type}"]
    if image:
        # rapidocr feeds BGR (its LoadImage converts to BGR; ndarrays are taken as cv2 BGR)
        lines += ["image_to_format=BGR", "normalize_mean=[127.5,127.5,127.5]", "normalize_std=[127.5,127.5,127.5]"]
    lines += ["", "[full_quant_param]", f"activation_quant_method={method}",
              f"per_channel={'true' if per_channel else 'false'}", "bias_correction=true"]
    if target:
        lines.append(f"target_device={target}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- measuring outputs
def batched_run(sess, name: str, x: np.ndarray, chunk: int = 50) -> np.ndarray:
    try:
        return np.concatenate([sess.run(None, {name: x[i:i + chunk]})[0] for i in range(0, len(x), chunk)])
    except Exception:  # noqa: BLE001 - a model with a fixed batch of 1
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def int8_profile(path: str) -> dict:
    """What ORT's optimizer (CPU EP, extended) made of the model: integer kernels vs float compute ops."""
    from ptq_core.modes.full.audit import fused_ops

    c = fused_ops(Path(path).read_bytes())
    int8 = sum(v for k, v in c.items() if k.startswith(INT8_OPS_PREFIX))
    flt = sum(v for k, v in c.items() if k in FLOAT_COMPUTE)
    return {"int8_kernels": int8, "float_compute": flt, "ops": dict(c.most_common())}


def rules_check(path: str, target: str) -> list[str]:
    import onnx

    from ptq_core.modes.full.audit import check_target_rules
    from ptq_core.modes.full.targets import get_target

    return check_target_rules(onnx.load(path), get_target(target))


def profile_ops(path: str, feeds: dict, iters: int = 30) -> dict:
    """ORT's profiler, batch 1, one thread: mean µs per run by op type, and the slowest nodes."""
    import onnxruntime as ort

    so = harness.session_options(1)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "prof")
        s = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        for _ in range(5):
            s.run(None, feeds)
        s.end_profiling()
        so2 = harness.session_options(1)
        so2.enable_profiling = True
        so2.profile_file_prefix = str(Path(tmp) / "prof2")
        s = ort.InferenceSession(str(path), sess_options=so2, providers=["CPUExecutionProvider"])
        for _ in range(3):
            s.run(None, feeds)
        for _ in range(iters):
            s.run(None, feeds)
        f = s.end_profiling()
        events = json.loads(Path(f).read_text())
    by_op: dict[str, float] = {}
    by_node: dict[str, list] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
        node = e["name"][: -len("_kernel_time")]
        by_node.setdefault(node, [op, 0.0])[1] += e["dur"]
    runs = iters + 3
    total = sum(by_op.values()) / runs
    return {"total_us": total, "by_op": {k: v / runs for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "top_nodes": [(n, op, d / runs) for n, (op, d) in sorted(by_node.items(), key=lambda kv: -kv[1][1])[:12]]}


# --------------------------------------------------------------------------- the classifier
def _row(section: str, tool: str, label: str, **kw) -> dict:
    r = {"section": section, "tool": tool, "label": label, "status": "ok", "notes": ""}
    r.update(kw)
    return r


def _apply_child(r: dict, res: dict) -> dict:
    if not res.get("ok"):
        r["status"] = "error"
        r["notes"] = (r["notes"] + "; " if r["notes"] else "") + res.get("error", "?")
        r["child"] = res
        return r
    r["path"] = res["output_path"]
    for k in ("quant_s", "prep_s", "peak_mb", "base_rss_mb", "layers_int8", "layers_total", "kept_float_reasons",
              "output_cosine", "child_wall_s"):
        if k in res:
            r[k] = res[k]
    return r


def bench_cls(args, work: Path, ours_ok: bool, ours_why: str) -> tuple[list[dict], dict]:
    import ocr_cls_data

    root = Path(args.cls_root)
    n_eval = args.eval_images
    n_cal = args.calib
    big = max(n_cal, args.flat_hi)
    t0 = time.perf_counter()
    data_info = ocr_cls_data.build(root, n_calib=big, n_eval=n_eval, seed=0)
    build_s = time.perf_counter() - t0
    x, y = ocr_cls_data.load_eval(root)
    fp32 = models.rapidocr_models()["cls"]
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    calib_dir = (root / "calib").resolve()
    files = [str(p.resolve()) for p in ocr_cls_data.calib_files(root, n_cal)]
    rec_method, rec_pc = args.recommended
    meta: dict = {"data": data_info, "build_s": build_s, "n_eval": int(len(y)), "n_calib": n_cal,
                  "calib_dir": os.path.relpath(calib_dir, ROOT),
                  "recommended": {"method": rec_method, "per_channel": rec_pc}}

    # exactness of ptqflow's IMAGE pipeline vs rapidocr's tensor, on every calibration image used
    vcfg = write_full_cfg(work / "cfg" / "cls_verify.cfg", f"x:{calib_dir}", n_cal, "MAX_MIN", True, None)
    meta["calib_equality"] = ocr_cls_data.verify_calibration(root, vcfg, n_cal)
    print(f"calibration tensors vs rapidocr: {meta['calib_equality']}", flush=True)

    rows = [_row("cls", "FP32", f"FP32 ({fp32.name}, opset 11)", path=str(fp32))]

    # ---- ptqflow
    plan = [(m, pc, None, n_cal) for m in OUR_METHODS for pc in (True, False)]
    plan += [(rec_method, rec_pc, t, n_cal) for t in OTHER_TARGETS]
    # NVGPU (symmetric int8 activations, float bias, no bias correction) is the tight one: all methods
    plan += [(m, rec_pc, "NVGPU", n_cal) for m in OUR_METHODS if m != rec_method]
    if not args.no_flat:
        plan += [(rec_method, rec_pc, None, n) for n in (args.flat_lo, args.flat_hi)]
    for method, pc, target, n in plan:
        tag = f"{method}-{'pc' if pc else 'pt'}" + (f"-{target}" if target else "") + (f"-n{n}" if n != n_cal else "")
        label = f"ptqflow {method}, per_channel={'true' if pc else 'false'}" + (f", target_device={target}" if target else "") \
            + (f", {n} images" if n != n_cal else "")
        r = _row("cls" if n == n_cal else "cls-mem", "ptqflow", label, method=method, per_channel=pc,
                 target=target or "CPU", n_calib=n, tag=tag,
                 recommended=(method, pc, target, n) == (rec_method, rec_pc, None, n_cal))
        if not ours_ok:
            rows.append(dict(r, status="not available", notes=ours_why))
            continue
        cfg = write_full_cfg(work / "cfg" / f"cls_{tag}.cfg", f"x:{calib_dir}", n, method, pc, target)
        r["cfg"] = str(cfg)
        print(f"  ptqflow {tag} ...", flush=True)
        res = run_child({"kind": "ours", "model": str(fp32), "config": str(cfg), "output": str(out / f"cls_{tag}"),
                         "input_shape": CLS_SHAPE}, f"cls_ours_{tag}", work, args.timeout)
        rows.append(_apply_child(r, res))

    # ---- ONNX Runtime quantize_static (QDQ, U8S8 as ORT recommends for x86 with VNNI)
    if not args.skip_ort:
        ort_plan = [("raw", "MinMax", False), ("raw", "MinMax", True), ("pre11", "MinMax", True)]
        ort_plan += [("careful", m, pc) for m in ("MinMax", "Entropy", "Percentile") for pc in (False, True)]
        ort_plan += [("careful", "Entropy2048", True)]
        if args.quick:
            ort_plan = [("raw", "MinMax", True), ("pre11", "MinMax", True), ("careful", "MinMax", True),
                        ("careful", "Entropy", True)]
        prep_text = {"raw": "as shipped (opset 11)", "pre11": "quant_pre_process, opset 11",
                     "careful": "opset 11→13 + quant_pre_process"}
        for prep, method, pc in ort_plan:
            tag = f"{prep}-{method}-{'pc' if pc else 'pt'}"
            mlabel = "Entropy (2048 bins → 128, via calibrator)" if method == "Entropy2048" else method
            label = f"ORT quantize_static {mlabel}, per_channel={pc}, {prep_text[prep]}"
            r = _row("cls", "ORT", label, method=method, per_channel=pc, prep=prep, tag=tag, n_calib=n_cal)
            print(f"  ORT {tag} ...", flush=True)
            res = run_child({"kind": "ort", "model": str(fp32), "prep": prep, "method": method, "per_channel": pc,
                             "files": files, "file_kind": "png", "input_name": "x",
                             "output": str(out / f"cls_ort_{tag}.onnx")}, f"cls_ort_{tag}", work, args.timeout)
            r = _apply_child(r, res)
            if prep == "raw" and pc:
                r["notes"] = "weights are Constant-node outputs here, so ORT quantizes them as activations: per_channel has no effect"
            if prep == "raw":
                r["notes"] = (r["notes"] + "; " if r["notes"] else "") + "BatchNormalization left unfolded (float)"
            if method == "Entropy":
                r["notes"] = (r["notes"] + "; " if r["notes"] else "") + "quantize_static's Entropy defaults (128/128 bins): threshold = max, i.e. MinMax"
            rows.append(r)

    # ---- NNCF
    if not args.skip_nncf:
        for up in (False, True):
            tag = "nncf-opset13" if up else "nncf"
            r = _row("cls", "NNCF", f"NNCF nncf.quantize (ONNX backend, default preset, subset {n_cal})"
                     + (", opset 11→13 first" if up else ", as shipped (opset 11)"), tag=tag, n_calib=n_cal)
            print(f"  {tag} ...", flush=True)
            res = run_child({"kind": "nncf", "model": str(fp32), "files": files, "file_kind": "png", "input_name": "x",
                             "opset13": up, "output": str(out / f"cls_{tag}.onnx")}, f"cls_{tag}", work, args.timeout)
            r = _apply_child(r, res)
            if not up:
                r["notes"] = (r["notes"] + "; " if r["notes"] else "") + "NNCF warns: opset < 13, per-tensor weights"
            rows.append(r)

    # ---- measure
    meta["lat_noise"] = measure_cls(rows, x, y, args)
    return rows, meta


def measure_cls(rows: list[dict], x: np.ndarray, y: np.ndarray, args) -> float:
    """Accuracy, size, ORT's int8 kernels, target rules and latency of every row; returns the latency
    ratio of a second FP32 session to the first (the noise floor of the latency ratios)."""
    import onnx

    for r in rows:
        if r["status"] != "ok":
            continue
        p = r["path"]
        try:
            sess = harness.make_session(p, threads=None)
        except Exception as e:  # noqa: BLE001
            r["status"] = "invalid"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            r["notes"] = (r["notes"] + "; " if r["notes"] else "") + f"onnxruntime refuses the model: {first[:220]}"
            try:
                onnx.checker.check_model(onnx.load(p), full_check=True)
            except Exception as ce:  # noqa: BLE001
                r["notes"] += f" (onnx.checker: {str(ce).splitlines()[0][:120]})"
            continue
        prob = batched_run(sess, "x", x)
        del sess
        r["_correct"] = prob.argmax(1) == y
        r["acc"] = float(r["_correct"].mean())
        r["size_bytes"] = harness.file_size(p)
        if r["tool"] != "FP32":
            try:
                r["int8"] = int8_profile(p)
            except Exception as e:  # noqa: BLE001
                r["int8"] = {"error": repr(e)[:200]}
        if r["tool"] == "ptqflow":
            try:
                r["rule_problems"] = rules_check(p, r["target"])
            except Exception as e:  # noqa: BLE001
                r["rule_problems"] = [f"check failed: {e!r}"[:200]]
    base = rows[0]
    for r in rows:
        if r.get("acc") is not None:
            r["delta_pts"] = 100.0 * (r["acc"] - base["acc"])
    live = {i: r for i, r in enumerate(rows) if r.get("acc") is not None and r["section"] == "cls"}
    sessions = {i: harness.make_session(r["path"], threads=1) for i, r in live.items()}
    sessions["fp32-again"] = harness.make_session(base["path"], threads=1)
    feeds = {"x": np.ascontiguousarray(x[:1])}
    lat = harness.interleaved_latency_ms(sessions, feeds, rounds=args.lat_rounds, warmup=5, iters=args.lat_iters)
    del sessions
    noise = lat.pop("fp32-again") / lat[0]
    for i, ms in lat.items():
        rows[i]["lat_ms"] = ms
        rows[i]["lat_ratio"] = ms / lat[0]
        rows[i]["size_ratio"] = rows[i]["size_bytes"] / base["size_bytes"]
    return noise


# --------------------------------------------------------------------------- digits
def bench_digits(args, work: Path, ours_ok: bool, ours_why: str) -> list[dict]:
    ex = ROOT / "examples" / "digits"
    fp32 = ex / "digits_cnn.onnx"
    data = np.load(ex / "eval.npz")
    x, y = data["inputs"].astype(np.float32), data["labels"]
    bins = sorted((ex / "bin").glob("*.bin"))
    n = len(bins)
    out = work / "out"
    rows = [_row("digits", "FP32", f"FP32 ({fp32.name})", path=str(fp32))]
    for method in OUR_METHODS:
        tag = f"digits-{method}"
        r = _row("digits", "ptqflow", f"ptqflow {method} (per_channel, bias_correction default)", tag=tag, target="CPU",
                 method=method)
        if not ours_ok:
            rows.append(dict(r, status="not available", notes=ours_why))
            continue
        cfg = write_full_cfg(work / "cfg" / f"{tag}.cfg", f"input:{(ex / 'bin').resolve()}", n, method, True, None,
                             input_type="BIN", image=False)
        res = run_child({"kind": "ours", "model": str(fp32), "config": str(cfg), "output": str(out / tag)},
                        f"ours_{tag}", work, args.timeout)
        rows.append(_apply_child(r, res))
    if not args.skip_ort:
        for pc in (False, True):
            tag = f"digits-ort-MinMax-{'pc' if pc else 'pt'}"
            r = _row("digits", "ORT", f"ORT quantize_static MinMax, per_channel={pc}", tag=tag)
            res = run_child({"kind": "ort", "model": str(fp32), "prep": "raw", "method": "MinMax", "per_channel": pc,
                             "files": [str(b) for b in bins], "file_kind": "bin", "input_name": "input",
                             "shape": [1, 1, 8, 8], "output": str(out / f"{tag}.onnx")}, tag, work, args.timeout)
            rows.append(_apply_child(r, res))
    for r in rows:
        if r["status"] != "ok":
            continue
        try:
            s = harness.make_session(r["path"], threads=1)
        except Exception as e:  # noqa: BLE001
            r["status"], r["notes"] = "invalid", f"onnxruntime refuses the model: {str(e)[:200]}"
            continue
        pred = np.array([s.run(None, {"input": xi[None]})[0].argmax() for xi in x])
        r["acc"] = float((pred == y).mean())
        r["size_bytes"] = harness.file_size(r["path"])
        if r["tool"] == "ptqflow":
            r["rule_problems"] = rules_check(r["path"], "CPU")
        if r["tool"] != "FP32":
            r["int8"] = int8_profile(r["path"])
    base = rows[0]
    live = {i: r for i, r in enumerate(rows) if r.get("acc") is not None}
    sessions = {i: harness.make_session(r["path"], threads=1) for i, r in live.items()}
    lat = harness.interleaved_latency_ms(sessions, {"input": x[:1]}, rounds=args.lat_rounds, warmup=5, iters=args.lat_iters)
    for i, ms in lat.items():
        rows[i]["lat_ms"] = ms
        rows[i]["lat_ratio"] = ms / lat[0]
        rows[i]["delta_pts"] = 100.0 * (rows[i]["acc"] - base["acc"])
        rows[i]["size_ratio"] = rows[i]["size_bytes"] / base["size_bytes"]
    return rows


# --------------------------------------------------------------------------- rec (conv/GEMM heavy)
def _rec_fixed(img: np.ndarray) -> np.ndarray:
    """rapidocr's rec preprocessing for a line that fits 48x320 (aspect <= 320/48): resize to height 48,
    normalise, zero-pad to 320."""
    x = models.preprocess_rec(img, (3, 48, 320))
    assert x.shape == REC_SHAPE, x.shape
    return x


def _ctc(probs: np.ndarray, chars: list[str]) -> str:
    idx = probs[0].argmax(-1)
    out, prev = [], -1
    for i in idx:
        if i != prev and i != 0:
            out.append(chars[i] if i < len(chars) else "?")
        prev = i
    return "".join(out)


def _upright(i: int, split: str):
    """Sample i of a split of ocr_cls_data, turned upright: (BGR image, text)."""
    import ocr_cls_data

    img, label, text, _ = ocr_cls_data.render_sample(i, split)
    return (np.ascontiguousarray(img[::-1, ::-1]) if label else img), text


def rec_calibration(bindir: Path, n: int) -> list[np.ndarray]:
    """n upright calibration-split lines that fit 48x320 (rapidocr pads them, no squeeze), written as
    BIN files rec_0000.bin, ... in ``bindir`` (emptied first); returns the tensors."""
    bindir.mkdir(parents=True, exist_ok=True)
    for f in bindir.glob("*.bin"):
        f.unlink()
    tensors, i = [], 0
    while len(tensors) < n:
        img, _ = _upright(i, "calib")
        i += 1
        if img.shape[1] / img.shape[0] > 320 / 48:
            continue
        t = _rec_fixed(img).astype("<f4")
        t.tofile(bindir / f"rec_{len(tensors):04d}.bin")
        tensors.append(t)
    return tensors


def rec_eval_lines(n: int) -> tuple[list[np.ndarray], list[str]]:
    """n upright evaluation lines with rapidocr's preprocessing (width follows the aspect ratio), and their texts."""
    lines, texts = [], []
    for j in range(n):
        img, text = _upright(j, "eval")
        lines.append(models.preprocess_rec(img, (3, 48, 320)))
        texts.append(text)
    return lines, texts


def bench_rec(args, work: Path, ours_ok: bool, ours_why: str) -> tuple[list[dict], dict]:
    fp32 = models.rapidocr_models()["rec"]
    out = work / "out"
    # calibration: upright calibration-split lines that fit 48x320 (rapidocr pads them, no squeeze)
    bindir = work / "rec_calib"
    rec_calibration(bindir, args.rec_calib)
    lines, _ = rec_eval_lines(args.rec_eval)
    fp32_sess = harness.make_session(fp32, threads=None)
    mm = fp32_sess.get_modelmeta().custom_metadata_map
    chars = ["blank"] + mm.get("character", "").splitlines() + [" "]
    ref = [fp32_sess.run(None, {"x": t})[0] for t in lines]
    del fp32_sess
    rows = [_row("rec", "FP32", f"FP32 ({fp32.name}, opset 12)", path=str(fp32))]
    rec_method, rec_pc = args.recommended
    bins = sorted(bindir.glob("*.bin"))
    for method in ([rec_method] if args.quick else sorted({rec_method, "MAX_MIN"})):
        tag = f"rec-{method}-{'pc' if rec_pc else 'pt'}"
        r = _row("rec", "ptqflow", f"ptqflow {method}, per_channel={'true' if rec_pc else 'false'} ({len(bins)} BIN samples)",
                 tag=tag, target="CPU", method=method)
        if not ours_ok:
            rows.append(dict(r, status="not available", notes=ours_why))
            continue
        cfg = write_full_cfg(work / "cfg" / f"{tag}.cfg", f"x:{bindir.resolve()}", len(bins), method, rec_pc, None,
                             input_type="BIN", image=False)
        print(f"  ptqflow {tag} ...", flush=True)
        res = run_child({"kind": "ours", "model": str(fp32), "config": str(cfg), "output": str(out / tag),
                         "input_shape": "x:" + ",".join(map(str, REC_SHAPE))}, f"ours_{tag}", work, args.timeout)
        rows.append(_apply_child(r, res))
    if not args.skip_ort:
        tag = "rec-ort-careful-MinMax-pc"
        r = _row("rec", "ORT", "ORT quantize_static MinMax, per_channel=True, opset 12→13 + quant_pre_process", tag=tag)
        print(f"  ORT {tag} ...", flush=True)
        res = run_child({"kind": "ort", "model": str(fp32), "prep": "careful", "method": "MinMax", "per_channel": True,
                         "files": [str(b) for b in bins], "file_kind": "bin", "input_name": "x", "shape": list(REC_SHAPE),
                         "output": str(out / f"{tag}.onnx")}, tag, work, args.timeout)
        rows.append(_apply_child(r, res))
    for r in rows:
        if r["status"] != "ok":
            continue
        try:
            s = harness.make_session(r["path"], threads=None)
        except Exception as e:  # noqa: BLE001
            r["status"], r["notes"] = "invalid", f"onnxruntime refuses the model: {str(e)[:200]}"
            continue
        got = [s.run(None, {"x": t})[0] for t in lines]
        cos = np.array([harness.cosine(a[None], b[None]) for a, b in zip(ref, got)])
        r["cos_mean"], r["cos_min"] = float(cos.mean()), float(cos.min())
        r["text_agree"] = float(np.mean([_ctc(a, chars) == _ctc(b, chars) for a, b in zip(ref, got)]))
        r["size_bytes"] = harness.file_size(r["path"])
        if r["tool"] != "FP32":
            r["int8"] = int8_profile(r["path"])
        if r["tool"] == "ptqflow":
            r["rule_problems"] = rules_check(r["path"], "CPU")
    live = {i: r for i, r in enumerate(rows) if r.get("cos_mean") is not None}
    sessions = {i: harness.make_session(r["path"], threads=1) for i, r in live.items()}
    feeds = {"x": np.fromfile(bins[0], dtype="<f4").reshape(REC_SHAPE)}
    lat = harness.interleaved_latency_ms(sessions, feeds, rounds=args.lat_rounds, warmup=3,
                                         iters=max(3, args.lat_iters // 4))
    del sessions
    for i, ms in lat.items():
        rows[i]["lat_ms"] = ms
        rows[i]["lat_ratio"] = ms / lat[0]
        rows[i]["size_ratio"] = rows[i]["size_bytes"] / rows[0]["size_bytes"]
    meta = {"calib_samples": len(bins), "eval_lines": len(lines), "latency_input": list(REC_SHAPE)}
    return rows, meta


# =========================================================================== targets + report
def discordance(a: dict, b: dict, b_name: str) -> str:
    """Paired comparison on the same images: who gets which right (exact two-sided sign test)."""
    ca, cb = a.get("_correct"), b.get("_correct")
    if ca is None or cb is None:
        return ""
    n01, n10 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    n = n01 + n10
    k = min(n01, n10)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return f"images only ptqflow gets right: {n01}, only {b_name}: {n10} (sign test p = {p:.2f})"


def _best(rows, pred):
    c = [r for r in rows if pred(r) and r.get("acc") is not None]
    return max(c, key=lambda r: r["acc"]) if c else None


def check_targets(cls_rows: list[dict], rec_rows: list[dict] | None, args, lat_noise: float | None = None) -> list[dict]:
    T = []

    def add(group, what, target, value, ok, detail=""):
        T.append({"group": group, "what": what, "target": target, "value": value, "pass": ok, "detail": detail})

    main = [r for r in cls_rows if r["section"] == "cls"]
    fp32 = main[0]
    ours_cpu = [r for r in main if r["tool"] == "ptqflow" and r.get("target") == "CPU"]
    rec = next((r for r in ours_cpu if r.get("recommended")), None)
    ort_best = _best(main, lambda r: r["tool"] == "ORT")
    nncf = _best(main, lambda r: r["tool"] == "NNCF")
    m, pc = args.recommended
    rec_name = f"{m}, per_channel={'true' if pc else 'false'}"
    # accuracy
    v = rec.get("delta_pts") if rec else None
    add("accuracy", f"recommended setting ({rec_name}) vs FP32 {fp32.get('acc', float('nan')):.3f}", "≥ −0.3 points",
        v, None if v is None else v >= -0.3 - 1e-9, f"acc {rec['acc']:.3f}" if rec and rec.get("acc") is not None else "")
    if ort_best is not None:
        v = None if not rec or rec.get("acc") is None else 100 * (rec["acc"] - ort_best["acc"])
        add("accuracy", f"recommended vs ORT's best ({ort_best['label']}: {ort_best['acc']:.3f})", "≥ 0 points", v,
            None if v is None else v >= -1e-9, discordance(rec, ort_best, "ORT"))
        best_ours = _best(ours_cpu, lambda r: True)
        if best_ours is not None and best_ours is not rec:
            add("info", f"best ptqflow CPU row ({best_ours['tag']}) vs ORT's best", "(info)",
                100 * (best_ours["acc"] - ort_best["acc"]), None, discordance(best_ours, ort_best, "ORT"))
    worst = min((r for r in ours_cpu if r.get("delta_pts") is not None), key=lambda r: r["delta_pts"], default=None)
    missing = [r["tag"] for r in ours_cpu if r.get("delta_pts") is None]
    add("accuracy", "every ptqflow method (3 methods × per_channel on/off) vs FP32", "≥ −1 point",
        None if worst is None else worst["delta_pts"],
        None if worst is None else (worst["delta_pts"] >= -1 - 1e-9 and not missing),
        (f"worst: {worst['tag']}" if worst else "") + (f"; failed: {', '.join(missing)}" if missing else ""))
    # statistics time and memory vs ORT Entropy (the quantize_static call, careful, per-channel)
    ent = next((r for r in main if r["tool"] == "ORT" and r.get("method") == "Entropy" and r.get("prep") == "careful"
                and r.get("per_channel") and r.get("quant_s")), None)
    ours_kl = next((r for r in ours_cpu if r.get("method") == "KL" and r.get("per_channel") == pc and r.get("quant_s")), None) \
        or next((r for r in ours_cpu if r.get("method") == "KL" and r.get("quant_s")), None)
    if ent and ours_kl:
        ratio = ours_kl["quant_s"] / ent["quant_s"]
        add("statistics", f"ptqflow KL ({ours_kl['tag']}) wall time / ORT Entropy's ({ent['quant_s']:.1f} s), {args.calib} images",
            "≤ 0.5", ratio, ratio <= 0.5 if args.calib == 500 else None,
            f"{ours_kl['quant_s']:.1f} s (whole convert)" + ("" if args.calib == 500 else "; target is for 500 images"))
        mem_rows = [r for r in ours_cpu if r.get("peak_mb")]
        worst_mem = max(mem_rows, key=lambda r: r["peak_mb"])
        add("statistics", f"ptqflow peak RSS / ORT Entropy's ({ent['peak_mb']:.0f} MB), worst ptqflow CPU row ({worst_mem['tag']})",
            "≤ 0.25", worst_mem["peak_mb"] / ent["peak_mb"], worst_mem["peak_mb"] / ent["peak_mb"] <= 0.25,
            f"{worst_mem['peak_mb']:.0f} MB")
    else:
        add("statistics", "ptqflow KL time and memory vs ORT Entropy", "≤ 0.5 / ≤ 0.25", None, None,
            "missing row: " + ("ORT Entropy" if not ent else "ptqflow KL"))
    flat = {r["n_calib"]: r for r in cls_rows
            if r["tool"] == "ptqflow" and (r.get("recommended") or r["section"] == "cls-mem")}
    lo, hi = flat.get(args.flat_lo), flat.get(args.flat_hi)
    if lo and hi and lo.get("peak_mb") and hi.get("peak_mb"):
        v = hi["peak_mb"] / lo["peak_mb"] - 1
        add("statistics", f"ptqflow peak RSS, {args.flat_hi} vs {args.flat_lo} images ({rec_name})", "within ±10 %",
            v, abs(v) <= 0.10, f"{lo['peak_mb']:.0f} → {hi['peak_mb']:.0f} MB")
    else:
        add("statistics", f"ptqflow peak RSS flat {args.flat_lo} → {args.flat_hi} images", "within ±10 %", None, None,
            "not run" if args.no_flat else "rows failed")
    # latency
    lat_rows = [r for r in ours_cpu if r.get("lat_ratio") is not None]
    if lat_rows:
        w = max(lat_rows, key=lambda r: r["lat_ratio"])
        add("latency", "cls, batch 1, 1 thread: slowest ptqflow CPU row / FP32", "≤ 1.0", w["lat_ratio"],
            w["lat_ratio"] <= 1.0, f"{w['tag']}: {w['lat_ms']:.3f} ms vs FP32 {main[0].get('lat_ms', float('nan')):.3f} ms"
            + ("" if lat_noise is None else f"; noise floor: a 2nd FP32 session measured {lat_noise:.3f}× FP32"))
    if rec and rec.get("lat_ratio") is not None:
        add("latency", "cls, recommended setting / FP32", "≤ 1.0", rec["lat_ratio"], rec["lat_ratio"] <= 1.0)
    if rec_rows:
        rr = [r for r in rec_rows if r["tool"] == "ptqflow" and r.get("lat_ratio") is not None]
        if rr:
            best = min(rr, key=lambda r: r["lat_ratio"])
            recm = next((r for r in rr if r.get("method") == m), best)
            add("latency", f"rec (conv/GEMM heavy), {recm['tag']} / FP32", "≤ 0.7", recm["lat_ratio"],
                recm["lat_ratio"] <= 0.7, f"{recm['lat_ms']:.2f} ms vs FP32 {rec_rows[0]['lat_ms']:.2f} ms; "
                f"text agreement {recm.get('text_agree', float('nan')):.3f}")
        else:
            add("latency", "rec (conv/GEMM heavy) / FP32", "≤ 0.7", None, None, "ptqflow rec row failed")
    # other targets
    for t in OTHER_TARGETS:
        r = next((r for r in main if r["tool"] == "ptqflow" and r.get("target") == t and r.get("method") == m
                  and r.get("per_channel") == pc), None)
        if r is None:
            continue
        others = [o for o in main if o["tool"] == "ptqflow" and o.get("target") == t and o is not r
                  and o.get("delta_pts") is not None]
        probs = r.get("rule_problems")
        add("targets", f"{t}: target rules (audit.check_target_rules)", "0 problems",
            None if probs is None else len(probs), None if probs is None else not probs,
            "; ".join(probs[:3]) if probs else ("" if probs is not None else r.get("notes", "")))
        v = r.get("delta_pts")
        add("targets", f"{t}: accuracy in onnxruntime CPU vs FP32 ({rec_name})", "≥ −1 point", v,
            None if v is None else v >= -1 - 1e-9,
            "; ".join(f"{o['method']}: {o['delta_pts']:+.1f}" for o in others))
    if nncf is not None and nncf.get("acc") is not None and rec and rec.get("acc") is not None:
        add("info", f"recommended vs NNCF's best ({nncf['tag']}: {nncf['acc']:.3f})", "(info)",
            100 * (rec["acc"] - nncf["acc"]), None, discordance(rec, nncf, "NNCF"))
    return T


def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def _int8_text(r):
    i = r.get("int8")
    if not i or "error" in i:
        return "—"
    return f"{i['int8_kernels']} / {i['float_compute']}"


def cls_table(rows: list[dict]) -> str:
    head = ["tool", "method / setting", "acc", "Δ pts", "quantize s", "peak RSS MB", "lat ms", "× FP32", "size KB",
            "int8 / float kernels", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = ("**" + r["label"] + "** (recommended)") if r.get("recommended") else r["label"]
        if r.get("acc") is None:
            out.append("| " + " | ".join([r["tool"], label] + ["—"] * (len(head) - 3)
                                         + [f"**{r['status']}**: {r['notes']}"]) + " |")
            continue
        notes = r.get("notes", "")
        if r["tool"] == "ptqflow":
            extra = []
            if r.get("layers_total"):
                extra.append(f"{r['layers_int8']}/{r['layers_total']} weighted layers int8")
            if r.get("kept_float_reasons"):
                extra.append("kept float: " + ", ".join(f"{k} ×{v}" for k, v in r["kept_float_reasons"].items()))
            if r.get("rule_problems"):
                extra.append(f"{len(r['rule_problems'])} target-rule problems")
            notes = "; ".join([n for n in [notes] + extra if n])
        cells = [r["tool"], label, _f(r.get("acc"), ".3f"), _f(r.get("delta_pts"), "+.1f"), _f(r.get("quant_s"), ".2f"),
                 _f(r.get("peak_mb"), ".0f"), _f(r.get("lat_ms"), ".3f"), _f(r.get("lat_ratio"), ".2f"),
                 _f(r.get("size_bytes", 0) / 1024, ".0f"), _int8_text(r), notes]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def mem_table(rows: list[dict], args) -> str:
    pts = [r for r in rows if r["tool"] == "ptqflow" and (r["section"] == "cls-mem" or r.get("recommended"))]
    pts.sort(key=lambda r: r.get("n_calib", 0))
    out = ["| calibration images | convert wall s | peak RSS MB | RSS after imports MB | accuracy |", "|---|---|---|---|---|"]
    for r in pts:
        out.append(f"| {r.get('n_calib')} | {_f(r.get('quant_s'), '.1f')} | {_f(r.get('peak_mb'), '.0f')} | "
                   f"{_f(r.get('base_rss_mb'), '.0f')} | {_f(r.get('acc'), '.3f')} |")
    return "\n".join(out)


def rec_table(rows: list[dict]) -> str:
    head = ["tool", "setting", "cos mean", "cos min", "text agree", "quantize s", "peak RSS MB", "lat ms", "× FP32",
            "size KB", "int8 / float kernels", "notes"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("cos_mean") is None:
            out.append("| " + " | ".join([r["tool"], r["label"]] + ["—"] * (len(head) - 3)
                                         + [f"**{r['status']}**: {r['notes']}"]) + " |")
            continue
        notes = r.get("notes", "")
        if r.get("layers_total"):
            notes = "; ".join(n for n in [notes, f"{r['layers_int8']}/{r['layers_total']} weighted layers int8"] if n)
        out.append("| " + " | ".join([r["tool"], r["label"], _f(r["cos_mean"], ".5f"), _f(r["cos_min"], ".5f"),
                                      _f(r.get("text_agree"), ".3f"), _f(r.get("quant_s"), ".2f"), _f(r.get("peak_mb"), ".0f"),
                                      _f(r.get("lat_ms"), ".2f"), _f(r.get("lat_ratio"), ".2f"),
                                      _f(r.get("size_bytes", 0) / 1024, ".0f"), _int8_text(r), notes]) + " |")
    return "\n".join(out)


def targets_table(T: list[dict]) -> str:
    out = ["| group | check | target | value | pass | detail |", "|---|---|---|---|---|---|"]
    for t in T:
        v = t["value"]
        vs = "—" if v is None else (f"{v:+.2f}" if "point" in t["target"] or t["target"] == "(info)"
                                   else f"{v:+.1%}" if "%" in t["target"] else f"{v:.3g}")
        p = "—" if t["pass"] is None else ("PASS" if t["pass"] else "**FAIL**")
        out.append(f"| {t['group']} | {t['what']} | {t['target']} | {vs} | {p} | {t['detail']} |")
    return "\n".join(out)


def profile_section(rows: list[dict], feeds: dict) -> tuple[str, dict]:
    """ORT profiler (batch 1, one thread), by op type, for FP32, the recommended ptqflow row and ORT's best."""
    picks = [rows[0]]
    rec = next((r for r in rows if r.get("recommended") and r.get("acc") is not None), None)
    if rec:
        picks.append(rec)
    ort_best = _best([r for r in rows if r["section"] == "cls"], lambda r: r["tool"] == "ORT")
    if ort_best:
        picks.append(ort_best)
    profs = {}
    for r in picks:
        try:
            profs[r["label"]] = profile_ops(r["path"], feeds)
        except Exception as e:  # noqa: BLE001
            profs[r["label"]] = {"error": repr(e)[:200]}
    ops = []
    for p in profs.values():
        for k in p.get("by_op", {}):
            if k not in ops:
                ops.append(k)
    head = ["op type"] + list(profs)
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out.append("| **total kernel µs / run** | " + " | ".join(_f(p.get("total_us"), ".0f") for p in profs.values()) + " |")
    for op in ops[:16]:
        out.append(f"| {op} | " + " | ".join(_f(p.get("by_op", {}).get(op), ".0f") for p in profs.values()) + " |")
    return "\n".join(out), profs


def environment() -> dict:
    """Versions, CPU and git state printed above the tables."""
    return harness.environment(("onnx", "onnxruntime", "nncf", "rapidocr-onnxruntime", "numpy", "pillow", "opencv-python", "ptqflow"))


def render(cmd, env, cls, digits, rec, T, prof_md, wall, args) -> str:
    L = ["# FULL_QUANT benchmark", "", "```", cmd, "```", "",
         f"{env['date']} · git {env['git']} · {env['cpu']} ({env['cores']} cores, shared) · Python {env['python']} · "
         + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v) + f" · total wall {wall:.0f} s", ""]
    m, pc = args.recommended
    L += [f"Recommended setting (README): `activation_quant_method={m}`, `per_channel={'true' if pc else 'false'}`, "
          "`bias_correction=true` (default), `target_device=CPU`.", "",
          "**quantize s**: wall time of the quantization call in a fresh process (ptqflow: the whole `convert(..., "
          "use_flow=False)`, statistics serial in-process; ORT: `quantize_static` including reading and preprocessing "
          "the calibration images, plus `quant_pre_process` where listed; NNCF: `nncf.quantize` + save). **peak RSS**: "
          "VmHWM of that process (imports included). **lat**: median of interleaved rounds, batch 1, "
          "`intra_op_num_threads=1`, ORT_ENABLE_ALL. **int8 / float kernels**: integer kernels (QLinear*, QGemm, "
          "MatMulInteger*) vs float Conv/Gemm/MatMul left in ORT's optimized graph (CPU EP, extended). All ORT rows use "
          "U8S8 (`activation_type=QUInt8, weight_type=QInt8`, `reduce_range=False`: this CPU has AVX512-VNNI), QDQ.", ""]
    T_md = targets_table(T)
    L += ["## Targets (issue)", "", T_md, ""]
    if cls:
        rows, meta = cls
        eq = meta["calib_equality"]
        st = meta["data"].get("stats", {})
        L += ["## PP-OCR text-direction classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx)", "",
              f"Eval: {meta['n_eval']} rendered English text lines (half rotated 180°), preprocessed by rapidocr 1.4.4's "
              f"own `TextClassifier.resize_norm_img` (BGR, 48×192). Calibration: first {meta['n_calib']} of "
              f"`{meta['calib_dir']}/` (48×192 PNGs, disjoint sentences), fed to ptqflow as an IMAGE folder "
              f"(`image_to_format=BGR`, `normalize_mean=normalize_std=[127.5]*3`, `--inputShape={CLS_SHAPE}`) and to "
              f"ORT/NNCF through rapidocr's preprocessing. Line aspect ratios "
              f"{st.get('eval', {}).get('aspect_min', 0):.2f}–{st.get('eval', {}).get('aspect_max', 0):.2f} (> 4, so "
              "rapidocr pads nothing and the IMAGE pipeline can reproduce its tensor). ptqflow's tensors vs rapidocr's on "
              f"all {eq['n']} calibration images: pixels identical {eq['pixels_identical']}/{eq['n']}, max |Δ| "
              f"{eq['max_abs_diff']:.2g} (float32 rounding of (x−127.5)/127.5 vs (x/255−0.5)/0.5), "
              f"{'OK' if eq['ok'] else '**MISMATCH**'}.", "", cls_table([r for r in rows if r["section"] == "cls"]), "",
              "### ptqflow memory vs calibration-set size", "", mem_table(rows, args), ""]
        if prof_md:
            L += ["### Where the time goes (ORT profiler, batch 1, one thread, µs per run by op type)", "", prof_md, ""]
    if digits:
        L += ["## Digits example (examples/digits)", "",
              "Eval split `examples/digits/eval.npz` (360 images); calibration: the 64 BIN files of `examples/digits/bin`.",
              "", cls_table(digits), ""]
    if rec:
        rows, meta = rec
        L += ["## Conv/GEMM-heavy model: PP-OCRv4 recognizer (ch_PP-OCRv4_rec_infer.onnx)", "",
              f"Calibration: {meta['calib_samples']} upright lines that fit 48×320, rapidocr's rec preprocessing, as BIN. "
              f"Agreement on {meta['eval_lines']} upright evaluation lines at their own width (rapidocr's preprocessing): "
              "output cosine vs FP32 and identical CTC-decoded text. Latency input 1×3×48×320.", "", rec_table(rows), ""]
    return "\n".join(L)


def _public(obj):
    """Drop private keys (per-image arrays) before writing JSON."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_public(v) for v in obj]
    return obj


# =========================================================================== main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=str(HERE / "work"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--cls-root", default=None, help="dataset folder (default work/cls; --quick: work/cls_quick)")
    ap.add_argument("--calib", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=3000)
    ap.add_argument("--flat-lo", type=int, default=100)
    ap.add_argument("--flat-hi", type=int, default=1000)
    ap.add_argument("--no-flat", action="store_true", help="skip the 100/1000-image memory rows")
    ap.add_argument("--recommended", default=DEFAULT_RECOMMENDED, help="METHOD:pc|pt (default %(default)s)")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--skip-nncf", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--skip-rec", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--rec-calib", type=int, default=32)
    ap.add_argument("--rec-eval", type=int, default=40)
    ap.add_argument("--lat-rounds", type=int, default=5)
    ap.add_argument("--lat-iters", type=int, default=40)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per quantization child")
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 calib / 300 eval images, fewer ORT rows")
    ap.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    m, _, g = args.recommended.partition(":")
    if m not in OUR_METHODS or g not in ("pc", "pt", ""):
        ap.error("--recommended must be MAX_MIN|KL|REMOVAL_OUTLIER[:pc|:pt]")
    args.recommended = (m, g != "pt")
    if args.quick:
        args.calib, args.eval_images, args.flat_lo, args.flat_hi = 100, 300, 50, 200
        args.lat_rounds, args.lat_iters, args.rec_calib, args.rec_eval = 3, 20, 8, 12
    if args.cls_root is None:
        args.cls_root = str(Path(args.workdir) / ("cls_quick" if args.quick else "cls"))
    if args.eval_images < 1000 and not args.quick:
        print("note: the issue asks for >= 1000 evaluation images", flush=True)

    t_start = time.perf_counter()
    exe = Path(sys.executable)
    exe_s = os.path.relpath(exe, ROOT) if str(exe).startswith(str(ROOT)) else str(exe)
    given = sys.argv[1:] if argv is None else list(argv)
    cmd = shlex.join([exe_s, os.path.relpath(Path(__file__).resolve(), ROOT), *given])
    ours_ok, ours_why = (False, "--no-ours") if args.no_ours else ptqflow_available()
    print(f"ptqflow: {'available' if ours_ok else 'not available (' + ours_why + ')'}", flush=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    print("== classifier", flush=True)
    cls = bench_cls(args, work, ours_ok, ours_why)
    print(cls_table([r for r in cls[0] if r["section"] == "cls"]), flush=True)
    prof_md, profs = "", {}
    if not args.no_profile:
        import ocr_cls_data

        x, _ = ocr_cls_data.load_eval(Path(args.cls_root))
        prof_md, profs = profile_section(cls[0], {"x": np.ascontiguousarray(x[:1])})
    digits = None
    if not args.skip_digits:
        print("== digits", flush=True)
        digits = bench_digits(args, work, ours_ok, ours_why)
        print(cls_table(digits), flush=True)
    rec = None
    if not args.skip_rec:
        print("== rec", flush=True)
        rec = bench_rec(args, work, ours_ok, ours_why)
        print(rec_table(rec[0]), flush=True)
    T = check_targets(cls[0], rec[0] if rec else None, args, cls[1].get("lat_noise"))
    wall = time.perf_counter() - t_start
    env = environment()
    md = render(cmd, env, cls, digits, rec, T, prof_md, wall, args)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = "full_quant_quick" if args.quick else "full_quant"
    (res / f"{stem}.md").write_text(md + "\n")
    raw = {"command": cmd, "environment": env, "wall_s": wall, "targets": T,
           "recommended": {"method": args.recommended[0], "per_channel": args.recommended[1]},
           "cls": {"rows": cls[0], "meta": cls[1]}, "profile": profs, "digits": digits,
           "rec": {"rows": rec[0], "meta": rec[1]} if rec else None}
    (res / f"{stem}.json").write_text(json.dumps(_public(raw), indent=1, default=repr) + "\n")
    print("\n" + md)
    print(f"\nwrote {res / (stem + '.md')} and {res / (stem + '.json')} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
