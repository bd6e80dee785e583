"""File locks for cached tasks that die with the process holding them.

Prefect's ``FileSystemLockManager`` writes a lock file with no expiry: a run killed while it holds
one (SIGKILL, power loss, OOM killer) leaves it behind, and every later run that needs the same
cache key waits for it forever. This manager notes who holds each lock (host, PID and the
process's start time, so a reused PID does not count) beside the lock file, and a lock whose
holder is gone from this host is cleared instead of waited for. A lock file without that note
is a holder caught between creating the file and writing the note; it is cleared once it is
older than a minute. A lock file that is still empty (Prefect creates it, then writes it) reads as
held, not as an error.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

import psutil
from prefect.locking.filesystem import FileSystemLockManager

NO_OWNER_GRACE_S = 60.0
UNREADABLE_RETRIES = 50  # x UNREADABLE_WAIT_S: how long a lock file may stay empty before it counts as held
UNREADABLE_WAIT_S = 0.01


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, so respect the lock
    try:
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["started"])) < 1e-3
    except (psutil.NoSuchProcess, KeyError, ValueError, TypeError):
        return False


class ProcessLockManager(FileSystemLockManager):
    """A ``FileSystemLockManager`` whose locks do not outlive their holder's process."""

    def _owner_path(self, key: str) -> Path:
        return Path(self._lock_path_for_key(key)).with_suffix(".owner")

    def _clear_if_stale(self, key: str) -> None:
        lock = Path(self._lock_path_for_key(key))
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        owner_path = self._owner_path(key)
        try:
            owner = json.loads(owner_path.read_text())
        except FileNotFoundError:
            owner = None
        except (OSError, ValueError):
            owner = {}
        stale = (owner is None and age > NO_OWNER_GRACE_S) or (owner is not None and not _alive(owner))
        if stale:
            lock.unlink(missing_ok=True)
            owner_path.unlink(missing_ok=True)
            self._locks.pop(key, None)

    def _get_lock_info(self, key: str, use_cache: bool = True):
        """Prefect creates the lock file empty and writes it a moment later; a thread reading in between got
        ``ValueError: EOF while parsing`` and failed its task (parallel sweep points, 1 CI run in ~10). An
        unreadable file is a lock being taken: read again briefly, then report it held by an unknown holder."""
        for _ in range(UNREADABLE_RETRIES):
            try:
                return super()._get_lock_info(key, use_cache)
            except ValueError:
                time.sleep(UNREADABLE_WAIT_S)
        return {"holder": None, "expiration": None, "path": self._lock_path_for_key(key)}

    async def _aget_lock_info(self, key: str, use_cache: bool = True):
        import anyio

        for _ in range(UNREADABLE_RETRIES):
            try:
                return await super()._aget_lock_info(key, use_cache)
            except ValueError:
                await anyio.sleep(UNREADABLE_WAIT_S)
        return {"holder": None, "expiration": None, "path": self._lock_path_for_key(key)}

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        self._clear_if_stale(key)
        return super().is_locked(key, use_cache)

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                     hold_timeout: Optional[float] = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout)
        if acquired:
            owner = self._owner_path(key)
            tmp = owner.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(_me()))
            tmp.replace(owner)
        return acquired

    def release_lock(self, key: str, holder: str) -> None:
        super().release_lock(key, holder)
        self._owner_path(key).unlink(missing_ok=True)
