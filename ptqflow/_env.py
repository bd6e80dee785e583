"""Offline, project-local Prefect settings, applied before Prefect is first imported.

Prefect reads its settings at import time, so this module must run first (``ptqflow/__init__``
imports it). User-set variables win: every default here is a ``setdefault``.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Where ptqflow keeps Prefect's database, task results and its content-addressed cache."""
    return Path(os.environ.get("PTQFLOW_HOME", Path.cwd() / ".ptqflow")).resolve()


def apply_defaults() -> None:
    base = home()
    os.environ.setdefault("PTQFLOW_HOME", str(base))
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ptqflow")
    os.environ.setdefault("PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT", "false")


def cache_dir(kind: str) -> Path:
    path = home() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
