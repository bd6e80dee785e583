"""Deployments: what ``ptq serve`` serves, the watch-folder flow, and the server/serve processes' lifetime."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from modelgen import mlp_model, save, write_config

WEIGHT_CFG = "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=8\n"


def test_deployments_are_the_two_flows_plus_the_scheduled_watcher(tmp_path):
    from ptqflow.deployments.serve import build_deployments

    deps = build_deployments(str(tmp_path), cron="*/5 * * * *")
    names = sorted(f"{d.flow_name}/{d.name}" for d in deps)
    assert names == ["quantize/on-demand", "sweep/on-demand", "watch-folder/scheduled"]
    watcher = next(d for d in deps if d.name == "scheduled")
    assert watcher.schedules[0].schedule.cron == "*/5 * * * *"
    assert watcher.parameters["folder"] == str(tmp_path.resolve())
    assert all(d.entrypoint.startswith("ptqflow.") for d in deps)  # module paths: the serving cwd does not matter
    assert len(build_deployments("")) == 2


@pytest.mark.usefixtures("prefect_harness")
def test_watcher_quantizes_new_and_changed_models_only(tmp_path):
    from ptqflow.deployments.watch import watch_folder

    folder = tmp_path / "models"
    folder.mkdir()
    save(mlp_model(hidden=32, inp=16, seed=1), folder / "a.onnx")
    write_config(folder / "a.cfg", WEIGHT_CFG)
    save(mlp_model(hidden=32, inp=16, seed=2), folder / "lonely.onnx")  # no .cfg: skipped
    first = watch_folder(str(folder))
    assert [(d["model"], d["status"]) for d in first] == [("a.onnx", "quantized")]
    assert (folder / "quantized" / "a.onnx").exists()
    assert watch_folder(str(folder)) == []  # nothing changed
    write_config(folder / "a.cfg", WEIGHT_CFG.replace("bit_num=8", "bit_num=4"))
    write_config(folder / "lonely.cfg", "[common_quant_param]\nquant_type=WEIGHT_QUANT\nbit_num=99\n")
    third = {d["model"]: d["status"] for d in watch_folder(str(folder), str(tmp_path / "out"))}
    assert third["a.onnx"] == "quantized" and (tmp_path / "out" / "a.onnx").exists()
    assert third["lonely.onnx"].startswith("failed:") and "bit_num=99" in third["lonely.onnx"]
    assert watch_folder(str(folder), str(tmp_path / "out")) == []  # a failure is retried only once it changes


def test_watcher_sees_new_weights_that_changed_only_the_external_data_file(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from ptqflow.deployments.watch import pending

    folder = tmp_path / "models"
    folder.mkdir()
    write_config(folder / "m.cfg", WEIGHT_CFG)

    def export(scale: float) -> bytes:
        model = mlp_model(hidden=32, inp=16, seed=1)
        for init in model.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(scale), init.name))
        (folder / "m.data").unlink(missing_ok=True)
        onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                        location="m.data", size_threshold=0)
        return (folder / "m.onnx").read_bytes()

    graph = export(1.0)
    (todo,), _ = pending(folder, {})
    state = {"m.onnx": {"hash": todo[2]}}
    assert pending(folder, state)[0] == []
    assert export(2.0) == graph  # the .onnx is byte-identical; only m.data changed
    assert [m.name for m, _, _ in pending(folder, state)[0]] == ["m.onnx"]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.load(resp)
    except OSError:
        return None


def test_ptq_serve_runs_the_scheduled_watcher_and_leaves_no_process_behind(tmp_path):
    from ptqflow.deployments.server import free_port

    folder = tmp_path / "models"
    folder.mkdir()
    save(mlp_model(hidden=32, inp=16, seed=3), folder / "m.onnx")
    write_config(folder / "m.cfg", WEIGHT_CFG)
    port = free_port()
    env = dict(os.environ, PTQFLOW_HOME=str(tmp_path / "home"), PREFECT_RUNNER_POLL_FREQUENCY="2")
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "ptq"), "serve", "--port", str(port), "--watch",
                             str(folder), "--cron", "* * * * *"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deployments = _wait(lambda: _post(f"{api}/deployments/filter", {}), 120, "the deployments")
        _wait(lambda: len(_post(f"{api}/deployments/filter", {}) or []) == 3, 60, "three deployments")
        watcher = next(d for d in _post(f"{api}/deployments/filter", {}) if d["name"] == "scheduled")
        # do not wait for the next minute: ask for a run now, as the UI's "Quick run" does
        _post(f"{api}/deployments/{watcher['id']}/create_flow_run", {})
        _wait(lambda: (folder / "quantized" / "m.onnx").exists(), 120, "the watcher's output")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert deployments is not None and children
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    time.sleep(1)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [c.cmdline() for c in alive]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{api}/health", timeout=2)
