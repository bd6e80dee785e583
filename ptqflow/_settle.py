"""Let the temporary Prefect server record a CLI call's task runs before it is stopped.

Prefect 3 clients report task-run states as events; the server's task-run recorder writes them to
its database one by one. When ``ptq`` exits, Prefect stops its temporary server with SIGTERM, and
an event still being written at that moment is cancelled: the server logs "Error flushing 1 events"
with two tracebacks on the user's terminal after a successful run, and the dashboard may show the
last task as still running. Waiting until every task run of this call's flow runs is in a final
state (a fraction of a second, at most ``timeout``) removes the race. Against a real server
(``PREFECT_API_URL`` set) there is nothing to wait for: that server keeps running and recording.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
STABLE = 3


def now() -> datetime:
    return datetime.now(timezone.utc)


def settle_task_runs(since: datetime, timeout: float = 5.0, poll: float = 0.1) -> bool:
    """Wait until the task runs of flow runs started at or after ``since`` are recorded as final.

    Returns True when they are (or when no temporary server is in use), False on timeout. Never
    raises: this runs after the user's result is already written and shown.
    """
    try:
        server_module = sys.modules.get("prefect.server.api.server")
        if server_module is None:  # never imported, so no temporary server was started (importing it costs 5 s)
            return True
        SubprocessASGIServer = server_module.SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value() or not any(s.running for s in SubprocessASGIServer._instances.values()):
            return True  # a real server records on its own; no temporary server was started: no flow ran
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterStartTime,
            TaskRunFilter,
            TaskRunFilterFlowRunId,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=timeout)  # every task-run event this process still holds, sent
        open_types = [t for t in StateType if t.value not in FINAL]
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=since - timedelta(seconds=1))))
            if not flow_runs:
                return True
            ours = TaskRunFilterFlowRunId(any_=[run.id for run in flow_runs])
            open_filter = TaskRunFilter(flow_run_id=ours,
                                        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=open_types)))

            def observe() -> tuple[int, bool]:
                count = len(client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=ours)))
                return count, bool(client.read_task_runs(task_run_filter=open_filter, limit=1))

            return wait_until_settled(observe, deadline, poll)
    except Exception:  # noqa: BLE001 -- a dashboard nicety must never turn a finished run into an error
        return False


def wait_until_settled(observe, deadline: float, poll: float = 0.1) -> bool:
    """Poll ``observe() -> (recorded task runs, any still open)`` until none is open and the count has not
    changed for ``STABLE`` polls in a row (a task run whose first event is still queued on the server has
    no row yet, so "none open" alone is not enough). False when ``deadline`` (monotonic) passes first.

    The server's recorder writes each event as it arrives (Prefect's default batch size is 1), so a few
    tenths of a second without change means it has caught up; a recorder configured to batch for
    seconds can outlast that window.
    """
    seen, stable = -1, 0
    while True:
        count, still_open = observe()
        stable = stable + 1 if count == seen and not still_open else 0
        seen = count
        if stable >= STABLE:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
