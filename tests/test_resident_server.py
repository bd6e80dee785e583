"""The resident local Prefect server: one per home, reused, stopped when idle or asked, never left behind."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from modelgen import mixed_ops_model, save, write_config

PTQ = Path(sys.executable).parent / "ptq"
ENSURE = "from ptqflow import resident; s = resident.ensure(); print(s.pid, s.port, flush=True)"


def env_for(home: Path, idle_minutes: float = 30.0) -> dict:
    env = dict(os.environ, PTQFLOW_HOME=str(home), PREFECT_HOME=str(home / "prefect"),
               PTQFLOW_SERVER_IDLE_MINUTES=str(idle_minutes))
    env.pop("PTQFLOW_RESIDENT_SERVER", None)  # on, as for users
    env.pop("PREFECT_API_URL", None)
    return env


def state(home: Path) -> dict | None:
    path = home / "server" / "server.json"
    return json.loads(path.read_text()) if path.exists() else None


def group(pgid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def stop(home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PTQ), "server", "stop"], env=env_for(home), capture_output=True, text=True, timeout=120)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    yield h
    stop(h)  # never leave a server behind, whatever the test did


def test_two_concurrent_first_runs_start_one_server_and_stop_leaves_no_process(home):
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE], env=env_for(home), stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=180)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1], outs  # the same supervisor and port: one server
    pid, port = int(outs[0][0]), int(outs[0][1])
    assert state(home)["pid"] == pid and group(pid)
    status = subprocess.run([str(PTQ), "server", "status"], env=env_for(home), capture_output=True, text=True,
                            timeout=60)
    assert f"http://127.0.0.1:{port}" in status.stdout
    done = stop(home)
    assert done.returncode == 0 and "no process of it is left" in done.stdout
    assert state(home) is None and group(pid) == [] and not psutil.pid_exists(pid) or \
        psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    from ptqflow.deployments.server import port_in_use

    assert not port_in_use(port)


def test_a_crashed_predecessor_is_replaced(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "server").mkdir(parents=True)
    (home / "server" / "server.json").write_text(json.dumps({"pid": dead.pid, "port": 1, "started": 0, "idle_s": 60}))
    out = subprocess.run([sys.executable, "-c", ENSURE], env=env_for(home), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    pid, port = map(int, out.stdout.split())
    assert pid != dead.pid and port != 1 and state(home)["pid"] == pid


def test_the_server_stops_itself_when_idle(home):
    out = subprocess.run([sys.executable, "-c", ENSURE], env=env_for(home, idle_minutes=0.05), capture_output=True,
                         text=True, timeout=180)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (group(pid) or state(home)):
        time.sleep(0.5)
    assert group(pid) == [] and state(home) is None


def test_flow_runs_reuse_the_resident_server_and_say_where_its_dashboard_is(home, tmp_path):
    model = save(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"
                                           "min_quant_weight_size=0\nmin_quant_weight_channel=0\n")
    runs = []
    for i in range(2):
        out = subprocess.run([str(PTQ), "convert", f"--modelFile={model}", f"--outputFile={tmp_path / f'q{i}'}",
                              f"--configFile={cfg}"], env=env_for(home), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Traceback" not in out.stderr + out.stdout
        runs.append((out.stdout + out.stderr, state(home)))
    text, first = runs[0]
    assert f"Prefect dashboard: http://127.0.0.1:{first['port']}" in " ".join(text.split())
    assert runs[1][1] == first  # the second run found the first one's server
    assert group(first["pid"])  # and it outlives the runs

    from urllib.request import Request, urlopen

    req = Request(f"http://127.0.0.1:{first['port']}/api/flow_runs/count", data=b"{}",
                  headers={"Content-Type": "application/json"})
    with urlopen(req, timeout=30) as resp:
        assert int(resp.read()) == 2  # both runs are on the dashboard


def test_ptq_serve_uses_the_resident_server_and_leaves_it_running(home):
    import signal

    from ptqflow.deployments.server import free_port, healthy

    port = free_port()
    proc = subprocess.Popen([str(PTQ), "serve", "--port", str(port)], env=env_for(home), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (state(home) and healthy(f"http://127.0.0.1:{state(home)['port']}/api")):
            assert proc.poll() is None and time.monotonic() < deadline, "ptq serve did not come up"
            time.sleep(0.5)
        first = state(home)
        assert first["port"] == port
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "resident server" in out and state(home) == first and group(first["pid"])  # still serving the dashboard
    assert stop(home).returncode == 0 and group(first["pid"]) == []
