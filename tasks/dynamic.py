"""Tasks of the dynamic-quantization path: one cached quantize step, then emit and summarize."""

from __future__ import annotations

import os
import pickle

import onnx
from prefect import task
from ptqflow.tasks.caching import content_key

from ptq_core import convert as pipeline
from ptq_core.config import QuantConfig
from ptq_core.modes.weight.emit import save_model_atomic
from ptq_core.onnxgraph.graph import ModelInfo
from ptq_core.onnxgraph.session import InputOptions
from ptqflow._env import cache_dir
from ptqflow._phases import ours


def _key(ctx, params) -> str:
    return content_key("quantize_dynamic", params["info"].sha256, params["cfg"].fingerprint())


@task(name="quantize_dynamic", cache_key_fn=_key, persist_result=True)
@ours
def quantize_dynamic(model_path: str, cfg: QuantConfig, info: ModelInfo) -> dict:
    plan, quantized = pipeline.quantize_dynamic_model(model_path, cfg)
    key = content_key("dynamic-result", info.sha256, cfg.fingerprint())
    model_file = save_model_atomic(quantized, cache_dir("models") / f"{key}.onnx")
    meta = cache_dir("plans") / f"{key}.pkl"
    tmp = meta.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(plan, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(meta)
    return {"model_path": str(model_file), "plan_path": str(meta)}


@task(name="emit_model")
@ours
def emit_dynamic(record: dict, output: str) -> str:
    return str(save_model_atomic(onnx.load(record["model_path"]), pipeline.output_file(output)))


@task(name="summarize")
@ours
def summarize_dynamic(model_path: str, output_path: str, cfg: QuantConfig, info: ModelInfo, record: dict,
                      inputs: InputOptions):
    with open(record["plan_path"], "rb") as fh:
        plan = pickle.load(fh)
    return pipeline.summarize_dynamic(model_path, output_path, cfg, info, plan, inputs)
