"""How many weight bits silero-vad needs on speech-like audio (issue 15): a probe, not a feature.

    .venv-bench/bin/python benchmarks/probe_silero_bits.py

On the zoo's audio (tones, a chirp, noise, then formant-synthesized syllables; bench_zoo.silero_audio),
silero_vad_16k_op15.onnx converted by ``ptq convert --no-flow`` with WEIGHT_QUANT at 8, 10, 12 and 16 bits,
with GPTQ at 4 and 8 bits (calibrated on every fourth window), with DYNAMIC_QUANT (ALWC), and with
WEIGHT_QUANT 8 on one layer at a time (``skip_quant_node`` keeps the others FP32): the speech probability's
max and mean difference from FP32 over the 16 ms windows, and how many windows' speech/non-speech decision
(p > 0.5) flips. First, the FP32 model's own noise floor: the same audio as 16-bit PCM, and with noise 80 dB
below it. Writes benchmarks/results/silero_bits.md/.json.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_zoo  # noqa: E402
import harness  # noqa: E402

MODEL = bench_zoo.WORK / "models" / "silero_vad" / "data" / "silero_vad_16k_op15.onnx"
WEIGHT = ("[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num={bits}\nmin_quant_weight_size=0\n"
          "min_quant_weight_channel=0\n")
DYNAMIC = "[common_quant_param]\nquant_type=DYNAMIC_QUANT\nbit_num=8\n"


def convert(cfg_text: str, tag: str, shapes: str = "") -> Path:
    folder = bench_zoo.WORK / "silero_bits"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / f"{tag}.cfg"
    cfg.write_text(cfg_text)
    proc = subprocess.run([str(bench_zoo.PTQ), "convert", f"--modelFile={MODEL}", f"--configFile={cfg}",
                           f"--outputFile={folder / tag}", "--no-flow", *([f"--inputShape={shapes}"] if shapes else [])],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"{tag}: {proc.stderr.strip().splitlines()[-1]}")
    return folder / f"{tag}.onnx"


def main() -> None:
    from ptq_core.onnxgraph.load import prepare_model
    from ptq_core.onnxgraph.sites import find_weight_sites

    audio = bench_zoo.silero_audio()
    ref = bench_zoo.speech_probabilities(str(MODEL), audio)
    rows = []

    def measure(label: str, path: Path) -> None:
        got = bench_zoo.speech_probabilities(str(path), audio)
        rows.append({"variant": label, "size_ratio": path.stat().st_size / MODEL.stat().st_size,
                     **bench_zoo.speech_agreement(ref, got)})
        print(f"  {label}: {rows[-1]}", flush=True)

    import numpy as np

    # the model's own noise floor: FP32 on the same audio stored as 16-bit PCM (what a WAV file holds), and
    # with Gaussian noise at 1e-4 of the audio's standard deviation (-80 dB, far below a microphone's)
    def fp32_on(label: str, heard: np.ndarray) -> None:
        got = bench_zoo.speech_probabilities(str(MODEL), heard.astype(np.float32))
        rows.append({"variant": label, "size_ratio": 1.0, **bench_zoo.speech_agreement(ref, got)})
        print(f"  {label}: {rows[-1]}", flush=True)

    fp32_on("FP32, audio as 16-bit PCM", np.round(audio * 32767) / 32767)
    noise = np.random.default_rng(0).normal(size=audio.size)
    fp32_on("FP32, audio + noise at 1e-4 of its std (-80 dB)", audio + 1e-4 * audio.std() * noise)
    for bits in (8, 10, 12, 16):
        measure(f"WEIGHT_QUANT {bits} bit, every layer", convert(WEIGHT.format(bits=bits), f"w{bits}"))
    data, _ = bench_zoo.silero_calibration(MODEL, audio)
    gptq = "[weight_quant_param]\nquant_strategy=GPTQ\n" + data
    for bits in (4, 8):  # GPTQ takes 2-8 bits
        measure(f"WEIGHT_QUANT {bits} bit GPTQ (63 calibration windows), every layer",
                convert(WEIGHT.format(bits=bits) + gptq, f"w{bits}_gptq", bench_zoo.SILERO_SHAPES))
    measure("DYNAMIC_QUANT ALWC (LSTM W and R 8-bit, convs FP32)", convert(DYNAMIC, "dynamic"))
    nodes = [s.node for s in find_weight_sites(prepare_model(MODEL), inside_subgraphs=True)]
    for k, node in enumerate(dict.fromkeys(nodes)):
        others = ",".join(n for n in dict.fromkeys(nodes) if n != node)
        measure(f"WEIGHT_QUANT 8 bit, only `{node}`", convert(WEIGHT.format(bits=8) + f"skip_quant_node={others}\n",
                                                             f"w8_only{k}"))
    env = harness.environment(("onnxruntime",))
    md = ["# silero-vad: weight bits against speech-probability agreement", "",
          "`.venv-bench/bin/python benchmarks/probe_silero_bits.py`", "",
          f"Machine: {env['cpu']}, onnxruntime {env['packages']['onnxruntime']}; git {env['git']}, {env['date']}. "
          f"Audio: {ref.size} windows of 512 samples, {int((ref > 0.5).sum())} of them speech for FP32.", "",
          "| variant | size ratio | max abs diff | mean abs diff | decisions flipped |", "|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['size_ratio']:.3f}x | {r['speech_prob_max_diff']:.4f} | "
           f"{r['speech_prob_mean_diff']:.4f} | {r['speech_flips']} of {r['windows']} |" for r in rows]
    harness.write_results("silero_bits", "\n".join(md) + "\n", {"env": env, "rows": rows})


if __name__ == "__main__":
    main()
