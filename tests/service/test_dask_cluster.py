"""FULL_QUANT statistics on an external Dask cluster (scheduler + 2 workers on loopback) equal the serial run."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from modelgen import save
from test_full_quant import calib_folder, cnn_model, full_cfg

from ptq_core.modes.full.quantize import quantize_full
from ptq_core.onnxgraph.session import InputOptions
from ptqflow._watchdog import stop_children

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                       "--dashboard-address", "127.0.0.1:0"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        stop_children(procs, timeout=20)


def test_statistics_on_an_external_cluster_equal_the_serial_run(tmp_path, cluster):
    from ptqflow.tasks.dask_stats import collect_distributed, dask_client

    model_path = save(cnn_model(), tmp_path / "m.onnx")
    cfg = full_cfg(calib_folder(tmp_path, n=10), "KL", n=10)
    serial = quantize_full(model_path, cfg, InputOptions(), tmp_path / "serial")
    with dask_client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        remote = quantize_full(model_path, cfg, InputOptions(), tmp_path / "remote",
                               collector=lambda m, t, r, meth: collect_distributed(client, m, t, r, meth))
    assert serial.quantized.SerializeToString(deterministic=True) == remote.quantized.SerializeToString(deterministic=True)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_runs_statistics_bias_and_debug_rounds_on_the_given_cluster(tmp_path, cluster):
    """``dask_address`` reaches every Dask step of the flow (statistics, bias correction, debug-report rounds)
    and the model equals a direct serial run."""
    from dask.utils import key_split
    from distributed import Client
    from modelgen import write_config
    from ptqflow.flows.quantize import quantize

    from ptq_core.convert import convert_direct

    model_path = save(cnn_model(seed=7), tmp_path / "m.onnx")
    folder = calib_folder(tmp_path, n=8)
    text = ("[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n{debug}"
            f"[data_preprocess_param]\ncalibrate_path=x:{folder}\ncalibrate_size=8\ninput_type=BIN\n"
            "[full_quant_param]\nactivation_quant_method=KL\n[ptqflow]\nlatency_guard=false\n")
    cfg = write_config(tmp_path / "f.cfg", text.format(debug=f"debug_info_save_path={tmp_path / 'dbg'}\n"))
    plain = write_config(tmp_path / "plain.cfg", text.format(debug=""))
    with Client(cluster) as client:
        client.get_task_stream()  # installs the scheduler's task recorder, which sees every client's tasks
        start = time.time()
        summary = quantize(str(model_path), str(cfg), str(tmp_path / "flow"), dask_address=cluster)
        ran = {key_split(t["key"]) for t in client.get_task_stream(start=start)}
    assert {"ptq-stats", "accumulate_bias", "run_round"} <= ran, ran
    assert any((tmp_path / "dbg").iterdir())
    direct = convert_direct(model_path, plain, tmp_path / "direct")
    assert Path(summary.output).read_bytes() == Path(direct.output).read_bytes()
