"""Screenshots of what a user watches, at 1400x1000 in headless Chromium: the flow run page, the summary
artifact, the per-layer table, the debug ranking, a sweep's Pareto table and the debug page of a FULL_QUANT conversion of the digits demo with debug on.

    .venv/bin/python docs/screenshots/take.py      # writes docs/screenshots/*.png

Needs `chromium` on PATH (.ci/run installs Debian's). It starts its own Prefect server on a free loopback
port with a throw-away home, and stops it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def shoot(chromium: str, url: str, png: Path, profile: Path) -> None:
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--no-first-run",
                    f"--user-data-dir={profile}", "--window-size=1400,1000", "--virtual-time-budget=15000",
                    f"--screenshot={png}", url], capture_output=True, text=True, timeout=180, check=True)
    print(f"wrote {png.relative_to(ROOT)}")


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed")
    work = Path(tempfile.mkdtemp(prefix="ptq-shots-"))
    os.environ.update(PTQFLOW_HOME=str(work / "home"), PTQFLOW_RESIDENT_SERVER="0")
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from ptqflow.deployments.server import free_port, run_page_url, start_server
    from ptqflow.flows.quantize import quantize, run_tags

    home = work / "prefect"
    home.mkdir()
    server = start_server(free_port(), home / "server.log", env=dict(os.environ, PREFECT_HOME=str(home)))
    try:
        cfg = work / "full.cfg"
        text = (ROOT / "examples/configs/full_quant.cfg").read_text()
        text = text.replace("examples/digits/bin", str(ROOT / "examples/digits/bin"))
        text = text.replace("bit_num=8\n", f"bit_num=8\ndebug_info_save_path={work / 'debug'}\n", 1)
        cfg.write_text(text + "[ptqflow]\nlatency_guard=false\n")  # int8 layers to show, whatever this CPU
        model = ROOT / "examples/digits/digits_cnn.onnx"
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), run_tags(model, cfg):
            state = quantize(str(model), str(cfg), str(work / "out" / "digits_int8"), input_data_format="NCHW",
                             return_state=True)
            summary = state.result()
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
        )

        run_id = state.state_details.flow_run_id
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        summary_artifact = next(a for a in artifacts if a.key == "quantize-summary")
        profile = work / "chromium"
        shoot(chromium, run_page_url(server.url, run_id), HERE / "flow-run.png", profile)
        shoot(chromium, f"{server.url}/artifacts/artifact/{summary_artifact.id}", HERE / "summary-artifact.png", profile)
        for key, png in (("quantize-layers", "layers-table.png"), ("debug-ranking", "debug-ranking.png")):
            table = next(a for a in artifacts if a.key == key)
            shoot(chromium, f"{server.url}/artifacts/artifact/{table.id}", HERE / png, profile)
        from ptqflow.flows.sweep import sweep, sweep_tags

        weight_cfg = ROOT / "examples/configs/weight_fixed_bit.cfg"
        grid = {"common_quant_param.bit_num": [4, 6, 8]}
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}), sweep_tags(model, weight_cfg, grid):
            swept = sweep(str(model), str(weight_cfg), grid, str(work / "sweep"),
                          return_state=True)
            sweep_id = swept.state_details.flow_run_id
            with get_client(sync_client=True) as client:
                pareto = next(a for a in client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[sweep_id])))
                    if a.key == "sweep-pareto")
        shoot(chromium, f"{server.url}/artifacts/artifact/{pareto.id}", HERE / "sweep-pareto.png", profile)
        shoot(chromium, Path(summary.debug["page"]).as_uri(), HERE / "debug-page.png", profile)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
