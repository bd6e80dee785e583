"""ONNX Runtime's and NNCF's quantizers on the zoo's models, beside ptqflow's cells (bench_zoo.py calls this).

Each peer runs as a user runs it, in its own process (a crash or a hang is a cell, not the end of the run):

* ORT ``quantize_static``: QDQ, MinMax, per channel, U8S8 with ``reduce_range=False`` (ORT's defaults
  for QDQ), calibrated on the same 24 photograph tensors ptqflow reads; once on the file as shipped and
  once after ``quant_pre_process`` (ORT's recommended first step).
* ORT ``quantize_dynamic``: int8 weights (its defaults), raw and pre-processed, on every model.
* NNCF ``nncf.quantize`` with its defaults on the same 24 tensors, on the CNNs.

Each cell: whether it produced a model that plain onnxruntime runs (else its error's last line), size
ratio, accuracy on the evaluation inputs (mean photo cosine on 8 held-out crops; for silero-vad, the
largest speech-probability difference on synthesized audio), and latency against FP32 (batch 1, one
thread, interleaved medians). ptqflow's own cells get the same latency figure here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

PEERS = ("ORT static", "ORT static + pre_process", "NNCF", "ORT dynamic", "ORT dynamic + pre_process")


def _child(spec: dict) -> dict:
    """In the child process: one peer quantization; returns what happened."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    tool, src, out = spec["tool"], spec["model"], spec["output"]
    with tempfile.TemporaryDirectory(prefix="zoo-peer-") as tmp:
        if tool.endswith("pre_process"):
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = str(Path(tmp) / "pre.onnx")
            quant_pre_process(src, pre)
            src = pre
        if tool.startswith("ORT dynamic"):
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(src, out, weight_type=QuantType.QInt8)
            return {"ok": True}
        data = [dict(np.load(f)) for f in spec["calib"]]
        if tool == "NNCF":
            import nncf
            import onnx

            onnx.save(nncf.quantize(onnx.load(src), nncf.Dataset(data), subset_size=len(data)), out)
            return {"ok": True}
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(data)

            def get_next(self):
                return next(self.items, None)

        quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return {"ok": True}


def run_peer(tool: str, model: Path, calib: list[Path], out: Path, timeout: int = 900) -> dict:
    spec = {"tool": tool, "model": str(model), "output": str(out), "calib": [str(c) for c in calib]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    if result.get("ok") and not out.exists():
        result = {"ok": False, "error": "no model written"}
    return result


def latency_ratio(fp32: Path, candidate: Path, feeds: dict) -> float:
    """candidate / FP32 latency: batch 1, one thread, medians of interleaved rounds."""
    ms = harness.interleaved_latency_ms({"fp32": harness.make_session(fp32), "q": harness.make_session(candidate)},
                                        feeds, rounds=6, warmup=3, iters=10)
    return ms["q"] / ms["fp32"]


def photo_cosine(fp32: Path, candidate: Path, feeds: list[dict]) -> float:
    s0, s1 = harness.make_session(fp32), harness.make_session(candidate)
    return float(np.mean([np.mean([harness.cosine(x, y) for x, y in zip(s0.run(None, f), s1.run(None, f))])
                          for f in feeds]))


def save_feeds(feeds: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(feeds):
        path = folder / f"{i:03d}.npz"
        np.savez(path, **f)
        paths.append(path)
    return paths


if __name__ == "__main__":
    try:
        print(json.dumps(_child(json.loads(sys.argv[1]))))
    except BaseException as exc:  # noqa: BLE001  (the cell records it)
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        print(json.dumps({"ok": False, "error": last[:300]}))
