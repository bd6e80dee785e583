"""GPTQ's Hessians as a cached task of their own (docs/gptq.md): keyed by the model, the calibration data
and the filters that choose the weights, not by the bit width, so a sweep over ``bit_num`` collects them
once. The statistics pass runs on the same Dask machinery as FULL_QUANT's."""

from __future__ import annotations

from prefect import task
from ptqflow.tasks.caching import content_key
from ptqflow.tasks.dask_stats import collect_distributed, dask_client
from ptqflow.tasks.full import locked_policy

from ptq_core.config import QuantConfig
from ptq_core.modes.weight.gptq_calibration import collect_hessians, save_hessians
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.onnxgraph.sites import ModelInfo
from ptq_core.stats import collect
from ptqflow._env import cache_dir
from ptqflow._phases import ours


def hessians_key(info: ModelInfo, cfg: QuantConfig, inputs: InputOptions, digest: str) -> str:
    c = cfg.common
    return content_key("gptq_hessians", info.sha256, digest, inputs, sorted(c.skip_quant_node),
                       c.min_quant_weight_size, c.min_quant_weight_channel)


def _key(ctx, params) -> str:
    return hessians_key(params["info"], params["cfg"], params["inputs"], params["digest"])


# locked like the statistics task: a sweep's points run at once, and the first computes for all of them
@task(name="gptq_hessians", cache_policy=locked_policy(_key), persist_result=True)
@ours
def gptq_hessians(model_path: str, cfg: QuantConfig, info: ModelInfo, inputs: InputOptions, digest: str,
                  rounds: list[collect.Round], dask_address: str | None = None) -> str:
    """The Hessians' .npz path (content-addressed); the collection runs on a Dask cluster."""
    with dask_client(dask_address) as client:
        def collector(model, tensors, rnds, method):
            return collect_distributed(client, model, tensors, rnds, method)

        hessians = collect_hessians(model_path, cfg, inputs, cache_dir("work"), collector, rounds)
    path = cache_dir("plans") / f"{hessians_key(info, cfg, inputs, digest)}.hessians.npz"
    return str(save_hessians(hessians, path))
