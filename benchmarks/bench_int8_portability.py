"""Int8 models that are right on every CPU: the weight forms measured, kernels and whole models, one run.

    .venv-bench/bin/python benchmarks/bench_int8_portability.py           # full run (`make bench`)
    .venv-bench/bin/python benchmarks/bench_int8_portability.py --quick   # smoke run

onnxruntime's x86 u8 x s8 kernels saturate pairs of products in int16 on CPUs without VNNI
(ptq_core/onnxgraph/cpu.py, docs/int8-portability.md). This benchmark measures, on the machine it runs on
(its ISA is printed with every table):

1. **Kernels.** ``MatMulInteger`` 128x384 @ 384x384 and ``QLinearConv`` 64->64 3x3 on 1x64x56x56, for
   each weight scheme: uint8 act x int8 weights over the full range (what ``int8_form=vnni`` writes),
   x int8 weights in [-64, 64] (``portable``, the default; onnxruntime's ``reduce_range`` grid),
   uint8 x uint8 (U8U8), int8 x int8 (S8S8): max abs error against exact integer math, and time.
2. **Models**, each scheme against FP32 and against onnxruntime's own quantizer with and without
   ``reduce_range``:
   * PP-OCR text-direction classifier (FULL_QUANT, MAX_MIN per channel, bias correction, every node
     int8: ``latency_guard=false``): accuracy on the labelled set of ``ocr_cls_data.py``;
   * PP-OCRv4 recognizer (same settings, BIN calibration): character accuracy of the CTC-decoded text
     against the rendered text (1 - edit distance / length);
   * all-MiniLM-L6-v2 (DYNAMIC_QUANT ALWC and ACWL): mean cosine of the embeddings against FP32.
   Every model is scored twice: *as run here* (onnxruntime's default optimizations, its int8 kernels)
   and *exact* (the integer math a VNNI or Arm CPU computes: QDQ models with
   ``ORT_DISABLE_ALL``, i.e. DequantizeLinear then float ops; ``MatMulInteger`` rewritten to a
   float64 MatMul of the same codes). The U8U8 rows are the ``vnni`` model with its int8 weight codes
   shifted to uint8 (+128, same grid), so their accuracy equals the vnni model's exact one.
   Latency: batch 1, one thread, interleaved rounds, onnxruntime's default optimizations.

Writes benchmarks/results/int8_portability.md and .json; prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import models  # noqa: E402
import numpy as np  # noqa: E402

REC_SHAPE = (1, 3, 48, 320)
CLS_SHAPE = (1, 3, 48, 192)
# Issue targets: portable default vs the VNNI-only form's exact accuracy, and its latency.
MAX_LOSS = {"cls": 0.001, "rec": 0.002, "minilm": 0.001}
MAX_LAT = 1.05


# =========================================================================== machine
def isa() -> str:
    """CPU model and the ISA flags that decide onnxruntime's int8 kernels."""
    from ptq_core.onnxgraph.cpu import machine_isa

    return machine_isa()


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    return ort


def session(model, exact: bool = False, threads: int | None = 1):
    """A CPU session; ``exact`` turns graph optimizations off (QDQ then runs DequantizeLinear + float ops)."""
    ort = _ort()
    so = harness.session_options(threads)
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])


# =========================================================================== model rewrites
def exact_integer_model(path):
    """The model with every MatMulInteger computed in float64 on the same codes (exact integer math)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    out = []
    for n in m.graph.node:
        if n.op_type != "MatMulInteger":
            out.append(n)
            continue
        a, b = n.input[0], n.input[1]
        azp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        bzp = n.input[3] if len(n.input) > 3 and n.input[3] else None
        p = n.name or n.output[0]
        ins = []
        for src, zp, tag in ((a, azp, "a"), (b, bzp, "b")):
            d = f"{p}_{tag}_f64"
            out.append(helper.make_node("Cast", [src], [d], to=TensorProto.DOUBLE))
            if zp:
                z = f"{p}_{tag}_zp_f64"
                out.append(helper.make_node("Cast", [zp], [z], to=TensorProto.DOUBLE))
                out.append(helper.make_node("Sub", [d, z], [d + "_c"]))
                d = d + "_c"
            ins.append(d)
        acc = f"{p}_acc_f64"
        out.append(helper.make_node("MatMul", ins, [acc]))
        out.append(helper.make_node("Cast", [acc], [n.output[0]], to=TensorProto.INT32))
    del m.graph.node[:]
    m.graph.node.extend(out)
    return m


def to_u8u8(path):
    """The model with every int8 weight read by an integer kernel shifted to uint8 (+128, same grid)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    users: dict[str, list] = {}
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            users.setdefault(x, []).append((n, i))

    shifted: set[str] = set()

    def shift(name):
        if name in shifted:  # a zero point several weights share
            return True
        shifted.add(name)
        t = inits[name]
        a = numpy_helper.to_array(t)
        if a.dtype != np.int8:
            return False
        t.CopyFrom(numpy_helper.from_array((a.astype(np.int16) + 128).astype(np.uint8), name))
        return True

    done = set()
    for n in list(m.graph.node):
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[0] not in done:
            if not any(u.op_type in ("Conv", "MatMul", "Gemm") and i == 1 for u, i in users.get(n.output[0], [])):
                continue
            zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
            if zp is None:
                continue
            if shift(n.input[0]):
                shift(zp)
                done.add(n.input[0])
        elif n.op_type == "MatMulInteger" and n.input[1] in inits and n.input[1] not in done:
            codes = numpy_helper.to_array(inits[n.input[1]])
            if codes.dtype != np.int8:
                continue
            shift(n.input[1])
            done.add(n.input[1])
            if len(n.input) > 3 and n.input[3]:
                shift(n.input[3])
            else:
                zname = n.input[1] + "_u8_zero_point"
                if zname not in inits:
                    t = numpy_helper.from_array(np.uint8(128), zname)
                    m.graph.initializer.append(t)
                    inits[zname] = t
                while len(n.input) < 3:
                    n.input.append("")
                if len(n.input) == 3:
                    n.input.append(zname)
    return m


# =========================================================================== 1. kernels
def kernel_table(iters: int) -> list[dict]:
    from onnx import TensorProto as TP
    from onnx import helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)

    def mk(nodes, inputs, outputs, inits):
        g = helper.make_graph(nodes, "k", inputs, outputs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m

    def sym(wf, axis_max, limit):
        return np.clip(np.round(wf / axis_max * limit), -limit, limit)

    rows = []
    M, K, N = 128, 384, 384
    x8 = rng.integers(0, 256, (M, K)).astype(np.uint8)
    wf = rng.normal(0, 1, (K, N))
    amax = np.abs(wf).max(0)
    full = sym(wf, amax, 127)
    schemes = [("u8 x s8, weights [-127, 127] (int8_form=vnni)", x8, full.astype(np.int8), np.int8(0), np.uint8(0)),
               ("u8 x s8, weights [-64, 64] (portable, default)", x8, sym(wf, amax, 64).astype(np.int8), np.int8(0), np.uint8(0)),
               ("u8 x u8, weights [1, 255] zero point 128 (U8U8)", x8, (full + 128).astype(np.uint8), np.uint8(128), np.uint8(0)),
               ("s8 x s8, weights [-127, 127] (S8S8)", (x8.astype(np.int16) - 128).astype(np.int8), full.astype(np.int8),
                np.int8(0), np.int8(0))]
    sessions = {}
    for name, x, w, wz, xz in schemes:
        xt = TP.UINT8 if x.dtype == np.uint8 else TP.INT8
        m = mk([helper.make_node("MatMulInteger", ["x", "w", "xz", "wz"], ["y"])],
               [helper.make_tensor_value_info("x", xt, [M, K])], [helper.make_tensor_value_info("y", TP.INT32, None)],
               [nh.from_array(w, "w"), nh.from_array(np.array(wz), "wz"), nh.from_array(np.array(xz), "xz")])
        s = session(m)
        y = s.run(None, {"x": x})[0]
        exact = (x.astype(np.int64) - int(xz)) @ (w.astype(np.int64) - int(wz))
        rows.append({"op": f"MatMulInteger {M}x{K} @ {K}x{N}", "scheme": name,
                     "max_abs_err": int(np.abs(y - exact).max()), "max_abs_out": int(np.abs(exact).max())})
        sessions[len(rows) - 1] = (s, {"x": x})
    C, H, O = 64, 56, 64
    xc = rng.integers(0, 256, (1, C, H, H)).astype(np.uint8)
    wc = rng.normal(0, 1, (O, C, 3, 3))
    cmax = np.abs(wc).reshape(O, -1).max(1)[:, None, None, None]
    cfull = sym(wc, cmax, 127)
    conv_schemes = [("u8 x s8, weights [-127, 127] (int8_form=vnni)", cfull.astype(np.int8), np.zeros(O, np.int8)),
                    ("u8 x s8, weights [-64, 64] (portable, default)", sym(wc, cmax, 64).astype(np.int8), np.zeros(O, np.int8)),
                    ("u8 x u8, weights [1, 255] zero point 128 (U8U8)", (cfull + 128).astype(np.uint8), np.full(O, 128, np.uint8))]
    xp = np.pad(xc[0].astype(np.int64), ((0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, i:i + H, j:j + H] for i in range(3) for j in range(3)], 1).reshape(C * 9, H * H)
    for name, w, wz in conv_schemes:
        y_scale = 3000.0
        m = mk([helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])],
               [helper.make_tensor_value_info("x", TP.UINT8, [1, C, H, H])], [helper.make_tensor_value_info("y", TP.UINT8, None)],
               [nh.from_array(w, "w"), nh.from_array(wz, "wz"), nh.from_array(np.uint8(0), "xz"),
                nh.from_array(np.float32(1.0), "xs"), nh.from_array(np.ones(O, np.float32), "ws"),
                nh.from_array(np.float32(y_scale), "ys"), nh.from_array(np.uint8(128), "yz")])
        s = session(m)
        y = s.run(None, {"x": xc})[0].astype(np.int64)
        wi = w.astype(np.int64) - wz.astype(np.int64)[:, None, None, None]
        acc = (wi.reshape(O, C * 9) @ cols).reshape(1, O, H, H)
        exact = np.clip(np.round(acc / y_scale) + 128, 0, 255)
        rows.append({"op": f"QLinearConv {C}->{O} 3x3, 1x{C}x{H}x{H}", "scheme": name,
                     "max_abs_err": int(np.abs(y - exact).max()), "max_abs_out": 255, "unit": "output codes"})
        sessions[len(rows) - 1] = (s, {"x": xc})
    lat = harness.interleaved_latency_ms({k: v[0] for k, v in sessions.items()}, None, rounds=5, warmup=3,
                                         iters=iters, feeds_of={k: v[1] for k, v in sessions.items()})
    for i, ms in lat.items():
        rows[i]["ms"] = ms
    return rows


# =========================================================================== 2. models
def ours(model: Path, cfg_text: str, out: Path, work: Path, input_shape: str = "") -> Path:
    from ptqflow.api import convert

    cfg = work / "cfg" / (out.name + ".cfg")
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(cfg_text)
    t0 = time.perf_counter()
    res = convert(model=str(model), config=str(cfg), output=str(out), input_shape=input_shape, use_flow=False)
    print(f"    {out.name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return Path(res.output_path)


def full_cfg(calib: str, size: int, form: str, image: bool) -> str:
    lines = ["[common_quant_param]", "quant_type=FULL_QUANT", "bit_num=8", "", "[data_preprocess_param]",
             f"calibrate_path={calib}", f"calibrate_size={size}", f"input_type={'IMAGE' if image else 'BIN'}"]
    if image:
        lines += ["image_to_format=BGR", "normalize_mean=[127.5,127.5,127.5]", "normalize_std=[127.5,127.5,127.5]"]
    lines += ["", "[full_quant_param]", "activation_quant_method=MAX_MIN", "per_channel=true", "bias_correction=true",
              "", "[ptqflow]", "latency_guard=false", f"int8_form={form}"]
    return "\n".join(lines) + "\n"


def ort_static(src: Path, dst: Path, tensors: np.ndarray, reduce_range: bool) -> Path:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(tensors)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x[None] if x.ndim == 3 else x}

    tmp = dst.parent / (dst.stem + "_prep")
    tmp.mkdir(parents=True, exist_ok=True)
    m = onnx.version_converter.convert_version(onnx.load(str(src)), 13)
    onnx.save(m, str(tmp / "opset13.onnx"))
    quant_pre_process(str(tmp / "opset13.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(str(tmp / "pre.onnx"), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                    calibrate_method=CalibrationMethod.MinMax)
    return dst


def ort_dynamic(src: Path, dst: Path, reduce_range: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return dst


def variants(rows: list[dict], vnni_path: Path, work: Path, tag: str) -> None:
    """Adds the U8U8 row derived from the vnni model."""
    import onnx

    p = work / "out" / f"{tag}_u8u8.onnx"
    onnx.save(to_u8u8(vnni_path), str(p))
    rows.append({"label": "U8U8: vnni model, weights shifted to uint8 (same grid)", "path": str(p), "scheme": "u8u8"})


def score_rows(rows: list[dict], score, dynamic: bool) -> None:
    """score(session) -> float, as run here and exact; and the int8 weights that saturate without VNNI."""
    import onnx

    from ptq_core.onnxgraph.cpu import integer_weights, saturating_weights

    for r in rows:
        if r.get("scheme") != "fp32":
            m = onnx.load(r["path"])
            r["int8_weights"] = len(integer_weights(m))
            r["saturating"] = len(saturating_weights(m))
        print(f"    scoring {r['label']} ...", flush=True)
        r["acc_here"] = score(session(r["path"], threads=None))
        if r.get("scheme") == "fp32":
            r["acc_exact"] = r["acc_here"]
        elif dynamic:
            r["acc_exact"] = score(session(exact_integer_model(r["path"]), threads=None))
        else:
            r["acc_exact"] = score(session(r["path"], exact=True, threads=None))
        r["size_bytes"] = harness.file_size(r["path"])


def latency(rows: list[dict], feeds: dict, iters: int, rounds: int = 10, repeats: int = 3) -> float:
    """Interleaved medians, ``repeats`` times over (the median of the repeats is kept, per row); returns the
    noise floor (a second FP32 session / the first). Also records the int8 kernels onnxruntime runs."""
    import statistics

    from ptq_core.modes.full.audit import fused_ops

    sessions = {i: session(r["path"], threads=1) for i, r in enumerate(rows)}
    sessions["fp32-again"] = session(rows[0]["path"], threads=1)
    runs = [harness.interleaved_latency_ms(sessions, feeds, rounds=rounds, warmup=3, iters=iters)
            for _ in range(repeats)]
    lat = {k: statistics.median(run[k] for run in runs) for k in sessions}
    noise = lat.pop("fp32-again") / lat[0]
    for i, ms in lat.items():
        rows[i]["lat_ms"] = ms
        rows[i]["lat_ratio"] = ms / lat[0]
        rows[i]["lat_repeats_ms"] = [run[i] for run in runs]
        with open(rows[i]["path"], "rb") as fh:
            rows[i]["kernels"] = dict(sorted(fused_ops(fh.read()).items()))
    rows[0]["noise"] = noise
    return noise


def bench_cls(args, work: Path) -> list[dict]:
    import ocr_cls_data

    root = Path(args.cls_root)
    ocr_cls_data.build(root, n_calib=max(args.calib, 1000), n_eval=args.cls_eval, seed=0)
    x, y = ocr_cls_data.load_eval(root)
    fp32 = models.rapidocr_models()["cls"]
    calib = f"x:{(root / 'calib').resolve()}"
    out = work / "out"
    rows = [{"label": "FP32", "path": str(fp32), "scheme": "fp32"}]
    for form in ("portable", "vnni"):
        p = ours(fp32, full_cfg(calib, args.calib, form, True), out / f"cls_{form}", work,
                 input_shape="x:" + ",".join(map(str, CLS_SHAPE)))
        rows.append({"label": f"ptqflow int8_form={form}" + (" (default)" if form == "portable" else ""),
                     "path": str(p), "scheme": form})
    variants(rows, Path(rows[-1]["path"]), work, "cls")
    cal = ocr_cls_data.calib_tensors(root, args.calib)
    for rr in (False, True):
        p = ort_static(fp32, out / f"cls_ort_rr{int(rr)}.onnx", cal, rr)
        rows.append({"label": f"ORT quantize_static MinMax per-channel, reduce_range={rr}", "path": str(p),
                     "scheme": f"ort-rr{int(rr)}"})

    def score(s):
        pred = np.concatenate([s.run(None, {"x": x[i:i + 50]})[0] for i in range(0, len(x), 50)]).argmax(-1)
        return float((pred == y).mean())

    score_rows(rows, score, dynamic=False)
    latency(rows, {"x": x[:1]}, args.lat_iters)
    return rows


def _edit(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def bench_rec(args, work: Path) -> list[dict]:
    from bench_full_quant import _ctc, rec_calibration, rec_eval_lines

    fp32 = models.rapidocr_models()["rec"]
    out = work / "out"
    bindir = work / "rec_calib"
    tensors = rec_calibration(bindir, args.rec_calib)
    lines, texts = rec_eval_lines(args.rec_eval)
    chars = ["blank"] + harness.make_session(fp32).get_modelmeta().custom_metadata_map.get("character", "").splitlines() + [" "]
    rows = [{"label": "FP32", "path": str(fp32), "scheme": "fp32"}]
    for form in ("portable", "vnni"):
        cfg = full_cfg(f"x:{bindir.resolve()}", args.rec_calib, form, False)
        p = ours(fp32, cfg, out / f"rec_{form}", work, input_shape="x:" + ",".join(map(str, REC_SHAPE)))
        rows.append({"label": f"ptqflow int8_form={form}" + (" (default)" if form == "portable" else ""),
                     "path": str(p), "scheme": form})
    variants(rows, Path(rows[-1]["path"]), work, "rec")
    cal = np.concatenate(tensors)
    for rr in (False, True):
        p = ort_static(fp32, out / f"rec_ort_rr{int(rr)}.onnx", cal, rr)
        rows.append({"label": f"ORT quantize_static MinMax per-channel, reduce_range={rr}", "path": str(p),
                     "scheme": f"ort-rr{int(rr)}"})

    def score(s):
        errs = total = 0
        for t, truth in zip(lines, texts):
            got = _ctc(s.run(None, {"x": t})[0], chars)
            errs += _edit(got, truth)
            total += len(truth)
        return 1.0 - errs / total

    score_rows(rows, score, dynamic=False)
    latency(rows, {"x": tensors[0].reshape(REC_SHAPE)}, max(3, args.lat_iters // 4))
    return rows


def bench_minilm(args, work: Path) -> list[dict]:
    out = work / "out"
    fp32 = models.export_minilm(work)
    batch = models.tokenize(models.sentences(args.sentences), seq_len=models.MINILM_SEQ_LEN)
    ref = harness.embed(fp32, batch, threads=None)
    all_rows = []
    for strategy in ("ALWC", "ACWL"):
        rows = [{"label": "FP32", "path": str(fp32), "scheme": "fp32"}]
        for form in ("portable", "vnni"):
            cfg = (f"[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n\n[dynamic_quant_param]\n"
                   f"quant_strategy={strategy}\n\n[ptqflow]\nint8_form={form}\n")
            p = ours(fp32, cfg, out / f"minilm_{strategy}_{form}", work)
            rows.append({"label": f"ptqflow {strategy} int8_form={form}" + (" (default)" if form == "portable" else ""),
                         "path": str(p), "scheme": form})
        variants(rows, Path(rows[-1]["path"]), work, f"minilm_{strategy}")
        if strategy == "ALWC":
            for rr in (False, True):
                p = ort_dynamic(fp32, out / f"minilm_ort_rr{int(rr)}.onnx", rr)
                rows.append({"label": f"ORT quantize_dynamic per-channel, reduce_range={rr}", "path": str(p),
                             "scheme": f"ort-rr{int(rr)}"})

        def score(s):
            emb = []
            for i in range(0, len(batch["input_ids"]), 32):
                feeds = {k: v[i:i + 32] for k, v in batch.items()}
                emb.append(harness.mean_pool(s.run(None, feeds)[0], feeds["attention_mask"]))
            return float(harness.cosine_rows(ref, np.concatenate(emb)).mean())

        score_rows(rows, score, dynamic=True)
        latency(rows, {k: np.ascontiguousarray(v[:1]) for k, v in batch.items()}, args.lat_iters)
        for r in rows:
            r["strategy"] = strategy
        all_rows += rows
    return all_rows


# =========================================================================== report
def check(name: str, rows: list[dict], key: str) -> list[dict]:
    by = {r["scheme"]: r for r in rows}
    p, v = by.get("portable"), by.get("vnni")
    if not p or not v:
        return []
    loss = v["acc_exact"] - p["acc_here"]
    lat = p["lat_ms"] / v["lat_ms"]
    return [{"check": f"{name}: accuracy loss of portable (as run here) vs vnni's exact integer math <= {MAX_LOSS[key]}",
             "value": f"{loss:+.4f}", "ok": loss <= MAX_LOSS[key]},
            {"check": f"{name}: portable latency / vnni latency <= {MAX_LAT} (FP32 noise floor {rows[0]['noise']:.3f})",
             "value": f"{lat:.3f}", "ok": lat <= MAX_LAT},
            {"check": f"{name}: int8 weights that saturate without VNNI, portable (vnni)",
             "value": f"{p['saturating']} of {p['int8_weights']} ({v['saturating']} of {v['int8_weights']})",
             "ok": p["saturating"] == 0 and p["int8_weights"] > 0},
            {"check": f"{name}: portable and vnni run the same onnxruntime kernels (op counts after its optimizer)",
             "value": "same" if p["kernels"] == v["kernels"] else "differ", "ok": p["kernels"] == v["kernels"]},
            {"check": f"{name} (context): loss of portable vs vnni, both in exact integer math; "
                      f"portable vs U8U8 (vnni's grid, exact kernels), both as run here",
             "value": f"{v['acc_exact'] - p['acc_exact']:+.4f}; "
                      + (f"{by['u8u8']['acc_here'] - p['acc_here']:+.4f}" if "u8u8" in by else "-"), "ok": True}]


def model_table(title: str, rows: list[dict], metric: str) -> str:
    base = rows[0]
    out = [f"### {title}", "", f"| model | {metric}, as run here | {metric}, exact integer math | int8 weights saturating "
           "without VNNI | size | latency ms (1 thread) | vs FP32 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        sat = f"{r['saturating']} of {r['int8_weights']}" if "saturating" in r else "-"
        out.append(f"| {r['label']} | {r['acc_here']:.4f} | {r['acc_exact']:.4f} | {sat} | "
                   f"{r['size_bytes'] / base['size_bytes']:.3f}x | {r['lat_ms']:.2f} | {r['lat_ratio']:.3f}x |")
    out.append(f"\nLatency noise floor (a second FP32 session / the first): {base['noise']:.3f}")
    return "\n".join(out) + "\n"


def render(cmd: str, machine: str, kernels: list[dict], sections: dict, checks: list[dict], wall: float) -> str:
    import onnxruntime

    md = ["# Int8 portability benchmark", "", f"Command: `{cmd}`  ", f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"wall {wall / 60:.1f} min  ", f"Machine (ISA): **{machine}**, onnxruntime {onnxruntime.__version__}, 2 shared cores", "",
          "## Kernels", "", "| op | scheme | max abs error vs exact | largest exact value | ms (median, 1 thread) |",
          "|---|---|---|---|---|"]
    for r in kernels:
        md.append(f"| {r['op']} | {r['scheme']} | {r['max_abs_err']}{' codes' if r.get('unit') else ''} | {r['max_abs_out']} | {r['ms']:.3f} |")
    md += ["", "## Models", ""]
    for title, (rows, metric) in sections.items():
        md.append(model_table(title, rows, metric))
    md += ["## Targets", "", "| check | value | ok |", "|---|---|---|"]
    md += [f"| {c['check']} | {c['value']} | {'yes' if c['ok'] else 'NO'} |" for c in checks]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workdir", default=str(HERE / "work" / "int8"))
    ap.add_argument("--cls-root", default=str(HERE / "work" / "cls"))
    ap.add_argument("--calib", type=int, default=200)
    ap.add_argument("--cls-eval", type=int, default=1000)
    ap.add_argument("--rec-calib", type=int, default=100)
    ap.add_argument("--rec-eval", type=int, default=600)
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--lat-iters", type=int, default=20)
    ap.add_argument("--only", choices=("kernels", "cls", "rec", "minilm"), action="append")
    args = ap.parse_args(argv)
    if args.quick:
        args.calib, args.cls_eval, args.rec_calib, args.rec_eval, args.sentences, args.lat_iters = 50, 300, 30, 60, 64, 5
    work = Path(args.workdir)
    (work / "out").mkdir(parents=True, exist_ok=True)
    only = set(args.only or ("kernels", "cls", "rec", "minilm"))
    t0 = time.perf_counter()
    machine = isa()
    print(f"machine: {machine}", flush=True)
    kernels = kernel_table(max(5, args.lat_iters)) if "kernels" in only else []
    sections, checks = {}, []
    if "cls" in only:
        print("OCR classifier ...", flush=True)
        rows = bench_cls(args, work)
        sections["PP-OCR text-direction classifier, FULL_QUANT (accuracy)"] = (rows, "accuracy")
        checks += check("classifier", rows, "cls")
    if "rec" in only:
        print("PP-OCR recognizer ...", flush=True)
        rows = bench_rec(args, work)
        sections["PP-OCRv4 recognizer, FULL_QUANT (character accuracy)"] = (rows, "char accuracy")
        checks += check("recognizer", rows, "rec")
    if "minilm" in only:
        print("MiniLM ...", flush=True)
        rows = bench_minilm(args, work)
        for strategy in ("ALWC", "ACWL"):
            part = [r for r in rows if r["strategy"] == strategy]
            sections[f"all-MiniLM-L6-v2, DYNAMIC_QUANT {strategy} (mean cosine vs FP32)"] = (part, "cosine")
            checks += check(f"MiniLM {strategy}", part, "minilm")
    wall = time.perf_counter() - t0
    cmd = "python benchmarks/bench_int8_portability.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    md = render(cmd.strip(), machine, kernels, sections, checks, wall)
    res = HERE / "results"
    suffix = "_quick" if args.quick else ""
    (res / f"int8_portability{suffix}.md").write_text(md)
    (res / f"int8_portability{suffix}.json").write_text(json.dumps(
        {"machine": machine, "kernels": kernels, "sections": {k: v[0] for k, v in sections.items()}, "checks": checks},
        indent=1, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
