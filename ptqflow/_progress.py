"""A process-wide hook so tasks running inside a flow can drive the CLI's progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

_current: Callable[[int, int, str], None] | None = None


@contextmanager
def terminal(callback: Callable[[int, int, str], None] | None) -> Iterator[None]:
    global _current
    previous, _current = _current, callback
    try:
        yield
    finally:
        _current = previous


def report(done: int, total: int, label: str) -> None:
    if _current is not None:
        _current(done, total, label)
