"""Cache locks die with their holder: a killed run must not make every later run wait forever."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
from ptqflow.tasks.locks import ProcessLockManager


def _dead_owner(manager: ProcessLockManager, key: str) -> None:
    """Take the lock from a child process, then SIGKILL it: the lock file stays behind."""
    code = ("import sys; from pathlib import Path; from ptqflow.tasks.locks import ProcessLockManager; "
            f"m = ProcessLockManager(Path({str(manager.lock_files_directory)!r})); "
            f"m.acquire_lock({key!r}, 'child'); print('held', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    child.kill()
    child.wait()


def test_a_lock_whose_holder_was_killed_is_taken_at_once(tmp_path):
    manager = ProcessLockManager(tmp_path)
    _dead_owner(manager, "k")
    assert (tmp_path / "k.lock").exists()
    assert manager.acquire_lock("k", "rerun", acquire_timeout=2)
    manager.release_lock("k", "rerun")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_held_by_a_live_process_is_respected(tmp_path):
    holder = ProcessLockManager(tmp_path)
    assert holder.acquire_lock("k", "first")
    other = ProcessLockManager(tmp_path)
    assert not other.acquire_lock("k", "second", acquire_timeout=0.5)
    assert psutil.pid_exists(os.getpid())
    holder.release_lock("k", "first")
    assert other.acquire_lock("k", "second", acquire_timeout=0.5)


def test_a_lock_file_not_yet_written_reads_as_held_not_as_an_error(tmp_path):
    """Prefect creates the lock file empty, then writes it; a parallel sweep point reading in between raised
    ValueError (EOF while parsing) and failed its task."""
    (tmp_path / "k.lock").touch()
    manager = ProcessLockManager(tmp_path)
    assert manager.is_locked("k")
    assert not manager.is_lock_holder("k", "me")


def test_a_lock_file_written_a_moment_later_is_read(tmp_path):
    import json
    import threading
    import time

    path = tmp_path / "k.lock"
    path.touch()

    def write_later():
        time.sleep(0.1)
        path.write_text(json.dumps({"holder": "first", "expiration": None}))

    writer = threading.Thread(target=write_later)
    writer.start()
    info = ProcessLockManager(tmp_path)._get_lock_info("k", use_cache=False)
    writer.join()
    assert info["holder"] == "first"


def test_parallel_threads_taking_one_lock_never_raise(tmp_path):
    import threading

    errors, held = [], []

    def take(i):
        manager = ProcessLockManager(tmp_path)
        try:
            if manager.acquire_lock("k", f"t{i}", acquire_timeout=20):
                held.append(i)
                manager.release_lock("k", f"t{i}")
        except Exception as exc:  # noqa: BLE001 -- the failure under test
            errors.append(exc)

    for _ in range(20):
        threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(held) == 80
