"""What keeps an interrupted ``ptq`` run clean: SIGTERM handling, a child-process watchdog, one-line errors.

* SIGTERM becomes :class:`Terminated` (a ``KeyboardInterrupt``), so a ``kill`` unwinds exactly like
  Ctrl-C: context managers close the Dask cluster, temporary files are removed, Prefect's atexit hook
  stops its temporary server, and the process exits 143 (130 for Ctrl-C). Either signal arms a
  deadline: if unwinding has not finished after ``GRACE_S`` (Prefect retries API calls for minutes when
  Ctrl-C has also stopped its server), the run ends its children and exits.
* SIGKILL runs no code at all, so a small watchdog process (``python -m ptqflow._watchdog``) tracks
  the CLI's descendants and ends them when the CLI disappears. Dask's worker processes already exit
  when their parent dies; Prefect's temporary server (a uvicorn subprocess) would not.
* In flow runs Prefect logs a failing task's exception with its traceback on the console; for our own
  user-facing errors (and for a run interrupted on purpose) that is noise around the one line the CLI
  prints, so the CLI drops it (the run's state in the API keeps the message).
  The records still reach the Prefect API and the UI.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

from ptq_core.errors import PtqError

_ERROR_NAMES = ("PtqError", "ConfigError", "ModelError", "DataError")
#: Prefect's crash reports for a run we interrupted on purpose; the CLI's own line says it.
_INTERRUPT_TEXTS = ("aborted by a termination signal", "aborted by an interrupt signal", "KeyboardInterrupt",
                   "Terminated()")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread; exit code 128 + 15 like a process the signal ended."""

    exit_code = 143


#: Seconds an interrupted run may spend unwinding before it ends itself and its children.
GRACE_S = 20.0
_finished = threading.Event()
_armed = threading.Event()


def _end_children() -> None:
    import psutil

    from ptqflow._watchdog import stop_processes

    stop_processes(psutil.Process().children(recursive=True), timeout=3)


def _arm_deadline(code: int) -> None:
    """Unwinding can stall: Ctrl-C also stops Prefect's server, and Prefect then retries its API calls
    for minutes. After GRACE_S the run ends its children and exits, still without writing anything."""
    if _armed.is_set():
        return
    _armed.set()

    def deadline() -> None:
        if _finished.wait(GRACE_S):
            return
        print(f"ptq: {'terminated' if code == 143 else 'interrupted'}; cleanup took over {GRACE_S:.0f} s, "
              "ending now; nothing was written", file=sys.stderr, flush=True)
        _end_children()
        os._exit(code)

    threading.Thread(target=deadline, name="ptq-deadline", daemon=True).start()


#: loggers of the libraries that wind down after an interrupt (with their children)
_WINDING_DOWN = ("prefect", "tornado", "distributed", "asyncio")


def _hush_libraries() -> None:
    """After an interrupt the CLI's one line is the whole report: what Prefect's workers and Dask's event
    loop log while they wind down is noise (Prefect's "EventsWorker - Still processing items", a callback
    of distributed's ``sync`` failing with a NameError when the interrupt lands inside it: both seen in
    tests/service/test_interrupt.py). The run's state in the API still says it was interrupted."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _WINDING_DOWN]
    for name in {*_WINDING_DOWN, *names, *_prefect_service_loggers()}:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _prefect_service_loggers() -> set[str]:
    """Prefect's queue services (EventsWorker, APILogWorker, ...) log under their bare class names."""
    services = sys.modules.get("prefect._internal.concurrency.services")
    base = getattr(services, "_QueueServiceBase", None)
    names, todo = set(), [base] if base is not None else []
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _on_sigterm(signum, frame) -> None:
    _arm_deadline(Terminated.exit_code)
    _hush_libraries()
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    _arm_deadline(130)
    _hush_libraries()
    raise KeyboardInterrupt()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM unwinds the stack like Ctrl-C (and both have a deadline); the previous
    handlers come back after."""
    _finished.clear()
    _armed.clear()
    try:
        previous = {sig: signal.signal(sig, handler)
                    for sig, handler in ((signal.SIGTERM, _on_sigterm), (signal.SIGINT, _on_sigint))}
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        _finished.set()
        _loud_console()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_watchdog: subprocess.Popen | None = None


def watch_children() -> None:
    """Start the watchdog once per process: it ends our descendants if we die without cleaning up."""
    global _watchdog
    if _watchdog is not None and _watchdog.poll() is None:
        return
    _watchdog = subprocess.Popen([sys.executable, "-m", "ptqflow._watchdog", str(os.getpid())],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 close_fds=True)


class _HideUserErrors(logging.Filter):
    """Drop console records that only repeat one of our one-line errors (with a traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (PtqError, KeyboardInterrupt)):
            return False
        if record.levelno >= logging.ERROR:
            text = str(record.msg)
            if any(name in text for name in _ERROR_NAMES + _INTERRUPT_TEXTS):
                return False
        return True


_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine")
_quiet_filter = _HideUserErrors()


def quiet_console() -> None:
    """Drop those records at Prefect's run loggers until the CLI call ends (:func:`sigterm_as_interrupt`
    removes the filter again). Logger filters, not handler filters: Prefect sets up its handlers lazily,
    and setting them up here would reconfigure logging under an embedding application or test harness.
    The run's state in the API still carries the error message."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet_filter not in logger.filters:
            logger.addFilter(_quiet_filter)


def _loud_console() -> None:
    for name in _RUN_LOGGERS:
        logging.getLogger(name).removeFilter(_quiet_filter)
