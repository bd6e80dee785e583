"""A fixed corpus of conversions whose output bytes must not change when the code is only moved.

Every mode, FULL_QUANT method and target, weight encodings and bit widths, on the bundled digits demo
and on models built in code. The latency guard is off (its decisions are timings, not numerics).
``python tests/golden/corpus.py --record`` writes the SHA-256 of each output for this machine's
numerics (CPU ISA, onnxruntime and NumPy versions) into ``hashes.json``; ``test_golden_models`` checks
them. Activation ranges come from onnxruntime's float kernels and NumPy's reductions, whose last bits
depend on the ISA, so hashes are kept per machine key and only a recorded key is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent)]

HASHES = HERE / "hashes.json"
DIGITS = ROOT / "examples" / "digits" / "digits_cnn.onnx"
DIGITS_BIN = ROOT / "examples" / "digits" / "bin"

WEIGHT = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nmin_quant_weight_size=0\nmin_quant_weight_channel=0\n"


def _full(method: str = "MAX_MIN", extra: str = "", target: str = "", ptq: str = "") -> str:
    return ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
            f"[data_preprocess_param]\ncalibrate_path=input:{DIGITS_BIN}\ncalibrate_size=24\ninput_type=BIN\n"
            f"[full_quant_param]\nactivation_quant_method={method}\nbias_correction=true\n{extra}"
            + (f"target_device={target}\n" if target else "")
            + f"[ptqflow]\nlatency_guard=false\n{ptq}")


# name -> (model, config text, input shape flag or None)
CASES: dict[str, tuple[str, str, str | None]] = {
    "weight_8bit_mixed_ops": ("mixed_ops", WEIGHT + "bit_num=8\n", None),
    "weight_4bit_per_layer": ("mixed_ops", WEIGHT + "bit_num=4\n[weight_quant_param]\nper_channel=false\n", None),
    "weight_2bit_mlp": ("mlp", WEIGHT + "bit_num=2\n", None),
    "weight_1bit_mlp": ("mlp", WEIGHT + "bit_num=1\n", None),
    "weight_12bit_mlp": ("mlp", WEIGHT + "bit_num=12\n", None),
    "weight_16bit_mlp": ("mlp", WEIGHT + "bit_num=16\n", None),
    "weight_16bit_unencoded": ("mixed_ops", WEIGHT + "bit_num=16\nenable_encode=false\n", None),
    "weight_3bit_packed_mlp": ("mlp", WEIGHT + "bit_num=3\n", None),
    "weight_mixed_init_scale": ("mixed_ops", WEIGHT + "bit_num=0\n[mixed_bit_weight_quant_param]\ninit_scale=0.02\n",
                                None),
    "weight_mixed_digits": ("digits", WEIGHT + "bit_num=0\n[mixed_bit_weight_quant_param]\ninit_scale=0.05\n", None),
    "dynamic_acwl_mlp": ("mlp", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                                "[dynamic_quant_param]\nquant_strategy=ACWL\n", None),
    "dynamic_alwc_mlp": ("mlp", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"
                                "[dynamic_quant_param]\nquant_strategy=ALWC\n", None),
    "dynamic_alwc_mixed_ops": ("mixed_ops", "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n", None),
    "full_max_min_digits": ("digits", _full(), "input:1,1,8,8"),
    "full_kl_digits": ("digits", _full("KL"), "input:1,1,8,8"),
    "full_outlier_digits": ("digits", _full("REMOVAL_OUTLIER"), "input:1,1,8,8"),
    "full_per_layer_cle_digits": ("digits", _full(extra="per_channel=false\n", ptq="cross_layer_equalization=true\n"),
                                  "input:1,1,8,8"),
    "full_nvgpu_digits": ("digits", _full(target="NVGPU"), "input:1,1,8,8"),
    "full_dsp_digits": ("digits", _full(target="DSP"), "input:1,1,8,8"),
    "full_ascend_digits": ("digits", _full(target="ASCEND"), "input:1,1,8,8"),
    "full_vnni_form_digits": ("digits", _full(ptq="int8_form=vnni\n"), "input:1,1,8,8"),
    "full_guard_kept_digits": ("digits", _full().replace("latency_guard=false", "latency_guard=true"), "input:1,1,8,8"),
}


def machine_key() -> str:
    import numpy as np
    import onnxruntime as ort

    from ptq_core.onnxgraph.cpu import machine_isa

    isa = machine_isa().rsplit("(", 1)[-1].rstrip(")")
    return f"{isa} | onnxruntime {ort.__version__} | numpy {np.__version__}"


def build_models(folder: Path) -> dict[str, Path]:
    from modelgen import mixed_ops_model, mlp_model, save

    folder.mkdir(parents=True, exist_ok=True)
    return {"digits": DIGITS, "mixed_ops": save(mixed_ops_model(), folder / "mixed_ops.onnx"),
            "mlp": save(mlp_model(), folder / "mlp.onnx")}


def convert_case(name: str, work: Path) -> Path:
    """Run one case without Prefect and return the written model."""
    from ptq_core.convert import convert_direct
    from ptq_core.onnxgraph.session import InputOptions, parse_input_shape

    model_key, text, shape = CASES[name]
    model = build_models(work / "models")[model_key]
    cfg = work / f"{name}.cfg"
    cfg.write_text(text)
    inputs = InputOptions(shapes=tuple(parse_input_shape(shape).items())) if shape else InputOptions()
    with _guard_keeps_every_conv(name.startswith("full_guard")):
        summary = convert_direct(model, cfg, work / "out" / name, inputs, work_dir=work / "w" / name)
    return Path(summary.output)


@contextlib.contextmanager
def _guard_keeps_every_conv(active: bool):
    """The guard's decisions are timings; the corpus fixes them (every Conv kept FP32, weights stored
    8-bit) so the bytes depend on numerics only."""
    from ptq_core.modes.full import latency_guard as speed

    original = speed.int8_losers

    def convs_lose(model, cfg, target, nodes, shapes, table):
        return {n: "int8 kernel not faster here (corpus)" for n in nodes if n.startswith("Conv")}, {}

    if active:
        speed.int8_losers = convs_lose
    try:
        yield
    finally:
        speed.int8_losers = original


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded() -> dict[str, dict[str, str]]:
    return json.loads(HASHES.read_text()) if HASHES.exists() else {}


def main() -> None:
    import os
    import tempfile

    if "--record" not in sys.argv:
        raise SystemExit("usage: python tests/golden/corpus.py --record")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PTQFLOW_HOME"] = str(Path(tmp) / "home")
        got = {name: sha256(convert_case(name, Path(tmp))) for name in CASES}
    table = recorded()
    table[machine_key()] = got
    HASHES.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(got)} hashes for {machine_key()}")


if __name__ == "__main__":
    main()
