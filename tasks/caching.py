"""Content-hash cache keys: model bytes, resolved config and tool version, never paths or run ids."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import ptq_core


@functools.cache
def code_fingerprint() -> str:
    """A hash of the tool's own source files, so cached results never outlive the code that made them.

    The version string alone is not enough: an editable install or a patched release keeps its version
    while a cached result (a pickled ``QuantConfig``, say) no longer matches the classes that read it.
    """
    import ptqflow.flows
    import ptqflow.tasks

    import ptqflow

    h = hashlib.sha256(ptq_core.__version__.encode())
    roots = sorted({Path(m.__file__).resolve().parent for m in (ptq_core, ptqflow, ptqflow.flows, ptqflow.tasks)})
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root.parent)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def content_key(*parts) -> str:
    """A stable hash of JSON-able parts plus the tool's version and source (new code, new keys)."""
    text = json.dumps([ptq_core.__version__, code_fingerprint(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def progress_key(stage: str, model_path: str, cfg) -> str:
    """A progress artifact's key: one per stage, model and settings (a sweep's points each get their own
    card). Prefect keys allow lowercase letters, digits and dashes only."""
    import re
    from pathlib import Path

    slug = re.sub(r"[^a-z0-9]+", "-", Path(model_path).stem.lower()).strip("-") or "model"
    return f"progress-{stage}-{slug}-{cfg.fingerprint()[:8]}"
