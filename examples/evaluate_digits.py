"""Accuracy of the digits model and its quantized versions on the shipped test split.

Usage: python examples/evaluate_digits.py OUT.onnx [OUT2.onnx ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).parent
FP32 = HERE / "digits" / "digits_cnn.onnx"


def accuracy(path: Path) -> float:
    data = np.load(HERE / "digits" / "eval.npz")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    hits = 0
    for x, y in zip(data["inputs"], data["labels"]):
        logits = session.run(None, {name: x[None]})[0]
        hits += int(np.argmax(logits) == y)
    return hits / len(data["labels"])


def main(paths: list[str]) -> None:
    base = FP32.stat().st_size
    print(f"{'model':40s} {'size KiB':>9s} {'ratio':>6s} {'accuracy':>9s}")
    for path in [FP32, *map(Path, paths)]:
        size = path.stat().st_size
        print(f"{str(path):40s} {size / 1024:9.1f} {base / size:6.2f} {accuracy(path):9.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
