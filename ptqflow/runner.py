"""The warm runner: ``ptq convert`` and ``ptq sweep`` forked from a process that has already imported
Prefect, onnx, onnxruntime and our flows.

A flow run's fixed cost on 2 cores is mostly imports: about 2.5 s before the first task, against
0.9 s for the whole ``--no-flow`` conversion of a small model. The resident server's supervisor
therefore keeps one more process in its group, the runner, which imports everything once, opens
``$PTQFLOW_HOME/server/runner.sock`` and forks a child per request. The ``ptq`` command sends its
arguments, working directory, environment and its stdin/stdout/stderr (passed as file descriptors,
so the child writes to the user's terminal) and relays signals: Ctrl-C and SIGTERM reach the child,
which unwinds exactly as an in-process run does. If the ``ptq`` process dies, the child sees the
socket close and stops itself (SIGTERM: temporary files removed, nothing half written).

Only a request the runner can serve as the in-process run would is delegated: the same Python, the
same ptqflow code (the runner exits when the source files changed since it started, and the
supervisor starts a fresh one), and the same Prefect settings in the environment (Prefect reads
them once, at import). Anything else runs in the ``ptq`` process itself, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

# read at import by Prefect: a request whose values differ is run in-process instead
_SERVER_ONLY = {"PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED",
                "PTQFLOW_RESIDENT_PROCESS"}
_DELEGATED = ("convert", "sweep")
_PACKAGES = ("ptq_core", "ptqflow", "ptqflow.flows", "ptqflow.tasks", "ptqflow.deployments")
_SETTINGS_FILES = ("prefect.toml", ".env", "pyproject.toml")  # Prefect also reads settings from these, in the cwd


def socket_path() -> Path:
    from ptqflow.resident import folder

    return folder() / "runner.sock"


def environment_key(env: dict[str, str]) -> str:
    """What was fixed when the runner imported Prefect: the interpreter, ``PREFECT_*`` variables, and
    the settings files Prefect reads in the working directory."""
    fixed = sorted((k, v) for k, v in env.items() if k.startswith("PREFECT_") and k not in _SERVER_ONLY)
    files = []
    for name in _SETTINGS_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = Path(name).read_text(encoding="utf-8")
            if name != "pyproject.toml" or "[tool.prefect" in text:
                files.append((name, text))
    return hashlib.sha256(json.dumps([sys.executable, fixed, files]).encode()).hexdigest()


def code_key() -> str:
    """The installed ptqflow source as the runner imported it: paths, sizes and modification times."""
    import importlib.util

    digest = hashlib.sha256()
    for package in _PACKAGES:
        root = Path(importlib.util.find_spec(package).origin).parent
        for path in sorted(root.rglob("*.py")):
            with contextlib.suppress(OSError):
                st = path.stat()
                digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def wants_runner(argv: list[str]) -> bool:
    return bool(argv) and argv[0] in _DELEGATED and "--no-flow" not in argv and "-h" not in argv \
        and "--help" not in argv


# ---------------------------------------------------------------------------------------------
# the ptq side
# ---------------------------------------------------------------------------------------------

def delegate(argv: list[str]) -> int | None:
    """Run ``ptq <argv>`` in the warm runner; None when there is none, or it cannot serve this request."""
    if not wants_runner(argv):  # before any import: `ptq --no-flow`, `ptq version` pay nothing here
        return None
    import ptqflow.cli  # noqa: F401  (the CLI's environment defaults, as the runner has them)
    from ptqflow import resident

    if not resident.enabled():
        return None
    path = socket_path()
    if not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    from ptqflow._phases import process_age

    env = dict(os.environ)
    request = {"argv": argv, "cwd": os.getcwd(), "age_s": process_age(), "env": env,
               "env_key": environment_key(env), "code_key": code_key()}
    with conn:
        try:
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
            reader = conn.makefile("r")
            first = json.loads(reader.readline() or "{}")
        except (OSError, ValueError):
            return None
        child = first.get("pid")
        if not child:
            if os.environ.get("PTQ_DEBUG"):
                print(f"ptq: debug: the warm runner refused this run ({first.get('refused')}); running it here",
                      file=sys.stderr)
            return None  # refused (other code or settings): run here
        return _relay(child, reader)


def _relay(child: int, reader) -> int:
    """Forward SIGINT/SIGTERM to the child until it reports its exit code."""
    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                line = reader.readline()
                break
            except InterruptedError:
                continue
        reply = json.loads(line) if line else {}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "exit" not in reply:
        print("ptq: internal error: the warm runner's child ended without an exit code "
              "(rerun with --no-flow, or after `ptq server stop`)", file=sys.stderr)
        return 1
    return int(reply["exit"])


# ---------------------------------------------------------------------------------------------
# the runner process
# ---------------------------------------------------------------------------------------------

def serve() -> int:
    """Import once, then fork a child per request until SIGTERM (from the supervisor) or a code change."""
    import gc

    from ptq_core.heap import limit_heap_arenas

    limit_heap_arenas()  # before the imports start threads; the children inherit it

    import ptqflow.cli  # noqa: F401  (the CLI's own environment defaults first)
    import ptqflow.flows.quantize  # noqa: F401
    import ptqflow.flows.sweep  # noqa: F401

    with contextlib.suppress(ImportError):
        # imported lazily by the calibration task, here once instead: its pages are then shared with every
        # child rather than copied into each (about 16 MB a FULL_QUANT run)
        import distributed  # noqa: F401

    gc.collect()
    gc.freeze()  # imported objects move out of the collector's reach: a child's collections do not copy their pages
    env_key, code = environment_key(dict(os.environ)), code_key()
    path = socket_path()
    tmp = path.with_name(f".runner.{os.getpid()}.sock")
    tmp.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)  # only this user may hand it a job: it runs them as this user
    listener.listen(16)
    os.replace(tmp, path)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children report through their socket; the kernel reaps them
    signal.signal(signal.SIGTERM, lambda *_: (_unlink_if_ours(path, listener), os._exit(0)))
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(msg.decode() or "{}")
        stale = request.get("code_key") != code
        if stale or request.get("env_key") != env_key or len(fds) != 3:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"refused": "code" if stale else "settings"}).encode() + b"\n")
            conn.close()
            for fd in fds:
                os.close(fd)
            if stale:  # the supervisor starts a runner with the new code
                _unlink_if_ours(path, listener)
                return 0
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            os._exit(_child(conn, fds, request))
        conn.close()
        for fd in fds:
            os.close(fd)


def _unlink_if_ours(path: Path, listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
            path.unlink()


def _child(conn: socket.socket, fds: list[int], request: dict) -> int:
    import atexit

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess.wait needs its children's exit codes
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["ptq", *request["argv"]]
    from ptqflow import _phases, report

    _phases.reset(request.get("age_s"))  # wall time counts from the caller's start, not the fork
    report.reset_consoles()  # widths and colours for the caller's terminal, not the runner's log
    try:
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    except OSError:  # the ptq process is gone already (Ctrl-C during the hand-over): run nothing, say nothing
        return 130
    threading.Thread(target=_stop_when_caller_dies, args=(conn,), daemon=True).start()
    code = 1
    try:
        from ptqflow.cli import interrupted, run_here

        try:
            code = run_here(request["argv"])
        except KeyboardInterrupt as exc:  # relayed before run_here's own handlers were in place
            code = interrupted(exc)
    finally:
        with contextlib.suppress(Exception):
            atexit._run_exitfuncs()  # Prefect's log and event workers drain here, as at a normal exit
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    return code


def _stop_when_caller_dies(conn: socket.socket) -> None:
    """The ``ptq`` process never writes after its request: end of file means it is gone."""
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(serve())
