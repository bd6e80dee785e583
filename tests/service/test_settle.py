"""The CLI waits until Prefect's temporary server has recorded its task runs before the server is stopped."""

import json
import os
import subprocess
import sys
import textwrap
import time

from ptqflow._settle import STABLE, wait_until_settled


def scripted(observations):
    """observe() that replays (count, any_open) pairs, repeating the last one."""
    calls = []

    def observe():
        calls.append(1)
        return observations[min(len(calls), len(observations)) - 1]

    return observe, calls


def test_waits_while_a_task_run_is_still_open():
    observe, calls = scripted([(3, True)] * 5 + [(3, False)])
    assert wait_until_settled(observe, time.monotonic() + 5, poll=0.001)
    assert len(calls) == 5 + STABLE  # the open polls, then STABLE closed ones with the count unchanged


def test_waits_until_late_task_runs_stop_appearing():
    observe, calls = scripted([(0, False), (1, False), (2, False), (3, False)])
    assert wait_until_settled(observe, time.monotonic() + 5, poll=0.001)
    assert len(calls) == 4 + STABLE


def test_gives_up_at_the_deadline():
    observe, _ = scripted([(1, True)])
    start = time.monotonic()
    assert not wait_until_settled(observe, start + 0.05, poll=0.001)
    assert time.monotonic() - start < 1


SCRIPT = textwrap.dedent("""
    import json
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter, TaskRunFilterFlowRunId
    from ptqflow._settle import FINAL, now, settle_task_runs

    @task
    def double(x):
        return 2 * x

    @flow
    def three_tasks():
        return [double(i) for i in range(3)]

    since = now()
    assert three_tasks() == [0, 2, 4]
    settled = settle_task_runs(since)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter())
        ours = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in runs]))
        states = [r.state_type.value for r in client.read_task_runs(task_run_filter=ours)]
    print(json.dumps({"settled": settled, "states": states, "final": list(FINAL)}))
""")


def test_on_the_temporary_server_every_task_run_is_recorded_final_when_settle_returns(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PTQFLOW_HOME=str(tmp_path), PREFECT_HOME=str(tmp_path / "prefect"))
    script = tmp_path / "settle_probe.py"
    script.write_text("import ptqflow\n" + SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["settled"] is True
    assert len(result["states"]) == 3 and all(s in result["final"] for s in result["states"]), result


def test_settling_after_a_run_on_a_real_server_does_not_import_prefects_server():
    """Importing prefect.server to look for a temporary server cost 5.7 s of every flow run."""
    import subprocess
    import sys

    code = ("import sys; import ptqflow; from ptqflow._settle import now, settle_task_runs; "
            "assert settle_task_runs(now()); print('prefect.server.api.server' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
