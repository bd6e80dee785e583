"""The Python entry point for notebooks and scripts: the same job as ``ptq convert``."""

from __future__ import annotations

from pathlib import Path

import ptqflow as _package

if getattr(_package, "__file__", None) is None:  # a namespace package: some folder named ptqflow came first
    raise ImportError(f"'ptqflow' here is the folder {next(iter(_package.__path__), '?')} (no __init__.py: a clone "
                      "of the repository, say), which hides the installed package; run the script from another "
                      "folder or rename that one")

from ptq_core.convert import convert_direct  # noqa: E402
from ptq_core.onnxgraph.session import InputOptions  # noqa: E402
from ptq_core.summary import Summary  # noqa: E402


def convert(model: str | Path, config: str | Path, output: str | Path, *, input_shape: str = "",
            input_data_format: str | None = None, use_flow: bool = True, dask_address: str | None = None,
            progress=None, max_drop: float | None = None, optimize: str | None = None) -> Summary:
    """Quantize ``model`` with the converter_lite ``config``; writes ``output`` + ``.onnx``.

    ``use_flow=True`` runs the cached Prefect ``quantize`` flow (a temporary local Prefect server
    starts on first use; FULL_QUANT statistics run on a local Dask cluster, or on ``dask_address``);
    ``use_flow=False`` runs the same steps directly in this process, without Prefect or Dask.
    ``max_drop`` (FULL_QUANT) overrides ``[ptqflow] max_drop``: keep nodes FP32, worst first, until
    1 - mean output cosine on the calibration set is at most this. ``optimize`` is converter_lite's
    ``--optimize`` (``ascend_oriented`` / ``gpu_oriented`` choose the FULL_QUANT target the config leaves unset).
    """
    if use_flow:
        from ptqflow.resident import in_use, start_early

        start_early()  # the server boots while Prefect and the flow are imported
        from ptqflow.flows.quantize import quantize, run_tags

        with in_use(), run_tags(model, config, max_drop):  # the resident local server (started on first use), unless PREFECT_API_URL is set
            return quantize(str(model), str(config), str(output), input_shape, input_data_format, dask_address,
                            max_drop, optimize)
    return convert_direct(model, config, output, InputOptions.from_flags(input_shape, input_data_format), progress,
                          max_drop=max_drop, optimize=optimize)
