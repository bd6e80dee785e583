"""A model over 2 GB (external data) through ``ptq convert`` WEIGHT_QUANT 8 bit: peak memory vs weight size.

The model is generated in benchmarks/work/large/ (git-ignored), one layer at a time straight into
its external data file, so generating it never holds more than one layer. Then ``ptq convert
--no-flow`` runs in a child process and its peak RSS (``ru_maxrss`` of the child, from the kernel)
is recorded with the wall time, the weight bytes, the output size and the output cosine the CLI
reports. Results go to benchmarks/results/large_model.{json,md}.

    .venv/bin/python benchmarks/bench_large_model.py [--layers 9] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "large"
RESULTS = ROOT / "benchmarks" / "results"
D_SMALL, D_BIG = 4096, 16384  # alternating (4096 x 16384) and (16384 x 4096) float32 MatMul weights: 256 MiB each


def generate(folder: Path, layers: int) -> tuple[Path, int]:
    """x[1, 4096] -> MatMul -> Relu -> ... ; weights in folder/model.onnx.data, written layer by layer."""
    folder.mkdir(parents=True, exist_ok=True)
    data_name = "model.onnx.data"
    rng = np.random.default_rng(0)
    nodes, inits, prev, offset = [], [], "x", 0
    with open(folder / data_name, "wb") as fh:
        for i in range(layers):
            rows, cols = (D_SMALL, D_BIG) if i % 2 == 0 else (D_BIG, D_SMALL)
            for r0 in range(0, rows, 1024):  # 64 MiB at a time
                fh.write(rng.normal(0, 0.02, (min(1024, rows - r0), cols)).astype(np.float32).tobytes())
            length = rows * cols * 4
            tensor = helper.make_tensor_value_info(f"w{i}", TensorProto.FLOAT, [rows, cols])
            init = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[rows, cols])
            init.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
            del tensor
            inits.append(init)
            offset += length
            out = f"h{i}" if i < layers - 1 else "y"
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
            nodes.append(helper.make_node("Relu" if i < layers - 1 else "Identity", [f"m{i}"], [out], name=f"act{i}"))
            prev = out
    final = D_BIG if layers % 2 == 1 else D_SMALL
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D_SMALL])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, final])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, offset


def run_child(args: list[str]) -> tuple[int, float, int, str]:
    """Run one command; its wall time and the kernel's peak RSS of the child (bytes)."""
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return proc.returncode, wall, peak, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9, help="256 MiB layers (9 = 2.25 GiB of weights)")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/work/large afterwards")
    args = parser.parse_args()
    need = args.layers * D_SMALL * D_BIG * 4 * 1.4
    free = shutil.disk_usage(WORK.parent if WORK.parent.exists() else ROOT).free
    if free < need:
        print(f"not enough disk: {free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed", file=sys.stderr)
        return 2
    shutil.rmtree(WORK, ignore_errors=True)
    t0 = time.perf_counter()
    model, weight_bytes = generate(WORK, args.layers)
    gen_s = time.perf_counter() - t0
    cfg = WORK / "w8.cfg"
    cfg.write_text("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n")
    ptq = str(Path(sys.executable).parent / "ptq")
    env_home = WORK / "home"
    os.environ["PTQFLOW_HOME"] = str(env_home)
    rc, wall, peak, log = run_child([ptq, "convert", f"--modelFile={model}", f"--configFile={cfg}",
                                     f"--outputFile={WORK / 'out' / 'model_w8'}", "--no-flow"])
    if rc != 0:
        print(log, file=sys.stderr)
        return rc
    out = WORK / "out" / "model_w8.onnx"
    found = re.search(r"output cosine vs FP32\W+([01]\.\d+)", log)
    cosine = float(found.group(1)) if found else None
    result = {
        "command": "ptq convert --no-flow (WEIGHT_QUANT bit_num=8) on a generated MatMul chain",
        "layers": args.layers,
        "weight_bytes": weight_bytes,
        "model_files_bytes": model.stat().st_size + (WORK / "model.onnx.data").stat().st_size,
        "output_bytes": out.stat().st_size,
        "peak_rss_bytes": peak,
        "peak_rss_over_weights": round(peak / weight_bytes, 3),
        "wall_s": round(wall, 1),
        "generate_s": round(gen_s, 1),
        "output_cosine": cosine,
        "largest_tensor_bytes": D_SMALL * D_BIG * 4,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "onnx": onnx.__version__, "onnxruntime": __import__("onnxruntime").__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large_model.json").write_text(json.dumps(result, indent=2) + "\n")
    gib = 2**30
    md = [
        "# Large model: WEIGHT_QUANT 8 bit on a model over 2 GB (external data)",
        "",
        "`.venv/bin/python benchmarks/bench_large_model.py` — a generated chain of "
        f"{args.layers} MatMul layers (alternating 4096x16384 and 16384x4096 float32) stored as external data, "
        "quantized by `ptq convert --no-flow` in a child process; peak RSS is the kernel's `ru_maxrss` of that child.",
        "",
        "| weights | largest tensor | output model | peak RSS | peak / weights | output cosine | wall time |",
        "|---|---|---|---|---|---|---|",
        f"| {weight_bytes / gib:.2f} GiB | {D_SMALL * D_BIG * 4 / 2**20:.0f} MiB | {out.stat().st_size / gib:.2f} GiB | "
        f"{peak / gib:.2f} GiB | {peak / weight_bytes:.2f}x | {cosine} | {wall:.0f} s |",
        "",
        f"Machine: {os.cpu_count()} CPUs, onnx {onnx.__version__}, onnxruntime {result['machine']['onnxruntime']}.",
    ]
    (RESULTS / "large_model.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
