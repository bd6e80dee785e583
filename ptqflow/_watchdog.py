"""``python -m ptqflow._watchdog PID``: end PID's descendants once PID is gone.

Started by the CLI with a pipe on stdin; the pipe closes when the CLI exits for any reason,
SIGKILL included. Until then it notes the CLI's descendants every half second; afterwards it
terminates (then kills) those still running. psutil's process handles remember each process's
start time, so a reused PID is never touched. It ignores SIGINT and SIGTERM: a Ctrl-C or a kill
of the whole process group is the CLI's to handle, and the watchdog must outlive it to check.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import psutil

RESIDENT_MARK = "PTQFLOW_RESIDENT_PROCESS"  # set in the environment of the resident server's processes


def watch(parent_pid: int, interval: float = 0.5) -> int:
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        return 0
    me = os.getpid()
    tracked: dict[int, psutil.Process] = {}
    spared: set[int] = set()
    stdin = sys.stdin.fileno()
    while True:
        try:
            for child in parent.children(recursive=True):
                if child.pid == me or child.pid in tracked or child.pid in spared:
                    continue
                if _resident(child):
                    spared.add(child.pid)
                else:
                    tracked[child.pid] = child
        except psutil.NoSuchProcess:
            break
        ready, _, _ = select.select([stdin], [], [], interval)
        if ready and not os.read(stdin, 4096):
            break  # EOF: the CLI has exited
    stop_processes([p for p in tracked.values() if p.is_running()], timeout=5)
    return 0


def _resident(proc: psutil.Process) -> bool:
    """The resident Prefect server (ptqflow.resident) outlives the run that started it, by design."""
    try:
        return proc.environ().get(RESIDENT_MARK) == "1"
    except (psutil.Error, OSError):
        return False


def stop_processes(procs: list[psutil.Process], timeout: float) -> None:
    """SIGTERM each, give them ``timeout`` seconds together, then SIGKILL the ones still alive."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def stop_children(procs: list[subprocess.Popen], timeout: float) -> None:
    """:func:`stop_processes` for this process's own ``Popen`` children, which it also reaps (an exited child
    stays a zombie until waited for, so its PID cannot be reused before ``psutil`` looks it up)."""
    stop_processes([psutil.Process(p.pid) for p in procs if p.poll() is None], timeout)
    for p in procs:
        p.wait()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return watch(int(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
