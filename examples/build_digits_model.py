#!/usr/bin/env python3
"""Build the bundled ptqflow example: a small CNN for scikit-learn's digits.

Trains a tiny convolutional network on ``sklearn.datasets.load_digits`` (8x8
grey images, 1797 samples, bundled with scikit-learn: nothing is downloaded),
exports it to ONNX (opset 13) and writes sample/calibration data next to it:

    examples/digits/digits_cnn.onnx     input "input" [1,1,8,8] f32 -> "logits" [1,10]
    examples/digits/images/*.png        64 test samples as 8x8 grey PNG
    examples/digits/bin/*.bin           the same 64 samples, exact model input bytes
    examples/digits/eval.npz            whole test split (inputs [N,1,8,8] f32, labels)

Preprocessing (identical for training, PNG, BIN and eval.npz):
    pixel  = round(x / 16 * 255)          # sklearn value 0..16 -> uint8 0..255
    input  = (pixel - 127.5) / 127.5      # float32, NCHW

Split: the first 1437 samples train, the last 360 samples are the test split.

Needs torch (CPU), numpy, scikit-learn, onnx, onnxruntime, pillow.  Usage:

    python examples/build_digits_model.py [--out examples/digits] [--epochs 20]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
from pathlib import Path

import numpy as np

SEED = 20240607
N_TEST = 360
N_SAMPLES = 64
MEAN = 127.5
STD = 127.5


def to_pixels(x: np.ndarray) -> np.ndarray:
    """sklearn digits values (0..16) -> uint8 grey pixels (0..255)."""
    return np.clip(np.rint(x.astype(np.float64) / 16.0 * 255.0), 0, 255).astype(np.uint8)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> normalized float32 model input."""
    return ((pixels.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def load_data():
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = to_pixels(d.images).reshape(-1, 1, 8, 8)  # N,1,8,8 uint8
    x = normalize(pixels)
    y = d.target.astype(np.int64)
    n_train = len(y) - N_TEST
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:], pixels[n_train:])


def seed_everything(seed: int) -> None:
    import torch

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def make_model():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * 2 * 2, 128)
            self.fc2 = nn.Linear(128, 10)
            self.act = nn.ReLU()

        def forward(self, x):
            x = self.act(self.conv1(x))  # 32x8x8
            x = self.act(self.conv2(x))  # 64x8x8
            x = self.pool(x)  # 64x4x4
            x = self.act(self.conv3(x))  # 64x4x4
            x = self.pool(x).flatten(1)  # 64x2x2 -> 256
            x = self.act(self.fc1(x))
            return self.fc2(x)

    return DigitsCNN()


def train(model, x_train, y_train, epochs: int, batch_size: int = 32, lr: float = 3e-3):
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    n = len(yt)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(SEED)
    background = float(normalize(np.zeros((), np.uint8)))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = xt[idx], yt[idx]
            # augmentation: shift each image by -1..1 pixel in x and y (background padded)
            padded = F.pad(xb, (1, 1, 1, 1), value=background)
            ox = torch.randint(0, 3, (len(yb),), generator=g).tolist()
            oy = torch.randint(0, 3, (len(yb),), generator=g).tolist()
            xb = torch.stack([padded[k, :, oy[k] : oy[k] + 8, ox[k] : ox[k] + 8] for k in range(len(yb))])
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(yb)
        print(f"epoch {epoch + 1:2d}/{epochs}: loss {loss_sum / total:.4f} train-acc {correct / total:.4f}")
    model.eval()
    return model


def export_onnx(model, path: Path) -> None:
    """Write the ONNX graph by hand so node/initializer names are stable and readable."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    inits = [numpy_helper.from_array(sd[k], name=k) for k in (
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "conv3.weight", "conv3.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]

    def conv(name, x, y):
        return helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [y], name=name,
                                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1)

    nodes = [
        conv("conv1", "input", "conv1_out"),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        conv("conv2", "relu1_out", "conv2_out"),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("MaxPool", ["relu2_out"], ["pool1_out"], name="pool1",
                         kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        conv("conv3", "pool1_out", "conv3_out"),
        helper.make_node("Relu", ["conv3_out"], ["relu3_out"], name="relu3"),
        helper.make_node("MaxPool", ["relu3_out"], ["pool2_out"], name="pool2",
                         kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0]),
        helper.make_node("Flatten", ["pool2_out"], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1",
                         alpha=1.0, beta=1.0, transA=0, transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu4_out"], name="relu4"),
        helper.make_node("Gemm", ["relu4_out", "fc2.weight", "fc2.bias"], ["logits"], name="fc2",
                         alpha=1.0, beta=1.0, transA=0, transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="ptqflow-examples", producer_version="1")
    m.ir_version = 7  # opset 13 era; readable by any recent onnxruntime
    m.doc_string = ("Small CNN for sklearn digits (8x8 grey). input = (round(x/16*255) - 127.5)/127.5, "
                    "NCHW [1,1,8,8] float32; output logits [1,10].")
    onnx.checker.check_model(m, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, str(path))


def ort_accuracy(onnx_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    preds = [int(np.argmax(sess.run(["logits"], {"input": x[i : i + 1]})[0])) for i in range(len(y))]
    return float(np.mean(np.asarray(preds) == y))


def write_samples(out: Path, x_test, y_test, pix_test) -> None:
    from PIL import Image

    img_dir, bin_dir = out / "images", out / "bin"
    for d in (img_dir, bin_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    # the first N_SAMPLES rows of the test split; file index == row of eval.npz
    for i in range(N_SAMPLES):
        stem = f"digit_{i:04d}_label{int(y_test[i])}"
        Image.fromarray(pix_test[i, 0], mode="L").save(img_dir / f"{stem}.png", optimize=True)
        (bin_dir / f"{stem}.bin").write_bytes(np.ascontiguousarray(x_test[i : i + 1], dtype="<f4").tobytes())
    np.savez_compressed(out / "eval.npz", inputs=x_test.astype(np.float32), labels=y_test.astype(np.int64))


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=here / "digits")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()

    seed_everything(SEED)
    (x_train, y_train), (x_test, y_test, pix_test) = load_data()
    print(f"train {len(y_train)} / test {len(y_test)} samples")
    model = train(make_model(), x_train, y_train, args.epochs)

    onnx_path = args.out / "digits_cnn.onnx"
    export_onnx(model, onnx_path)
    write_samples(args.out, x_test, y_test, pix_test)

    acc = ort_accuracy(onnx_path, x_test, y_test)
    print(f"FP32 test accuracy (onnxruntime, {len(y_test)} samples): {acc:.4f}")
    print(f"sizes: onnx {onnx_path.stat().st_size} B, digits/ {dir_size(args.out)} B, examples/ {dir_size(here)} B")


if __name__ == "__main__":
    main()
