"""The ``watch-folder`` flow: quantize every new or changed ``<name>.onnx`` that has a sibling ``<name>.cfg``.

Convention: ``DIR/resnet.onnx`` + ``DIR/resnet.cfg`` -> ``OUT/resnet.onnx`` (OUT defaults to
``DIR/quantized``). Only the top level of DIR is scanned; a model without a .cfg is skipped. A model is
"changed" when the SHA-256 of its bytes (with its external data files) or of its .cfg's bytes changes;
the hashes are remembered in
``$PTQFLOW_HOME/watch/<hash of DIR>.json``. A model that fails is remembered with its error and retried
only after its model or config changes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import flow, get_run_logger
from ptqflow.tasks.caching import file_digest

from ptq_core.files import write_atomic
from ptq_core.onnxgraph.load import file_sha256
from ptqflow._env import home


def state_path(folder: Path) -> Path:
    path = home() / "watch" / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _save(path: Path, state: dict) -> None:
    write_atomic(path, json.dumps(state, indent=1, sort_keys=True))


def pending(folder: Path, state: dict) -> tuple[list[tuple[Path, Path, str]], list[str]]:
    """(model, config, content hash) of what needs quantizing, and the models skipped for lack of a .cfg."""
    todo, no_cfg = [], []
    for model in sorted(folder.glob("*.onnx")):
        cfg = model.with_suffix(".cfg")
        if not cfg.is_file():
            no_cfg.append(model.name)
            continue
        # file_sha256 covers external data: new weights may change only the data file beside the model
        digest = hashlib.sha256(f"{file_sha256(model)}:{file_digest(cfg)}".encode()).hexdigest()
        if state.get(model.name, {}).get("hash") != digest:
            todo.append((model, cfg, digest))
    return todo, no_cfg


@flow(name="watch-folder", persist_result=True)
def watch_folder(folder: str, output_dir: str = "", input_shape: str = "", dask_address: str | None = None) -> list[dict]:
    """One scan: quantize what is new or changed in ``folder`` with its own config, remember the hashes."""
    from ptqflow.flows.quantize import quantize

    from ptq_core.errors import PtqError

    logger = get_run_logger()
    root = Path(folder).resolve()
    if not root.is_dir():
        raise PtqError(f"--watch {folder}: not a folder")
    out = Path(output_dir).resolve() if output_dir else root / "quantized"
    out.mkdir(parents=True, exist_ok=True)
    spath = state_path(root)
    state = _load(spath)
    todo, no_cfg = pending(root, state)
    for name in no_cfg:
        logger.info("skipped %s: no %s beside it", name, Path(name).with_suffix(".cfg").name)
    done = []
    for model, cfg, digest in todo:
        target = out / model.stem
        try:
            summary = quantize(str(model), str(cfg), str(target), input_shape, "NCHW", dask_address)
            entry = {"hash": digest, "status": "quantized", "output": str(summary.output),
                     "ratio": round(summary.ratio, 3), "cosine": round(summary.output_cosine, 6)}
        except Exception as exc:  # one bad model must not stop the others; it is retried once it changes
            entry = {"hash": digest, "status": f"failed: {type(exc).__name__}: {exc}".splitlines()[0]}
            logger.error("%s: %s", model.name, entry["status"])
        state[model.name] = entry
        _save(spath, state)
        done.append({"model": model.name, **entry})
    logger.info("%d quantized or failed, %d unchanged, %d without a config", len(done),
                len(list(root.glob("*.onnx"))) - len(done) - len(no_cfg), len(no_cfg))
    return done
