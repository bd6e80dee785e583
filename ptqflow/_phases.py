"""Where a ``ptq`` call's wall time went: waiting for the server, our own work, and the rest.

The summary's ``time split`` line reads these so that a user can tell a slow quantization from a slow
start: "server start" is time spent waiting for the resident Prefect server to answer, "ptqflow" is
time inside our task bodies and the CLI's checks, and "Prefect and start-up" is everything else
(interpreter, imports, the flow engine and its API calls, letting the server record the run).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

_lock = threading.Lock()
_local = threading.local()
_totals = {"server": 0.0, "work": 0.0}
_started: float | None = None  # perf_counter() at the caller's start when a warm runner's child runs for it


def reset(caller_age_s: float | None = None) -> None:
    """Start over; ``caller_age_s``: how long the ``ptq`` process that sent this request had run."""
    global _started
    with _lock:
        _totals.update(server=0.0, work=0.0)
    _started = None if caller_age_s is None else time.perf_counter() - caller_age_s


@contextmanager
def measure(kind: str) -> Iterator[None]:
    """Add the time inside to ``kind`` ("server" or "work"); nested measures count once."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    start = time.perf_counter()
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            with _lock:
                _totals[kind] += time.perf_counter() - start


def ours(fn: Callable) -> Callable:
    """Count a task body as ptqflow's work (under ``@task``: Prefect's own bookkeeping stays outside)."""
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        with measure("work"):
            return fn(*args, **kwargs)

    return timed


def process_age() -> float:
    """Seconds since this process started, to the clock tick (psutil's create_time can be a second off:
    it adds the boot time, which Linux gives in whole seconds)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return time.time() - psutil.Process().create_time()


def since_process_start() -> float:
    """Seconds since this ``ptq`` process (or, in a warm runner's child, its caller) started."""
    if _started is not None:
        return time.perf_counter() - _started
    return process_age()


def split(total_s: float) -> dict[str, float]:
    with _lock:
        server, work = _totals["server"], _totals["work"]
    return {"server start": server, "Prefect and start-up": max(0.0, total_s - server - work), "ptqflow": work}
