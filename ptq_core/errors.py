"""The one error type users see.

Every bad input ends in a ``PtqError`` whose message is a single line naming the file,
section, key or node, the value, and what is allowed. The CLI prints it and exits with
code 2; nothing else may escape to the user as a traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class PtqError(Exception):
    """A user-facing error: one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(PtqError):
    """The config file (or a CLI flag standing in for it) is invalid."""


class ModelError(PtqError):
    """The ONNX model cannot be read or does not fit the request."""


class DataError(PtqError):
    """Calibration data cannot be read or does not fit the model."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The few candidates nearest to ``name``, for "did you mean" hints."""
    pool = list(candidates)
    hits = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    if not hits:
        lowered = {c.lower(): c for c in pool}
        hits = [lowered[h] for h in difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)]
    return hits


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix, or an empty string when nothing is near."""
    hits = closest(name, candidates)
    if not hits:
        return ""
    return " (did you mean " + " or ".join(repr(h) for h in hits) + "?)"
