"""``ptq serve``: a local Prefect server with the UI on 127.0.0.1, and ptqflow's flows served from this machine.

Deployments (``prefect.serve``, no work pool needed):
- ``quantize/on-demand``  the quantize flow, run from the UI or ``prefect deployment run``;
- ``sweep/on-demand``     the sweep flow;
- ``watch-folder/scheduled`` (with ``--watch DIR``) quantizes new or changed models in DIR on ``--cron``.

The server is the resident one that flow runs use (ptqflow.resident): started if none runs, and left
running when ``ptq serve`` ends, so CLI runs and served runs share one dashboard. With the resident
server off (``PTQFLOW_RESIDENT_SERVER=0``) ``ptq serve`` starts its own server and stops it on exit.
The parent process owns its children (the serving process, and its own server when it started one);
Ctrl-C or SIGTERM stops them (each in its own process group, so nothing is left behind).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from ptq_core.errors import PtqError

SERVE_LIMIT = 2  # flow runs at once: the machine has few cores and each run may start Dask workers


def build_deployments(watch: str = "", cron: str = "*/10 * * * *", output_dir: str = "") -> list:
    """The RunnerDeployments that ``prefect.serve`` runs; entrypoints are module paths so any cwd works."""
    from prefect.deployments.runner import EntrypointType
    from ptqflow.deployments.watch import watch_folder
    from ptqflow.flows.quantize import quantize
    from ptqflow.flows.sweep import sweep

    common = dict(entrypoint_type=EntrypointType.MODULE_PATH, tags=["ptqflow"])
    deployments = [
        quantize.to_deployment(name="on-demand", description="Quantize one model with a converter_lite config",
                               **common),
        sweep.to_deployment(name="on-demand", description="Sweep a config grid; Pareto table, plot and best.cfg",
                            **common),
    ]
    if watch:
        deployments.append(watch_folder.to_deployment(
            name="scheduled", cron=cron, parameters={"folder": str(Path(watch).resolve()), "output_dir": output_dir},
            description=f"Quantize new or changed *.onnx + .cfg in {watch} on '{cron}'", **common))
    return deployments


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except Exception:
        raise PtqError(f'--cron "{cron}": not a valid cron expression; write five fields, e.g. "*/10 * * * *"') from None


def serve_command(args) -> int:
    """Start the server (unless --api-url), then the serving child; stop both on exit or signal."""
    from ptqflow.deployments.server import healthy, start_server, stop_group

    from ptqflow import resident
    from ptqflow._env import home

    check_cron(args.cron)
    if args.watch and not Path(args.watch).is_dir():
        raise PtqError(f"--watch {args.watch}: not a folder")
    if not 0 < args.port < 65536:
        raise PtqError(f"--port {args.port}: must be in [1, 65535]")
    server = None
    children: list[subprocess.Popen] = []

    def stop(signum, frame):  # SIGTERM behaves like Ctrl-C: unwind and stop the children
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if args.api_url:
            api_url = args.api_url.rstrip("/")
            if not healthy(api_url):
                raise PtqError(f"--api-url {args.api_url}: no healthy Prefect API there (GET /health failed)")
        elif resident.enabled():  # the server flow runs use: their runs and the deployments on one dashboard
            state = resident.start(port=args.port)
            api_url = state.api_url
            moved = "" if state.port == args.port else f"; the resident server was already on port {state.port}"
            print(f"Prefect UI: {state.url}  (API {api_url}; resident server, kept running after this command "
                  f"until {state.idle_s / 60:g} min idle or `ptq server stop`{moved})", flush=True)
        else:
            server = start_server(args.port, home() / "logs" / "prefect-server.log")
            children.append(server.process)
            api_url = server.api_url
            print(f"Prefect UI: {server.url}  (API {api_url}; log {server.log_path})", flush=True)
        env = dict(os.environ, PREFECT_API_URL=api_url)
        cmd = [sys.executable, "-m", "ptqflow.deployments.serve", "--cron", args.cron]
        if args.watch:
            cmd += ["--watch", str(Path(args.watch).resolve())]
        if args.output_dir:
            cmd += ["--output-dir", str(Path(args.output_dir).resolve())]
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        children.append(child)
        code = child.wait()
        return code
    except KeyboardInterrupt:
        print("ptq serve: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        for proc in reversed(children):  # the serving child first: it pauses its schedules, then the server
            stop_group(proc)
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    """The serving child: ``prefect.serve`` until SIGTERM (which pauses the deployments' schedules)."""
    import ptqflow  # noqa: F401  (offline Prefect settings first)

    parser = argparse.ArgumentParser(prog="python -m ptqflow.deployments.serve")
    parser.add_argument("--watch", default="")
    parser.add_argument("--cron", default="*/10 * * * *")
    parser.add_argument("--output-dir", default="")
    args = parser.parse_args(argv)
    from prefect import serve

    serve(*build_deployments(args.watch, args.cron, args.output_dir), limit=SERVE_LIMIT)


if __name__ == "__main__":
    main()
