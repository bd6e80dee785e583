"""One Prefect server per ``PTQFLOW_HOME``, started by the first flow run and reused by the next ones.

Without it every ``ptq convert`` started Prefect's temporary server (about 6 s on 2 cores) and the
dashboard saw nothing once the run ended. Now the first flow run starts a detached *supervisor*
(``python -m ptqflow.resident``) that serves Prefect's API and UI on 127.0.0.1 (uvicorn in its own
process, as ``prefect server start`` does) and stops after an idle period, with the warm runner
(:mod:`ptqflow.runner`) beside it; later runs, from the CLI, the Python API or a sweep, find it through
``$PTQFLOW_HOME/server/server.json`` and point ``PREFECT_API_URL`` at it.

* **One per home.** Starting is guarded by an exclusive ``flock`` on ``server/start.lock``, so two
  first runs at once start one server; the lock dies with its holder.
* **Idle stop.** Each run holds a shared lock on ``server/in-use.lock`` while it works and touches
  ``server/last-used`` at start and end. The supervisor stops the server once nothing holds the lock
  and ``last-used`` is older than the idle period (``PTQFLOW_SERVER_IDLE_MINUTES``, default 30).
* **Crashed predecessor.** A state file whose supervisor is gone, or whose server still does not answer
  ``/api/health`` two minutes after its start, is cleared (its process group ended) and a new server is started, on the preferred
  port (4200) when free, else on a free one.
* **Nothing left behind.** Supervisor (the server) and runner share one process group, led by the supervisor:
  ``ptq server stop`` ends the group (SIGTERM, then SIGKILL) and removes the state file.
* **Opting out.** A user-set ``PREFECT_API_URL`` wins (no server is started). ``PTQFLOW_RESIDENT_SERVER=0``
  falls back to Prefect's temporary per-run server; the test-suite sets it and keeps its own harness.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ptq_core.errors import PtqError
from ptq_core.files import write_atomic
from ptqflow.deployments.server import LoopbackAddress

DISABLE_ENV = "PTQFLOW_RESIDENT_SERVER"
IDLE_ENV = "PTQFLOW_SERVER_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
PREFERRED_PORT = 4200
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServerState(LoopbackAddress):
    pid: int  # the supervisor: leader of the process group that holds the server too
    port: int
    started: float
    idle_s: float


def folder() -> Path:
    from ptqflow._env import home

    path = home() / "server"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_path() -> Path:
    return folder() / "server.json"


def read_state() -> ServerState | None:
    try:
        return ServerState(**json.loads(_state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(state: ServerState) -> None:
    write_atomic(_state_path(), json.dumps(asdict(state)))


def _clear_state(pid: int | None = None) -> None:
    """Remove the state file (only if it still names ``pid``, when given)."""
    state = read_state()
    if state is not None and pid is not None and state.pid != pid:
        return
    with contextlib.suppress(OSError):
        _state_path().unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (a supervisor that exited under a parent that never reaped it) is not alive
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001
        return True


def idle_seconds() -> float:
    text = os.environ.get(IDLE_ENV, "")
    try:
        minutes = float(text) if text else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise PtqError(f"{IDLE_ENV}={text!r}: must be a number of minutes") from None
    if minutes <= 0:
        raise PtqError(f"{IDLE_ENV}={text!r}: must be more than 0 minutes")
    return minutes * 60.0


def enabled() -> bool:
    """Whether flow runs should use (and start) the resident server."""
    return not os.environ.get("PREFECT_API_URL") and os.environ.get(DISABLE_ENV, "1") != "0"


def running() -> ServerState | None:
    """The resident server of this home, if it is up and answering."""
    from ptqflow.deployments.server import healthy

    state = read_state()
    if state is not None and _alive(state.pid) and healthy(state.api_url):
        return state
    return None


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def start(wait: bool = True, port: int = PREFERRED_PORT) -> ServerState:
    """The resident server, started if there is none; with ``wait``, once it answers.

    ``wait=False`` returns as soon as a start is under way: the CLI calls it before its own imports and
    model checks, so that the server boots (about 7 s on 2 cores, most of it importing Prefect's
    server) while the run gets ready, and waits for it only when the flow starts.
    """
    with _flock(folder() / "start.lock", fcntl.LOCK_EX):
        state = read_state()
        if state is None or not _alive(state.pid) or _hung(state):
            stop()  # a crashed or hung predecessor: end its group, forget it
            state = _spawn(port)
    if wait:
        from ptqflow._phases import measure

        with measure("server"):
            _wait_ready(state)
    return state


def start_early() -> None:
    """Begin starting the resident server (when flow runs use one) without waiting for it."""
    if enabled():
        start(wait=False)


def _hung(state: ServerState) -> bool:
    """Alive but not answering long after its start: a server that will never be ready."""
    from ptqflow.deployments.server import healthy

    return time.time() - state.started > START_TIMEOUT_S and not healthy(state.api_url)


def _spawn(port: int) -> ServerState:
    """Start the supervisor and record it at once (under the start lock), so that a run arriving while
    it boots waits for this one instead of starting another."""
    from ptqflow.deployments.server import free_port, port_in_use

    if port_in_use(port):
        port = free_port()
    idle_s = idle_seconds()
    with open(folder() / "server.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ptqflow.resident", "--port", str(port), "--idle", str(idle_s)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_server_env())
    state = ServerState(pid=proc.pid, port=port, started=time.time(), idle_s=idle_s)
    _touch()  # a fresh start is a use: it must not idle out before the run that asked for it arrives
    _write_state(state)
    return state


def _wait_ready(state: ServerState) -> None:
    from ptqflow.deployments.server import healthy

    log = folder() / "server.log"
    deadline = state.started + START_TIMEOUT_S
    while not healthy(state.api_url):
        if not _alive(state.pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(state.pid, os.WNOHANG)
            _clear_state(state.pid)
            raise PtqError(f"the resident Prefect server exited before it was ready; see {log}")
        if time.time() > deadline:
            _end_group(state.pid)
            _clear_state(state.pid)
            raise PtqError(f"the resident Prefect server was not ready within {START_TIMEOUT_S:.0f} s; see {log}")
        time.sleep(0.1)


def _server_env() -> dict:
    from ptqflow._watchdog import RESIDENT_MARK

    env = dict(os.environ)
    env[RESIDENT_MARK] = "1"  # the run's watchdog spares it: it is meant to outlive the run
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["DO_NOT_TRACK"] = "1"
    return env


def _end_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL whatever is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # our own child (the first run started it): reap it


def _group_alive(pgid: int, resident_only: bool = False) -> bool:
    """Some live process of group ``pgid`` (with ``resident_only``: one marked as a resident-server
    process, so a reused group id is never taken for ours)."""
    import psutil

    from ptqflow._watchdog import RESIDENT_MARK

    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != pgid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if not resident_only or proc.environ().get(RESIDENT_MARK) == "1":
                return True
        except (ProcessLookupError, PermissionError, psutil.Error, OSError):
            continue
    return False


def stop() -> ServerState | None:
    """Stop this home's resident server (if any) and everything in its process group."""
    state = read_state()
    if state is None:
        return None
    if _group_alive(state.pid, resident_only=True):  # the supervisor, or a server it left when SIGKILLed
        _end_group(state.pid)
    _clear_state()
    return state


# ---------------------------------------------------------------------------------------------
# a flow run's use of the server
# ---------------------------------------------------------------------------------------------

def _touch() -> None:
    path = folder() / "last-used"
    path.touch()
    os.utime(path)


@contextlib.contextmanager
def in_use() -> Iterator[ServerState | None]:
    """Use the resident server for the flow runs inside: start it if needed, keep it from idling out.

    Yields the server (None when the resident server is off: a user ``PREFECT_API_URL`` or
    ``PTQFLOW_RESIDENT_SERVER=0``).
    """
    from ptqflow import prefect_db

    prefect_db.seed()  # Prefect's temporary server needs a database too
    if not enabled():
        if not os.environ.get("PREFECT_API_URL"):
            temporary_server_in_its_own_session()
        yield None
        return
    state = start()
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from ptqflow import report

    report.notice(f"Prefect dashboard: {state.url} (resident server; stops after "
                  f"{state.idle_s / 60:g} min idle, or with `ptq server stop`)")
    with open(folder() / "in-use.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)  # released when the run ends, or when this process dies
        _touch()
        try:
            # no flow-run heartbeats: on this server nothing reads them (Prefect acts on them only through an
            # automation a user sets up), and a run's end waits up to a second for the heartbeat thread
            with temporary_settings(updates={PREFECT_API_URL: state.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                yield state
        finally:
            _touch()


class _PopenInItsOwnSession:
    """``subprocess`` as Prefect's server module sees it, except that ``Popen`` starts a new session."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):  # noqa: N802  (subprocess's name)
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(*args, **kwargs)


def temporary_server_in_its_own_session() -> None:
    """Prefect's temporary per-run server (``PTQFLOW_RESIDENT_SERVER=0``) starts in a session of its own, as
    the resident server does: a terminal's Ctrl-C goes to the foreground process group, and a server in it
    stopped too, so the interrupted run's last API calls were retried against nothing until the 20-s
    deadline (and uvicorn printed "Aborted!"). The run still stops it when it ends, and the watchdog if
    the run is killed (both by process, not by group)."""
    import prefect.server.api.server as server_module

    if not isinstance(server_module.subprocess, _PopenInItsOwnSession):
        server_module.subprocess = _PopenInItsOwnSession()


# ---------------------------------------------------------------------------------------------
# the supervisor process
# ---------------------------------------------------------------------------------------------

def _idle_for(idle_s: float) -> bool:
    """Nobody holds the in-use lock and the last use is older than ``idle_s``."""
    try:
        last = (folder() / "last-used").stat().st_mtime
    except OSError:
        last = 0.0
    if time.time() - last < idle_s:
        return False
    with open(folder() / "in-use.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def supervise(port: int, idle_s: float, poll_s: float = 1.0) -> int:
    """Serve Prefect's API and UI in this process (uvicorn, as ``prefect server start`` does, without
    its CLI's imports) until idle or SIGTERM; a watcher thread asks uvicorn to stop once idle."""
    import threading

    from ptqflow import prefect_db

    prefect_db.seed()  # a new home: the schema snapshot, not 116 migrations
    os.environ.update(_server_env())
    os.environ.setdefault("PREFECT_UI_API_URL", f"http://127.0.0.1:{port}/api")
    import uvicorn
    from prefect.server.api.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(final=True), host="127.0.0.1", port=port,
                                           log_level="warning", timeout_keep_alive=5))

    def watch() -> None:
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.1)
        _touch()
        _warm_up(port)
        runner = _Runner()  # after the server is up: its imports would slow the run that started us
        try:
            while not server.should_exit and not _idle_for(idle_s):
                runner.keep_alive()
                time.sleep(poll_s)
        finally:
            runner.stop()
        server.should_exit = True  # uvicorn then runs Prefect's shutdown (services, database) and returns

    threading.Thread(target=watch, name="ptqflow-idle-watch", daemon=True).start()
    try:
        server.run()  # handles SIGTERM/SIGINT itself: a graceful stop
        return 0 if server.started else 1
    finally:
        _clear_state(os.getpid())


def _warm_up(port: int) -> None:
    """Ask once what every flow run's client asks first: Prefect's server answers its first
    ``/admin/version`` in about a second (measured on 2 cores), later ones in milliseconds."""
    import urllib.request

    with contextlib.suppress(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/admin/version", timeout=30).read()


class _Runner:
    """The warm runner (:mod:`ptqflow.runner`) in the supervisor's group, restarted when it exits (it
    does when ptqflow's code changed), at most three times a minute so that a broken one is not
    restarted forever; runs fall back to running in their own process meanwhile."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.proc: subprocess.Popen | None = None
        self.keep_alive()

    def keep_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < 60.0]
        if len(self.starts) >= 3:
            return
        self.starts.append(now)
        self.proc = subprocess.Popen([sys.executable, "-m", "ptqflow.runner"], stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    import ptqflow  # noqa: F401  (offline Prefect settings and the home first)

    parser = argparse.ArgumentParser(prog="python -m ptqflow.resident")
    parser.add_argument("--port", type=int, default=PREFERRED_PORT)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_MINUTES * 60)
    args = parser.parse_args(argv)
    return supervise(args.port, args.idle)


if __name__ == "__main__":
    sys.exit(main())
