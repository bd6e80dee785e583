"""A local Prefect server (API + UI) on 127.0.0.1 as a child process that is always stopped with its group.

``prefect server start`` can leave a uvicorn process behind when its parent is killed, so the server
runs in its own process group and is stopped with a signal to the whole group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ptq_core.errors import PtqError


class LoopbackAddress:
    """The UI and API addresses of a Prefect server on 127.0.0.1:``port``."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


@dataclass
class LocalServer(LoopbackAddress):
    port: int
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 20.0) -> None:
        stop_group(self.process, timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def prefect_executable() -> str:
    local = Path(sys.executable).parent / "prefect"
    return str(local) if local.exists() else (shutil.which("prefect") or "prefect")


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_server(port: int, log_path: Path, env: dict | None = None, timeout: float = 120.0) -> LocalServer:
    """Start ``prefect server start --host 127.0.0.1 --port PORT`` and wait for /api/health."""
    if port_in_use(port):
        raise PtqError(f"--port {port}: 127.0.0.1:{port} is already in use; pick another port with --port")
    env = dict(env or os.environ)
    env.pop("PREFECT_API_URL", None)
    from ptqflow import prefect_db

    prefect_db.seed(env=env)  # a new home: the schema snapshot, not 116 migrations
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_UI_API_URL", f"http://127.0.0.1:{port}/api")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen([prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    server = LocalServer(port, proc, log_path)
    deadline = time.monotonic() + timeout
    while not healthy(server.api_url):
        if proc.poll() is not None:
            raise PtqError(f"the Prefect server exited with code {proc.returncode} before it was ready; see {log_path}")
        if time.monotonic() > deadline:
            server.stop()
            raise PtqError(f"the Prefect server on 127.0.0.1:{port} was not ready within {timeout:.0f} s; see {log_path}")
        time.sleep(0.3)
    return server


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left after ``timeout``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (uvicorn workers, flow-run children)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=5)


def run_page_url(base_url: str, flow_run_id) -> str:
    """A flow run's page in the UI that stays on this machine: Prefect's v1 UI. Its v2 UI (``/v2/...``)
    reaches an analytics host from every page even with analytics disabled (measured with Chromium's
    network log, tests/service/test_dashboard.py)."""
    return f"{base_url.rstrip('/')}/runs/flow-run/{flow_run_id}"
