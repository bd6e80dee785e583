"""Calibration speed and memory: ``ptq convert`` (FULL_QUANT) vs ONNX Runtime's ``quantize_static``, in one run.

    .venv-bench/bin/python benchmarks/bench_calibration_speed.py                 # 200 and 1000 files
    .venv-bench/bin/python benchmarks/bench_calibration_speed.py --sizes 200     # one size

Model: the PP-OCRv4 text recognizer ``ch_PP-OCRv4_rec_infer.onnx`` (rapidocr-onnxruntime 1.4.4 wheel).
Calibration set: N rendered text lines (``bench_full_quant.rec_calibration``), as float32 BIN files of
1x3x48x320.

* ptqflow: the whole ``ptq convert`` command as a user runs it (per_channel=true, bias_correction=true;
  MAX_MIN, KL, REMOVAL_OUTLIER), each in a fresh PTQFLOW_HOME (empty caches) whose resident Prefect
  server was started before the timing (``ptq server start``; a user's server is already up after
  their first run), and stopped after it.
* ONNX Runtime: ``quantize_static`` with MinMax, per_channel=True, QDQ, u8 activations / s8 weights,
  on the model as shipped, reading the same files through a streaming CalibrationDataReader, in a
  fresh process (wall time of the process, imports included, as for ``ptq``).

Peak memory: the largest sum of PSS (proportional set size) over the processes doing the work, sampled
every 250 ms (RSS every 50 ms): for ptqflow the ``ptq`` process and the warm runner's child with their descendants, for ORT
its process. PSS, because the runner's child is forked and shares the runner's imported libraries
(counted whole in each RSS); the table gives the RSS sum as well. Ratios are ptqflow / ORT MinMax at the same N, measured in the same run: ORT runs before and after
ptqflow, and the better of its two runs is the anchor.

Writes benchmarks/results/calibration_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bench_full_quant as bfq  # noqa: E402
import harness  # noqa: E402
import models  # noqa: E402
import psutil  # noqa: E402

PTQ = Path(sys.executable).parent / "ptq"
METHODS = ("MAX_MIN", "KL", "REMOVAL_OUTLIER")
BOUNDS = {"MAX_MIN": 0.8, "KL": 1.2, "REMOVAL_OUTLIER": None}
RSS_BOUND = 0.5
ORT_CODE = """
import sys, numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
model, out, listing = sys.argv[1:4]
files = open(listing).read().split()
class Reader(CalibrationDataReader):
    def __init__(self): self.i = 0
    def get_next(self):
        if self.i >= len(files): return None
        self.i += 1
        return {"x": np.fromfile(files[self.i - 1], dtype="<f4").reshape(1, 3, 48, 320)}
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
"""


def _pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (a forked child's inherited imports) split among sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreePeak:
    """The largest total RSS (every 50 ms) and PSS (every 250 ms) of some processes and their descendants."""

    def __init__(self, roots) -> None:
        self.roots, self.peak_rss, self.peak_pss, self._stop = roots, 0, 0, threading.Event()
        self.series: list[tuple[float, float]] = []  # (seconds since start, PSS MB): where the peak is
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            with_pss = tick % 5 == 0  # reading smaps takes the process's mmap lock: not too often
            seen, rss, pss = set(), 0, 0
            for root in self.roots():
                try:
                    for p in [root, *root.children(recursive=True)]:
                        if p.pid not in seen:
                            seen.add(p.pid)
                            rss += p.memory_info().rss
                            pss += _pss_kb(p.pid) * 1024 if with_pss else 0
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
                self.series.append((round(time.perf_counter() - self._t0, 2), round(pss / 2**20, 1)))
            tick += 1
            time.sleep(0.05)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.peak_rss / 2**20, self.peak_pss / 2**20


def timed_process(cmd: list[str], env: dict, extra_roots=lambda: []) -> dict:
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = TreePeak(lambda: [proc, *extra_roots()])
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    rss, pss = peak.stop()
    return {"ok": proc.returncode == 0, "wall_s": wall, "peak_mb": pss, "peak_rss_mb": rss, "log": out[-3000:],
            "pss_series": peak.series}


def memory_timeline(series: list[tuple[float, float]], step: float = 1.0) -> str:
    """The largest PSS in each ``step`` seconds of a run, as "t:MB" pairs: which phase holds the peak."""
    buckets: dict[float, float] = {}
    for t, mb in series:
        key = step * int(t / step)
        buckets[key] = max(buckets.get(key, 0.0), mb)
    return " ".join(f"{t:g}s:{mb:.0f}" for t, mb in sorted(buckets.items()))


def run_ours(model: Path, bindir: Path, n: int, method: str, work: Path) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-home-", dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PTQFLOW_"))}
    env.update(PTQFLOW_HOME=str(home), DO_NOT_TRACK="1")
    subprocess.run([str(PTQ), "server", "start"], env=env, check=True, capture_output=True, timeout=300)
    sock = home / "server" / "runner.sock"
    deadline = time.monotonic() + 120
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = json.loads((home / "server" / "server.json").read_text())
    cfg = bfq.write_full_cfg(work / "cfg" / f"{method}_{n}.cfg", f"x:{bindir}", n, method, True, None,
                             input_type="BIN", image=False)
    runner = [p for p in psutil.process_iter(["cmdline"]) if "ptqflow.runner" in " ".join(p.info["cmdline"] or [])
              and os.getpgid(p.pid) == state["pid"]]

    def runner_children():
        return [c for r in runner for c in r.children()]

    try:
        res = timed_process([str(PTQ), "convert", f"--modelFile={model}", f"--configFile={cfg}",
                             f"--outputFile={work / 'out' / f'{method}_{n}'}", "--inputShape=x:1,3,48,320"], env,
                            runner_children)
    finally:
        subprocess.run([str(PTQ), "server", "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    res["warm_runner"] = bool(runner)
    for line in res["log"].splitlines():
        if "time split" in line or "phases" in line:
            res.setdefault("split", []).append(" ".join(line.split()))
    return res


def run_ort(model: Path, files: list[Path], work: Path, n: int) -> dict:
    listing = work / f"files_{n}.txt"
    listing.write_text("\n".join(map(str, files)))
    return timed_process([sys.executable, "-c", ORT_CODE, str(model), str(work / "out" / f"ort_{n}.onnx"),
                          str(listing)], dict(os.environ))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="200,1000")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    work = HERE / "work" / "calibration_speed"
    (work / "out").mkdir(parents=True, exist_ok=True)
    model = models.rapidocr_models()["rec"]
    bindir = work / "rec_calib"
    if len(list(bindir.glob("*.bin"))) < max(sizes):
        bfq.rec_calibration(bindir, max(sizes))
    all_bins = sorted(bindir.glob("*.bin"))
    rows = []
    for n in sizes:
        sub = work / f"calib_{n}"  # a folder of exactly n files: converter_lite reads a whole folder
        if not sub.exists() or len(list(sub.glob("*.bin"))) != n:
            shutil.rmtree(sub, ignore_errors=True)
            sub.mkdir()
            for f in all_bins[:n]:
                os.link(f, sub / f.name)
        files = sorted(sub.glob("*.bin"))
        print(f"N={n}: ORT MinMax ...", flush=True)
        first = run_ort(model, files, work, n)
        rows.append({"n": n, "tool": "ORT quantize_static", "method": "MinMax", **first})
        ours_rows = []
        for method in methods:
            print(f"N={n}: ptqflow {method} ...", flush=True)
            ours_rows.append({"n": n, "tool": "ptqflow ptq convert", "method": method,
                              **run_ours(model, sub, n, method, work)})
        print(f"N={n}: ORT MinMax again ...", flush=True)
        again = run_ort(model, files, work, n)
        rows.append({"n": n, "tool": "ORT quantize_static (again, after ptqflow)", "method": "MinMax", **again})
        # the anchor: ORT's better run of the two around ours (its wall time and memory alike)
        anchor_s, anchor_mb = min(first["wall_s"], again["wall_s"]), min(first["peak_mb"], again["peak_mb"])
        for ours in ours_rows:
            ours["time_ratio"] = ours["wall_s"] / anchor_s
            ours["rss_ratio"] = ours["peak_mb"] / anchor_mb
        rows.extend(ours_rows)
    isa = harness.environment(("onnxruntime",)).get("isa") if hasattr(harness, "environment") else None
    env = {"cpu": platform.processor() or platform.machine(), "isa": isa or _isa(), "cores": os.cpu_count()}
    md = render(rows, env, " ".join(sys.argv))
    (HERE / "results" / "calibration_speed.md").write_text(md)
    (HERE / "results" / "calibration_speed.json").write_text(
        json.dumps({"env": env, "rows": [{k: v for k, v in r.items() if k != "log"} for r in rows]}, indent=1))
    print(md)


def _isa() -> str:
    from ptq_core.onnxgraph.cpu import machine_isa

    return machine_isa()


def render(rows: list[dict], env: dict, cmd: str) -> str:
    lines = ["# Calibration speed and memory: ptq convert vs ONNX Runtime quantize_static", "",
             f"`.venv-bench/bin/python benchmarks/{Path(cmd.split()[0]).name} {' '.join(cmd.split()[1:])}`", "",
             f"Machine: {env['isa']}, {env['cores']} cores. PP-OCRv4 recognizer, BIN files of 1x3x48x320.", "",
             "| N | tool | method | wall s | wall / ORT | peak PSS MB | PSS / ORT | peak RSS sum MB | bound | verdict | time split |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = BOUNDS.get(r["method"]) if r["tool"].startswith("ptqflow") else None
        ratio = r.get("time_ratio")
        verdict = ""
        if r["tool"].startswith("ptqflow"):
            ok_t = bound is None or (ratio is not None and ratio <= bound)
            ok_m = r.get("rss_ratio") is not None and r["rss_ratio"] <= RSS_BOUND
            verdict = ("pass" if ok_t and ok_m else "FAIL") if r["ok"] else "FAILED RUN"
        ratio_text = "" if ratio is None else f"{ratio:.2f}x"
        rss_text = "" if r.get("rss_ratio") is None else f"{r['rss_ratio']:.2f}x"
        bound_text = ""
        if r["tool"].startswith("ptqflow"):
            bound_text = (f"time <= {bound}x, " if bound else "") + f"memory <= {RSS_BOUND}x"
        lines.append(f"| {r['n']} | {r['tool']} | {r['method']} | {r['wall_s']:.1f} | {ratio_text} | "
                     f"{r['peak_mb']:.0f} | {rss_text} | {r['peak_rss_mb']:.0f} | {bound_text} | {verdict} | {'; '.join(r.get('split', []))} |")
    timelines = [f"- N={r['n']} {r['method']}: {memory_timeline(r['pss_series'])}" for r in rows
                 if r["tool"].startswith("ptqflow") and r.get("pss_series")]
    if timelines:
        lines += ["", "PSS over the run of `ptq convert` (largest MB in each second, from its start):", "", *timelines]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
