"""Nothing reaches the network: services bind to loopback, a run connects to loopback only, no telemetry.

(Prefect's temporary server of a real ``ptq convert`` is checked for loopback-only LISTEN sockets in
tests/test_interrupt.py while it runs, with the default in-process Dask cluster's HTTP servers.)
"""

from __future__ import annotations

import ipaddress
import os
import socket

import psutil
import pytest
from modelgen import mlp_model, save, write_config

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "")


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def loopback_only(monkeypatch):
    """Every connect and every name lookup in this process must stay on this machine."""
    outside: list = []
    inside: list = []
    real_connect, real_connect_ex, real_lookup = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            outside.append(address)
            raise OSError(f"test: connection to {address} refused")
        inside.append(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            outside.append(address)
            return 111
        inside.append(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            outside.append(("lookup", host))
            raise socket.gaierror(f"test: lookup of {host!r} refused")
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield outside, inside


def test_telemetry_is_off_before_prefect_is_imported():
    import ptqflow  # noqa: F401  (applies the settings)

    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_a_full_quant_flow_run_connects_to_loopback_only(tmp_path, prefect_harness, loopback_only):
    import numpy as np
    from ptqflow.flows.quantize import quantize

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        (calib / f"{i}.bin").write_bytes(rng.normal(0, 1, (1, 64)).astype(np.float32).tobytes())
    model = save(mlp_model(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "f.cfg", "[common_quant_param]\nquant_type=FULL_QUANT\nbit_num=8\n"
                       f"[data_preprocess_param]\ncalibrate_path=x:{calib}\ncalibrate_size=4\ninput_type=BIN\n"
                       "[ptqflow]\nlatency_guard=false\n")
    summary = quantize(str(model), str(cfg), str(tmp_path / "q"))  # Dask LocalCluster inside
    assert summary.output_path.exists()
    outside, inside = loopback_only
    assert outside == []
    assert inside, "the guard saw the run's own connections (to the Prefect API and the Dask scheduler)"


def test_ptq_serve_server_listens_on_loopback_only(tmp_path):
    from ptqflow.deployments.server import free_port, start_server

    server = start_server(free_port(), tmp_path / "server.log", env=dict(os.environ, PREFECT_HOME=str(tmp_path)))
    try:
        root = psutil.Process(server.process.pid)
        listening = []
        for proc in [root] + root.children(recursive=True):
            listening += [c.laddr[:2] for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening, "the server listens somewhere"
        assert {ip for ip, _ in listening} <= {"127.0.0.1", "::1"}, listening
    finally:
        server.stop()
