"""SHA-256 of the benchmark models' conversions by the code tree in the current folder: run it in two
checkouts (before and after a refactor) and compare. The test corpus (tests/golden) covers the demo and
models built in code; this covers the PP-OCR classifier and recognizer from rapidocr-onnxruntime.

    cd <checkout> && /path/to/.venv-bench/bin/python /path/to/benchmarks/golden_models.py

Run ``make bench`` (or benchmarks/setup_bench.sh) once first: it installs the models and writes the
calibration sets under benchmarks/work/.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the checkout under test, not this file's
HERE = Path(__file__).resolve().parent

import ptq_core  # noqa: E402

assert ptq_core.__file__.startswith(os.getcwd()), f"run from the checkout to test, not {ptq_core.__file__}"
try:
    from ptq_core.convert import convert_direct
    from ptq_core.onnxgraph.session import InputOptions, parse_input_shape
except ImportError:  # the layout before issue 16
    from ptq_core.pipeline import convert_direct
    from ptq_core.runtime import InputOptions, parse_input_shape


def cases(models: Path, cfg: Path) -> list[tuple[str, Path, str, str | None]]:
    cls, rec = models / "ch_ppocr_mobile_v2.0_cls_infer.onnx", models / "ch_PP-OCRv4_rec_infer.onnx"
    return [("classifier FULL KL per-channel", cls, (cfg / "cls_True_True.cfg").read_text(), "x:1,3,48,192"),
            ("classifier FULL per-layer, equalization auto", cls, (cfg / "cls_False_auto.cfg").read_text(),
             "x:1,3,48,192"),
            ("recognizer FULL KL per-channel", rec, (cfg / "rec_True_True.cfg").read_text(), "x:1,3,48,320"),
            ("classifier WEIGHT 4 bit", cls, "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\n", None),
            ("recognizer WEIGHT mixed bit", rec, "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\n"
             "[mixed_bit_weight_quant_param]\ninit_scale=0.02\n", None),
            ("recognizer DYNAMIC", rec, "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n", None)]


def main() -> None:
    import rapidocr_onnxruntime

    models = Path(rapidocr_onnxruntime.__file__).parent / "models"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PTQFLOW_HOME"] = str(Path(tmp) / "home")
        for label, model, text, shape in cases(models, HERE / "work" / "parity" / "cfg"):
            cfg = Path(tmp) / "c.cfg"
            cfg.write_text(text)
            inputs = InputOptions(shapes=tuple(parse_input_shape(shape).items())) if shape else InputOptions()
            summary = convert_direct(model, cfg, Path(tmp) / "out", inputs, work_dir=Path(tmp) / "work")
            print(f"{label}: {hashlib.sha256(Path(summary.output).read_bytes()).hexdigest()}", flush=True)


if __name__ == "__main__":
    main()
