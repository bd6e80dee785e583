"""Content-hash cache keys: model bytes, resolved config and tool version, never paths or run ids."""

from __future__ import annotations

import hashlib
import json

import ptq_core


def content_key(*parts) -> str:
    """A stable hash of JSON-able parts plus the tool version (a new release invalidates every cache)."""
    text = json.dumps([ptq_core.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
