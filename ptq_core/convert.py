"""One conversion in this process (``ptq convert --no-flow``, ``ptqflow.api.convert(use_flow=False)``):
the config read and checked, the model analysed, then the mode's steps from the registry
(``ptq_core.modes.registry``), the same list the Prefect flow runs as cached tasks.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ptq_core.config import QuantConfig, check_runnable, load_config
from ptq_core.errors import ConfigError
from ptq_core.modes.job import Job, Progress
from ptq_core.modes.registry import MODES, direct_steps, mode_of, run_steps
from ptq_core.onnxgraph.preflight import check_output
from ptq_core.onnxgraph.session import InputOptions
from ptq_core.onnxgraph.sites import ModelInfo, analyse_model
from ptq_core.summary import Summary


def resolve_config(config_path: str | Path, max_drop: float | None = None, optimize: str | None = None) -> QuantConfig:
    """Read, validate and check that the config can run here, before any model or data is touched.

    ``max_drop`` (``--max-drop``) overrides ``[ptqflow] max_drop``; ``optimize`` (``--optimize``) may
    choose the FULL_QUANT target where the config does not (``ptq_core.config.flags``).
    """
    from ptq_core.config.flags import apply_optimize

    cfg = apply_optimize(apply_max_drop(load_config(config_path), max_drop), optimize)
    check_runnable(cfg)
    if cfg.common.debug_info_save_path:
        from ptq_core.debug.driver import debug_folder

        debug_folder(cfg, create=False)  # refused now, before any model or data is read; created when written
    return mode_of(cfg).check(cfg)


def apply_max_drop(cfg: QuantConfig, max_drop: float | None) -> QuantConfig:
    """``--max-drop`` over the config's ``[ptqflow] max_drop``; refused where the loop does not run."""
    if max_drop is not None:
        cfg = cfg.replace(ptqflow={"max_drop": float(max_drop)})
    mode = MODES.get(cfg.common.quant_type)
    if cfg.ptqflow.max_drop is not None and not (mode and mode.max_drop):
        raise ConfigError(f"{cfg.source}: [ptqflow] max_drop={cfg.ptqflow.max_drop:g} (or --max-drop) applies to "
                          f"FULL_QUANT only; quant_type={cfg.common.quant_type} keeps every choice it makes "
                          "(remove the key or the flag, or use skip_quant_node)")
    return cfg
























def convert_direct(model: str | Path, config: str | Path, output: str | Path, inputs: InputOptions | None = None,
                   progress: Progress | None = None, work_dir: str | Path | None = None,
                   info: ModelInfo | None = None, max_drop: float | None = None,
                   optimize: str | None = None) -> Summary:
    """The whole conversion without Prefect: the same steps the flow runs.

    ``info`` lets a caller that already analysed the model (the CLI's pre-check) skip a second read;
    ``max_drop`` overrides ``[ptqflow] max_drop``, ``optimize`` is ``--optimize``.
    """
    start = time.perf_counter()
    cfg = resolve_config(config, max_drop, optimize)
    check_output(output, model)
    info = info or analyse_model(model)
    from ptq_core.data.input_layout import shapes_from_images

    inputs = shapes_from_images(cfg, info.inputs, inputs or InputOptions())  # dynamic dims the images fix
    mode = mode_of(cfg)
    with tempfile.TemporaryDirectory(prefix="ptq-work-") as tmp:
        job = Job(str(model), cfg, info, str(output), inputs, Path(work_dir or tmp), progress)
        state = run_steps(mode, direct_steps(mode), job)
    summary = state["summary"]
    if cfg.common.debug_info_save_path:
        from ptq_core.debug.driver import debug_step

        summary = replace(summary, debug=debug_step(cfg, model, summary.output, inputs,
                                                    plan=state.get("plan") if mode.debug_reads_plan else None,
                                                    work_dir=work_dir, progress=progress))
    return replace(summary, wall_time_s=time.perf_counter() - start)
