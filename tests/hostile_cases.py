"""Every class of bad input we try, as data: what to build, the flags to run, what the user must see.

``tests/test_hostile_inputs.py`` runs each case through ``ptq convert``; docs/hostile-inputs.md's
"Bad input and what you get" table is generated from this module (``python tests/hostile_cases.py``)
and a test checks docs/hostile-inputs.md still matches it, so the counts there cannot drift.

A case is either *refused* (exit 2, one line naming ``expect``, no output written) or *accepted*
(exit 0, a model onnxruntime runs): odd image modes and unquantizable ops are accepted by design.
"""

from __future__ import annotations

import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))

from modelgen import mixed_ops_model, mlp_model  # noqa: E402

W8 = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"


@dataclass(frozen=True)
class Case:
    klass: str
    name: str
    build: Callable[[Path], list[str]]  # writes its files under the folder, returns the flags (no --no-flow)
    expect: tuple[str, ...] = ()  # substrings of the one-line error; empty for an accepted case
    accepted: bool = False
    flow: bool = False  # run through the Prefect flow instead of --no-flow
    notes: tuple[str, ...] = field(default=())


#: class -> what the user gets (the table's last column)
CLASSES = {
    "config file": "`file:line: [section] key=value` and what is allowed (closest key suggested); "
                   "checked before the model is read",
    "command-line flags": "the flag, its value and the expected form",
    "ONNX model": "the model path and what is wrong (parse error, missing/escaping external data, "
                  "unknown op and its node); checked before calibration",
    "dynamic shapes": "dynamic batch taken as 1; other dynamic dims need `--inputShape`, whose errors "
                      "name the input and the model's shape",
    "ops we do not quantize": "kept in FP32 and listed as skipped; an op onnxruntime cannot run is refused "
                              "naming node and op",
    "images": "the file and why it does not decode (too many pixels, not an image, truncated, float)",
    "odd image modes": "converted: palette and grey to RGB, alpha dropped (not blended), 16-bit keeps the "
                       "high byte, CMYK to RGB",
    "calibration folders": "the folder, the file count and calibrate_size",
    "BIN files": "the file, its size and the exact size the input needs",
    "NaN/Inf in calibration files": "the file and the first bad element's index and value",
    "NaN/Inf in activations": "the tensor, the calibration sample and its files",
    "output path": "the folder and why it cannot be written, before any work starts",
}


# ---------------------------------------------------------------------------------------------
# builders


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _cfg(folder: Path, text: str, name: str = "c.cfg") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _flags(tmp: Path, model: Path, cfg: Path, *extra: str) -> list[str]:
    return [f"--modelFile={model}", f"--outputFile={tmp / 'out' / 'q'}", f"--configFile={cfg}", *extra]


def weight_run(cfg_text: str, *extra: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return _flags(tmp, _save(mixed_ops_model(), tmp / "m.onnx"), _cfg(tmp, cfg_text), *extra)
    return build


def full_cfg_text(folder: Path, n: int, input_type: str = "BIN", input_name: str = "x", extra: str = "") -> str:
    return ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
            f"[data_preprocess_param]\ncalibrate_path={input_name}:{folder}\ncalibrate_size={n}\n"
            f"input_type={input_type}\n{extra}[ptqflow]\nlatency_guard=false\n")


def _bins(folder: Path, n: int, shape=(1, 64), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        (folder / f"{i:03d}.bin").write_bytes(rng.normal(0, 1, shape).astype(np.float32).tobytes())
    return folder


def bin_run(mutate: Callable[[Path], None], n: int = 4, model: Callable[[], onnx.ModelProto] | None = None,
            *extra: str) -> Callable[[Path], list[str]]:
    """FULL_QUANT of the MLP (input x: 1x64 float32) on ``n`` BIN files, after ``mutate(folder)``."""
    def build(tmp: Path) -> list[str]:
        folder = _bins(tmp / "calib", n)
        mutate(folder)
        m = _save((model or mlp_model)(), tmp / "m.onnx")
        return _flags(tmp, m, _cfg(tmp, full_cfg_text(folder, n)), *extra)
    return build


def cnn_model() -> onnx.ModelProto:
    """x: 1x3x16x16 -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm (for IMAGE calibration)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8)).astype(np.float32), "wf")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG that claims width x height pixels: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def image_run(mutate: Callable[[Path], None], n: int = 3) -> Callable[[Path], list[str]]:
    """FULL_QUANT of a small CNN (1x3x16x16) on ``n`` 16x16 PNGs, after ``mutate(folder)`` replaces one."""
    def build(tmp: Path) -> list[str]:
        from PIL import Image

        folder = tmp / "imgs"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        mutate(folder)
        return _flags(tmp, _save(cnn_model(), tmp / "m.onnx"),
                      _cfg(tmp, full_cfg_text(folder, n, "IMAGE", extra="image_to_format=RGB\n")))
    return build


def _replace_first(maker: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        first = sorted(folder.iterdir())[0]
        first.unlink()
        maker(folder / first.name)
    return mutate


def _mode_image(mode: str, ext: str = "png") -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        from PIL import Image

        first = sorted(folder.iterdir())[0]
        first.unlink()
        rng = np.random.default_rng(1)
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65536, (16, 16), dtype=np.uint16))
        elif mode == "P":
            img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).quantize(16)
        else:
            img = Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").convert(mode)
        img.save(folder / f"{first.stem}.{ext}")
    return mutate


def _model_file(writer: Callable[[Path], None], cfg_text: str = W8, *extra: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        path = tmp / "m.onnx"
        writer(path)
        return _flags(tmp, path, _cfg(tmp, cfg_text), *extra)
    return build


def _valid_bytes() -> bytes:
    return mixed_ops_model().SerializeToString()


def _external(location_of: Callable[[Path], str], data: Callable[[Path], None] | None = None,
              length: int | None = None) -> Callable[[Path], None]:
    """The MLP with weight w1 stored as external data at ``location_of(folder)``."""
    def writer(path: Path) -> None:
        model = mlp_model()
        w1 = next(t for t in model.graph.initializer if t.name == "w1")
        raw = numpy_helper.to_array(w1).tobytes()
        location = location_of(path.parent)
        if data:
            data(path.parent)
        w1.ClearField("float_data")
        w1.ClearField("raw_data")
        w1.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", str(length or len(raw)))):
            entry = w1.external_data.add()
            entry.key, entry.value = key, value
        path.write_bytes(model.SerializeToString())
    return writer


def _outside(folder: Path) -> str:
    (folder.parent / "secret.bin").write_bytes(b"\x00" * (64 * 256 * 4))
    return "../secret.bin"


def _graph_model(nodes, inputs, outputs, inits=(), opsets=(("", 13),), functions=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets],
                              functions=list(functions))
    model.ir_version = 8
    return model


def _activation_model(op: str) -> Callable[[], onnx.ModelProto]:
    """x (1x64) -> ``op`` -> MatMul: an op that turns finite calibration data into NaN or Inf."""
    def make() -> onnx.ModelProto:
        w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (64, 16)).astype(np.float32), "w")
        nodes = [helper.make_node(op, ["x"], ["a"], name=f"{op.lower()}_node"),
                 helper.make_node("MatMul", ["a", "w"], ["y"], name="fc")]
        return _graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w])
    return make


def _fill(value: float, which: int = 0, element: int = 5) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = sorted(folder.iterdir())[which]
        arr = np.zeros((1, 64), np.float32) if value in (0.0, 100.0) else np.ones((1, 64), np.float32)
        if value in (0.0, 100.0):
            arr[:] = value
        else:
            arr.reshape(-1)[element] = value
        path.write_bytes(arr.tobytes())
    return mutate


def _all_files(value: float) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        for path in folder.iterdir():
            path.write_bytes(np.full((1, 64), value, np.float32).tobytes())
    return mutate


def _unknown_op_model(domain: str, op: str) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (64, 16)).astype(np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="fc"),
                 helper.make_node(op, ["a"], ["y"], name="mystery", domain=domain)]
        opsets = (("", 13),) + (((domain, 1),) if domain else ())
        return _graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w], opsets)
    return make


def _einsum_model() -> onnx.ModelProto:
    """A weight behind Einsum, an op with no quantization rule: it must stay FP32."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (64, 32)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.normal(0, 0.1, (32, 16)).astype(np.float32), "w2")
    nodes = [helper.make_node("Einsum", ["x", "w"], ["a"], name="einsum", equation="ij,jk->ik"),
             helper.make_node("Erf", ["a"], ["b"], name="erf"),
             helper.make_node("MatMul", ["b", "w2"], ["y"], name="fc")]
    return _graph_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [w, w2])


def _model_run(make: Callable[[], onnx.ModelProto], cfg_text: str = W8, *extra: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return _flags(tmp, _save(make(), tmp / "m.onnx"), _cfg(tmp, cfg_text), *extra)
    return build


def _output_run(output: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        model = _save(mixed_ops_model(), tmp / "m.onnx")
        return [f"--modelFile={model}", f"--outputFile={output(tmp)}", f"--configFile={_cfg(tmp, W8)}"]
    return build


def _blocked(tmp: Path) -> Path:
    (tmp / "out").write_text("a file where the output folder should be")
    return tmp / "out" / "q"


def _existing_folder(tmp: Path) -> Path:
    (tmp / "out" / "q.onnx").mkdir(parents=True)
    return tmp / "out" / "q"


def _dynamic_model(batch_only: bool) -> onnx.ModelProto:
    model = mlp_model(dynamic_batch=True)
    if not batch_only:
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    return model


# ---------------------------------------------------------------------------------------------
# the cases


def _c(klass, name, build, *expect, **kw) -> Case:
    return Case(klass, name, build, tuple(expect), **kw)


def _accept(klass, name, build, **kw) -> Case:
    return Case(klass, name, build, (), accepted=True, **kw)


CFG = "config file"
CASES: list[Case] = [
    _c(CFG, "missing '='", weight_run(W8 + "per_channel\n"), "c.cfg:4", "is not key=value"),
    _c(CFG, "two '='", weight_run(W8 + "init_scale=a=b\n"), "c.cfg:4", "more than one '='"),
    _c(CFG, "empty value", weight_run(W8 + "min_quant_weight_size=\n"), "min_quant_weight_size=", "empty value"),
    _c(CFG, "unknown key", weight_run(W8.replace("bit_num", "bitnum")), "bitnum", "did you mean 'bit_num'"),
    _c(CFG, "enum in wrong case", weight_run(W8.replace("WEIGHT_QUANT", "weight_quant")), "quant_type",
       "WEIGHT_QUANT"),
    _c(CFG, "bit_num out of range", weight_run(W8.replace("=8", "=17")), "bit_num=17", "[0, 16]"),
    _c(CFG, "not a number", weight_run(W8.replace("=8", "=eight")), "bit_num=eight"),
    _c(CFG, "huge number", weight_run(W8.replace("=8", "=" + "9" * 400)), "bit_num"),
    _c(CFG, "float where int", weight_run(W8.replace("=8", "=8.0")), "bit_num=8.0"),
    _c(CFG, "unterminated section", weight_run("[common_quant_param\nquant_type=WEIGHT_QUANT\n"), "does not end with ']'"),
    _c(CFG, "indented comment", weight_run(W8 + "  # note\n"), "first column"),
    _c(CFG, "no quant_type", weight_run("[common_quant_param]\nbit_num=8\n"), "quant_type"),
    _c(CFG, "empty file", weight_run(""), "quant_type"),
    _c(CFG, "NUL bytes", weight_run(W8 + "\x00\n"), "NUL"),
    _c(CFG, "not UTF-8", lambda tmp: _flags(tmp, _save(mixed_ops_model(), tmp / "m.onnx"),
                                             _write_bytes(tmp / "c.cfg", W8.encode() + b"\xff\xfe\n")), "UTF-8"),
    _c(CFG, "UTF-8 byte-order mark", lambda tmp: _flags(tmp, _save(mixed_ops_model(), tmp / "m.onnx"),
                                                        _write_bytes(tmp / "c.cfg", b"\xef\xbb\xbf" + W8.encode())),
       "byte-order mark"),
    _c(CFG, "CRLF line ends with a bad value", weight_run(W8.replace("\n", "\r\n") + "bit_num=x\r\n"), "c.cfg:4",
       "bit_num=x"),
    _c(CFG, "config is a folder", lambda tmp: _flags(tmp, _save(mixed_ops_model(), tmp / "m.onnx"), tmp),
       "is a folder"),
    _c(CFG, "config missing", lambda tmp: _flags(tmp, _save(mixed_ops_model(), tmp / "m.onnx"), tmp / "none.cfg"),
       "none.cfg", "not found"),
    _c(CFG, "over 9999 lines", weight_run(W8 + "[x]\n" + "".join(f"k{i}=1\n" for i in range(10000))), "9999"),
    _c(CFG, "rotation_block not a power of two",
       weight_run("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n[ptqflow]\nrotation_block=12\n"),
       "rotation_block=12", "power of two"),
    _c(CFG, "int8_form misspelt",
       weight_run("[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n[ptqflow]\nint8_form=vnn\n"),
       "int8_form=vnn", "did you mean 'vnni'"),
    _c(CFG, "bit_num 4 with FULL_QUANT", weight_run(W8.replace("WEIGHT_QUANT", "FULL_QUANT").replace("=8", "=4")),
       "bit_num"),
    _c(CFG, "FULL_QUANT without data", weight_run(W8.replace("WEIGHT_QUANT", "FULL_QUANT")), "calibrate_path"),
    _c(CFG, "calibrate_path without ':'",
       weight_run(W8.replace("WEIGHT_QUANT", "FULL_QUANT") + "[data_preprocess_param]\ncalibrate_path=/tmp\n"
                  "calibrate_size=2\ninput_type=BIN\n"), "calibrate_path"),
    _c(CFG, "input_type missing",
       weight_run(W8.replace("WEIGHT_QUANT", "FULL_QUANT") + "[data_preprocess_param]\ncalibrate_path=x:/tmp\n"
                  "calibrate_size=2\n"), "input_type"),
    _c(CFG, "malformed list", weight_run(W8 + "[data_preprocess_param]\nnormalize_mean=[1,2\n"), "normalize_mean"),
    _c(CFG, "unknown skip_quant_node", weight_run(W8 + "skip_quant_node=gemmm\n"), "gemmm", "did you mean 'gemm'"),
    _c(CFG, "unsupported target", weight_run(W8.replace("WEIGHT_QUANT", "FULL_QUANT") +
                                             "[data_preprocess_param]\ncalibrate_path=x:/nonexistent\n"
                                             "calibrate_size=2\ninput_type=BIN\n"
                                             "[full_quant_param]\ntarget_device=KIRIN\n"), "KIRIN"),
]

FLAGS = "command-line flags"
CASES += [
    _c(FLAGS, "unknown flag", weight_run(W8, "--bogus=1"), "--bogus"),
    _c(FLAGS, "wrong --fmk", weight_run(W8, "--fmk=TFLITE"), "--fmk=TFLITE"),
    _c(FLAGS, "bad --inputDataFormat", weight_run(W8, "--inputDataFormat=CHWN"), "CHWN"),
    _c(FLAGS, "--inputShape not numbers", weight_run(W8, "--inputShape=x:a,b"), "--inputShape"),
    _c(FLAGS, "--inputShape unknown input", weight_run(W8, "--inputShape=xx:1,3,8,8"), "'xx'", "did you mean 'x'"),
]

MODEL = "ONNX model"
CASES += [
    _c(MODEL, "missing", lambda tmp: _flags(tmp, tmp / "none.onnx", _cfg(tmp, W8)), "none.onnx", "not found"),
    _c(MODEL, "a folder", lambda tmp: _flags(tmp, tmp, _cfg(tmp, W8)), "folder"),
    _c(MODEL, "empty file", _model_file(lambda p: p.write_bytes(b"")), "m.onnx"),
    _c(MODEL, "random bytes", _model_file(lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096))),
       "m.onnx", "not a readable ONNX model"),
    _c(MODEL, "truncated", _model_file(lambda p: p.write_bytes(_valid_bytes()[: len(_valid_bytes()) // 2])),
       "m.onnx"),
    _c(MODEL, "text file", _model_file(lambda p: p.write_text("hello, I am not a model\n")), "m.onnx"),
    _c(MODEL, "no nodes", _model_run(lambda: _graph_model([], [], [])), "m.onnx", "no nodes"),
    _c(MODEL, "no default opset", _model_run(lambda: _graph_model(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], opsets=(("com.acme", 1),))), "opset"),
    _c(MODEL, "external data outside its folder", _model_file(_external(_outside)), "m.onnx", "outside the model's folder"),
    _c(MODEL, "external data absolute path", _model_file(_external(lambda f: "/etc/hostname")), "outside the model's folder"),
    _c(MODEL, "external data through a link", _model_file(_external(
        lambda f: (_outside(f), (f / "link.bin").symlink_to(f.parent / "secret.bin"))[0] and "link.bin")),
        "outside the model's folder"),
    _c(MODEL, "external data missing", _model_file(_external(lambda f: "w1.bin")), "w1.bin", "missing"),
    _c(MODEL, "external data too short", _model_file(_external(
        lambda f: "w1.bin", lambda f: (f / "w1.bin").write_bytes(b"\x00" * 100))), "m.onnx", "w1"),
    _c(MODEL, "undefined tensor", _model_run(lambda: _graph_model(
        [helper.make_node("Relu", ["nowhere"], ["y"], name="r")], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])), "m.onnx", "nowhere"),
]

DYN = "dynamic shapes"
CASES += [
    _accept(DYN, "dynamic batch, weight quant", _model_run(lambda: _dynamic_model(True))),
    _accept(DYN, "dynamic batch, full quant", bin_run(lambda f: None, model=lambda: _dynamic_model(True))),
    _accept(DYN, "dynamic features with --inputShape", bin_run(lambda f: None, 4, lambda: _dynamic_model(False),
                                                               "--inputShape=x:1,64")),
    _c(DYN, "dynamic features without --inputShape", bin_run(lambda f: None, 4, lambda: _dynamic_model(False)),
       "'x'", "['N', 'F']", "--inputShape=x:1,<F>"),
    _c(DYN, "--inputShape of the wrong rank", bin_run(lambda f: None, 4, lambda: _dynamic_model(False),
                                                      "--inputShape=x:1,8,8"), "--inputShape x:1,8,8"),
    _c(DYN, "--inputShape against a fixed dim", bin_run(lambda f: None, 4, mlp_model, "--inputShape=x:1,32"),
       "--inputShape x:1,32"),
]

OPS = "ops we do not quantize"
CASES += [
    _accept(OPS, "Einsum and Erf, weight quant", _model_run(_einsum_model)),
    _accept(OPS, "Einsum and Erf, full quant", bin_run(lambda f: None, model=_einsum_model)),
    _c(OPS, "custom-domain op", _model_run(_unknown_op_model("com.acme", "Frobnicate")), "mystery", "com.acme"),
    _c(OPS, "misspelt standard op", _model_run(_unknown_op_model("", "Reluu")), "mystery", "Reluu"),
]

IMG = "images"
CASES += [
    _c(IMG, "text file named .png", image_run(_replace_first(lambda p: p.write_text("not an image"))),
       "000.png", "not an image"),
    _c(IMG, "zero bytes", image_run(_replace_first(lambda p: p.write_bytes(b""))), "000.png"),
    _c(IMG, "truncated PNG", image_run(_replace_first(
        lambda p: p.write_bytes(_png_bytes()[: len(_png_bytes()) // 2]))), "000.png"),
    _c(IMG, "corrupt JPEG", image_run(_replace_first(
        lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64))), "000.png"),
    _c(IMG, "float TIFF", image_run(_replace_first(lambda p: _float_tiff(p))), "32-bit float"),
    _c(IMG, "decompression bomb (error)", image_run(_replace_first(lambda p: _png_header_only(p, 20000, 20000))),
       "000.png", "too large"),
    _c(IMG, "decompression bomb (warning)", image_run(_replace_first(lambda p: _png_header_only(p, 10000, 10000))),
       "000.png", "too large"),
    _c(IMG, "wrong size for the input", image_run(_replace_first(lambda p: _rgb_png(p, 8, 8))), "000.png",
       "does not fit"),
]

ODD = "odd image modes"
CASES += [
    _accept(ODD, "palette", image_run(_mode_image("P"))),
    _accept(ODD, "RGBA", image_run(_mode_image("RGBA"))),
    _accept(ODD, "grey + alpha", image_run(_mode_image("LA"))),
    _accept(ODD, "grey", image_run(_mode_image("L"))),
    _accept(ODD, "1-bit", image_run(_mode_image("1"))),
    _accept(ODD, "16-bit grey", image_run(_mode_image("I;16"))),
    _accept(ODD, "CMYK JPEG", image_run(_mode_image("CMYK", "jpg"))),
]

FOLD = "calibration folders"
CASES += [
    _c(FOLD, "empty folder", bin_run(lambda f: [p.unlink() for p in f.iterdir()]), "calib", "no files"),
    _c(FOLD, "fewer files than calibrate_size", bin_run(lambda f: (f / "003.bin").unlink()), "3 files",
       "calibrate_size is 4"),
    _c(FOLD, "missing folder", bin_run(lambda f: [p.unlink() for p in f.iterdir()] and f.rmdir()),
       "calib", "does not exist"),
    _c(FOLD, "folder is a file", bin_run(lambda f: ([p.unlink() for p in f.iterdir()], f.rmdir(), f.write_text("x"))),
       "not a folder"),
    _c(FOLD, "only subfolders", bin_run(lambda f: ([p.unlink() for p in f.iterdir()], (f / "sub").mkdir())),
       "no files", "subfolders"),
    _c(FOLD, "only broken links", bin_run(lambda f: ([p.unlink() for p in f.iterdir()],
                                                     (f / "a.bin").symlink_to(f / "gone.bin"))), "no files"),
    _c(FOLD, "input name not in the model", lambda tmp: _flags(
        tmp, _save(mlp_model(), tmp / "m.onnx"), _cfg(tmp, full_cfg_text(_bins(tmp / "calib", 2), 2, input_name="xx"))),
       "'xx'", "did you mean 'x'"),
]

BIN = "BIN files"
CASES += [
    _c(BIN, "one byte short", bin_run(lambda f: (f / "001.bin").write_bytes(b"\x00" * 255)), "001.bin", "255 bytes",
       "256 bytes"),
    _c(BIN, "one byte long", bin_run(lambda f: (f / "001.bin").write_bytes(b"\x00" * 257)), "001.bin", "257 bytes"),
    _c(BIN, "empty", bin_run(lambda f: (f / "002.bin").write_bytes(b"")), "002.bin", "0 bytes"),
    _c(BIN, "float64 data", bin_run(lambda f: (f / "000.bin").write_bytes(np.zeros(64, np.float64).tobytes())),
       "000.bin", "512 bytes"),
]

NANF = "NaN/Inf in calibration files"
CASES += [
    _c(NANF, "NaN", bin_run(_fill(np.nan)), "000.bin", "element 5", "nan"),
    _c(NANF, "+Inf", bin_run(_fill(np.inf, 1)), "001.bin", "inf"),
    _c(NANF, "-Inf", bin_run(_fill(-np.inf, 3, 63)), "003.bin", "element 63", "-inf"),
    _c(NANF, "NaN, through the flow", bin_run(_fill(np.nan, 2)), "002.bin", "nan", flow=True),
]

NANA = "NaN/Inf in activations"
CASES += [
    _c(NANA, "Log of zero", bin_run(_all_files(0.0), model=_activation_model("Log")), "'a'", "sample 0"),
    _c(NANA, "Reciprocal of zero", bin_run(_all_files(0.0), model=_activation_model("Reciprocal")), "'a'",
       "sample 0"),
    _c(NANA, "Exp overflow", bin_run(_all_files(100.0), model=_activation_model("Exp")), "'a'", "sample 0"),
    _c(NANA, "Log of zero, through the flow", bin_run(_all_files(0.0), model=_activation_model("Log")), "'a'",
       "sample", flow=True),
]

OUT = "output path"
CASES += [
    _c(OUT, "a file where the folder should be", _output_run(_blocked), "out", "not a folder"),
    _c(OUT, "output is an existing folder", _output_run(_existing_folder), "q.onnx", "folder"),
    _c(OUT, "folder that cannot be created", _output_run(lambda tmp: Path("/proc/ptqflow-no/q")), "/proc"),
    _c(OUT, "output would overwrite the model", _output_run(lambda tmp: tmp / "m"), "m.onnx", "model"),
    _accept(OUT, "missing folders are created", _output_run(lambda tmp: tmp / "new" / "deeper" / "q")),
]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _rgb_png(path: Path, w: int, h: int) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path, "PNG")


def _float_tiff(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.float32), "F").save(path, "TIFF")


# ---------------------------------------------------------------------------------------------
# the docs/hostile-inputs.md table


def table() -> str:
    """docs/hostile-inputs.md's "Bad input and what you get" table, counted from CASES."""
    lines = ["| class | inputs tried | refused with a clean error | accepted by design | what you get |",
             "|---|---|---|---|---|"]
    for klass, what in CLASSES.items():
        cases = [c for c in CASES if c.klass == klass]
        refused = sum(not c.accepted for c in cases)
        lines.append(f"| {klass} | {len(cases)} | {refused} | {len(cases) - refused} | {what} |")
    total = len(CASES)
    refused = sum(not c.accepted for c in CASES)
    lines.append(f"| **all** | **{total}** | **{refused}** | **{total - refused}** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
