"""The resident local Prefect server: one per home, reused, stopped when idle or asked, never left behind."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from modelgen import mixed_ops_model, save, write_config
from procs import process_group as group

PTQ = Path(sys.executable).parent / "ptq"
ENSURE = "from ptqflow import resident; s = resident.start(); print(s.pid, s.port, flush=True)"


def env_for(home: Path, idle_minutes: float = 30.0) -> dict:
    env = dict(os.environ, PTQFLOW_HOME=str(home), PREFECT_HOME=str(home / "prefect"),
               PTQFLOW_SERVER_IDLE_MINUTES=str(idle_minutes))
    env.pop("PTQFLOW_RESIDENT_SERVER", None)  # on, as for users
    env.pop("PREFECT_API_URL", None)
    return env


def state(home: Path) -> dict | None:
    path = home / "server" / "server.json"
    return json.loads(path.read_text()) if path.exists() else None


def stop(home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PTQ), "server", "stop"], env=env_for(home), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One home for the module: its server is started once (creating Prefect's database costs most of a
    start), reused by the tests in file order, and stopped by the last one (and here, whatever happens)."""
    h = tmp_path_factory.mktemp("resident") / "home"
    yield h
    stop(h)


def test_two_concurrent_first_runs_start_one_server(home):
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE], env=env_for(home), stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1], outs  # the same supervisor and port: one server
    pid, port = int(outs[0][0]), int(outs[0][1])
    assert state(home)["pid"] == pid and group(pid)
    status = subprocess.run([str(PTQ), "server", "status"], env=env_for(home), capture_output=True, text=True,
                            timeout=60)
    assert f"http://127.0.0.1:{port}" in status.stdout


def test_runs_on_the_resident_server_send_no_heartbeats_that_nothing_reads(home):
    code = ("from ptqflow.resident import in_use\nfrom prefect.settings import get_current_settings\n"
            "with in_use():\n    print('heartbeat', get_current_settings().flows.heartbeat_frequency)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env_for(home), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "heartbeat None" in out.stdout


def test_flow_runs_reuse_the_resident_server_and_say_where_its_dashboard_is(home, tmp_path):
    first = state(home)
    model = save(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"
                                           "min_quant_weight_size=0\nmin_quant_weight_channel=0\n")
    for i in range(2):
        out = subprocess.run([str(PTQ), "convert", f"--modelFile={model}", f"--outputFile={tmp_path / f'q{i}'}",
                              f"--configFile={cfg}"], env=env_for(home), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "Traceback" not in out.stderr + out.stdout
        assert f"Prefect dashboard: http://127.0.0.1:{first['port']}" in " ".join((out.stdout + out.stderr).split())
        assert state(home) == first  # found the running server, started none
    assert group(first["pid"])  # and it outlives the runs

    from urllib.request import Request, urlopen

    req = Request(f"http://127.0.0.1:{first['port']}/api/flow_runs/count", data=b"{}",
                  headers={"Content-Type": "application/json"})
    with urlopen(req, timeout=30) as resp:
        assert int(resp.read()) == 2  # both runs are on the dashboard


def wait_for_runner(home: Path) -> None:
    deadline = time.monotonic() + 90
    while not (home / "server" / "runner.sock").exists():
        assert time.monotonic() < deadline, "the warm runner did not come up"
        time.sleep(0.2)


DELEGATE = ("import sys\nfrom ptqflow.runner import delegate\ncode = delegate(sys.argv[1:])\n"
            "sys.exit(99 if code is None else code)\n")


def test_a_warm_runner_runs_later_conversions_and_writes_the_same_model(home, tmp_path):
    wait_for_runner(home)
    assert stat.S_IMODE((home / "server" / "runner.sock").stat().st_mode) == 0o600  # only we may hand it jobs
    model = save(mixed_ops_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "w.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=6\n"
                                           "min_quant_weight_size=0\nmin_quant_weight_channel=0\n")
    args = ["convert", f"--modelFile={model}", f"--configFile={cfg}"]
    served = subprocess.run([sys.executable, "-c", DELEGATE, *args, f"--outputFile={tmp_path / 'served'}"],
                            env=env_for(home), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert served.returncode == 0, served.stderr[-2000:]  # 99: not delegated
    assert "time split" in served.stdout and "server start" in served.stdout  # the child wrote to our stdout
    direct = subprocess.run([str(PTQ), *args, "--no-flow", f"--outputFile={tmp_path / 'direct'}"],
                            env=env_for(home), capture_output=True, text=True, timeout=300)
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert (tmp_path / "served.onnx").read_bytes() == (tmp_path / "direct.onnx").read_bytes()


def test_bad_input_through_the_warm_runner_is_one_line_and_exit_2(home, tmp_path):
    wait_for_runner(home)
    out = subprocess.run([sys.executable, "-c", DELEGATE, "convert", f"--modelFile={tmp_path / 'none.onnx'}",
                          f"--configFile={tmp_path / 'none.cfg'}", f"--outputFile={tmp_path / 'q'}"],
                         env=env_for(home), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "none.cfg" in out.stderr, out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_ptq_stops_the_runners_child_and_writes_nothing(home, tmp_path, sig):
    from test_interrupt import slow_cnn

    wait_for_runner(home)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        (calib / f"{i:03d}.bin").write_bytes(rng.normal(0, 1, (1, 3, 96, 96)).astype(np.float32).tobytes())
    cfg = write_config(tmp_path / "f.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       f"[data_preprocess_param]\ncalibrate_path=x:{calib}\ncalibrate_size=200\ninput_type=BIN\n"
                       "[full_quant_param]\nactivation_quant_method=KL\n[ptqflow]\nlatency_guard=false\n")
    out = tmp_path / "out" / "q"
    model = onnx.load(str(slow_cnn(tmp_path / "m.onnx")))
    model.doc_string = f"interrupted by {sig!r}"  # its own bytes: nothing of it is in the home's cache yet
    onnx.save(model, str(tmp_path / "m.onnx"))
    exposed = home / "cache" / "work" / "models"
    known = set(exposed.glob("exposed-*.onnx"))
    proc = subprocess.Popen([str(PTQ), "convert", f"--modelFile={tmp_path / 'm.onnx'}",
                             f"--configFile={cfg}", f"--outputFile={out}"], env=env_for(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runner = next(p for p in group(state(home)["pid"]) if "ptqflow.runner" in " ".join(p.cmdline()))
    deadline = time.monotonic() + 60
    while not runner.children():  # the child forked for this run
        assert time.monotonic() < deadline and proc.poll() is None, "the run was not delegated"
        time.sleep(0.05)
    child = runner.children()[0]
    while not set(exposed.glob("exposed-*.onnx")) - known:  # its statistics pass has begun
        assert time.monotonic() < deadline and proc.poll() is None, "calibration never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else -9)
    psutil.wait_procs([child], timeout=60)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no model, no temporary file


def test_changed_code_is_never_served_by_an_older_runner(home, tmp_path):
    """The runner refuses a caller whose ptqflow sources differ from those it imported, and exits."""
    import ptqflow.report as source

    wait_for_runner(home)
    path = Path(source.__file__)
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    try:
        out = subprocess.run([sys.executable, "-c", DELEGATE, "convert", "--modelFile=x.onnx", "--configFile=x.cfg",
                              "--outputFile=q"], env=env_for(home), capture_output=True, text=True, timeout=120)
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert out.returncode == 99, out.stderr  # not delegated: the caller runs it itself


def test_ptq_serve_uses_the_resident_server_and_leaves_it_running(home):
    import signal

    first = state(home)
    proc = subprocess.Popen([str(PTQ), "serve", "--port", str(first["port"])], env=env_for(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "Prefect UI" not in (proc.stdout.readline() if proc.poll() is None else "Prefect UI"):
            assert time.monotonic() < deadline, "ptq serve did not come up"
        time.sleep(2)  # the serving child registers the deployments
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert state(home) == first and group(first["pid"])  # the same server, still serving the dashboard


def test_stop_leaves_no_process(home):
    first = state(home)
    done = stop(home)
    assert done.returncode == 0 and "no process of it is left" in done.stdout
    assert state(home) is None and group(first["pid"]) == []
    from ptqflow.deployments.server import port_in_use

    assert not port_in_use(first["port"])


def test_a_crashed_predecessor_is_replaced_and_an_idle_server_stops_itself(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "server").mkdir(parents=True, exist_ok=True)
    (home / "server" / "server.json").write_text(json.dumps({"pid": dead.pid, "port": 1, "started": 0, "idle_s": 60}))
    out = subprocess.run([sys.executable, "-c", ENSURE], env=env_for(home, idle_minutes=0.05), capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    pid, port = map(int, out.stdout.split())
    assert pid != dead.pid and port != 1
    deadline = time.monotonic() + 60  # idle after 3 s: it stops itself, leaving nothing
    while time.monotonic() < deadline and (group(pid) or state(home)):
        time.sleep(0.5)
    assert group(pid) == [] and state(home) is None


def test_a_hung_predecessor_is_ended_and_replaced(home):
    """Alive but still not answering two minutes after its start: its group is ended, a new one starts."""
    from ptqflow.deployments.server import free_port

    from ptqflow._watchdog import RESIDENT_MARK

    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                            env=dict(env_for(home), **{RESIDENT_MARK: "1"}), start_new_session=True)
    try:
        (home / "server").mkdir(parents=True, exist_ok=True)
        (home / "server" / "server.json").write_text(json.dumps(
            {"pid": hung.pid, "port": free_port(), "started": time.time() - 600, "idle_s": 60}))
        out = subprocess.run([sys.executable, "-c", "from ptqflow import resident; print(resident.start(wait=False).pid)"],
                             env=env_for(home), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) != hung.pid and state(home)["pid"] == int(out.stdout)
        assert hung.wait(timeout=30) is not None  # the hung one was ended
    finally:
        if hung.poll() is None:
            hung.kill()
        stop(home)
    assert state(home) is None


def test_server_start_with_prefect_api_url_set_is_a_one_line_error(tmp_path):
    env = dict(env_for(tmp_path / "h"), PREFECT_API_URL="http://127.0.0.1:9/api")
    out = subprocess.run([str(PTQ), "server", "start"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "PREFECT_API_URL is set" in out.stderr
    assert state(tmp_path / "h") is None


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_idle_period_is_a_clear_error(monkeypatch, value):
    from ptq_core.errors import PtqError
    from ptqflow import resident

    monkeypatch.setenv(resident.IDLE_ENV, value)
    with pytest.raises(PtqError, match=f"PTQFLOW_SERVER_IDLE_MINUTES={value!r}"):
        resident.idle_seconds()
