"""Checks that run before any work starts, so a run that must fail fails in seconds and writes nothing.

Output paths are probed up front (not at the end, after minutes of calibration), and a graph whose
ops onnxruntime cannot run or whose nodes read undefined tensors is refused before a quantized model
is written (the weight-only path runs onnxruntime only after writing, for the summary).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from ptq_core.errors import ConfigError, ModelError, PtqError

#: Domains whose ops onnxruntime implements beyond the ONNX standard; their names are not checked here.
RUNTIME_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc", "ai.onnx.contrib")


def output_target(output: str | Path) -> Path:
    path = Path(output)
    return path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")


def check_output(output: str | Path, model: str | Path | None = None) -> Path:
    """The output model can be written: not a folder, not the input model, and its nearest existing
    folder accepts a file (probed with a temporary file that is removed at once). Missing folders
    are fine: they are created when the model is written."""
    if not str(output).strip():
        raise PtqError("--outputFile is empty; give the output model's path (NAME writes NAME.onnx)")
    if str(output).endswith(("/", os.sep)) or Path(output).is_dir():
        raise PtqError(f"--outputFile: {output} is a folder; give a file name in it (NAME writes NAME.onnx)")
    target = output_target(output)
    if target.is_dir():
        raise PtqError(f"--outputFile: {target} is a folder; give a file name (the model is written to NAME.onnx)")
    if model is not None and target.exists() and Path(model).exists() and target.resolve() == Path(model).resolve():
        raise PtqError(f"--outputFile: {target} is the input model; writing there would overwrite the model")
    folder = target.parent.absolute()
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PtqError(f"--outputFile: the output folder {folder} cannot be created: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ptq-write-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PtqError(f"--outputFile: the output folder {folder} cannot be written "
                       f"({exc.strerror or type(exc).__name__} in {existing})") from None
    return target


def check_graph(model: onnx.ModelProto, path: str | Path) -> None:
    """Every top-level node names an op that exists and reads tensors that are defined."""
    imports = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    defined = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        where = f"{path}: node {node.name or '(unnamed)'!r} ({node.domain + ':' if node.domain else ''}{node.op_type})"
        if (node.domain, node.op_type) not in local and domain not in RUNTIME_DOMAINS:
            if domain not in imports:
                raise ModelError(f"{where}: its domain {domain!r} is not imported by the model")
            if not onnx.defs.has(node.op_type, "" if domain == "ai.onnx" else domain):
                known = [s.name for s in onnx.defs.get_all_schemas() if (s.domain or "ai.onnx") == domain]
                from ptq_core.errors import did_you_mean

                raise ModelError(f"{where}: no such op in domain {domain!r}{did_you_mean(node.op_type, known)}; "
                                 "onnxruntime could not run the model")
        for name in node.input:
            if name not in defined:
                raise ModelError(f"{where}: input {name!r} is not a graph input, an initializer or an earlier "
                                 "node's output")
        defined.update(node.output)


def check_calibration_shapes(inputs, shapes: dict, source: str) -> None:
    """Calibration files have one fixed size, so every dynamic dim but the batch needs --inputShape.

    ``inputs`` are ``ModelInfo.inputs`` triples (name, elem type, dims with str for symbolic dims).
    """
    for name, _, dims in inputs:
        if name in shapes:
            continue
        dynamic = [i for i, d in enumerate(dims) if not isinstance(d, int) and i > 0]
        if dynamic:
            example = ",".join("1" if i == 0 else str(d) if isinstance(d, int) else f"<{d}>" for i, d in enumerate(dims))
            raise ConfigError(
                f"{source}: model input {name!r} has dynamic dims {list(dims)} (axis {', '.join(map(str, dynamic))}); "
                f"calibration data needs a fixed shape: give --inputShape={name}:{example} with the real sizes "
                "(or [ascend_context] input_shape)"
            )
