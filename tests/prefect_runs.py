"""Reading back what a flow run did from the Prefect API: task names and final states, for tests and benchmarks."""

from __future__ import annotations

import time
from collections import Counter


def task_states(flow_run_id, expect: int | None = None, timeout_s: float = 20.0) -> list[tuple[str, str]]:
    """(task name, state name) of every task run of ``flow_run_id``, nested ones included, oldest first.

    Task runs reach the API through events a moment after they finish, so wait until ``expect`` runs
    (or the count stops growing) before answering.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + timeout_s
    previous = -1
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                         sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
            done = [r for r in runs if r.state is not None and r.state.is_final()]
            if (expect is not None and len(done) >= expect) or time.monotonic() > deadline:
                break
            if expect is None and len(done) == previous and len(done) == len(runs):
                break
            previous = len(done)
            time.sleep(1.0)
    return [(r.task_key.rsplit("-", 1)[0] if not r.name else r.name.rsplit("-", 1)[0], r.state.name) for r in done]


def state_counts(states: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """{task name: {state name: count}}."""
    out: dict[str, Counter] = {}
    for name, state in states:
        out.setdefault(name, Counter())[state] += 1
    return {k: dict(v) for k, v in out.items()}
