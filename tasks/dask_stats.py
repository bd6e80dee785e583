"""Calibration statistics across a Dask cluster: map chunks of rounds to workers, tree-merge observers.

One Prefect task owns the whole pass (Dask inside one cached task), so Prefect sees a single
cacheable unit with a small result and no per-round API traffic. By default an in-process
LocalCluster of worker threads; ``--dask-address`` or ``PTQFLOW_DASK_ADDRESS`` points the same
job at an existing scheduler.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator

from ptq_core.stats.collect import Round, accumulate, chunks, merge_all

ADDRESS_ENV = "PTQFLOW_DASK_ADDRESS"


def local_cluster(workers: int | None = None):
    """A private in-process LocalCluster: one Dask worker with a thread per core (at most 2 by default).

    Threads, not worker processes: onnxruntime and NumPy release the GIL, so two threads with a
    session each use both cores (17.5-21 ms a PP-OCR recognizer sample, against 38-45 ms on one
    thread, measured), while worker processes cost their own imports and model copies (over 100 MB
    each) and a start-up. NumPy's bincount (KL's histogram pass) is the exception: it holds the GIL.
    A real scheduler (``--dask-address``) spreads the same tasks over machines.
    """
    from distributed import LocalCluster

    n = workers or max(1, min(2, os.cpu_count() or 1))
    # CRITICAL only: a task's error reaches us through its future and becomes our one line; what the
    # cluster logs itself is shutdown noise during Ctrl-C or SIGTERM
    # TCP on loopback, not the inproc transport: inproc names its addresses after the machine's IP, which
    # distributed finds by "connecting" a UDP socket to 8.8.8.8 and looking up the host name. The
    # scheduler's and worker's HTTP servers (health, metrics) listen too; the defaults would bind them to
    # 0.0.0.0:8787 and a free port on every interface.
    return LocalCluster(n_workers=1, threads_per_worker=n, processes=False, protocol="tcp://", host="127.0.0.1",
                        dashboard_address="127.0.0.1:0", worker_dashboard_address="127.0.0.1:0",
                        silence_logs=logging.CRITICAL)


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None) -> Iterator:
    """A client on the given scheduler, or on a private loopback LocalCluster closed on exit."""
    from distributed import Client

    address = address or os.environ.get(ADDRESS_ENV) or None
    with _quiet_worker_errors():
        if address:
            client = Client(address, timeout="30s")
            try:
                yield client
            finally:
                client.close()
            return
        cluster = local_cluster(workers)
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()


@contextmanager
def _quiet_worker_errors() -> Iterator[None]:
    """A sample that fails on a worker (a DataError naming the file) is raised again here and reported
    once, as the CLI's one line; the worker's own "Compute Failed" log would print it four more times."""
    log = logging.getLogger("distributed.worker")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def worker_threads(client) -> int:
    """Threads across the cluster's workers: the parallelism chunks are cut for."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def collect_distributed(client, model_path: str, tensors: tuple[str, ...], rounds: list[Round], method: str,
                        progress: Callable[[int, int], None] | None = None) -> dict:
    """All passes of ``method`` over ``rounds`` on ``client``'s workers; returns merged observers."""
    from distributed import as_completed

    n_chunks = max(1, min(len(rounds), 4 * worker_threads(client)))
    parts = chunks(rounds, n_chunks)
    total_passes = None
    observers = None
    pass_index = 0
    done = 0
    while True:
        futures = [client.submit(accumulate, model_path, tensors, part, method, pass_index, observers,
                                 pure=False, key=f"ptq-stats-{pass_index}-{i}-{os.getpid()}-{id(part)}")
                   for i, part in enumerate(parts)]
        results: dict[int, dict] = {}
        index_of = {f.key: i for i, f in enumerate(futures)}
        for future in as_completed(futures):
            results[index_of[future.key]] = future.result()
            done += len(parts[index_of[future.key]])
            if progress:
                progress(done, len(rounds) * (total_passes or 1))
        merged = merge_all([results[i] for i in range(len(parts))])
        if total_passes is None:
            total_passes = next(iter(merged.values())).passes if merged else 1
        pass_index += 1
        if pass_index >= total_passes:
            return merged
        for obs in merged.values():
            obs.begin_pass(pass_index)
        observers = merged
