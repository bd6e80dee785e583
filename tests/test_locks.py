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
